//! Lock metrics, through the `metrics` crate's facade (feature `metrics`): whatever
//! recorder the application installed (Prometheus, OpenTelemetry, StatsD...) gets
//! them; with none installed, each costs a check of a global. Without the feature,
//! every function here is empty and the crate does not depend on `metrics`.
//!
//! The names and labels are a contract (dashboards rely on them): they are listed in
//! the crate docs and the README ("Metrics"). Lock ids are unbounded, so they are never
//! a label; a [`Lock`](crate::Lock) may carry a low-cardinality name
//! ([`Lock::with_metrics_name`](crate::Lock::with_metrics_name)), which becomes the
//! label `lock` of every metric it records.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::errors::RdLockError;
use crate::lease::LossCause;

/// The metrics name of a lock (label `lock`), if it has one.
#[derive(Clone, Debug, Default)]
pub(crate) struct MetricsName(Option<Arc<str>>);

impl MetricsName {
    pub(crate) fn new(name: &str) -> Self {
        Self(Some(Arc::from(name)))
    }

    pub(crate) fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }

    #[cfg(feature = "metrics")]
    fn labels(&self, extra: Option<(&'static str, &'static str)>) -> Vec<::metrics::Label> {
        let mut labels = Vec::with_capacity(2);
        if let Some(name) = &self.0 {
            labels.push(::metrics::Label::new("lock", name.to_string()));
        }
        if let Some((key, value)) = extra {
            labels.push(::metrics::Label::new(key, value));
        }
        labels
    }
}

/// One acquisition call, from its start to its outcome: `rdlock_acquire_wait_seconds`
/// (label `outcome`) and, for the calls that wait, `rdlock_waiting_tasks`. Dropped
/// without [`finish`](Self::finish), the call was cancelled.
pub(crate) struct Wait<'a> {
    name: &'a MetricsName,
    started: Instant,
    waiting: bool,
    done: bool,
}

impl<'a> Wait<'a> {
    /// `waiting`: the call may wait for the lock (`lock`, `lock_timeout`), rather than
    /// make one attempt (`try_lock`).
    pub(crate) fn start(name: &'a MetricsName, waiting: bool) -> Self {
        #[cfg(feature = "metrics")]
        if waiting {
            ::metrics::gauge!("rdlock_waiting_tasks", name.labels(None)).increment(1.0);
        }
        Self {
            name,
            started: Instant::now(),
            waiting,
            done: false,
        }
    }

    pub(crate) fn finish<T>(mut self, result: &Result<T, RdLockError>) {
        let outcome = match result {
            Ok(_) => "acquired",
            Err(RdLockError::TimeoutReached) => "timeout",
            Err(RdLockError::LockUnavailable) => "unavailable",
            Err(_) => "error",
        };
        self.record(outcome);
    }

    fn record(&mut self, outcome: &'static str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        #[cfg(feature = "metrics")]
        {
            ::metrics::histogram!(
                "rdlock_acquire_wait_seconds",
                self.name.labels(Some(("outcome", outcome)))
            )
            .record(self.started.elapsed().as_secs_f64());
            if self.waiting {
                ::metrics::gauge!("rdlock_waiting_tasks", self.name.labels(None)).decrement(1.0);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (outcome, self.name, self.started, self.waiting);
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        self.record("cancelled");
    }
}

/// One hold, from the acquisition to the release or the loss: `rdlock_held_guards`
/// and `rdlock_hold_seconds`, recorded once.
#[derive(Debug)]
pub(crate) struct Hold {
    name: MetricsName,
    started: Instant,
    ended: AtomicBool,
}

impl Hold {
    pub(crate) fn start(name: MetricsName) -> Self {
        #[cfg(feature = "metrics")]
        ::metrics::gauge!("rdlock_held_guards", name.labels(None)).increment(1.0);
        Self {
            name,
            started: Instant::now(),
            ended: AtomicBool::new(false),
        }
    }

    /// A hold that records nothing (leases outside a guard).
    pub(crate) fn none() -> Self {
        Self {
            name: MetricsName::default(),
            started: Instant::now(),
            ended: AtomicBool::new(true),
        }
    }

    /// Ends the hold; later calls do nothing.
    pub(crate) fn end(&self) {
        let first = !self.ended.swap(true, Ordering::AcqRel);
        #[cfg(feature = "metrics")]
        if first {
            ::metrics::histogram!("rdlock_hold_seconds", self.name.labels(None))
                .record(self.started.elapsed().as_secs_f64());
            ::metrics::gauge!("rdlock_held_guards", self.name.labels(None)).decrement(1.0);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (first, &self.name, self.started);
    }

    /// `rdlock_leases_lost_total{cause}`.
    pub(crate) fn lost(&self, cause: LossCause) {
        #[cfg(feature = "metrics")]
        ::metrics::counter!(
            "rdlock_leases_lost_total",
            self.name.labels(Some(("cause", cause.as_str())))
        )
        .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = cause;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        // A lease that became no guard (shutdown began meanwhile) still ends its hold.
        self.end();
    }
}

/// One renewal attempt: `rdlock_renewal_seconds`, and `rdlock_renewals_total` when it
/// confirmed the token, `rdlock_renewal_failures_total` otherwise.
pub(crate) fn renewal(name: &MetricsName, took: Duration, renewed: bool) {
    #[cfg(feature = "metrics")]
    {
        ::metrics::histogram!("rdlock_renewal_seconds", name.labels(None))
            .record(took.as_secs_f64());
        if renewed {
            ::metrics::counter!("rdlock_renewals_total", name.labels(None)).increment(1);
        } else {
            ::metrics::counter!("rdlock_renewal_failures_total", name.labels(None)).increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (name, took, renewed);
}

/// A guard's background release on its way: counted in
/// `rdlock_release_fallbacks_total` if it is dropped before it ran to its end — the
/// runtime shut down (a task still holding a guard at the end of `#[tokio::main]`):
/// the runtime's handle is still found then, but a task spawned on it is dropped
/// without being polled, so the lease is left to expire as without a runtime.
pub(crate) struct ReleaseOnItsWay(Option<MetricsName>);

impl ReleaseOnItsWay {
    pub(crate) fn new(name: MetricsName) -> Self {
        Self(Some(name))
    }

    /// The release ran (whatever Redis answered).
    pub(crate) fn ran(mut self) {
        self.0 = None;
    }
}

impl Drop for ReleaseOnItsWay {
    fn drop(&mut self) {
        if let Some(name) = self.0.take() {
            release_fallback(&name);
        }
    }
}

/// `rdlock_release_fallbacks_total`: a guard dropped where its release could not run.
pub(crate) fn release_fallback(name: &MetricsName) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("rdlock_release_fallbacks_total", name.labels(None)).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = name;
}
