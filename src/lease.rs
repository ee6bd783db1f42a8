//! The local view of a lease: its deadline on the monotonic clock and the loss signal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// Shared by a guard and its watchdog.
#[derive(Debug)]
pub(crate) struct LeaseState {
    base: Instant,
    /// Local deadline, in nanoseconds after `base`.
    deadline_ns: AtomicU64,
    /// Cancelled once the lease is known lost; never un-cancelled.
    lost: CancellationToken,
    /// Cancelled when the lease is lost or the guard ends: stops the watchdog and
    /// everything the user tied to [`LockGuard::cancellation_token`](crate::LockGuard::cancellation_token).
    scope: CancellationToken,
}

impl LeaseState {
    pub(crate) fn new(deadline: Instant) -> Self {
        let base = Instant::now();
        let state = Self {
            base,
            deadline_ns: AtomicU64::new(0),
            lost: CancellationToken::new(),
            scope: CancellationToken::new(),
        };
        state.set_deadline(deadline);
        state
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.base + Duration::from_nanos(self.deadline_ns.load(Ordering::Acquire))
    }

    pub(crate) fn set_deadline(&self, deadline: Instant) {
        let ns = deadline.saturating_duration_since(self.base).as_nanos();
        self.deadline_ns
            .store(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Release);
    }

    pub(crate) fn mark_lost(&self) {
        self.lost.cancel();
        self.scope.cancel();
    }

    /// `false` once the lease is lost or its local deadline has passed — even when the
    /// watchdog could not run to notice (a starved executor).
    pub(crate) fn is_held(&self) -> bool {
        if self.lost.is_cancelled() {
            return false;
        }
        if Instant::now() >= self.deadline() {
            self.mark_lost();
            return false;
        }
        true
    }

    /// Completes once the lease is lost.
    pub(crate) async fn lost(&self) {
        loop {
            let deadline = self.deadline();
            tokio::select! {
                _ = self.lost.cancelled() => return,
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
