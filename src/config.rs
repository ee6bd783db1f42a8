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
/// The builder is the place for every option: each backend is a terminal method
/// ([`connect`](Self::connect) for one server, [`cluster`](Self::cluster),
/// [`sentinel`](Self::sentinel)) taking the same builder, and options that only some
/// backends have are refused, with [`RdLockError::InvalidConfig`], by the ones that
/// lack them.
///
/// # Default
///
/// - [`response_timeout`](Self::response_timeout): [`DEFAULT_RESPONSE_TIMEOUT`] (2 s).
/// - [`replica_sync`](Self::replica_sync): off.
/// - [`sentinel_master_params`](Self::sentinel_master_params): `redis://` (no
///   credentials, database 0, plain TCP).
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
    /// For [`sentinel`](Self::sentinel): how to connect to the data nodes.
    sentinel_master_params: Option<Result<redis::ConnectionInfo, redis::RedisError>>,
    replica_sync: Option<ReplicaSync>,
    node_timeout: Option<Duration>,
}

/// The longest replica-sync wait accepted ([`ManagerBuilder::replica_sync`]).
const MAX_REPLICA_SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Replica sync ([`ManagerBuilder::replica_sync`]): how many replicas must have every
/// acquisition, and how long to wait for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReplicaSync {
    pub(crate) replicas: u32,
    pub(crate) timeout: Duration,
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
        self.sentinel_only()?;
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
        self.sentinel_only()?;
        self.refuse_node_timeout()?;
        if timeouts.replica_sync.is_some() {
            return Err(RdLockError::InvalidConfig {
                option: "replica_sync",
                reason:
                    "not available on a Redis Cluster (WAIT would have to go to each lock's master)",
            });
        }
        RdLockConnectionManager::connect_cluster(nodes, timeouts).await
    }

    /// For [`sentinel`](Self::sentinel): how to connect to the master (and replicas)
    /// the sentinels name, when that differs from connecting to the sentinels.
    ///
    /// The credentials, database, TLS settings (a `rediss://` URL) and TCP settings of
    /// `params` are used for every data node; its host and port are ignored (each
    /// connection goes to the address the sentinels name). The sentinel URLs given to
    /// [`sentinel`](Self::sentinel) keep their own credentials and TLS, so sentinels and
    /// data nodes can have different passwords, users or TLS set-ups.
    ///
    /// Default: `redis://` — plain TCP, no credentials, database 0 (as redis-rs's
    /// Sentinel client). Unparsable `params` are reported by
    /// [`sentinel`](Self::sentinel) as [`RdLockError::InvalidUrl`]; the other backends
    /// refuse the option with [`RdLockError::InvalidConfig`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), rdlock::RdLockError> {
    /// // Sentinels without a password, data nodes with ACL user `locks` and database 2.
    /// let manager = rdlock::RdLockConnectionManager::builder()
    ///     .sentinel_master_params("redis://locks:secret@ignored/2")
    ///     .sentinel(["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"], "mymaster")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn sentinel_master_params<T: IntoConnectionInfo>(mut self, params: T) -> Self {
        self.sentinel_master_params = Some(params.into_connection_info());
        self
    }

    /// Replica sync (off by default): after each acquisition, wait until at least
    /// `replicas` replicas have it (`WAIT replicas timeout`), for at most `timeout`.
    ///
    /// Replication is asynchronous: a lock acknowledged by a master that crashes right
    /// after can be missing on the replica promoted in its place, and a second client
    /// then gets it (and the same fencing token). With replica sync, an acquisition
    /// that fewer than `replicas` replicas acknowledged in time is released again (by
    /// its token) and reported as [`RdLockError::NotReplicated`] (acked / wanted):
    /// [`Lock::try_lock`](crate::Lock::try_lock) returns it, while
    /// [`Lock::lock`](crate::Lock::lock) and
    /// [`Lock::lock_timeout`](crate::Lock::lock_timeout) retry with backoff until
    /// their deadline, as through an unreachable server.
    ///
    /// It **narrows, not closes**, the failover window: `WAIT` says the replicas
    /// received the write, not that they will be the one promoted, nor that they
    /// persisted it; renewals are not synced (a renewal lost in a failover shortens
    /// the lease on the new master to what the last synced write left, which the
    /// watchdog's next renewal restores). `WAITAOF` is not used: whether replicas run
    /// an append-only file cannot be seen from the master.
    ///
    /// Cost: one more round trip per acquisition, plus the replicas' acknowledgement
    /// (see the README's "Sentinel and replicas" for the measured figure). `WAIT`
    /// blocks the connection it is sent on, so synced acquisitions go over connections
    /// of their own (a small pool), never over the shared command connection.
    ///
    /// For one server with replicas ([`connect`](Self::connect)) and Sentinel
    /// ([`sentinel`](Self::sentinel)); a Redis Cluster and Redlock refuse it
    /// ([`RdLockError::InvalidConfig`]). Out of range (checked when connecting):
    /// `replicas` 0, `timeout` 0 (which `WAIT` reads as "for ever") or above 60 s.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), rdlock::RdLockError> {
    /// # use std::time::Duration;
    /// let manager = rdlock::RdLockConnectionManager::builder()
    ///     .replica_sync(1, Duration::from_millis(500))
    ///     .sentinel(["redis://10.0.0.1:26379"], "mymaster")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn replica_sync(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replica_sync = Some(ReplicaSync { replicas, timeout });
        self
    }

    /// Validates the options, resolves the master of `service` through `sentinels`,
    /// connects to it and starts the shared subscriber. See
    /// [`RdLockConnectionManager::sentinel`].
    ///
    /// # Errors
    ///
    /// - [`RdLockError::InvalidConfig`] when an option is out of range, when
    ///   `sentinels` is empty (`option` `"sentinels"`), or when the service name is
    ///   empty or no sentinel that answered monitors it (`option` `"service"`);
    /// - otherwise those of [`RdLockConnectionManager::sentinel`].
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
    ///     .sentinel(["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"], "mymaster")
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn sentinel<T: IntoConnectionInfo>(
        self,
        sentinels: impl IntoIterator<Item = T>,
        service: &str,
    ) -> Result<RdLockConnectionManager, RdLockError> {
        let timeouts = self.timeouts()?;
        self.refuse_node_timeout()?;
        let node = match self.sentinel_master_params {
            Some(params) => params.map_err(RdLockError::InvalidUrl)?,
            None => "redis://127.0.0.1/"
                .into_connection_info()
                .map_err(RdLockError::InvalidUrl)?,
        };
        RdLockConnectionManager::connect_sentinel(sentinels, service, node, timeouts).await
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
        self.sentinel_only()?;
        if timeouts.replica_sync.is_some() {
            return Err(RdLockError::InvalidConfig {
                option: "replica_sync",
                reason:
                    "not available on Redlock (each node is a master without replicas to wait for)",
            });
        }
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

    /// Refuses the options only a Sentinel manager has (`option` names the first).
    fn sentinel_only(&self) -> Result<(), RdLockError> {
        if self.sentinel_master_params.is_some() {
            return Err(RdLockError::InvalidConfig {
                option: "sentinel_master_params",
                reason: "only a Sentinel manager (`sentinel`) connects to data nodes it is told of",
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
        if let Some(sync) = self.replica_sync {
            if sync.replicas == 0 {
                return Err(RdLockError::InvalidConfig {
                    option: "replica_sync",
                    reason: "0 replicas: leave replica sync off instead",
                });
            }
            if sync.timeout < Duration::from_millis(1) || sync.timeout > MAX_REPLICA_SYNC_TIMEOUT {
                return Err(RdLockError::InvalidConfig {
                    option: "replica_sync",
                    reason: "timeout out of range (1 ms ..= 60 s; WAIT reads 0 as for ever)",
                });
            }
        }
        Ok(Timeouts {
            connect: response.max(CONNECT_TIMEOUT),
            response,
            explicit: self.response_timeout.is_some(),
            replica_sync: self.replica_sync,
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
    /// Replica sync after each acquisition ([`ManagerBuilder::replica_sync`]): a wait
    /// bound too, carried with the timeouts to every backend.
    pub(crate) replica_sync: Option<ReplicaSync>,
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

impl Timeouts {
    /// The settings of a connection for commands followed by `WAIT`: its response
    /// timeout covers the `WAIT`.
    pub(crate) fn sync_config(&self) -> redis::AsyncConnectionConfig {
        let wait = self.replica_sync.map_or(Duration::ZERO, |s| s.timeout);
        redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect))
            .set_response_timeout(Some(self.response + wait))
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
