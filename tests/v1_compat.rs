//! Rolling upgrade from rdlock 1.x (issue 15): 2.x locks with 1.x compatibility and the
//! published rdlock 1.0.3 (`rdlock_v1`) exclude each other on one id, both ways, and
//! each wakes the other's waiters on release.
//!
//! Each test starts its own server with `notify-keyspace-events KA` (1.x refuses to
//! start without it), except the one that shows the fallback without keyspace events.
//! "Within a couple of seconds" is checked against 1.x TTLs of an hour: only a wake-up
//! can explain it, never a TTL running out.
//!
//! Also: a lock without compatibility writes no `/rdlock/` key and runs exactly the
//! commands it ran before (`INFO commandstats`); compatibility costs no round trip;
//! compatibility on a cluster is a typed error; the least-privilege ACL user for an
//! upgrade; and a mixed fleet (1.x `BasicLock`, 2.x `Lock` with renewals, 2.x
//! `BasicLock`) on one id with no overlapping critical section (an in-process
//! exclusion count, without faults: not the multi-process safety checker). The fleet
//! run's seed is printed (`RDLOCK_SEED`).

mod support;

use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use rdlock_v1::errors::RdLockError as V1Error;
use support::{get, wait_until, RedisServer, ServerConfig};

/// A 1.x TTL that never runs out during a test.
const V1_TTL: u64 = 3600;
/// How soon after a release the other side's waiter must hold the lock.
const WAKE_BOUND: Duration = Duration::from_secs(3);
/// Bound for conditions that should hold within milliseconds.
const BOUND: Duration = Duration::from_secs(20);

fn v1_key(id: &str) -> String {
    format!("/rdlock/{id}/.lock")
}

