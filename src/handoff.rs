//! The local hand-off: one script passes a released lock straight to the next task of
//! the same manager queued for it.
//!
//! # How
//!
//! Tasks of one manager that wait for the same key queue in a FIFO
//! ([`crate::gate`]); each entry carries the waiter's [`Lock`], so the queue knows the
//! parameters of every waiter (lease, owner record, maximum hold, metrics name, 1.x
//! compatibility). When a guard is released — [`LockGuard::release`] or its drop — and
//! the first waiter can take a hand-off, the guard takes that waiter out of the queue
//! (its turn is *reserved* for it) and sends one script that, only while the key still
//! holds the guard's token, stores a fresh token for the waiter with the waiter's
//! lease, increments the fencing counter and writes the waiter's owner record (the
//! acquisition time on the client's clock). The reply is delivered to the waiter as an
//! acquisition, from which it builds its guard exactly as from an acquire script's
//! reply ([`Lock::guard`](crate::Lock)): registration for shutdown, watchdog, lease
//! state, metrics and spans are those of a normal acquisition. Holder to holder costs
//! one round trip instead of two (release, then acquire), and no `PUBLISH`.
//!
//! # When not
//!
//! A plain release (token-checked `DEL` + `PUBLISH`, then the next task acquires
//! afresh) is made instead when:
//! - the lock or the first waiter has 1.x compatibility (the 1.x key would have to
//!   move too), the backend is Redlock (a quorum of independent masters) or replica
//!   sync is configured (the hand-off would need its `WAIT`): [`Lock::takes_hand_offs`];
//! - the manager is shutting down, or no task waits.
//!
//! After [`HANDOFF_BUDGET`](crate::gate::HANDOFF_BUDGET) hand-offs in a row, the
//! script is sent with the budget spent: if other processes are in the key's queue
//! ([`crate::queue`]), it gives the turn to the first of them instead and queues this
//! process again; the waiter then receives a plain turn, and waits for this process's
//! next turn without an attempt.
//!
//! `try_lock` never queues, so it never receives a hand-off; the 1.x `BasicLock` does
//! not use the local queue at all.
//!
//! # Why it is safe
//!
//! - *Exclusion.* The script replaces the holder's token by the recipient's in one
//!   atomic step, only if the holder's token is still there: the key is never free in
//!   between, and never owned by two tokens. The giver's guard has ended (its watchdog
//!   stopped, [`LockGuard::is_held`] false) before the script is sent, so at most one
//!   guard of the two is alive at any time on the client side too.
//! - *Validity.* The recipient's local lease deadline counts from before the script was
//!   sent (as for an acquire), and a reply that comes after the recipient's lease could
//!   have ended is not turned into a guard (it is released by its token).
//! - *Fencing.* The counter is incremented by the same script: the recipient's fencing
//!   token is greater than the giver's, and than every earlier one.
//! - *Lost key.* If the key no longer held the giver's token (the lease was lost), the
//!   script writes nothing; the waiter receives a plain turn and acquires normally, and
//!   `release` reports [`RdLockError::LockNotAcquired`] as before. (The recipient's token
//!   is released first all the same: a client that retries on its own, as redis-rs's
//!   cluster client does after a connection error, may have run the script twice.)
//! - *Unknown outcome.* If the script's reply is an error or never comes (the releasing
//!   future dropped while in flight), the script may or may not have run: both tokens
//!   are released in the background (each token-checked, so neither can touch another
//!   owner's key) — the giver's first, then the recipient's, so that a script that
//!   reaches Redis late finds the giver's key gone, or has already run — then the
//!   waiter receives a plain turn.
//! - *Cancel safety.* A recipient cancelled while the script is in flight, or before it
//!   took the acquisition, drops it: it is released by its token in the background,
//!   and the turn passes to the next waiter once that release was answered. These
//!   background releases are tasks of the manager, which
//!   [`shutdown`](crate::RdLockConnectionManager::shutdown) waits for; an acquisition
//!   handed off while shutdown runs is refused by the registry and released the same
//!   way.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use crate::errors::RdLockError;
use crate::gate::{Start, Turn};
use crate::lease::{valid_until, wall_valid_until};
use crate::lock::{Acquired, Granted, Lock, RELEASE_RETRY_MAX, RELEASE_RETRY_MIN};
use crate::meters;
use crate::scripts::{self, HandOff};

