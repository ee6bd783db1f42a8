//! The error type of every fallible rdlock operation.
//!
//! The module path (`rdlock::errors::RdLockError`) and the variant names of rdlock 1.x
//! are kept, so that existing `match` arms compile; new variants were added for the
//! cases 1.x reported as panics, hangs or a generic error.

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Errors returned by rdlock.
///
/// The enum is `#[non_exhaustive]`: match the variants you act on and keep a `_` arm.
/// Use the predicates ([`is_timeout`](Self::is_timeout),
/// [`is_unavailable`](Self::is_unavailable), [`is_connection_error`](Self::is_connection_error))
/// where a category is all you need.
///
/// # Example
///
/// ```no_run
/// # async fn demo(lock: rdlock::Lock) {
/// use rdlock::RdLockError;
///
/// match lock.try_lock().await {
///     Ok(_guard) => { /* do the work while the guard lives */ }
///     Err(RdLockError::LockUnavailable) => println!("someone else holds it"),
///     Err(e) if e.is_connection_error() => println!("redis is unreachable: {e}"),
///     Err(e) => println!("failed: {e}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum RdLockError {
    /// Redis answered with an error that rdlock does not map to a more precise variant
    /// and that retrying will not cure (for example `WRONGTYPE` when the lock key
    /// holds a non-string value, `NOPERM` from an ACL, `OOM`).
    #[error("redis command failed")]
    RedisError(#[from] RedisError),
    /// The lock is held by another owner (`try_lock`).
    #[error("the lock is held by another owner")]
    LockUnavailable,
    /// The deadline of `lock_timeout` passed before the lock could be acquired.
    #[error("timed out waiting for the lock")]
    TimeoutReached,
    /// The lock is not held by this owner: it was never acquired, was already released,
    /// its lease expired, or another owner took it over.
    #[error("the lock is not held by this owner")]
    LockNotAcquired,
    /// Kept from rdlock 1.x; rdlock 2 reports connection failures as
    /// [`Unreachable`](Self::Unreachable), which carries the cause.
    #[error("connection error")]
    ConnectionError,
    /// Kept from rdlock 1.x, which returned it when `notify-keyspace-events` was not
    /// enabled. rdlock 2 works without keyspace events and no longer returns it.
    #[error("redis server check failed")]
    InitCheckFailed,
    /// The URL or connection parameters could not be parsed.
    #[error("invalid redis connection parameters")]
    InvalidUrl(#[source] RedisError),
    /// Redis could not serve the request now; the same request may succeed later.
    /// Either it could not be reached (connection refused, reset or timed out), or it
    /// answered with one of the errors that mean "retry later": `LOADING` (loading its
    /// dataset after a restart), `BUSY` (a script or function runs too long),
    /// `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN` and `READONLY` (a failover: the server
    /// is, or is becoming, a replica), `NOREPLICAS` (`min-replicas-to-write` is not
    /// met). The cause tells which.
    ///
    /// `lock()` and `lock_timeout()` never return it: they wait through these
    /// conditions with backoff.
    #[error("redis is unreachable or not serving")]
    Unreachable(#[source] RedisError),
    /// The lock id is not usable (it is empty).
    #[error("invalid lock id: {reason}")]
    InvalidLockId {
        /// Why the id was refused.
        reason: &'static str,
    },
    /// The lease is outside [`MIN_LEASE`](crate::MIN_LEASE)..=[`MAX_LEASE`](crate::MAX_LEASE).
    #[error("invalid lease {lease:?}: {reason}")]
    InvalidLease {
        /// The lease that was refused.
        lease: Duration,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The lease was lost while the lock was in use (its key expired, was deleted or was
    /// taken over, or Redis stayed unreachable past the local lease deadline).
    #[error("the lease on the lock was lost")]
    LeaseLost,
    /// The manager was shut down ([`RdLockConnectionManager::shutdown`](crate::RdLockConnectionManager::shutdown)):
    /// it takes no new locks, and guards it released report this.
    #[error("the lock manager was shut down")]
    ShutDown,
    /// The maximum hold given to [`Lock::with_max_hold`](crate::Lock::with_max_hold)
    /// is zero (under 1 ms) or longer than [`MAX_LEASE`](crate::MAX_LEASE); reported
    /// by the acquire methods.
    #[error("invalid maximum hold {max_hold:?}: {reason}")]
    InvalidMaxHold {
        /// The maximum hold that was refused.
        max_hold: Duration,
        /// Why it was refused.
        reason: &'static str,
    },
    /// [`Lock::run`](crate::Lock::run) (and its variants) stopped the job because the
    /// maximum hold ([`Lock::with_max_hold`](crate::Lock::with_max_hold)) was reached:
    /// the watchdog stopped renewing and the lease ran out.
    #[error("the maximum hold of the lock was reached")]
    MaxHoldReached,
    /// Replica sync ([`ManagerBuilder::replica_sync`](crate::ManagerBuilder::replica_sync))
    /// is on and fewer replicas than wanted acknowledged the acquisition in time; it
    /// was released again. `lock()` and `lock_timeout()` retry until their deadline;
    /// `try_lock()` returns it.
    #[error("the acquisition reached {acked} replica(s) of the {wanted} wanted in time; released")]
    NotReplicated {
        /// Replicas that acknowledged it (`WAIT`'s reply).
        acked: u32,
        /// Replicas wanted.
        wanted: u32,
    },
    /// A manager option is out of range ([`ManagerBuilder`](crate::ManagerBuilder));
    /// reported by its `connect` before anything is opened.
    #[error("invalid manager option `{option}`: {reason}")]
    InvalidConfig {
        /// The option, as named on the builder.
        option: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// rdlock 1.x compatibility ([`Lock::with_v1_compat`](crate::Lock::with_v1_compat))
    /// was asked of a manager that cannot provide it: on a Redis Cluster the 1.x key
    /// `/rdlock/<id>/.lock` lies outside the lock's hash tag, so one script cannot take
    /// both keys. Reported by every method of the lock that would touch Redis, before
    /// anything is sent.
    #[error("rdlock 1.x compatibility is not available: {reason}")]
    V1CompatUnsupported {
        /// Why it was refused.
        reason: &'static str,
    },
}

impl RdLockError {
    /// `true` for [`TimeoutReached`](Self::TimeoutReached).
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::TimeoutReached)
    }

    /// `true` for [`LockUnavailable`](Self::LockUnavailable).
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::LockUnavailable)
    }

    /// `true` for [`Unreachable`](Self::Unreachable) (and the 1.x
    /// [`ConnectionError`](Self::ConnectionError)): Redis could not be reached, or is
    /// not serving for now (`LOADING`, `BUSY`, a failover); retrying later may succeed.
    /// Errors that retrying cannot cure (`WRONGTYPE`, `NOPERM`, ...) stay
    /// [`RedisError`](Self::RedisError), for which it is `false`.
    #[must_use]
    pub fn is_connection_error(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::ConnectionError)
    }

    /// Whether the blocking acquire methods wait through it (retrying with backoff):
    /// a connection error, or an acquisition not replicated in time.
    pub(crate) fn is_retried_by_lock(&self) -> bool {
        self.is_connection_error() || matches!(self, Self::NotReplicated { .. })
    }

    /// Maps a redis-rs error: connection failures and "retry later" server errors
    /// ([`is_transient`]) become [`Unreachable`](Self::Unreachable), everything else
    /// stays a [`RedisError`](Self::RedisError).
    pub(crate) fn from_redis(e: RedisError) -> Self {
        if is_transient(&e) {
            Self::Unreachable(e)
        } else {
            Self::RedisError(e)
        }
    }
}

