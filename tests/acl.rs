//! Least privilege: rdlock works as a Redis ACL user that may run only what it needs,
//! on its own keys and channels, and reports a typed error — never a panic or a hang —
//! when a permission it needs is missing.
//!
//! The minimal user (Redis 7.0; commands run inside scripts are checked too):
//!
//! ```text
//! ACL SETUSER locker on >SECRET resetkeys ~rdlock:* resetchannels &rdlock:* -@all
//!     +evalsha +script|load +get +set +pexpire +pttl +incr +del +publish
//!     +lpop +rpush +lpos +lrem +lrange +ping +subscribe +unsubscribe
//! ```
//!
//! (`+lpop +rpush +lpos +lrem +lrange` since the queue of waiting processes, which is a
//! list: every release pops it.)
//!
//! `+time` is no longer needed on one server (the owner record's time comes from the
//! client's clock); rdlock 2.0's acquire script and Redlock's fencing script still call
//! `TIME`, so a fleet that still runs 2.0 processes, or Redlock, keeps it.
//!
//! Optional: `+config|get` (reads `notify-keyspace-events` once, at start; without it
//! the manager assumes keyspace events are off), `+type` (only to tell a foreign key
//! without expiry at a lock's name from a wrong-typed one; without it that case is an
//! ACL error instead of "held"/`WRONGTYPE`), `+client|setinfo` (Redis 7.2+: redis-rs
//! names the connection and ignores a refusal), and — only when the server has
//! keyspace events on *and* `config|get` is allowed — the channel pattern
//! `&__keyspace@*__:rdlock:*`.
//! `EVAL` is never sent: on `NOSCRIPT` redis-rs runs `SCRIPT LOAD` and `EVALSHA` again.
//! `+select` is needed only for a database other than 0.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::{RedisServer, ServerConfig};

/// The commands of the minimal user, in the order of the docs above.
const NEEDED: &[&str] = &[
    "+evalsha",
    "+script|load",
    "+get",
    "+set",
    "+pexpire",
    "+pttl",
    "+incr",
    "+del",
    "+publish",
    "+lpop",
    "+rpush",
    "+lpos",
    "+lrem",
    "+lrange",
    "+ping",
    "+subscribe",
    "+unsubscribe",
];
/// Every operation of a test is bounded by this: a refusal must never become a hang.
const BOUND: Duration = Duration::from_secs(20);
/// The lease of the lock a waiter waits for in [`workload`]: a waiter that missed the
/// release message waits for it to run out, far beyond [`WOKEN`].
const WAKE_LEASE: Duration = Duration::from_secs(20);
/// From a release to the waiter's acquisition, when it is woken by the release message:
/// a few round trips (about 2 ms on a quiet machine), with room for a busy one.
const WOKEN: Duration = Duration::from_secs(2);

/// Creates (or replaces) `user` with password `secret`, the given command rules, keys
/// and channels, and returns the URL to connect as that user.
async fn acl_user(
    server: &RedisServer,
    user: &str,
    commands: &[&str],
    keys: &str,
    channels: &[&str],
) -> String {
    let mut admin = server.conn().await;
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(user)
        .arg("reset")
        .arg("on")
        .arg(">secret")
        .arg("resetkeys")
        .arg(keys)
        .arg("resetchannels");
    for c in channels {
        cmd.arg(*c);
    }
    cmd.arg("-@all");
    for c in commands {
        cmd.arg(*c);
    }
    let () = cmd.query_async(&mut admin).await.expect("ACL SETUSER");
    format!("redis://{user}:secret@127.0.0.1:{}/", server.port())
}

/// What the ACL log says was refused: `(object, reason)` pairs, e.g. `("config|get",
/// "command")`.
async fn refusals(server: &RedisServer) -> Vec<(String, String)> {
    let mut admin = server.conn().await;
    let entries: Vec<HashMap<String, redis::Value>> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut admin)
        .await
        .expect("ACL LOG");
    let text = |v: Option<&redis::Value>| match v {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        other => format!("{other:?}"),
    };
    let mut out: Vec<(String, String)> = entries
        .iter()
        .map(|e| (text(e.get("object")), text(e.get("reason"))))
        .collect();
    out.sort();
    out.dedup();
    out
}

async fn reset_acl_log(server: &RedisServer) {
    let mut admin = server.conn().await;
    let () = redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query_async(&mut admin)
        .await
        .unwrap();
}

/// Makes the next script call find no cached script (`NOSCRIPT` → `SCRIPT LOAD`).
async fn flush_scripts(server: &RedisServer) {
    let mut admin = server.conn().await;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
}

