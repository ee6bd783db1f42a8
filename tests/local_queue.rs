//! Tasks of one manager waiting for the same lock queue locally, in arrival order:
//! only the head contends in Redis, so Redis work per acquisition does not grow with
//! the number of waiting tasks, and no task starves.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::{commands_run, reset_stats, RedisServer};

/// Commands per acquire+release cycle of `tasks` tasks looping on one key for `run_for`,
/// and each task's number of acquisitions.
async fn contend(server: &RedisServer, tasks: usize, run_for: Duration) -> (f64, Vec<u64>) {
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut raw = server.conn().await;
    let lock = Arc::new(manager.new_lock("queue"));
    reset_stats(&mut raw).await;
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let lock = lock.clone();
        handles.push(tokio::spawn(async move {
            let mut acquired = 0u64;
            while started.elapsed() < run_for {
                let guard = lock.lock().await.unwrap();
                acquired += 1;
                guard.release().await.unwrap();
            }
            acquired
        }));
    }
    let mut per_task = Vec::new();
    for h in handles {
        per_task.push(h.await.unwrap());
    }
    let total: u64 = per_task.iter().sum();
    let commands = commands_run(&mut raw).await;
    (commands as f64 / total as f64, per_task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_local_waiters_cost_what_one_does_and_none_starves() {
    let server = RedisServer::start();
    let (alone, _) = contend(&server, 1, Duration::from_millis(500)).await;
    let (crowded, per_task) = contend(&server, 16, Duration::from_millis(1500)).await;
    let total: u64 = per_task.iter().sum();
    let mean = total as f64 / per_task.len() as f64;
    let min = *per_task.iter().min().unwrap();
    println!(
        "commands per acquisition: 1 task {alone:.2}, 16 tasks {crowded:.2}; \
         acquisitions per task min {min}, mean {mean:.1}"
    );
    // Uncontended: acquire (EVALSHA, SET NX, INCR, SET of the owner record) and release
    // (EVALSHA, GET, LPOP of the empty queue, DEL; no PUBLISH, nobody waits): 8, was 10
    // before the trimmed scripts (PTTL first, TIME, a PUBLISH on every release).
    assert!(alone <= 8.5, "{alone}");
    assert!(
        crowded <= alone * 1.25,
        "a herd: {crowded} vs {alone} commands"
    );
    assert!(min as f64 >= mean * 0.25, "a task starved: {per_task:?}");
}

#[tokio::test]
async fn try_lock_does_not_ask_redis_while_a_local_task_holds_the_lock() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("local");
    let _guard = lock.lock().await.unwrap();
    reset_stats(&mut raw).await;
    for _ in 0..100 {
        assert_eq!(
            lock.try_lock().await.unwrap_err(),
            RdLockError::LockUnavailable
        );
    }
    assert_eq!(commands_run(&mut raw).await, 0);
}

/// The local queue never stands in for Redis: a task of another manager (another
/// process) still excludes, and is excluded by, the local queue's head.
#[tokio::test]
async fn the_local_queue_never_bypasses_redis() {
    let server = RedisServer::start();
    let a = RdLockConnectionManager::new(server.url()).await.unwrap();
    let b = RdLockConnectionManager::new(server.url()).await.unwrap();
    let remote = b.new_lock("shared").lock().await.unwrap();
    let lock = Arc::new(a.new_lock("shared"));
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let lock = lock.clone();
            tokio::spawn(async move { lock.lock().await.map(|g| (Instant::now(), g)) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "acquired past a remote holder"
    );
    let released = Instant::now();
    remote.release().await.unwrap();
    for w in waiters {
        let (at, guard) = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(at >= released, "acquired before the remote holder released");
        drop(guard);
    }
}