async fn managers(
    server: &RedisServer,
) -> (RdLockConnectionManager, rdlock_v1::RdLockConnectionManager) {
    let v2 = RdLockConnectionManager::new(server.url()).await.unwrap();
    assert!(v2.keyspace_events());
    let v1 = rdlock_v1::RdLockConnectionManager::new(server.url())
        .await
        .unwrap();
    (v2, v1)
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

async fn keys(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .unwrap()
}

/// Waits until some client is subscribed to `channel` (a 2.x waiter's subscriber).
async fn wait_subscribed(server: &RedisServer, channel: &str) {
    let conn = server.conn().await;
    wait_until(BOUND, &format!("a subscriber on {channel}"), || {
        let mut conn = conn.clone();
        let channel = channel.to_owned();
        async move {
            let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .unwrap();
            counts.first().is_some_and(|(_, n)| *n > 0)
        }
    })
    .await;
}

/// Waits until a 1.x waiter has its pattern subscription (`PSUBSCRIBE *<key>*`).
async fn wait_v1_waiter(server: &RedisServer) {
    let conn = server.conn().await;
    wait_until(BOUND, "a 1.x waiter's pattern subscription", || {
        let mut conn = conn.clone();
        async move {
            let n: i64 = redis::cmd("PUBSUB")
                .arg("NUMPAT")
                .query_async(&mut conn)
                .await
                .unwrap();
            n > 0
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Lock::with_v1_compat against 1.x BasicLock

#[tokio::test]
async fn a_v1_holder_blocks_a_compat_lock_whose_waiter_gets_it_after_the_v1_release() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let (v2, v1) = managers(&server).await;
    let mut holder = v1.new_basic_lock("job", V1_TTL);
    holder.try_lock().await.unwrap();

    let lock = v2.new_lock("job").with_v1_compat();
    assert_eq!(lock.v1_key(), Some("/rdlock/job/.lock"));
    assert_eq!(
        lock.try_lock().await.unwrap_err(),
        RdLockError::LockUnavailable
    );
    let info = lock
        .holder()
        .await
        .unwrap()
        .expect("the 1.x holder is shown");
    assert_eq!((info.pid, info.fencing_token), (0, 0));
    assert!(info.remaining_lease.unwrap() > Duration::from_secs(V1_TTL - 60));

    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move {
            let guard = lock.lock_timeout(Duration::from_secs(120)).await;
            (guard, Instant::now())
        })
    };
    wait_subscribed(&server, "__keyspace@0__:/rdlock/job/.lock").await;
    let released = Instant::now();
    holder.release().await.unwrap();
    let (guard, acquired) = waiter.await.unwrap();
    let guard = guard.unwrap();
    let after = acquired.duration_since(released);
    println!("compat waiter acquired {after:?} after the 1.x release");
    assert!(
        after < WAKE_BOUND,
        "acquired {after:?} after the 1.x release"
    );

    // Now ours, in both keys: 1.x is shut out.
    let mut other = v1.new_basic_lock("job", V1_TTL);
    assert_eq!(other.try_lock().await, Err(V1Error::LockUnavailable));
    guard.release().await.unwrap();
    let mut conn = server.conn().await;
    assert!(keys(&mut conn, "*")
        .await
        .iter()
        .all(|k| !k.ends_with(":lock") && !k.starts_with("/rdlock/")));
}

#[tokio::test]
async fn a_compat_holder_blocks_v1_across_its_renewals_and_a_v1_waiter_gets_it_after_release() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let (v2, v1) = managers(&server).await;
    let lease = Duration::from_millis(600);
    let lock = v2.new_lock("job").with_v1_compat().with_lease(lease);
    let guard = lock.try_lock().await.unwrap();
    let mut conn = server.conn().await;

    // Held for five leases: without renewals of both keys, the 1.x key would have
    // expired four times over.
    let mut v1_lock = v1.new_basic_lock("job", V1_TTL);
    let held_since = Instant::now();
    let mut tries = 0;
    while held_since.elapsed() < lease * 5 {
        assert_eq!(v1_lock.try_lock().await, Err(V1Error::LockUnavailable));
        tries += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(guard.is_held());
    let left = pttl(&mut conn, &v1_key("job")).await;
    assert!(left > 0 && left <= 600, "1.x key's PTTL {left}");
    println!(
        "1.x refused {tries} times over {:?} (lease {lease:?})",
        held_since.elapsed()
    );

    let waiter = tokio::spawn(async move {
        let mut waiting = v1_lock;
        let outcome = waiting.lock_timeout(Duration::from_secs(120)).await;
        (outcome, Instant::now(), waiting)
    });
    wait_v1_waiter(&server).await;
    let released = Instant::now();
    guard.release().await.unwrap();
    let (outcome, acquired, mut v1_lock) = waiter.await.unwrap();
    outcome.unwrap();
    let after = acquired.duration_since(released);
    println!("1.x waiter acquired {after:?} after our release");
    assert!(after < WAKE_BOUND, "acquired {after:?} after our release");
    assert_eq!(get(&mut conn, &v1_key("job")).await.as_deref(), Some("V1"));
    // And 1.x now blocks us.
    assert_eq!(
        lock.try_lock().await.unwrap_err(),
        RdLockError::LockUnavailable
    );
    v1_lock.release().await.unwrap();
}

// ---------------------------------------------------------------------------------
// 2.x BasicLock (compatible by default) against 1.x BasicLock

#[tokio::test]
async fn a_v1_basic_lock_blocks_a_v2_basic_lock_whose_waiter_gets_it_after_the_v1_release() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let (v2, v1) = managers(&server).await;
    let mut holder = v1.new_basic_lock("basic", V1_TTL);
    holder.try_lock().await.unwrap();

    let mut basic = v2.new_basic_lock("basic", V1_TTL);
    assert_eq!(basic.v1_key(), Some("/rdlock/basic/.lock"));
    assert_eq!(basic.try_lock().await, Err(RdLockError::LockUnavailable));

    let waiter = tokio::spawn(async move {
        let outcome = basic.lock_timeout(Duration::from_secs(120)).await;
        (outcome, Instant::now(), basic)
    });
    wait_subscribed(&server, "__keyspace@0__:/rdlock/basic/.lock").await;
    let released = Instant::now();
    holder.release().await.unwrap();
    let (outcome, acquired, mut basic) = waiter.await.unwrap();
    outcome.unwrap();
    let after = acquired.duration_since(released);
    println!("2.x BasicLock acquired {after:?} after the 1.x release");
    assert!(
        after < WAKE_BOUND,
        "acquired {after:?} after the 1.x release"
    );
    assert!(basic.is_locked());
    assert_eq!(holder.try_lock().await, Err(V1Error::LockUnavailable));
    basic.release().await.unwrap();
}

#[tokio::test]
async fn a_v2_basic_lock_blocks_v1_and_a_v1_waiter_gets_it_after_the_v2_release() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let (v2, v1) = managers(&server).await;
    let mut basic = v2.new_basic_lock("basic", V1_TTL);
    basic.try_lock().await.unwrap();

    let mut v1_lock = v1.new_basic_lock("basic", V1_TTL);
    assert_eq!(v1_lock.try_lock().await, Err(V1Error::LockUnavailable));
    let waiter = tokio::spawn(async move {
        let outcome = v1_lock.lock_timeout(Duration::from_secs(120)).await;
        (outcome, Instant::now(), v1_lock)
    });
    wait_v1_waiter(&server).await;
    let released = Instant::now();
    basic.release().await.unwrap();
    let (outcome, acquired, mut v1_lock) = waiter.await.unwrap();
    outcome.unwrap();
    let after = acquired.duration_since(released);
    println!("1.x waiter acquired {after:?} after the 2.x BasicLock release");
    assert!(after < WAKE_BOUND, "acquired {after:?} after our release");
    assert_eq!(basic.try_lock().await, Err(RdLockError::LockUnavailable));
    v1_lock.release().await.unwrap();
}

/// Review of issue 15: 1.x writes the raw id into its key (`/rdlock/<id>/.lock`, no
/// escaping); ids with slashes, braces, spaces, glob characters and control bytes map to
/// the very key 1.x uses, so the two still exclude each other both ways, and a
/// compatible waiter (an exact `SUBSCRIBE`, not a pattern) is woken by the 1.x release.
#[tokio::test]
async fn odd_ids_exclude_1x_both_ways() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let (v2, v1) = managers(&server).await;
    let mut conn = server.conn().await;
    for id in [
        "a/b",
        "/",
        "a{b}c",
        "with space",
        "glob*?[x]\\",
        "line\nbreak",
        "%7B",
    ] {
        let mut holder = v1.new_basic_lock(id, V1_TTL);
        holder.try_lock().await.unwrap();
        assert!(get(&mut conn, &v1_key(id)).await.is_some(), "{id:?}");
        let lock = v2.new_lock(id).with_v1_compat();
        assert_eq!(lock.v1_key(), Some(v1_key(id).as_str()));
        assert_eq!(
            lock.try_lock().await.unwrap_err(),
            RdLockError::LockUnavailable,
            "{id:?}"
        );
        let waiter = {
            let lock = lock.clone();
            tokio::spawn(async move { lock.lock_timeout(Duration::from_secs(120)).await })
        };
        wait_subscribed(&server, &format!("__keyspace@0__:{}", v1_key(id))).await;
        let released = Instant::now();
        holder.release().await.unwrap();
        let guard = waiter.await.unwrap().unwrap();
        assert!(released.elapsed() < WAKE_BOUND, "{id:?}");
        assert_eq!(
            holder.try_lock().await,
            Err(V1Error::LockUnavailable),
            "{id:?}"
        );
        guard.release().await.unwrap();
        assert!(keys(&mut conn, "/rdlock/*").await.is_empty(), "{id:?}");
    }
}

