//! One subscriber connection per manager, shared by every waiter of every lock.
//!
//! Waiters register interest in a lock ([`Notifier::watch`]); the first watcher of a lock
//! subscribes its channels, and they stay subscribed for a second after the last one
//! leaves (`LINGER`). A turn message (see [`crate::queue`]) wakes the local waiters of
//! that lock only in the process it names; other processes read it and wake nobody
//! (a standby notes its deadline). A `released` message (or a keyspace
//! `del`/`expired`/`evicted` event) wakes **every** local waiter of that lock (see
//! `Entry::wake`). That is one task per process for a [`Lock`](crate::Lock): its
//! waiters line up in the manager's local queue (`gate.rs`), and only the head waits
//! in Redis; `BasicLock`s, which do not queue locally, are each woken. When the last
//! waiter of a process that is in a lock's queue leaves, the process leaves the queue
//! (`scripts/leave.lua`, in the background).
//!
//! # No wake-up lost to the subscriber
//!
//! A waiter creates its wake-up future *before* each attempt (see `lock/wait.rs`). The
//! subscriber wakes every waiter of a lock **each time that lock's subscription becomes
//! confirmed** — on the first connection, after every reconnect, and when a
//! subscription made on a live connection is acknowledged — after the server's reply, so
//! that either:
//!
//! - the waiter's wake-up future existed before the confirmation: it is woken and
//!   retries once (a release published while the channel was not subscribed — the
//!   subscriber was connecting, reconnecting or busy — is not waited out); or
//! - it was created after the confirmation: the attempt that follows reaches the server
//!   after the subscription did, so a later release's message is delivered.
//!
//! [`Watch::ready`] only saves an attempt that would be made before the subscription is
//! in place; correctness does not depend on it, so it may give up (after the response
//! timeout) or return at once while the subscriber is disconnected. The wait loop also
//! gives up on it when the holder's PTTL runs out: a raised response timeout and a
//! subscriber connection that died silently must not keep a waiter from a lock that
//! expired.
//!
//! # Redlock: one subscriber per node
//!
//! On a Redlock backend the notifier runs one subscriber task, with its own connection,
//! per node (connections O(nodes), never O(waiters)); each task keeps every watched
//! lock subscribed on its node, and an entry counts as confirmed on each node
//! separately. A release message carries the SHA-1 of the holder's token
//! (`redlock_release.lua`), and wakes a waiter only once a quorum of nodes has
//! published the release of the same token: an undone minority attempt (a split vote)
//! wakes nobody, and the holder's deletes, which land on the nodes microseconds apart,
//! wake one waiter once. A (re)subscription confirmed on any node wakes every waiter,
//! as on one server.
//!
//! # Keeping up
//!
//! The subscriber task never waits for one command at a time while others queue: it
//! drains every queued (un)subscription, nets them out against what the server has, and
//! sends them as a few multi-channel `SUBSCRIBE`/`UNSUBSCRIBE` commands, pipelined on the
//! connection; messages are dispatched while the replies are awaited. A burst of
//! thousands of new locks costs a few round trips, not one per lock.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Msg, RedisError};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;
use crate::config::Timeouts;
use crate::errors::is_transient;
use crate::names::LockNames;
use crate::queue::{standby_after, Message};

/// How often the idle subscriber connection is checked with a PING: a connection that
/// died silently would otherwise cost waiters their wake-ups until the holder's PTTL.
const PING_EVERY: Duration = Duration::from_secs(5);
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// At most this many channels, and about this many bytes of channel names, per
/// SUBSCRIBE/UNSUBSCRIBE: a burst or a resubscription is split into commands of a
/// reasonable size (an id may be long), all sent at once.
const CHUNK_CHANNELS: usize = 512;
const CHUNK_BYTES: usize = 256 * 1024;

/// The per-manager handle to the subscriber task. The task ends when the handle and
/// every [`Watch`] are gone, or when the manager shuts down.
pub(crate) struct Notifier {
    shared: Arc<Shared>,
}

struct Shared {
    registry: Mutex<HashMap<String, Registered>>,
    /// This manager's id in the queues of waiting processes ([`crate::queue`]).
    process: Arc<str>,
    /// Where a process that stops waiting leaves a queue ([`Watch`]'s drop).
    backend: Arc<Backend>,
    /// The manager's tasks (the background leaves are among them).
    tasks: TaskTracker,
    /// One queue per subscriber task (one per Redlock node, else one).
    commands: Vec<mpsc::UnboundedSender<Command>>,
    status: Arc<Status>,
    /// How long [`Watch::ready`] waits for a confirmation.
    ready_timeout: Duration,
    /// How many subscribers must hear one holder's release (a Redlock quorum, else 1).
    quorum: usize,
}

struct Registered {
    entry: Arc<Entry>,
    watchers: usize,
    /// Counts the times the last watcher left: a lingering subscription is dropped only
    /// if no watcher came and went since (see [`LINGER`]).
    idle: u64,
}

/// How long a lock's subscription outlives its last watcher. A process that takes
/// turns with others for a key (one task per process: its gate, which keeps the
/// subscription while it holds or waits, is gone between turns) finds it still in
/// place at its next wait, so that its first failed attempt (which queues it) needs no
/// second one after subscribing.
const LINGER: Duration = Duration::from_secs(1);

/// What the subscriber task reports about itself.
#[derive(Default)]
struct Status {
    /// Subscriber tasks connected now.
    connected: AtomicUsize,
    /// Completed (re)connections of the subscriber, the first one included.
    connections: AtomicU64,
    /// Channels the task keeps subscribed (or will, once connected).
    channels: AtomicUsize,
}

