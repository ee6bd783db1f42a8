//! A master behind Redis Sentinel: the master is resolved through the sentinels on
//! every (re)connect, and followed across failovers.
//!
//! redis-rs's own Sentinel client resolves the master once, and a connection manager
//! built on it stays pinned to that address (redis-rs#1438): after a crash failover it
//! wrote to the restarted, *empty* old master until Sentinel demoted it (~10 s), and
//! after a graceful one it got `READONLY` for ever. Both give one lock to two holders
//! (../shared/SCALE-OUT.md). So this backend holds a plain multiplexed connection
//! (which never reconnects by itself, unlike `ConnectionManager`: a reconnect must go
//! through the sentinels) and a background *follower* task that:
//!
//! - resolves the master by asking **every** sentinel (`SENTINEL MASTER`, falling back
//!   to `SENTINEL GET-MASTER-ADDR-BY-NAME` where an ACL refuses it) and taking the
//!   answer with the highest `config-epoch`: a sentinel that has not yet heard of a
//!   promotion still names the old master, which may be back, empty, and say it is a
//!   master;
//! - checks that the node says `ROLE` master (`INFO replication` where `ROLE` is
//!   refused, as on some managed services) before any command goes to it;
//! - drops the connection and resolves again when a command on it fails on I/O, times
//!   out, or is answered `READONLY` ([`Sentinel::retire`]), when a sentinel publishes
//!   the start of a failover or `+switch-master` for the service (a subscription on
//!   every sentinel: only the leader publishes a failover's steps), and when a
//!   periodic check finds the node no longer a master or the sentinels naming another
//!   one (in case an event was missed);
//! - installs no master while a sentinel reports a failover under way
//!   (`failover_in_progress`) and has not yet seen the promoted replica take over
//!   (then its `GET-MASTER-ADDR-BY-NAME` names that one, which is used): the leader
//!   promotes a replica while every sentinel
//!   still names the old master, which takes writes until it is demoted, seconds
//!   later, and those writes are lost (a `SENTINEL FAILOVER` lost 769 of 6215 locks
//!   granted across it before this; `tests/sentinel.rs`);
//! - after its own process stalled (a heartbeat task ticking every 25 ms came more
//!   than 80 ms late: `SIGSTOP`, a GC pause, a starved runtime), has every command wait
//!   until the master was verified again by a check that started after the stall: a
//!   process paused through a failover otherwise acquired on the replaced master the
//!   moment it woke, before reading the sentinels' news waiting in its sockets.
//!
//! While no master is known, commands wait for one up to the response timeout, then
//! fail with a transient error (`lock()` waits through it). Each move to another
//! master bumps [`Sentinel::generation`], which the notifier watches: it drops its
//! subscriber connection, reconnects to the new master and wakes every waiter.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, RedisError,
    RedisResult, ServerErrorKind,
};
use tokio::sync::{watch, Notify};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Replaceable, SyncPool, Ticket};
use crate::config::Timeouts;
use crate::errors::RdLockError;

/// How long one sentinel may take to connect and answer.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the follower checks the master's role and asks the sentinels, besides
/// `+switch-master`.
const CHECK_EVERY: Duration = Duration::from_millis(1000);
/// Waits between failed resolutions (no sentinel reachable, no master yet).
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_millis(500);
/// Waits before moving the `+switch-master` subscription to the next sentinel.
const RESUBSCRIBE_WAIT: Duration = Duration::from_millis(200);
/// How often the stall detector's heartbeat ticks.
const HEARTBEAT: Duration = Duration::from_millis(25);
/// A heartbeat this late means the process (or its runtime) stalled: paused (GC,
/// `SIGSTOP`, a VM stall) or starved. Whatever happened meanwhile (a failover
/// announced on the sentinel subscriptions, unread in their sockets) is unknown, so
/// the master is verified again before any command goes to it. It must be shorter
/// than the quickest promotion after `+try-failover`: Sentinel moves a failover one
/// step per timer tick (hz 10-19, 52-100 ms) and sends `REPLICAOF NO ONE` two or three
/// ticks after it (~105 ms at best; measured 200-315 ms for `SENTINEL FAILOVER`). With
/// 500 ms, a stall of 200-315 ms through a graceful failover acquired on the replaced
/// master (tests/sentinel.rs, 3 of 3 runs). A false alarm (a busy runtime) costs one
/// verification (`ROLE` and a question to each sentinel) that commands wait for.
const STALL: Duration = Duration::from_millis(80);

