//! The exit codes of `rdlock`, distinct from each other (a child's own code is passed
//! through otherwise).

use rdlock::RdLockError;

use crate::output::say;

/// Bad usage: unknown option, bad duration, bad URL, empty id, a wrong --url / --cluster
/// / --sentinel combination, --cluster given a server that is not a cluster, or
/// --sentinel given a service no sentinel knows.
pub(crate) const USAGE: u8 = 64;
/// Redis could not be reached.
pub(crate) const UNREACHABLE: u8 = 69;
/// Any other failure of rdlock itself (a Redis error reply, ...).
pub(crate) const FAILURE: u8 = 70;
/// The lock was not obtained: held (`--no-wait`) or `--wait` ran out.
pub(crate) const NOT_OBTAINED: u8 = 75;
/// The lease was lost while the command ran.
pub(crate) const LEASE_LOST: u8 = 79;
/// The maximum hold (`--max-hold`) was reached and the lease ran out (as `timeout(1)`).
pub(crate) const MAX_HOLD: u8 = 124;
/// The command could not be started (as in POSIX shells).
pub(crate) const CANNOT_RUN: u8 = 126;
/// The command was not found (as in POSIX shells).
pub(crate) const NOT_FOUND: u8 = 127;

/// The text of `--help` about exit codes.
pub(crate) const HELP: &str = "\
Exit codes:
  the command's own  exec: the command ran; its exit code (128+N if killed by signal N)
  0                  status / release: done (release: also when the lock was not held)
  1                  release: not released (declined, or no longer held by the holder shown / --fence)
  64                 bad usage (unknown option, bad duration, bad URL, empty id, several
                     --url without --cluster or --sentinel, --cluster or --sentinel
                     without a URL, --cluster on a server that is not a cluster,
                     --sentinel with a service no sentinel knows)
  69                 Redis unreachable (or, with --replica-sync and --no-wait, too few
                     replicas acknowledged the acquisition)
  70                 other failure (an error reply from Redis)
  75                 lock not obtained (held with --no-wait, or --wait ran out); see --conflict-exit-code
  79                 exec: the lease was lost while the command ran
  124                exec: --max-hold was reached (the lease ran out; as timeout(1))
  126 / 127          exec: the command could not be started / was not found
  128+N              exec: signal N (HUP, INT, QUIT, TERM, USR1, USR2, ALRM, ...) while waiting for the lock";

/// Prints what went wrong and returns the exit code for it.
pub(crate) fn report(context: &str, error: &RdLockError) -> u8 {
    let mut message = format!("rdlock: {context}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    say!("{message}");
    match error {
        RdLockError::InvalidUrl(_)
        | RdLockError::InvalidLockId { .. }
        | RdLockError::InvalidLease { .. }
        | RdLockError::InvalidMaxHold { .. }
        // --cluster on a server that is not a cluster (option "nodes"), --sentinel with
        // a service no sentinel knows (option "service"): the CLI sets no other option.
        | RdLockError::InvalidConfig { .. } => USAGE,
        // Not on enough replicas in time (--replica-sync): Redis is not serving the
        // guarantee asked for, as when it is unreachable.
        e if e.is_connection_error() => UNREACHABLE,
        RdLockError::NotReplicated { .. } => UNREACHABLE,
        RdLockError::LockUnavailable | RdLockError::TimeoutReached => NOT_OBTAINED,
        RdLockError::LeaseLost => LEASE_LOST,
        RdLockError::MaxHoldReached => MAX_HOLD,
        _ => FAILURE,
    }
}