// ---------------------------------------------------------------------------------
// Without compatibility, and where it cannot work

#[tokio::test]
async fn a_lock_without_compat_creates_no_v1_key() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let v2 = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut conn = server.conn().await;
    let lock = v2.new_lock("plain").with_lease(Duration::from_millis(300));
    assert_eq!(lock.v1_key(), None);
    let guard = lock.lock().await.unwrap();
    // A waiter, renewals and a release: every path that sends a script.
    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.lock_timeout(Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(keys(&mut conn, "/rdlock/*").await.is_empty());
    drop(guard);
    let second = waiter.await.unwrap().unwrap();
    assert!(keys(&mut conn, "/rdlock/*").await.is_empty());
    second.release().await.unwrap();
    let mut basic = v2.new_basic_lock("plain-basic", 60).without_v1_compat();
    assert_eq!(basic.v1_key(), None);
    basic.lock().await.unwrap();
    basic.release().await.unwrap();
    assert!(keys(&mut conn, "/rdlock/*").await.is_empty());
    assert!(lock.force_release().await.is_ok());
    assert!(keys(&mut conn, "/rdlock/*").await.is_empty());
    // What a fleet without compatibility gets: 1.x and 2.x do not exclude each other.
    let v1 = rdlock_v1::RdLockConnectionManager::new(server.url())
        .await
        .unwrap();
    let mut v1_lock = v1.new_basic_lock("plain", V1_TTL);
    v1_lock.try_lock().await.unwrap();
    let _both = lock.try_lock().await.unwrap();
}

/// A one-node Redis Cluster owning every slot (as in tests/fuzz_inputs.rs).
async fn one_node_cluster() -> RedisServer {
    let server = RedisServer::start_with(ServerConfig {
        keyspace_events: None,
        args: [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ]
        .map(String::from)
        .to_vec(),
    });
    let conn = server.conn().await;
    let () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    wait_until(BOUND, "cluster_state:ok", || {
        let mut conn = conn.clone();
        async move {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .unwrap();
            info.contains("cluster_state:ok")
        }
    })
    .await;
    server
}

