//! [`ManagerBuilder`]: the options of a manager, set before it connects.

use std::time::Duration;

use redis::IntoConnectionInfo;

use crate::errors::RdLockError;
use crate::lease::drift;
use crate::manager::RdLockConnectionManager;
use crate::MAX_LEASE;

/// The response timeout when none is set: 2 s.
///
/// ```
/// assert_eq!(rdlock::DEFAULT_RESPONSE_TIMEOUT, std::time::Duration::from_secs(2));
/// ```
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest response timeout accepted: 1 ms (no round trip to a server fits in less).
///
/// ```
/// assert_eq!(rdlock::MIN_RESPONSE_TIMEOUT, std::time::Duration::from_millis(1));
/// ```
pub const MIN_RESPONSE_TIMEOUT: Duration = Duration::from_millis(1);
/// Connecting may take at least this long per attempt, and as long as the response
/// timeout when that is longer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Options of a [`RdLockConnectionManager`], applied when it connects.
///
/// Made by [`RdLockConnectionManager::builder`]; each option consumes and returns the
/// builder, and [`connect`](Self::connect) validates them all before it opens a
/// connection. [`RdLockConnectionManager::new`] is `builder().connect(params)`.
///
/// The builder is the place for every option: the backends to come (Redis Cluster,
/// Sentinel, Redlock) will be further terminal methods next to `connect`, taking the
/// same builder, and options that only some backends have will be refused, with
/// [`RdLockError::InvalidConfig`], by the ones that lack them.
///
/// # Default
///
/// - [`response_timeout`](Self::response_timeout): [`DEFAULT_RESPONSE_TIMEOUT`] (2 s).
/// - [`node_timeout`](Self::node_timeout) (Redlock only): 5 % of the lease, within 50 ms
///   and the response timeout; 500 ms for releases and reads.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> Result<(), rdlock::RdLockError> {
/// use std::time::Duration;
/// use rdlock::RdLockConnectionManager;
///
/// // A Redis in another region: round trips of up to 3 s must not count as failures.
/// let manager = RdLockConnectionManager::builder()
///     .response_timeout(Duration::from_secs(5))
///     .connect("redis://redis.eu-west.example:6379")
///     .await?;
/// // Leases must leave a renewal one response timeout (here ≥ about 7.7 s).
/// let lock = manager.new_lock("report").with_lease(Duration::from_secs(30));
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until `connect` is called"]
#[derive(Clone, Debug, Default)]
pub struct ManagerBuilder {
    response_timeout: Option<Duration>,
    node_timeout: Option<Duration>,
}

