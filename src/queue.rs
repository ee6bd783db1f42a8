//! The Redis-side queue of waiting *processes*: one wake-up per release, to the next
//! process in line only, and no failed attempts.
//!
//! # How
//!
//! Each manager is one *process* of the queue, with a random id
//! ([`RdLockConnectionManager`](crate::RdLockConnectionManager) instances in one OS
//! process are distinct processes). Its tasks that wait for one key line up in its
//! local FIFO ([`crate::gate`]); only the first of them contends in Redis. Across
//! processes, `rdlock:{<id>}:queue` lists the processes that wait, oldest first, each
//! once:
//!
//! - **Queueing.** An acquire attempt that finds the lock held adds its process at the
//!   end of the queue, in the same script (`scripts/acquire.lua`). `try_lock` never
//!   queues.
//! - **Passing the turn.** A release with processes in the queue does not free the
//!   key: it takes the first process out of the queue and *reserves* the lock for it
//!   — the key holds `q:<process>` for [`RESERVATION`] — and publishes one message on
//!   the lock's release channel, `turn <process> <standby>...`. Only the named process
//!   wakes a task (its first waiter); every other process's subscriber reads the
//!   message and wakes nobody. The named process's attempt finds its reservation and
//!   takes the lock (token, fencing token, owner record, as any acquisition). No other
//!   process makes an attempt, so none fails. With nobody queued the release deletes
//!   the key and publishes nothing.
//! - **A process that does not come.** A process that died (or hangs, or lost its
//!   subscriber connection) does not claim its turn. The turn message names the next
//!   few processes in line (up to 4) as *standbys*: the *n*-th one attempts after *n*
//!   × ([`RESERVATION`] + 50 ms) unless the claim's short `claimed` notice, or another
//!   turn message, came first. By then the reservation has expired, so the first
//!   standby alive takes the free key (and announces it with `claimed`). A dead entry
//!   therefore costs the others at most about 300 ms each, never a lease; five
//!   processes dying in a row at the head of the queue fall back to the lease the
//!   waiters last saw (every wait is bounded by it).
//! - **Leaving.** A process whose last waiter for the key gives up (a deadline, a
//!   cancelled future, shutdown) leaves the queue in the background, and passes on a
//!   turn that was reserved for it (`scripts/leave.lua`): a cancelled waiter leaves no
//!   entry and no reservation.
//! - **Local hand-offs and the budget.** A process that holds the lock passes it to its
//!   own next task in one script ([`crate::handoff`]), at most
//!   [`HANDOFF_BUDGET`](crate::HANDOFF_BUDGET) times in a row while other processes
//!   queue; the next hand-off script then gives the turn to the first process in the
//!   queue instead and puts its own process back at the end. Processes take turns
//!   round-robin, each holding for up to `HANDOFF_BUDGET + 1` acquisitions.
//!
//! # Why it is safe
//!
//! A reservation is not ownership: the key holds no token while reserved, so no guard
//! can believe it holds the lock; only an acquire script of the named process turns it
//! into a token, and every script checks and writes the key atomically. Mutual
//! exclusion, fencing and leases are those of any acquisition. What the queue can get
//! wrong is liveness only, and each way is bounded: a lost or late message (a
//! subscriber reconnecting) costs at most the PTTL the waiter saw (every wait is
//! bounded by it, as before the queue); a slow process that claims after its
//! reservation expired finds the key free (it takes it) or taken by a standby (it
//! queues again at the end).
//!
//! # Where
//!
//! The single server, Sentinel (the master) and Redis Cluster (the queue shares the
//! lock's hash tag). Not Redlock (a quorum of independent masters has no one queue).
//! Waiters with 1.x compatibility queue too, and take a turn once the 1.x key is free
//! as well (`scripts/acquire_v1.lua`); they also set the waiters marker, and the
//! release of a holder with compatibility (`scripts/release_v1.lua`) passes no turn: it
//! publishes `released`, which wakes every waiter (a passing state, during a rolling
//! upgrade from 1.x).

use std::time::Duration;

/// How long a turn passed to the next process in the queue stays reserved for it:
/// 250 ms.
///
/// Long enough for a live process to claim it on a busy machine (a message and one
/// script: about a millisecond on loopback); short, because a process that died in
/// the queue costs the others this much (plus a 50 ms margin) before the next one in
/// line takes the lock.
///
/// ```
/// assert_eq!(rdlock::RESERVATION, std::time::Duration::from_millis(250));
/// ```
pub const RESERVATION: Duration = Duration::from_millis(250);

/// How much later than the reservation's end a standby checks the key.
pub(crate) const STANDBY_MARGIN: Duration = Duration::from_millis(50);

/// [`RESERVATION`] in ms, as the scripts take it.
pub(crate) fn reservation_ms() -> u64 {
    // 250 fits.
    u64::try_from(RESERVATION.as_millis()).unwrap_or(250)
}

/// What a message on a lock's release channel says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    /// The turn went to `next`; `standbys` are the next processes in line.
    Turn {
        next: &'a [u8],
        standbys: Vec<&'a [u8]>,
    },
    /// A process claimed its turn (or took the key after one not claimed): standbys
    /// stand down.
    Claimed,
    /// The key was freed: every waiter tries (a release without a queue, a force
    /// release, a 1.x-compatible holder, rdlock 2.0).
    Released,
}

impl<'a> Message<'a> {
    pub(crate) fn parse(payload: &'a [u8]) -> Self {
        if payload == b"claimed" {
            return Self::Claimed;
        }
        let Some(rest) = payload.strip_prefix(b"turn ") else {
            return Self::Released;
        };
        let mut words = rest.split(|b| *b == b' ').filter(|w| !w.is_empty());
        match words.next() {
            Some(next) => Self::Turn {
                next,
                standbys: words.collect(),
            },
            None => Self::Released,
        }
    }
}

/// When the standby at `position` (0 for the first after the named process) checks.
pub(crate) fn standby_after(position: usize) -> Duration {
    let n = u32::try_from(position + 1).unwrap_or(u32::MAX);
    (RESERVATION + STANDBY_MARGIN).saturating_mul(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse() {
        assert_eq!(Message::parse(b"released"), Message::Released);
        assert_eq!(Message::parse(b"claimed"), Message::Claimed);
        assert_eq!(
            Message::parse(b"turn a b c"),
            Message::Turn {
                next: b"a",
                standbys: vec![b"b".as_slice(), b"c".as_slice()]
            }
        );
        assert_eq!(
            Message::parse(b"turn a"),
            Message::Turn {
                next: b"a",
                standbys: vec![]
            }
        );
        assert_eq!(Message::parse(b"turn "), Message::Released);
        assert_eq!(standby_after(0), Duration::from_millis(300));
        assert_eq!(standby_after(1), Duration::from_millis(600));
    }
}
