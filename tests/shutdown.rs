//! `RdLockConnectionManager::shutdown` leaves nothing behind.

mod support;

use std::time::Duration;

use rdlock::{RdLockConnectionManager, RdLockError};
use support::{connected_clients, lock_keys, wait_until, RedisServer};

#[tokio::test]
async fn shutdown_releases_live_and_dropped_guards_and_stops_everything() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let baseline = connected_clients(&mut raw).await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let live = manager.new_lock("live").lock().await.unwrap();
    let live_token = live.cancellation_token();
    let mut dropped = Vec::new();
    for i in 0..50 {
        dropped.push(
            manager
                .new_lock(&format!("dropped-{i}"))
                .lock()
                .await
                .unwrap(),
        );
    }
    let waiter = {
        let lock = manager.new_lock("live");
        tokio::spawn(async move { lock.lock().await })
    };
    assert_eq!(lock_keys(&mut raw).await.len(), 51);
    // Guards dropped right before exit: their releases are still in flight...
    drop(dropped);
    // ...and shutdown waits for them.
    manager.shutdown().await.unwrap();
    assert_eq!(lock_keys(&mut raw).await, Vec::<String>::new());
    assert_eq!(
        manager.pending_tasks(),
        0,
        "watchdogs and releases are done"
    );
    // The live guard was told.
    assert!(!live.is_held());
    assert!(live_token.is_cancelled());
    tokio::time::timeout(Duration::from_millis(100), live.lost())
        .await
        .expect("lost() completes");
    assert_eq!(live.release().await.unwrap_err(), RdLockError::ShutDown);
    // The waiter gave up, and no new lock is taken.
    let outcome = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.unwrap_err(), RdLockError::ShutDown);
    assert!(manager.is_shut_down());
    assert_eq!(
        manager.new_lock("new").try_lock().await.unwrap_err(),
        RdLockError::ShutDown
    );
    // The subscriber connection is closed; the command connection stays until drop.
    wait_until(
        Duration::from_secs(5),
        "the subscriber disconnected",
        || {
            let mut raw = raw.clone();
            async move { connected_clients(&mut raw).await == baseline + 1 }
        },
    )
    .await;
    // A second call is harmless.
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_applies_to_every_clone() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let clone = manager.clone();
    let guard = clone.new_lock("cloned").lock().await.unwrap();
    manager.shutdown().await.unwrap();
    assert!(clone.is_shut_down());
    assert!(!guard.is_held());
    assert_eq!(
        clone.new_lock("cloned").lock().await.unwrap_err(),
        RdLockError::ShutDown
    );
}
