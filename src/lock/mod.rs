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
use crate::held::{start_at, Held, Late};
use crate::holder::{owner_record, HolderInfo};
use crate::lease::{valid_until, wall_valid_until, Lease};
use crate::manager::RdLockConnectionManager;
use crate::meters::{self, Hold, MetricsName, Wait};
use crate::names::LockNames;
use crate::run::{Run, RunContext};
use crate::scripts::{self, Acquire, Queueing};
use crate::watchdog::Watchdog;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

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
/// released or dropped — as a *hand-off* when it can: one script checks the releasing
/// guard's token and gives the key to the next queued task (with that task's lease and
/// owner record, and the next fencing token), which gets its guard without a further
/// round trip. Holder to holder then costs one round trip instead of two. At most
/// [`HANDOFF_BUDGET`](crate::HANDOFF_BUDGET) hand-offs follow each other before the key
/// is released in Redis, so that other processes get their chance. No hand-off with
/// [1.x compatibility](Self::with_v1_compat), on Redlock, or with replica sync: a plain
/// release then. [`try_lock`](Self::try_lock) never queues, so it never receives one.
/// The design and its safety argument: the `handoff` module's source docs
/// (`src/handoff.rs`) and `src/gate.rs`.
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
    /// No renewal after this long from the acquisition ([`Lock::with_max_hold`]).
    max_hold: Option<Duration>,
    /// The label `lock` of its metrics ([`Lock::with_metrics_name`]).
    metrics: MetricsName,
    /// This process's owner record (`<pid>\n<host>\n<label>`), stored with the lock.
    owner: Arc<str>,
}

/// Why a lock with 1.x compatibility is refused on a Redis Cluster.
const V1_CLUSTER: &str = "the 1.x key `/rdlock/<id>/.lock` lies outside the lock's hash tag, \
     so it needs a single server (or Sentinel), not a Redis Cluster";
/// Why a lock with 1.x compatibility is refused on Redlock.
const V1_REDLOCK: &str = "1.x takes its key on one server, which a quorum lock over independent \
     masters cannot exclude: it needs a single server (or Sentinel), not Redlock";

/// An acquisition, before it is wrapped in a guard.
pub(crate) struct Acquired {
    pub(crate) token: Arc<str>,
    pub(crate) fence: u64,
    /// When the acquire was sent, on the monotonic clock and on the wall clock.
    pub(crate) sent: Instant,
    pub(crate) sent_wall: SystemTime,
    /// The backend's generation when the acquire was sent.
    pub(crate) generation: u64,
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
    /// Whether the lease of this acquisition may be over by now (by the monotonic or the
    /// wall clock), counted from before its script was sent.
    pub(crate) fn lease_over(&self, lease: Duration) -> bool {
        Instant::now() >= valid_until(self.acquired.sent, lease)
            || SystemTime::now() >= wall_valid_until(self.acquired.sent_wall, lease)
    }

    /// Keeps the acquisition without a guard (the 1.x `BasicLock`).
    pub(crate) fn keep(mut self) -> Acquired {
        self.undo.token = None;
        self.acquired
    }

    /// The local turn that came with a handed-off acquisition.
    pub(crate) fn take_turn(&mut self) -> Option<Turn> {
        self.undo.turn.take()
    }