/// The master's address (host, port).
type Addr = (String, u16);

pub(crate) struct Sentinel {
    shared: Arc<Shared>,
    /// A lazy plain connection to the first master.
    first: redis::aio::ConnectionManager,
    /// Ends the follower and the `+switch-master` subscription with the backend.
    _tasks: DropGuard,
}

struct Shared {
    sentinels: Vec<ConnectionInfo>,
    service: String,
    /// Credentials, database, TLS and TCP settings for the data nodes; its address is
    /// replaced by the master's.
    node: ConnectionInfo,
    timeouts: Timeouts,
    /// The connection to the master; `None` while it is being resolved.
    conn: Replaceable<Option<MultiplexedConnection>>,
    /// The master the connection goes to.
    master: Mutex<Option<Addr>>,
    /// Bumped each time a connection is installed: commands waiting for a master.
    installed: watch::Sender<u64>,
    /// Bumped each time the master moves to another address (see the module docs).
    moves: watch::Sender<u64>,
    /// Wakes the follower: the connection was dropped, or a sentinel announced a
    /// switch.
    wake: Notify,
    /// Connections for acquisitions followed by `WAIT` (replica sync).
    sync: SyncPool,
    /// One kept connection per sentinel (by index), so that the check every second
    /// does not open new ones; dropped when it fails.
    sentinel_conns: Mutex<Vec<Option<MultiplexedConnection>>>,
    /// The stall detector's last heartbeat.
    beat: Mutex<Instant>,
    /// The end of the last stall seen (see [`STALL`]); commands wait until a
    /// verification of the master that started after it.
    stalled_at: Mutex<Option<Instant>>,
    /// When the last verification of the master that found it good started (or the
    /// last connection was installed).
    verified: watch::Sender<Instant>,
}

impl Sentinel {
    /// Resolves the master of `service` through `sentinels`, connects to it and starts
    /// following it.
    pub(crate) async fn connect(
        sentinels: Vec<ConnectionInfo>,
        service: String,
        node: ConnectionInfo,
        timeouts: Timeouts,
    ) -> Result<Self, RdLockError> {
        if sentinels.is_empty() {
            return Err(RdLockError::InvalidConfig {
                option: "sentinels",
                reason: "no sentinel given: give the address of at least one sentinel",
            });
        }
        if service.is_empty() {
            return Err(RdLockError::InvalidConfig {
                option: "service",
                reason: "empty service name: give the master's name as the sentinels know it",
            });
        }
        let shared = Arc::new(Shared {
            sentinels,
            service,
            node,
            timeouts,
            conn: Replaceable::new(None),
            master: Mutex::new(None),
            installed: watch::Sender::new(0),
            moves: watch::Sender::new(0),
            wake: Notify::new(),
            sync: SyncPool::new(timeouts.sync_config()),
            sentinel_conns: Mutex::new(Vec::new()),
            beat: Mutex::new(Instant::now()),
            stalled_at: Mutex::new(None),
            verified: watch::Sender::new(Instant::now()),
        });
        // The first resolution reports its errors; later ones are retried.
        let started = Instant::now();
        let addr = shared.resolve().await.map_err(ResolveError::into_rdlock)?;
        let conn = shared
            .connect_master(&addr)
            .await
            .map_err(RdLockError::from_redis)?;
        let first =
            lazy_manager(shared.node_info(&addr), timeouts).map_err(RdLockError::InvalidUrl)?;
        shared.install(addr, conn, started);
        let token = CancellationToken::new();
        tokio::spawn(
            token
                .clone()
                .run_until_cancelled_owned(follow(shared.clone())),
        );
        *shared.beat.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        tokio::spawn(
            token
                .clone()
                .run_until_cancelled_owned(heartbeat(shared.clone())),
        );
        for index in 0..shared.sentinels.len() {
            tokio::spawn(
                token
                    .clone()
                    .run_until_cancelled_owned(watch_switches(shared.clone(), index)),
            );
        }
        Ok(Self {
            shared,
            first,
            _tasks: token.drop_guard(),
        })
    }