/// What one run of [`workload`] measured.
#[derive(Debug)]
struct Run {
    /// From the holder's release to the waiter's acquisition.
    wake: Duration,
}

/// Every path the library has, in order: connect (PING, CONFIG GET), acquire through
/// `NOSCRIPT` (SCRIPT LOAD, EVALSHA: PTTL, SET, INCR, TIME), a contended `try_lock`
/// (PTTL), a waiter subscribed to the release channel (SUBSCRIBE), renewals by the
/// watchdog (GET, PEXPIRE) of another lock meanwhile, release (GET, DEL, PUBLISH), the
/// waiter's acquisition with a larger fence, a drop-release, the 1.x `BasicLock`,
/// `holder`/`last_fencing_token` (GET, PTTL) and `force_release` (DEL, PUBLISH), all on
/// lock `id` (and `{id}-renewed`). Returns the first error.
///
/// The lock the waiter waits for has a lease of `wake_lease`: with a long one, a waiter
/// that is not woken by the release message would wait it out (its PTTL), far beyond
/// the bounds on [`Run::wake`].
async fn workload(
    server: &RedisServer,
    url: &str,
    id: &str,
    wake_lease: Duration,
) -> Result<Run, RdLockError> {
    flush_scripts(server).await;
    let a = RdLockConnectionManager::new(url).await?;
    let b = RdLockConnectionManager::new(url).await?;
    let lease = Duration::from_millis(300);
    let guard = a.new_lock(id).with_lease(wake_lease).try_lock().await?;
    match b.new_lock(id).try_lock().await {
        Err(RdLockError::LockUnavailable) => {}
        Err(e) => return Err(e),
        Ok(_) => panic!("two holders"),
    }
    // Aborted if we return early, so that it cannot outlive this run.
    let mut waiting = AbortOnDrop({
        let lock = b.new_lock(id).with_lease(lease);
        tokio::spawn(async move {
            let g = lock.lock_timeout(Duration::from_secs(10)).await;
            (Instant::now(), g)
        })
    });
    // Meanwhile, another lock is held for more than two leases: the watchdog must renew.
    let renewed = a
        .new_lock(&format!("{id}-renewed"))
        .with_lease(lease)
        .try_lock()
        .await?;
    tokio::select! {
        _ = tokio::time::sleep(lease * 2 + lease / 2) => {}
        _ = renewed.lost() => return Err(RdLockError::LeaseLost),
    }
    if !renewed.is_held() {
        return Err(RdLockError::LeaseLost);
    }
    renewed.release().await?;
    let first = guard.fencing_token();
    let released = Instant::now();
    guard.release().await?;
    let (acquired, next) = (&mut waiting.0).await.unwrap();
    let next = next?;
    assert!(next.fencing_token() > first);
    // Dropped, not released: the background release must also be allowed.
    drop(next);
    let fresh = a
        .new_lock(id)
        .with_lease(lease)
        .lock_timeout(Duration::from_secs(5))
        .await?;
    fresh.release().await?;
    // Without the 1.x key (`/rdlock/<id>/.lock`, outside `~rdlock:*`): the minimal user
    // is for a fleet without rdlock 1.x processes (tests/v1_compat.rs has the user
    // for a rolling upgrade).
    let mut basic = a
        .new_basic_lock(&format!("{id}-basic"), 1)
        .without_v1_compat();
    basic.lock().await?;
    basic.release().await?;
    // The inspection and administration calls.
    let held = a.new_lock(id).lock().await?;
    let holder = a.new_lock(id).holder().await?;
    assert!(holder.is_some_and(|h| h.fencing_token == held.fencing_token()));
    assert_eq!(
        a.new_lock(id).last_fencing_token().await?,
        held.fencing_token()
    );
    assert!(b.new_lock(id).force_release().await?);
    Ok(Run {
        wake: acquired - released,
    })
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {BOUND:?}"))
}

