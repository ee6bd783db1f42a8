//! The three Lua scripts that touch a lock key, and typed wrappers to call them.
//!
//! Each script is built once (`Script` hashes its source once) and sent with `EVALSHA`,
//! falling back to `EVAL`+load on `NOSCRIPT` (after `SCRIPT FLUSH` or a restart). All
//! input goes through `KEYS`/`ARGV`; nothing is string-built into the source.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

use crate::names::LockNames;

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/acquire.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/renew.lua")));
static FORCE_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/force_release.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release.lua")));

/// What one acquire attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquire {
    /// The key now holds our token; the fencing token of this acquisition.
    Acquired { fence: u64 },
    /// Another owner holds it; its remaining lease, `None` when the key has no expiry.
    Held { pttl: Option<Duration> },
}

pub(crate) async fn acquire(
    conn: &mut ConnectionManager,
    names: &LockNames,
    token: &str,
    lease_ms: u64,
    owner: &str,
) -> RedisResult<Acquire> {
    let (ok, value): (i64, i64) = ACQUIRE
        .key(&names.key)
        .key(&names.fence)
        .key(&names.owner)
        .arg(token)
        .arg(lease_ms)
        .arg(owner)
        .invoke_async(conn)
        .await?;
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
    conn: &mut ConnectionManager,
    names: &LockNames,
    token: &str,
    lease_ms: u64,
) -> RedisResult<bool> {
    RENEW
        .key(&names.key)
        .key(&names.owner)
        .arg(token)
        .arg(lease_ms)
        .invoke_async(conn)
        .await
}

/// Deletes the key and publishes the release if it still holds `token`; `Ok(false)`
/// when it does not (expired, taken over, or already released).
pub(crate) async fn release(
    conn: &mut ConnectionManager,
    names: &LockNames,
    token: &str,
) -> RedisResult<bool> {
    RELEASE
        .key(&names.key)
        .key(&names.owner)
        .arg(token)
        .arg(&names.release_channel)
        .invoke_async(conn)
        .await
}

/// Deletes the lock whoever holds it and wakes waiters; `Ok(true)` if it was held.
pub(crate) async fn force_release(
    conn: &mut ConnectionManager,
    names: &LockNames,
) -> RedisResult<bool> {
    FORCE_RELEASE
        .key(&names.key)
        .key(&names.owner)
        .arg(&names.release_channel)
        .invoke_async(conn)
        .await
}

/// The owner record and remaining lease of a lock, and its fencing counter, in one
/// round trip.
pub(crate) async fn inspect(
    conn: &mut ConnectionManager,
    names: &LockNames,
) -> RedisResult<(Option<String>, i64, Option<u64>)> {
    redis::pipe()
        .get(&names.owner)
        .pttl(&names.key)
        .get(&names.fence)
        .query_async(conn)
        .await
}
