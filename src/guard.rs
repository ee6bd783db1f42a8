//! [`LockGuard`]: proof of a held lease, released when dropped.

use std::fmt;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::errors::RdLockError;
use crate::gate::Turn;
use crate::lease::LeaseState;
use crate::lock::Lock;
use crate::scripts;

/// A held lock. While it lives, a watchdog task renews the lease; dropping it cancels
/// the watchdog and releases the lock.
///
/// # Drop
///
/// Dropping a guard never blocks: it cancels the watchdog at once, then spawns the
/// release (a token-checked Lua script) on the current tokio runtime. The key is
/// deleted within a round trip and waiters are woken. Dropped where no runtime is
/// running, or while the runtime shuts down, the release cannot run and the lock frees
/// itself when its lease expires (at most one lease later). Use
/// [`release`](Self::release) to release explicitly and see errors.
///
/// # Leases
///
/// A lock on Redis is a lease: a paused process, a partition or a Redis failover can
/// end it while the guard still exists. [`is_held`](Self::is_held) and
/// [`lost`](Self::lost) report that, and [`fencing_token`](Self::fencing_token) lets
/// the systems you write to reject a holder whose lease has ended.
///
/// # Example
///
/// ```no_run
/// # async fn demo(manager: rdlock::RdLockConnectionManager) -> Result<(), rdlock::RdLockError> {
/// let lock = manager.new_lock("nightly-report");
/// let guard = lock.lock().await?;
/// tokio::select! {
///     _ = run_report(guard.fencing_token()) => {}
///     _ = guard.lost() => eprintln!("lease lost: stopped the report"),
/// }
/// guard.release().await?;
/// # Ok(())
/// # }
/// # async fn run_report(_fence: u64) {}
/// ```
#[must_use = "if unused the lock is released at once: bind the guard with `let _guard = ...` (not `let _ = ...`) to hold the lock"]
#[clippy::has_significant_drop]
pub struct LockGuard {
    lock: Lock,
    token: Arc<str>,
    fence: u64,
    state: Arc<LeaseState>,
    /// This guard's entry in the manager's registry of held guards.
    registered: u64,
    /// This task's turn in the manager's local queue for the key, passed on when the
    /// lock is released.
    turn: Option<Turn>,
}

impl LockGuard {
    pub(crate) fn new(
        lock: Lock,
        token: Arc<str>,
        fence: u64,
        state: Arc<LeaseState>,
        registered: u64,
        turn: Option<Turn>,
    ) -> Self {
        Self {
            lock,
            token,
            fence,
            state,
            registered,
            turn,
        }
    }

    /// Cancelled once the lease is lost (not when the guard ends).
    pub(crate) fn lease_token(&self) -> CancellationToken {
        self.state.lost_token()
    }

    /// Takes the guard out of the manager's registry; `false` when shutdown already
    /// took (and released) it.
    fn unregister(&self) -> bool {
        self.lock
            .manager()
            .inner()
            .held
            .remove(self.registered)
            .is_some()
    }

    /// `true` while the lease is known to be ours: not lost, and its local deadline
    /// (renewed by the watchdog) not passed.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(guard: rdlock::LockGuard) {
    /// for batch in 0..100 {
    ///     if !guard.is_held() {
    ///         break; // stop before touching anything else
    ///     }
    ///     // process(batch).await;
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn is_held(&self) -> bool {
        self.state.is_held()
    }

    /// Completes once the lease is lost: the key was deleted, expired or taken over, or
    /// renewals kept failing until the local lease deadline. Never completes while the
    /// lease is held.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes the lease.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(guard: rdlock::LockGuard) {
    /// tokio::select! {
    ///     _ = long_job() => {}
    ///     _ = guard.lost() => eprintln!("lease lost, job abandoned"),
    /// }
    /// # }
    /// # async fn long_job() {}
    /// ```
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.state.lost()
    }

    /// The fencing token of this acquisition: strictly greater than that of every
    /// earlier acquisition of the same lock id on this Redis server (the counter lives
    /// in the key `rdlock:{id}:fence`, which never expires). Pass it with every write
    /// to a system that can reject writes carrying a smaller token.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(guard: rdlock::LockGuard) {
    /// let fence = guard.fencing_token();
    /// // storage.write_if_fence_at_least(fence, data).await
    /// # }
    /// ```
    #[must_use]
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// A token that is cancelled when the lease is lost or the guard ends: hand it to
    /// spawned subtasks so that they stop with the lock. Cancelling it yourself does
    /// not release the lock.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(guard: rdlock::LockGuard) {
    /// let stop = guard.cancellation_token();
    /// tokio::spawn(async move {
    ///     stop.run_until_cancelled(async { /* work */ }).await;
    /// });
    /// # }
    /// ```
    #[must_use]
    pub fn cancellation_token(&self) -> CancellationToken {
        self.state.scope().child_token()
    }

    /// The lock this guard holds.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(guard: rdlock::LockGuard) {
    /// println!("holding {}", guard.lock().key());
    /// # }
    /// ```
    #[must_use]
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// Releases the lock now: stops the watchdog, then deletes the key if it still
    /// holds this guard's token and wakes waiters.
    ///
    /// # Errors
    ///
    /// - [`RdLockError::LockNotAcquired`] when the key no longer held our token (the
    ///   lease had been lost; nothing was deleted);
    /// - [`RdLockError::Unreachable`] / [`RdLockError::RedisError`] when the release
    ///   could not be sent; the lease then expires by itself;
    /// - [`RdLockError::ShutDown`] when the manager's shutdown has already released it.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before it completes, the guard has already been
    /// consumed and the watchdog stopped: the release may or may not have run, and the
    /// lease expires by itself in the latter case.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
    /// let guard = lock.lock().await?;
    /// // ... work ...
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn release(self) -> Result<(), RdLockError> {
        // Unregistering first also disarms the drop-release.
        if !self.unregister() {
            return Err(RdLockError::ShutDown);
        }
        self.state.scope().cancel();
        let conn = &self.lock.manager().inner().conn;
        let outcome = scripts::release(conn, self.lock.names(), &self.token).await;
        match outcome {
            Ok(true) => {
                tracing::debug!(lock = %self.lock.id(), fence = self.fence, "released");
                Ok(())
            }
            Ok(false) => {
                self.state.mark_lost();
                tracing::warn!(lock = %self.lock.id(), fence = self.fence, "release found the lock no longer ours");
                Err(RdLockError::LockNotAcquired)
            }
            Err(e) => Err(RdLockError::from_redis(e)),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Synchronous part first: the watchdog must stop even if no release can run.
        self.state.scope().cancel();
        if !self.unregister() {
            return; // released by `release()` or by shutdown
        }
        // Also after a loss: the token-checked script is a no-op if the key is someone
        // else's, and frees it if the loss was only a missed deadline.
        self.lock
            .release_in_background(self.token.clone(), self.turn.take());
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The owner token is a secret of the holder: it is not printed.
        f.debug_struct("LockGuard")
            .field("key", &self.lock.key())
            .field("fencing_token", &self.fence)
            .field("held", &self.is_held())
            .finish_non_exhaustive()
    }
}