    /// The connection for one command: waits (up to the response timeout) while the
    /// master is being resolved, or verified again after a stall of the process; an
    /// I/O-class error when none came.
    pub(super) async fn get(&self) -> (Ticket, RedisResult<MultiplexedConnection>) {
        let mut installed = self.shared.installed.subscribe();
        let wait = async {
            self.shared.verified_since_stall().await;
            loop {
                let (ticket, conn) = self.shared.conn.get();
                if let Some(conn) = conn {
                    return (ticket, conn);
                }
                if installed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        match tokio::time::timeout(self.shared.timeouts.response, wait).await {
            Ok((ticket, conn)) => (ticket, Ok(conn)),
            Err(_) => (
                self.shared.conn.get().0,
                Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "no master: the sentinels have not named a reachable master yet",
                ))),
            ),
        }
    }

    /// Drops the connection `ticket` was for, if it still is the current one, and has
    /// the follower resolve the master again.
    pub(super) fn retire(&self, ticket: Ticket) {
        self.shared.retire(ticket);
    }

    /// How many times the master moved to another address.
    pub(super) fn generation(&self) -> u64 {
        *self.shared.moves.borrow()
    }

    /// Completes once the master has moved since `generation`.
    pub(super) async fn moved(&self, generation: u64) {
        let mut moves = self.shared.moves.subscribe();
        if moves.wait_for(|g| *g != generation).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The connection parameters of the current master, for a connection of its own
    /// (replica sync): waits like [`get`](Self::get) while none is installed (being
    /// resolved, or a failover under way: the last master may be cut off already);
    /// `None` when none came.
    pub(super) async fn master_info(&self) -> Option<ConnectionInfo> {
        self.get().await.1.ok()?;
        let master = self
            .shared
            .master
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        master.map(|addr| self.shared.node_info(&addr))
    }

    pub(super) fn sync_pool(&self) -> &SyncPool {
        &self.shared.sync
    }

    /// A subscriber connection to the current master.
    pub(super) async fn subscriber(&self) -> RedisResult<redis::aio::PubSub> {
        let master = self
            .shared
            .master
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(addr) = master else {
            return Err(RedisError::from((
                ErrorKind::Io,
                "no master: the sentinels have not named a reachable master yet",
            )));
        };
        Client::open(self.shared.node_info(&addr))?
            .get_async_pubsub()
            .await
    }

    /// A lazy plain connection to the master of now; it does not follow failovers.
    pub(crate) fn connection_manager(&self) -> redis::aio::ConnectionManager {
        let master = self
            .shared
            .master
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match master {
            Some(addr) => lazy_manager(self.shared.node_info(&addr), self.shared.timeouts)
                // Parsed and opened once already (`self.first`): cannot fail in practice.
                .unwrap_or_else(|_| self.first.clone()),
            None => self.first.clone(),
        }
    }
}

fn lazy_manager(
    info: ConnectionInfo,
    timeouts: Timeouts,
) -> RedisResult<redis::aio::ConnectionManager> {
    redis::aio::ConnectionManager::new_lazy_with_config(
        Client::open(info)?,
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.response)),
    )
}

/// Whether a failed command means the connection no longer leads to the master: it
/// broke, or the node answered as a replica (`READONLY`) or without its master
/// (`MASTERDOWN`).
pub(super) fn lost_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// Why no master could be resolved.
#[derive(Debug)]
enum ResolveError {
    /// No sentinel could be reached, or none named a reachable master (the cause).
    Unreachable(RedisError),
    /// Sentinels answered, and none monitors a master of that name.
    UnknownService,
    /// The node the sentinels name does not say it is a master.
    NotMaster(Addr),
    /// A sentinel reports a failover of the service under way: the master it names
    /// may already have been replaced by a promoted replica, and what is written to it
    /// now would be lost.
    FailoverInProgress,
}

impl ResolveError {
    fn into_rdlock(self) -> RdLockError {
        match self {
            Self::Unreachable(e) => RdLockError::from_redis(e),
            Self::UnknownService => RdLockError::InvalidConfig {
                option: "service",
                reason: "no sentinel monitors a master of that name",
            },
            Self::NotMaster((host, port)) => RdLockError::Unreachable(RedisError::from((
                ErrorKind::Server(ServerErrorKind::ReadOnly),
                "the node the sentinels name is not a master (a failover is under way)",
                format!("{host}:{port}"),
            ))),
            Self::FailoverInProgress => RdLockError::Unreachable(failover_error()),
        }
    }
}