#[tokio::test]
async fn compat_on_a_cluster_manager_is_a_clear_error() {
    let server = one_node_cluster().await;
    let manager = RdLockConnectionManager::cluster([server.url()])
        .await
        .unwrap();
    let lock = manager.new_lock("job").with_v1_compat();
    let refused = |e: RdLockError| {
        assert!(
            matches!(e, RdLockError::V1CompatUnsupported { .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("1.x"), "{e}");
    };
    refused(lock.try_lock().await.unwrap_err());
    refused(lock.lock().await.unwrap_err());
    refused(lock.lock_timeout(Duration::from_secs(1)).await.unwrap_err());
    refused(lock.holder().await.unwrap_err());
    refused(lock.force_release().await.unwrap_err());
    refused(lock.force_release_if(1).await.unwrap_err());
    refused(lock.run(async {}).await.unwrap_err());
    // Nothing was written.
    let mut conn = server.conn().await;
    assert!(keys(&mut conn, "*").await.is_empty());
    // A BasicLock on a cluster works, without the 1.x key.
    let mut basic = manager.new_basic_lock("job", 60);
    assert_eq!(basic.v1_key(), None);
    basic.try_lock().await.unwrap();
    basic.release().await.unwrap();
}

#[tokio::test]
async fn compat_on_a_redlock_manager_is_a_clear_error() {
    let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let manager = RdLockConnectionManager::redlock(nodes.iter().map(RedisServer::url))
        .await
        .unwrap();
    let lock = manager.new_lock("job").with_v1_compat();
    let refused = |e: RdLockError| {
        assert!(
            matches!(e, RdLockError::V1CompatUnsupported { .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("Redlock"), "{e}");
    };
    refused(lock.try_lock().await.unwrap_err());
    refused(lock.lock_timeout(Duration::from_secs(1)).await.unwrap_err());
    refused(lock.holder().await.unwrap_err());
    refused(lock.force_release().await.unwrap_err());
    // Nothing was written on any node.
    for node in &nodes {
        let mut conn = node.conn().await;
        assert!(keys(&mut conn, "*").await.is_empty());
    }
    // A BasicLock on Redlock works, without the 1.x key.
    let mut basic = manager.new_basic_lock("job", 60);
    assert_eq!(basic.v1_key(), None);
    basic.try_lock().await.unwrap();
    basic.release().await.unwrap();
    for node in &nodes {
        let mut conn = node.conn().await;
        assert!(keys(&mut conn, "/rdlock/*").await.is_empty());
    }
}

#[tokio::test]
async fn without_keyspace_events_a_compat_waiter_gets_the_lock_at_the_v1_pttl() {
    let server = RedisServer::start();
    let v2 = RdLockConnectionManager::new(server.url()).await.unwrap();
    assert!(!v2.keyspace_events());
    // 1.x refuses such a server; its write, as 1.0.3 makes it (a value, NX, a TTL).
    let mut conn = server.conn().await;
    let ttl_ms = 1500;
    let set: Option<String> = redis::cmd("SET")
        .arg(v1_key("quiet"))
        .arg("V1")
        .arg("NX")
        .arg("PX")
        .arg(ttl_ms)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(set.is_some());
    let started = Instant::now();
    let lock = v2.new_lock("quiet").with_v1_compat();
    let guard = lock.lock_timeout(Duration::from_secs(30)).await.unwrap();
    let waited = started.elapsed();
    println!("acquired after {waited:?} (1.x key PTTL {ttl_ms} ms)");
    assert!(waited >= Duration::from_millis(ttl_ms - 100), "{waited:?}");
    assert!(
        waited < Duration::from_millis(ttl_ms) + WAKE_BOUND,
        "{waited:?}"
    );
    assert_eq!(
        get(&mut conn, &v1_key("quiet"))
            .await
            .as_deref()
            .map(str::len),
        Some(32)
    );
    guard.release().await.unwrap();
    assert!(keys(&mut conn, "/rdlock/*").await.is_empty());
}

// ---------------------------------------------------------------------------------
// The watchdog and the release paths with the 1.x key

#[tokio::test]
async fn a_v1_takeover_ends_the_lease_and_the_release_leaves_the_v1_key_alone() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let v2 = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut conn = server.conn().await;
    let lock = v2
        .new_lock("stale")
        .with_v1_compat()
        .with_lease(Duration::from_millis(600));
    let guard = lock.lock().await.unwrap();
    assert!(get(&mut conn, &v1_key("stale")).await.is_some());

    // A 1.x process whose TTL ran out deletes it (a plain DEL) and another takes it
    // before our renewal: not ours alone any more. (Deleted only: see
    // `a_v1_key_deleted_under_a_holder_ends_its_lease`.)
    let () = redis::pipe()
        .atomic()
        .del(v1_key("stale"))
        .set_options(
            v1_key("stale"),
            "V1",
            redis::SetOptions::default().with_expiration(redis::SetExpiry::EX(V1_TTL)),
        )
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::timeout(BOUND, guard.lost())
        .await
        .expect("the lease is reported lost");
    assert!(!guard.is_held());
    // The drop-release deletes our lock key and leaves the 1.x holder's key alone.
    drop(guard);
    wait_until(BOUND, "the lock key to be released", || {
        let mut conn = conn.clone();
        async move { support::lock_keys(&mut conn).await.is_empty() }
    })
    .await;
    assert_eq!(
        get(&mut conn, &v1_key("stale")).await.as_deref(),
        Some("V1")
    );
    // force_release of a compatible lock deletes the 1.x key too.
    assert!(lock.force_release().await.unwrap());
    assert!(keys(&mut conn, "/rdlock/*").await.is_empty());
}

/// Review of issue 15: a 1.x process whose TTL ran out releases with a plain `DEL`
/// (the documented limit), and another 1.x process takes the 1.x key, runs its whole
/// critical section and releases it, all between two of our renewals. The 1.x key was
/// not ours for a while: the lease must be reported lost, not silently taken back
/// (found so: the renewal re-created the 1.x key and the guard never learnt of the
/// overlap, although the README promised the loss would be reported).
#[tokio::test]
async fn a_v1_key_deleted_under_a_holder_ends_its_lease() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let (v2, v1) = managers(&server).await;
    let mut conn = server.conn().await;
    let lock = v2
        .new_lock("deleted")
        .with_v1_compat()
        .with_lease(Duration::from_millis(900));
    let guard = lock.lock().await.unwrap();
    // The stale 1.x release, then a whole 1.x critical section before our renewal.
    let () = redis::cmd("DEL")
        .arg(v1_key("deleted"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut other = v1.new_basic_lock("deleted", V1_TTL);
    other.try_lock().await.unwrap();
    other.release().await.unwrap();
    tokio::time::timeout(BOUND, guard.lost())
        .await
        .expect("the lease is reported lost: a 1.x process held the lock meanwhile");
    assert!(!guard.is_held());
    // Nothing was taken back: the drop-release deletes our lock key, and 1.x can lock.
    drop(guard);
    wait_until(BOUND, "the lock key to be released", || {
        let mut conn = conn.clone();
        async move { support::lock_keys(&mut conn).await.is_empty() }
    })
    .await;
    assert!(keys(&mut conn, "/rdlock/*").await.is_empty());
    other.try_lock().await.unwrap();
    other.release().await.unwrap();
}

/// Review of issue 15: a 1.x process takes the 1.x key after a stale 1.x `DEL` and still
/// holds it when we release, before any renewal noticed. The release must say the lock
/// was no longer ours (found so: `LockGuard::release` and `BasicLock::release` returned
/// `Ok`, since only the 2.x key was checked) — and must leave the 1.x holder's key alone.
#[tokio::test]
async fn a_release_after_a_v1_takeover_reports_that_the_lock_was_not_ours() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let (v2, v1) = managers(&server).await;
    let mut conn = server.conn().await;

    // A Lock (30 s lease: no renewal during the test).
    let guard = v2
        .new_lock("taken")
        .with_v1_compat()
        .try_lock()
        .await
        .unwrap();
    let () = redis::cmd("DEL")
        .arg(v1_key("taken"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut other = v1.new_basic_lock("taken", V1_TTL);
    other.try_lock().await.unwrap();
    assert_eq!(guard.release().await, Err(RdLockError::LockNotAcquired));
    assert!(support::lock_keys(&mut conn).await.is_empty());
    assert_eq!(
        get(&mut conn, &v1_key("taken")).await.as_deref(),
        Some("V1")
    );
    other.release().await.unwrap();

    // A 2.x BasicLock (compatible by default).
    let mut basic = v2.new_basic_lock("taken", V1_TTL);
    basic.try_lock().await.unwrap();
    let () = redis::cmd("DEL")
        .arg(v1_key("taken"))
        .query_async(&mut conn)
        .await
        .unwrap();
    other.try_lock().await.unwrap();
    assert_eq!(basic.release().await, Err(RdLockError::LockNotAcquired));
    assert!(support::lock_keys(&mut conn).await.is_empty());
    assert_eq!(
        get(&mut conn, &v1_key("taken")).await.as_deref(),
        Some("V1")
    );
    other.release().await.unwrap();
}

/// Review of issue 15: a compatible acquire (a `Lock` and a `BasicLock`) that reaches
/// Redis after its caller gave up is undone by its token, the 1.x key included, so a
/// 1.x process can lock at once (as tests/cancellation.rs for a plain lock).
#[tokio::test]
async fn a_cancelled_compat_acquire_leaves_no_v1_key() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let (v2, v1) = managers(&server).await;
    let mut raw = server.conn().await;
    let lock = v2.new_lock("cancelled").with_v1_compat();
    // Load the script first (a paused EVALSHA on a fresh server would only get NOSCRIPT).
    lock.try_lock().await.unwrap().release().await.unwrap();
    for round in 0..2u64 {
        // Writes (EVALSHA included) wait 1.5 s: longer than the caller's 100 ms, shorter
        // than the 2 s response timeout (see tests/cancellation.rs).
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1500)
            .arg("WRITE")
            .query_async(&mut raw)
            .await
            .unwrap();
        let outcome = if round == 0 {
            tokio::time::timeout(Duration::from_millis(100), lock.lock())
                .await
                .map(|_| ())
        } else {
            let mut basic = v2.new_basic_lock("cancelled", V1_TTL);
            tokio::time::timeout(Duration::from_millis(100), basic.lock())
                .await
                .map(|_| ())
        };
        assert!(outcome.is_err(), "cancelled while the server paused");
        let fence = (round + 2).to_string();
        wait_until(BOUND, "the paused acquire ran", || {
            let mut raw = raw.clone();
            let fence = fence.clone();
            async move { get(&mut raw, "rdlock:{cancelled}:fence").await == Some(fence) }
        })
        .await;
        wait_until(BOUND, "both keys undone", || {
            let mut raw = raw.clone();
            async move {
                support::lock_keys(&mut raw).await.is_empty()
                    && keys(&mut raw, "/rdlock/*").await.is_empty()
            }
        })
        .await;
        let mut other = v1.new_basic_lock("cancelled", V1_TTL);
        other.try_lock().await.unwrap();
        other.release().await.unwrap();
    }
}

/// Review of issue 15: `without_v1_compat` on a `BasicLock` that holds the lock (step 3
/// of the upgrade done on a live object) must not strand the 1.x key it took: the
/// acquisition is released with the keys it was taken with (found so: the release
/// deleted only `rdlock:{id}:lock`, and 1.x processes stayed locked out for the whole
/// TTL, an hour here).
#[tokio::test]
async fn turning_compat_off_while_held_still_releases_the_v1_key() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let (v2, v1) = managers(&server).await;
    let mut conn = server.conn().await;
    let mut basic = v2.new_basic_lock("switch", V1_TTL);
    basic.try_lock().await.unwrap();
    let mut basic = basic.without_v1_compat();
    assert_eq!(basic.v1_key(), None);
    assert!(basic.is_locked());
    basic.release().await.unwrap();
    assert!(support::lock_keys(&mut conn).await.is_empty());
    assert!(keys(&mut conn, "/rdlock/*").await.is_empty());
    let mut other = v1.new_basic_lock("switch", V1_TTL);
    other.try_lock().await.unwrap();
    other.release().await.unwrap();
    // The next acquisition is without the 1.x key.
    basic.try_lock().await.unwrap();
    assert!(keys(&mut conn, "/rdlock/*").await.is_empty());
    basic.release().await.unwrap();
}

#[tokio::test]
async fn a_dropped_compat_guard_deletes_both_keys() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let v2 = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut conn = server.conn().await;
    let lock = v2.new_lock("dropped").with_v1_compat();
    let guard = lock.lock().await.unwrap();
    assert_eq!(keys(&mut conn, "/rdlock/*").await, [v1_key("dropped")]);
    drop(guard);
    wait_until(BOUND, "both keys to be released", || {
        let mut conn = conn.clone();
        async move {
            support::lock_keys(&mut conn).await.is_empty()
                && keys(&mut conn, "/rdlock/*").await.is_empty()
        }
    })
    .await;
    v2.shutdown().await.unwrap();
}

/// Review of issue 15: shutting the manager down while a compatible guard is alive
/// releases both keys, and a 1.x waiter is woken by it.
#[tokio::test]
async fn shutdown_releases_a_live_compat_guard_and_wakes_a_v1_waiter() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let (v2, v1) = managers(&server).await;
    let mut conn = server.conn().await;
    let guard = v2
        .new_lock("shutdown")
        .with_v1_compat()
        .try_lock()
        .await
        .unwrap();
    let mut waiting = v1.new_basic_lock("shutdown", V1_TTL);
    let waiter = tokio::spawn(async move {
        let outcome = waiting.lock_timeout(Duration::from_secs(120)).await;
        (outcome, Instant::now(), waiting)
    });
    wait_v1_waiter(&server).await;
    let shut = Instant::now();
    v2.shutdown().await.unwrap();
    assert!(!guard.is_held());
    let (outcome, acquired, mut waiting) = waiter.await.unwrap();
    outcome.unwrap();
    let after = acquired.duration_since(shut);
    assert!(after < WAKE_BOUND, "acquired {after:?} after the shutdown");
    assert!(support::lock_keys(&mut conn).await.is_empty());
    assert_eq!(
        get(&mut conn, &v1_key("shutdown")).await.as_deref(),
        Some("V1")
    );
    waiting.release().await.unwrap();
    drop(guard);
}

