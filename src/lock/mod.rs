//! [`Lock`] and its acquire paths, and the rdlock 1.x [`BasicLock`].
//!
//! ```no_run
//! # async fn demo(manager: rdlock::RdLockConnectionManager) -> Result<(), rdlock::RdLockError> {
//! use rdlock::lock::BasicLock; // the 1.x path
//!
//! let mut basic: BasicLock = manager.new_basic_lock("dog", 60);
//! basic.lock().await?;
//! basic.release().await?;
//! # Ok(())
//! # }
//! ```

mod basic;
mod wait;

pub use basic::BasicLock;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::errors::RdLockError;
use crate::gate::Turn;
use crate::guard::LockGuard;
use crate::held::Held;
use crate::holder::{owner_record, HolderInfo};
use crate::lease::{valid_until, wall_valid_until, LeaseState};
use crate::manager::RdLockConnectionManager;
use crate::names::LockNames;
use crate::run::{Run, RunContext};
use crate::scripts::{self, Acquire};
use crate::watchdog::Watchdog;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// The lease of a new [`Lock`]: 30 s.
///
/// ```
/// assert_eq!(rdlock::DEFAULT_LEASE, std::time::Duration::from_secs(30));
/// ```
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// The shortest lease accepted: 10 ms.
///
/// ```
/// assert_eq!(rdlock::MIN_LEASE, std::time::Duration::from_millis(10));
/// ```
pub const MIN_LEASE: Duration = Duration::from_millis(10);
/// The longest lease accepted: 10 years (Redis accepts longer, but no lease should be).
///
/// ```
/// assert_eq!(rdlock::MAX_LEASE.as_secs(), 10 * 365 * 24 * 3600);
/// ```
pub const MAX_LEASE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A distributed lock on one id, from [`RdLockConnectionManager::new_lock`].
///
/// A `Lock` is a description, not a holder: its methods take `&self`, one `Lock` may
/// be shared by many tasks (or cloned, cheaply), and each acquisition returns its own
/// [`LockGuard`] with its own owner token. The lock is not reentrant: a second
/// [`lock`](Self::lock) while a guard is alive waits, even in the same task.
///
/// Tasks of one manager that wait for the same id queue locally in arrival order; only
/// the head of that queue contends in Redis. The turn passes on when the guard is
/// released or dropped.
///
/// # Example
///
/// ```no_run
/// # async fn demo(manager: rdlock::RdLockConnectionManager) -> Result<(), rdlock::RdLockError> {
/// use std::time::Duration;
///
/// let lock = manager.new_lock("nightly-report");
/// let _guard = lock.lock_timeout(Duration::from_secs(60)).await?;
/// // the lock is held, and renewed, until `_guard` is dropped
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Lock {
    manager: RdLockConnectionManager,
    id: Arc<str>,
    names: Arc<LockNames>,
    lease: Duration,
    watchdog: bool,
    /// This process's owner record (`<pid>\n<host>\n<label>`), stored with the lock.
    owner: Arc<str>,
}

/// An acquisition, before it is wrapped in a guard.
pub(crate) struct Acquired {
    pub(crate) token: Arc<str>,
    pub(crate) fence: u64,
    /// When the acquire was sent, on the monotonic clock and on the wall clock.
    pub(crate) sent: Instant,
    pub(crate) sent_wall: SystemTime,
}

/// An acquisition on its way to becoming a guard: dropping it undoes it in Redis, by
/// its token, so that an acquisition that completes when nobody takes it any more (a
/// deadline passed, the manager shut down, an error on the way) leaves nothing held.
/// While it lives, the manager's shutdown waits for it.
pub(crate) struct Granted {
    pub(crate) acquired: Acquired,
    undo: Undo,
}

impl Granted {
    /// Keeps the acquisition without a guard (the 1.x `BasicLock`).
    pub(crate) fn keep(mut self) -> Acquired {
        self.undo.token = None;
        self.acquired
    }
}

