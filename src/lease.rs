//! The local view of a lease: its deadline, on the monotonic clock and on the wall
//! clock, and the loss signal.
//!
//! The deadline is kept on two clocks because neither is enough alone. The monotonic
//! clock (`Instant`) cannot be stepped, but on Linux and macOS it stops while the
//! machine is suspended, whereas the lease keeps running on the server: after a resume
//! it would say the lease is still ours. The wall clock (`SystemTime`) counts the
//! suspend, but can be stepped. The lease is held only while *both* deadlines are
//! ahead: a suspend is caught by the wall clock; a wall clock stepped back is caught by
//! the monotonic one; a wall clock stepped forward ends the lease early (a loss is
//! reported that did not happen, never the reverse).

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::meters::Hold;

/// How often [`Lease::suspect`] looks at the backend's generation while it waits: a
/// connection replaced by another lock's command is noticed within this time (the
/// watchdog notices it within a second; [`Lease::state`] at once).
const GENERATION_POLL: Duration = Duration::from_millis(100);

/// What a guard knows about its lease: [`LockGuard::state`](crate::LockGuard::state).
///
/// ```text
///            renewal failed / timed out,           renewal confirmed the token
///            connection replaced, topology changed  (on the current connection)
///   Held ────────────────────────────────────▶ Suspect ─────────────────────▶ Held
///     │                                           │
///     └──────────────┬────────────────────────────┘
///                    ▼  key not ours, local deadline passed, max hold reached,
///                 Lost    guard released or dropped (never leaves Lost)
/// ```
///
/// # Example
///
/// ```no_run
/// # async fn demo(guard: rdlock::LockGuard) {
/// use rdlock::LeaseState;
///
/// match guard.state() {
///     LeaseState::Held => { /* renewed a moment ago, nothing seen against it */ }
///     LeaseState::Suspect => { /* probably ours: pause irreversible steps */ }
///     LeaseState::Lost => { /* stop */ }
/// }
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaseState {
    /// The last renewal (or the acquisition) confirmed the owner token, and nothing
    /// seen since casts doubt on it.
    Held,
    /// Not known to be lost, but no longer confirmed: the last renewal failed or did
    /// not answer in time, or the command connection was replaced or the topology
    /// changed (a failover, a rebuilt cluster connection) since the last confirmation.
    /// The local deadline still stands: the lease is ours until it passes, unless
    /// someone else could take the key over (a failover that lost the key). Back to
    /// [`Held`](Self::Held) after a renewal that confirms the token.
    Suspect,
    /// Lost, or ended: the key no longer holds the guard's token, the local deadline
    /// passed, the maximum hold was reached, or the guard was released. Final.
    Lost,
}

/// Why a lease was lost: [`LockGuard::loss_cause`](crate::LockGuard::loss_cause).
/// Each has the name used as the `cause` label of `rdlock_leases_lost_total`.
///
/// ```no_run
/// # async fn demo(guard: rdlock::LockGuard) {
/// guard.lost().await;
/// if guard.loss_cause() == Some(rdlock::LossCause::MaxHold) {
///     eprintln!("the job ran past its maximum hold");
/// }
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LossCause {
    /// `taken_over`: a renewal or the release found the key holding another token or
    /// none (deleted, force-released, expired on the server, taken by someone else).
    TakenOver,
    /// `expired`: the local lease deadline passed while no renewal had failed — the
    /// watchdog could not run in time (a starved executor, a suspended machine, a
    /// clock step).
    Expired,
    /// `unreachable`: renewals failed or went unanswered until the local deadline.
    Unreachable,
    /// `max_hold`: the watchdog stopped renewing at the maximum hold
    /// ([`Lock::with_max_hold`](crate::Lock::with_max_hold)) and the lease ran out.
    MaxHold,
}

impl LossCause {
    /// The label value of this cause in `rdlock_leases_lost_total`.
    ///
    /// ```
    /// assert_eq!(rdlock::LossCause::MaxHold.as_str(), "max_hold");
    /// ```
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TakenOver => "taken_over",
            Self::Expired => "expired",
            Self::Unreachable => "unreachable",
            Self::MaxHold => "max_hold",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::TakenOver => 1,
            Self::Expired => 2,
            Self::Unreachable => 3,
            Self::MaxHold => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::TakenOver),
            2 => Some(Self::Expired),
            3 => Some(Self::Unreachable),
            4 => Some(Self::MaxHold),
            _ => None,
        }
    }
}

/// How a lease ended, for [`Lease::mark_lost`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Lost, for this cause.
    Lost(LossCause),
    /// Ended by the manager's shutdown, which releases it: not a loss.
    ShutDown,
}

