//! The wait loop shared by every blocking acquire.
//!
//! Try once (an uncontended lock costs one round trip and no subscription). If the lock
//! is held, that attempt put this process in the lock's queue in Redis
//! ([`crate::queue`]); register interest in the lock's notifications (subscription
//! confirmed), try again unless the subscription was in place before the first try,
//! then wait for whichever comes first — a wake-up (a turn message naming this process,
//! a `released` message, a keyspace event, a confirmation), this process's deadline as
//! a standby of the last turn, the holder's remaining lease (PTTL) running out, or the
//! caller's deadline — and try again. A turn message between the failed try and the
//! wait cannot be missed: the wake-up future is enabled before each try, and a turn
//! message also leaves a flag that is read after it. A lost notification costs at most
//! the holder's PTTL, never a hang. Every attempt is raced against the deadline and
//! shutdown, so neither waits for a reply that is slow to come.

use std::hash::{BuildHasher, Hasher};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{sleep_until, Acquired, Attempt, Granted, Lock};
use crate::errors::RdLockError;
use crate::gate::{Delivery, Start, Turn};
use crate::guard::LockGuard;
use crate::meters::Wait;
use crate::notifier::Watch;
use crate::scripts::Queueing;
use tracing::Instrument;

/// How often to look again at a key that has no expiry (written by something other
/// than rdlock): nothing would otherwise ever wake the waiter.
const NO_EXPIRY_RECHECK: Duration = Duration::from_secs(1);
const UNREACHABLE_BACKOFF_MIN: Duration = Duration::from_millis(50);
const UNREACHABLE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long attempts keep failing "unreachable / retry later" before a waiter logs a
/// warning (once per such streak).
const REPORT_FAILING_AFTER: Duration = Duration::from_secs(10);
/// The least time the first attempt is given, whatever the deadline: a timeout shorter
/// than a round trip still makes one whole attempt on a healthy connection.
const FIRST_ATTEMPT_MIN: Duration = Duration::from_millis(100);

impl Lock {
    /// Waits for this task's turn in the manager's local queue for the key, then for
    /// the lock in Redis.
    pub(crate) async fn acquire_in_turn(
        &self,
        deadline: Option<Instant>,
    ) -> Result<LockGuard, RdLockError> {
        let wait = Wait::start(self.metrics(), true);
        let span = self.acquire_span();
        let result = match self
            .acquire_granted_in_turn(deadline)
            .instrument(span.clone())
            .await
        {
            // Outside the acquisition's span: the hold's span is its sibling.
            Ok((granted, turn)) => self.guard(granted, turn),
            Err(e) => Err(e),
        };
        Self::record_outcome(&span, &result);
        wait.finish(&result);
        result
    }

