//! One subscriber connection per manager, shared by every waiter of every lock.
//!
//! Waiters register interest in a lock ([`Notifier::watch`]); the first watcher of a lock
//! subscribes its channels, the last one to leave unsubscribes them. A release message
//! (or a keyspace `del`/`expired`/`evicted` event) wakes **one** local waiter of that
//! lock: only one task per process needs to race for the lock in Redis. After the
//! subscriber reconnects, messages sent meanwhile are lost, so every waiter is woken to
//! retry at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use redis::Msg;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::errors::is_transient;
use crate::names::LockNames;

/// How long one subscriber operation (connect, SUBSCRIBE, PING) may take before the
/// connection is considered dead and replaced.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the idle subscriber connection is checked with a PING: a connection that
/// died silently would otherwise cost waiters their wake-ups until the holder's PTTL.
const PING_EVERY: Duration = Duration::from_secs(5);
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// The per-manager handle to the subscriber task. The task ends when the handle and
/// every [`Watch`] are gone.
pub(crate) struct Notifier {
    shared: Arc<Shared>,
}

struct Shared {
    registry: Mutex<HashMap<String, Registered>>,
    commands: mpsc::UnboundedSender<Command>,
    status: Arc<Status>,
}

struct Registered {
    entry: Arc<Entry>,
    watchers: usize,
}

/// What the subscriber task reports about itself.
#[derive(Default)]
struct Status {
    connected: AtomicBool,
    /// Completed (re)connections of the subscriber, the first one included.
    connections: AtomicU64,
}

/// The local state of one subscribed lock.
struct Entry {
    release_channel: String,
    keyspace_channel: Option<String>,
    notify: Notify,
    /// `true` while the channels are subscribed on the live connection.
    confirmed: watch::Sender<bool>,
    /// A keyspace `del` woke a waiter and the release message of the same release is
    /// still to come: it must not wake a second one.
    del_seen: AtomicBool,
}

impl Entry {
    fn channels(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.release_channel).chain(self.keyspace_channel.as_ref())
    }
}

enum Command {
    Subscribe(Arc<Entry>),
    Unsubscribe(Arc<Entry>),
}

impl Notifier {
    /// Starts the subscriber task on the current runtime.
    pub(crate) fn start(client: redis::Client, shutdown: CancellationToken) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let status = Arc::new(Status::default());
        let task = run(client, receiver, status.clone());
        tokio::spawn(async move {
            shutdown.run_until_cancelled(task).await;
        });
        Self {
            shared: Arc::new(Shared {
                registry: Mutex::new(HashMap::new()),
                commands,
                status,
            }),
        }
    }

    /// Registers interest in the notifications of one lock. The returned [`Watch`]
    /// keeps the subscription alive; call [`Watch::ready`] before the first attempt
    /// that it must not miss the release of.
    pub(crate) fn watch(&self, names: &LockNames) -> Watch {
        let mut registry = self.shared.registry();
        let registered = registry
            .entry(names.release_channel.clone())
            .or_insert_with(|| {
                let entry = Arc::new(Entry {
                    release_channel: names.release_channel.clone(),
                    keyspace_channel: names.keyspace_channel.clone(),
                    notify: Notify::new(),
                    confirmed: watch::Sender::new(false),
                    del_seen: AtomicBool::new(false),
                });
                // A send error means the task is gone (runtime shutting down): waiters
                // then fall back to the holder's PTTL.
                let _ = self.shared.commands.send(Command::Subscribe(entry.clone()));
                Registered { entry, watchers: 0 }
            });
        registered.watchers += 1;
        Watch {
            shared: self.shared.clone(),
            entry: registered.entry.clone(),
        }
    }

    /// How many times the subscriber connection has been established.
    pub(crate) fn connections(&self) -> u64 {
        self.shared.status.connections.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, HashMap<String, Registered>> {
        // The map stays consistent even if a holder of the lock panicked: every update
        // is a single insert/remove or counter change.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A waiter's registration for one lock's notifications. Dropping it unregisters.
pub(crate) struct Watch {
    shared: Arc<Shared>,
    entry: Arc<Entry>,
}

impl Watch {
    /// Waits until the lock's channels are subscribed, so that a release after this
    /// point cannot be missed. Returns at once while the subscriber is disconnected
    /// (the reconnect wakes every waiter) and gives up after a bound: waits are always
    /// also bounded by the holder's PTTL.
    pub(crate) async fn ready(&self) {
        if !self.shared.status.connected.load(Ordering::Acquire) {
            return;
        }
        let mut confirmed = self.entry.confirmed.subscribe();
        let _ = tokio::time::timeout(OP_TIMEOUT, confirmed.wait_for(|c| *c)).await;
    }

    /// The wake-up future; create and `enable()` it *before* the attempt it follows.
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.entry.notify.notified()
    }

    /// Hands a wake-up this waiter received, and will not use, to the next waiter.
    pub(crate) fn pass_on(&self) {
        self.entry.notify.notify_one();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut registry = self.shared.registry();
        if let Some(registered) = registry.get_mut(&self.entry.release_channel) {
            if Arc::ptr_eq(&registered.entry, &self.entry) {
                registered.watchers -= 1;
                if registered.watchers == 0 {
                    registry.remove(&self.entry.release_channel);
                    let _ = self
                        .shared
                        .commands
                        .send(Command::Unsubscribe(self.entry.clone()));
                }
            }
        }
    }
}

/// The subscriber task: (re)connects, keeps the subscriptions in line with the
/// registry, and routes messages to waiters.
async fn run(
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
    status: Arc<Status>,
) {
    // channel name -> entry, as subscribed (or to be subscribed on reconnect)
    let mut channels: HashMap<String, Arc<Entry>> = HashMap::new();
    // Cleared when the server refuses the keyspace channels (an ACL without them):
    // waiters then rely on release messages and the holder's PTTL alone.
    let mut keyspace_ok = true;
    let mut delay = RECONNECT_MIN;
    loop {
        let connected = match tokio::time::timeout(OP_TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => Some(pubsub),
            _ => None,
        };
        if let Some(pubsub) = connected {
            let (mut sink, mut stream) = pubsub.split();
            let mut release = Vec::new();
            let mut keyspace = Vec::new();
            for (name, entry) in &channels {
                if *name == entry.release_channel {
                    release.push(name.clone());
                } else {
                    keyspace.push(name.clone());
                }
            }
            let resubscribed = subscribe(
                &mut sink,
                &release,
                &keyspace,
                &mut channels,
                &mut keyspace_ok,
            )
            .await;
            if resubscribed {
                delay = RECONNECT_MIN;
                status.connected.store(true, Ordering::Release);
                let reconnect = status.connections.fetch_add(1, Ordering::Relaxed) > 0;
                for entry in channels.values() {
                    entry.confirmed.send_replace(true);
                    if reconnect {
                        // Whatever was published while we were away is lost.
                        entry.notify.notify_waiters();
                    }
                }
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.reset();
                loop {
                    tokio::select! {
                        command = commands.recv() => {
                            let Some(command) = command else { return };
                            if !apply(&mut channels, command, Some(&mut sink), &mut keyspace_ok).await {
                                break;
                            }
                        }
                        message = stream.next() => match message {
                            Some(message) => dispatch(&channels, &message),
                            None => break,
                        },
                        _ = ping.tick() => {
                            if !op(sink.ping::<redis::Value>()).await {
                                break;
                            }
                        }
                    }
                }
                status.connected.store(false, Ordering::Release);
                for entry in channels.values() {
                    entry.confirmed.send_replace(false);
                }
            }
        }
        // Back off before reconnecting, keeping the channel map current meanwhile.
        let wait = tokio::time::sleep(delay);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    apply(&mut channels, command, None, &mut keyspace_ok).await;
                }
            }
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

/// Subscribes release channels, then keyspace channels. A refusal of the keyspace
/// channels (an error reply, e.g. an ACL without `&__keyspace@*`) is not a broken
/// connection: they are dropped for good and the release channels still work.
/// Returns `false` when the connection failed.
async fn subscribe(
    sink: &mut PubSubSink,
    release: &[String],
    keyspace: &[String],
    channels: &mut HashMap<String, Arc<Entry>>,
    keyspace_ok: &mut bool,
) -> bool {
    if !release.is_empty() && !op(sink.subscribe(release)).await {
        return false;
    }
    if keyspace.is_empty() || !*keyspace_ok {
        return true;
    }
    match tokio::time::timeout(OP_TIMEOUT, sink.subscribe(keyspace)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) if !is_transient(&e) => {
            tracing::warn!(error = %e, "keyspace channels refused; waking waiters by release messages and lease expiry only");
            *keyspace_ok = false;
            channels.retain(|name, entry| *name == entry.release_channel);
            true
        }
        _ => false,
    }
}

