//! The watchdog keeps a lease alive past its TTL, and the guard reports a lost lease.

mod support;

use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::{get, RedisServer};

#[tokio::test]
async fn watchdog_keeps_a_one_second_lease_alive_for_three_and_a_half_seconds() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = holder
        .new_lock("long-job")
        .with_lease(Duration::from_secs(1));
    let guard = lock.lock().await.unwrap();
    let token = get(&mut raw, lock.key()).await.unwrap();
    let started = Instant::now();
    let mut checks = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        assert!(guard.is_held(), "lost after {:?}", started.elapsed());
        assert_eq!(
            get(&mut raw, lock.key()).await.as_deref(),
            Some(token.as_str())
        );
        assert_eq!(
            other.new_lock("long-job").try_lock().await.unwrap_err(),
            RdLockError::LockUnavailable
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checks >= 20);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(lock.key())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 1000, "pttl {pttl}");
    // Not lost while held: `lost()` does not complete.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), guard.lost())
            .await
            .is_err()
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn deleting_the_key_is_reported_as_lost() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager
        .new_lock("deleted")
        .with_lease(Duration::from_millis(600));
    let guard = lock.lock().await.unwrap();
    let child = guard.cancellation_token();
    let _: () = redis::cmd("DEL")
        .arg(lock.key())
        .query_async(&mut raw)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("the next renewal (every 200 ms) finds the key gone");
    assert!(!guard.is_held());
    assert!(child.is_cancelled());
}

/// With Redis gone, renewals fail; the guard reports the loss by its local lease
/// deadline — not after some socket timeout.
#[tokio::test]
async fn unreachable_redis_ends_the_lease_at_the_local_deadline() {
    let mut server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lease = Duration::from_secs(1);
    let lock = manager.new_lock("outage").with_lease(lease);
    let acquired = Instant::now();
    let guard = lock.lock().await.unwrap();
    server.stop();
    tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost is reported once the lease deadline passes");
    let at = acquired.elapsed();
    // The local deadline is a drift margin (1 % + 2 ms) before the lease ends; the
    // bound leaves room for a loaded machine's timer latency (the margin itself is
    // checked by `is_held_turns_false_a_drift_margin_before_the_lease_ends`).
    assert!(
        at <= lease + Duration::from_millis(100),
        "reported lost after {at:?}"
    );
    assert!(!guard.is_held());
    // The explicit release reports that it could not reach Redis.
    assert!(guard.release().await.unwrap_err().is_connection_error());
}

/// A blocked executor cannot run the watchdog; `is_held()` still turns false once the
/// lease deadline has passed, without any task having to run.
#[test]
fn is_held_is_honest_when_the_executor_was_blocked() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
        let guard = manager
            .new_lock("starved")
            .with_lease(Duration::from_millis(300))
            .lock()
            .await
            .unwrap();
        assert!(guard.is_held());
        // Blocking code in the critical section: nothing else runs on this runtime.
        std::thread::sleep(Duration::from_millis(700));
        assert!(!guard.is_held(), "the lease deadline has passed");
        assert!(guard.cancellation_token().is_cancelled());
        tokio::time::timeout(Duration::from_millis(50), guard.lost())
            .await
            .expect("lost() completes at once");
    });
}

#[tokio::test]
async fn lost_is_pending_and_tokens_live_while_held() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = manager.new_lock("held").lock().await.unwrap();
    let token = guard.cancellation_token();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), guard.lost())
            .await
            .is_err()
    );
    assert!(!token.is_cancelled());
    // Cancelling the child token does not end the lease.
    token.cancel();
    assert!(guard.is_held());
    let other = guard.cancellation_token();
    assert!(!other.is_cancelled());
    drop(guard);
    assert!(other.is_cancelled(), "the guard's end cancels its tokens");
}

/// `is_held()` turns false a drift margin (1 % of the lease + 2 ms) *before* the lease
/// could end on the server, measured from before the acquire was sent.
#[test]
fn is_held_turns_false_a_drift_margin_before_the_lease_ends() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
        let lease = Duration::from_secs(3); // drift margin: 32 ms
        let lock = manager.new_lock("drift").with_lease(lease);
        lock.try_lock().await.unwrap().release().await.unwrap(); // scripts loaded
                                                                 // The check needs an acquire faster than the margin; retry on a loaded machine.
        for _ in 0..5 {
            let before = Instant::now();
            let guard = lock.lock().await.unwrap();
            if before.elapsed() >= Duration::from_millis(20) {
                guard.release().await.unwrap();
                continue;
            }
            // Blocked past `before + lease - 10 ms`: the lease may still be alive on the
            // server, but no longer with the margin the guard promises.
            std::thread::sleep((before + lease - Duration::from_millis(10)) - Instant::now());
            assert!(!guard.is_held(), "still held within the drift margin");
            return;
        }
        panic!("no acquire took under 20 ms in 5 tries");
    });
}
