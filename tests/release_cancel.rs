//! Dropping a release in flight — `LockGuard::release()` or the releasing stage of
//! `Lock::run` — still releases the key (in the background), and the local turn passes
//! on only once Redis has been asked (issue 16, item 1).

mod support;

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rdlock::RdLockConnectionManager;
use support::{assert_quiescent, get, wait_until, RedisServer};

/// Long enough that a lost release (the key waits out its lease) cannot pass for a
/// slow one, even on a busy machine.
const LEASE: Duration = Duration::from_secs(30);

async fn pttl(raw: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(raw).await.unwrap()
}

/// The reproduction: the job ends at the very instant the caller's timeout
/// fires, so `run` is dropped right after it sent its release.
#[tokio::test]
async fn dropping_run_while_it_releases_still_releases() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("run-to").with_lease(LEASE);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    let outcome = tokio::time::timeout_at(
        deadline,
        lock.run(async move { tokio::time::sleep_until(deadline).await }),
    )
    .await;
    assert!(outcome.is_err(), "the timeout fired while `run` released");
    let key = lock.key().to_owned();
    wait_until(
        Duration::from_secs(5),
        "the key released (a lost release leaves it for the 30 s lease)",
        || {
            let (mut raw, key) = (raw.clone(), key.clone());
            async move { pttl(&mut raw, &key).await == -2 }
        },
    )
    .await;
    // Another client gets the lock at once.
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = other
        .new_lock("run-to")
        .lock_timeout(Duration::from_secs(5))
        .await
        .expect("the lock is free");
    assert!(get(&mut raw, lock.key()).await.is_some());
    drop(guard);
    assert_quiescent(&server, &other, lock.key()).await;
    assert_quiescent(&server, &manager, lock.key()).await;
}

/// `release()` polled once (the request is queued, not yet written) and dropped.
#[tokio::test]
async fn dropping_release_after_its_first_poll_still_releases() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("release-once").with_lease(LEASE);
    for _ in 0..20 {
        let guard = lock.lock().await.unwrap();
        assert!(get(&mut raw, lock.key()).await.is_some());
        assert!(
            guard.release().now_or_never().is_none(),
            "a release needs a round trip"
        );
        // Released in the background, promptly, not after the 30 s lease.
        let started = Instant::now();
        while get(&mut raw, lock.key()).await.is_some() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the dropped release was lost: PTTL {}",
                pttl(&mut raw, lock.key()).await
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_quiescent(&server, &manager, lock.key()).await;
}

/// A release held up by the server (`CLIENT PAUSE WRITE`) and dropped: the next local
/// task does not get its turn before the release has run in Redis, so its first
/// attempt does not find the lock still held by the guard it follows.
#[tokio::test]
async fn the_local_turn_passes_only_after_redis_was_asked() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("turn").with_lease(LEASE);
    let guard = lock.lock().await.unwrap();
    let next = {
        let lock = lock.clone();
        tokio::spawn(async move {
            let guard = lock.lock().await?;
            Ok::<_, rdlock::RdLockError>((Instant::now(), guard))
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(300)
        .arg("WRITE")
        .query_async(&mut raw)
        .await
        .unwrap();
    let paused = Instant::now();
    let release = tokio::time::timeout(Duration::from_millis(100), guard.release()).await;
    assert!(release.is_err(), "the release waited for the pause");
    let (acquired_at, next_guard) = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("the next local task gets the lock soon after the pause")
        .unwrap()
        .unwrap();
    let after = acquired_at.duration_since(paused);
    println!("the next local task acquired {after:?} after the pause began");
    assert!(after >= Duration::from_millis(250), "{after:?}");
    assert!(after < Duration::from_secs(10), "{after:?}");
    drop(next_guard);
    assert_quiescent(&server, &manager, lock.key()).await;
}
