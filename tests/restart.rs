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
    // Taken after the acquire returned: the guard's deadline counts from before it
    // sent the request, so it is at most one lease after this.
    let acquired = Instant::now();
    let waiter = {
        let lock = manager.new_lock("job");
        tokio::spawn(async move { lock.lock().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop();

    // The holder learns its lease is gone by its deadline: `lost()` completes then (with
    // room for a busy machine's timer delay), not after a 2 s connect or response
    // timeout, and not only once Redis is back (more than 2 s later, below) or never.
    tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .unwrap();
    let lost_at = acquired.elapsed();
    assert!(lost_at <= lease + Duration::from_millis(900), "{lost_at:?}");
    assert!(!guard.is_held());
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
    // Its retries back off to 2 s at most, the connection's reconnects to 1 s: a few
    // seconds, with room for a busy machine. A waiter that gave up retrying hangs, one
    // that waits for its own 30 s lease misses by far.
    assert!(back.elapsed() < Duration::from_secs(10));
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