impl Shared {
    /// The connection parameters of the data node at `addr`.
    fn node_info(&self, (host, port): &Addr) -> ConnectionInfo {
        let addr = match self.node.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.clone(), *port),
        };
        self.node.clone().set_addr(addr)
    }

    /// Asks every sentinel at once for the master, takes the answer with the highest
    /// config epoch, and checks that node says it is a master.
    async fn resolve(&self) -> Result<Addr, ResolveError> {
        let kept = {
            let mut conns = self
                .sentinel_conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            conns.resize(self.sentinels.len(), None);
            conns.clone()
        };
        let answers = futures_util::future::join_all(
            self.sentinels
                .iter()
                .zip(kept)
                .map(|(s, conn)| ask_sentinel(s.clone(), conn, &self.service)),
        )
        .await;
        let answers: Vec<_> = {
            let mut conns = self
                .sentinel_conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            answers
                .into_iter()
                .enumerate()
                .map(|(i, (conn, answer))| {
                    if let Some(slot) = conns.get_mut(i) {
                        *slot = conn;
                    }
                    answer
                })
                .collect()
        };
        let mut best: Option<(u64, Addr)> = None;
        let mut unknown = false;
        let mut failover = false;
        let mut first_error = None;
        for answer in answers {
            match answer {
                Ok(Some(Answer {
                    epoch,
                    addr,
                    failover_in_progress,
                })) => {
                    failover |= failover_in_progress;
                    if best.as_ref().is_none_or(|(e, _)| epoch > *e) {
                        best = Some((epoch, addr));
                    }
                }
                Ok(None) => unknown = true,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some((_, addr)) = best else {
            return Err(match first_error {
                Some(e) if !unknown => ResolveError::Unreachable(e),
                _ => ResolveError::UnknownService,
            });
        };
        // Only the sentinel leading a failover knows of it before `+switch-master`; it
        // promotes a replica while the others (and itself) still name the old master,
        // which takes writes until it is demoted: they are lost (measured: thousands of
        // acquisitions in one `SENTINEL FAILOVER`). No master until it is over.
        if failover {
            return Err(ResolveError::FailoverInProgress);
        }
        Ok(addr)
    }

    /// Connects to the data node at `addr` and checks it says it is a master.
    async fn connect_master(&self, addr: &Addr) -> RedisResult<MultiplexedConnection> {
        let client = Client::open(self.node_info(addr))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeouts.connect))
            .set_response_timeout(Some(self.timeouts.response));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        if is_master(&mut conn).await? {
            Ok(conn)
        } else {
            Err(ResolveError::NotMaster(addr.clone()).into_redis())
        }
    }

    /// Swaps in a connection to the master at `addr`, found by a resolution that
    /// started at `started`: that is when it was verified (a stall since then, during
    /// the resolution, leaves commands waiting for a verification after it: the master
    /// named before the stall may have been replaced meanwhile, and still say `master`).
    fn install(&self, addr: Addr, conn: MultiplexedConnection, started: Instant) {
        let moved = {
            let mut master = self.master.lock().unwrap_or_else(PoisonError::into_inner);
            let moved = master.as_ref().is_some_and(|m| *m != addr);
            *master = Some(addr);
            moved
        };
        self.conn.set(Some(conn));
        self.installed.send_modify(|g| *g += 1);
        self.mark_verified(started);
        if moved {
            tracing::warn!(master = ?self.master.lock().unwrap_or_else(PoisonError::into_inner).as_ref(), "sentinel: following the master to its new address");
            self.moves.send_modify(|g| *g += 1);
        }
    }

    /// Returns at once unless the process stalled (see [`STALL`]) since the master
    /// was last verified; then has the follower verify it and waits for that
    /// verification (or a new master). A process paused through a failover's start
    /// would otherwise acquire on the old master the moment it wakes, before it reads
    /// the sentinels' news waiting in its sockets: measured, 1-2 ms after `SIGCONT`,
    /// and that master, replaced, lost the lock (tests/safety_checker.rs, Sentinel
    /// mode).
    async fn verified_since_stall(&self) {
        let now = Instant::now();
        let stalled_at = {
            let beat = *self.beat.lock().unwrap_or_else(PoisonError::into_inner);
            let mut stalled_at = self
                .stalled_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // The first to see a stall (this or the heartbeat) dates it.
            if now.saturating_duration_since(beat) > STALL && stalled_at.is_none_or(|t| t < beat) {
                *stalled_at = Some(now);
            }
            *stalled_at
        };
        let Some(stalled_at) = stalled_at else { return };
        let mut verified = self.verified.subscribe();
        if *verified.borrow_and_update() >= stalled_at {
            return;
        }
        self.wake.notify_one();
        if verified.wait_for(|v| *v >= stalled_at).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Records a verification of the master that started at `started`.
    fn mark_verified(&self, started: Instant) {
        self.verified.send_if_modified(|v| {
            let newer = started > *v;
            if newer {
                *v = started;
            }
            newer
        });
    }

    fn retire(&self, ticket: Ticket) {
        // Only a live connection: a command that found none must not bump anything.
        if self.conn.replace_if(ticket, |c| c.as_ref().map(|_| None)) {
            tracing::warn!("sentinel: master connection dropped; resolving the master again");
            self.wake.notify_one();
        }
    }

    /// Drops the current connection whatever it is, and wakes the follower.
    fn drop_current(&self) {
        let (ticket, _) = self.conn.get();
        self.retire(ticket);
    }

    /// Whether the current master still is the master: it says so, and the sentinels
    /// name it. `false` when it is not (a timeout or an unreachable sentinel group
    /// says nothing: `true`).
    async fn still_master(&self) -> bool {
        let started = Instant::now();
        let good = self.check_master().await;
        if good {
            self.mark_verified(started);
        }
        good
    }

    /// [`Self::still_master`] without recording the verification.
    async fn check_master(&self) -> bool {
        let (_, conn) = self.conn.get();
        let Some(mut conn) = conn else { return false };
        match tokio::time::timeout(self.timeouts.response, is_master(&mut conn)).await {
            Ok(Ok(false)) => return false,
            Ok(Err(e)) if lost_master(&e) => return false,
            _ => {}
        }
        let current = self
            .master
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match self.resolve().await {
            Ok(addr) => current.as_ref() == Some(&addr),
            Err(ResolveError::FailoverInProgress) => false,
            Err(_) => true,
        }
    }
}