    async fn acquire_granted_in_turn(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Granted, Option<Turn>), RdLockError> {
        self.validate()?;
        let gate = self.manager().inner().gates.get(self.key());
        let shutdown = &self.manager().inner().shutdown;
        let recipient = self.takes_hand_offs().then(|| self.clone());
        let turn = match gate.enqueue(recipient) {
            Ok(turn) => turn,
            Err(mut queued) => {
                // Cancelled here (deadline, shutdown, the caller): dropping `queued`
                // leaves the queue, and a delivery it had not taken yet — a turn, or
                // a handed-off key — passes on to the next waiter or is released.
                let delivery = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Err(RdLockError::ShutDown),
                    delivery = queued.delivered() => delivery,
                    _ = sleep_until(deadline) => return Err(RdLockError::TimeoutReached),
                };
                match delivery {
                    Some(Delivery::Turn(turn)) => turn,
                    Some(Delivery::HandedOff(mut granted)) => {
                        let turn = granted.take_turn();
                        if granted.lease_over(self.lease()) {
                            // Handed off while this future was not polled (a stalled
                            // task or process) for longer than the lease: no guard for
                            // a lease that may be over. Dropped, it is released by its
                            // token; this task keeps the turn and acquires anew.
                            tracing::debug!(lock = %self.id(), "hand-off taken too late: undone");
                            drop(granted);
                            match turn {
                                Some(turn) => turn,
                                // Never: a hand-off always carries its turn.
                                None => return Err(RdLockError::ShutDown),
                            }
                        } else {
                            return Ok((granted, turn));
                        }
                    }
                    // Every entry is answered before its sender is dropped.
                    None => return Err(RdLockError::ShutDown),
                }
            }
        };
        // A hand-off script that gave the turn to another process queued this one
        // again: this task waits for the process's turn, without an attempt.
        let granted = self
            .acquire_armed_from(deadline, Some(&turn), turn.take_start())
            .await?;
        Ok((granted, Some(turn)))
    }

    /// The wait loop, for the 1.x `BasicLock`.
    pub(crate) async fn acquire_raw(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Acquired, RdLockError> {
        self.acquire_armed_from(deadline, None, Start::Attempt)
            .await
            .map(Granted::keep)
    }

    /// Every attempt is raced against `deadline` (the first one against at least
    /// [`FIRST_ATTEMPT_MIN`]) and against shutdown; an attempt cut short is undone by
    /// its token.
    ///
    /// `turn`, the task's turn in the manager's local queue, keeps the lock's
    /// subscription between waits ([`crate::gate`]). `start` says how to begin after a
    /// hand-off script ended a budget: [`Start::Requeued`] (this process was queued
    /// again in Redis) waits for this process's turn instead of attempting;
    /// [`Start::OthersFirst`] subscribes, then waits 1-10 ms before its first attempt,
    /// so that the woken waiters of other processes, one message away, try first.
    async fn acquire_armed_from(
        &self,
        deadline: Option<Instant>,
        turn: Option<&Turn>,
        start: Start,
    ) -> Result<Granted, RdLockError> {
        let requeued = start == Start::Requeued;
        let lease_ms = self.validate()?;
        let inner = self.manager().inner();
        let shutdown = &inner.shutdown;
        let queues = self.queues();
        let process: &str = inner.notifier.process();
        // The gate's subscription, or one still in place from this process's last
        // wait (see the notifier's LINGER); registered with the gate from here.
        let kept = turn.and_then(Turn::watch).or_else(|| {
            let watch = Arc::new(inner.notifier.warm_watch(self.names())?);
            if let Some(turn) = turn {
                turn.keep_watch(&watch);
            }
            Some(watch)
        });
        let mut queued = requeued || kept.as_ref().is_some_and(|w| w.queued());
        // A subscription in place before anything is sent: every release from now on
        // reaches this process, so a failed attempt needs no second one.
        let warm = kept.filter(|w| w.is_confirmed());
        let mut step = match (&warm, start) {
            (Some(_), Start::Requeued) => Step::Wait(self.lease() + jitter()),
            (_, Start::OthersFirst) => Step::Wait(jitter()),
            _ => Step::Attempt,
        };
        let watch = match warm {
            Some(watch) => watch,
            None => {
                // Fast path: an uncontended lock costs one round trip and no
                // subscription (not after a requeue: then this process waits its turn).
                let first_until = deadline.map(|d| d.max(Instant::now() + FIRST_ATTEMPT_MIN));
                // Until a watch records it, a waiter cut short (its attempt in flight,
                // or answered) may leave its process in the queue: it leaves on drop.
                let mut unqueue = Unqueue {
                    lock: self,
                    armed: queues && start == Start::Attempt,
                    _in_flight: inner.tasks.token(),
                };
                let first = if start != Start::Attempt {
                    Ok(Attempt::TooLate) // as after an attempt whose key is being released
                } else {
                    let queue = Queueing { process, queued };
                    self.bounded_attempt(lease_ms, first_until, queue).await
                };
                if matches!(first, Ok(Attempt::Acquired(_))) {
                    unqueue.armed = false; // the script took the process out of the queue
                }
                // How long the first wait for the subscription may take: like every
                // wait, no longer than the holder's PTTL (the subscription's
                // confirmation, when it comes later, still wakes this waiter).
                let ready_within = match first {
                    Ok(Attempt::Acquired(granted)) => return Ok(granted),
                    Ok(Attempt::Held(pttl)) => {
                        queued |= queues;
                        Some(pttl.map_or(NO_EXPIRY_RECHECK, |pttl| pttl + jitter()))
                    }
                    Ok(Attempt::TooLate) => Some(jitter()),
                    Err(e) if e.is_retried_by_lock() => None,
                    Err(e) => return Err(e),
                };
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    // The first attempt used the whole (short) timeout.
                    return Err(RdLockError::TimeoutReached);
                }
                let watch = match turn.and_then(Turn::watch) {
                    Some(watch) => watch,
                    None => Arc::new(inner.notifier.watch(self.names_arc())),
                };
                if let Some(turn) = turn {
                    turn.keep_watch(&watch);
                }
                // The first attempt may have queued the process even if its reply
                // did not say so (an error after the script ran).
                if queues && (queued || start == Start::Attempt) {
                    watch.set_queued(true);
                }
                unqueue.armed = false;
                drop(unqueue);
                let ready_by = ready_within.map(|within| Instant::now() + within);
                tokio::select! {
                    _ = watch.ready() => {}
                    _ = sleep_until(ready_by) => {}
                    _ = shutdown.cancelled() => return Err(RdLockError::ShutDown),
                    _ = sleep_until(deadline) => return Err(RdLockError::TimeoutReached),
                }
                watch
            }
        };
        let mut standby = watch.standby();
        let mut backoff = UNREACHABLE_BACKOFF_MIN;
        // Since when every attempt has failed "unreachable / retry later", and whether
        // that streak was reported.
        let mut failing_since: Option<Instant> = None;
        let mut reported = false;
        let mut woken = false;
        loop {
            let mut notified = pin!(watch.notified());
            notified.as_mut().enable();
            // Dropped armed on an early return (deadline, shutdown, error): the wake-up
            // goes to the next local waiter.
            let baton = Baton {
                watch: &watch,
                armed: woken,
            };
            let wait = match std::mem::replace(&mut step, Step::Attempt) {
                Step::Wait(wait) => {
                    baton.disarm();
                    wait
                }
                Step::Attempt => {
                    // This attempt serves every turn message that came so far.
                    watch.take_turn();
                    if queues {
                        // Before it is sent: cut short after the script ran (deadline,
                        // shutdown, abort), the waiter still takes its process out of
                        // the queue when its watch goes.
                        watch.set_queued(true);
                    }
                    let queue = Queueing { process, queued };
                    match self.bounded_attempt(lease_ms, deadline, queue).await {
                        Ok(Attempt::Acquired(granted)) => {
                            baton.disarm();
                            // The script took this process out of the queue.
                            watch.acquired();
                            return Ok(granted);
                        }
                        Ok(Attempt::Held(pttl)) => {
                            baton.disarm();
                            if queues {
                                queued = true;
                                watch.set_queued(true);
                            }
                            backoff = UNREACHABLE_BACKOFF_MIN;
                            failing_since = None;
                            reported = false;
                            match pttl {
                                Some(pttl) => pttl + jitter(),
                                None => NO_EXPIRY_RECHECK,
                            }
                        }
                        // The late acquisition is being released by its token (which
                        // passes the turn on, if processes queue); the jitter (1-10 ms)
                        // bounds this wait, a message only shortening it.
                        Ok(Attempt::TooLate) => {
                            baton.disarm();
                            jitter()
                        }
                        // Unreachable, or not serving for now (LOADING, BUSY, a failover).
                        Err(e) if e.is_retried_by_lock() => {
                            baton.disarm();
                            let since = *failing_since.get_or_insert_with(Instant::now);
                            if !reported && since.elapsed() >= REPORT_FAILING_AFTER {
                                // A condition that does not pass (a URL that names a
                                // replica answers READONLY for ever) must not be a
                                // silent hang.
                                reported = true;
                                tracing::warn!(lock = %self.id(), error = %e, failing_for = ?since.elapsed(), "Redis is not serving this lock; still retrying");
                            }
                            let wait = backoff;
                            backoff = (backoff * 2).min(UNREACHABLE_BACKOFF_MAX);
                            wait
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            if watch.has_turn() {
                // A turn message for this process came while it was busy: its wake-up
                // may have gone to nobody. Attempt now.
                woken = true;
                continue;
            }
            let mut fallback_at = Instant::now() + wait;
            if let Some(deadline) = deadline {
                fallback_at = fallback_at.min(deadline);
            }
            // Wait for a wake-up, the fallback, or this process's standby duty
            // ([`crate::queue`]): a turn message naming it a standby sets a deadline
            // (waking this waiter to take it into account), one naming another process
            // or a `claimed` notice clears it; none of those is a reason to attempt.
            loop {
                let duty = *standby.borrow_and_update();
                let wake_at = duty.map_or(fallback_at, |duty| duty.min(fallback_at));
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Err(RdLockError::ShutDown),
                    _ = notified.as_mut() => {
                        woken = true;
                        break;
                    }
                    changed = standby.changed() => {
                        if changed.is_err() {
                            // Never: the entry, which owns the sender, lives while the
                            // watch does. Without it, no duty: the fallback remains.
                            standby = watch.standby();
                        }
                    }
                    _ = tokio::time::sleep_until(wake_at.into()) => {
                        woken = false;
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            return Err(RdLockError::TimeoutReached);
                        }
                        if Instant::now() < fallback_at {
                            // The standby's duty is due: the named process did not
                            // claim its turn in time (or the notice was lost). Check.
                            watch.clear_standby();
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// What the wait loop does next.
enum Step {
    /// An acquire attempt.
    Attempt,
    /// A wait of at most this long (for this process's turn) before an attempt.
    Wait(Duration),
}

/// A wake-up this waiter received and has not acted on yet. If the waiter is dropped
/// (its future cancelled) mid-attempt, the wake-up goes to the next local waiter, so a
/// release is never left unannounced in this process.
struct Baton<'a> {
    watch: &'a Watch,
    armed: bool,
}

impl Baton<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Baton<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.watch.pass_on();
        }
    }
}

/// Leaves the lock's queue when dropped armed: a waiter cut short during its first
/// attempt, which it makes before it has a [`Watch`] to record that it may be queued.
struct Unqueue<'a> {
    lock: &'a Lock,
    armed: bool,
    /// Counted as a task of the manager until the leave is spawned (fields drop after
    /// `drop`), so that a shutdown that ends this waiter waits for its leave.
    _in_flight: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Drop for Unqueue<'_> {
    fn drop(&mut self) {
        if self.armed {
            let inner = self.lock.manager().inner();
            inner.notifier.leave(self.lock.names_arc().clone());
        }
    }
}

/// 1–10 ms, so that waiters of many processes do not retry in lockstep when a lease
/// runs out.
fn jitter() -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_millis(1 + random % 10)
}