/// Waiters with compatibility join, in the same manager, a subscription made by a
/// waiter without it: the 1.x key's channel is added, and a 1.x release wakes them.
/// The two kinds are blocked by different keys, so a release must reach a waiter that
/// can use it: a second waiter without compatibility queues behind the compatible
/// ones, so that a wake-up given to the longest-waiting waiter only (tokio's
/// `notify_one`) goes to a compatible one, which the 1.x holder blocks (found so: a
/// plain waiter was left for its holder's whole lease).
#[tokio::test]
async fn compat_waiters_joining_a_plain_waiters_subscription_are_woken_by_the_right_release() {
    mixed_local_waiters(true).await;
}

/// As above on a server without keyspace events: release messages alone, and the 1.x
/// key's TTL (8 s here, written as 1.0.3 writes it: 1.x itself refuses such a server).
#[tokio::test]
async fn without_keyspace_events_mixed_local_waiters_each_get_the_release_they_can_use() {
    mixed_local_waiters(false).await;
}

async fn mixed_local_waiters(keyspace: bool) {
    let server = if keyspace {
        RedisServer::start_with(ServerConfig::keyspace("KA"))
    } else {
        RedisServer::start()
    };
    let v2 = RdLockConnectionManager::new(server.url()).await.unwrap();
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut raw = server.conn().await;
    // A 2.x holder without compatibility (30 s lease) and a 1.x holder, on one id.
    let holder = other.new_lock("mixed").try_lock().await.unwrap();
    let v1_ttl = if keyspace { V1_TTL } else { 8 };
    let mut v1_holder = None;
    if keyspace {
        let v1 = rdlock_v1::RdLockConnectionManager::new(server.url())
            .await
            .unwrap();
        let mut lock = v1.new_basic_lock("mixed", v1_ttl);
        lock.try_lock().await.unwrap();
        v1_holder = Some(lock);
    } else {
        let set: Option<String> = redis::cmd("SET")
            .arg(v1_key("mixed"))
            .arg("V1")
            .arg("NX")
            .arg("EX")
            .arg(v1_ttl)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(set.is_some());
    }
    let v1_set = Instant::now();

    let mut plain = v2.new_basic_lock("mixed", V1_TTL).without_v1_compat();
    let plain_waiter = tokio::spawn(async move {
        let outcome = plain.lock_timeout(Duration::from_secs(120)).await;
        (outcome, Instant::now(), plain)
    });
    wait_subscribed(&server, "rdlock:{mixed}:release").await;
    let compat_waiters: Vec<_> = (0..3)
        .map(|_| {
            let mut compat = v2.new_basic_lock("mixed", V1_TTL);
            tokio::spawn(async move {
                compat.lock_timeout(Duration::from_secs(60)).await.unwrap();
                let acquired = Instant::now();
                compat.release().await.unwrap();
                acquired
            })
        })
        .collect();
    if keyspace {
        wait_subscribed(&server, "__keyspace@0__:/rdlock/mixed/.lock").await;
    } else {
        // Nothing to observe: give the compatible waiters time to queue first. Only
        // how often a wrong wake-up would be caught depends on it, not the outcome.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut plain2 = v2.new_basic_lock("mixed", V1_TTL).without_v1_compat();
    let plain2_waiter = tokio::spawn(async move {
        let outcome = plain2.lock_timeout(Duration::from_secs(60)).await;
        (outcome, Instant::now(), plain2)
    });
    if !keyspace {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A plain waiter (blind to the 1.x key) must get the 2.x holder's release: the
    // turn goes to this process, and either plain waiter may take it (both are woken;
    // `BasicLock`s do not queue locally).
    let released = Instant::now();
    holder.release().await.unwrap();
    let (mut plain_waiter, mut plain2_waiter) = (plain_waiter, plain2_waiter);
    let (first, other) = tokio::select! {
        first = &mut plain_waiter => (first, plain2_waiter),
        first = &mut plain2_waiter => (first, plain_waiter),
    };
    let (outcome, acquired, mut plain) = first.unwrap();
    outcome.unwrap();
    let after = acquired.duration_since(released);
    println!("plain waiter acquired {after:?} after the 2.x release");
    assert!(
        after < WAKE_BOUND,
        "acquired {after:?} after the 2.x release"
    );
    // And the other plain waiter the first one's release (its TTL is an hour).
    let released = Instant::now();
    plain.release().await.unwrap();
    let (outcome, acquired, mut plain) = other.await.unwrap();
    outcome.unwrap();
    let after = acquired.duration_since(released);
    println!("second plain waiter acquired {after:?} after the first one's release");
    assert!(
        after < WAKE_BOUND,
        "acquired {after:?} after the plain release"
    );
    plain.release().await.unwrap();
    // The compatible waiters still wait for the 1.x holder.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        v1_set.elapsed() < Duration::from_secs(v1_ttl),
        "the phase above outlasted the 1.x TTL: the check below proves nothing"
    );
    assert!(compat_waiters.iter().all(|w| !w.is_finished()));
    let released = if let Some(mut lock) = v1_holder {
        let released = Instant::now();
        lock.release().await.unwrap();
        released
    } else {
        // Without keyspace events they learn of it at its TTL.
        v1_set + Duration::from_secs(v1_ttl)
    };
    for waiter in compat_waiters {
        let acquired = waiter.await.unwrap();
        let after = acquired.saturating_duration_since(released);
        assert!(
            after < WAKE_BOUND * 3,
            "acquired {after:?} after the 1.x key went"
        );
    }
}

// ---------------------------------------------------------------------------------
// A least-privilege ACL user during a rolling upgrade

/// The README's minimal ACL user (tests/acl.rs), with what 1.x compatibility adds: the
/// 1.x keys, and (for keyspace wake-ups) their keyspace channels.
async fn acl_user(server: &RedisServer, keys: &[&str], channels: &[&str]) -> String {
    let mut admin = server.conn().await;
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg("locker")
        .arg("reset")
        .arg("on")
        .arg(">secret")
        .arg("resetkeys")
        .arg(keys)
        .arg("resetchannels")
        .arg(channels)
        .arg("-@all")
        .arg(
            "+evalsha +script|load +get +set +pexpire +pttl +incr +del +publish +time \
             +lpop +rpush +lpos +lrem +lrange +ping +subscribe +unsubscribe +config|get"
                .split(' ')
                .collect::<Vec<_>>(),
        );
    let () = cmd.query_async(&mut admin).await.expect("ACL SETUSER");
    format!("redis://locker:secret@127.0.0.1:{}/", server.port())
}

#[tokio::test]
async fn a_least_privilege_user_needs_the_v1_keys_for_compat() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let v1 = rdlock_v1::RdLockConnectionManager::new(server.url())
        .await
        .unwrap();

    // Without the 1.x keys: a typed ACL refusal, not a hang; turned off, it works.
    let url = acl_user(&server, &["~rdlock:*"], &["&rdlock:*"]).await;
    let narrow = RdLockConnectionManager::new(url).await.unwrap();
    let mut basic = narrow.new_basic_lock("acl", 60);
    let refused = tokio::time::timeout(BOUND, basic.try_lock()).await.unwrap();
    assert!(
        matches!(refused, Err(RdLockError::RedisError(_))),
        "{refused:?}"
    );
    let mut basic = narrow.new_basic_lock("acl", 60).without_v1_compat();
    basic.try_lock().await.unwrap();
    basic.release().await.unwrap();

    // With them, a compat waiter is woken by a 1.x release.
    let url = acl_user(
        &server,
        &["~rdlock:*", "~/rdlock/*"],
        &[
            "&rdlock:*",
            "&__keyspace@*__:rdlock:*",
            "&__keyspace@*__:/rdlock/*",
        ],
    )
    .await;
    let manager = RdLockConnectionManager::new(url).await.unwrap();
    assert!(manager.keyspace_events());
    let mut holder = v1.new_basic_lock("acl", V1_TTL);
    holder.try_lock().await.unwrap();
    let mut basic = manager.new_basic_lock("acl", 60);
    let waiter = tokio::spawn(async move {
        let outcome = basic.lock_timeout(Duration::from_secs(120)).await;
        (outcome, Instant::now(), basic)
    });
    wait_subscribed(&server, "__keyspace@0__:/rdlock/acl/.lock").await;
    let released = Instant::now();
    holder.release().await.unwrap();
    let (outcome, acquired, mut basic) = waiter.await.unwrap();
    outcome.unwrap();
    assert!(acquired.duration_since(released) < WAKE_BOUND);
    assert_eq!(holder.try_lock().await, Err(V1Error::LockUnavailable));
    basic.release().await.unwrap();
}

