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
    // Checked as often as the machine allows, and once more after the window: however
    // few checks fit, the last one is 3.5 leases after the acquisition, when a lease
    // that was not renewed is long gone (and `other` would get the lock).
    let mut last = false;
    while !last {
        last = started.elapsed() >= Duration::from_millis(3500);
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
    println!("{checks} checks over {:?}", started.elapsed());
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
    let returned = Instant::now();
    server.stop();
    tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost is reported once the lease deadline passes");
    let at = acquired.elapsed();
    // The local deadline is a drift margin (1 % + 2 ms) before the lease ends (the
    // margin itself is checked by `is_held_turns_false_a_drift_margin_before_the_lease_ends`).
    // Exact form: one lease after the acquire returned (so after the moment the guard
    // counts from), `is_held()` is false, whatever the scheduler did.
    tokio::time::sleep_until((returned + lease).into()).await;
    assert!(!guard.is_held(), "still held one lease after acquiring");
    // Observed form of `lost()`: at the deadline, not after a 2 s connect or response
    // timeout, nor never; the margin is a busy machine's timer and scheduling delay.
    assert!(
        at <= lease + Duration::from_millis(900),
        "reported lost after {at:?}"
    );
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
        // A long lease gives a wide drift margin (1 % + 2 ms = 102 ms): the check below
        // is decisive whenever the acquire takes less than that, which it does by far
        // even on a busy machine (one round trip to a local server).
        let lease = Duration::from_secs(10);
        let margin = lease / 100 + Duration::from_millis(2);
        let lock = manager.new_lock("drift").with_lease(lease);
        lock.try_lock().await.unwrap().release().await.unwrap(); // scripts loaded
        let before = Instant::now();
        let guard = lock.lock().await.unwrap();
        let after = Instant::now();
        // The guard's deadline is at most `after + lease - margin` (it counts from a
        // moment between `before` and `after`); a guard without the margin is held
        // until at least `before + lease`. Look in between.
        let look = after + lease - margin + Duration::from_millis(5);
        assert!(
            look < before + lease,
            "the acquire took {:?}, longer than the drift margin {margin:?}: the check \
             cannot tell a margin from none",
            after - before
        );
        // Blocked until then: the lease may still be alive on the server, but no longer
        // with the margin the guard promises.
        std::thread::sleep(look - Instant::now());
        assert!(!guard.is_held(), "still held within the drift margin");
    });
}
