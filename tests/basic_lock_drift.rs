//! `BasicLock` in the drift window: its local TTL check (`is_locked()`) turns false 1 % of
//! the TTL + 2 ms before the key expires in Redis. In that window `release()` still
//! deletes the key (token-checked) and `try_lock()`/`lock()` take it again instead of
//! colliding with their own key, as in rdlock 1.x.
//!
//! The window is made long by stretching the key's expiry in Redis (as a server clock
//! running slow would): a 1 s TTL whose key lives 60 s.

mod support;

use std::time::Duration;

use rdlock::errors::RdLockError;
use rdlock::RdLockConnectionManager;
use support::{get, RedisServer};

const KEY: &str = "rdlock:{drift}:lock";

/// A slow server clock stretches every key alike: the lock key, its owner record and
/// the rdlock 1.x key that a `BasicLock` also takes by default (with the same lease).
async fn stretch(raw: &mut redis::aio::MultiplexedConnection) {
    for key in [KEY, "rdlock:{drift}:owner", "/rdlock/drift/.lock"] {
        let _: () = redis::cmd("PEXPIRE")
            .arg(key)
            .arg(60_000)
            .query_async(raw)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn release_in_the_drift_window_deletes_the_key() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut lock = manager.new_basic_lock("drift", 1);
    lock.try_lock().await.unwrap();
    stretch(&mut raw).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!lock.is_locked(), "past the local cut-off");
    assert!(get(&mut raw, KEY).await.is_some(), "the key is still ours");
    assert_eq!(lock.release().await, Ok(()));
    assert_eq!(get(&mut raw, KEY).await, None);
    assert_eq!(lock.release().await, Err(RdLockError::LockNotAcquired));
}

#[tokio::test]
async fn try_lock_and_lock_in_the_drift_window_take_the_lock_again() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut lock = manager.new_basic_lock("drift", 1);
    for round in 0..2 {
        lock.try_lock().await.unwrap();
        stretch(&mut raw).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(!lock.is_locked());
        if round == 0 {
            assert_eq!(lock.try_lock().await, Ok(()), "not LockUnavailable");
        } else {
            let taken = tokio::time::timeout(Duration::from_secs(5), lock.lock()).await;
            assert_eq!(taken.ok(), Some(Ok(())), "not a wait for its own key");
        }
        assert!(lock.is_locked(), "a fresh local TTL");
        let pttl: i64 = redis::cmd("PTTL")
            .arg(KEY)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(
            (1..=1000).contains(&pttl),
            "the key has the TTL again: {pttl}"
        );
        // Another instance still cannot take it.
        let mut other = manager.new_basic_lock("drift", 1);
        assert_eq!(other.try_lock().await, Err(RdLockError::LockUnavailable));
        assert_eq!(lock.release().await, Ok(()));
        assert_eq!(get(&mut raw, KEY).await, None);
    }
}

/// Once the key is gone (the TTL really ended), `release` says so and `try_lock` takes a
/// fresh lock, as before.
#[tokio::test]
async fn after_the_ttl_the_old_token_is_forgotten() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut lock = manager.new_basic_lock("drift", 1);
    lock.try_lock().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&mut raw, KEY).await, None);
    assert_eq!(lock.release().await, Err(RdLockError::LockNotAcquired));
    lock.try_lock().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(lock.try_lock().await, Ok(()));
    assert!(lock.is_locked());
    assert_eq!(lock.release().await, Ok(()));
}
