//! Review of issue 16's fixes: what a fresh reader found by trying to break them.

mod support;

use std::time::{Duration, Instant};

use rdlock::RdLockConnectionManager;
use support::{wait_until, RedisServer, ServerConfig};

/// A server whose scripts are answered `BUSY` after 50 ms.
fn busy_capable_server() -> RedisServer {
    RedisServer::start_with(ServerConfig {
        keyspace_events: None,
        args: ["--lua-time-limit", "50"].map(String::from).to_vec(),
    })
}

/// Starts a script that never ends on its own; returns once the server answers `BUSY`.
async fn make_busy(server: &RedisServer) -> tokio::task::JoinHandle<redis::RedisResult<()>> {
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
    busy
}

/// Kills the script (on a fresh connection: the shared ones queue behind it).
async fn end_busy(server: &RedisServer, busy: tokio::task::JoinHandle<redis::RedisResult<()>>) {
    let mut conn = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("SCRIPT")
        .arg("KILL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(busy.await.unwrap().is_err(), "the script was killed");
}

/// A guard dropped while a script keeps the server `BUSY`: the background release is
/// answered `BUSY` ("retry later", which `lock()` now waits through). It must not give
/// up: otherwise the key, whose owner is gone, blocks every waiter for the rest of its
/// lease (30 s here) although the server serves again within a second.
#[tokio::test]
async fn a_drop_release_answered_busy_is_retried() {
    let server = busy_capable_server();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let lock = manager.new_lock("busy-drop").with_lease(lease);
    let guard = lock.lock().await.unwrap();
    let busy = make_busy(&server).await;

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

    end_busy(&server, busy).await;

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

/// `shutdown()` while the server answers `BUSY`: its release of a live guard is
/// answered "retry later". Within its 5 s bound it must retry, not leave the key of a
/// shut-down process held for the rest of its lease (30 s here).
#[tokio::test]
async fn shutdown_retries_a_release_answered_busy() {
    let server = busy_capable_server();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let guard = manager
        .new_lock("busy-shutdown")
        .with_lease(lease)
        .lock()
        .await
        .unwrap();
    let busy = make_busy(&server).await;
    let shutting = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.shutdown().await })
    };
    // Let shutdown's release be answered (BUSY) while the script still runs.
    let started = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "shutdown returned, or 1.5 s",
        || {
            let done = shutting.is_finished() || started.elapsed() > Duration::from_millis(1500);
            async move { done }
        },
    )
    .await;
    end_busy(&server, busy).await;
    let outcome = shutting.await.unwrap();
    println!("shutdown: {outcome:?} after {:?}", started.elapsed());
    assert!(!guard.is_held());
    drop(guard);

    let waited = Instant::now();
    let got = other
        .new_lock("busy-shutdown")
        .with_lease(lease)
        .lock_timeout(Duration::from_secs(10))
        .await;
    println!(
        "other manager: {:?} after {:?}",
        got.as_ref().map(|_| ()),
        waited.elapsed()
    );
    let guard = got.expect("shutdown released the key once the server served again");
    guard.release().await.unwrap();
    assert_eq!(
        outcome,
        Ok(()),
        "shutdown released everything within its bound"
    );
    other.shutdown().await.unwrap();
}

/// `guard.release()` answered `BUSY`: it reports the error, but the guard is gone and
/// its token with it, so the caller cannot try again. The key must not stay held for
/// the rest of its lease (30 s here) once the server serves again.
#[tokio::test]
async fn a_release_answered_busy_is_completed_in_the_background() {
    let server = busy_capable_server();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let guard = manager
        .new_lock("busy-release")
        .with_lease(lease)
        .lock()
        .await
        .unwrap();
    let busy = make_busy(&server).await;
    let err = guard.release().await.expect_err("the server is busy");
    println!("release: {err:?}");
    assert!(err.is_connection_error(), "{err:?}");
    end_busy(&server, busy).await;

    let waited = Instant::now();
    let got = other
        .new_lock("busy-release")
        .with_lease(lease)
        .lock_timeout(Duration::from_secs(10))
        .await;
    println!(
        "other manager: {:?} after {:?}",
        got.as_ref().map(|_| ()),
        waited.elapsed()
    );
    let guard = got.expect("the key was released once the server served again");
    guard.release().await.unwrap();
    manager.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
}

/// A `RunContext` handed to spawned work (as its docs suggest: "spawned work must
/// check" `is_held()`) must not say the lease is held once `run_with` has released the
/// lock — least of all while another owner holds it.
#[tokio::test]
async fn a_run_context_is_not_held_after_the_run_released_the_lock() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let lock = manager.new_lock("ctx-after-run").with_lease(lease);
    let ctx = lock
        .run_with(|ctx| async move { ctx })
        .await
        .expect("the run");
    let successor = other
        .new_lock("ctx-after-run")
        .with_lease(lease)
        .lock_timeout(Duration::from_secs(10))
        .await
        .expect("the lock was released by the run");
    println!(
        "old ctx {ctx:?}, successor fence {}",
        successor.fencing_token()
    );
    assert!(
        !ctx.is_held(),
        "the finished run's context says held while fence {} holds the lock",
        successor.fencing_token()
    );
    tokio::time::timeout(Duration::from_secs(10), ctx.lost())
        .await
        .expect("lost() completes once the run has released the lock");
    successor.release().await.unwrap();
    manager.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
}
