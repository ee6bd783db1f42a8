//! The task that keeps a held lease alive.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::backend::Backend;
use crate::lease::{valid_until, wall_valid_until, Ending, Lease, LossCause};
use crate::meters::{self, MetricsName};
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
    pub(crate) state: Arc<Lease>,
    /// When the acquire (or last renewal) that set the current deadline was sent.
    pub(crate) last_sent: Instant,
    /// No renewal is sent from this instant on ([`Lock::with_max_hold`](crate::Lock::with_max_hold)).
    pub(crate) max_hold_at: Option<Instant>,
    /// The label `lock` of its metrics.
    pub(crate) metrics: MetricsName,
}

impl Watchdog {
    fn lost(&self, cause: LossCause, reason: &'static str) {
        self.state.mark_lost(Ending::Lost(cause));
        tracing::warn!(lock = %self.id, fence = self.fence, cause = cause.as_str(), reason, "lease lost");
    }

    /// Renews every `lease / 3` until the guard ends (its scope is cancelled) or the
    /// lease is lost. A renewal that finds another token ends the lease at once; a
    /// renewal that fails — on I/O, or with an error reply such as `LOADING`, `BUSY`
    /// or `READONLY` — makes the lease suspect and is retried until the local
    /// deadline, which then ends it; so does a renewal still unanswered when the next
    /// one is due. A renewal that confirms the token makes it held again. Between
    /// renewals it checks the deadline on both clocks every [`CLOCK_CHECK`].
    ///
    /// From the maximum hold on (`max_hold_at`), it sends no renewal: the lease runs
    /// out at its deadline, and is lost with [`LossCause::MaxHold`].
    pub(crate) async fn run(self) {
        let scope = self.state.scope().clone();
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let retry_every =
            (self.lease / 10).clamp(Duration::from_millis(5), Duration::from_millis(500));
        let mut next = self.last_sent + self.lease / 3;
        let mut capped = false;
        loop {
            loop {
                if !capped && self.max_hold_at.is_some_and(|at| next >= at) {
                    capped = true;
                    self.state.mark_capped();
                    tracing::info!(lock = %self.id, fence = self.fence, "maximum hold reached: no more renewals, the lease runs out");
                }
                if capped {
                    next = self.state.deadline();
                }
                let wake = next.min(Instant::now() + CLOCK_CHECK);
                tokio::select! {
                    biased;
                    _ = scope.cancelled() => return,
                    _ = tokio::time::sleep_until(wake.into()) => {}
                }
                if let Some(reason) = self.state.expired() {
                    self.state.mark_expired();
                    let cause = self.state.loss_cause().unwrap_or(LossCause::Expired);
                    tracing::warn!(lock = %self.id, fence = self.fence, cause = cause.as_str(), reason, "lease lost");
                    return;
                }
                if !capped && Instant::now() >= next {
                    break;
                }
            }
            let deadline = self.state.deadline();
            // Read before sending: a replacement while the renewal is in flight leaves
            // the lease suspect until the next renewal.
            let generation = self.conn.generation();
            let sent = Instant::now();
            let sent_wall = SystemTime::now();
            let mut renewal = pin!(tokio::time::timeout_at(
                deadline.into(),
                scripts::renew(&self.conn, &self.names, &self.token, lease_ms),
            ));
            // A renewal still unanswered when the next one would be due is overdue.
            let mut overdue = pin!(tokio::time::sleep_until((sent + self.lease / 3).into()));
            let mut was_overdue = false;
            let outcome = loop {
                tokio::select! {
                    biased;
                    _ = scope.cancelled() => return,
                    outcome = &mut renewal => break outcome,
                    _ = &mut overdue, if !was_overdue => {
                        was_overdue = true;
                        self.state.mark_suspect();
                        tracing::info!(lock = %self.id, fence = self.fence, "lease suspect: a renewal is overdue");
                    }
                }
            };
            meters::renewal(
                &self.metrics,
                sent.elapsed(),
                matches!(outcome, Ok(Ok(true))),
            );
            match outcome {
                Ok(Ok(true)) => {
                    self.state.set_deadline(
                        valid_until(sent, self.lease),
                        wall_valid_until(sent_wall, self.lease),
                    );
                    self.state.confirm(generation);
                    next = sent + self.lease / 3;
                    tracing::debug!(lock = %self.id, fence = self.fence, "lease renewed");
                }
                // The key holds another token or is gone: someone else may own it now.
                Ok(Ok(false)) => {
                    self.lost(LossCause::TakenOver, "the key no longer holds our token");
                    return;
                }
                Ok(Err(e)) => {
                    self.state.mark_suspect();
                    tracing::warn!(lock = %self.id, fence = self.fence, error = %e, "lease renewal failed (lease suspect); retrying until the lease deadline");
                    next = (Instant::now() + retry_every).min(deadline);
                }
                // No answer before the local deadline: we can no longer tell.
                Err(_) => {
                    self.state.mark_suspect();
                    self.lost(
                        LossCause::Unreachable,
                        "no renewal answered before the lease deadline",
                    );
                    return;
                }
            }
        }
    }
}
