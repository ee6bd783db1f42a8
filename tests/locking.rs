//! Acquire, exclude, release: the basic contract of `Lock` and `LockGuard`.

mod support;

use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::{assert_quiescent, get, RedisServer};

#[tokio::test]
async fn two_managers_exclude_each_other() {
    let server = RedisServer::start();
    let a = RdLockConnectionManager::new(server.url()).await.unwrap();
    let b = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = a.new_lock("job").try_lock().await.unwrap();
    assert!(guard.is_held());
    assert_eq!(
        b.new_lock("job").try_lock().await.unwrap_err(),
        RdLockError::LockUnavailable
    );
    // Same manager, second acquisition: not reentrant.
    assert_eq!(
        a.new_lock("job").try_lock().await.unwrap_err(),
        RdLockError::LockUnavailable
    );
    // Another id is another lock.
    let _other = b.new_lock("other-job").try_lock().await.unwrap();
    guard.release().await.unwrap();
    let _g = b.new_lock("job").try_lock().await.unwrap();
}

#[tokio::test]
async fn key_holds_a_fresh_token_with_the_lease() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("job").with_lease(Duration::from_secs(7));
    assert_eq!(lock.key(), "rdlock:{job}:lock");
    let g1 = lock.lock().await.unwrap();
    let t1 = get(&mut raw, lock.key()).await.expect("key is set");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(lock.key())
        .query_async(&mut raw)
        .await
        .unwrap();
    // The lease as set (7 s, not the 30 s default nor a unit error); never below two
    // thirds of it while the watchdog renews, however late this PTTL is read.
    assert!(pttl > 4_000 && pttl <= 7_000, "pttl {pttl}");
    g1.release().await.unwrap();
    assert_eq!(get(&mut raw, lock.key()).await, None);
    let _g2 = lock.lock().await.unwrap();
    let t2 = get(&mut raw, lock.key()).await.expect("key is set");
    assert_ne!(t1, t2, "every acquisition has its own token");
    assert_eq!(t2.len(), 32, "a uuid v4 in simple form: {t2}");
}

#[tokio::test]
async fn dropping_the_guard_releases_the_key() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("job");
    let guard = lock.lock().await.unwrap();
    assert!(get(&mut raw, lock.key()).await.is_some());
    drop(guard);
    // The key is deleted, and the watchdog and the release task are gone too.
    assert_quiescent(&server, &manager, lock.key()).await;
}

#[tokio::test]
async fn fencing_tokens_strictly_increase_across_managers() {
    let server = RedisServer::start();
    let a = RdLockConnectionManager::new(server.url()).await.unwrap();
    let b = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut last = 0;
    for i in 0..10 {
        let manager = if i % 2 == 0 { &a } else { &b };
        let guard = manager.new_lock("fenced").lock().await.unwrap();
        assert!(
            guard.fencing_token() > last,
            "{} after {last}",
            guard.fencing_token()
        );
        last = guard.fencing_token();
        guard.release().await.unwrap();
    }
    // Another id has its own counter.
    let g = a.new_lock("other").lock().await.unwrap();
    assert_eq!(g.fencing_token(), 1);
}

#[tokio::test]
async fn lock_timeout_gives_up_at_its_deadline() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("busy");
    let _held = lock.lock().await.unwrap();
    let started = Instant::now();
    let err = lock
        .lock_timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err, RdLockError::TimeoutReached);
    assert!(err.is_timeout());
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A zero timeout makes one attempt.
    assert_eq!(
        lock.lock_timeout(Duration::ZERO).await.unwrap_err(),
        RdLockError::TimeoutReached
    );
    // A timeout too large to represent waits without limit instead of panicking.
    let waiter = lock.lock_timeout(Duration::MAX);
    assert!(tokio::time::timeout(Duration::from_millis(200), waiter)
        .await
        .is_err());
}

#[tokio::test]
async fn release_of_a_stolen_lock_reports_it_and_keeps_the_new_owner() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager
        .new_lock("stolen")
        .with_lease(Duration::from_secs(1));
    let guard = lock.lock().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(lock.key())
        .arg("someone-else")
        .query_async(&mut raw)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("the watchdog reports the loss within a renewal period");
    assert!(!guard.is_held());
    assert!(guard.cancellation_token().is_cancelled());
    assert_eq!(
        guard.release().await.unwrap_err(),
        RdLockError::LockNotAcquired
    );
    assert_eq!(
        get(&mut raw, lock.key()).await.as_deref(),
        Some("someone-else")
    );
}
