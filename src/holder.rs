//! [`HolderInfo`]: who holds a lock, as recorded next to it in Redis.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Who holds a lock: written by the acquire script into `rdlock:{id}:owner` with the
/// same lease as the lock key, renewed with it and deleted with it, so that it never
/// outlives the lock. Read with [`Lock::holder`](crate::Lock::holder).
///
/// # Example
///
/// ```no_run
/// # async fn demo(lock: rdlock::Lock) -> Result<(), rdlock::RdLockError> {
/// match lock.holder().await? {
///     Some(h) => println!("{} (pid {} on {}), fencing token {}", h.label, h.pid, h.host, h.fencing_token),
///     None => println!("free"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HolderInfo {
    /// The holder's host name (empty when the lock was not taken by rdlock).
    pub host: String,
    /// The holder's process id (0 when unknown).
    pub pid: u32,
    /// The label the holder gave its lock ([`Lock::with_label`](crate::Lock::with_label)).
    pub label: String,
    /// When the lock was acquired, by the acquiring machine's clock (rdlock 2.0's
    /// scripts read the Redis server's `TIME`; the record's format is the same). On a
    /// Redlock manager, by the clock of the node read (its fencing script reads its
    /// `TIME`). Informational: a clock skewed against yours shifts it (`rdlock status`
    /// then omits "for …" when it would be negative).
    pub acquired_at: SystemTime,
    /// The holder's fencing token (0 when unknown).
    pub fencing_token: u64,
    /// The lease left; `None` when the key has no expiry (not written by rdlock).
    pub remaining_lease: Option<Duration>,
}

impl HolderInfo {
    /// Parses the owner record `<fence>\n<unix ms>\n<pid>\n<host>\n<label>`; a missing
    /// or foreign record gives the "unknown" values.
    pub(crate) fn parse(record: Option<&str>, remaining_lease: Option<Duration>) -> Self {
        let mut parts = record.unwrap_or_default().splitn(5, '\n');
        let mut next = || parts.next().unwrap_or_default();
        let fencing_token = next().parse().unwrap_or(0);
        let acquired_ms: u64 = next().parse().unwrap_or(0);
        let pid = next().parse().unwrap_or(0);
        let host = next().to_owned();
        let label = next().to_owned();
        Self {
            host,
            pid,
            label,
            acquired_at: UNIX_EPOCH + Duration::from_millis(acquired_ms),
            fencing_token,
            remaining_lease,
        }
    }
}

/// This process's part of the owner record: `<pid>\n<host>\n<label>`.
pub(crate) fn owner_record(label: &str) -> String {
    format!("{}\n{}\n{label}", std::process::id(), *HOST)
}

static HOST: LazyLock<String> = LazyLock::new(|| {
    // No dependency for this: Linux exposes the name in /proc; elsewhere $HOSTNAME.
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
        .replace('\n', " ")
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_foreign_ones_are_unknown() {
        let record = format!("7\n1700000000123\n{}", owner_record("nightly\nreport"));
        let info = HolderInfo::parse(Some(&record), Some(Duration::from_secs(3)));
        assert_eq!(info.fencing_token, 7);
        assert_eq!(info.pid, std::process::id());
        assert_eq!(info.label, "nightly\nreport", "the label may hold newlines");
        assert_eq!(
            info.acquired_at,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
        let unknown = HolderInfo::parse(None, None);
        assert_eq!((unknown.pid, unknown.fencing_token), (0, 0));
        assert!(unknown.host.is_empty() && unknown.label.is_empty());
    }
}
