//! The Lua scripts that touch a lock, and typed wrappers to call them.
//!
//! Each script is built once (`Script` hashes its source once) and sent with `EVALSHA`,
//! falling back to loading it on `NOSCRIPT` (after `SCRIPT FLUSH` or a restart). All
//! input goes through `KEYS`/`ARGV`; nothing is string-built into the source. The
//! scripts that act for an owner echo its token, and the wrappers check the echo: a
//! reply meant for another request can never pass for a grant, a renewal or a release.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{FromRedisValue, RedisResult, Script, ScriptInvocation};

use crate::backend::{mismatch, Backend, Ticket};
use crate::config::ReplicaSync;
use crate::names::LockNames;

// The scripts that pass a turn on start with the queue's functions (`scripts/queue.lua`).
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/queue.lua"),
        include_str!("scripts/acquire.lua")
    ))
});
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/renew.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/queue.lua"),
        include_str!("scripts/release.lua")
    ))
});
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/queue.lua"),
        include_str!("scripts/leave.lua")
    ))
});
static FORCE_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/force_release.lua")));
// The variants for a lock with rdlock 1.x compatibility: the same scripts plus the 1.x
// key as the last `KEYS` entry. Separate scripts, so that a lock without it sends
// exactly what it did before and never touches a `/rdlock/` key.
static ACQUIRE_V1: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/queue.lua"),
        include_str!("scripts/acquire_v1.lua")
    ))
});
static RENEW_V1: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/renew_v1.lua")));
static RELEASE_V1: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release_v1.lua")));
static FORCE_RELEASE_V1: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/force_release_v1.lua")));

/// `plain`, or its 1.x variant `v1` when the lock has 1.x compatibility; the 1.x key
/// is added as the last key by [`v1_key`].
fn pick(names: &LockNames, plain: &'static Script, v1: &'static Script) -> &'static Script {
    if names.v1.is_some() {
        v1
    } else {
        plain
    }
}

/// Appends the 1.x key, when the lock has one, after the other keys.
fn v1_key(invocation: &mut ScriptInvocation<'_>, names: &LockNames) {
    if let Some(v1) = &names.v1 {
        invocation.key(&v1.key);
    }
}

/// Appends the 1.x key when the lock has one, else the queue of waiting processes (the
/// 1.x variants do not queue: see [`crate::queue`]).
fn queue_or_v1_key(invocation: &mut ScriptInvocation<'_>, names: &LockNames) {
    match &names.v1 {
        Some(v1) => invocation.key(&v1.key),
        None => invocation.key(&names.queue),
    };
}

/// What one acquire attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquire {
    /// The key now holds our token; the fencing token of this acquisition.
    Acquired { fence: u64 },
    /// Another owner holds it; its remaining lease, `None` when the key has no expiry.
    Held { pttl: Option<Duration> },
}

/// Sends one script where the lock lives, retiring the connection if the command
/// timed out.
async fn invoke<T: FromRedisValue>(
    conn: &Backend,
    invocation: &ScriptInvocation<'_>,
) -> (Ticket, RedisResult<T>) {
    conn.invoke(invocation).await
}

/// [`invoke`] for renewals and releases, which may run twice (see
/// [`Backend::invoke_idempotent`]).
async fn invoke_idempotent<T: FromRedisValue>(
    conn: &Backend,
    invocation: &ScriptInvocation<'_>,
) -> (Ticket, RedisResult<T>, Option<redis::RedisError>) {
    conn.invoke_idempotent(invocation).await
}

/// Checks a script's echo of `token`; a wrong echo retires the connection it came on.
fn echoed(conn: &Backend, lease: &Ticket, echo: &str, token: &str) -> RedisResult<()> {
    if echo == token {
        Ok(())
    } else {
        // Never expected (redis-rs pairs replies with requests, redirections included);
        // logged so that a desynchronised connection is visible, and so that tests can
        // count them (tests/cluster_review.rs, under slot migrations). No token here.
        tracing::error!("a reply did not echo its request's token: connection retired");
        conn.check(*lease, Err(mismatch()))
    }
}