/// The local state of one subscribed lock.
struct Entry {
    release_channel: String,
    keyspace_channel: Option<String>,
    notify: Notify,
    /// One bit per subscriber task: set while the channels are subscribed on its live
    /// connection.
    confirmed: watch::Sender<u64>,
    /// Redlock: which nodes published the release of which holder (by the SHA-1 of its
    /// token), so that a waiter is woken once a quorum did.
    votes: Mutex<Vec<Vote>>,
    /// A keyspace `del` woke a waiter and the release message of the same release is
    /// still to come: it must not wake a second one.
    del_seen: AtomicBool,
    /// The keyspace channel of the rdlock 1.x key, set by the first waiter with 1.x
    /// compatibility (`Lock::with_v1_compat`) and kept while the entry lives: a 1.x
    /// holder releases with a plain `DEL` and publishes nothing.
    v1_channel: OnceLock<String>,
    /// The lock's names, for leaving its queue.
    names: Arc<LockNames>,
    /// A turn message named this process ([`crate::queue`]) and no waiter has made an
    /// attempt since: the first waiter to look makes one at once.
    ours: AtomicBool,
    /// This process may be in the lock's queue in Redis: when its last waiter goes, it
    /// leaves the queue (and passes on a turn reserved for it).
    queued: AtomicBool,
    /// When this process, a standby named by the last turn message, checks the key
    /// (`None`: no duty). Waiters wait for it, without an attempt, as a deadline.
    standby: watch::Sender<Option<Instant>>,
}

impl Entry {
    fn channels(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.release_channel).chain(self.keyspace_channels())
    }

    fn keyspace_channels(&self) -> impl Iterator<Item = &String> {
        self.keyspace_channel.iter().chain(self.v1_channel.get())
    }

    /// Wakes every local waiter: for a turn given to this process, a release that
    /// frees the key (`released`: no queue, a force release, a 1.x-compatible holder,
    /// rdlock 2.0), a keyspace event, a confirmation. Waking one would strand the
    /// others: a manager's `Lock` tasks queue locally, so only one of them is a waiter
    /// here, but its `BasicLock`s are waiters too, and waiters with and without 1.x
    /// compatibility can be blocked by different keys (a 1.x holder blocks only the
    /// former), so the one waiter a wake-up would go to may be unable to use it while
    /// another could (measured: a plain waiter left for its holder's whole 30 s lease,
    /// tests/v1_compat.rs). Each woken waiter makes one attempt; those that fail queue
    /// again (or re-arm the waiters marker). Every waiter's wake-up future exists
    /// before each attempt (lock/wait.rs), so `notify_waiters` (which stores no permit)
    /// misses no waiter: one not registered yet has its attempt still to come, after
    /// the release; a turn message also sets `ours`, which a waiter reads after each
    /// attempt.
    fn wake(&self) {
        self.notify.notify_waiters();
    }

    /// The subscription is in place on node `node`'s server (its reply came): every
    /// waiter retries once, since a release may have been published while it was not.
    fn confirm(&self, node: usize) {
        self.confirmed.send_modify(|mask| *mask |= bit(node));
        self.notify.notify_waiters();
    }

    /// Routes a message of the release channel (not on Redlock): a turn for this
    /// process wakes its waiters, a turn for another process wakes nobody (and, when
    /// it names this process a standby, sets its deadline), a release wakes all.
    fn route(&self, payload: &[u8], process: &str) {
        match Message::parse(payload) {
            Message::Turn { next, standbys } => {
                if next == process.as_bytes() {
                    self.ours.store(true, Ordering::Release);
                    self.standby.send_replace(None);
                    self.wake();
                    return;
                }
                let duty = standbys
                    .iter()
                    .position(|s| *s == process.as_bytes())
                    .map(|position| Instant::now() + standby_after(position));
                self.standby.send_replace(duty);
            }
            Message::Claimed => {
                self.standby.send_if_modified(|duty| duty.take().is_some());
            }
            Message::Released => {
                self.standby.send_if_modified(|duty| duty.take().is_some());
                self.wake();
            }
        }
    }

    /// Counts node `node`'s release message for the holder `payload` names; `true`
    /// once `quorum` nodes have published it (only the first time).
    fn vote(&self, node: usize, payload: &[u8], quorum: usize) -> bool {
        let mut votes = self.votes.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        let index = match votes.iter().position(|v| v.payload == payload) {
            // Long after the first message of that payload: another release with the
            // same payload (a force release's "released"), counted afresh.
            Some(index) if now.duration_since(votes[index].since) > VOTE_WINDOW => {
                votes[index] = Vote {
                    payload: payload.to_vec(),
                    nodes: 0,
                    woke: false,
                    since: now,
                };
                index
            }
            Some(index) => index,
            None => {
                if votes.len() >= MAX_VOTES {
                    votes.remove(0); // the oldest release: long settled
                }
                votes.push(Vote {
                    payload: payload.to_vec(),
                    nodes: 0,
                    woke: false,
                    since: now,
                });
                votes.len() - 1
            }
        };
        let vote = &mut votes[index];
        vote.nodes |= bit(node);
        if vote.woke || (vote.nodes.count_ones() as usize) < quorum {
            return false;
        }
        vote.woke = true;
        true
    }
}

/// The release messages of one holder, as heard from the nodes.
struct Vote {
    payload: Vec<u8>,
    nodes: u64,
    woke: bool,
    /// When the first node's message came.
    since: std::time::Instant,
}

/// How long the release messages of one holder are counted together: its deletes land
/// on the nodes microseconds apart. A payload seen again later is another release (a
/// force release publishes the same payload every time).
const VOTE_WINDOW: Duration = Duration::from_secs(1);

/// The releases remembered per lock (a holder's messages arrive within milliseconds
/// of each other; older ones are long settled).
const MAX_VOTES: usize = 16;

fn bit(node: usize) -> u64 {
    1u64 << (node % 64)
}

enum Command {
    Subscribe(Arc<Entry>),
    Unsubscribe(Arc<Entry>),
}