impl ResolveError {
    fn into_redis(self) -> RedisError {
        match self {
            Self::Unreachable(e) => e,
            Self::UnknownService => RedisError::from((
                ErrorKind::Client,
                "no sentinel monitors a master of that name",
            )),
            Self::NotMaster((host, port)) => RedisError::from((
                ErrorKind::Server(ServerErrorKind::ReadOnly),
                "the node the sentinels name is not a master (a failover is under way)",
                format!("{host}:{port}"),
            )),
            Self::FailoverInProgress => failover_error(),
        }
    }
}

/// The follower: resolves and connects again each time the connection is dropped, and
/// checks the master every [`CHECK_EVERY`].
async fn follow(shared: Arc<Shared>) {
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.reset();
    loop {
        tokio::select! {
            () = shared.wake.notified() => {}
            _ = check.tick() => {
                if shared.still_master().await {
                    continue;
                }
                shared.drop_current();
            }
        }
        if shared.conn.get().1.is_some() {
            // A switch announcement: verify before dropping a healthy connection.
            if shared.still_master().await {
                continue;
            }
            shared.drop_current();
        }
        let mut delay = RETRY_MIN;
        loop {
            let started = Instant::now();
            let connected = async {
                let addr = shared.resolve().await.map_err(ResolveError::into_redis)?;
                let conn = shared.connect_master(&addr).await?;
                Ok::<_, RedisError>((addr, conn))
            };
            match connected.await {
                Ok((addr, conn)) => {
                    shared.install(addr, conn, started);
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "sentinel: no master yet");
                    // A `+switch-master` meanwhile names the new master: try at once.
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shared.wake.notified() => {}
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

/// The stall detector: a heartbeat every [`HEARTBEAT`]; one later than [`STALL`]
/// records a stall (commands then wait for the master to be verified again, see
/// [`Shared::verified_since_stall`]) and wakes the follower to verify it.
async fn heartbeat(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let last = std::mem::replace(
            &mut *shared.beat.lock().unwrap_or_else(PoisonError::into_inner),
            now,
        );
        if now.saturating_duration_since(last) > STALL {
            {
                let mut stalled_at = shared
                    .stalled_at
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                // A command may have seen it first (and dated it).
                if stalled_at.is_none_or(|t| t < last) {
                    *stalled_at = Some(now);
                }
            }
            shared.wake.notify_one();
        }
    }
}

/// The sentinel events that mean the master is about to change or has changed: the
/// start of a failover (published by the sentinel that tries it), its steps (by the
/// leader) and the switch (by every sentinel).
const EVENTS: [&str; 5] = [
    "+switch-master",
    "+try-failover",
    "+elected-leader",
    "+failover-state-select-slave",
    "+promoted-slave",
];

/// Keeps a subscription to [`EVENTS`] on sentinel `index` (every sentinel has one:
/// only the leader of a failover publishes its steps), reconnecting when it fails;
/// wakes the follower on each event of the service, and on each (re)subscription (an
/// event may have been missed meanwhile). A failover's start drops the connection at
/// once: the master takes no write that the promotion would lose, and the follower
/// installs none while a sentinel reports the failover under way.
async fn watch_switches(shared: Arc<Shared>, index: usize) {
    let sentinel = shared.sentinels[index].clone();
    loop {
        let subscribed = async {
            let mut pubsub = Client::open(sentinel.clone())?.get_async_pubsub().await?;
            pubsub.subscribe(&EVENTS[..]).await?;
            Ok::<_, RedisError>(pubsub)
        };
        if let Ok(Ok(pubsub)) = tokio::time::timeout(SENTINEL_TIMEOUT, subscribed).await {
            shared.wake.notify_one();
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let payload: String = message.get_payload().unwrap_or_default();
                if event_service(message.get_channel_name(), &payload)
                    == Some(shared.service.as_str())
                {
                    tracing::warn!(channel = message.get_channel_name(), %payload, "sentinel: failover event");
                    shared.drop_current();
                    // Also when there was no connection to drop: the follower may be
                    // waiting between attempts at the master that died.
                    shared.wake.notify_one();
                }
            }
        }
        tokio::time::sleep(RESUBSCRIBE_WAIT).await;
    }
}

/// The service an event of [`EVENTS`] is about. `+switch-master`: "<name> <old-ip>
/// <old-port> <new-ip> <new-port>"; the others name an instance: "master <name> <ip>
/// <port>", or "<type> <name> <ip> <port> @ <master-name> <master-ip> <master-port>".
fn event_service<'a>(channel: &str, payload: &'a str) -> Option<&'a str> {
    let mut words = payload.split(' ');
    if channel == "+switch-master" {
        return words.next();
    }
    let kind = words.next()?;
    let name = words.next()?;
    if kind == "master" {
        return Some(name);
    }
    let mut words = words.skip_while(|w| *w != "@");
    words.next()?;
    words.next()
}