pub(crate) async fn acquire(
    conn: &Backend,
    names: &LockNames,
    token: &str,
    lease_ms: u64,
    owner: &str,
    queue: Queueing<'_>,
) -> RedisResult<Acquire> {
    if let Backend::Redlock(redlock) = conn {
        return redlock.acquire(names, token, lease_ms, owner).await;
    }
    let mut invocation = pick(names, &ACQUIRE, &ACQUIRE_V1).prepare_invoke();
    acquire_args(&mut invocation, names, token, lease_ms, owner, queue);
    let (lease, reply) = invoke(conn, &invocation).await;
    let (ok, value, echo): (i64, i64, String) = reply?;
    echoed(conn, &lease, &echo, token)?;
    Ok(acquire_outcome(ok, value))
}

/// [`acquire`] followed, when it acquired, by `WAIT replicas timeout` on the same
/// connection (`WAIT` counts the replicas that have the writes of *its* connection),
/// one of the backend's sync connections: `WAIT` blocks the connection it is sent on.
/// Also returns how many replicas acknowledged an acquisition.
pub(crate) async fn acquire_synced(
    conn: &Backend,
    sync: ReplicaSync,
    names: &LockNames,
    token: &str,
    lease_ms: u64,
    owner: &str,
    queue: Queueing<'_>,
) -> RedisResult<(Acquire, Option<u32>)> {
    let Some(pooled) = conn.sync_connection().await else {
        // No sync connections on this backend (refused when connecting).
        return acquire(conn, names, token, lease_ms, owner, queue)
            .await
            .map(|a| (a, None));
    };
    let (generation, mut sync_conn) = pooled?;
    let mut invocation = pick(names, &ACQUIRE, &ACQUIRE_V1).prepare_invoke();
    acquire_args(&mut invocation, names, token, lease_ms, owner, queue);
    let (ok, value, echo): (i64, i64, String) = invocation.invoke_async(&mut sync_conn).await?;
    if echo != token {
        // The connection is dropped (not given back): its replies are out of step.
        return Err(mismatch());
    }
    let outcome = acquire_outcome(ok, value);
    let acked = match outcome {
        Acquire::Acquired { .. } => {
            let timeout_ms = u64::try_from(sync.timeout.as_millis()).unwrap_or(u64::MAX);
            let acked: i64 = redis::cmd("WAIT")
                .arg(sync.replicas)
                .arg(timeout_ms)
                .query_async(&mut sync_conn)
                .await?;
            Some(u32::try_from(acked).unwrap_or(0))
        }
        Acquire::Held { .. } => None,
    };
    if let Some(pool) = conn.sync_pool() {
        pool.put(generation, sync_conn);
    }
    Ok((outcome, acked))
}

/// How an acquire attempt deals with the queue of waiting processes (see
/// [`crate::queue`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Queueing<'a> {
    /// The caller's process id: a failed attempt queues it, and a turn reserved for it
    /// is taken. `""` for an attempt that must not queue (`try_lock`).
    pub(crate) process: &'a str,
    /// The process may be in the queue: a success takes it out.
    pub(crate) queued: bool,
}

/// The keys and arguments of `scripts/acquire.lua` (or its 1.x variant, which takes
/// the waiters marker and the 1.x key before the queue).
fn acquire_args(
    invocation: &mut ScriptInvocation<'_>,
    names: &LockNames,
    token: &str,
    lease_ms: u64,
    owner: &str,
    queue: Queueing<'_>,
) {
    invocation
        .key(&names.key)
        .key(&names.fence)
        .key(&names.owner);
    match &names.v1 {
        Some(v1) => invocation
            .key(&names.waiters)
            .key(&v1.key)
            .key(&names.queue),
        None => invocation.key(&names.queue),
    };
    invocation
        .arg(token)
        .arg(lease_ms)
        .arg(owner)
        .arg(unix_ms_now())
        .arg(queue.process)
        .arg(if queue.queued { "1" } else { "0" })
        .arg(&names.release_channel);
}

/// The owner record's acquisition time: unix ms by this machine's clock (a clock set
/// before 1970 gives 0, "unknown", as a foreign record does).
///
/// The client's clock, not the server's `TIME`: one command less per acquisition, and
/// the record's format is unchanged, so every rdlock 2.x reads it alike. The time is
/// informational (shown by `holder()` and `rdlock inspect`); no lease depends on it.
fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The acquire script's reply: `ok` 1 with the fence, or 0 with the holder's PTTL.
fn acquire_outcome(ok: i64, value: i64) -> Acquire {
    if ok == 1 {
        // INCR starts at 1 and can only go up; a negative value would need someone to
        // have written the fence key by hand.
        Acquire::Acquired {
            fence: u64::try_from(value).unwrap_or(0),
        }
    } else {
        // PTTL is -1 for a key without expiry (not written by rdlock).
        Acquire::Held {
            pttl: match value {
                v if v < 0 => None,
                v => Some(Duration::from_millis(v.unsigned_abs())),
            },
        }
    }
}