/// The margin kept between the server's expiry and our local deadline, for clock drift
/// between client and server and for the reply's way back (the Redlock rule: 1 % of
/// the lease plus 2 ms).
pub(crate) fn drift(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

/// The latest instant at which a lease granted by a command *sent* at `sent` is
/// certainly still ours. Measured from the send, not the reply: the server may have
/// started the lease at any moment in between.
pub(crate) fn valid_until(sent: Instant, lease: Duration) -> Instant {
    sent + (lease - drift(lease))
}

/// [`valid_until`] on the wall clock.
pub(crate) fn wall_valid_until(sent: SystemTime, lease: Duration) -> SystemTime {
    sent + (lease - drift(lease))
}

/// Nanoseconds since the Unix epoch (0 before it, `u64::MAX` after the year 2554).
fn wall_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Shared by a guard and its watchdog.
#[derive(Debug)]
pub(crate) struct Lease {
    base: Instant,
    /// Local deadline, in nanoseconds after `base`.
    deadline_ns: AtomicU64,
    /// The same deadline on the wall clock, in nanoseconds since the Unix epoch.
    wall_deadline_ns: AtomicU64,
    /// Cancelled once the lease is known lost; never un-cancelled.
    lost: CancellationToken,
    /// Cancelled when the lease is lost or the guard ends: stops the watchdog and
    /// everything the user tied to [`LockGuard::cancellation_token`](crate::LockGuard::cancellation_token).
    scope: CancellationToken,
    /// The last renewal failed or was overdue (cleared by one that confirms the token).
    suspect: AtomicBool,
    /// Woken when `suspect` is set.
    suspect_set: Notify,
    /// The backend and its generation at the last confirmation of the token.
    backend: Option<Arc<Backend>>,
    generation: AtomicU64,
    /// The watchdog stopped renewing: the maximum hold was reached.
    capped: AtomicBool,
    /// The [`LossCause`] code, 0 while not lost.
    cause: AtomicU8,
    /// The hold's metrics, ended with the lease or the guard.
    hold: Hold,
}

impl Lease {
    pub(crate) fn new(deadline: Instant, wall_deadline: SystemTime) -> Self {
        let base = Instant::now();
        let state = Self {
            base,
            deadline_ns: AtomicU64::new(0),
            wall_deadline_ns: AtomicU64::new(0),
            lost: CancellationToken::new(),
            scope: CancellationToken::new(),
            suspect: AtomicBool::new(false),
            suspect_set: Notify::new(),
            backend: None,
            generation: AtomicU64::new(0),
            capped: AtomicBool::new(false),
            cause: AtomicU8::new(0),
            hold: Hold::none(),
        };
        state.set_deadline(deadline, wall_deadline);
        state
    }

    /// Watches `backend`'s generation: a lease confirmed under `generation` is suspect
    /// once the backend reports another.
    pub(crate) fn with_backend(mut self, backend: Arc<Backend>, generation: u64) -> Self {
        self.backend = Some(backend);
        self.generation = AtomicU64::new(generation);
        self
    }

    /// Records this lease's hold in the metrics.
    pub(crate) fn with_hold(mut self, hold: Hold) -> Self {
        self.hold = hold;
        self
    }

    /// The guard ended (released or dropped): stops the watchdog and ends the hold.
    pub(crate) fn end_guard(&self) {
        self.scope.cancel();
        self.hold.end();
    }

    /// Held, suspect or lost, as [`LockGuard::state`](crate::LockGuard::state).
    pub(crate) fn state(&self) -> LeaseState {
        if !self.is_held() {
            LeaseState::Lost
        } else if self.suspect.load(Ordering::Acquire) || self.generation_changed() {
            LeaseState::Suspect
        } else {
            LeaseState::Held
        }
    }

    /// The backend replaced its connection or saw its topology change since the last
    /// confirmation.
    pub(crate) fn generation_changed(&self) -> bool {
        self.backend
            .as_ref()
            .is_some_and(|b| b.generation() != self.generation.load(Ordering::Acquire))
    }

    /// A renewal failed or is overdue.
    pub(crate) fn mark_suspect(&self) {
        if !self.suspect.swap(true, Ordering::AcqRel) {
            self.suspect_set.notify_waiters();
        }
    }

    /// A renewal sent under `generation` confirmed the token.
    pub(crate) fn confirm(&self, generation: u64) {
        self.generation.store(generation, Ordering::Release);
        self.suspect.store(false, Ordering::Release);
    }

    /// The watchdog stopped renewing (maximum hold): the end of this lease is a
    /// [`LossCause::MaxHold`].
    pub(crate) fn mark_capped(&self) {
        self.capped.store(true, Ordering::Release);
    }

    /// Completes once the lease is suspect or lost (or the guard has ended) — also when
    /// it turned suspect while this future waited and a renewal confirmed it again
    /// before the future was polled (a busy executor): the episode happened.
    pub(crate) async fn suspect(&self) {
        // The backend's generation when this future began to wait: another one seen
        // later is a change made while it waited, even if confirmed since.
        let mut since = None;
        loop {
            let mut set = pin!(self.suspect_set.notified());
            set.as_mut().enable();
            // Read before the state: a change in between shows in the state.
            let now = self.backend.as_ref().map_or(0, |b| b.generation());
            if self.state() != LeaseState::Held || *since.get_or_insert(now) != now {
                return;
            }
            tokio::select! {
                // `mark_suspect` ran while this future waited.
                _ = set => return,
                _ = self.lost() => return,
                _ = tokio::time::sleep(GENERATION_POLL) => {}
            }
        }
    }

    /// Why the lease was lost; `None` while it is not, or when it ended otherwise.
    pub(crate) fn loss_cause(&self) -> Option<LossCause> {
        LossCause::from_code(self.cause.load(Ordering::Acquire))
    }

    /// The cause of a loss found by a deadline: the maximum hold if the watchdog had
    /// stopped renewing, unreachable if renewals were failing, expired otherwise.
    fn deadline_cause(&self) -> LossCause {
        if self.capped.load(Ordering::Acquire) {
            LossCause::MaxHold
        } else if self.suspect.load(Ordering::Acquire) {
            LossCause::Unreachable
        } else {
            LossCause::Expired
        }
    }

    /// Marks the lease lost because its deadline passed (see [`Self::expired`]).
    pub(crate) fn mark_expired(&self) {
        self.mark_lost(Ending::Lost(self.deadline_cause()));
    }

    /// The deadline on the monotonic clock.
    pub(crate) fn deadline(&self) -> Instant {
        self.base + Duration::from_nanos(self.deadline_ns.load(Ordering::Acquire))
    }

    pub(crate) fn set_deadline(&self, deadline: Instant, wall_deadline: SystemTime) {
        // The wall deadline first: a reader that sees the new monotonic deadline sees
        // the new wall deadline too.
        self.wall_deadline_ns
            .store(wall_ns(wall_deadline), Ordering::Release);
        let ns = deadline.saturating_duration_since(self.base).as_nanos();
        self.deadline_ns
            .store(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Ends the lease; the first ending recorded wins (a loss found by two paths is
    /// counted once).
    pub(crate) fn mark_lost(&self, ending: Ending) {
        if let Ending::Lost(cause) = ending {
            let first = self
                .cause
                .compare_exchange(0, cause.code(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if first {
                self.hold.lost(cause);
            }
        }
        self.hold.end();
        self.lost.cancel();
        self.scope.cancel();
    }

    /// Why the lease can no longer be counted on, if a deadline has passed: on the
    /// monotonic clock, or on the wall clock only (the machine was suspended, or the
    /// wall clock was stepped forward). Does not mark the lease lost.
    pub(crate) fn expired(&self) -> Option<&'static str> {
        if Instant::now() >= self.deadline() {
            return Some("renewals failed until the lease deadline");
        }
        if wall_ns(SystemTime::now()) >= self.wall_deadline_ns.load(Ordering::Acquire) {
            return Some("the wall clock passed the lease deadline (a suspend, or a clock step)");
        }
        None
    }

    /// `false` once the lease is lost, the guard has ended, or its local deadline has
    /// passed — even when the
    /// watchdog could not run to notice (a starved executor, a suspended machine).
    pub(crate) fn is_held(&self) -> bool {
        // The scope ends with the guard too (released or dropped): a `RunContext` that
        // outlives its run must not read `true` while a successor holds the lock.
        if self.lost.is_cancelled() || self.scope.is_cancelled() {
            return false;
        }
        if self.expired().is_some() {
            self.mark_expired();
            return false;
        }
        true
    }

    /// Completes once the lease is lost or the guard has ended.
    pub(crate) async fn lost(&self) {
        loop {
            let deadline = self.deadline();
            tokio::select! {
                _ = self.lost.cancelled() => return,
                _ = self.scope.cancelled() => return,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    // The watchdog may have extended the deadline meanwhile.
                    if !self.is_held() {
                        return;
                    }
                }
            }
        }
    }

    /// A token cancelled once the lease is lost.
    pub(crate) fn lost_token(&self) -> CancellationToken {
        self.lost.clone()
    }

    pub(crate) fn scope(&self) -> &CancellationToken {
        &self.scope
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_until_the_earlier_of_the_two_deadlines() {
        let far = Duration::from_secs(60);
        let state = Lease::new(Instant::now() + far, SystemTime::now() + far);
        assert!(state.is_held());
        // The monotonic deadline is ahead but the wall clock says the lease is over:
        // what a resume from a suspend longer than the lease looks like.
        let state = Lease::new(
            Instant::now() + far,
            SystemTime::now() - Duration::from_millis(1),
        );
        assert!(state.expired().unwrap().contains("wall clock"));
        assert!(!state.is_held());
        assert!(state.lost_token().is_cancelled());
        // The wall clock stepped back: the monotonic deadline still ends the lease.
        let state = Lease::new(Instant::now(), SystemTime::now() + far);
        assert!(!state.is_held());
        // Renewing moves both.
        let state = Lease::new(Instant::now() + far, SystemTime::now() + far);
        state.set_deadline(Instant::now() + far, SystemTime::UNIX_EPOCH);
        assert!(!state.is_held());
    }
}
