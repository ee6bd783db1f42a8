//! [`LockGuard`]: proof of a held lease, released when dropped.

use std::fmt;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use crate::errors::RdLockError;
use crate::gate::Turn;
use crate::lease::{Ending, Lease, LeaseState, LossCause};
use crate::lock::Lock;
use crate::run::RunContext;
use crate::scripts;

/// A held lock. While it lives, a watchdog task renews the lease; dropping it cancels
/// the watchdog and releases the lock. The watchdog starts a second after the
/// acquisition (or at its first renewal, `lease / 3`, if sooner): a guard released
/// before then costs no task.
///
/// # Drop
///
/// Dropping a guard never blocks: it cancels the watchdog at once, then spawns the
/// release (a token-checked Lua script) on the current tokio runtime. The key is
/// deleted within a round trip and waiters are woken; if the server answers "retry
/// later" (`BUSY`, `LOADING`, `READONLY`, ...), the release is retried with backoff
/// until the server serves again or the lease would have ended. Dropped where no runtime is
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
    state: Arc<Lease>,
    /// This guard's entry in the manager's registry of held guards.
    registered: u64,
    /// This task's turn in the manager's local queue for the key, passed on when the
    /// lock is released.
    turn: Option<Turn>,
    /// `rdlock.hold`: the watchdog and the release run in it.
    span: tracing::Span,
}

impl LockGuard {
    pub(crate) fn new(
        lock: Lock,
        token: Arc<str>,
        fence: u64,
        state: Arc<Lease>,
        registered: u64,
        turn: Option<Turn>,
        span: tracing::Span,
    ) -> Self {
        Self {
            lock,
            token,
            fence,
            state,
            registered,
            turn,
            span,
        }
    }

    pub(crate) fn hold_span(&self) -> &tracing::Span {
        &self.span
    }

    /// Cancelled once the lease is lost (not when the guard ends).
    pub(crate) fn lease_token(&self) -> CancellationToken {
        self.state.lost_token()
    }

    /// What a [`Lock::run_with`] job is given.
    pub(crate) fn run_context(&self) -> RunContext {
        RunContext::new(self.fence, self.state.clone())
    }

