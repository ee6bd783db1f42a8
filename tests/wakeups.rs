//! Waiters are woken by Redis notifications, not by polling, and always bounded by the
//! holder's remaining lease.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdlock::RdLockConnectionManager;
use support::{wait_until, RedisServer};

/// A waiter blocked in `lock()` gets the lock within a few round trips of the release,
/// far sooner than the holder's 30 s lease would run out.
async fn waiter_wakes_on_release(server: &RedisServer, expect_keyspace: bool) {
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(server.url()).await.unwrap();
    assert_eq!(waiter.keyspace_events(), expect_keyspace);
    for round in 0..5 {
        let guard = holder.new_lock("wake").lock().await.unwrap();
        let lock = waiter.new_lock("wake");
        let task = tokio::spawn(async move {
            let g = lock.lock().await.unwrap();
            (Instant::now(), g)
        });
        // Let the waiter fail its first attempt and subscribe: the release must wake it
        // through a notification, whatever the moment it lands.
        tokio::time::sleep(Duration::from_millis(20 * round)).await;
        let released = Instant::now();
        guard.release().await.unwrap();
        let (acquired, g) = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the waiter is woken long before the 30 s lease would run out")
            .unwrap();
        let latency = acquired.saturating_duration_since(released);
        assert!(
            latency < Duration::from_secs(2),
            "round {round}: woken {latency:?} after the release"
        );
        g.release().await.unwrap();
    }
}

#[tokio::test]
async fn waiter_wakes_on_release_without_keyspace_events() {
    let server = RedisServer::start();
    waiter_wakes_on_release(&server, false).await;
}

#[tokio::test]
async fn waiter_wakes_on_release_with_keyspace_events() {
    let server = RedisServer::with_keyspace_events();
    waiter_wakes_on_release(&server, true).await;
}

/// A holder that vanished (its key set with a PX lease by a raw client, nobody to
/// release it) is taken over when its PTTL runs out — without keyspace events, so only
/// the PTTL bound can wake the waiter.
#[tokio::test]
async fn vanished_holder_is_taken_over_when_its_pttl_runs_out() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    assert!(!manager.keyspace_events());
    let lock = manager.new_lock("crashed");
    // Before the SET: the key expires at least 1500 ms after this, however late its
    // reply comes back on a busy machine.
    let started = Instant::now();
    let _: () = redis::cmd("SET")
        .arg(lock.key())
        .arg("a-crashed-holder")
        .arg("PX")
        .arg(1500)
        .query_async(&mut raw)
        .await
        .unwrap();
    let guard = tokio::time::timeout(Duration::from_secs(10), lock.lock())
        .await
        .expect("taken over within seconds of the expiry, not the 30 s default lease")
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "took it while still held: {waited:?}"
    );
    // At the PTTL plus a few round trips, with room for a busy machine; a waiter that
    // waits for its own 30 s lease, or never retries, misses by far.
    assert!(waited < Duration::from_secs(5), "woke late: {waited:?}");
    assert!(guard.is_held());
}

/// With keyspace events on, the same takeover is woken by the `expired` event.
#[tokio::test]
async fn vanished_holder_is_taken_over_with_keyspace_events() {
    let server = RedisServer::with_keyspace_events();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    assert!(manager.keyspace_events());
    let lock = manager.new_lock("crashed");
    // Before the SET: the key expires at least 500 ms after this, however late its
    // reply comes back on a busy machine.
    let started = Instant::now();
    let _: () = redis::cmd("SET")
        .arg(lock.key())
        .arg("a-crashed-holder")
        .arg("PX")
        .arg(500)
        .query_async(&mut raw)
        .await
        .unwrap();
    let _guard = tokio::time::timeout(Duration::from_secs(10), lock.lock())
        .await
        .expect("taken over soon after the expiry")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(450));
}

/// A key deleted by someone else (an operator's `DEL`) wakes waiters at once when
/// keyspace events are on.
#[tokio::test]
async fn external_delete_wakes_waiters_with_keyspace_events() {
    let server = RedisServer::with_keyspace_events();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("deleted");
    let _: () = redis::cmd("SET")
        .arg(lock.key())
        .arg("someone")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut raw)
        .await
        .unwrap();
    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.lock().await })
    };
    // The waiter must be subscribed before the DEL for the event to reach it.
    let pubsub_raw = server.conn().await;
    wait_until(Duration::from_secs(5), "the waiter subscribed", || {
        let mut c = pubsub_raw.clone();
        async move {
            let n: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("__keyspace@0__:rdlock:{deleted}:lock")
                .query_async(&mut c)
                .await
                .unwrap();
            n.first().is_some_and(|(_, count)| *count == 1)
        }
    })
    .await;
    let _: () = redis::cmd("DEL")
        .arg(lock.key())
        .query_async(&mut raw)
        .await
        .unwrap();
    let guard = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the keyspace del event wakes the waiter, not the 60 s PTTL")
        .unwrap()
        .unwrap();
    assert!(guard.is_held());
}

