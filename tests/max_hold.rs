//! `Lock::with_max_hold`: the watchdog stops renewing at the maximum hold, the lease
//! runs out, the guard reports the loss (cause `max_hold`), and `run` stops the job
//! with `RdLockError::MaxHoldReached`.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdlock::{LeaseState, LossCause, RdLockConnectionManager, RdLockError, MAX_LEASE};
use support::{get, RedisServer};

const LEASE: Duration = Duration::from_secs(1);
const MAX_HOLD: Duration = Duration::from_millis(2500);
/// For the reply of the last renewal and a busy machine.
const MARGIN: Duration = Duration::from_millis(700);

/// A 1 s lease with a 2.5 s maximum hold: renewed past the first lease, lost within a
/// lease (+ margin) after the maximum hold, with the cause `max_hold`; the key is gone
/// from Redis by then too (nobody released it: it expired).
#[tokio::test]
async fn a_guard_is_lost_within_a_lease_after_its_max_hold() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager
        .new_lock("max-hold")
        .with_lease(LEASE)
        .with_max_hold(MAX_HOLD);
    assert_eq!(lock.max_hold(), Some(MAX_HOLD));
    let started = Instant::now();
    let guard = lock.lock().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), guard.lost())
        .await
        .expect("lost() within 10 s");
    let lost_at = started.elapsed();
    println!("lost {lost_at:?} after asking for the lock (lease {LEASE:?}, max hold {MAX_HOLD:?})");
    assert!(
        lost_at >= MAX_HOLD,
        "lost at {lost_at:?}: before the maximum hold (renewals stopped early)"
    );
    assert!(
        lost_at <= MAX_HOLD + LEASE + MARGIN,
        "lost only at {lost_at:?}"
    );
    assert_eq!(guard.loss_cause(), Some(LossCause::MaxHold));
    assert_eq!(guard.state(), LeaseState::Lost);
    assert!(!guard.is_held());
    // The local deadline is before the server's expiry (drift margin): wait for it.
    support::wait_until(Duration::from_secs(2), "the key expired", || async {
        get(&mut server.conn().await, lock.key()).await.is_none()
    })
    .await;
    assert_eq!(get(&mut raw, lock.key()).await, None);
}

/// `run` drops the job at the loss and returns `MaxHoldReached`.
#[tokio::test]
async fn run_stops_the_job_at_the_max_hold() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager
        .new_lock("max-hold-run")
        .with_lease(LEASE)
        .with_max_hold(MAX_HOLD);
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        lock.run(async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        }),
    )
    .await
    .expect("run returned within 10 s");
    let ended = started.elapsed();
    println!("run ended after {ended:?}");
    assert_eq!(outcome, Err(RdLockError::MaxHoldReached));
    assert!(dropped.load(Ordering::SeqCst), "the job was dropped");
    assert!(
        ended >= MAX_HOLD && ended <= MAX_HOLD + LEASE + MARGIN,
        "{ended:?}"
    );
    // The job ending before the maximum hold is not affected.
    let quick = lock.run(async { 7 }).await;
    assert_eq!(quick, Ok(7));
}

/// A maximum hold shorter than a third of the lease: no renewal is sent, the lock is
/// held for one lease.
#[tokio::test]
async fn a_max_hold_shorter_than_the_lease_holds_for_one_lease() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager
        .new_lock("short-max-hold")
        .with_lease(LEASE)
        .with_max_hold(Duration::from_millis(100));
    let started = Instant::now();
    let guard = lock.lock().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost() within 5 s");
    let lost_at = started.elapsed();
    println!("lost {lost_at:?} after asking for the lock");
    assert!(lost_at >= LEASE - Duration::from_millis(50), "{lost_at:?}");
    assert!(lost_at <= LEASE + MARGIN, "{lost_at:?}");
    assert_eq!(guard.loss_cause(), Some(LossCause::MaxHold));
}

#[tokio::test]
async fn a_bad_max_hold_is_a_typed_error() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    for bad in [
        Duration::ZERO,
        Duration::from_micros(999),
        MAX_LEASE + Duration::from_millis(1),
        Duration::MAX,
    ] {
        let lock = manager.new_lock("bad-max-hold").with_max_hold(bad);
        for err in [
            lock.try_lock().await.unwrap_err(),
            lock.lock().await.unwrap_err(),
            lock.lock_timeout(Duration::from_secs(1)).await.unwrap_err(),
            lock.run(async {}).await.unwrap_err(),
        ] {
            assert!(
                matches!(err, RdLockError::InvalidMaxHold { max_hold, .. } if max_hold == bad),
                "{bad:?}: {err:?}"
            );
        }
    }
    // Nothing was taken.
    let mut raw = server.conn().await;
    assert_eq!(
        get(&mut raw, manager.new_lock("bad-max-hold").key()).await,
        None
    );
}

struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
