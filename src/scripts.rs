//! The Lua scripts that touch a lock, and typed wrappers to call them.
//!
//! Each script is built once (`Script` hashes its source once) and sent with `EVALSHA`,
//! falling back to loading it on `NOSCRIPT` (after `SCRIPT FLUSH` or a restart). All
//! input goes through `KEYS`/`ARGV`; nothing is string-built into the source. The
//! scripts that act for an owner echo its token, and the wrappers check the echo: a
//! reply meant for another request can never pass for a grant, a renewal or a release.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{FromRedisValue, RedisResult, Script, ScriptInvocation};

use crate::backend::{mismatch, Backend, Ticket};
use crate::names::LockNames;

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/acquire.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/renew.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release.lua")));
static FORCE_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/force_release.lua")));

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
        conn.check(*lease, Err(mismatch()))
    }
}

pub(crate) async fn acquire(
    conn: &Backend,
    names: &LockNames,
    token: &str,
    lease_ms: u64,
    owner: &str,
) -> RedisResult<Acquire> {
    if let Backend::Redlock(redlock) = conn {
        return redlock.acquire(names, token, lease_ms, owner).await;
    }
    let (lease, reply) = invoke(
        conn,
        ACQUIRE
            .key(&names.key)
            .key(&names.fence)
            .key(&names.owner)
            .arg(token)
            .arg(lease_ms)
            .arg(owner),
    )
    .await;
    let (ok, value, echo): (i64, i64, String) = reply?;
    echoed(conn, &lease, &echo, token)?;
    Ok(if ok == 1 {
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
    })
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
    let (lease, reply, _) = invoke_idempotent(
        conn,
        RENEW
            .key(&names.key)
            .key(&names.owner)
            .arg(token)
            .arg(lease_ms),
    )
    .await;
    // A nil reply means "not ours": if it was meant for another request, the guard
    // reports a loss it did not have, which is safe.
    match reply? {
        None::<String> => Ok(false),
        Some(echo) => echoed(conn, &lease, &echo, token).map(|()| true),
    }
}

/// Deletes the key and publishes the release if it still holds `token`; `Ok(false)`
/// when it does not (expired, taken over, or already released).
pub(crate) async fn release(conn: &Backend, names: &LockNames, token: &str) -> RedisResult<bool> {
    if let Backend::Redlock(redlock) = conn {
        return redlock.release(names, token).await;
    }
    let (lease, reply, first_attempt) = invoke_idempotent(
        conn,
        RELEASE
            .key(&names.key)
            .key(&names.owner)
            .arg(token)
            .arg(&names.release_channel),
    )
    .await;
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
    let (_, reply) = invoke(
        conn,
        FORCE_RELEASE
            .key(&names.key)
            .key(&names.owner)
            .arg(&names.release_channel),
    )
    .await;
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
    let (_, reply) = invoke(
        conn,
        FORCE_RELEASE
            .key(&names.key)
            .key(&names.owner)
            .arg(&names.release_channel)
            .arg(fence),
    )
    .await;
    reply
}

/// The owner record and remaining lease of a lock, and its fencing counter, in one
/// round trip.
pub(crate) async fn inspect(
    conn: &Backend,
    names: &LockNames,
) -> RedisResult<(Option<String>, i64, Option<u64>)> {
    if let Backend::Redlock(redlock) = conn {
        return redlock.inspect(names).await;
    }
    conn.query(
        redis::pipe()
            .get(&names.owner)
            .pttl(&names.key)
            .get(&names.fence),
    )
    .await
}
