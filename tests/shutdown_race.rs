//! `shutdown()` while an acquisition is in flight: the attempt is undone and reports
//! `ShutDown`, and `shutdown()` waits for it (issue 16, item 2).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::{lock_keys, pause_writes, RedisServer};

#[derive(Clone, Copy, Debug)]
enum How {
    Lock,
    LockTimeout,
    TryLock,
    Run,
}

/// The reproduction: the server holds the acquire (`CLIENT PAUSE 400 WRITE`)
/// while the manager shuts down.
async fn shutdown_during_an_attempt(how: How) {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager
        .new_lock("in-flight")
        .with_lease(Duration::from_millis(600));
    // Load the scripts, so that the paused EVALSHA is the acquire itself.
    lock.try_lock().await.unwrap().release().await.unwrap();
    pause_writes(&mut raw, 400).await;
    let attempt = {
        let lock = lock.clone();
        tokio::spawn(async move {
            match how {
                How::Lock => lock.lock().await.map(Some),
                How::LockTimeout => lock.lock_timeout(Duration::from_secs(10)).await.map(Some),
                How::TryLock => lock.try_lock().await.map(Some),
                How::Run => lock.run(async {}).await.map(|()| None),
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let shutdown = manager.shutdown().await;
    let took = started.elapsed();
    println!("{how:?}: shutdown returned {shutdown:?} after {took:?}");
    shutdown.unwrap();
    assert!(
        took >= Duration::from_millis(250),
        "{how:?}: shutdown did not wait for the attempt in flight ({took:?})"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .expect("the attempt ends")
        .unwrap();
    assert_eq!(
        outcome.as_ref().err(),
        Some(&RdLockError::ShutDown),
        "{how:?}: {outcome:?}"
    );
    // Nothing is held, nothing renews, nothing runs.
    assert_eq!(lock_keys(&mut raw).await, Vec::<String>::new(), "{how:?}");
    assert_eq!(manager.pending_tasks(), 0, "{how:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(lock_keys(&mut raw).await, Vec::<String>::new(), "{how:?}");
    assert_eq!(manager.pending_tasks(), 0, "{how:?}");
}

#[tokio::test]
async fn shutdown_during_lock_undoes_the_attempt() {
    shutdown_during_an_attempt(How::Lock).await;
}

#[tokio::test]
async fn shutdown_during_lock_timeout_undoes_the_attempt() {
    shutdown_during_an_attempt(How::LockTimeout).await;
}

#[tokio::test]
async fn shutdown_during_try_lock_undoes_the_attempt() {
    shutdown_during_an_attempt(How::TryLock).await;
}

#[tokio::test]
async fn shutdown_during_run_undoes_the_attempt() {
    shutdown_during_an_attempt(How::Run).await;
}

/// Many tasks acquiring and releasing while the manager shuts down: once `shutdown()`
/// has returned, no key is left, no task runs, and no guard says it is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_amid_churn_leaves_nothing_behind() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let kept = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let lock = manager
            .new_lock(&format!("churn-{}", i % 4))
            .with_lease(Duration::from_secs(5));
        let kept = kept.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0u64.. {
                let outcome = if i % 2 == 0 {
                    lock.lock().await
                } else {
                    lock.try_lock().await
                };
                match outcome {
                    // Keep one guard in seven alive, to be checked after shutdown.
                    Ok(guard) if round % 7 == 0 => kept.lock().unwrap().push(guard),
                    Ok(guard) => {
                        tokio::task::yield_now().await;
                        drop(guard);
                    }
                    Err(RdLockError::ShutDown) => return,
                    Err(RdLockError::LockUnavailable) => tokio::task::yield_now().await,
                    Err(e) => panic!("{e:?}"),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    manager.shutdown().await.unwrap();
    let kept_now: Vec<bool> = kept.lock().unwrap().iter().map(|g| g.is_held()).collect();
    assert!(
        kept_now.iter().all(|held| !held),
        "a guard says held after shutdown returned: {kept_now:?}"
    );
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("every task sees ShutDown")
            .unwrap();
    }
    let kept_after: Vec<bool> = kept.lock().unwrap().iter().map(|g| g.is_held()).collect();
    assert!(kept_after.iter().all(|held| !held), "{kept_after:?}");
    assert_eq!(lock_keys(&mut raw).await, Vec::<String>::new());
    assert_eq!(manager.pending_tasks(), 0);
}