/// What one sentinel says of the service's master.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    /// `config-epoch` (0 where only `GET-MASTER-ADDR-BY-NAME` is allowed).
    epoch: u64,
    addr: Addr,
    /// Its flags include `failover_in_progress` (only the sentinel leading it says so).
    failover_in_progress: bool,
}

/// The error commands get while a failover is under way.
fn failover_error() -> RedisError {
    RedisError::from((
        ErrorKind::Io,
        "a sentinel reports a failover of the master under way",
    ))
}

/// One sentinel's answer: `Ok(Some(answer))`, `Ok(None)` when it does not monitor
/// `service`; with the connection to keep (`None` after a failure).
async fn ask_sentinel(
    sentinel: ConnectionInfo,
    kept: Option<MultiplexedConnection>,
    service: &str,
) -> (Option<MultiplexedConnection>, RedisResult<Option<Answer>>) {
    let asking = async {
        let mut conn = match kept {
            Some(conn) => conn,
            None => {
                let client = Client::open(sentinel)?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(SENTINEL_TIMEOUT))
                    .set_response_timeout(Some(SENTINEL_TIMEOUT));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?
            }
        };
        let answer = ask(&mut conn, service).await;
        Ok::<_, RedisError>((conn, answer))
    };
    match tokio::time::timeout(SENTINEL_TIMEOUT * 2, asking).await {
        Ok(Ok((conn, Ok(answer)))) => (Some(conn), Ok(answer)),
        Ok(Ok((_, Err(e))) | Err(e)) => (None, Err(e)),
        Err(_) => (
            None,
            Err(RedisError::from((
                ErrorKind::Io,
                "sentinel did not answer in time",
            ))),
        ),
    }
}

