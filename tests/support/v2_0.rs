//! The single-server scripts of rdlock 2.0 as released (before the waiters marker and
//! the client-clock owner record), verbatim: a process of an earlier 2.x build in a
//! mixed fleet runs these, so tests check that they and today's scripts interoperate,
//! and the benchmark measures them next to today's.

use std::sync::LazyLock;

use redis::Script;

/// KEYS lock, fence, owner; ARGV token, lease ms, "<pid>\n<host>\n<label>".
pub static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("v2_0/acquire.lua")));
/// KEYS lock, owner; ARGV token, release channel. Publishes on every release.
pub static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("v2_0/release.lua")));
/// KEYS lock, owner; ARGV token, lease ms.
pub static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("v2_0/renew.lua")));