    /// The reserved turn and the recipient's lock when this guard's release should be a
    /// hand-off to the next local waiter (see [`crate::handoff`]); `None` for a plain
    /// release.
    fn hand_off_target(&mut self) -> Option<(Turn, Lock, bool)> {
        if !self.lock.takes_hand_offs() || self.lock.manager().is_shut_down() {
            return None;
        }
        let (to, spent) = self.turn.as_mut()?.reserve_for_hand_off()?;
        Some((self.turn.take()?, to, spent))
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

    /// `true` while the lease is not known to be lost — held or suspect (see
    /// [`state`](Self::state) for the difference): not lost, and its local deadline
    /// (renewed by the watchdog) not passed on the monotonic clock nor on the wall
    /// clock. The wall clock counts a suspend of the machine, which the monotonic
    /// clock does not on Linux and macOS: after a resume, a lease that ran out during
    /// the suspend reads `false` at once. A wall clock stepped forward can end a lease
    /// early (`false` while the key is still ours); nothing makes it read `true` late,
    /// except a pause that neither clock counts (a VM whose hypervisor hides the pause
    /// from the guest's clocks: fencing tokens cover that case).
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

    /// Held, suspect or lost: what the guard knows about its lease now. See
    /// [`LeaseState`] for the transitions.
    ///
    /// [`is_held`](Self::is_held) is `true` in both [`LeaseState::Held`] and
    /// [`LeaseState::Suspect`]: while suspect, the lease is not known to be gone and
    /// its local deadline still stands, so it is still safe to go on with work that a
    /// fencing token protects. Use `is_held` (or [`lost`](Self::lost)) to decide when
    /// to *stop*; use `state` (or [`suspect`](Self::suspect)) to decide when to *hold
    /// back* what cannot be fenced or undone — committing a payment, sending mail,
    /// starting a step that cannot be interrupted — until a renewal confirms the lease
    /// again, or to log and alert early. A suspect lease often turns back to held
    /// within a renewal or two (a replaced connection, a failover that kept the key);
    /// it turns lost at its local deadline at the latest.
    ///
    /// A change of the backend's command connection or topology makes the lease
    /// suspect at once as far as `state` is concerned (it compares generations on
    /// every call); a failed or overdue renewal does so as soon as the watchdog sees
    /// it.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(guard: rdlock::LockGuard) {
    /// use rdlock::LeaseState;
    ///
    /// let mut step = 0;
    /// while step < 10 {
    ///     match guard.state() {
    ///         LeaseState::Lost => break,
    ///         // Wait for a renewal to confirm the lease (or for the loss).
    ///         LeaseState::Suspect => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
    ///         LeaseState::Held => {
    ///             // charge_card(step).await: irreversible, so only while confirmed
    ///             step += 1;
    ///         }
    ///     }
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn state(&self) -> LeaseState {
        self.state.state()
    }

    /// Completes once the lease is suspect or lost (see [`state`](Self::state)): at
    /// once if it is already. It does not complete again on its own when the lease
    /// turns held and then suspect again: call it again for the next time.
    ///
    /// A failed or overdue renewal wakes it at once; a replaced connection or a
    /// changed topology within 100 ms. A future that was already waiting when the
    /// lease turned suspect completes even if a renewal confirmed the lease again
    /// before the future was next polled: it reports the episode, not only the
    /// current state.
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
    ///     _ = guard.suspect() => eprintln!("lease suspect: pausing before the next irreversible step"),
    /// }
    /// # }
    /// # async fn long_job() {}
    /// ```
    pub fn suspect(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.state.suspect()
    }

    /// Why the lease was lost, once it is ([`LeaseState::Lost`] because of a loss);
    /// `None` while it is held or suspect, and after a release.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(guard: rdlock::LockGuard) {
    /// guard.lost().await;
    /// eprintln!("lease lost: {:?}", guard.loss_cause());
    /// # }
    /// ```
    #[must_use]
    pub fn loss_cause(&self) -> Option<LossCause> {
        self.state.loss_cause()
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
    /// in the key `rdlock:{id}:fence`, which never expires), as long as Redis does not
    /// lose acknowledged writes. Pass it with every write to a system that can reject
    /// writes whose token is not greater than the highest it has accepted.
    ///
    /// If Redis loses its last writes (a crash with RDB snapshots only or
    /// `appendfsync everysec`, an asynchronous failover to a replica that lagged), the
    /// counter goes back and a later acquisition can be given a token that was already
    /// handed out. A resource that also accepts a token *equal* to the highest it has
    /// seen would then take writes from two holders; reject equal tokens (one fenced
    /// write per acquisition), or accept an equal token only together with an id of
    /// the writer that is unique per acquisition (see the README, "Fencing tokens").
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(guard: rdlock::LockGuard) {
    /// let fence = guard.fencing_token();
    /// // storage.write_if_fence_greater_than_last(fence, data).await
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
    /// holds this guard's token and wakes waiters. The next task of this manager
    /// queued for the lock gets its turn once Redis has answered — or, when a task of
    /// this manager waits for the lock, the same script hands the key to it (a new
    /// token, its lease, the next fencing token: see [`Lock`]'s docs), and it gets
    /// its guard from the reply.
    ///
    /// # Errors
    ///
    /// - [`RdLockError::LockNotAcquired`] when the key no longer held our token (the
    ///   lease had been lost; nothing was deleted);
    /// - [`RdLockError::Unreachable`] / [`RdLockError::RedisError`] when the release
    ///   could not be sent or failed; the lease then expires by itself — except after
    ///   a "retry later" reply (`BUSY`, `LOADING`, `READONLY`, ...), for which the
    ///   release is also retried in the background, as for a dropped guard;
    /// - [`RdLockError::ShutDown`] when the manager's shutdown has already released it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in effect: if the future is dropped before Redis has answered, the
    /// release is completed in the background on the current runtime, as by dropping
    /// the guard (the script is token-checked, so a release that had already run is
    /// not repeated in effect). A hand-off cut short this way may or may not have run:
    /// both tokens (this guard's and the one it was handing to) are released, each only
    /// if the key still holds it, and the next task acquires afresh. The background
    /// release is a task of the manager,
    /// which [`shutdown`](crate::RdLockConnectionManager::shutdown) waits for; the
    /// next local task gets its turn once it has been answered.
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
    pub async fn release(mut self) -> Result<(), RdLockError> {
        // Counted as a task of the manager *before* leaving the registry: a shutdown on
        // another thread must see this release in one place or the other.
        let in_flight = self.lock.manager().inner().tasks.token();
        // Unregistering also disarms the drop-release.
        if !self.unregister() {
            return Err(RdLockError::ShutDown);
        }
        self.state.end_guard();
        if let Some((turn, to, spent)) = self.hand_off_target() {
            // One script passes the key to the next local waiter (crate::handoff);
            // dropping this future meanwhile releases both tokens in the background.
            let outcome =
                crate::handoff::hand_off(&self.lock, &self.token, turn, to, spent, in_flight)
                    .instrument(self.span.clone())
                    .await;
            let _in_hold = self.span.enter();
            return match outcome {
                Ok(()) => {
                    tracing::debug!(lock = %self.lock.id(), fence = self.fence, "released: handed off");
                    Ok(())
                }
                Err(RdLockError::LockNotAcquired) => {
                    self.state.mark_lost(Ending::Lost(LossCause::TakenOver));
                    tracing::warn!(lock = %self.lock.id(), fence = self.fence, "release found the lock no longer ours");
                    Err(RdLockError::LockNotAcquired)
                }
                Err(e) => Err(e),
            };
        }
        // From here until Redis answers, dropping this future hands the release (and
        // the turn) to the background: redis-rs does not send a request whose caller
        // is gone, so the release could otherwise be lost.
        let pending = PendingRelease {
            lock: &self.lock,
            token: Some(self.token.clone()),
            turn: self.turn.take(),
            _in_flight: in_flight,
        };
        let conn = &self.lock.manager().inner().conn;
        let outcome = scripts::release(conn, self.lock.names(), &self.token)
            .instrument(self.span.clone())
            .await;
        let _in_hold = self.span.enter();
        // Answered: the turn passes on when this function returns.
        let turn = pending.answered();
        match outcome {
            Ok(true) => {
                tracing::debug!(lock = %self.lock.id(), fence = self.fence, "released");
                Ok(())
            }
            Ok(false) => {
                self.state.mark_lost(Ending::Lost(LossCause::TakenOver));
                tracing::warn!(lock = %self.lock.id(), fence = self.fence, "release found the lock no longer ours");
                Err(RdLockError::LockNotAcquired)
            }
            // "Retry later" (BUSY, LOADING, READONLY, ...): the script did not run, and
            // the caller, who no longer has the guard, cannot try again. Completed in
            // the background, as for a dropped guard; the error is still reported.
            Err(e) if crate::errors::is_retry_later_reply(&e) => {
                tracing::debug!(lock = %self.lock.id(), fence = self.fence, error = %e, "release answered retry-later: retrying in the background");
                self.lock
                    .release_in_background(self.token.clone(), turn, true);
                Err(RdLockError::from_redis(e))
            }
            Err(e) => {
                drop(turn);
                Err(RdLockError::from_redis(e))
            }
        }
    }
}

/// A release in flight, counted among the manager's tasks (shutdown waits for it): if
/// dropped before [`answered`](Self::answered), it spawns the token-checked release in
/// the background and passes the local turn on after it.
struct PendingRelease<'a> {
    lock: &'a Lock,
    token: Option<Arc<str>>,
    turn: Option<Turn>,
    _in_flight: TaskTrackerToken,
}

impl PendingRelease<'_> {
    fn answered(mut self) -> Option<Turn> {
        self.token = None;
        self.turn.take()
    }
}

impl Drop for PendingRelease<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            self.lock
                .release_in_background(token, self.turn.take(), true);
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Synchronous part first: the watchdog must stop even if no release can run.
        self.state.end_guard();
        // The background release runs in the hold's span.
        let span = self.span.clone();
        let _in_hold = span.enter();
        // Counted as a task of the manager until the release is spawned (and tracked):
        // a shutdown on another thread between the two steps below still waits for it.
        let _in_flight = self.lock.manager().inner().tasks.token();
        if !self.unregister() {
            return; // released by `release()` or by shutdown
        }
        if let Some((turn, to, spent)) = self.hand_off_target() {
            crate::handoff::hand_off_in_background(&self.lock, self.token.clone(), turn, to, spent);
            return;
        }
        // Also after a loss: the token-checked script is a no-op if the key is someone
        // else's, and frees it if the loss was only a missed deadline.
        self.lock
            .release_in_background(self.token.clone(), self.turn.take(), true);
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The owner token is a secret of the holder: it is not printed.
        f.debug_struct("LockGuard")
            .field("key", &self.lock.key())
            .field("fencing_token", &self.fence)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}