/// The outcome of one attempt.
enum Attempt {
    Acquired(Granted),
    /// Held by someone else; wait at most this long before the next attempt.
    Held(Option<Duration>),
    /// Acquired, but the reply came after the lease could have ended: undone.
    TooLate,
}

impl Lock {
    pub(crate) fn new(manager: RdLockConnectionManager, id: &str) -> Self {
        let names = LockNames::new(id, manager.inner().keyspace_db);
        Self {
            manager,
            id: Arc::from(id),
            names: Arc::new(names),
            lease: DEFAULT_LEASE,
            watchdog: true,
            owner: Arc::from(owner_record("")),
        }
    }

    /// Sets a label stored with the lock while this `Lock` holds it, shown by
    /// [`holder`](Self::holder) (and `rdlock status`) next to the host and process id.
    /// Default: empty.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// let lock = manager.new_lock("backup").with_label("nightly backup of db-3");
    /// # }
    /// ```
    #[must_use]
    pub fn with_label(mut self, label: &str) -> Self {
        self.owner = Arc::from(owner_record(label));
        self
    }

    /// Who holds the lock now, or `None` when it is free. One round trip.
    ///
    /// # Errors
    ///
    /// [`RdLockError::Unreachable`] / [`RdLockError::RedisError`] when Redis cannot
    /// answer; [`RdLockError::InvalidLockId`] for an empty id.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
    /// if let Some(holder) = lock.holder().await? {
    ///     println!("held by pid {} on {} ({})", holder.pid, holder.host, holder.label);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn holder(&self) -> Result<Option<HolderInfo>, RdLockError> {
        Ok(self.inspect().await?.0)
    }

    /// The fencing token of the latest acquisition of this lock id (0 if it was never
    /// acquired on this server). One round trip.
    ///
    /// # Errors
    ///
    /// As [`holder`](Self::holder).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
    /// println!("{} acquisitions so far", lock.last_fencing_token().await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn last_fencing_token(&self) -> Result<u64, RdLockError> {
        Ok(self.inspect().await?.1)
    }

    async fn inspect(&self) -> Result<(Option<HolderInfo>, u64), RdLockError> {
        if self.id.is_empty() {
            return Err(RdLockError::InvalidLockId {
                reason: "the id is empty",
            });
        }
        let conn = &self.manager.inner().conn;
        let (record, pttl, fence) = scripts::inspect(conn, &self.names)
            .await
            .map_err(RdLockError::from_redis)?;
        let holder = match pttl {
            -2 => None, // no lock key: free
            -1 => Some(HolderInfo::parse(record.as_deref(), None)),
            ms => Some(HolderInfo::parse(
                record.as_deref(),
                Some(Duration::from_millis(ms.unsigned_abs())),
            )),
        };
        Ok((holder, fence.unwrap_or(0)))
    }

    /// Deletes the lock **whoever holds it** and wakes its waiters: the administrator's
    /// escape hatch for a lock whose holder is known to be gone. The holder, if alive,
    /// learns at its next renewal that its lease is lost. Returns whether it was held.
    ///
    /// # Errors
    ///
    /// As [`holder`](Self::holder).
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the lock may or may not have been deleted.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
    /// if lock.force_release().await? {
    ///     println!("deleted a stale lock");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn force_release(&self) -> Result<bool, RdLockError> {
        if self.id.is_empty() {
            return Err(RdLockError::InvalidLockId {
                reason: "the id is empty",
            });
        }
        let conn = &self.manager.inner().conn;
        scripts::force_release(conn, &self.names)
            .await
            .map_err(RdLockError::from_redis)
    }

    /// As [`force_release`](Self::force_release), but deletes the lock only if it is
    /// still held by the acquisition with fencing token `expected_fence` — the one a
    /// [`holder`](Self::holder) call showed — checked and deleted in one script. Use it
    /// when a person or a script looked at the holder before deciding: if the lock
    /// changed hands in between, the new holder's lock is left alone. A key without an
    /// owner record (not written by rdlock) has fencing token 0, as `holder` shows it.
    /// Returns whether the lock was deleted: `false` when it is free, or held by
    /// another acquisition.
    ///
    /// # Errors
    ///
    /// As [`holder`](Self::holder).
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the lock may or may not have been deleted (only if it
    /// still had that fencing token).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
    /// if let Some(holder) = lock.holder().await? {
    ///     if holder.pid == 4242 && lock.force_release_if(holder.fencing_token).await? {
    ///         println!("deleted the lock of the crashed pid 4242");
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn force_release_if(&self, expected_fence: u64) -> Result<bool, RdLockError> {
        if self.id.is_empty() {
            return Err(RdLockError::InvalidLockId {
                reason: "the id is empty",
            });
        }
        let conn = &self.manager.inner().conn;
        scripts::force_release_if(conn, &self.names, expected_fence)
            .await
            .map_err(RdLockError::from_redis)
    }

    /// Sets the lease: how long the lock outlives a holder that stops renewing it
    /// (a crash, a pause, a partition). The watchdog renews it every `lease / 3`, so a
    /// live holder keeps the lock however long it runs. Default: [`DEFAULT_LEASE`].
    ///
    /// Leases are whole milliseconds (fractions are dropped) between [`MIN_LEASE`] and
    /// [`MAX_LEASE`]; others make the acquire methods return
    /// [`RdLockError::InvalidLease`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// let lock = manager.new_lock("job").with_lease(std::time::Duration::from_secs(5));
    /// assert_eq!(lock.lease(), std::time::Duration::from_secs(5));
    /// # }
    /// ```
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    pub(crate) fn without_watchdog(mut self) -> Self {
        self.watchdog = false;
        self
    }

    /// The lease set with [`with_lease`](Self::with_lease).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// assert_eq!(manager.new_lock("job").lease(), rdlock::DEFAULT_LEASE);
    /// # }
    /// ```
    #[must_use]
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The lock id given to [`RdLockConnectionManager::new_lock`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// assert_eq!(manager.new_lock("job").id(), "job");
    /// # }
    /// ```
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The Redis key of the lock: `rdlock:{<id>}:lock`, where `%`, `{` and `}` in the
    /// id are written `%25`, `%7B` and `%7D`. It holds the owner's token with the lease
    /// as expiry. The fencing counter is `rdlock:{<id>}:fence` and releases are
    /// published on `rdlock:{<id>}:release`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// assert_eq!(manager.new_lock("a{b}").key(), "rdlock:{a%7Bb%7D}:lock");
    /// # }
    /// ```
    #[must_use]
    pub fn key(&self) -> &str {
        &self.names.key
    }

    /// Waits until the lock is acquired, without limit.
    ///
    /// The wait is driven by Redis notifications: it wakes when the holder releases
    /// (or, with keyspace events on, when its key expires) and otherwise when the
    /// holder's remaining lease runs out. While Redis is unreachable, or answers that
    /// it cannot serve for now (`LOADING` after a restart, `BUSY`, `READONLY` and the
    /// other failover errors: see [`RdLockError::Unreachable`]), it keeps retrying,
    /// with backoff up to 2 s — without limit: a server that never serves (a URL that
    /// names a replica answers `READONLY` for ever) makes it wait for ever, with a
    /// warning logged (`tracing`) once attempts have failed for 10 s. Use
    /// [`lock_timeout`](Self::lock_timeout) where that must not happen.
    ///
    /// # Errors
    ///
    /// [`RdLockError::InvalidLockId`] / [`RdLockError::InvalidLease`] for bad input;
    /// [`RdLockError::RedisError`] when Redis refuses the script (for example
    /// `WRONGTYPE`: the key holds something that is not a lock, or `NOPERM`);
    /// [`RdLockError::ShutDown`] when the manager is, or is being, shut down — also
    /// when an attempt was in flight as shutdown began: that attempt is undone, and
    /// [`shutdown`](crate::RdLockConnectionManager::shutdown) waits for it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped, no guard is returned and the lock is not
    /// left held — an attempt that may have reached Redis is undone by its token.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
    /// let _guard = lock.lock().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn lock(&self) -> Result<LockGuard, RdLockError> {
        self.acquire_in_turn(None).await
    }

    /// Like [`lock`](Self::lock), giving up after `timeout`.
    ///
    /// The deadline is kept whatever Redis does: an attempt still waiting for its
    /// reply when the deadline passes is abandoned (and undone by its token), so the
    /// call returns at the deadline even when the server or the network does not
    /// answer. One exception: the first attempt is always given 100 ms, so that a
    /// timeout shorter than a round trip still makes one whole attempt — a zero
    /// timeout makes one attempt, and returns within 100 ms. A timeout too large to
    /// represent waits without limit.
    ///
    /// # Errors
    ///
    /// [`RdLockError::TimeoutReached`] when the lock was not acquired in time, plus
    /// those of [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`lock`](Self::lock).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
    /// use std::time::Duration;
    ///
    /// match lock.lock_timeout(Duration::from_secs(5)).await {
    ///     Ok(_guard) => { /* work */ }
    ///     Err(e) if e.is_timeout() => println!("busy, try later"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard, RdLockError> {
        self.acquire_in_turn(Instant::now().checked_add(timeout))
            .await
    }

    /// Makes one attempt to acquire the lock.
    ///
    /// It has no deadline of its own: it waits for the one reply at most the command
    /// timeout (2 s), after which it reports [`RdLockError::Unreachable`]. Wrap it in
    /// [`lock_timeout`](Self::lock_timeout)`(Duration::ZERO)` or a
    /// `tokio::time::timeout` for a shorter bound (dropping it is safe, see below).
    ///
    /// # Errors
    ///
    /// - [`RdLockError::LockUnavailable`] when someone else holds it;
    /// - [`RdLockError::Unreachable`] when Redis cannot be reached or is not serving
    ///   for now (`LOADING`, `BUSY`, a failover: see the variant), without retrying;
    /// - [`RdLockError::ShutDown`] when the manager is shut down, also while the attempt
    ///   is in flight (the attempt is then undone);
    /// - [`RdLockError::LeaseLost`] when the reply came so late that the lease it
    ///   granted may already be over (the key is released again);
    /// - [`RdLockError::NotReplicated`] when replica sync is on
    ///   ([`ManagerBuilder::replica_sync`](crate::ManagerBuilder::replica_sync)) and
    ///   too few replicas acknowledged the acquisition in time (it is released again);
    /// - bad input and Redis refusals as for [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`lock`](Self::lock).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
    /// match lock.try_lock().await {
    ///     Ok(_guard) => { /* work */ }
    ///     Err(e) if e.is_unavailable() => println!("another worker is on it"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn try_lock(&self) -> Result<LockGuard, RdLockError> {
        self.validate()?;
        // Another task of this manager holds the lock or waits for it: it is not
        // free for us, and Redis need not be asked.
        let turn = self
            .manager
            .inner()
            .gates
            .get(&self.names.key)
            .try_lock_owned()
            .map_err(|_| RdLockError::LockUnavailable)?;
        let granted = self.try_acquire_armed().await?;
        self.guard(granted, Some(turn))
    }

    /// One attempt, for the 1.x `BasicLock`.
    pub(crate) async fn try_acquire_raw(&self) -> Result<Acquired, RdLockError> {
        self.try_acquire_armed().await.map(Granted::keep)
    }

    async fn try_acquire_armed(&self) -> Result<Granted, RdLockError> {
        let lease_ms = self.validate()?;
        match self.bounded_attempt(lease_ms, None).await? {
            Attempt::Acquired(granted) => Ok(granted),
            Attempt::TooLate => Err(RdLockError::LeaseLost),
            Attempt::Held(_) => Err(RdLockError::LockUnavailable),
        }
    }

    /// Waits for the lock, runs `fut` while the lease is held, then releases the lock
    /// and returns `fut`'s output.
    ///
    /// If the lease is lost while `fut` runs, `fut` is dropped at once (it is not
    /// polled again) and the result is [`RdLockError::LeaseLost`]. If `fut` panics,
    /// the guard is dropped during unwinding, which releases the lock, and the panic
    /// goes on. The returned future polls `fut` itself (no task is spawned), so `fut`
    /// may borrow from the caller.
    ///
    /// `fut` is given nothing: when it needs the acquisition's fencing token (to pass
    /// it with its writes) or a cancellation token for subtasks, use
    /// [`run_with`](Self::run_with). ([`last_fencing_token`](Self::last_fencing_token)
    /// is no substitute: it reads the latest token in Redis, which may already be a
    /// successor's.)
    ///
    /// # Errors
    ///
    /// [`RdLockError::LeaseLost`] as above; otherwise those of [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any point drops `fut` and never leaves the lock held:
    /// while waiting, as [`lock`](Self::lock); once acquired, including while the
    /// final release is in flight, the release is completed in the background (a
    /// task of the manager, which [`shutdown`](crate::RdLockConnectionManager::shutdown)
    /// waits for). The next task of this manager queued for the lock gets its turn
    /// once that release has been answered.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
    /// let mut report = String::new();
    /// let rows = lock
    ///     .run(async {
    ///         report.push_str("nightly report");
    ///         42 // e.g. rows written
    ///     })
    ///     .await?;
    /// println!("{report}: {rows} rows");
    /// # Ok(())
    /// # }
    /// ```
    pub fn run<F: Future>(&self, fut: F) -> Run<'_, F> {
        Run::new(Box::pin(self.lock()), fut)
    }

    /// As [`run`](Self::run), giving up with [`RdLockError::TimeoutReached`] if the
    /// lock is not acquired within `timeout` (the time `fut` runs is not limited).
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run) and [`lock_timeout`](Self::lock_timeout).
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
    /// use std::time::Duration;
    ///
    /// lock.run_timeout(Duration::from_secs(10), async { /* work */ }).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn run_timeout<F: Future>(&self, timeout: Duration, fut: F) -> Run<'_, F> {
        Run::new(Box::pin(self.lock_timeout(timeout)), fut)
    }

    /// As [`run`](Self::run), for a job that needs to know its acquisition: `job` is
    /// called once the lock is acquired, with a [`RunContext`] that gives the fencing
    /// token of this acquisition, a cancellation token for subtasks and the lease's
    /// state; the future it returns runs while the lease is held, as in `run`.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run). If the future is dropped before the lock is acquired,
    /// `job` is never called.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
    /// # async fn write_report(fence: u64) -> u64 { fence }
    /// let rows = lock
    ///     .run_with(|ctx| async move {
    ///         // The resource rejects writes with a fence lower than the last it saw.
    ///         write_report(ctx.fencing_token()).await
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn run_with<'a, J, Fut>(
        &'a self,
        job: J,
    ) -> Run<'a, impl Future<Output = Fut::Output> + use<'a, J, Fut>>
    where
        J: FnOnce(RunContext) -> Fut + 'a,
        Fut: Future + 'a,
    {
        run_with(async move { self.lock().await }, job)
    }

    /// As [`run_with`](Self::run_with), giving up with
    /// [`RdLockError::TimeoutReached`] if the lock is not acquired within `timeout`,
    /// as [`run_timeout`](Self::run_timeout).
    ///
    /// # Errors
    ///
    /// As [`run_timeout`](Self::run_timeout).
    ///
    /// # Cancel safety
    ///
    /// As [`run_with`](Self::run_with).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
    /// use std::time::Duration;
    ///
    /// lock.run_with_timeout(Duration::from_secs(10), |ctx| async move {
    ///     let stop = ctx.cancellation_token(); // cancelled if the lease is lost
    ///     tokio::spawn(stop.run_until_cancelled_owned(async { /* subtask */ }));
    /// })
    /// .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn run_with_timeout<'a, J, Fut>(
        &'a self,
        timeout: Duration,
        job: J,
    ) -> Run<'a, impl Future<Output = Fut::Output> + use<'a, J, Fut>>
    where
        J: FnOnce(RunContext) -> Fut + 'a,
        Fut: Future + 'a,
    {
        run_with(async move { self.lock_timeout(timeout).await }, job)
    }

    /// Checks the id and lease; returns the lease in milliseconds.
    pub(crate) fn validate(&self) -> Result<u64, RdLockError> {
        if self.manager.is_shut_down() {
            return Err(RdLockError::ShutDown);
        }
        if self.id.is_empty() {
            return Err(RdLockError::InvalidLockId {
                reason: "the id is empty",
            });
        }
        if self.lease < MIN_LEASE {
            return Err(RdLockError::InvalidLease {
                lease: self.lease,
                reason: "shorter than the minimum lease of 10 ms",
            });
        }
        if self.lease > MAX_LEASE {
            return Err(RdLockError::InvalidLease {
                lease: self.lease,
                reason: "longer than the maximum lease of 10 years",
            });
        }
        if self.watchdog {
            self.manager.inner().timeouts.check_lease(self.lease)?;
        }
        Ok(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
    }

    /// One acquire script call with a fresh owner token, bounded by `until` (if any)
    /// and by the manager's shutdown. An attempt cut short is undone by its token.
    async fn bounded_attempt(
        &self,
        lease_ms: u64,
        until: Option<Instant>,
    ) -> Result<Attempt, RdLockError> {
        let shutdown = &self.manager.inner().shutdown;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Err(RdLockError::ShutDown),
            outcome = self.attempt(lease_ms) => outcome,
            _ = sleep_until(until) => Err(RdLockError::TimeoutReached),
        }
    }

    /// One acquire script call with a fresh owner token.
    ///
    /// A fresh token per attempt keeps the clean-up of an ambiguous attempt (sent, no
    /// reply) from ever touching a later attempt's acquisition.
    async fn attempt(&self, lease_ms: u64) -> Result<Attempt, RdLockError> {
        let inner = self.manager.inner();
        // Counted as a task of the manager from before the shutdown check until the
        // acquisition is a registered guard or undone: a shutdown that starts after
        // the check waits for it.
        let in_flight = inner.tasks.token();
        if inner.shutdown.is_cancelled() {
            return Err(RdLockError::ShutDown);
        }
        let token: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
        // Armed while the outcome is unknown: if this future is dropped, or the reply
        // is an error, the SET may still have happened, so undo it by token.
        let mut undo = Undo {
            lock: self.clone(),
            token: Some(token.clone()),
            _in_flight: in_flight,
        };
        let sent = Instant::now();
        let sent_wall = SystemTime::now();
        let sync = inner.timeouts.replica_sync;
        let outcome = match sync {
            Some(sync) => {
                scripts::acquire_synced(
                    &inner.conn,
                    sync,
                    &self.names,
                    &token,
                    lease_ms,
                    &self.owner,
                )
                .await
            }
            None => scripts::acquire(&inner.conn, &self.names, &token, lease_ms, &self.owner)
                .await
                .map(|reply| (reply, None)),
        };
        let (reply, acked) = match outcome {
            Ok(reply) => reply,
            Err(e) => {
                if crate::errors::is_retry_later_reply(&e) {
                    // The server refused the script ("retry later"): it did not run,
                    // there is nothing to undo.
                    undo.token = None;
                }
                return Err(RdLockError::from_redis(e));
            }
        };
        match reply {
            Acquire::Acquired { fence } => {
                if let (Some(sync), Some(acked)) = (sync, acked) {
                    if acked < sync.replicas {
                        // Not on enough replicas: a failover now could hand it to a
                        // second client. Released before the error is reported, so that
                        // nothing is left behind (`undo` retries in the background if
                        // this release fails).
                        if scripts::release(&inner.conn, &self.names, &token)
                            .await
                            .is_ok()
                        {
                            undo.token = None;
                        }
                        return Err(RdLockError::NotReplicated {
                            acked,
                            wanted: sync.replicas,
                        });
                    }
                }
                if Instant::now() >= valid_until(sent, self.lease)
                    || SystemTime::now() >= wall_valid_until(sent_wall, self.lease)
                {
                    // The reply took longer than the lease (on either clock: the
                    // machine may have been suspended meanwhile): the lease may already
                    // have run out on the server. No guard for a lease that may be over;
                    // `undo` releases it.
                    return Ok(Attempt::TooLate);
                }
                Ok(Attempt::Acquired(Granted {
                    acquired: Acquired {
                        token,
                        fence,
                        sent,
                        sent_wall,
                    },
                    undo,
                }))
            }
            Acquire::Held { pttl } => {
                undo.token = None;
                Ok(Attempt::Held(pttl))
            }
        }
    }

    /// Wraps an acquisition in a guard and starts its watchdog; undoes it and reports
    /// [`RdLockError::ShutDown`] if the manager's shutdown has begun.
    pub(crate) fn guard(
        &self,
        granted: Granted,
        turn: Option<Turn>,
    ) -> Result<LockGuard, RdLockError> {
        let Granted { acquired, mut undo } = granted;
        let state = Arc::new(LeaseState::new(
            valid_until(acquired.sent, self.lease),
            wall_valid_until(acquired.sent_wall, self.lease),
        ));
        let registered = self.manager.inner().held.insert(Held {
            names: self.names.clone(),
            id: self.id.clone(),
            token: acquired.token.clone(),
            fence: acquired.fence,
            state: state.clone(),
        });
        let Some(registered) = registered else {
            // Shutdown has drained the registry: this acquisition completed too late to
            // be released by it. `undo` releases it; shutdown waits for that.
            tracing::debug!(lock = %self.id, fence = acquired.fence, "acquired during shutdown: undone");
            return Err(RdLockError::ShutDown);
        };
        // From here on the guard (or shutdown, which now sees it) releases the lock.
        undo.token = None;
        if self.watchdog {
            let watchdog = Watchdog {
                conn: self.manager.inner().conn.clone(),
                names: self.names.clone(),
                id: self.id.clone(),
                fence: acquired.fence,
                token: acquired.token.clone(),
                lease: self.lease,
                state: state.clone(),
                last_sent: acquired.sent,
            };
            self.manager.inner().tasks.spawn(watchdog.run());
        }
        // `undo`, and with it this acquisition's count among the manager's tasks, ends
        // only now that the watchdog is spawned: shutdown cannot miss the watchdog.
        drop(undo);
        tracing::debug!(lock = %self.id, fence = acquired.fence, lease = ?self.lease, "acquired");
        Ok(LockGuard::new(
            self.clone(),
            acquired.token,
            acquired.fence,
            state,
            registered,
            turn,
        ))
    }

    /// Spawns the token-checked release on the current runtime, if there is one.
    /// Never blocks; without a runtime the lease expires by itself. The local turn is
    /// passed on only after the release has been answered, so that the next local
    /// task's attempt does not race it.
    ///
    /// A "retry later" reply (`BUSY`, `LOADING`, `READONLY`, ...: the script did not
    /// run) is retried with backoff until the lease would have ended anyway: the key
    /// of an owner that is gone must not block every waiter for a whole lease once the
    /// server serves again. Every acquire or renewal with this token was sent before
    /// now, so the key cannot outlive `now + lease`. The turn passes on after the first
    /// answer (the next local attempt meets the same condition, and the release is
    /// token-checked, so the two cannot harm each other).
    pub(crate) fn release_in_background(&self, token: Arc<str>, turn: Option<Turn>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let conn = self.manager.inner().conn.clone();
        let names = self.names.clone();
        let give_up = Instant::now() + self.lease;
        self.manager.inner().tasks.spawn_on(
            async move {
                let mut turn = turn;
                let mut backoff = RELEASE_RETRY_MIN;
                loop {
                    match scripts::release(&conn, &names, &token).await {
                        Err(e)
                            if crate::errors::is_retry_later_reply(&e)
                                && Instant::now() + backoff < give_up =>
                        {
                            drop(turn.take());
                            tracing::debug!(key = %names.key, error = %e, "background release: retrying later");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(RELEASE_RETRY_MAX);
                        }
                        _ => break,
                    }
                }
                drop(turn);
            },
            &handle,
        );
    }

    pub(crate) fn manager(&self) -> &RdLockConnectionManager {
        &self.manager
    }

    pub(crate) fn names(&self) -> &LockNames {
        &self.names
    }
}

