//! Who holds a lock: the owner record kept next to it, and the admin's force release.

mod support;

use std::time::{Duration, Instant, SystemTime};

use rdlock::RdLockConnectionManager;
use support::{get, RedisServer};

#[tokio::test]
async fn holder_is_recorded_with_the_lock_and_never_outlives_it() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager
        .new_lock("backup")
        .with_label("nightly backup")
        .with_lease(Duration::from_secs(1));
    assert_eq!(lock.holder().await.unwrap(), None);
    assert_eq!(lock.last_fencing_token().await.unwrap(), 0);
    let before = SystemTime::now() - Duration::from_secs(1);
    let guard = lock.lock().await.unwrap();
    let holder = lock.holder().await.unwrap().expect("held");
    assert_eq!(holder.pid, std::process::id());
    assert_eq!(holder.label, "nightly backup");
    assert_eq!(holder.fencing_token, guard.fencing_token());
    assert!(!holder.host.is_empty());
    assert!(
        holder.acquired_at >= before
            && holder.acquired_at <= SystemTime::now() + Duration::from_secs(1)
    );
    assert!(holder.remaining_lease.unwrap() <= Duration::from_secs(1));
    assert_eq!(
        lock.last_fencing_token().await.unwrap(),
        guard.fencing_token()
    );
    // Renewed with the lock: still there after more than two leases.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(guard.is_held());
    assert_eq!(
        lock.holder().await.unwrap().unwrap().label,
        "nightly backup"
    );
    // Deleted with it.
    guard.release().await.unwrap();
    assert_eq!(lock.holder().await.unwrap(), None);
    assert_eq!(get(&mut raw, "rdlock:{backup}:owner").await, None);
    // And expiring with it when the holder vanishes without releasing.
    let basic_holder = {
        let mut basic = manager.new_basic_lock("vanishing", 1);
        basic.lock().await.unwrap();
        basic
    };
    drop(basic_holder); // a BasicLock keeps its key until the TTL
    let pttl: i64 = redis::cmd("PTTL")
        .arg("rdlock:{vanishing}:owner")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        pttl > 0 && pttl <= 1000,
        "the owner record has the lock's lease: {pttl}"
    );
}

#[tokio::test]
async fn a_foreign_key_has_an_unknown_holder() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("foreign");
    let _: () = redis::cmd("SET")
        .arg(lock.key())
        .arg("x")
        .query_async(&mut raw)
        .await
        .unwrap();
    let holder = lock.holder().await.unwrap().expect("the key is there");
    assert_eq!((holder.pid, holder.fencing_token), (0, 0));
    assert_eq!(holder.remaining_lease, None, "no expiry");
}

#[tokio::test]
async fn force_release_frees_a_lock_wakes_waiters_and_tells_the_holder() {
    let server = RedisServer::start();
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let admin = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(server.url()).await.unwrap();
    // A lease far longer than the bound below: a waiter that is not woken by the forced
    // release waits it out (9 s); the holder's next renewal comes after a third (3 s).
    let guard = holder
        .new_lock("stuck")
        .with_lease(Duration::from_secs(9))
        .lock()
        .await
        .unwrap();
    let waiting = {
        let lock = waiter.new_lock("stuck");
        tokio::spawn(async move { lock.lock().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let forced = Instant::now();
    assert!(admin.new_lock("stuck").force_release().await.unwrap());
    let g = tokio::time::timeout(Duration::from_secs(7), waiting)
        .await
        .expect("the waiter is woken by the forced release, not by the lease")
        .unwrap()
        .unwrap();
    assert!(forced.elapsed() < Duration::from_secs(2));
    tokio::time::timeout(Duration::from_secs(8), guard.lost())
        .await
        .expect("the old holder learns at its next renewal");
    drop(g);
    assert!(!admin.new_lock("never-held").force_release().await.unwrap());
}
