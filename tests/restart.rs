//! Redis stops and comes back on the same port, empty: guards report the loss, waiters
//! keep waiting and then get the lock, and the manager recovers without being rebuilt.

mod support;

use std::time::{Duration, Instant};

use rdlock::RdLockConnectionManager;
use support::RedisServer;

#[tokio::test]
async fn waiters_and_the_manager_survive_a_redis_restart() {
    let mut server = RedisServer::start();
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lease = Duration::from_secs(1);
    let guard = holder
        .new_lock("job")
        .with_lease(lease)
        .lock()
        .await
        .unwrap();
    let acquired = Instant::now();
    let waiter = {
        let lock = manager.new_lock("job");
        tokio::spawn(async move { lock.lock().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop();

    // The holder learns its lease is gone by its deadline.
    tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .unwrap();
    assert!(acquired.elapsed() <= lease + Duration::from_millis(100));
    // try_lock reports the outage promptly.
    let started = Instant::now();
    let err = manager.new_lock("other").try_lock().await.unwrap_err();
    assert!(err.is_connection_error(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The waiter keeps waiting through the outage instead of failing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter gave up during the outage"
    );

    server.start_again();
    let back = Instant::now();
    let g = tokio::time::timeout(Duration::from_secs(15), waiter)
        .await
        .expect("the waiter gets the lock soon after Redis is back")
        .unwrap()
        .unwrap();
    println!("waiter acquired {:?} after the restart", back.elapsed());
    assert!(back.elapsed() < Duration::from_secs(6));
    assert!(g.is_held());
    // The same manager keeps working: wake-ups through the resubscribed subscriber too.
    let again = manager.new_lock("after-restart").try_lock().await.unwrap();
    let next = {
        let lock = manager.new_lock("after-restart");
        tokio::spawn(async move { lock.lock().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let released = Instant::now();
    again.release().await.unwrap();
    let _next = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(released.elapsed() < Duration::from_secs(3));
}