/// Runs one subscriber operation with a bound; `false` means the connection is unusable.
async fn op<T>(f: impl std::future::Future<Output = redis::RedisResult<T>>) -> bool {
    matches!(tokio::time::timeout(OP_TIMEOUT, f).await, Ok(Ok(_)))
}

/// Applies a registry change to the channel map and, when connected, to the server.
/// Returns `false` when the connection failed.
async fn apply(
    channels: &mut HashMap<String, Arc<Entry>>,
    command: Command,
    sink: Option<&mut PubSubSink>,
    keyspace_ok: &mut bool,
) -> bool {
    match command {
        Command::Subscribe(entry) => {
            let release = vec![entry.release_channel.clone()];
            let keyspace: Vec<String> = entry
                .keyspace_channel
                .iter()
                .filter(|_| *keyspace_ok)
                .cloned()
                .collect();
            for name in release.iter().chain(&keyspace) {
                channels.insert(name.clone(), entry.clone());
            }
            match sink {
                Some(sink) => {
                    let ok = subscribe(sink, &release, &keyspace, channels, keyspace_ok).await;
                    if ok {
                        entry.confirmed.send_replace(true);
                    }
                    ok
                }
                None => true,
            }
        }
        Command::Unsubscribe(entry) => {
            let names: Vec<String> = entry
                .channels()
                .filter(|name| {
                    channels
                        .get(*name)
                        .is_some_and(|current| Arc::ptr_eq(current, &entry))
                })
                .cloned()
                .collect();
            if names.is_empty() {
                return true;
            }
            for name in &names {
                channels.remove(name);
            }
            match sink {
                Some(sink) => op(sink.unsubscribe(&names)).await,
                None => true,
            }
        }
    }
}

fn dispatch(channels: &HashMap<String, Arc<Entry>>, message: &Msg) {
    let name = message.get_channel_name();
    let Some(entry) = channels.get(name) else {
        return;
    };
    if *name == entry.release_channel {
        if !entry.del_seen.swap(false, Ordering::Relaxed) {
            entry.notify.notify_one();
        }
        return;
    }
    match message.get_payload_bytes() {
        b"del" => {
            entry.del_seen.store(true, Ordering::Relaxed);
            entry.notify.notify_one();
        }
        b"expired" | b"evicted" => entry.notify.notify_one(),
        _ => {}
    }
}