impl ManagerBuilder {
    /// A builder with every option at its default; the same as
    /// [`RdLockConnectionManager::builder`].
    ///
    /// # Example
    ///
    /// ```
    /// let builder = rdlock::ManagerBuilder::new();
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// How long one command (an acquire, a renewal, a release, a subscription) may
    /// wait for its reply before it counts as failed and its connection is replaced.
    /// Default: [`DEFAULT_RESPONSE_TIMEOUT`] (2 s). Raise it when round trips to the
    /// server can legitimately take longer (a Redis in another region, a saturated
    /// link): with the default, a sustained round trip above 2 s fails every renewal
    /// and every guard is reported lost although the server answers.
    ///
    /// **Relation to the lease.** The watchdog renews a lease every `lease / 3`; the
    /// renewal must be answered before the lease's local deadline (`lease` − 1 % −
    /// 2 ms). A timeout set here says that a reply may take that long, so a lock whose
    /// lease cannot fit one — `response_timeout > lease − lease/3 − (1 % of the lease +
    /// 2 ms)`, i.e. a lease shorter than about 1.53 × the timeout — is refused with
    /// [`RdLockError::InvalidLease`] by its acquire methods. With the default (not set
    /// here) every lease from [`MIN_LEASE`](crate::MIN_LEASE) up is accepted, as
    /// before: the renewal of a short lease is bounded by the lease's own deadline.
    /// [`BasicLock`](crate::lock::BasicLock) has no watchdog and is not checked.
    ///
    /// The shared subscriber uses the same timeout for its commands, and connecting
    /// may take as long as this timeout (at least 2 s) per attempt.
    ///
    /// Out of range (checked by [`connect`](Self::connect)): below
    /// [`MIN_RESPONSE_TIMEOUT`] (1 ms), or longer than even a
    /// [`MAX_LEASE`](crate::MAX_LEASE) could fit.
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = rdlock::RdLockConnectionManager::builder()
    ///     .response_timeout(Duration::from_secs(5));
    /// ```
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = Some(timeout);
        self
    }

    /// Redlock only ([`redlock`](Self::redlock)): how long each node may take to
    /// answer one request of a quorum operation (an acquire, a renewal, a release)
    /// before it counts as failed for that operation. A node that does not answer in
    /// time slows an operation by at most this much, and an operation returns as soon
    /// as a quorum has decided it, so a slow or paused node costs nothing once the
    /// others have answered.
    ///
    /// Default: 5 % of the lock's lease (as redsync), at least 50 ms and at most the
    /// [`response_timeout`](Self::response_timeout), for acquisitions and renewals;
    /// 500 ms (at most the response timeout) for releases and reads. Keep it well
    /// below the lease: the time an acquisition takes is subtracted from its validity.
    ///
    /// Refused (with [`RdLockError::InvalidConfig`]) below 1 ms, above the response
    /// timeout, and by the backends that are not Redlock.
    ///
    /// # Example
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = rdlock::RdLockConnectionManager::builder()
    ///     .node_timeout(Duration::from_millis(50));
    /// ```
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = Some(timeout);
        self
    }

    /// Validates the options, connects to one Redis server and starts the shared
    /// subscriber.
    ///
    /// `params` is anything redis-rs accepts: a URL such as `redis://127.0.0.1:6379/0`,
    /// `redis://user:password@host/2`, `redis+unix:///run/redis.sock`, or a
    /// [`redis::ConnectionInfo`].
    ///
    /// # Errors
    ///
    /// - [`RdLockError::InvalidConfig`] when an option is out of range (nothing is
    ///   opened);
    /// - otherwise those of [`RdLockConnectionManager::new`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes whatever it opened.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), rdlock::RdLockError> {
    /// # use std::time::Duration;
    /// let manager = rdlock::RdLockConnectionManager::builder()
    ///     .response_timeout(Duration::from_secs(5))
    ///     .connect("redis://127.0.0.1/")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect<T: IntoConnectionInfo>(
        self,
        params: T,
    ) -> Result<RdLockConnectionManager, RdLockError> {
        let timeouts = self.timeouts()?;
        self.refuse_node_timeout()?;
        RdLockConnectionManager::connect_single(params, timeouts).await
    }

    /// Validates the options, connects to a Redis Cluster through any of `nodes` (one
    /// reachable node is enough: the others are learnt from it) and starts the shared
    /// subscriber. See [`RdLockConnectionManager::cluster`].
    ///
    /// # Errors
    ///
    /// - [`RdLockError::InvalidConfig`] when an option is out of range, when `nodes` is
    ///   empty, or when the server is not a cluster (`option` is then `"nodes"`);
    /// - otherwise those of [`RdLockConnectionManager::cluster`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes whatever it opened.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), rdlock::RdLockError> {
    /// # use std::time::Duration;
    /// let manager = rdlock::RdLockConnectionManager::builder()
    ///     .response_timeout(Duration::from_secs(1))
    ///     .cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cluster<T: IntoConnectionInfo>(
        self,
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<RdLockConnectionManager, RdLockError> {
        let timeouts = self.timeouts()?;
        self.refuse_node_timeout()?;
        RdLockConnectionManager::connect_cluster(nodes, timeouts).await
    }

    /// Validates the options, connects to `nodes`, independent Redis masters (not
    /// replicas of one another, not a cluster), and starts one subscriber per node.
    /// See [`RdLockConnectionManager::redlock`].
    ///
    /// # Errors
    ///
    /// - [`RdLockError::InvalidConfig`] when an option is out of range, or `nodes` is
    ///   empty, has more than 64 nodes, or names a node twice — the same address, or
    ///   the same server process under another name or database, as its `run_id` shows
    ///   when it answers at start (`option` is then `"nodes"`);
    /// - otherwise those of [`RdLockConnectionManager::redlock`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes whatever it opened.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), rdlock::RdLockError> {
    /// # use std::time::Duration;
    /// let manager = rdlock::RdLockConnectionManager::builder()
    ///     .node_timeout(Duration::from_millis(100))
    ///     .redlock(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"])
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn redlock<T: IntoConnectionInfo>(
        self,
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<RdLockConnectionManager, RdLockError> {
        let timeouts = self.timeouts()?;
        if let Some(node) = self.node_timeout {
            if node < MIN_RESPONSE_TIMEOUT {
                return Err(RdLockError::InvalidConfig {
                    option: "node_timeout",
                    reason: "shorter than 1 ms: no round trip fits",
                });
            }
            if node > timeouts.response {
                return Err(RdLockError::InvalidConfig {
                    option: "node_timeout",
                    reason: "longer than the response timeout",
                });
            }
        }
        RdLockConnectionManager::connect_redlock(nodes, self.node_timeout, timeouts).await
    }

    /// The per-node timeout is a Redlock option.
    fn refuse_node_timeout(&self) -> Result<(), RdLockError> {
        if self.node_timeout.is_some() {
            return Err(RdLockError::InvalidConfig {
                option: "node_timeout",
                reason: "only Redlock (`redlock`) has per-node timeouts",
            });
        }
        Ok(())
    }

    /// Checks the options and resolves their defaults.
    pub(crate) fn timeouts(&self) -> Result<Timeouts, RdLockError> {
        let response = self.response_timeout.unwrap_or(DEFAULT_RESPONSE_TIMEOUT);
        if response < MIN_RESPONSE_TIMEOUT {
            return Err(RdLockError::InvalidConfig {
                option: "response_timeout",
                reason: "shorter than 1 ms: no round trip fits",
            });
        }
        if renewal_window(MAX_LEASE) < response {
            return Err(RdLockError::InvalidConfig {
                option: "response_timeout",
                reason: "longer than even the longest lease (MAX_LEASE) leaves a renewal",
            });
        }
        Ok(Timeouts {
            connect: response.max(CONNECT_TIMEOUT),
            response,
            explicit: self.response_timeout.is_some(),
        })
    }
}

