//! The task that keeps a held lease alive.
//!
//! # Started late
//!
//! A guard's watchdog is not spawned when the lock is acquired but [`START_DELAY`]
//! later (or at its first renewal, `lease / 3`, if that comes first), by the manager's
//! one *starter* task ([`crate::held`]). A guard released before then never spawns a
//! task. Why: spawned at acquisition, the watchdog sat unpolled in the worker's LIFO
//! slot until the release's script send pushed it out, which woke a parked worker (a
//! futex) to run it only to see it cancelled: about 2 `futex` and 0.4 `write` calls
//! per acquire-and-release cycle from a task, where the scripts alone make none
//! (BENCHMARKS.md, the watchdog experiment).
//!
//! Nothing the watchdog guarantees depends on it running before its first renewal:
//!
//! - the first renewal is due at `lease / 3` after the acquire was sent, which is never
//!   before the start;
//! - [`LockGuard::is_held`](crate::LockGuard::is_held), `state` and `lost` read the
//!   lease's deadlines on both clocks themselves; what the watchdog adds between
//!   renewals is a check every [`CLOCK_CHECK`] that *marks* a lease lost whose
//!   deadline passed unnoticed (a suspend): the starter's sleep ([`START_DELAY`], equal
//!   to it) stands in for the first one, and a watchdog checks the clocks first thing
//!   when it starts;
//! - the maximum hold only changes what happens at a renewal;
//! - shutdown drains the registry that holds the watchdogs not started yet, and stops
//!   the starter; a guard's drop or release takes its entry (and its watchdog) out;
//! - the hold's metrics and span begin with the guard, not with the watchdog; the
//!   watchdog runs in the span when it starts.

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

/// How long after the acquisition (at most: the first renewal may come earlier) a
/// guard's watchdog starts. Equal to [`CLOCK_CHECK`], so that a lease's clocks are
/// checked as often before the watchdog starts (by its start) as after; a longer delay
/// would spare the task for longer holds too, but leave a lease that ran out during a
/// suspend unmarked for longer.
pub(crate) const START_DELAY: Duration = CLOCK_CHECK;

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
    /// renewals it checks the deadline on both clocks every [`CLOCK_CHECK`], and once
    /// when it starts.
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
                // First, also when the watchdog starts (late: see the module docs).
                if scope.is_cancelled() {
                    return;
                }
                if let Some(reason) = self.state.expired() {
                    self.state.mark_expired();
                    let cause = self.state.loss_cause().unwrap_or(LossCause::Expired);
                    tracing::warn!(lock = %self.id, fence = self.fence, cause = cause.as_str(), reason, "lease lost");
                    return;
                }
                if !capped && self.max_hold_at.is_some_and(|at| next >= at) {
                    capped = true;
                    self.state.mark_capped();
                    tracing::info!(lock = %self.id, fence = self.fence, "maximum hold reached: no more renewals, the lease runs out");
                }
                if capped {
                    next = self.state.deadline();
                } else if Instant::now() >= next {
                    break;
                }
                let wake = next.min(Instant::now() + CLOCK_CHECK);
                tokio::select! {
                    biased;
                    _ = scope.cancelled() => return,
                    _ = tokio::time::sleep_until(wake.into()) => {}
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