// ---------------------------------------------------------------------------------
// Cost: a lock without compatibility sends exactly what it did before

/// `INFO commandstats` as `name -> calls` (commands run inside scripts included).
async fn command_calls(
    conn: &mut redis::aio::MultiplexedConnection,
) -> std::collections::BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| line.strip_prefix("cmdstat_"))
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let calls = rest
                .split_once("calls=")?
                .1
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        // The measurement's own commands (`config|resetstat`, `info`).
        .filter(|(name, _)| !name.starts_with("config") && name != "info")
        .collect()
}

#[tokio::test]
async fn an_acquire_and_release_cost_the_same_round_trips_with_compat_and_no_more_without() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut conn = server.conn().await;
    let expect = |pairs: &[(&str, u64)]| -> std::collections::BTreeMap<String, u64> {
        pairs.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
    };
    // Warm the script cache, so that no SCRIPT LOAD / NOSCRIPT round trip is counted.
    for lock in [
        manager.new_lock("warm"),
        manager.new_lock("warm").with_v1_compat(),
    ] {
        lock.try_lock().await.unwrap().release().await.unwrap();
    }

    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let guard = manager.new_lock("cost").try_lock().await.unwrap();
    guard.release().await.unwrap();
    // acquire.lua: SET NX, INCR, SET; release.lua: GET, LPOP (nobody queued), DEL (no
    // marker: no PUBLISH). Before the trim: PTTL, SET, INCR, TIME, SET; GET, DEL,
    // PUBLISH.
    assert_eq!(
        command_calls(&mut conn).await,
        expect(&[
            ("evalsha", 2),
            ("set", 2),
            ("incr", 1),
            ("get", 1),
            ("lpop", 1),
            ("del", 1),
        ])
    );

    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let guard = manager
        .new_lock("cost")
        .with_v1_compat()
        .try_lock()
        .await
        .unwrap();
    guard.release().await.unwrap();
    // Still one script call each way; the 1.x scripts check both keys' PTTL before
    // their SETs, read and delete the 1.x key, and publish on every release (1.x
    // compatibility is a passing state: not trimmed but for the client's clock).
    assert_eq!(
        command_calls(&mut conn).await,
        expect(&[
            ("evalsha", 2),
            ("pttl", 2),
            ("set", 3),
            ("incr", 1),
            ("get", 2),
            ("del", 2),
            ("publish", 1),
        ])
    );
}