/// `true` for the refusal of an ACL: `NOPERM`, or the error of a script whose command
/// or key the user may not use.
fn is_acl_refusal(e: &RdLockError) -> bool {
    let RdLockError::RedisError(e) = e else {
        return false;
    };
    let text = format!("{:?} {} {:?}", e.code(), e, e.detail()).to_lowercase();
    // NOPERM for the command itself; scripts report the refusal of a command or
    // channel they use as an ERR naming the user ("The user executing the script
    // can't run this command ..." / "... can't publish to the channel ..."), or on
    // Valkey 9 "ACL failure in script: No permissions to access a channel".
    text.contains("noperm")
        || text.contains("no permissions")
        || text.contains("the user executing the script can't")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_works_as_a_least_privilege_user() {
    let server = RedisServer::start();
    let url = acl_user(&server, "locker", NEEDED, "~rdlock:*", &["&rdlock:*"]).await;
    reset_acl_log(&server).await;
    let run = bounded("workload", workload(&server, &url, "acl", WAKE_LEASE))
        .await
        .expect("the minimal user can do everything");
    println!(
        "minimal user: waiter woken {:?} after the release",
        run.wake
    );
    assert!(
        run.wake < WOKEN,
        "woken by the release message, not the {WAKE_LEASE:?} lease: {:?}",
        run.wake
    );
    // The only refusals are of the optional commands.
    let refused = refusals(&server).await;
    println!("refused (optional): {refused:?}");
    for (object, reason) in &refused {
        assert!(
            matches!(object.as_str(), "config|get" | "client|setinfo"),
            "refused {object} ({reason}): the minimal set is missing it"
        );
    }
    let manager = RdLockConnectionManager::new(url.as_str()).await.unwrap();
    assert!(
        !manager.keyspace_events(),
        "CONFIG GET is denied: assumed off"
    );
}

/// Without `CONFIG`, on a server that has keyspace events on, the manager still starts
/// (assuming they are off) and a waiter is woken by a release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_denied_on_a_keyspace_server_still_works() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let url = acl_user(&server, "locker", NEEDED, "~rdlock:*", &["&rdlock:*"]).await;
    let run = bounded("workload", workload(&server, &url, "acl", WAKE_LEASE))
        .await
        .unwrap();
    assert!(run.wake < WOKEN, "{run:?}");
    let manager = RdLockConnectionManager::new(url.as_str()).await.unwrap();
    assert!(!manager.keyspace_events());
}

/// With `config|get` and the keyspace channels allowed, keyspace events are used: a
/// holder that vanished (its key expires) wakes the waiter at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_events_work_with_their_channel_allowed() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let mut commands = NEEDED.to_vec();
    commands.push("+config|get");
    let url = acl_user(
        &server,
        "locker",
        &commands,
        "~rdlock:*",
        &["&rdlock:*", "&__keyspace@*__:rdlock:*"],
    )
    .await;
    reset_acl_log(&server).await;
    let manager = RdLockConnectionManager::new(url.as_str()).await.unwrap();
    assert!(manager.keyspace_events());
    bounded("workload", workload(&server, &url, "acl", WAKE_LEASE))
        .await
        .unwrap();
    let refused = refusals(&server).await;
    assert!(
        refused.iter().all(|(object, _)| object == "client|setinfo"),
        "{refused:?}"
    );
}

/// `config|get` allowed on a keyspace server, but not the keyspace channel: the
/// subscriber's SUBSCRIBE (release and keyspace channel together) is refused. Waiters
/// must still be woken by releases, and the subscriber must not reconnect in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_channel_denied_still_wakes_waiters_on_release() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let mut commands = NEEDED.to_vec();
    commands.push("+config|get");
    let url = acl_user(&server, "locker", &commands, "~rdlock:*", &["&rdlock:*"]).await;
    let connections_before = connections_received(&server).await;
    let run = bounded("workload", workload(&server, &url, "acl", WAKE_LEASE)).await;
    let churn = connections_received(&server).await - connections_before;
    println!("keyspace channel denied: {run:?}, {churn} connections opened");
    let run = run.expect("works without the keyspace channel");
    assert!(
        run.wake < WOKEN,
        "woken by the release message, not the {WAKE_LEASE:?} lease: {:?} ({churn} connections opened)",
        run.wake
    );
    // Two managers with two connections each, plus the test's own.
    assert!(churn <= 8, "{churn} connections opened");
}

