//! The task that keeps a held lease alive.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::backend::Backend;
use crate::lease::{valid_until, wall_valid_until, LeaseState};
use crate::names::LockNames;
use crate::scripts;

/// How often, at most, the watchdog compares the clocks with the lease deadline between
/// renewals: after a suspend of the machine (which the monotonic clock, and so every
/// timer, does not count) it notices a lease that ran out within this time of waking.
const CLOCK_CHECK: Duration = Duration::from_secs(1);

/// Everything the watchdog needs; it holds no reference to the guard or the manager,
/// so that it can never keep either alive.
pub(crate) struct Watchdog {
    pub(crate) conn: Arc<Backend>,
    pub(crate) names: Arc<LockNames>,
    /// The lock id and fencing token, for diagnostics.
    pub(crate) id: Arc<str>,
    pub(crate) fence: u64,
    pub(crate) token: Arc<str>,
    pub(crate) lease: Duration,
    pub(crate) state: Arc<LeaseState>,
    /// When the acquire (or last renewal) that set the current deadline was sent.
    pub(crate) last_sent: Instant,
}

impl Watchdog {
    fn lost(&self, reason: &'static str) {
        self.state.mark_lost();
        tracing::warn!(lock = %self.id, fence = self.fence, reason, "lease lost");
    }

    /// Renews every `lease / 3` until the guard ends (its scope is cancelled) or the
    /// lease is lost. A renewal that finds another token ends the lease at once; a
    /// renewal that fails — on I/O, or with an error reply such as `LOADING`, `BUSY`
    /// or `READONLY` — is retried until the local deadline, which then ends it. Between
    /// renewals it checks the deadline on both clocks every [`CLOCK_CHECK`].
    pub(crate) async fn run(self) {
        let scope = self.state.scope().clone();
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let retry_every =
            (self.lease / 10).clamp(Duration::from_millis(5), Duration::from_millis(500));
        let mut next = self.last_sent + self.lease / 3;
        loop {
            loop {
                let wake = next.min(Instant::now() + CLOCK_CHECK);
                tokio::select! {
                    biased;
                    _ = scope.cancelled() => return,
                    _ = tokio::time::sleep_until(wake.into()) => {}
                }
                if let Some(reason) = self.state.expired() {
                    self.lost(reason);
                    return;
                }
                if Instant::now() >= next {
                    break;
                }
            }
            let deadline = self.state.deadline();
            let sent = Instant::now();
            let sent_wall = SystemTime::now();
            let renewal = tokio::time::timeout_at(
                deadline.into(),
                scripts::renew(&self.conn, &self.names, &self.token, lease_ms),
            );
            let outcome = tokio::select! {
                biased;
                _ = scope.cancelled() => return,
                outcome = renewal => outcome,
            };
            match outcome {
                Ok(Ok(true)) => {
                    self.state.set_deadline(
                        valid_until(sent, self.lease),
                        wall_valid_until(sent_wall, self.lease),
                    );
                    next = sent + self.lease / 3;
                    tracing::debug!(lock = %self.id, fence = self.fence, "lease renewed");
                }
                // The key holds another token or is gone: someone else may own it now.
                Ok(Ok(false)) => {
                    self.lost("the key no longer holds our token");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(lock = %self.id, fence = self.fence, error = %e, "lease renewal failed; retrying until the lease deadline");
                    next = (Instant::now() + retry_every).min(deadline);
                }
                // No answer before the local deadline: we can no longer tell.
                Err(_) => {
                    self.lost("no renewal answered before the lease deadline");
                    return;
                }
            }
        }
    }
}
