//! The error type of every fallible rdlock operation.
//!
//! The module path (`rdlock::errors::RdLockError`) and the variant names of rdlock 1.x
//! are kept, so that existing `match` arms compile; new variants were added for the
//! cases 1.x reported as panics, hangs or a generic error.

use std::time::Duration;

use redis::RedisError;

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
    /// (for example `WRONGTYPE` when the lock key holds a non-string value, `NOPERM`
    /// from an ACL, `OOM`).
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
    /// Redis could not be reached (connection refused, reset or timed out).
    #[error("redis is unreachable")]
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
    /// A manager option is out of range ([`ManagerBuilder`](crate::ManagerBuilder));
    /// reported by its `connect` before anything is opened.
    #[error("invalid manager option `{option}`: {reason}")]
    InvalidConfig {
        /// The option, as named on the builder.
        option: &'static str,
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

    /// `true` when Redis could not be reached; retrying later may succeed.
    #[must_use]
    pub fn is_connection_error(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::ConnectionError)
    }

    /// Maps a redis-rs error: connection-class failures become
    /// [`Unreachable`](Self::Unreachable), everything else stays a
    /// [`RedisError`](Self::RedisError).
    pub(crate) fn from_redis(e: RedisError) -> Self {
        if is_transient(&e) {
            Self::Unreachable(e)
        } else {
            Self::RedisError(e)
        }
    }
}

/// Failures after which the same command may succeed once the connection is back.
pub(crate) fn is_transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || is_cluster_transient(e)
}

/// Redis Cluster states that pass (a failover, a slot migration, a node reconnecting):
/// redirections that redis-rs's retries did not absorb, `TRYAGAIN`, `CLUSTERDOWN`,
/// `MASTERDOWN`, `READONLY` (a demoted master), `LOADING`, and a node without a
/// connection. `CROSSSLOT` is not among them: a lock's keys share one slot.
fn is_cluster_transient(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::BusyLoading
        ) | ErrorKind::ClusterConnectionNotFound
    )
}
