//! `Lock::run_with`: the job is given its own acquisition's fencing token (which
//! `last_fencing_token()` inside the job is not: a successor's may be returned) and
//! views of its lease.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdlock::{RdLockConnectionManager, RdLockError};
use support::{assert_quiescent, get, RedisServer};

#[tokio::test]
async fn the_job_gets_its_own_fencing_token() {
    let server = RedisServer::start();
    let raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let thief = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager
        .new_lock("fenced-job")
        .with_lease(Duration::from_millis(900));
    // Earlier acquisitions move the counter.
    for _ in 0..3 {
        lock.try_lock().await.unwrap().release().await.unwrap();
    }
    let key = lock.key().to_owned();
    let (mine, latest_inside, successor, ctx) = lock
        .run_with(|ctx| {
            let (thief, mut raw, key) = (thief.clone(), raw.clone(), key.clone());
            async move {
                assert!(ctx.is_held());
                assert!(get(&mut raw, &key).await.is_some());
                // Another client takes the lock over by force and acquires it: from
                // now on the latest token in Redis is the successor's.
                let stolen = thief.new_lock("fenced-job");
                assert!(stolen.force_release().await.unwrap());
                let successor = stolen.try_lock().await.unwrap();
                let latest = stolen.last_fencing_token().await.unwrap();
                assert_eq!(latest, successor.fencing_token());
                (ctx.fencing_token(), latest, successor, ctx.clone())
            }
        })
        .await
        .unwrap();
    assert_eq!(mine, 4, "the fourth acquisition");
    assert_eq!(latest_inside, 5, "the successor's, not the job's");
    // The release after the job found the key no longer ours; the context says so.
    assert!(successor.is_held());
    tokio::time::timeout(Duration::from_secs(2), ctx.lost())
        .await
        .expect("the context reports the loss");
    assert!(!ctx.is_held());
    assert!(ctx.cancellation_token().is_cancelled());
    let debug = format!("{ctx:?}");
    assert!(debug.contains("fencing_token: 4"), "{debug}");
    successor.release().await.unwrap();
}

#[tokio::test]
async fn the_context_tracks_the_lease_and_the_job_is_not_called_without_the_lock() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("ctx");
    let (fence, token) = lock
        .run_with(|ctx| async move {
            let token = ctx.cancellation_token();
            assert!(!token.is_cancelled());
            (ctx.fencing_token(), token)
        })
        .await
        .unwrap();
    assert_eq!(fence, 1);
    assert!(token.is_cancelled(), "cancelled once the lock is released");
    assert_quiescent(&server, &manager, lock.key()).await;

    // Held elsewhere: run_with_timeout gives up and never calls the job.
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let _held = other.new_lock("ctx").lock().await.unwrap();
    let called = Arc::new(AtomicBool::new(false));
    let err = lock
        .run_with_timeout(Duration::from_millis(200), {
            let called = called.clone();
            move |_ctx| {
                called.store(true, Ordering::SeqCst);
                async {}
            }
        })
        .await
        .unwrap_err();
    assert_eq!(err, RdLockError::TimeoutReached);
    assert!(!called.load(Ordering::SeqCst));
}

/// The job may borrow from the caller, as with `run`.
#[tokio::test]
async fn the_job_may_borrow() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("borrow");
    let mut log = Vec::new();
    let out = lock
        .run_with(|ctx| {
            let log = &mut log;
            async move {
                log.push(ctx.fencing_token());
                7
            }
        })
        .await
        .unwrap();
    assert_eq!(out, 7);
    assert_eq!(log, [1]);
}