impl Notifier {
    /// Starts the subscriber task on the current runtime.
    pub(crate) fn start(
        backend: Arc<Backend>,
        timeouts: Timeouts,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        let process: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
        let status = Arc::new(Status::default());
        let quorum = backend.wake_quorum();
        let mut commands = Vec::new();
        for node in 0..backend.subscribers() {
            let (sender, receiver) = mpsc::unbounded_channel();
            commands.push(sender);
            let subscriber = Subscriber {
                backend: backend.clone(),
                node,
                quorum,
                attempts: 0,
                commands: receiver,
                status: status.clone(),
                timeouts,
                channels: HashMap::new(),
                keyspace_ok: true,
                backlog: Vec::new(),
                process: process.clone(),
            };
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.run_until_cancelled(subscriber.run()).await;
            });
        }
        Self {
            shared: Arc::new(Shared {
                registry: Mutex::new(HashMap::new()),
                process,
                backend,
                tasks,
                commands,
                status,
                ready_timeout: timeouts.response,
                quorum,
            }),
        }
    }

    /// Registers interest in the notifications of one lock. The returned [`Watch`]
    /// keeps the subscription alive; call [`Watch::ready`] before the first attempt
    /// that it must not miss the release of.
    pub(crate) fn watch(&self, names: &Arc<LockNames>) -> Watch {
        let v1_channel = names
            .v1
            .as_ref()
            .and_then(|v1| v1.keyspace_channel.as_ref());
        let mut registry = self.shared.registry();
        let registered = registry
            .entry(names.release_channel.clone())
            .or_insert_with(|| {
                let entry = Arc::new(Entry {
                    release_channel: names.release_channel.clone(),
                    keyspace_channel: names.keyspace_channel.clone(),
                    notify: Notify::new(),
                    confirmed: watch::Sender::new(0),
                    votes: Mutex::new(Vec::new()),
                    del_seen: AtomicBool::new(false),
                    v1_channel: v1_channel.cloned().map(OnceLock::from).unwrap_or_default(),
                    names: names.clone(),
                    ours: AtomicBool::new(false),
                    queued: AtomicBool::new(false),
                    standby: watch::Sender::new(None),
                });
                // A send error means the task is gone (runtime shutting down): waiters
                // then fall back to the holder's PTTL.
                for commands in &self.shared.commands {
                    let _ = commands.send(Command::Subscribe(entry.clone()));
                }
                Registered {
                    entry,
                    watchers: 0,
                    idle: 0,
                }
            });
        if let Some(channel) = v1_channel {
            // The first 1.x-compatible waiter of an entry made by waiters without it:
            // subscribe the 1.x channel too. Its confirmation wakes every waiter, as a
            // first subscription does, so this waiter misses no 1.x release either
            // (`ready` returns at once, the entry being confirmed already).
            if registered.entry.v1_channel.set(channel.clone()).is_ok() {
                for commands in &self.shared.commands {
                    let _ = commands.send(Command::Subscribe(registered.entry.clone()));
                }
            }
        }
        registered.watchers += 1;
        Watch {
            shared: self.shared.clone(),
            entry: registered.entry.clone(),
        }
    }

    /// This manager's id in the queues of waiting processes.
    pub(crate) fn process(&self) -> &Arc<str> {
        &self.shared.process
    }

    /// How many times the subscriber connection has been established.
    pub(crate) fn connections(&self) -> u64 {
        self.shared.status.connections.load(Ordering::Relaxed)
    }

    /// Locks with a registered watcher.
    pub(crate) fn watched(&self) -> usize {
        self.shared
            .registry()
            .values()
            .filter(|r| r.watchers > 0)
            .count()
    }

    /// A watch of a lock whose subscription is in place now (confirmed, and kept by
    /// another watcher or lingering after the last one), without subscribing anything;
    /// `None` otherwise.
    pub(crate) fn warm_watch(&self, names: &LockNames) -> Option<Watch> {
        let mut registry = self.shared.registry();
        let registered = registry.get_mut(&names.release_channel)?;
        if names.v1.is_some() && registered.entry.v1_channel.get().is_none() {
            return None; // the 1.x channel is still to subscribe: `watch` does it
        }
        if !self.shared.is_confirmed(&registered.entry) {
            return None;
        }
        registered.watchers += 1;
        Some(Watch {
            shared: self.shared.clone(),
            entry: registered.entry.clone(),
        })
    }

    /// Leaves the queue of the lock `names` in the background: for a waiter cut short
    /// before it had a [`Watch`] to record that its attempt may have queued the process.
    pub(crate) fn leave(&self, names: Arc<LockNames>) {
        self.shared.leave(names);
    }

    /// Leaves, in the background (tasks of the manager), every lock queue this process
    /// may be in: shutdown calls it before it waits for the manager's tasks, since the
    /// waiters it ends drop their watches (and would leave) only when next polled,
    /// possibly after shutdown returned and the program exited.
    pub(crate) fn leave_all(&self) {
        let registry = self.shared.registry();
        for registered in registry.values() {
            if registered.entry.queued.swap(false, Ordering::AcqRel) {
                self.shared.leave(registered.entry.names.clone());
            }
        }
    }

    /// Channels the subscriber task keeps subscribed.
    pub(crate) fn channels(&self) -> usize {
        self.shared.status.channels.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// Whether `entry`'s subscription is in place now: every connected subscriber
    /// (a quorum of them on Redlock) has confirmed it.
    fn is_confirmed(&self, entry: &Entry) -> bool {
        let connected = self.status.connected.load(Ordering::Acquire);
        connected > 0
            && (*entry.confirmed.borrow()).count_ones() as usize >= connected.min(self.quorum)
    }

    /// Drops `entry`'s subscription if nobody watched it since it became idle the
    /// `idle`-th time.
    fn unsubscribe_idle(&self, entry: &Arc<Entry>, idle: u64) {
        let mut registry = self.registry();
        if registry
            .get(&entry.release_channel)
            .is_some_and(|r| Arc::ptr_eq(&r.entry, entry) && r.watchers == 0 && r.idle == idle)
        {
            self.unsubscribe(&mut registry, entry);
        }
    }

    fn unsubscribe(&self, registry: &mut HashMap<String, Registered>, entry: &Arc<Entry>) {
        registry.remove(&entry.release_channel);
        for commands in &self.commands {
            let _ = commands.send(Command::Unsubscribe(entry.clone()));
        }
    }

    /// The process no longer waits for the lock `names`: it leaves the lock's queue,
    /// in the background (a task of the manager), passing on a turn reserved for it.
    /// Without a runtime the entry stays: a dead entry, which costs the others one
    /// reservation when its turn comes ([`crate::queue`]).
    ///
    /// A new waiter of this process may have come meanwhile and queued the process
    /// again before the leave reached the server (a retry right after a timeout: its
    /// attempt is sent before this task runs); the leave then took out that entry too,
    /// and the holder's release would find nobody in line and publish nothing. So once
    /// the leave is done, the lock's waiters of this process, if any, are woken: each
    /// makes one attempt, which queues the process again (or takes the lock). Every
    /// waiter's wake-up future exists before each of its attempts (`lock/wait.rs`), so
    /// an attempt that reached the server before the leave is followed by another.
    fn leave(self: &Arc<Self>, names: Arc<LockNames>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = Arc::downgrade(self);
        let backend = self.backend.clone();
        let process = self.process.clone();
        self.tasks.spawn_on(
            async move {
                if let Err(e) = crate::scripts::leave(&backend, &names, &process).await {
                    tracing::debug!(error = %e, "leaving a lock's queue failed: its entry costs one reservation");
                }
                if let Some(shared) = shared.upgrade() {
                    let registry = shared.registry();
                    if let Some(registered) = registry.get(&names.release_channel) {
                        if registered.watchers > 0 {
                            registered.entry.wake();
                        }
                    }
                }
            },
            &handle,
        );
    }

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
    /// Waits until the lock's channels are subscribed, so that the next attempt need
    /// not be repeated. Returns at once while the subscriber is disconnected, and gives
    /// up after the response timeout: either way the confirmation, when it comes, wakes
    /// the waiter (see the module docs), and waits are always also bounded by the
    /// holder's PTTL.
    pub(crate) async fn ready(&self) {
        // On Redlock, a quorum of the subscribers connected now (one per node) must
        // have confirmed: a release heard from fewer wakes nobody, and a paused node,
        // whose connection is open but silent, must not hold every waiter up.
        let connected = self.shared.status.connected.load(Ordering::Acquire);
        if connected == 0 {
            return;
        }
        let need = connected.min(self.shared.quorum);
        let mut confirmed = self.entry.confirmed.subscribe();
        let _ = tokio::time::timeout(
            self.shared.ready_timeout,
            confirmed.wait_for(|mask| mask.count_ones() as usize >= need),
        )
        .await;
    }

    /// The wake-up future; create and `enable()` it *before* the attempt it follows.
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.entry.notify.notified()
    }

    /// Hands a wake-up this waiter received, and will not use, to the next waiter.
    pub(crate) fn pass_on(&self) {
        self.entry.notify.notify_one();
    }

    /// Whether the subscription is in place now (every connected subscriber has
    /// confirmed it): a release published from now on reaches this process.
    pub(crate) fn is_confirmed(&self) -> bool {
        self.shared.is_confirmed(&self.entry)
    }

    /// Takes the news that a turn message named this process: `true` once per message.
    /// Read before an attempt (which then serves it) and after (a message that came
    /// meanwhile calls for another).
    pub(crate) fn take_turn(&self) -> bool {
        self.entry.ours.swap(false, Ordering::AcqRel)
    }

    /// Whether a turn message named this process that no attempt served yet.
    pub(crate) fn has_turn(&self) -> bool {
        self.entry.ours.load(Ordering::Acquire)
    }

    /// Records that this process may be in the lock's queue in Redis (an attempt
    /// queued it, or a hand-off script queued it again), or that it is not (an
    /// acquisition took it out, and no other waiter of this process is queued).
    pub(crate) fn set_queued(&self, queued: bool) {
        self.entry.queued.store(queued, Ordering::Release);
    }

    /// An acquisition took this process out of the lock's queue: records it, unless
    /// another waiter of this process watches the lock too. That one's failed attempt
    /// may have queued the process again after the acquisition, its reply handled
    /// first: the record stays "may be queued" (at worst one needless leave later).
    pub(crate) fn acquired(&self) {
        let registry = self.shared.registry();
        let alone = registry
            .get(&self.entry.release_channel)
            .is_some_and(|r| Arc::ptr_eq(&r.entry, &self.entry) && r.watchers <= 1);
        if alone {
            self.entry.queued.store(false, Ordering::Release);
        }
    }

    /// Whether this process may be in the lock's queue.
    pub(crate) fn queued(&self) -> bool {
        self.entry.queued.load(Ordering::Acquire)
    }

    /// When this process, a standby of the last turn, checks the key, if it is one.
    pub(crate) fn standby(&self) -> watch::Receiver<Option<Instant>> {
        self.entry.standby.subscribe()
    }

    /// Gives up a standby's duty (it is being carried out).
    pub(crate) fn clear_standby(&self) {
        self.entry
            .standby
            .send_if_modified(|duty| duty.take().is_some());
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut registry = self.shared.registry();
        if let Some(registered) = registry.get_mut(&self.entry.release_channel) {
            if Arc::ptr_eq(&registered.entry, &self.entry) {
                registered.watchers -= 1;
                if registered.watchers == 0 {
                    if self.entry.queued.swap(false, Ordering::AcqRel) {
                        self.shared.leave(self.entry.names.clone());
                    }
                    registered.idle += 1;
                    let idle = registered.idle;
                    match tokio::runtime::Handle::try_current() {
                        Ok(handle) => {
                            // Lingers (see LINGER), then goes unless watched again.
                            // A weak handle: a manager dropped meanwhile is not kept.
                            let shared = Arc::downgrade(&self.shared);
                            let entry = self.entry.clone();
                            handle.spawn(async move {
                                tokio::time::sleep(LINGER).await;
                                if let Some(shared) = shared.upgrade() {
                                    shared.unsubscribe_idle(&entry, idle);
                                }
                            });
                        }
                        Err(_) => self.shared.unsubscribe(&mut registry, &self.entry),
                    }
                }
            }
        }
    }
}