/// Releases an attempt's token when dropped while armed, and counts the attempt among
/// the manager's tasks until then.
///
/// The undo is sent on the manager's command connection, after the attempt's request;
/// on the same connection, Redis runs it after the acquire. If the connection was
/// replaced in between (retired after a timeout, or re-established by redis-rs after an
/// I/O error), the acquire may still be on its way on the old connection and arrive
/// after the undo, which then finds nothing to release: the key is held by a token
/// nobody has until its lease ends (as after a crashed holder; nobody believes they
/// hold it). Documented in the README ("Cancel safety and drop").
struct Undo {
    lock: Lock,
    token: Option<Arc<str>>,
    _in_flight: TaskTrackerToken,
}

impl Drop for Undo {
    fn drop(&mut self) {
        // Runs before the fields are dropped: the release is spawned (and tracked)
        // before the attempt stops counting as a task of the manager.
        if let Some(token) = self.token.take() {
            self.lock.release_in_background(token, None);
        }
    }
}

/// The first and the longest wait between the retries of a background release
/// answered "retry later".
const RELEASE_RETRY_MIN: Duration = Duration::from_millis(50);
const RELEASE_RETRY_MAX: Duration = Duration::from_secs(1);

/// Completes at `until`, or never.
async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until.into()).await,
        None => std::future::pending().await,
    }
}

/// [`Lock::run_with`] over any acquisition: the job is called with the guard's
/// context once `acquire` has succeeded, on the first poll of the job's future.
fn run_with<'a, A, J, Fut>(
    acquire: A,
    job: J,
) -> Run<'a, impl Future<Output = Fut::Output> + use<'a, A, J, Fut>>
where
    A: Future<Output = Result<LockGuard, RdLockError>> + Send + 'a,
    J: FnOnce(RunContext) -> Fut + 'a,
    Fut: Future + 'a,
{
    let slot: Arc<std::sync::OnceLock<RunContext>> = Arc::default();
    let acquire = {
        let slot = slot.clone();
        async move {
            let guard = acquire.await?;
            let _ = slot.set(guard.run_context());
            Ok(guard)
        }
    };
    let job = async move {
        // `Run` polls the job only after the acquisition succeeded.
        let ctx = slot
            .get()
            .cloned()
            .expect("the context is set before the job is polled");
        job(ctx).await
    };
    Run::new(Box::pin(acquire), job)
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("key", &self.names.key)
            .field("lease", &self.lease)
            .field("watchdog", &self.watchdog)
            .finish_non_exhaustive()
    }
}
