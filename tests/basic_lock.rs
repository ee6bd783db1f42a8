//! The rdlock 1.x `BasicLock` behaves as its documentation says, without 1.x's defects.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdlock::errors::RdLockError;
use rdlock::lock::BasicLock;
use rdlock::RdLockConnectionManager;
use support::{get, RedisServer};

#[tokio::test]
async fn documented_behaviour() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut lock: BasicLock = manager.new_basic_lock("test_lock", 3600);
    let mut lock2 = manager.new_basic_lock("test_lock", 1);
    assert_eq!(lock.id(), "test_lock");
    assert_eq!(lock.ttl(), 3600);

    assert!(!lock.is_locked());
    assert_eq!(lock.release().await, Err(RdLockError::LockNotAcquired));
    assert_eq!(lock.try_lock().await, Ok(()));
    assert!(lock.is_locked());
    // Already locked by this instance: Ok at once.
    assert_eq!(lock.try_lock().await, Ok(()));
    assert_eq!(lock.lock().await, Ok(()));
    assert_eq!(lock.lock_timeout(Duration::from_millis(1)).await, Ok(()));

    assert_eq!(lock2.try_lock().await, Err(RdLockError::LockUnavailable));
    assert_eq!(
        lock2.lock_timeout(Duration::from_millis(200)).await,
        Err(RdLockError::TimeoutReached)
    );
    assert_eq!(lock.release().await, Ok(()));
    assert!(!lock.is_locked());
    assert_eq!(lock.release().await, Err(RdLockError::LockNotAcquired));

    // The local TTL check: after its 1 s TTL, lock2 reports unlocked.
    assert_eq!(lock2.try_lock().await, Ok(()));
    assert!(lock2.is_locked());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!lock2.is_locked());
    // And the key expired in Redis: another instance takes it at once.
    assert_eq!(lock.try_lock().await, Ok(()));
}

/// The 1.x defect: `release` was a plain DEL of a constant value, so a holder whose TTL
/// had passed deleted the next owner's lock. Now the token is checked.
#[tokio::test]
async fn release_never_deletes_the_next_owners_lock() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    // A TTL far longer than the test: its key is made to expire below, while its local
    // TTL check must still say "locked", on however busy a machine.
    let mut first = manager.new_basic_lock("handover", 60);
    first.lock().await.unwrap();
    // Its keys expire (a pause longer than the TTL: the lock key and the 1.x key that
    // a BasicLock also takes by default), the next owner takes the lock...
    let _: () = redis::pipe()
        .pexpire("rdlock:{handover}:lock", 1)
        .ignore()
        .pexpire("/rdlock/handover/.lock", 1)
        .ignore()
        .query_async(&mut raw)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut second = manager.new_basic_lock("handover", 60);
    second.try_lock().await.unwrap();
    let owner = get(&mut raw, "rdlock:{handover}:lock").await;
    // ... and the first one, still believing it holds the lock, releases it.
    assert!(first.is_locked(), "its local TTL has not passed");
    assert_eq!(first.release().await, Err(RdLockError::LockNotAcquired));
    assert_eq!(get(&mut raw, "rdlock:{handover}:lock").await, owner);
    assert_eq!(get(&mut raw, "/rdlock/handover/.lock").await, owner);
    assert!(second.is_locked());
}

/// The scenario of the 1.x crate documentation: two tasks with their own `BasicLock`
/// on one id; the output is always "acquired, releasing" pairs, never interleaved.
#[tokio::test]
async fn the_documented_two_task_example_never_interleaves() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for _ in 0..2 {
        let manager = manager.clone();
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let mut basic_lock = manager.new_basic_lock("my_lock", 3600);
            basic_lock.lock().await.unwrap();
            log.lock().unwrap().push("Acquired lock");
            tokio::time::sleep(Duration::from_millis(200)).await;
            log.lock().unwrap().push("Releasing lock");
            basic_lock.release().await.unwrap();
        }));
    }
    for h in handles {
        tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("the second task is woken by the release, not by the 3600 s TTL")
            .unwrap();
    }
    assert_eq!(
        *log.lock().unwrap(),
        [
            "Acquired lock",
            "Releasing lock",
            "Acquired lock",
            "Releasing lock"
        ]
    );
}

/// Dropping a locked `BasicLock` leaves the key until its TTL, as documented in 1.x.
#[tokio::test]
async fn dropping_a_basic_lock_keeps_the_key_until_its_ttl() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut lock = manager.new_basic_lock("kept", 60);
    lock.lock().await.unwrap();
    drop(lock);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(get(&mut raw, "rdlock:{kept}:lock").await.is_some());
    assert_eq!(manager.pending_tasks(), 0, "no watchdog for a BasicLock");
}
