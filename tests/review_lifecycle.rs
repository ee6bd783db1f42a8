//! Review of issue 16's fixes: what a fresh reader found by trying to break them.

mod support;

use std::time::{Duration, Instant};

use rdlock::RdLockConnectionManager;
use support::{wait_until, RedisServer, ServerConfig};

/// A guard dropped while a script keeps the server `BUSY`: the background release is
/// answered `BUSY` ("retry later", which `lock()` now waits through). It must not give
/// up: otherwise the key, whose owner is gone, blocks every waiter for the rest of its
/// lease (30 s here) although the server serves again within a second.
#[tokio::test]
async fn a_drop_release_answered_busy_is_retried() {
    let server = RedisServer::start_with(ServerConfig {
        keyspace_events: None,
        args: ["--lua-time-limit", "50"].map(String::from).to_vec(),
    });
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let lock = manager.new_lock("busy-drop").with_lease(lease);
    let guard = lock.lock().await.unwrap();

    let mut hog = server.conn().await;
    let busy = tokio::spawn(async move {
        redis::cmd("EVAL")
            .arg("while true do end")
            .arg(0)
            .query_async::<()>(&mut hog)
            .await
    });
    wait_until(Duration::from_secs(10), "the server answers BUSY", || {
        let reply = server.ping_reply();
        async move { reply.is_some_and(|r| r.starts_with("BUSY")) }
    })
    .await;

    drop(guard);
    // Let the background release be answered (BUSY) while the script still runs: it
    // has finished when no task is left, or (if it retries) after a while.
    let dropped = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "the drop-release answered, or 1.5 s",
        || {
            let done =
                manager.pending_tasks() == 0 || dropped.elapsed() > Duration::from_millis(1500);
            async move { done }
        },
    )
    .await;
    println!(
        "pending tasks {} after {:?}",
        manager.pending_tasks(),
        dropped.elapsed()
    );

    let client = server.client();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SCRIPT")
        .arg("KILL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(busy.await.unwrap().is_err(), "the script was killed");

    // The server serves again: the lock must be free long before its 30 s lease ends.
    let started = Instant::now();
    let got = other
        .new_lock("busy-drop")
        .with_lease(lease)
        .lock_timeout(Duration::from_secs(10))
        .await;
    println!(
        "other manager: {:?} after {:?}",
        got.as_ref().map(|_| ()),
        started.elapsed()
    );
    let guard = got.expect("the dropped guard's key was released once the server served again");
    guard.release().await.unwrap();
    manager.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
}