/// The subscriber task's state: (re)connects, keeps the server's subscriptions in line
/// with the registry, and routes messages to waiters.
struct Subscriber {
    /// Where the subscriber connects ([`Backend::subscriber_at`]).
    backend: Arc<Backend>,
    /// Which of the backend's subscribers this is (a Redlock node; else 0).
    node: usize,
    /// How many nodes must publish one holder's release to wake a waiter (1 but on
    /// Redlock).
    quorum: usize,
    /// Connection attempts so far: a cluster backend rotates nodes by it.
    attempts: u64,
    commands: mpsc::UnboundedReceiver<Command>,
    status: Arc<Status>,
    timeouts: Timeouts,
    /// Channel name -> entry: what is to be subscribed (on the live connection, or on
    /// the next one).
    channels: HashMap<String, Arc<Entry>>,
    /// Cleared when the server refuses the keyspace channels (an ACL without them):
    /// waiters then rely on release messages and the holder's PTTL alone.
    keyspace_ok: bool,
    /// This manager's id in the queues of waiting processes.
    process: Arc<str>,
    /// Commands received while a round was in flight: the next round's. The queue is
    /// read even then, so that the task learns at once that every handle is gone (it
    /// would otherwise linger, with its connection, until the round's reply or timeout).
    backlog: Vec<Command>,
}