/// Extends the lease if the key still holds `token`; `Ok(false)` when it does not.
pub(crate) async fn renew(
    conn: &Backend,
    names: &LockNames,
    token: &str,
    lease_ms: u64,
) -> RedisResult<bool> {
    if let Backend::Redlock(redlock) = conn {
        return redlock.renew(names, token, lease_ms).await;
    }
    // A retry that finds the key not ours means it is lost: a first attempt that ran
    // would have left it ours.
    let mut invocation = pick(names, &RENEW, &RENEW_V1).prepare_invoke();
    invocation
        .key(&names.key)
        .key(&names.owner)
        .key(&names.waiters);
    queue_or_v1_key(&mut invocation, names);
    invocation.arg(token).arg(lease_ms);
    let (lease, reply, _) = invoke_idempotent(conn, &invocation).await;
    // A nil reply means "not ours": if it was meant for another request, the guard
    // reports a loss it did not have, which is safe.
    match reply? {
        None::<String> => Ok(false),
        Some(echo) => echoed(conn, &lease, &echo, token).map(|()| true),
    }
}

/// Deletes the key if it still holds `token`, publishing the release when a waiter
/// marked itself (see `scripts/release.lua`); `Ok(false)` when it does not (expired,
/// taken over, or already released).
pub(crate) async fn release(conn: &Backend, names: &LockNames, token: &str) -> RedisResult<bool> {
    if let Backend::Redlock(redlock) = conn {
        return redlock.release(names, token).await;
    }
    let mut invocation = pick(names, &RELEASE, &RELEASE_V1).prepare_invoke();
    invocation
        .key(&names.key)
        .key(&names.owner)
        .key(&names.waiters);
    queue_or_v1_key(&mut invocation, names);
    invocation
        .arg(token)
        .arg(&names.release_channel)
        .arg(crate::queue::reservation_ms());
    let (lease, reply, first_attempt) = invoke_idempotent(conn, &invocation).await;
    match reply? {
        // A retry after a timed-out first attempt: that attempt may have released the
        // key (its reply lost), so "not ours" is no proof of a loss. Reported as the
        // first attempt's error, as without the retry (tests/cluster_review.rs).
        None::<String> => match first_attempt {
            Some(e) => Err(e),
            None => Ok(false),
        },
        Some(echo) => echoed(conn, &lease, &echo, token).map(|()| true),
    }
}

/// Deletes the lock whoever holds it and wakes waiters; `Ok(true)` if it was held.
pub(crate) async fn force_release(conn: &Backend, names: &LockNames) -> RedisResult<bool> {
    if let Backend::Redlock(redlock) = conn {
        return redlock.force_release(names, None).await;
    }
    let mut invocation = pick(names, &FORCE_RELEASE, &FORCE_RELEASE_V1).prepare_invoke();
    invocation
        .key(&names.key)
        .key(&names.owner)
        .key(&names.waiters);
    v1_key(&mut invocation, names);
    invocation.arg(&names.release_channel);
    let (_, reply) = invoke(conn, &invocation).await;
    reply
}

/// As [`force_release`], only while the owner record names the acquisition with fencing
/// token `fence` (0: no owner record); `Ok(false)` otherwise.
pub(crate) async fn force_release_if(
    conn: &Backend,
    names: &LockNames,
    fence: u64,
) -> RedisResult<bool> {
    if let Backend::Redlock(redlock) = conn {
        return redlock.force_release(names, Some(fence)).await;
    }
    let mut invocation = pick(names, &FORCE_RELEASE, &FORCE_RELEASE_V1).prepare_invoke();
    invocation
        .key(&names.key)
        .key(&names.owner)
        .key(&names.waiters);
    v1_key(&mut invocation, names);
    invocation.arg(&names.release_channel).arg(fence);
    let (_, reply) = invoke(conn, &invocation).await;
    reply
}