/// Asks one sentinel connection for the master of `service`.
async fn ask(conn: &mut MultiplexedConnection, service: &str) -> RedisResult<Option<Answer>> {
    let reply: RedisResult<Vec<String>> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(service)
        .query_async(conn)
        .await;
    match reply {
        Ok(fields) => match parse_master(&fields) {
            // The leader of a failover: once the promoted replica says it is a master,
            // `GET-MASTER-ADDR-BY-NAME` names it (while `SENTINEL MASTER` still names
            // the old one until every replica is reconfigured, up to
            // `failover-timeout`): from then on the promoted node is the master to use.
            // Before that, no master (the old one may be cut off any moment).
            Some(answer) if answer.failover_in_progress => {
                let promoted: RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(service)
                    .query_async(conn)
                    .await;
                Ok(Some(match promoted {
                    Ok(Some(addr)) if addr != answer.addr => Answer {
                        addr,
                        failover_in_progress: false,
                        ..answer
                    },
                    _ => answer,
                }))
            }
            answer => Ok(answer),
        },
        Err(e) if e.to_string().contains("No such master") => Ok(None),
        Err(e) if is_refused(&e) => {
            // An ACL that allows only GET-MASTER-ADDR-BY-NAME: no epoch to compare.
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(service)
                .query_async(conn)
                .await?;
            Ok(addr.map(|addr| Answer {
                epoch: 0,
                addr,
                failover_in_progress: false,
            }))
        }
        Err(e) => Err(e),
    }
}

/// The epoch, address and failover flag in a `SENTINEL MASTER` reply (a flat
/// field/value list).
fn parse_master(fields: &[String]) -> Option<Answer> {
    let field = |name: &str| {
        fields
            .chunks(2)
            .find(|pair| pair.first().is_some_and(|k| k == name))
            .and_then(|pair| pair.get(1))
    };
    let host = field("ip")?.clone();
    let port = field("port")?.parse().ok()?;
    let epoch = field("config-epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    let failover_in_progress =
        field("flags").is_some_and(|flags| flags.split(',').any(|f| f == "failover_in_progress"));
    Some(Answer {
        epoch,
        addr: (host, port),
        failover_in_progress,
    })
}

/// A server error that says the command is not allowed or not known (ACL, renamed or
/// disabled command), as opposed to a failure to answer.
fn is_refused(e: &RedisError) -> bool {
    !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal())
}

/// Whether the node says it is a master: `ROLE`, or `INFO replication` where `ROLE` is
/// refused.
async fn is_master(conn: &mut MultiplexedConnection) -> RedisResult<bool> {
    let role: RedisResult<redis::Value> = redis::cmd("ROLE").query_async(conn).await;
    match role {
        Ok(redis::Value::Array(fields)) => Ok(match fields.first() {
            Some(redis::Value::BulkString(b)) => b == b"master",
            Some(redis::Value::SimpleString(s)) => s == "master",
            _ => false,
        }),
        Ok(_) => Ok(false),
        Err(e) if is_refused(&e) => {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(conn)
                .await?;
            Ok(info.lines().any(|l| l.trim() == "role:master"))
        }
        Err(e) => Err(e),
    }
}

impl fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sentinels: Vec<String> = self
            .shared
            .sentinels
            .iter()
            .map(|s| s.addr().to_string())
            .collect();
        let master = self
            .shared
            .master
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        f.debug_struct("Sentinel")
            .field("sentinels", &sentinels)
            .field("service", &self.shared.service)
            .field("master", &master.map(|(h, p)| format!("{h}:{p}")))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_master_reads_address_and_epoch() {
        let fields: Vec<String> = [
            "name",
            "m",
            "ip",
            "10.0.0.2",
            "port",
            "6380",
            "flags",
            "master",
            "config-epoch",
            "7",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(
            parse_master(&fields),
            Some(Answer {
                epoch: 7,
                addr: ("10.0.0.2".to_owned(), 6380),
                failover_in_progress: false,
            })
        );
        let mut failing_over = fields.clone();
        failing_over[7] = "master,failover_in_progress".to_owned();
        assert!(parse_master(&failing_over).is_some_and(|a| a.failover_in_progress));
        assert_eq!(parse_master(&[]), None);
    }

    #[test]
    fn event_service_reads_both_payload_forms() {
        assert_eq!(
            event_service("+switch-master", "svc 127.0.0.1 1 127.0.0.1 2"),
            Some("svc")
        );
        assert_eq!(
            event_service("+try-failover", "master svc 127.0.0.1 6379"),
            Some("svc")
        );
        assert_eq!(
            event_service(
                "+promoted-slave",
                "slave 127.0.0.1:6380 127.0.0.1 6380 @ svc 127.0.0.1 6379"
            ),
            Some("svc")
        );
        assert_eq!(event_service("+promoted-slave", "slave x"), None);
    }
}
