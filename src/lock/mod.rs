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
use std::time::{Duration, Instant};

use crate::errors::RdLockError;
use crate::gate::Turn;
use crate::guard::LockGuard;
use crate::held::Held;
use crate::holder::{owner_record, HolderInfo};
use crate::lease::{valid_until, LeaseState};
use crate::manager::RdLockConnectionManager;
use crate::names::LockNames;
use crate::run::Run;
use crate::scripts::{self, Acquire};
use crate::watchdog::Watchdog;

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
    pub(crate) sent: Instant,
}

/// The outcome of one attempt.
enum Attempt {
    Acquired(Acquired),
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
    /// holder's remaining lease runs out. While Redis is unreachable it keeps retrying,
    /// with backoff.
    ///
    /// # Errors
    ///
    /// [`RdLockError::InvalidLockId`] / [`RdLockError::InvalidLease`] for bad input;
    /// [`RdLockError::RedisError`] when Redis refuses the script (for example
    /// `WRONGTYPE`: the key holds something that is not a lock, or `NOPERM`).
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
    /// A zero timeout makes one attempt. A timeout too large to represent waits
    /// without limit.
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
    /// # Errors
    ///
    /// - [`RdLockError::LockUnavailable`] when someone else holds it;
    /// - [`RdLockError::Unreachable`] at once when Redis cannot be reached;
    /// - [`RdLockError::LeaseLost`] when the reply came so late that the lease it
    ///   granted may already be over (the key is released again);
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
        let acquired = self.try_acquire_raw().await?;
        Ok(self.guard(acquired, Some(turn)))
    }

    pub(crate) async fn try_acquire_raw(&self) -> Result<Acquired, RdLockError> {
        let lease_ms = self.validate()?;
        match self.attempt(lease_ms).await? {
            Attempt::Acquired(acquired) => Ok(acquired),
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
    /// # Errors
    ///
    /// [`RdLockError::LeaseLost`] as above; otherwise those of [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops `fut` and releases the lock (in the background).
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
        Ok(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
    }

    /// One acquire script call with a fresh owner token.
    ///
    /// A fresh token per attempt keeps the clean-up of an ambiguous attempt (sent, no
    /// reply) from ever touching a later attempt's acquisition.
    async fn attempt(&self, lease_ms: u64) -> Result<Attempt, RdLockError> {
        let token: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
        // Armed while the outcome is unknown: if this future is dropped, or the reply
        // is an error, the SET may still have happened, so undo it by token.
        let mut undo = UndoOnDrop {
            lock: self,
            token: Some(token.clone()),
        };
        let conn = &self.manager.inner().conn;
        let sent = Instant::now();
        let reply = scripts::acquire(conn, &self.names, &token, lease_ms, &self.owner)
            .await
            .map_err(RdLockError::from_redis)?;
        match reply {
            Acquire::Acquired { fence } => {
                if Instant::now() >= valid_until(sent, self.lease) {
                    // The reply took longer than the lease: the lease may already have
                    // run out on the server. No guard for a lease that may be over;
                    // `undo` releases it.
                    return Ok(Attempt::TooLate);
                }
                undo.token = None;
                Ok(Attempt::Acquired(Acquired { token, fence, sent }))
            }
            Acquire::Held { pttl } => {
                undo.token = None;
                Ok(Attempt::Held(pttl))
            }
        }
    }

    /// Wraps an acquisition in a guard and starts its watchdog.
    pub(crate) fn guard(&self, acquired: Acquired, turn: Option<Turn>) -> LockGuard {
        let state = Arc::new(LeaseState::new(valid_until(acquired.sent, self.lease)));
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
        let registered = self.manager.inner().held.insert(Held {
            names: self.names.clone(),
            id: self.id.clone(),
            token: acquired.token.clone(),
            fence: acquired.fence,
            state: state.clone(),
        });
        tracing::debug!(lock = %self.id, fence = acquired.fence, lease = ?self.lease, "acquired");
        LockGuard::new(
            self.clone(),
            acquired.token,
            acquired.fence,
            state,
            registered,
            turn,
        )
    }

    /// Spawns the token-checked release on the current runtime, if there is one.
    /// Never blocks; without a runtime the lease expires by itself. The local turn is
    /// passed on only after the release, so that the next local task's attempt does
    /// not race it.
    pub(crate) fn release_in_background(&self, token: Arc<str>, turn: Option<Turn>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let conn = self.manager.inner().conn.clone();
        let names = self.names.clone();
        self.manager.inner().tasks.spawn_on(
            async move {
                let _ = scripts::release(&conn, &names, &token).await;
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

/// Releases an attempt's token when dropped while armed.
struct UndoOnDrop<'a> {
    lock: &'a Lock,
    token: Option<Arc<str>>,
}

impl Drop for UndoOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            self.lock.release_in_background(token, None);
        }
    }
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