/// Why the task left a connection.
enum Leave {
    /// The connection failed: reconnect.
    Failed,
    /// Every handle is gone: stop.
    Stop,
}

/// The channels one drained run of commands changes, and the entries it subscribes.
#[derive(Default)]
struct Changes {
    touched: HashSet<String>,
    subscribed: Vec<Arc<Entry>>,
}

/// What one pipelined round of (un)subscriptions is to send.
#[derive(Default)]
struct Batch {
    unsubscribe: Vec<String>,
    release: Vec<String>,
    keyspace: Vec<String>,
    /// Entries confirmed once every reply has come.
    confirm: Vec<Arc<Entry>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unsubscribe,
    Release,
    Keyspace,
}

/// The outcome of an operation in flight on the connection.
enum Done {
    /// The batch went through; `Some` when the keyspace channels were refused.
    Batch(Batch, Option<RedisError>),
    Ping,
    Failed,
}

type Pending = Pin<Box<dyn Future<Output = Done> + Send>>;

impl Subscriber {
    async fn run(mut self) {
        let mut delay = RECONNECT_MIN;
        loop {
            // Read before connecting: a master that moves while the subscriber connects
            // to it is left at once (`Backend::moved`).
            let generation = self.backend.generation();
            let Some(connected) = self.connect().await else {
                return;
            };
            if let Some(pubsub) = connected {
                let (sink, stream) = pubsub.split();
                // Everything queued while connecting goes into this resubscription.
                if self.drain(&mut Changes::default()).is_err() {
                    return;
                }
                let everything = Batch {
                    release: self.release_channels(),
                    keyspace: self.keyspace_channels(),
                    confirm: self.entries(),
                    ..Batch::default()
                };
                let done = {
                    let sending = send(sink.clone(), everything, self.timeouts.response);
                    tokio::pin!(sending);
                    loop {
                        tokio::select! {
                            done = &mut sending => break done,
                            command = self.commands.recv() => match command {
                                Some(command) => self.backlog.push(command),
                                None => return,
                            },
                        }
                    }
                };
                if let Done::Batch(batch, refused) = done {
                    delay = RECONNECT_MIN;
                    self.status.connected.fetch_add(1, Ordering::AcqRel);
                    self.status.connections.fetch_add(1, Ordering::Relaxed);
                    // Confirms every entry: whatever was published while the channels
                    // were not subscribed is lost, so every waiter retries.
                    let mut subscribed = HashSet::new();
                    self.settle(batch, refused, &mut subscribed);
                    let leave = self.serve(sink, stream, subscribed, generation).await;
                    self.status.connected.fetch_sub(1, Ordering::AcqRel);
                    let node = bit(self.node);
                    for entry in self.channels.values() {
                        entry.confirmed.send_modify(|mask| *mask &= !node);
                    }
                    if let Leave::Stop = leave {
                        return;
                    }
                }
            }
            // Back off before reconnecting, keeping the channel map current meanwhile:
            // first with what came in during the round that failed (it is older than
            // anything still queued).
            for command in std::mem::take(&mut self.backlog) {
                self.apply(command, &mut Changes::default());
            }
            let wait = tokio::time::sleep(delay);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    command = self.commands.recv() => {
                        let Some(command) = command else { return };
                        self.apply(command, &mut Changes::default());
                    }
                }
            }
            delay = (delay * 2).min(RECONNECT_MAX);
        }
    }

    /// Opens a connection, applying the commands that arrive meanwhile to the channel
    /// map. `None`: every handle is gone; `Some(None)`: the attempt failed.
    async fn connect(&mut self) -> Option<Option<redis::aio::PubSub>> {
        let backend = self.backend.clone();
        let attempt = self.attempts;
        let node = self.node;
        self.attempts += 1;
        let connecting = tokio::time::timeout(self.timeouts.connect, async move {
            backend.subscriber_at(node, attempt).await
        });
        tokio::pin!(connecting);
        loop {
            tokio::select! {
                connected = &mut connecting => return Some(connected.ok().and_then(Result::ok)),
                command = self.commands.recv() => {
                    let command = command?;
                    self.apply(command, &mut Changes::default());
                }
            }
        }
    }

    /// Serves one live connection until it fails or every handle is gone.
    async fn serve(
        &mut self,
        sink: PubSubSink,
        mut stream: PubSubStream,
        mut subscribed: HashSet<String>,
        generation: u64,
    ) -> Leave {
        let backend = self.backend.clone();
        let moved = backend.moved(generation);
        tokio::pin!(moved);
        // Whatever came in during the resubscription.
        let mut pending = self.next_round(&sink, &mut subscribed);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.reset();
        loop {
            tokio::select! {
                done = async {
                    match pending.as_mut() {
                        Some(op) => op.await,
                        None => std::future::pending().await,
                    }
                }, if pending.is_some() => {
                    match done {
                        Done::Batch(batch, refused) => self.settle(batch, refused, &mut subscribed),
                        Done::Ping => {}
                        Done::Failed => return Leave::Failed,
                    }
                    // What queued meanwhile is the next round.
                    pending = self.next_round(&sink, &mut subscribed);
                }
                // One round in flight at a time; whatever queues meanwhile is the next.
                // The queue is read even then: its end (every handle gone) stops the task
                // at once, whatever is in flight.
                command = self.commands.recv() => {
                    let Some(command) = command else { return Leave::Stop };
                    self.backlog.push(command);
                    if pending.is_none() {
                        pending = self.next_round(&sink, &mut subscribed);
                    }
                }
                // Behind Sentinel the master moved: this connection may be on a demoted
                // or dead node; reconnecting to the new one wakes every waiter.
                () = &mut moved => return Leave::Failed,
                message = stream.next() => match message {
                    Some(message) => self.dispatch(&message),
                    None => return Leave::Failed,
                },
                _ = ping.tick(), if pending.is_none() => {
                    let mut sink = sink.clone();
                    let timeout = self.timeouts.response;
                    pending = Some(Box::pin(async move {
                        match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                            Ok(Ok(_)) => Done::Ping,
                            _ => Done::Failed,
                        }
                    }));
                }
            }
        }
    }

    /// Plans the commands queued now (the backlog first) against the server's
    /// subscriptions, and starts sending them; `None` when there is nothing to send
    /// (the changes, if any, are settled at once). When every handle is gone, the next
    /// read of the queue says so.
    fn next_round(
        &mut self,
        sink: &PubSubSink,
        subscribed: &mut HashSet<String>,
    ) -> Option<Pending> {
        let mut changes = Changes::default();
        // A closed queue is seen by the caller's next `recv`.
        let _ = self.drain(&mut changes);
        let batch = self.plan(changes, subscribed);
        if batch.unsubscribe.is_empty() && batch.release.is_empty() && batch.keyspace.is_empty() {
            self.settle(batch, None, subscribed);
            None
        } else {
            Some(Box::pin(send(sink.clone(), batch, self.timeouts.response)))
        }
    }

    /// Applies the backlog and every command queued now. `Err` when every handle is
    /// gone.
    fn drain(&mut self, changes: &mut Changes) -> Result<(), ()> {
        for command in std::mem::take(&mut self.backlog) {
            self.apply(command, changes);
        }
        loop {
            match self.commands.try_recv() {
                Ok(command) => self.apply(command, changes),
                Err(mpsc::error::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::error::TryRecvError::Disconnected) => return Err(()),
            }
        }
    }

    /// Applies a registry change to the channel map.
    fn apply(&mut self, command: Command, changes: &mut Changes) {
        match command {
            Command::Subscribe(entry) => {
                let keyspace = entry.keyspace_channels().filter(|_| self.keyspace_ok);
                for name in std::iter::once(&entry.release_channel).chain(keyspace) {
                    self.channels.insert(name.clone(), entry.clone());
                    changes.touched.insert(name.clone());
                }
                changes.subscribed.push(entry);
            }
            Command::Unsubscribe(entry) => {
                for name in entry.channels() {
                    let current = self.channels.get(name);
                    if current.is_some_and(|current| Arc::ptr_eq(current, &entry)) {
                        self.channels.remove(name);
                        changes.touched.insert(name.clone());
                    }
                }
            }
        }
        self.status
            .channels
            .store(self.channels.len(), Ordering::Relaxed);
    }

    /// Nets drained changes out against the server's subscriptions.
    fn plan(&self, changes: Changes, subscribed: &HashSet<String>) -> Batch {
        let mut batch = Batch::default();
        for name in changes.touched {
            match (self.channels.get(&name), subscribed.contains(&name)) {
                (Some(entry), false) if *name == entry.release_channel => batch.release.push(name),
                (Some(_), false) => batch.keyspace.push(name),
                (None, true) => batch.unsubscribe.push(name),
                _ => {}
            }
        }
        // An entry subscribed and unsubscribed in the same run has no waiter left.
        batch.confirm = changes
            .subscribed
            .into_iter()
            .filter(|entry| {
                self.channels
                    .get(&entry.release_channel)
                    .is_some_and(|current| Arc::ptr_eq(current, entry))
            })
            .collect();
        batch
    }

    /// Records a batch the server acknowledged and confirms its entries.
    fn settle(
        &mut self,
        batch: Batch,
        refused: Option<RedisError>,
        subscribed: &mut HashSet<String>,
    ) {
        for name in &batch.unsubscribe {
            subscribed.remove(name);
        }
        subscribed.extend(batch.release);
        if let Some(e) = refused {
            if self.keyspace_ok {
                tracing::warn!(error = %e, "keyspace channels refused; waking waiters by release messages and lease expiry only");
            }
            self.keyspace_ok = false;
            self.channels
                .retain(|name, entry| *name == entry.release_channel);
            subscribed.retain(|name| !name.starts_with("__keyspace@"));
            self.status
                .channels
                .store(self.channels.len(), Ordering::Relaxed);
        } else {
            subscribed.extend(batch.keyspace);
        }
        for entry in &batch.confirm {
            // Unsubscribed meanwhile (the next batch will say so): nobody waits on it.
            if self
                .channels
                .get(&entry.release_channel)
                .is_some_and(|current| Arc::ptr_eq(current, entry))
            {
                entry.confirm(self.node);
            }
        }
    }

    fn release_channels(&self) -> Vec<String> {
        self.channels
            .iter()
            .filter(|(name, entry)| **name == entry.release_channel)
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn keyspace_channels(&self) -> Vec<String> {
        self.channels
            .iter()
            .filter(|(name, entry)| **name != entry.release_channel)
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.channels
            .iter()
            .filter(|(name, entry)| **name == entry.release_channel)
            .map(|(_, entry)| entry.clone())
            .collect()
    }

    fn dispatch(&self, message: &Msg) {
        let name = message.get_channel_name();
        let Some(entry) = self.channels.get(name) else {
            return;
        };
        if *name == entry.release_channel {
            if self.quorum > 1 {
                if entry.vote(self.node, message.get_payload_bytes(), self.quorum) {
                    entry.notify.notify_one();
                }
                return;
            }
            let payload = message.get_payload_bytes();
            if payload.starts_with(b"turn ") || payload == b"claimed" {
                // Not a deletion of the key: no keyspace `del` came before it.
                entry.route(payload, &self.process);
            } else if !entry.del_seen.swap(false, Ordering::Relaxed) {
                entry.route(payload, &self.process);
            }
            return;
        }
        match message.get_payload_bytes() {
            // The 1.x key's `del` (a 1.x release) comes with no release message, so
            // it does not mark one as expected.
            b"del" if entry.v1_channel.get().is_some_and(|c| c == name) => entry.wake(),
            b"del" => {
                entry.del_seen.store(true, Ordering::Relaxed);
                entry.wake();
            }
            b"expired" | b"evicted" => entry.wake(),
            _ => {}
        }
    }
}