/// `total_connections_received` of the server.
async fn connections_received(server: &RedisServer) -> u64 {
    let mut admin = server.conn().await;
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut admin)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Dropping any one needed command gives a typed error (or, for the subscriber's
/// commands, a slower but working wake-up), never a panic or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_missing_command_is_a_typed_error() {
    let server = RedisServer::start();
    let mut report = Vec::new();
    for missing in NEEDED {
        let commands: Vec<&str> = NEEDED.iter().copied().filter(|c| c != missing).collect();
        let user = format!(
            "without-{}",
            missing.trim_start_matches('+').replace('|', "-")
        );
        let url = acl_user(&server, &user, &commands, "~rdlock:*", &["&rdlock:*"]).await;
        // Leftovers of the previous round must not decide this one.
        let mut admin = server.conn().await;
        let () = redis::cmd("FLUSHALL")
            .query_async(&mut admin)
            .await
            .unwrap();
        // Without the subscriber's commands, waiters are woken by the holder's PTTL
        // alone: a short lease, so that the fallback is seen to work.
        let wake_lease = match *missing {
            "+subscribe" | "+unsubscribe" => Duration::from_millis(300),
            _ => WAKE_LEASE,
        };
        let started = Instant::now();
        let outcome = bounded(missing, workload(&server, &url, &user, wake_lease)).await;
        let took = started.elapsed();
        report.push(format!("-{}: {outcome:?} in {took:?}", &missing[1..]));
        match *missing {
            // The subscriber's commands: waiters fall back to the holder's PTTL.
            "+subscribe" | "+unsubscribe" => {
                let run = outcome.unwrap_or_else(|e| panic!("{missing}: {e:?}"));
                // Within the 300 ms PTTL and a busy machine's delay; a waiter that
                // neither gets the message nor retries at the PTTL hangs (10 s timeout).
                assert!(run.wake < WOKEN, "{missing}: {run:?}");
            }
            // Anything else: the refusal itself, or — when only the watchdog's renewal
            // uses the command — the guard reporting the loss (the library logs why).
            _ => {
                let err = outcome.expect_err(missing);
                assert!(
                    is_acl_refusal(&err) || err == RdLockError::LeaseLost,
                    "{missing}: not a typed ACL refusal: {err:?}"
                );
            }
        }
    }
    println!("{}", report.join("\n"));
}

/// `TYPE` is used only for a key without expiry at a lock's name (written by something
/// else): with it, such a key is "held" (or `WRONGTYPE` for a non-string); without it,
/// an ACL refusal. Both are typed errors; neither is a guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_is_needed_only_for_foreign_keys_without_expiry() {
    let server = RedisServer::start();
    let mut admin = server.conn().await;
    let () = redis::cmd("SET")
        .arg("rdlock:{foreign}:lock")
        .arg("not-a-token")
        .query_async(&mut admin)
        .await
        .unwrap();
    let () = redis::cmd("RPUSH")
        .arg("rdlock:{list}:lock")
        .arg("x")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut with_type = NEEDED.to_vec();
    with_type.push("+type");
    for (commands, name) in [(NEEDED.to_vec(), "without"), (with_type, "with")] {
        let url = acl_user(&server, "locker", &commands, "~rdlock:*", &["&rdlock:*"]).await;
        let manager = RdLockConnectionManager::new(url.as_str()).await.unwrap();
        for id in ["foreign", "list"] {
            let outcome = bounded(id, manager.new_lock(id).try_lock()).await;
            println!("{name} +type, {id}: {:?}", outcome.as_ref().err());
            let err = outcome.expect_err(id);
            match (name, id) {
                ("with", "foreign") => assert_eq!(err, RdLockError::LockUnavailable),
                ("with", _) => assert!(format!("{err:?}").contains("WRONGTYPE"), "{err:?}"),
                _ => assert!(is_acl_refusal(&err), "{err:?}"),
            }
        }
    }
}

/// Keys or channels outside the user's patterns are refused with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_channels_outside_the_patterns_are_refused() {
    let server = RedisServer::start();
    for (what, keys, channels) in [
        ("keys outside ~other:*", "~other:*", vec!["&rdlock:*"]),
        ("release channel not allowed", "~rdlock:*", vec!["&other:*"]),
    ] {
        let url = acl_user(&server, "narrow", NEEDED, keys, &channels).await;
        let mut admin = server.conn().await;
        let () = redis::cmd("FLUSHALL")
            .query_async(&mut admin)
            .await
            .unwrap();
        // A short lease: what a refused release leaves behind must expire soon.
        let lease = Duration::from_millis(300);
        let outcome = bounded(what, workload(&server, &url, "acl", lease)).await;
        println!("{what}: {outcome:?}");
        let err = outcome.expect_err(what);
        assert!(is_acl_refusal(&err), "{what}: {err:?}");
        // Nothing is left held by a refused release (keys) — the lease is the bound. One
        // PTTL, not GET then PTTL: the key may expire between the two (-2, gone, is fine).
        let pttl: i64 = redis::cmd("PTTL")
            .arg("rdlock:{acl}:lock")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(
            pttl == -2 || (pttl > 0 && pttl <= 300),
            "{what}: left without expiry: {pttl}"
        );
    }
}