/// The resolved timeouts of a manager.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// Per connection attempt (command and subscriber connections).
    pub(crate) connect: Duration,
    /// Per command, and per subscriber operation.
    pub(crate) response: Duration,
    /// Set by the user: leases are checked against it.
    pub(crate) explicit: bool,
}

impl Timeouts {
    /// `Err(InvalidLease)` when `lease` cannot fit a renewal that takes one response
    /// timeout (only for a timeout the user set; see
    /// [`ManagerBuilder::response_timeout`]).
    pub(crate) fn check_lease(&self, lease: Duration) -> Result<(), RdLockError> {
        if self.explicit && renewal_window(lease) < self.response {
            return Err(RdLockError::InvalidLease {
                lease,
                reason: "too short for the manager's response timeout: a renewal sent at \
                         lease/3 must be able to wait one response timeout before the \
                         lease's deadline (lease >= about 1.53 x response timeout)",
            });
        }
        Ok(())
    }
}

/// From the first renewal (at `lease / 3`) to the lease's local deadline.
fn renewal_window(lease: Duration) -> Duration {
    lease.saturating_sub(lease / 3).saturating_sub(drift(lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(timeout: Duration) -> Result<Timeouts, RdLockError> {
        ManagerBuilder::new().response_timeout(timeout).timeouts()
    }

    #[test]
    fn defaults_accept_every_lease() {
        let timeouts = ManagerBuilder::new().timeouts().unwrap();
        assert_eq!(timeouts.response, DEFAULT_RESPONSE_TIMEOUT);
        assert_eq!(timeouts.connect, CONNECT_TIMEOUT);
        assert!(timeouts.check_lease(crate::MIN_LEASE).is_ok());
    }

    #[test]
    fn out_of_range_timeouts_are_refused() {
        for bad in [
            Duration::ZERO,
            Duration::from_micros(999),
            Duration::MAX,
            MAX_LEASE,
        ] {
            assert!(
                matches!(
                    set(bad),
                    Err(RdLockError::InvalidConfig {
                        option: "response_timeout",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        assert!(set(MIN_RESPONSE_TIMEOUT).is_ok());
        assert!(set(renewal_window(MAX_LEASE)).is_ok());
    }

    #[test]
    fn a_set_timeout_refuses_leases_that_cannot_fit_a_renewal() {
        let timeouts = set(Duration::from_secs(5)).unwrap();
        assert_eq!(timeouts.connect, Duration::from_secs(5));
        // 7.7 s: window = 7.7 − 2.567 − 0.079 = 5.054 s ≥ 5 s.
        assert!(timeouts.check_lease(Duration::from_millis(7_700)).is_ok());
        let refused = timeouts.check_lease(Duration::from_millis(7_600));
        assert!(
            matches!(refused, Err(RdLockError::InvalidLease { lease, .. }) if lease == Duration::from_millis(7_600)),
            "{refused:?}"
        );
        // Explicitly the default value: checked too (a statement about round trips).
        assert!(set(DEFAULT_RESPONSE_TIMEOUT)
            .unwrap()
            .check_lease(Duration::from_secs(1))
            .is_err());
    }
}