/// Sends a batch as multi-channel commands, all at once (pipelined on the connection),
/// and waits for every reply, allowing `timeout` between one reply and the next.
///
/// A refusal of the keyspace channels (an error reply, e.g. an ACL without
/// `&__keyspace@*`) is not a broken connection: it is reported, and the release
/// channels still work. Any other failure means the connection is unusable.
async fn send(sink: PubSubSink, batch: Batch, timeout: Duration) -> Done {
    let mut replies = FuturesUnordered::new();
    for (kind, names) in [
        (Kind::Unsubscribe, &batch.unsubscribe),
        (Kind::Release, &batch.release),
        (Kind::Keyspace, &batch.keyspace),
    ] {
        for chunk in chunks(names) {
            let mut sink = sink.clone();
            replies.push(async move {
                let reply = match kind {
                    Kind::Unsubscribe => sink.unsubscribe(chunk).await,
                    Kind::Release | Kind::Keyspace => sink.subscribe(chunk).await,
                };
                (kind, reply)
            });
        }
    }
    let mut refused = None;
    loop {
        match tokio::time::timeout(timeout, replies.next()).await {
            Ok(None) => return Done::Batch(batch, refused),
            Ok(Some((_, Ok(())))) => {}
            Ok(Some((Kind::Keyspace, Err(e)))) if !is_transient(&e) => refused = Some(e),
            Ok(Some(_)) | Err(_) => return Done::Failed,
        }
    }
}

