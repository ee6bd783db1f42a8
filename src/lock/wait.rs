//! The wait loop shared by every blocking acquire.
//!
//! Register interest in the lock's notifications *first* (subscription confirmed), then
//! try; if the lock is held, wait for whichever comes first — a wake-up from the shared
//! subscriber, the holder's remaining lease (PTTL) running out, or the caller's deadline
//! — and try again. A release between the failed try and the wait cannot be missed,
//! because the wake-up future is enabled before the try; a lost notification costs at
//! most the holder's PTTL, never a hang.

use std::hash::{BuildHasher, Hasher};
use std::pin::pin;
use std::time::{Duration, Instant};

use super::{Acquired, Attempt, Lock};
use crate::errors::RdLockError;
use crate::guard::LockGuard;
use crate::notifier::Watch;

/// How often to look again at a key that has no expiry (written by something other
/// than rdlock): nothing would otherwise ever wake the waiter.
const NO_EXPIRY_RECHECK: Duration = Duration::from_secs(1);
const UNREACHABLE_BACKOFF_MIN: Duration = Duration::from_millis(50);
const UNREACHABLE_BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Lock {
    /// Waits for this task's turn in the manager's local queue for the key, then for
    /// the lock in Redis.
    pub(crate) async fn acquire_in_turn(
        &self,
        deadline: Option<Instant>,
    ) -> Result<LockGuard, RdLockError> {
        self.validate()?;
        let gate = self.manager().inner().gates.get(self.key());
        let shutdown = &self.manager().inner().shutdown;
        let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
        let turn = tokio::select! {
            biased;
            turn = gate.lock_owned() => turn,
            _ = shutdown.cancelled() => return Err(RdLockError::ShutDown),
            _ = tokio::time::sleep_until(deadline.unwrap_or(far_future).into()) => {
                return Err(RdLockError::TimeoutReached);
            }
        };
        let acquired = self.acquire_raw(deadline).await?;
        Ok(self.guard(acquired, Some(turn)))
    }

    pub(crate) async fn acquire_raw(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Acquired, RdLockError> {
        let lease_ms = self.validate()?;
        // Fast path: an uncontended lock costs one round trip and no subscription.
        // Otherwise, how long the first wait for the subscription may take: like every
        // wait, no longer than the holder's PTTL (the subscription's confirmation, when
        // it comes later, still wakes this waiter).
        // Every attempt is raced against the caller's deadline: a reply may take the
        // whole response timeout, which can be far longer than the deadline. Dropping an
        // attempt undoes it by token. Except this first one when the deadline has
        // already passed (a zero timeout): that makes one attempt, as documented.
        let race = deadline.filter(|deadline| Instant::now() < *deadline);
        let first = tokio::select! {
            biased;
            first = self.attempt(lease_ms) => first,
            () = past(race) => return Err(RdLockError::TimeoutReached),
        };
        let ready_within = match first {
            Ok(Attempt::Acquired(acquired)) => return Ok(acquired),
            Ok(Attempt::Held(Some(pttl))) => Some(pttl + jitter()),
            Ok(Attempt::Held(None)) => Some(NO_EXPIRY_RECHECK),
            Ok(Attempt::TooLate) => Some(jitter()),
            Err(e) if e.is_connection_error() => None,
            Err(e) => return Err(e),
        };
        let shutdown = &self.manager().inner().shutdown;
        let watch = self.manager().inner().notifier.watch(self.names());
        let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
        let ready_by = ready_within.map_or(far_future, |within| Instant::now() + within);
        tokio::select! {
            _ = watch.ready() => {}
            _ = tokio::time::sleep_until(ready_by.into()) => {}
            _ = shutdown.cancelled() => return Err(RdLockError::ShutDown),
            _ = tokio::time::sleep_until(deadline.unwrap_or(far_future).into()) => {
                return Err(RdLockError::TimeoutReached);
            }
        }
        let mut backoff = UNREACHABLE_BACKOFF_MIN;
        let mut woken = false;
        loop {
            let mut notified = pin!(watch.notified());
            notified.as_mut().enable();
            let baton = Baton {
                watch: &watch,
                armed: woken,
            };
            let outcome = tokio::select! {
                biased;
                outcome = self.attempt(lease_ms) => outcome,
                // The baton, dropped armed, hands a wake-up on.
                () = past(deadline) => return Err(RdLockError::TimeoutReached),
            };
            let wait = match outcome {
                Ok(Attempt::Acquired(acquired)) => {
                    baton.disarm();
                    return Ok(acquired);
                }
                Ok(Attempt::Held(pttl)) => {
                    baton.disarm();
                    backoff = UNREACHABLE_BACKOFF_MIN;
                    match pttl {
                        Some(pttl) => pttl + jitter(),
                        None => NO_EXPIRY_RECHECK,
                    }
                }
                // The release of the late acquisition wakes us; the jitter bounds the
                // wait should that message be lost.
                Ok(Attempt::TooLate) => {
                    baton.disarm();
                    jitter()
                }
                Err(e) if e.is_connection_error() => {
                    baton.disarm();
                    let wait = backoff;
                    backoff = (backoff * 2).min(UNREACHABLE_BACKOFF_MAX);
                    wait
                }
                Err(e) => return Err(e),
            };
            let mut wake_at = Instant::now() + wait;
            if let Some(deadline) = deadline {
                wake_at = wake_at.min(deadline);
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Err(RdLockError::ShutDown),
                _ = notified => woken = true,
                _ = tokio::time::sleep_until(wake_at.into()) => {
                    woken = false;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(RdLockError::TimeoutReached);
                    }
                }
            }
        }
    }
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

/// Completes at `deadline`; never without one.
async fn past(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
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