// ---------------------------------------------------------------------------------
// A mixed fleet on one id

/// 1.x `BasicLock`s, 2.x `Lock`s with compatibility (some holds outlast the lease, so
/// the watchdog renews both keys) and 2.x `BasicLock`s, each with its own manager(s),
/// contend for one id; every holder marks its critical section in a shared counter.
/// No 1.x TTL runs out (60 s, holds of at most 20 ms), no fault is injected: the count
/// of overlaps must be 0, and every worker completes its rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_fleet_never_overlaps() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const ROUNDS: usize = 12;
    let seed = support::seed();
    println!("seed {seed} (RDLOCK_SEED replays the schedule, not the timing)");
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let enter = {
        let (inside, overlaps) = (inside.clone(), overlaps.clone());
        move || {
            if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                overlaps.fetch_add(1, Ordering::SeqCst);
            }
        }
    };
    let leave = {
        let inside = inside.clone();
        move || {
            inside.fetch_sub(1, Ordering::SeqCst);
        }
    };
    let hold = |rng: &mut u64| {
        *rng = support::xorshift(*rng);
        Duration::from_millis(*rng % 21)
    };
    let mut workers = Vec::new();
    for w in 0..6u64 {
        let url = server.url();
        let (enter, leave) = (enter.clone(), leave.clone());
        let mut rng = support::xorshift(seed ^ (w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        workers.push(tokio::spawn(async move {
            match w % 3 {
                0 => {
                    let v1 = rdlock_v1::RdLockConnectionManager::new(url).await.unwrap();
                    let mut lock = v1.new_basic_lock("fleet", 60);
                    for _ in 0..ROUNDS {
                        while lock.lock_timeout(Duration::from_secs(20)).await.is_err() {}
                        enter();
                        tokio::time::sleep(hold(&mut rng)).await;
                        leave();
                        lock.release().await.unwrap();
                    }
                }
                1 => {
                    let v2 = RdLockConnectionManager::new(url).await.unwrap();
                    let lease = Duration::from_millis(1000);
                    let lock = v2.new_lock("fleet").with_v1_compat().with_lease(lease);
                    for round in 0..ROUNDS {
                        let guard = lock.lock().await.unwrap();
                        enter();
                        // Every fourth hold lasts 1.5 leases: renewals of both keys.
                        let held = if round % 4 == 3 {
                            lease * 3 / 2
                        } else {
                            hold(&mut rng)
                        };
                        tokio::time::sleep(held).await;
                        assert!(guard.is_held(), "no fault is injected: the lease holds");
                        leave();
                        guard.release().await.unwrap();
                    }
                }
                _ => {
                    let v2 = RdLockConnectionManager::new(url).await.unwrap();
                    let mut lock = v2.new_basic_lock("fleet", 60);
                    for _ in 0..ROUNDS {
                        lock.lock().await.unwrap();
                        enter();
                        tokio::time::sleep(hold(&mut rng)).await;
                        leave();
                        lock.release().await.unwrap();
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(120), worker)
            .await
            .expect("every worker completes its rounds")
            .unwrap();
    }
    println!(
        "{} acquisitions (1.x, 2.x Lock, 2.x BasicLock) in {:?}, {} overlaps",
        6 * ROUNDS,
        started.elapsed(),
        overlaps.load(Ordering::SeqCst)
    );
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    let mut conn = server.conn().await;
    assert!(keys(&mut conn, "/rdlock/*").await.is_empty());
    assert!(support::lock_keys(&mut conn).await.is_empty());
}