/// The owner record and remaining lease of a lock, and its fencing counter, in one
/// round trip; with 1.x compatibility, also the PTTL of the 1.x key (`None` without).
pub(crate) async fn inspect(
    conn: &Backend,
    names: &LockNames,
) -> RedisResult<(Option<String>, i64, Option<u64>, Option<i64>)> {
    if let Backend::Redlock(redlock) = conn {
        let (record, pttl, fence) = redlock.inspect(names).await?;
        return Ok((record, pttl, fence, None));
    }
    let mut pipe = redis::pipe();
    pipe.get(&names.owner).pttl(&names.key).get(&names.fence);
    match &names.v1 {
        None => {
            let (record, pttl, fence) = conn.query(&pipe).await?;
            Ok((record, pttl, fence, None))
        }
        Some(v1) => {
            pipe.pttl(&v1.key);
            let (record, pttl, fence, v1_pttl) = conn.query(&pipe).await?;
            Ok((record, pttl, fence, Some(v1_pttl)))
        }
    }
}

static HAND_OFF: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/queue.lua"),
        include_str!("scripts/handoff.lua")
    ))
});

/// What a hand-off script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandOff {
    /// The key is the next holder's, with this fencing token.
    Handed { fence: u64 },
    /// The budget was spent and another process waited: the turn went to it, and the
    /// holder's process queued again (the next holder waits for its turn).
    Yielded,
    /// The budget was spent and waiters that do not queue (1.x compatibility) had
    /// marked themselves: the key was released and they were woken.
    Released,
    /// The key no longer held the holder's token: nothing was written.
    NotOurs,
}

/// Passes the lock from the holder of `token` to a new holder in one script (see
/// [`crate::handoff`]): the key takes `next_token` with `lease_ms`, the fence is
/// incremented and the owner record (`owner`, acquired at `at_ms` on the client's clock)
/// written. With `budget_spent`, the turn goes to the first process in the queue
/// instead, if any, and `process` queues again. Not on Redlock, nor for a lock with 1.x
/// compatibility (the caller checks).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn hand_off(
    conn: &Backend,
    names: &LockNames,
    token: &str,
    next_token: &str,
    lease_ms: u64,
    owner: &str,
    at_ms: u128,
    budget_spent: bool,
    process: &str,
) -> RedisResult<HandOff> {
    let mut invocation = HAND_OFF.prepare_invoke();
    invocation
        .key(&names.key)
        .key(&names.fence)
        .key(&names.owner)
        .key(&names.waiters)
        .key(&names.queue)
        .arg(token)
        .arg(next_token)
        .arg(lease_ms)
        .arg(owner)
        .arg(at_ms.to_string())
        .arg(if budget_spent { "1" } else { "0" })
        .arg(process)
        .arg(&names.release_channel)
        .arg(crate::queue::reservation_ms());
    // Not idempotent (the fence is incremented): never retried.
    let (lease, reply) = invoke(conn, &invocation).await;
    match reply? {
        None::<(i64, String)> => Ok(HandOff::NotOurs),
        Some((fence, echo)) => {
            echoed(conn, &lease, &echo, next_token)?;
            Ok(match fence {
                // Fences start at 1: 0 and -1 are the script's "yielded" and "released".
                0 => HandOff::Yielded,
                f if f < 0 => HandOff::Released,
                f => HandOff::Handed {
                    fence: u64::try_from(f).unwrap_or(0),
                },
            })
        }
    }
}

/// Takes `process` out of the lock's queue and passes a turn reserved for it on (see
/// `scripts/leave.lua`): for a process whose last waiter gave up. Not on Redlock, nor
/// for a lock with 1.x compatibility (they do not queue).
pub(crate) async fn leave(conn: &Backend, names: &LockNames, process: &str) -> RedisResult<()> {
    let mut invocation = LEAVE.prepare_invoke();
    invocation
        .key(&names.key)
        .key(&names.owner)
        .key(&names.waiters)
        .key(&names.queue)
        .arg(process)
        .arg(&names.release_channel)
        .arg(crate::queue::reservation_ms());
    // Idempotent: leaving twice is leaving once.
    let (_, reply, _) = invoke_idempotent::<i64>(conn, &invocation).await;
    reply.map(drop)
}