#[cfg(doc)]
use crate::LockGuard;

/// Hands the lock `giver` holds with `token` off to the waiter `turn` is reserved for,
/// whose lock is `to`. `Ok(())` once the key is the recipient's (or, if the reply came
/// too late to use, released again); [`RdLockError::LockNotAcquired`] when the key no
/// longer held `token` (the waiter then gets a plain turn); a Redis error when the
/// outcome is unknown (both tokens are then released in the background, and the waiter
/// gets a plain turn). `in_flight` counts the hand-off among the manager's tasks until
/// the recipient has its guard or the key is released.
///
/// Dropping the future before Redis answered is as an unknown outcome.
pub(crate) async fn hand_off(
    giver: &Lock,
    token: &Arc<str>,
    turn: Turn,
    to: Lock,
    budget_spent: bool,
    in_flight: TaskTrackerToken,
) -> Result<(), RdLockError> {
    let inner = to.manager().inner();
    let next: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
    let generation = inner.conn.generation();
    // Before the script is sent: the recipient's lease counts from here.
    let sent = Instant::now();
    let sent_wall = SystemTime::now();
    let at_ms = sent_wall
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let transit = InTransit {
        giver: giver.clone(),
        to: to.clone(),
        tokens: Some((token.clone(), next.clone())),
        parts: Some((turn, in_flight)),
    };
    let reply = scripts::hand_off(
        &inner.conn,
        to.names(),
        token,
        &next,
        to.lease_ms(),
        to.owner(),
        at_ms,
        budget_spent,
        inner.notifier.process(),
    )
    .await;
    match reply {
        Ok(outcome @ (HandOff::Yielded | HandOff::Released)) => {
            // Another process has the turn; nothing was written for `next`. The
            // waiter gets a plain turn, and waits for this process's next one, kept
            // subscribed by the gate meanwhile (so that the message cannot be missed).
            if let Some((mut turn, in_flight)) = transit.answered() {
                tracing::debug!(lock = %to.id(), ?outcome, "budget spent: the turn went to others");
                turn.restart_budget(if outcome == HandOff::Yielded {
                    Start::Requeued
                } else {
                    Start::OthersFirst
                });
                let watch = match turn.watch() {
                    Some(watch) => watch,
                    None => {
                        let watch = Arc::new(inner.notifier.watch(to.names_arc()));
                        turn.keep_watch(&watch);
                        watch
                    }
                };
                if outcome == HandOff::Yielded {
                    watch.set_queued(true);
                }
                drop(turn);
                drop(in_flight);
            }
            Ok(())
        }
        Ok(HandOff::Handed { fence }) => {
            let Some((mut turn, in_flight)) = transit.answered() else {
                return Ok(()); // never: the parts are taken once, here
            };
            if budget_spent {
                // Nobody else was in line: a new budget. (Keeping it spent would look
                // at the queue at every hand-off, 3-4 more commands each, for a
                // process that queues meanwhile to get in a budget earlier.)
                turn.restart_budget(Start::Attempt);
            }
            let acquired = Acquired {
                token: next,
                fence,
                sent,
                sent_wall,
                generation,
            };
            if Instant::now() >= valid_until(sent, to.lease())
                || SystemTime::now() >= wall_valid_until(sent_wall, to.lease())
            {
                // The recipient's lease may be over already: no guard for it. Dropped
                // armed, the acquisition is released by its token, then the (still
                // reserved) turn goes to the waiter as a plain turn.
                tracing::debug!(lock = %to.id(), fence, "hand-off answered too late: undone");
                drop(Granted::handed_off(&to, acquired, turn, in_flight));
            } else {
                tracing::debug!(lock = %to.id(), fence, "handed off");
                turn.deliver(|turn| Granted::handed_off(&to, acquired, turn, in_flight));
            }
            Ok(())
        }
        Ok(HandOff::NotOurs) => {
            // Nothing was written by this run of the script. But a client that retries
            // on its own after a connection error (redis-rs's cluster client does) may
            // have run it twice, the first run having handed the key off: the key then
            // holds `next`, which nobody owns, for a whole lease. So `next` is released
            // by its token (a no-op when absent; one round trip on this rare path)
            // before the waiter gets a plain turn.
            if let Some((turn, in_flight)) = transit.answered() {
                // Not a guard's release (no metric): the undo of a possible write.
                to.release_in_background(next, Some(turn), false);
                drop(in_flight);
            }
            Err(RdLockError::LockNotAcquired)
        }
        // `transit`, dropped armed, releases both tokens and passes the turn on.
        Err(e) => Err(RdLockError::from_redis(e)),
    }
}