/// Failures after which the same command may succeed, with no change on our side:
/// connection failures (I/O errors, timeouts, refused or dropped connections), and the
/// server errors that redis-rs classes as "wait and retry" (`LOADING`, `TRYAGAIN`,
/// `CLUSTERDOWN`, `MASTERDOWN`) plus `READONLY` (a write reached a replica: a failover
/// is under way) and `BUSY` (a script or function runs past `busy-reply-threshold`;
/// redis-rs does not know this code), and `NOREPLICAS` (`min-replicas-to-write` is
/// not met for now). `NOSCRIPT` is not among them: redis-rs loads the
/// script and retries by itself.
pub(crate) fn is_transient(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return true;
    }
    is_retry_later_reply(e) || is_cluster_transient(e)
}

/// Redis Cluster states that pass (a failover, a slot migration, a node reconnecting)
/// beyond the "retry later" replies: redirections that redis-rs's retries did not
/// absorb, and a node without a connection. `CROSSSLOT` is not among them: a lock's
/// keys share one slot.
fn is_cluster_transient(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask)
            | ErrorKind::ClusterConnectionNotFound
    )
}

/// The server answered, with one of the "retry later" errors of [`is_transient`]: the
/// command certainly did not run, and the same command may succeed soon.
pub(crate) fn is_retry_later_reply(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        ) => true,
        _ => matches!(e.code(), Some("BUSY" | "NOREPLICAS")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a server reply (`-CODE detail`) turns into.
    fn server_error(line: &str) -> RedisError {
        let reply = format!("-{line}\r\n");
        match redis::parse_redis_value(reply.as_bytes())
            .unwrap()
            .extract_error()
        {
            Err(e) => e,
            Ok(v) => panic!("not an error: {v:?}"),
        }
    }

    #[test]
    fn retry_later_server_errors_are_transient() {
        for line in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "READONLY You can't write against a read only replica.",
            "NOREPLICAS Not enough good replicas to write.",
        ] {
            let e = server_error(line);
            assert!(is_transient(&e), "{line}");
            let mapped = RdLockError::from_redis(e);
            assert!(mapped.is_connection_error(), "{line}: {mapped:?}");
            assert!(matches!(mapped, RdLockError::Unreachable(_)), "{line}");
        }
    }

    #[test]
    fn errors_that_retrying_cannot_cure_are_not_transient() {
        for line in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "NOPERM this user has no permissions to run the 'evalsha' command",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "ERR unknown command",
            "NOSCRIPT No matching script. Please use EVAL.",
            "BUSYKEY Target key name already exists.",
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
        ] {
            let e = server_error(line);
            assert!(!is_transient(&e), "{line}");
            let mapped = RdLockError::from_redis(e);
            assert!(!mapped.is_connection_error(), "{line}");
            assert!(matches!(mapped, RdLockError::RedisError(_)), "{line}");
        }
    }
}