    /// An acquisition handed off to `lock` (see [`crate::handoff`]): armed like an
    /// attempt's, so that dropping it releases it by its token and then passes `turn`
    /// on; `in_flight` counts it among the manager's tasks until it is a guard.
    pub(crate) fn handed_off(
        lock: &Lock,
        acquired: Acquired,
        turn: Turn,
        in_flight: TaskTrackerToken,
    ) -> Self {
        let token = acquired.token.clone();
        Self {
            acquired,
            undo: Undo {
                lock: lock.clone(),
                token: Some(token),
                turn: Some(turn),
                _in_flight: in_flight,
            },
        }
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
            max_hold: None,
            metrics: MetricsName::default(),
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

    /// Makes this lock also take the rdlock 1.x key, `/rdlock/<id>/.lock`, so that
    /// rdlock 1.x processes using the same id and the same Redis exclude it and are
    /// excluded by it: for a rolling upgrade from 1.x (README, "Rolling upgrade from
    /// 1.x"). Default: off.
    ///
    /// With it, the acquire script takes `rdlock:{<id>}:lock` and the 1.x key together
    /// (the latter as 1.x does, a string with an expiry, here with our token and our
    /// lease), and only when both are free; a 1.x holder is waited for like any holder.
    /// The watchdog renews both, only while both still hold our token: a 1.x key
    /// deleted under us (a 1.x process's unconditional `DEL`) or taken over by a 1.x
    /// process ends the lease ([`LockGuard::lost`] completes), since a 1.x process may
    /// have run meanwhile. Every release path deletes both (each only if it still
    /// holds our token), and [`LockGuard::release`] reports
    /// [`RdLockError::LockNotAcquired`] unless both were still ours. Waiters are
    /// woken by a 1.x release through the 1.x key's keyspace `del`/`expired` events
    /// when the server has keyspace events on (which 1.x requires), and otherwise
    /// when the 1.x key's TTL runs out; 1.x
    /// waiters are woken by our release through the same events, which they already
    /// listen to. [`holder`](Self::holder) shows a 1.x holder (pid 0, no host, fencing
    /// token 0) and [`force_release`](Self::force_release) deletes the 1.x key too.
    ///
    /// Cost: one more key written per acquisition and one more key read per renewal
    /// and release, in the same scripts (no extra round trip), and one more channel
    /// per waited-for lock on the subscriber. Once a compatible waiter has waited in a
    /// manager, and until no task of that manager waits for the id any more, a release
    /// wakes every waiter of that manager for the id, not one (waiters with and without
    /// compatibility can be blocked by different keys): one attempt per local waiter. A lock without it creates no `/rdlock/` key and sends
    /// exactly what it did before.
    ///
    /// Limits:
    /// - it is as safe as 1.x with 1.x, not safer: 1.x releases with an unconditional
    ///   `DEL`, so a 1.x process whose TTL ran out can still delete the 1.x key while
    ///   we hold the lock, and another 1.x process can then take it: both run until
    ///   our next renewal, at most `lease / 3` later, which reports the lease lost
    ///   (also when that 1.x process has already released it again);
    /// - fencing tokens are ours only: 1.x holders do not take one, so a resource that
    ///   checks them cannot tell a 1.x holder's writes from anyone's;
    /// - it needs one server (or Sentinel): on a Redis Cluster (the 1.x key is outside
    ///   the lock's hash tag) and on Redlock (1.x takes its key on one server, which a
    ///   quorum lock cannot exclude), every method of the lock that talks to Redis
    ///   returns [`RdLockError::V1CompatUnsupported`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(manager: rdlock::RdLockConnectionManager) -> Result<(), rdlock::RdLockError> {
    /// // While 1.x processes still run `new_basic_lock("report", ttl)` on the same Redis:
    /// let lock = manager.new_lock("report").with_v1_compat();
    /// assert_eq!(lock.v1_key(), Some("/rdlock/report/.lock"));
    /// let _guard = lock.lock().await?; // excludes 1.x holders too
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_v1_compat(mut self) -> Self {
        self.set_v1_compat(true);
        self
    }

    /// Turns 1.x compatibility on or off (for `BasicLock`, on by default there).
    pub(crate) fn set_v1_compat(&mut self, on: bool) {
        let db = self.manager.inner().keyspace_db;
        let names = LockNames::new(&self.id, db);
        self.names = Arc::new(if on {
            names.with_v1(&self.id, db)
        } else {
            names
        });
    }

    /// The rdlock 1.x key this lock also takes, `/rdlock/<id>/.lock` (the raw id), or
    /// `None` without [`with_v1_compat`](Self::with_v1_compat).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// assert_eq!(manager.new_lock("job").v1_key(), None);
    /// # }
    /// ```
    #[must_use]
    pub fn v1_key(&self) -> Option<&str> {
        self.names.v1.as_ref().map(|v1| v1.key.as_str())
    }

    /// Refuses 1.x compatibility on a cluster or Redlock, before anything is sent.
    fn check_v1(&self) -> Result<(), RdLockError> {
        if self.names.v1.is_none() {
            return Ok(());
        }
        match *self.manager.inner().conn {
            crate::backend::Backend::Cluster(_) => {
                Err(RdLockError::V1CompatUnsupported { reason: V1_CLUSTER })
            }
            crate::backend::Backend::Redlock(_) => {
                Err(RdLockError::V1CompatUnsupported { reason: V1_REDLOCK })
            }
            _ => Ok(()),
        }
    }

    /// Who holds the lock now, or `None` when it is free. One round trip.
    ///
    /// With [1.x compatibility](Self::with_v1_compat), a rdlock 1.x holder (the 1.x key
    /// without the lock key) is shown with pid 0, no host, fencing token 0 and the 1.x
    /// key's remaining TTL.
    ///
    /// While a turn is reserved for the next process in line ([`RESERVATION`](crate::RESERVATION),
    /// at most 250 ms, usually about a millisecond), the key holds no token and no owner
    /// record: it is shown like a holder rdlock did not write (pid 0, fencing token 0,
    /// the reservation's remaining time). A known limitation: the read is one
    /// pipeline that does not tell the two apart (`tests/queue_review2.rs`).
    ///
    /// # Errors
    ///
    /// [`RdLockError::Unreachable`] / [`RdLockError::RedisError`] when Redis cannot
    /// answer; [`RdLockError::InvalidLockId`] for an empty id;
    /// [`RdLockError::V1CompatUnsupported`] for 1.x compatibility on a cluster.
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
        self.check_v1()?;
        let conn = &self.manager.inner().conn;
        let (record, pttl, fence, v1_pttl) = scripts::inspect(conn, &self.names)
            .await
            .map_err(RdLockError::from_redis)?;
        let holder = match pttl {
            // No lock key, but a 1.x key (1.x compatibility): a 1.x holder, which
            // leaves no owner record.
            -2 => match v1_pttl {
                None | Some(-2) => None, // free
                Some(-1) => Some(HolderInfo::parse(None, None)),
                Some(ms) => Some(HolderInfo::parse(
                    None,
                    Some(Duration::from_millis(ms.unsigned_abs())),
                )),
            },
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
    /// With [1.x compatibility](Self::with_v1_compat) it deletes the 1.x key too,
    /// whoever holds it (a 1.x process included): the lock is free afterwards, which
    /// is what the escape hatch is for. A 1.x holder learns nothing (1.x never checks).
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
        self.check_v1()?;
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
    /// another acquisition. With [1.x compatibility](Self::with_v1_compat), the 1.x key
    /// of that acquisition is deleted with it, and a 1.x holder alone counts as
    /// fencing token 0 (1.x stores a constant: one 1.x holder cannot be told from the
    /// next).
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
        self.check_v1()?;
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

    /// Sets a maximum hold: the watchdog renews the lease only until `max_hold` after
    /// the acquisition (measured from when the acquire was sent), then stops; the
    /// lease runs out, the guard reports the loss ([`LockGuard::lost`] completes,
    /// [`LockGuard::loss_cause`] is [`LossCause::MaxHold`](crate::LossCause::MaxHold)),
    /// and [`run`](Self::run) returns [`RdLockError::MaxHoldReached`]. A job that is
    /// stuck can then hold the lock at most `max_hold` plus one lease (the last
    /// renewal sent before `max_hold` runs its full lease). Default: none, renewals go
    /// on while the guard lives.
    ///
    /// A maximum hold shorter than a third of the lease means no renewal is sent: the
    /// lock is held for one lease, which is then the bound. (The lease is not cut
    /// short: a shorter lease is what [`with_lease`](Self::with_lease) is for.)
    ///
    /// It must be between 1 ms and [`MAX_LEASE`]; others make the acquire methods
    /// return [`RdLockError::InvalidMaxHold`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(manager: rdlock::RdLockConnectionManager) -> Result<(), rdlock::RdLockError> {
    /// use std::time::Duration;
    ///
    /// let lock = manager
    ///     .new_lock("hourly-sync")
    ///     .with_lease(Duration::from_secs(10))
    ///     .with_max_hold(Duration::from_secs(50 * 60));
    /// match lock.run(async { /* sync */ }).await {
    ///     Err(rdlock::RdLockError::MaxHoldReached) => eprintln!("sync took too long: stopped"),
    ///     other => other?,
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    /// The maximum hold set with [`with_max_hold`](Self::with_max_hold), if any.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// assert_eq!(manager.new_lock("job").max_hold(), None);
    /// # }
    /// ```
    #[must_use]
    pub fn max_hold(&self) -> Option<Duration> {
        self.max_hold
    }

    /// Names this lock in the metrics (feature `metrics`): the value of the label
    /// `lock` of every metric its acquisitions and guards record. Lock ids are never a
    /// label (there may be one per job); choose a name from a small set, such as the
    /// kind of job ("nightly-report", "migrations"), and give it to several ids if
    /// need be. Default: none (no `lock` label). Without the feature it is kept but
    /// not used.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager, tenant: &str) {
    /// let lock = manager
    ///     .new_lock(&format!("report:{tenant}"))
    ///     .with_metrics_name("report");
    /// assert_eq!(lock.metrics_name(), Some("report"));
    /// # }
    /// ```
    #[must_use]
    pub fn with_metrics_name(mut self, name: impl AsRef<str>) -> Self {
        self.metrics = MetricsName::new(name.as_ref());
        self
    }

    /// The name set with [`with_metrics_name`](Self::with_metrics_name), if any.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// assert_eq!(manager.new_lock("job").metrics_name(), None);
    /// # }
    /// ```
    #[must_use]
    pub fn metrics_name(&self) -> Option<&str> {
        self.metrics.get()
    }

    pub(crate) fn metrics(&self) -> &MetricsName {
        &self.metrics
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
        let wait = Wait::start(&self.metrics, false);
        let span = self.acquire_span();
        let result = match self.try_turn() {
            Ok(turn) => match self.try_acquire_armed().instrument(span.clone()).await {
                // Outside the acquisition's span: the hold's span is its sibling.
                Ok(granted) => self.guard(granted, Some(turn)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        Self::record_outcome(&span, &result);
        wait.finish(&result);
        result
    }

    /// Checks the input, then takes this task's turn in the manager's local queue
    /// without waiting.
    fn try_turn(&self) -> Result<Turn, RdLockError> {
        self.validate()?;
        // Another task of this manager holds the lock or waits for it: it is not
        // free for us, and Redis need not be asked.
        self.manager
            .inner()
            .gates
            .get(&self.names.key)
            .try_take()
            .ok_or(RdLockError::LockUnavailable)
    }

    /// Whether a hand-off can serve this lock, as giver or as recipient: the hand-off
    /// script takes only the lock's own keys, on one server, without `WAIT`. Not with
    /// 1.x compatibility (the 1.x key would have to move too), on Redlock (a quorum of
    /// independent masters), nor with replica sync (the hand-off would need its `WAIT`).
    pub(crate) fn takes_hand_offs(&self) -> bool {
        let inner = self.manager.inner();
        self.names.v1.is_none()
            && inner.timeouts.replica_sync.is_none()
            && !matches!(*inner.conn, crate::backend::Backend::Redlock(_))
    }

    /// Whether this lock's waiters queue in Redis ([`crate::queue`]): not on Redlock (no
    /// one queue over independent masters). With 1.x compatibility they queue too (and
    /// also set the waiters marker; the release of such a holder wakes all).
    pub(crate) fn queues(&self) -> bool {
        !matches!(
            *self.manager.inner().conn,
            crate::backend::Backend::Redlock(_)
        )
    }

    /// The lease in whole milliseconds (checked by [`validate`](Self::validate)).
    pub(crate) fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)
    }

    /// This process's owner record, stored with the lock.
    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// One attempt, for the 1.x `BasicLock`.
    pub(crate) async fn try_acquire_raw(&self) -> Result<Acquired, RdLockError> {
        self.try_acquire_armed().await.map(Granted::keep)
    }

    async fn try_acquire_armed(&self) -> Result<Granted, RdLockError> {
        let lease_ms = self.validate()?;
        // `try_lock` never queues.
        let no_queue = Queueing {
            process: "",
            queued: false,
        };
        match self.bounded_attempt(lease_ms, None, no_queue).await? {
            Attempt::Acquired(granted) => Ok(granted),
            Attempt::TooLate => Err(RdLockError::LeaseLost),
            Attempt::Held(_) => Err(RdLockError::LockUnavailable),
        }
    }

    /// Waits for the lock, runs `fut` while the lease is held, then releases the lock
    /// and returns `fut`'s output.
    ///
    /// If the lease is lost while `fut` runs, `fut` is dropped at once (it is not
    /// polled again) and the result is [`RdLockError::LeaseLost`] — or
    /// [`RdLockError::MaxHoldReached`] when the lease ran out because the maximum hold
    /// ([`with_max_hold`](Self::with_max_hold)) was reached. A lease that is only
    /// suspect ([`LockGuard::state`]) does not stop `fut`. If `fut` panics,
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
    /// [`RdLockError::LeaseLost`] and [`RdLockError::MaxHoldReached`] as above;
    /// otherwise those of [`lock`](Self::lock).
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
        if let Some(max_hold) = self.max_hold {
            if max_hold < Duration::from_millis(1) {
                return Err(RdLockError::InvalidMaxHold {
                    max_hold,
                    reason: "shorter than 1 ms",
                });
            }
            if max_hold > MAX_LEASE {
                return Err(RdLockError::InvalidMaxHold {
                    max_hold,
                    reason: "longer than the maximum lease of 10 years",
                });
            }
        }
        if self.watchdog {
            self.manager.inner().timeouts.check_lease(self.lease)?;
        }
        self.check_v1()?;
        Ok(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
    }

    /// One acquire script call with a fresh owner token, bounded by `until` (if any)
    /// and by the manager's shutdown. An attempt cut short is undone by its token.
    async fn bounded_attempt(
        &self,
        lease_ms: u64,
        until: Option<Instant>,
        queue: Queueing<'_>,
    ) -> Result<Attempt, RdLockError> {
        let shutdown = &self.manager.inner().shutdown;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Err(RdLockError::ShutDown),
            outcome = self.attempt(lease_ms, queue) => outcome,
            _ = sleep_until(until) => Err(RdLockError::TimeoutReached),
        }
    }

    /// One acquire script call with a fresh owner token.
    ///
    /// A fresh token per attempt keeps the clean-up of an ambiguous attempt (sent, no
    /// reply) from ever touching a later attempt's acquisition.
    async fn attempt(&self, lease_ms: u64, queue: Queueing<'_>) -> Result<Attempt, RdLockError> {
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
            turn: None,
            _in_flight: in_flight,
        };
        let generation = inner.conn.generation();
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
                    queue,
                )
                .await
            }
            None => scripts::acquire(
                &inner.conn,
                &self.names,
                &token,
                lease_ms,
                &self.owner,
                queue,
            )
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
                        generation,
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

