//! Adversarial review of the Redis-side queue of waiting processes (`src/queue.rs`):
//! interleavings the first tests did not construct.

mod support;

use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::RedisServer;

async fn queue(conn: &mut redis::aio::MultiplexedConnection, id: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(format!("rdlock:{{{id}}}:queue"))
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap()
}

/// A waiter gives up (its deadline) and the same task waits again at once: the
/// background `leave` of the first wait must not take out the entry the second wait's
/// attempt just made, or the holder's release finds nobody in line, publishes nothing,
/// and the waiter sits out the holder's whole lease.
async fn retry_after_timeout_is_woken_by_the_release() {
    const LEASE: Duration = Duration::from_secs(20);
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = holder
        .new_lock("retry")
        .with_lease(LEASE)
        .lock()
        .await
        .unwrap();
    let lock = waiter.new_lock("retry");
    let waiting = tokio::spawn(async move {
        let first = lock.lock_timeout(Duration::from_millis(300)).await;
        assert!(matches!(first, Err(RdLockError::TimeoutReached)), "{first:?}");
        // At once, as a retry loop does.
        lock.lock_timeout(Duration::from_secs(60)).await
    });
    // Long after the second wait began (and the first one's leave ran).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let in_line = queue(&mut raw, "retry").await;
    let released = Instant::now();
    guard.release().await.unwrap();
    let acquired = tokio::time::timeout(Duration::from_secs(40), waiting)
        .await
        .expect("acquired within the test's bound")
        .unwrap()
        .expect("acquired");
    let took = released.elapsed();
    assert!(
        took < LEASE / 4,
        "the retry waited {took:?} after the release (queue at release: {in_line:?})"
    );
    acquired.release().await.unwrap();
}

#[tokio::test]
async fn retry_after_timeout_is_woken_by_the_release_current_thread() {
    retry_after_timeout_is_woken_by_the_release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_timeout_is_woken_by_the_release_multi_thread() {
    retry_after_timeout_is_woken_by_the_release().await;
}
