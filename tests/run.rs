//! `Lock::run`: the caller's future runs only while the lease is held.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdlock::{RdLockConnectionManager, RdLockError};
use support::{get, wait_until, RedisServer};

#[tokio::test]
async fn run_returns_the_output_and_releases() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("run");
    let mut borrowed = Vec::new(); // the future may borrow from the caller
    let key = lock.key().to_owned();
    let seen_key = lock
        .run(async {
            borrowed.push(1);
            get(&mut server.conn().await, &key).await
        })
        .await
        .unwrap();
    assert!(seen_key.is_some(), "the lock was held while the future ran");
    assert_eq!(borrowed, [1]);
    // Released when `run` returns, not later in the background.
    assert_eq!(get(&mut raw, lock.key()).await, None);
    assert_eq!(manager.pending_tasks(), 0);
}

/// Sets a flag when dropped.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_lost_lease_drops_the_future_and_returns_lease_lost() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager
        .new_lock("lost")
        .with_lease(Duration::from_millis(600));
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let key = lock.key().to_owned();
    let thief = tokio::spawn(async move {
        // Steal the lock once the job is running.
        wait_until(Duration::from_secs(5), "the job holds the lock", || {
            let mut raw = raw.clone();
            let key = key.clone();
            async move { get(&mut raw, &key).await.is_some() }
        })
        .await;
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("thief")
            .query_async(&mut raw)
            .await
            .unwrap();
    });
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        lock.run(async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        }),
    )
    .await
    .expect("run returns once the watchdog sees the theft");
    assert_eq!(outcome.unwrap_err(), RdLockError::LeaseLost);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the job's future was dropped"
    );
    thief.await.unwrap();
    let mut raw = server.conn().await;
    assert_eq!(get(&mut raw, lock.key()).await.as_deref(), Some("thief"));
}

#[tokio::test]
async fn a_panicking_job_still_releases_the_lock() {
    let server = RedisServer::start();
    let raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("panics");
    let task = {
        let lock = lock.clone();
        tokio::spawn(async move {
            lock.run(async {
                panic!("job failed");
            })
            .await
        })
    };
    let err = task.await.unwrap_err();
    assert!(err.is_panic(), "the panic goes on to the caller");
    wait_until(Duration::from_secs(5), "the key is released", || {
        let mut raw = raw.clone();
        let key = lock.key().to_owned();
        async move { get(&mut raw, &key).await.is_none() }
    })
    .await;
}

#[tokio::test]
async fn run_timeout_gives_up_without_running_the_job() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("busy");
    let _held = lock.lock().await.unwrap();
    let ran = AtomicBool::new(false);
    let err = lock
        .run_timeout(Duration::from_millis(200), async {
            ran.store(true, Ordering::SeqCst);
        })
        .await
        .unwrap_err();
    assert_eq!(err, RdLockError::TimeoutReached);
    assert!(!ran.load(Ordering::SeqCst));
}