/// [`hand_off`] for a dropped guard: spawned on the current runtime, as a task of the
/// manager. Without a runtime the waiter gets a plain turn at once and the key is left
/// to expire (counted in `rdlock_release_fallbacks_total`, as for a plain release).
pub(crate) fn hand_off_in_background(
    giver: &Lock,
    token: Arc<str>,
    turn: Turn,
    to: Lock,
    budget_spent: bool,
) {
    let on_its_way = meters::ReleaseOnItsWay::new(giver.metrics().clone());
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let tasks = &giver.manager().inner().tasks;
    let in_flight = tasks.token();
    let giver = giver.clone();
    tasks.spawn_on(
        async move {
            // Dropped unpolled or midway by a runtime shutting down: counted.
            let on_its_way = on_its_way;
            if let Err(e) = hand_off(&giver, &token, turn, to, budget_spent, in_flight).await {
                tracing::debug!(lock = %giver.id(), error = %e, "hand-off of a dropped guard failed");
            }
            on_its_way.ran();
        }
        .in_current_span(),
        &handle,
    );
}

/// A hand-off script in flight. Dropped before [`answered`](Self::answered) — an error
/// reply, or the future dropped — the script may or may not have run: both tokens are
/// released in the background (each only if the key still holds it), then the turn
/// goes to the waiter as a plain turn.
struct InTransit {
    giver: Lock,
    to: Lock,
    /// The giver's token and the recipient's.
    tokens: Option<(Arc<str>, Arc<str>)>,
    /// The reserved turn, and the hand-off's count among the manager's tasks.
    parts: Option<(Turn, TaskTrackerToken)>,
}

impl InTransit {
    /// Redis answered: disarms the background releases.
    fn answered(mut self) -> Option<(Turn, TaskTrackerToken)> {
        self.tokens = None;
        self.parts.take()
    }
}

impl Drop for InTransit {
    fn drop(&mut self) {
        let Some((token, next)) = self.tokens.take() else {
            return;
        };
        // Without a runtime the turn passes on as `parts` is dropped, and both leases
        // are left to expire (a guard dropped without a runtime leaves its lease too).
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (turn, in_flight) = self.parts.take().unzip();
        let giver = self.giver.clone();
        let to = self.to.clone();
        // The giver's token first, then the recipient's: a script that reaches Redis
        // late (on a connection replaced after a timeout) then finds either the giver's
        // key gone (and writes nothing) or has already run (and the second release
        // deletes what it wrote). The other order could let a late script write a
        // token after its release, held by nobody until its lease ends.
        let give_up = Instant::now() + giver.lease();
        let tasks = giver.manager().inner().tasks.clone();
        tasks.spawn_on(
            async move {
                // Counted among the manager's tasks until the second release is spawned.
                let _in_flight = in_flight;
                let conn = &giver.manager().inner().conn;
                let mut backoff = RELEASE_RETRY_MIN;
                loop {
                    match scripts::release(conn, giver.names(), &token).await {
                        Err(e)
                            if crate::errors::is_retry_later_reply(&e)
                                && Instant::now() + backoff < give_up =>
                        {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(RELEASE_RETRY_MAX);
                        }
                        _ => break,
                    }
                }
                to.release_in_background(next, turn, true);
            }
            .in_current_span(),
            &handle,
        );
    }
}
