//! `Lock::force_release_if`: the administrator's delete, only if the lock is still held
//! by the acquisition that was inspected (its fencing token).

mod support;

use std::time::Duration;

use rdlock::RdLockConnectionManager;
use support::{get, RedisServer};

#[tokio::test]
async fn force_release_if_deletes_only_the_acquisition_with_that_fence() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let admin = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = admin.new_lock("job");
    assert!(!lock.force_release_if(0).await.unwrap(), "free");

    let first = holder.new_lock("job").lock().await.unwrap();
    let shown = lock.holder().await.unwrap().unwrap();
    assert_eq!(shown.fencing_token, 1);
    // Between the look and the delete, the lock changes hands.
    first.release().await.unwrap();
    let second = holder.new_lock("job").lock().await.unwrap();
    assert!(!lock.force_release_if(shown.fencing_token).await.unwrap());
    assert!(get(&mut raw, "rdlock:{job}:lock").await.is_some());
    assert!(second.is_held());

    assert!(lock.force_release_if(2).await.unwrap());
    assert_eq!(get(&mut raw, "rdlock:{job}:lock").await, None);
    assert_eq!(get(&mut raw, "rdlock:{job}:owner").await, None);
    tokio::time::timeout(Duration::from_secs(15), second.lost())
        .await
        .expect("the robbed holder learns at its next renewal");
}

/// A key that something other than rdlock wrote has no owner record: its fencing token
/// reads as 0, as `holder()` shows it.
#[tokio::test]
async fn a_foreign_key_has_fence_zero() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let admin = RdLockConnectionManager::new(server.url()).await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("rdlock:{foreign}:lock")
        .arg("x")
        .query_async(&mut raw)
        .await
        .unwrap();
    let lock = admin.new_lock("foreign");
    assert_eq!(lock.holder().await.unwrap().unwrap().fencing_token, 0);
    assert!(!lock.force_release_if(1).await.unwrap());
    assert!(lock.force_release_if(0).await.unwrap());
    assert_eq!(get(&mut raw, "rdlock:{foreign}:lock").await, None);
}
