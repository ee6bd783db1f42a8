//! `lock_timeout`, `run_timeout` and `BasicLock::lock_timeout` keep their deadline even
//! when an attempt is in flight at it; `try_lock` is bounded by the command timeout
//! (issue 16, item 4).

mod support;

use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::proxy::{FaultProxy, Mode};
use support::{lock_keys, wait_until, RedisServer};

/// Slack for scheduling on a loaded machine; the defect overran by the 2 s command
/// timeout.
const SLACK: Duration = Duration::from_millis(1000);

async fn blackholed() -> (RedisServer, FaultProxy, RdLockConnectionManager) {
    let server = RedisServer::start();
    let proxy = FaultProxy::to_port(server.port()).await;
    let manager = RdLockConnectionManager::new(proxy.url()).await.unwrap();
    // Load the scripts while the path is open.
    manager
        .new_lock("warm-up")
        .try_lock()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    proxy.set(Mode::Blackhole);
    (server, proxy, manager)
}

/// The reproduction: a blackhole swallows the attempt; `lock_timeout(200 ms)`
/// returned after the 2 s command timeout.
#[tokio::test]
async fn lock_timeout_returns_on_time_while_an_attempt_hangs() {
    let (server, proxy, manager) = blackholed().await;
    let lock = manager.new_lock("blackholed");
    for timeout in [Duration::from_millis(200), Duration::from_millis(700)] {
        let started = Instant::now();
        let err = lock.lock_timeout(timeout).await.unwrap_err();
        let took = started.elapsed();
        println!("lock_timeout({timeout:?}) in a blackhole: {err:?} after {took:?}");
        assert_eq!(err, RdLockError::TimeoutReached);
        assert!(took >= timeout, "{took:?}");
        assert!(took < timeout + SLACK, "{took:?}");
    }
    // A timeout shorter than a round trip still waits for one attempt, within 100 ms.
    for timeout in [Duration::ZERO, Duration::from_millis(20)] {
        let started = Instant::now();
        let err = lock.lock_timeout(timeout).await.unwrap_err();
        let took = started.elapsed();
        println!("lock_timeout({timeout:?}) in a blackhole: {err:?} after {took:?}");
        assert_eq!(err, RdLockError::TimeoutReached);
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < Duration::from_millis(100) + SLACK, "{took:?}");
    }
    // The same for run_timeout, whose job never runs.
    let started = Instant::now();
    let err = lock
        .run_timeout(Duration::from_millis(300), async { unreachable!() })
        .await
        .unwrap_err();
    assert_eq!(err, RdLockError::TimeoutReached);
    assert!(started.elapsed() < Duration::from_millis(300) + SLACK);
    // And for the 1.x BasicLock.
    let mut basic = manager.new_basic_lock("blackholed-basic", 10);
    let started = Instant::now();
    let err = basic
        .lock_timeout(Duration::from_millis(250))
        .await
        .unwrap_err();
    assert_eq!(err, RdLockError::TimeoutReached);
    assert!(started.elapsed() < Duration::from_millis(250) + SLACK);
    // try_lock has no deadline: it waits for its one reply up to the command timeout.
    let started = Instant::now();
    let err = lock.try_lock().await.unwrap_err();
    let took = started.elapsed();
    println!("try_lock in a blackhole: {err:?} after {took:?}");
    assert!(err.is_connection_error(), "{err:?}");
    assert!(took < Duration::from_secs(2) + 2 * SLACK, "{took:?}");
    // Once the path is open again, nothing was left held: the abandoned attempts never
    // reached Redis, or were undone by their tokens.
    proxy.set(Mode::Pass);
    let mut raw = server.conn().await;
    let guard = lock
        .lock_timeout(Duration::from_secs(5))
        .await
        .expect("the lock is free once the path is open");
    drop(guard);
    wait_until(Duration::from_secs(5), "no key left", || {
        let mut raw = raw.clone();
        async move { lock_keys(&mut raw).await.is_empty() }
    })
    .await;
    assert!(lock_keys(&mut raw).await.is_empty());
}

/// Latency, not loss: the attempts reach Redis and take the lock after the caller gave
/// up. Each is undone by its token, on the same connection, after its SET.
#[tokio::test]
async fn attempts_cut_by_the_deadline_are_undone() {
    let server = RedisServer::start();
    let proxy = FaultProxy::to_port(server.port()).await;
    let manager = RdLockConnectionManager::new(proxy.url()).await.unwrap();
    let lock = manager.new_lock("slow").with_lease(Duration::from_secs(10));
    lock.try_lock().await.unwrap().release().await.unwrap();
    proxy.set(Mode::Latency(Duration::from_millis(150)));
    let mut raw = server.conn().await;
    for timeout in [Duration::from_millis(120), Duration::from_millis(200)] {
        let started = Instant::now();
        let err = lock.lock_timeout(timeout).await.unwrap_err();
        let took = started.elapsed();
        println!("lock_timeout({timeout:?}) with 150 ms each way: {err:?} after {took:?}");
        assert_eq!(err, RdLockError::TimeoutReached);
        assert!(took < timeout.max(Duration::from_millis(100)) + SLACK);
    }
    proxy.set(Mode::Pass);
    wait_until(
        Duration::from_secs(5),
        "the late acquisitions were undone",
        || {
            let n = manager.pending_tasks();
            let mut raw = raw.clone();
            async move { n == 0 && lock_keys(&mut raw).await.is_empty() }
        },
    )
    .await;
    // The key was really taken by a late SET, then undone (not never set): the fencing
    // counter moved.
    assert!(lock.last_fencing_token().await.unwrap() >= 2);
    assert!(lock_keys(&mut raw).await.is_empty());
}

/// A short timeout on a free lock over a healthy connection still acquires: one whole
/// attempt is always allowed up to 100 ms.
#[tokio::test]
async fn a_zero_timeout_on_a_free_lock_acquires() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    for (i, timeout) in [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_millis(1),
    ]
    .into_iter()
    .enumerate()
    {
        let lock = manager.new_lock(&format!("free-{i}"));
        let guard = lock.lock_timeout(timeout).await.unwrap();
        guard.release().await.unwrap();
        let mut basic = manager.new_basic_lock(&format!("free-basic-{i}"), 10);
        basic.lock_timeout(timeout).await.unwrap();
        basic.release().await.unwrap();
    }
}