    /// The span of one acquisition call: `rdlock.acquire`, with the lock id, the
    /// backend, and once known the fencing token and the outcome. Never the token.
    pub(crate) fn acquire_span(&self) -> tracing::Span {
        tracing::info_span!(
            "rdlock.acquire",
            lock = %self.id,
            backend = self.manager.inner().conn.kind(),
            fence = tracing::field::Empty,
            outcome = tracing::field::Empty,
        )
    }

    pub(crate) fn record_outcome(span: &tracing::Span, result: &Result<LockGuard, RdLockError>) {
        match result {
            Ok(guard) => {
                span.record("fence", guard.fencing_token());
                span.record("outcome", "acquired");
                guard.hold_span().follows_from(span);
            }
            Err(e) => {
                span.record("outcome", tracing::field::display(e));
            }
        }
    }

    /// Wraps an acquisition in a guard and schedules its watchdog; undoes it and reports
    /// [`RdLockError::ShutDown`] if the manager's shutdown has begun.
    pub(crate) fn guard(
        &self,
        granted: Granted,
        turn: Option<Turn>,
    ) -> Result<LockGuard, RdLockError> {
        let Granted { acquired, mut undo } = granted;
        let state = Arc::new(
            Lease::new(
                valid_until(acquired.sent, self.lease),
                wall_valid_until(acquired.sent_wall, self.lease),
            )
            .with_backend(self.manager.inner().conn.clone(), acquired.generation)
            .with_hold(Hold::start(self.metrics.clone())),
        );
        // The hold: under the caller's span (this is called outside the acquisition's
        // span), for as long as the guard lives; its watchdog and release run in it.
        let hold = tracing::info_span!(
            "rdlock.hold",
            lock = %self.id,
            fence = acquired.fence,
            backend = self.manager.inner().conn.kind(),
        );
        // Not spawned now: the manager's starter spawns it when its first renewal
        // nears, unless the guard has ended by then (see the watchdog module docs).
        let late = self.watchdog.then(|| Late {
            at: start_at(acquired.sent, self.lease),
            watchdog: Watchdog {
                conn: self.manager.inner().conn.clone(),
                names: self.names.clone(),
                id: self.id.clone(),
                fence: acquired.fence,
                token: acquired.token.clone(),
                lease: self.lease,
                state: state.clone(),
                last_sent: acquired.sent,
                max_hold_at: self.max_hold.map(|m| acquired.sent + m),
                metrics: self.metrics.clone(),
            },
            span: hold.clone(),
        });
        let registered = self.manager.inner().held.insert(Held {
            names: self.names.clone(),
            id: self.id.clone(),
            token: acquired.token.clone(),
            fence: acquired.fence,
            state: state.clone(),
            late,
        });
        let Some(registered) = registered else {
            // Shutdown has drained the registry: this acquisition completed too late to
            // be released by it. `undo` releases it; shutdown waits for that.
            tracing::debug!(lock = %self.id, fence = acquired.fence, "acquired during shutdown: undone");
            return Err(RdLockError::ShutDown);
        };
        // From here on the guard (or shutdown, which now sees it and its watchdog to
        // be) releases the lock; `undo`, and with it this acquisition's count among the
        // manager's tasks, can end.
        undo.token = None;
        drop(undo);
        tracing::debug!(lock = %self.id, fence = acquired.fence, lease = ?self.lease, "acquired");
        Ok(LockGuard::new(
            self.clone(),
            acquired.token,
            acquired.fence,
            state,
            registered,
            turn,
            hold,
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
    ///
    /// With `guard` (a guard's release), a release that cannot run — no runtime to
    /// spawn on, or a runtime that shuts down before the release ran — is counted in
    /// `rdlock_release_fallbacks_total` (the lease is left to expire).
    pub(crate) fn release_in_background(&self, token: Arc<str>, turn: Option<Turn>, guard: bool) {
        let on_its_way = guard.then(|| meters::ReleaseOnItsWay::new(self.metrics.clone()));
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // No runtime: dropping `on_its_way` counts the fallback.
            return;
        };
        let conn = self.manager.inner().conn.clone();
        let names = self.names.clone();
        let give_up = Instant::now() + self.lease;
        self.manager.inner().tasks.spawn_on(
            async move {
                // Dropped unpolled or midway by a runtime shutting down: counted.
                let on_its_way = on_its_way;
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
                if let Some(on_its_way) = on_its_way {
                    on_its_way.ran();
                }
            }
            .in_current_span(),
            &handle,
        );
    }

    pub(crate) fn manager(&self) -> &RdLockConnectionManager {
        &self.manager
    }

    pub(crate) fn names(&self) -> &LockNames {
        &self.names
    }

    pub(crate) fn names_arc(&self) -> &Arc<LockNames> {
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
    /// The local turn of a handed-off acquisition: passed on after the undo's release
    /// has been answered, so that the next local attempt does not race it.
    turn: Option<Turn>,
    _in_flight: TaskTrackerToken,
}

impl Drop for Undo {
    fn drop(&mut self) {
        // Runs before the fields are dropped: the release is spawned (and tracked)
        // before the attempt stops counting as a task of the manager.
        if let Some(token) = self.token.take() {
            self.lock
                .release_in_background(token, self.turn.take(), false);
        }
    }
}

/// The first and the longest wait between the retries of a background release
/// answered "retry later".
pub(crate) const RELEASE_RETRY_MIN: Duration = Duration::from_millis(50);
pub(crate) const RELEASE_RETRY_MAX: Duration = Duration::from_secs(1);

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
            .field("v1_key", &self.v1_key())
            .field("max_hold", &self.max_hold)
            .finish_non_exhaustive()
    }
}