/// Splits channel names into commands of at most [`CHUNK_CHANNELS`] names and about
/// [`CHUNK_BYTES`] bytes.
fn chunks(names: &[String]) -> Vec<Vec<String>> {
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for name in names {
        if !chunk.is_empty() && (chunk.len() >= CHUNK_CHANNELS || bytes + name.len() > CHUNK_BYTES)
        {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += name.len();
        chunk.push(name.clone());
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber() -> (Subscriber, mpsc::UnboundedSender<Command>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let subscriber = Subscriber {
            backend: Arc::new(Backend::unconnected("redis://127.0.0.1:1/")),
            node: 0,
            quorum: 1,
            attempts: 0,
            commands: receiver,
            status: Arc::new(Status::default()),
            timeouts: Timeouts {
                connect: Duration::from_secs(2),
                response: Duration::from_secs(2),
                explicit: false,
                replica_sync: None,
            },
            channels: HashMap::new(),
            keyspace_ok: true,
            backlog: Vec::new(),
            process: Arc::from("me"),
        };
        (subscriber, commands)
    }

    fn entry(id: &str, keyspace: bool) -> Arc<Entry> {
        let names = Arc::new(LockNames::new(id, keyspace.then_some(0)));
        Arc::new(Entry {
            release_channel: names.release_channel.clone(),
            keyspace_channel: names.keyspace_channel.clone(),
            notify: Notify::new(),
            confirmed: watch::Sender::new(0),
            votes: Mutex::new(Vec::new()),
            del_seen: AtomicBool::new(false),
            v1_channel: OnceLock::new(),
            names,
            ours: AtomicBool::new(false),
            queued: AtomicBool::new(false),
            standby: watch::Sender::new(None),
        })
    }

    /// Drains the queue into one batch, as `serve` does.
    fn next_batch(subscriber: &mut Subscriber, subscribed: &HashSet<String>) -> Batch {
        let mut changes = Changes::default();
        subscriber.drain(&mut changes).unwrap();
        subscriber.plan(changes, subscribed)
    }

    #[tokio::test]
    async fn a_confirmation_wakes_a_waiter_that_registered_before_it() {
        let (mut subscriber, commands) = subscriber();
        let a = entry("a", true);
        // The waiter's wake-up future exists before its attempt, before any confirmation.
        let woken = a.notify.notified();
        commands.send(Command::Subscribe(a.clone())).unwrap();
        let mut subscribed = HashSet::new();
        let batch = next_batch(&mut subscriber, &subscribed);
        assert_eq!(batch.release, std::slice::from_ref(&a.release_channel));
        assert_eq!(batch.keyspace.len(), 1);
        assert!(*a.confirmed.borrow() == 0);
        subscriber.settle(batch, None, &mut subscribed);
        assert!(*a.confirmed.borrow() != 0);
        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("woken by the confirmation");
        assert_eq!(subscribed.len(), 2);
    }

    #[tokio::test]
    async fn a_burst_is_one_batch_and_churn_nets_out() {
        let (mut subscriber, commands) = subscriber();
        let mut subscribed = HashSet::new();
        let old = entry("same", false);
        commands.send(Command::Subscribe(old.clone())).unwrap();
        let batch = next_batch(&mut subscriber, &subscribed);
        subscriber.settle(batch, None, &mut subscribed);

        let burst: Vec<_> = (0..1000).map(|i| entry(&format!("b{i}"), false)).collect();
        for e in &burst {
            commands.send(Command::Subscribe(e.clone())).unwrap();
        }
        // The last watcher of "same" leaves and a new one comes: the channel stays.
        let new = entry("same", false);
        commands.send(Command::Unsubscribe(old.clone())).unwrap();
        commands.send(Command::Subscribe(new.clone())).unwrap();
        // Subscribed and left again within the same run: nothing to send.
        let brief = entry("brief", false);
        commands.send(Command::Subscribe(brief.clone())).unwrap();
        commands.send(Command::Unsubscribe(brief.clone())).unwrap();
        let batch = next_batch(&mut subscriber, &subscribed);
        assert_eq!(batch.release.len(), 1000, "one batch for the burst");
        assert!(batch.unsubscribe.is_empty());
        assert_eq!(chunks(&batch.release).len(), 2, "two SUBSCRIBE commands");
        subscriber.settle(batch, None, &mut subscribed);
        assert!(burst.iter().all(|e| *e.confirmed.borrow() != 0));
        assert!(*new.confirmed.borrow() != 0);
        assert!(*brief.confirmed.borrow() == 0);
        assert_eq!(subscribed.len(), 1001);

        for e in &burst {
            commands.send(Command::Unsubscribe(e.clone())).unwrap();
        }
        let batch = next_batch(&mut subscriber, &subscribed);
        assert_eq!(batch.unsubscribe.len(), 1000);
        subscriber.settle(batch, None, &mut subscribed);
        assert_eq!(subscriber.channels.len(), 1);
        assert_eq!(subscriber.status.channels.load(Ordering::Relaxed), 1);
        assert_eq!(subscribed.len(), 1);
    }

    #[tokio::test]
    async fn refused_keyspace_channels_are_dropped_and_release_channels_confirmed() {
        let (mut subscriber, commands) = subscriber();
        let a = entry("a", true);
        commands.send(Command::Subscribe(a.clone())).unwrap();
        let mut subscribed = HashSet::new();
        let batch = next_batch(&mut subscriber, &subscribed);
        let refusal = RedisError::from((redis::ErrorKind::Client, "NOPERM"));
        subscriber.settle(batch, Some(refusal), &mut subscribed);
        assert!(*a.confirmed.borrow() != 0);
        assert!(!subscriber.keyspace_ok);
        assert_eq!(subscribed, HashSet::from([a.release_channel.clone()]));
        // Later locks subscribe their release channel only.
        let b = entry("b", true);
        commands.send(Command::Subscribe(b.clone())).unwrap();
        let batch = next_batch(&mut subscriber, &subscribed);
        assert_eq!(batch.release, std::slice::from_ref(&b.release_channel));
        assert!(batch.keyspace.is_empty());
    }

    #[tokio::test]
    async fn the_backlog_is_applied_before_commands_queued_after_it() {
        let (mut subscriber, commands) = subscriber();
        let a = entry("a", false);
        // Received while a round was in flight; its watcher has left since.
        subscriber.backlog.push(Command::Subscribe(a.clone()));
        commands.send(Command::Unsubscribe(a.clone())).unwrap();
        let batch = next_batch(&mut subscriber, &HashSet::new());
        assert!(batch.release.is_empty() && batch.confirm.is_empty());
        assert!(
            subscriber.channels.is_empty(),
            "no channel left without a watcher"
        );
        assert!(subscriber.backlog.is_empty());
    }

    #[test]
    fn a_quorum_of_nodes_for_the_same_holder_wakes_once() {
        let a = entry("a", false);
        // Quorum 3 of 5: two nodes for holder x, one for y: nobody yet.
        assert!(!a.vote(0, b"x", 3));
        assert!(!a.vote(1, b"y", 3));
        assert!(!a.vote(2, b"x", 3));
        // A node counted twice is one node.
        assert!(!a.vote(2, b"x", 3));
        assert!(a.vote(4, b"x", 3), "the third node for x wakes");
        assert!(!a.vote(3, b"x", 3), "once");
        // Many holders later, the table stays bounded.
        for i in 0..100u8 {
            a.vote(0, &[i], 3);
        }
        assert!(a.votes.lock().unwrap().len() <= MAX_VOTES);
    }

    #[test]
    fn chunks_bound_count_and_size_and_keep_every_name() {
        let names: Vec<String> = (0..1300).map(|i| format!("c{i}")).collect();
        let split = chunks(&names);
        assert_eq!(
            split.iter().map(Vec::len).collect::<Vec<_>>(),
            [512, 512, 276]
        );
        assert_eq!(split.concat(), names);
        let long = vec!["x".repeat(200 * 1024), "y".repeat(200 * 1024), "z".into()];
        let split = chunks(&long);
        assert_eq!(split.len(), 2, "a 400 KiB pair is split");
        assert!(chunks(&[]).is_empty());
    }
}
