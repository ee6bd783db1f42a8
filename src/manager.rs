//! [`RdLockConnectionManager`]: the connection to Redis that every lock shares.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::IntoConnectionInfo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::cluster::Cluster;
use crate::backend::redlock::Redlock;
use crate::backend::sentinel::Sentinel;
use crate::backend::single::Single;
use crate::backend::Backend;
use crate::config::{ManagerBuilder, Timeouts};
use crate::errors::RdLockError;
use crate::gate::Gates;
use crate::held::HeldGuards;
use crate::lock::{BasicLock, Lock};
use crate::notifier::Notifier;
use crate::scripts;

/// How long [`RdLockConnectionManager::shutdown`] waits for releases and background
/// tasks to finish.
///
/// ```
/// assert_eq!(rdlock::SHUTDOWN_TIMEOUT, std::time::Duration::from_secs(5));
/// ```
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The first and the longest wait between shutdown's retries of a release answered
/// "retry later".
const SHUTDOWN_RETRY_MIN: Duration = Duration::from_millis(50);
const SHUTDOWN_RETRY_MAX: Duration = Duration::from_millis(500);

/// The connection to a Redis server, shared by every lock made from it.
///
/// A manager holds two Redis connections whatever the number of locks and waiters: a
/// multiplexed command connection and one subscriber connection for wake-ups. Both
/// reconnect by themselves after a failure. Cloning is cheap and shares both.
///
/// # Keyspace events
///
/// rdlock works on any Redis 6.2+ server, including managed services that forbid
/// `CONFIG`. Waiters are woken by the release script's `PUBLISH`; when the server
/// already has keyspace notifications on (`notify-keyspace-events` with `K` and `A`,
/// `g` or `x`), waiters also listen to the lock key's keyspace channel, so that a lock
/// that *expires* (its holder crashed) wakes them at once. Without them, a waiter wakes
/// when the holder's remaining lease (PTTL) runs out. The setting is read once, in
/// [`new`](Self::new).
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> Result<(), rdlock::RdLockError> {
/// use rdlock::RdLockConnectionManager;
///
/// let manager = RdLockConnectionManager::new("redis://127.0.0.1:6379").await?;
/// let lock = manager.new_lock("nightly-report");
/// let _guard = lock.lock().await?;
/// // ... the lock is held while `_guard` lives
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RdLockConnectionManager {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Where locks live: one server or a cluster.
    pub(crate) conn: Arc<Backend>,
    pub(crate) info: redis::ConnectionInfo,
    pub(crate) notifier: Notifier,
    /// The database number, when keyspace events are on: the keyspace channel prefix.
    pub(crate) keyspace_db: Option<i64>,
    /// The connect and response timeouts ([`ManagerBuilder`]); leases are checked
    /// against the latter.
    pub(crate) timeouts: Timeouts,
    /// Watchdogs and drop-releases, so that they can be awaited on shutdown.
    pub(crate) tasks: TaskTracker,
    /// The guards alive now, for shutdown to release.
    pub(crate) held: HeldGuards,
    /// The local per-key queues of waiting tasks.
    pub(crate) gates: Gates,
    /// Cancelled by shutdown: no new acquisitions, waiters give up, the subscriber stops.
    pub(crate) shutdown: CancellationToken,
}

impl RdLockConnectionManager {
    /// Connects to Redis and starts the shared subscriber, with every option at its
    /// default; [`builder`](Self::builder) sets options (the response timeout).
    ///
    /// `params` is anything redis-rs accepts: a URL such as `redis://127.0.0.1:6379/0`,
    /// `redis://user:password@host/2`, `redis+unix:///run/redis.sock`, or a
    /// [`redis::ConnectionInfo`].
    ///
    /// # Errors
    ///
    /// - [`RdLockError::InvalidUrl`] when `params` cannot be parsed;
    /// - [`RdLockError::Unreachable`] when the server cannot be reached, after a few
    ///   attempts (a few seconds in all with the default timeouts; with a response
    ///   timeout raised on the [`builder`](Self::builder), each attempt may take that
    ///   long);
    /// - [`RdLockError::RedisError`] when the server refuses the connection's set-up
    ///   (wrong password, unknown database, ...).
    ///
    /// Unlike rdlock 1.x it does not require `notify-keyspace-events`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes whatever it opened.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), rdlock::RdLockError> {
    /// let manager = rdlock::RdLockConnectionManager::new("redis://127.0.0.1/").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn new<T: IntoConnectionInfo>(params: T) -> Result<Self, RdLockError> {
        ManagerBuilder::new().connect(params).await
    }

    /// Connects to a Redis Cluster through any of `nodes` and starts the shared
    /// subscriber, with every option at its default; the same as
    /// `builder().cluster(nodes)`.
    ///
    /// One reachable node is enough: the others, and which master holds which slot, are
    /// learnt from it and kept current by the cluster client (redis-rs, with a bounded
    /// response timeout, 3 retries and short waits). Every lock's keys share one hash
    /// tag, so each lock lives on one master; ids of any bytes spread over every shard.
    /// Everything else is as on one server, except that keyspace events are not used
    /// (they are node-local on a cluster) and that a failover can lose a lock or repeat
    /// fencing tokens: see the crate docs, "Redis Cluster".
    ///
    /// [`get_connection_manager`](Self::get_connection_manager) then gives a plain
    /// connection to the first node, which answers only for its own slots;
    /// [`get_connection_info`](Self::get_connection_info) gives the first node's
    /// parameters.
    ///
    /// # Errors
    ///
    /// - [`RdLockError::InvalidUrl`] when a node's parameters cannot be parsed;
    /// - [`RdLockError::InvalidConfig`] (option `"nodes"`) when `nodes` is empty, or
    ///   when the server is not a cluster ("cluster support disabled"): not transient;
    /// - [`RdLockError::Unreachable`] when no node can be reached (within about a
    ///   second per seed);
    /// - [`RdLockError::RedisError`] when the servers refuse the set-up (wrong
    ///   password, an ACL without `cluster|slots`, ...).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes whatever it opened.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), rdlock::RdLockError> {
    /// let manager = rdlock::RdLockConnectionManager::cluster([
    ///     "redis://10.0.0.1:7000",
    ///     "redis://10.0.0.2:7000",
    /// ])
    /// .await?;
    /// let _guard = manager.new_lock("nightly-report").lock().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cluster<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<Self, RdLockError> {
        ManagerBuilder::new().cluster(nodes).await
    }

    /// Connects to the master of `service` behind Redis Sentinel, through any of
    /// `sentinels`, and starts the shared subscriber, with every option at its
    /// default; the same as `builder().sentinel(sentinels, service)`.
    ///
    /// The master is resolved through the sentinels on every (re)connect — every
    /// sentinel that answers is asked, and the answer with the highest config epoch
    /// wins — and the node must say `ROLE` master (`INFO replication` where `ROLE` is
    /// refused). A broken connection, a timeout, a `READONLY` reply, a failover's
    /// start or `+switch-master` announced by a sentinel, or a periodic check (every
    /// second) that finds the node demoted or another master named drops the
    /// connection at once and resolves again (and no master is used while a sentinel
    /// reports a failover under way); commands wait for the new master (up to the response timeout each), and
    /// `lock()` waits through the failover. The shared subscriber follows the master
    /// and wakes every waiter when it moves. What a failover does to held locks and
    /// fencing tokens (replication is asynchronous): see the crate docs, "Redis
    /// Sentinel".
    ///
    /// Each sentinel URL carries its own credentials and TLS; the data nodes use
    /// [`ManagerBuilder::sentinel_master_params`] (default: no credentials,
    /// database 0). Keyspace events are not used (the next master may not have them
    /// on). [`get_connection_manager`](Self::get_connection_manager) gives a plain
    /// connection to the master of the moment, which does not follow failovers;
    /// [`get_connection_info`](Self::get_connection_info) gives the first sentinel's
    /// parameters.
    ///
    /// # Errors
    ///
    /// - [`RdLockError::InvalidUrl`] when a sentinel's parameters cannot be parsed;
    /// - [`RdLockError::InvalidConfig`] when `sentinels` is empty (option
    ///   `"sentinels"`), or the service name is empty or unknown to every sentinel that
    ///   answered (option `"service"`): not transient;
    /// - [`RdLockError::Unreachable`] when no sentinel can be reached (every sentinel is
    ///   asked at once, about 2 s at most), or the master they name cannot be reached
    ///   or is not a master (a failover is under way);
    /// - [`RdLockError::RedisError`] when a server refuses the set-up (wrong password,
    ///   ...).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes whatever it opened.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), rdlock::RdLockError> {
    /// let manager = rdlock::RdLockConnectionManager::sentinel(
    ///     ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"],
    ///     "mymaster",
    /// )
    /// .await?;
    /// let _guard = manager.new_lock("nightly-report").lock().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn sentinel<T: IntoConnectionInfo>(
        sentinels: impl IntoIterator<Item = T>,
        service: &str,
    ) -> Result<Self, RdLockError> {
        ManagerBuilder::new().sentinel(sentinels, service).await
    }

    /// Connects to `nodes`, independent Redis masters, for Redlock: every lock is held
    /// while a quorum of them (`N / 2 + 1`) holds its token, so locks keep working
    /// while a minority of the nodes is down. The same as `builder().redlock(nodes)`;
    /// the builder sets the per-node timeout ([`ManagerBuilder::node_timeout`]).
    ///
    /// Everything else is the same API as on one server: [`Lock`],
    /// [`LockGuard`](crate::LockGuard), `run`, `holder`, `force_release`, `shutdown`, fencing,
    /// [`BasicLock`]. Acquisitions, renewals and releases run on every node in parallel
    /// and return once a quorum decided; fencing tokens come from a quorum
    /// compare-and-set and strictly increase as long as a majority of the nodes keeps
    /// its data; the manager keeps one subscriber connection per node. What Redlock
    /// assumes and does not promise: the crate docs, "Redlock".
    ///
    /// [`get_connection_manager`](Self::get_connection_manager) and
    /// [`get_connection_info`](Self::get_connection_info) give the first node's.
    /// Keyspace events are not used.
    ///
    /// # Errors
    ///
    /// - [`RdLockError::InvalidUrl`] when a node's parameters cannot be parsed;
    /// - [`RdLockError::InvalidConfig`] (option `"nodes"`) when `nodes` is empty, has
    ///   more than 64 nodes or names one server twice (the same address, another
    ///   database of it, or another name of a server that answers at start with the same
    ///   `run_id`; a node whose user may not run `INFO` is not checked);
    /// - [`RdLockError::Unreachable`] when fewer than a quorum of the nodes answer
    ///   `INFO server` (each within the connect timeout, 2 s by default), or
    ///   [`RdLockError::RedisError`] when a node refuses the set-up (wrong password)
    ///   and no quorum is left.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes whatever it opened.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), rdlock::RdLockError> {
    /// let manager = rdlock::RdLockConnectionManager::redlock([
    ///     "redis://10.0.0.1:6379",
    ///     "redis://10.0.0.2:6379",
    ///     "redis://10.0.0.3:6379",
    /// ])
    /// .await?;
    /// let guard = manager.new_lock("nightly-report").lock().await?;
    /// println!("fencing token {}", guard.fencing_token());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn redlock<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<Self, RdLockError> {
        ManagerBuilder::new().redlock(nodes).await
    }

    /// A [`ManagerBuilder`], to set options before connecting; its
    /// [`connect`](ManagerBuilder::connect) gives the manager.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), rdlock::RdLockError> {
    /// use std::time::Duration;
    ///
    /// let manager = rdlock::RdLockConnectionManager::builder()
    ///     .response_timeout(Duration::from_secs(5))
    ///     .connect("redis://127.0.0.1/")
    ///     .await?;
    /// assert_eq!(manager.response_timeout(), Duration::from_secs(5));
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::new()
    }

    /// One server, with validated options ([`ManagerBuilder::connect`]).
    pub(crate) async fn connect_single<T: IntoConnectionInfo>(
        params: T,
        timeouts: Timeouts,
    ) -> Result<Self, RdLockError> {
        let info = params
            .into_connection_info()
            .map_err(RdLockError::InvalidUrl)?;
        let connected = Single::connect(info.clone(), timeouts).await?;
        Ok(Self::start(
            Backend::Single(Box::new(connected.single)),
            info,
            connected.keyspace_db,
            timeouts,
        ))
    }

    /// A Redis Cluster, with validated options ([`ManagerBuilder::cluster`]).
    pub(crate) async fn connect_cluster<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
        timeouts: Timeouts,
    ) -> Result<Self, RdLockError> {
        let seeds = nodes
            .into_iter()
            .map(IntoConnectionInfo::into_connection_info)
            .collect::<Result<Vec<_>, _>>()
            .map_err(RdLockError::InvalidUrl)?;
        let cluster = Cluster::connect(seeds, timeouts).await?;
        let info = cluster.first_seed().clone();
        // Keyspace events are node-local on a cluster: not used (see the crate docs).
        Ok(Self::start(Backend::Cluster(cluster), info, None, timeouts))
    }

    /// A master behind Sentinel, with validated options ([`ManagerBuilder::sentinel`]).
    pub(crate) async fn connect_sentinel<T: IntoConnectionInfo>(
        sentinels: impl IntoIterator<Item = T>,
        service: &str,
        node: redis::ConnectionInfo,
        timeouts: Timeouts,
    ) -> Result<Self, RdLockError> {
        let sentinels = sentinels
            .into_iter()
            .map(IntoConnectionInfo::into_connection_info)
            .collect::<Result<Vec<_>, _>>()
            .map_err(RdLockError::InvalidUrl)?;
        let info = sentinels.first().cloned();
        let sentinel = Sentinel::connect(sentinels, service.to_owned(), node, timeouts).await?;
        let info = info.ok_or(RdLockError::InvalidConfig {
            option: "sentinels",
            reason: "no sentinel given: give the address of at least one sentinel",
        })?;
        Ok(Self::start(
            Backend::Sentinel(sentinel),
            info,
            None,
            timeouts,
        ))
    }

    /// Redlock nodes, with validated options ([`ManagerBuilder::redlock`]).
    pub(crate) async fn connect_redlock<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
        node_timeout: Option<Duration>,
        timeouts: Timeouts,
    ) -> Result<Self, RdLockError> {
        let infos = nodes
            .into_iter()
            .map(IntoConnectionInfo::into_connection_info)
            .collect::<Result<Vec<_>, _>>()
            .map_err(RdLockError::InvalidUrl)?;
        let redlock = Redlock::connect(infos, node_timeout, timeouts).await?;
        let info = redlock.first_node().clone();
        Ok(Self::start(Backend::Redlock(redlock), info, None, timeouts))
    }

    /// The manager around a connected backend; starts the subscriber.
    fn start(
        backend: Backend,
        info: redis::ConnectionInfo,
        keyspace_db: Option<i64>,
        timeouts: Timeouts,
    ) -> Self {
        let backend = Arc::new(backend);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        Self {
            inner: Arc::new(Inner {
                notifier: Notifier::start(
                    backend.clone(),
                    timeouts,
                    shutdown.clone(),
                    tasks.clone(),
                ),
                conn: backend,
                info,
                keyspace_db,
                timeouts,
                held: HeldGuards::new(tasks.clone(), &shutdown),
                tasks,
                gates: Gates::default(),
                shutdown,
            }),
        }
    }

    /// How long one command may wait for its reply before it counts as failed
    /// ([`ManagerBuilder::response_timeout`]; default
    /// [`DEFAULT_RESPONSE_TIMEOUT`](crate::DEFAULT_RESPONSE_TIMEOUT), 2 s).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// println!("commands time out after {:?}", manager.response_timeout());
    /// # }
    /// ```
    #[must_use]
    pub fn response_timeout(&self) -> std::time::Duration {
        self.inner.timeouts.response
    }

    /// A lock on `id`, with the default lease (30 s) renewed by a watchdog.
    ///
    /// Every process that uses the same `id` on the same Redis database contends for
    /// the same lock. Making a `Lock` costs nothing and talks to no server; an invalid
    /// id (empty) is reported by the first method that uses it.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(manager: rdlock::RdLockConnectionManager) -> Result<(), rdlock::RdLockError> {
    /// use std::time::Duration;
    ///
    /// let lock = manager.new_lock("invoices").with_lease(Duration::from_secs(10));
    /// assert_eq!(lock.key(), "rdlock:{invoices}:lock");
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn new_lock(&self, id: &str) -> Lock {
        Lock::new(self.clone(), id)
    }

    /// A rdlock 1.x [`BasicLock`] on `lock_id` whose key expires `ttl` seconds after
    /// each acquisition (no watchdog), released early by [`BasicLock::release`].
    ///
    /// On a single server it also takes the rdlock 1.x key `/rdlock/<id>/.lock`, so
    /// that it excludes 1.x processes during a rolling upgrade; turn that off with
    /// [`BasicLock::without_v1_compat`] once none is left (see [`BasicLock`]).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(manager: rdlock::RdLockConnectionManager) -> Result<(), rdlock::RdLockError> {
    /// let mut basic_lock = manager.new_basic_lock("my_lock", 3600);
    /// basic_lock.lock().await?;
    /// basic_lock.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn new_basic_lock(&self, lock_id: &str, ttl: u64) -> BasicLock {
        BasicLock::new(self.clone(), lock_id, ttl)
    }

    /// A clone of the redis-rs command connection (kept from rdlock 1.x).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(manager: rdlock::RdLockConnectionManager) -> redis::RedisResult<()> {
    /// let mut conn = manager.get_connection_manager();
    /// let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn get_connection_manager(&self) -> ConnectionManager {
        match &*self.inner.conn {
            Backend::Single(single) => single.connection_manager(),
            Backend::Cluster(cluster) => cluster.seed_connection(),
            Backend::Sentinel(sentinel) => sentinel.connection_manager(),
            Backend::Redlock(redlock) => redlock.first_connection(),
        }
    }

    /// The connection parameters in use (kept from rdlock 1.x).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// println!("database {}", manager.get_connection_info().redis_settings().db());
    /// # }
    /// ```
    #[must_use]
    pub fn get_connection_info(&self) -> redis::ConnectionInfo {
        self.inner.info.clone()
    }

    /// Whether the server had keyspace notifications on when the manager connected,
    /// so that expiring locks wake waiters at once (see the type docs).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// if !manager.keyspace_events() {
    ///     println!("waiters of a crashed holder wake when its lease runs out");
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn keyspace_events(&self) -> bool {
        self.inner.keyspace_db.is_some()
    }

    /// How many times the shared subscriber connection has been established (1 after
    /// start-up; each reconnect adds one). Useful for health checks and diagnostics.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// println!("subscriber reconnected {} times", manager.subscriber_connections().saturating_sub(1));
    /// # }
    /// ```
    #[must_use]
    pub fn subscriber_connections(&self) -> u64 {
        self.inner.notifier.connections()
    }

    /// Sizes of the manager's internal tables, for memory regression tests: not part of
    /// the API (hidden, may change in any release).
    #[doc(hidden)]
    #[must_use]
    pub fn footprint(&self) -> Footprint {
        Footprint {
            watched_locks: self.inner.notifier.watched(),
            subscribed_channels: self.inner.notifier.channels(),
            local_queues: self.inner.gates.len(),
            held_guards: self.inner.held.len(),
            pending_tasks: self.inner.tasks.len(),
        }
    }

    /// How many background tasks of this manager are running: one watchdog per guard
    /// held for longer than about a second (a watchdog starts at the earlier of one
    /// second after the acquisition and its first renewal, `lease / 3`), plus releases
    /// in flight (`release()` calls, and the background releases
    /// of dropped guards and of `release()` or `run` futures dropped mid-release), plus
    /// acquisition attempts in flight (each counts until it has become a guard or been
    /// undone). The manager's one task that starts the watchdogs is not counted.
    /// Useful to check that nothing is left behind.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(manager: rdlock::RdLockConnectionManager) -> Result<(), rdlock::RdLockError> {
    /// let guard = manager.new_lock("job").lock().await?;
    /// assert_eq!(manager.pending_tasks(), 0); // its watchdog starts in a second
    /// tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    /// assert_eq!(manager.pending_tasks(), 1); // its watchdog
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn pending_tasks(&self) -> usize {
        self.inner.tasks.len()
    }

    /// Shuts the manager down, for a clean process exit: stops taking new locks (waiting
    /// and new acquisitions return [`RdLockError::ShutDown`]), marks every guard still
    /// alive as lost (its [`lost`](crate::LockGuard::lost) completes) and releases its
    /// key, waits for the releases of guards dropped earlier, stops the watchdogs and
    /// the subscriber. Waits at most [`SHUTDOWN_TIMEOUT`] in all.
    ///
    /// An acquisition in flight when shutdown begins never becomes a live guard: the
    /// `lock()`, `lock_timeout()`, `try_lock()` or `run` that sent it returns
    /// [`RdLockError::ShutDown`], the attempt is undone by its token if it may have
    /// taken the key, and shutdown waits for that undo like for any other release.
    ///
    /// It applies to every clone of the manager. [`BasicLock`]s are left alone: their
    /// TTL is their contract. Calling it again is harmless.
    ///
    /// # Errors
    ///
    /// [`RdLockError::TimeoutReached`] when background work did not finish in time;
    /// [`RdLockError::Unreachable`] / [`RdLockError::RedisError`] when a release could
    /// not be sent (that lease then expires by itself). A release answered "retry
    /// later" (`BUSY`, `LOADING`, `READONLY`, ...) is retried within the bound first.
    ///
    /// # Cancel safety
    ///
    /// Once polled, the manager is shut down even if the future is dropped; the
    /// releases it spawned still run.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(manager: rdlock::RdLockConnectionManager) -> Result<(), rdlock::RdLockError> {
    /// let guard = manager.new_lock("job").lock().await?;
    /// drop(guard); // released in the background...
    /// manager.shutdown().await?; // ...and awaited here, before the process exits
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown(&self) -> Result<(), RdLockError> {
        let inner = &self.inner;
        inner.shutdown.cancel();
        let failure = Arc::new(std::sync::Mutex::new(None));
        let give_up = tokio::time::Instant::now() + SHUTDOWN_TIMEOUT;
        // From here on no acquisition becomes a guard: one that completes now is
        // undone by its token, and counts as a task until then, so the wait below
        // covers it.
        for held in inner.held.close_and_drain() {
            held.state.mark_lost(crate::lease::Ending::ShutDown);
            let conn = inner.conn.clone();
            let failure = failure.clone();
            inner.tasks.spawn(async move {
                // A "retry later" reply (BUSY, LOADING, READONLY, ...: the script did
                // not run) is retried within shutdown's bound.
                let mut backoff = SHUTDOWN_RETRY_MIN;
                let outcome = loop {
                    match scripts::release(&conn, &held.names, &held.token).await {
                        Err(e)
                            if crate::errors::is_retry_later_reply(&e)
                                && tokio::time::Instant::now() + backoff < give_up =>
                        {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(SHUTDOWN_RETRY_MAX);
                        }
                        outcome => break outcome,
                    }
                };
                if let Err(e) = outcome {
                    tracing::warn!(lock = %held.id, fence = held.fence, error = %e, "release on shutdown failed");
                    let mut slot = failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    slot.get_or_insert(RdLockError::from_redis(e));
                }
            });
        }
        // Waiters ended by the shutdown leave the lock queues they were in only when
        // their tasks next run: their process leaves now, within this call.
        inner.notifier.leave_all();
        inner.tasks.close();
        // The starter of late watchdogs stopped with the shutdown token (its sleep does
        // not delay it); waited for so that no task of the manager outlives this call.
        let finished = tokio::time::timeout(SHUTDOWN_TIMEOUT, async {
            inner.tasks.wait().await;
            inner.held.starter_stopped().await;
        })
        .await;
        inner.tasks.reopen();
        let failed = failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match (finished, failed) {
            (_, Some(e)) => Err(e),
            (Err(_), None) => Err(RdLockError::TimeoutReached),
            (Ok(()), None) => Ok(()),
        }
    }

    /// `true` once [`shutdown`](Self::shutdown) has been called on any clone.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// if manager.is_shut_down() { return; }
    /// # }
    /// ```
    #[must_use]
    pub fn is_shut_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }
}

/// Sizes of a manager's internal tables ([`RdLockConnectionManager::footprint`]): not
/// part of the API.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Footprint {
    /// Locks with a registered waiter (the notifier's registry).
    pub watched_locks: usize,
    /// Channels the subscriber keeps subscribed (release and keyspace).
    pub subscribed_channels: usize,
    /// Entries of the local per-key queues (dead ones are pruned as the table grows,
    /// so up to about twice the live ones, or 64).
    pub local_queues: usize,
    /// Guards alive.
    pub held_guards: usize,
    /// Background tasks (watchdogs, releases in flight).
    pub pending_tasks: usize,
}

impl fmt::Debug for RdLockConnectionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("RdLockConnectionManager");
        match &*self.inner.conn {
            Backend::Single(_) => f
                .field("addr", &self.inner.info.addr())
                .field("db", &self.inner.info.redis_settings().db()),
            Backend::Cluster(cluster) => f.field("cluster", cluster),
            Backend::Sentinel(sentinel) => f.field("sentinel", sentinel),
            Backend::Redlock(redlock) => f.field("redlock", redlock),
        }
        .field("keyspace_events", &self.keyspace_events())
        .field("response_timeout", &self.inner.timeouts.response)
        .finish_non_exhaustive()
    }
}
