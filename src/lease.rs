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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

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
pub(crate) struct LeaseState {
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
}

impl LeaseState {
    pub(crate) fn new(deadline: Instant, wall_deadline: SystemTime) -> Self {
        let base = Instant::now();
        let state = Self {
            base,
            deadline_ns: AtomicU64::new(0),
            wall_deadline_ns: AtomicU64::new(0),
            lost: CancellationToken::new(),
            scope: CancellationToken::new(),
        };
        state.set_deadline(deadline, wall_deadline);
        state
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

    pub(crate) fn mark_lost(&self) {
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
            self.mark_lost();
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
        let state = LeaseState::new(Instant::now() + far, SystemTime::now() + far);
        assert!(state.is_held());
        // The monotonic deadline is ahead but the wall clock says the lease is over:
        // what a resume from a suspend longer than the lease looks like.
        let state = LeaseState::new(
            Instant::now() + far,
            SystemTime::now() - Duration::from_millis(1),
        );
        assert!(state.expired().unwrap().contains("wall clock"));
        assert!(!state.is_held());
        assert!(state.lost_token().is_cancelled());
        // The wall clock stepped back: the monotonic deadline still ends the lease.
        let state = LeaseState::new(Instant::now(), SystemTime::now() + far);
        assert!(!state.is_held());
        // Renewing moves both.
        let state = LeaseState::new(Instant::now() + far, SystemTime::now() + far);
        state.set_deadline(Instant::now() + far, SystemTime::UNIX_EPOCH);
        assert!(!state.is_held());
    }
}