/// Many waiters in one process on one key: each release hands the lock on, and all of
/// them get it in turn, quickly.
#[tokio::test]
async fn local_waiters_are_handed_the_lock_one_after_another() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = Arc::new(manager.new_lock("queue"));
    let first = lock.lock().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let lock = lock.clone();
        tasks.push(tokio::spawn(async move {
            let g = lock.lock().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            g.release().await.unwrap();
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    first.release().await.unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("every waiter gets the lock without waiting out a lease")
            .unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// When the shared subscriber connection is killed, it reconnects, resubscribes, and
/// waiters keep being woken by releases.
#[tokio::test]
async fn subscriber_reconnects_and_waiters_still_wake() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = holder.new_lock("resub").lock().await.unwrap();
    let task = {
        let lock = waiter.new_lock("resub");
        tokio::spawn(async move { lock.lock().await })
    };
    // The waiter is subscribed, however long that takes on a busy machine.
    wait_until(Duration::from_secs(10), "the waiter subscribed", || {
        let mut raw = raw.clone();
        async move {
            let n: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("rdlock:{resub}:release")
                .query_async(&mut raw)
                .await
                .unwrap();
            n.first().is_some_and(|(_, count)| *count == 1)
        }
    })
    .await;
    assert_eq!(waiter.subscriber_connections(), 1);
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(killed >= 1);
    wait_until(
        Duration::from_secs(10),
        "the subscriber reconnected",
        || {
            let n = waiter.subscriber_connections();
            async move { n >= 2 }
        },
    )
    .await;
    let released = Instant::now();
    guard.release().await.unwrap();
    let g = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("woken by the release after resubscribing")
        .unwrap()
        .unwrap();
    assert!(released.elapsed() < Duration::from_secs(2));
    assert!(g.is_held());
}

/// Subscribe, then try, then wait: the server sees the waiter's SUBSCRIBE before its
/// second acquire attempt (the first, fast-path attempt needs no subscription), so a
/// release between that attempt and the wait cannot be missed.
#[tokio::test]
async fn waiter_subscribes_before_the_attempt_it_waits_after() {
    let server = RedisServer::start();
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = holder.new_lock("order").lock().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("monitor.log");
    let mut monitor = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "monitor"])
        .stdout(std::fs::File::create(&path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-cli (installed with redis-server)");
    wait_until(Duration::from_secs(5), "MONITOR is attached", || {
        let started = std::fs::read_to_string(&path).is_ok_and(|l| l.starts_with("OK"));
        async move { started }
    })
    .await;
    let lock = waiter.new_lock("order");
    let task = tokio::spawn(async move { lock.lock().await });
    // Released once the waiter has subscribed (so its fast path failed), however long
    // that takes on a busy machine: its next attempt comes after the SUBSCRIBE either
    // way, made before or after the release.
    let raw = server.conn().await;
    wait_until(Duration::from_secs(10), "the waiter subscribed", || {
        let mut raw = raw.clone();
        async move {
            let n: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("rdlock:{order}:release")
                .query_async(&mut raw)
                .await
                .unwrap();
            n.first().is_some_and(|(_, count)| *count == 1)
        }
    })
    .await;
    guard.release().await.unwrap();
    let _g = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let _ = monitor.kill();
    let _ = monitor.wait();
    let log = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rdlock:{order}"))
        .collect();
    let attempts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"EVALSHA\"") && l.contains("rdlock:{order}:fence"))
        .map(|(i, _)| i)
        .collect();
    let subscribe = lines
        .iter()
        .position(|l| l.contains("\"SUBSCRIBE\""))
        .unwrap_or_else(|| panic!("no SUBSCRIBE seen:\n{}", lines.join("\n")));
    // The holder acquired before MONITOR started: attempts[0] is the waiter's fast path.
    assert!(
        attempts.len() >= 2,
        "fast path, then after subscribing: {attempts:?}"
    );
    assert!(
        subscribe > attempts[0] && subscribe < attempts[1],
        "order:\n{}",
        lines.join("\n")
    );
}
