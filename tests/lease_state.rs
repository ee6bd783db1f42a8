//! The three-state lease (`LockGuard::state`, `LockGuard::suspect`): held, suspect,
//! lost. Driven by the fault proxy (a blackhole between the holder and Redis) and by
//! error replies from the server.

mod support;

use std::time::{Duration, Instant};

use rdlock::{LeaseState, LossCause, RdLockConnectionManager};
use support::proxy::{FaultProxy, Mode};
use support::{wait_until, RedisServer};

/// Renewals every ~1.3 s; a renewal that meets the blackhole times out 0.5 s later
/// (suspect), and the local deadline comes ~2 s after that (lost).
const LEASE: Duration = Duration::from_secs(4);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

async fn manager_through(proxy: &FaultProxy) -> RdLockConnectionManager {
    RdLockConnectionManager::builder()
        .response_timeout(RESPONSE_TIMEOUT)
        .connect(proxy.url())
        .await
        .unwrap()
}

/// A blackhole after the acquisition: the guard turns suspect (still `is_held`) at
/// the first renewal that goes unanswered, well before its deadline, then lost by the
/// deadline, with the cause `unreachable`.
#[tokio::test]
async fn a_blackhole_turns_a_guard_suspect_before_it_is_lost() {
    let server = RedisServer::start();
    let proxy = FaultProxy::to_port(server.port()).await;
    let manager = manager_through(&proxy).await;
    let lock = manager.new_lock("suspect-then-lost").with_lease(LEASE);
    let started = Instant::now();
    let guard = lock.lock().await.unwrap();
    assert_eq!(guard.state(), LeaseState::Held);

    proxy.set(Mode::Blackhole);
    tokio::time::timeout(Duration::from_secs(10), guard.suspect())
        .await
        .expect("suspect() did not complete within 10 s of the blackhole");
    let suspect_at = started.elapsed();
    // Read right after: the deadline is ~2 s away.
    let state = guard.state();
    let held = guard.is_held();
    println!("suspect {suspect_at:?} after asking for the lock ({state:?})");
    assert_eq!(
        state,
        LeaseState::Suspect,
        "suspect() completed, but the state is {state:?}"
    );
    assert!(held, "a suspect lease is still held (not known lost)");
    assert_eq!(guard.loss_cause(), None);
    assert!(
        suspect_at < LEASE,
        "suspect only {suspect_at:?} after the acquisition: not before the lease's end"
    );

    tokio::time::timeout(Duration::from_secs(10), guard.lost())
        .await
        .expect("lost() did not complete within 10 s of the blackhole");
    let lost_at = started.elapsed();
    println!("lost {lost_at:?} after asking for the lock");
    assert!(lost_at > suspect_at);
    assert!(
        lost_at <= LEASE + Duration::from_millis(500),
        "lost only at {lost_at:?}"
    );
    assert_eq!(guard.state(), LeaseState::Lost);
    assert!(!guard.is_held());
    assert_eq!(guard.loss_cause(), Some(LossCause::Unreachable));
    // suspect() completes at once on a lost lease.
    tokio::time::timeout(Duration::from_millis(100), guard.suspect())
        .await
        .expect("suspect() on a lost lease completes at once");
    proxy.set(Mode::Pass);
}

/// A blackhole that heals before the deadline: suspect, then held again once a
/// renewal (on the replaced connection: the timed-out one was retired) confirms the
/// token. The lock was never lost: nobody else could take it meanwhile.
#[tokio::test]
async fn a_healed_connection_brings_a_suspect_guard_back_to_held() {
    let server = RedisServer::start();
    let proxy = FaultProxy::to_port(server.port()).await;
    let manager = manager_through(&proxy).await;
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("suspect-then-held").with_lease(LEASE);
    let guard = lock.lock().await.unwrap();

    proxy.set(Mode::Blackhole);
    tokio::time::timeout(Duration::from_secs(10), guard.suspect())
        .await
        .expect("suspect() did not complete within 10 s of the blackhole");
    assert_eq!(guard.state(), LeaseState::Suspect);
    proxy.set(Mode::Pass);

    wait_until(
        Duration::from_secs(10),
        "the guard is held again",
        || async { guard.state() == LeaseState::Held },
    )
    .await;
    assert!(guard.is_held());
    assert_eq!(guard.loss_cause(), None);
    // Held for real: another manager cannot take it.
    let err = other
        .new_lock("suspect-then-held")
        .try_lock()
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    // And suspect() waits again: it does not complete while the lease is held.
    let pending = tokio::time::timeout(Duration::from_millis(300), guard.suspect()).await;
    assert!(pending.is_err(), "suspect() completed on a held lease");
    guard.release().await.unwrap();
}

/// A command connection replaced under a guard (another lock's command timed out
/// and retired it) makes the guard suspect at once, though its own renewals never
/// failed; the next renewal, on the new connection, confirms it.
#[tokio::test]
async fn a_replaced_connection_makes_a_guard_suspect_until_the_next_renewal() {
    let server = RedisServer::start();
    let proxy = FaultProxy::to_port(server.port()).await;
    let manager = manager_through(&proxy).await;
    let lock = manager.new_lock("replaced").with_lease(LEASE);
    let guard = lock.lock().await.unwrap();
    assert_eq!(guard.state(), LeaseState::Held);

    // Another lock's try_lock times out on a blackholed connection: retired.
    proxy.set(Mode::Blackhole);
    let err = manager.new_lock("bystander").try_lock().await.unwrap_err();
    assert!(err.is_connection_error(), "{err:?}");
    proxy.set(Mode::Pass);
    // The guard's own renewal may or may not have met the blackhole; either way it is
    // suspect now, and suspect() says so at once.
    assert_eq!(guard.state(), LeaseState::Suspect);
    tokio::time::timeout(Duration::from_millis(500), guard.suspect())
        .await
        .expect("suspect() completes on a replaced connection");
    wait_until(
        Duration::from_secs(10),
        "the guard is held again",
        || async { guard.state() == LeaseState::Held },
    )
    .await;
    guard.release().await.unwrap();
}

/// A renewal answered with an error reply (`NOREPLICAS`: `min-replicas-to-write`
/// is not met) makes the guard suspect; once the server accepts writes again, the
/// next renewal makes it held.
#[tokio::test]
async fn a_renewal_error_reply_makes_a_guard_suspect() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("error-reply").with_lease(LEASE);
    let guard = lock.lock().await.unwrap();
    assert_eq!(guard.state(), LeaseState::Held);

    let set_min_replicas = |n: &'static str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("min-replicas-to-write")
            .arg(n)
            .clone()
    };
    set_min_replicas("1")
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), guard.suspect())
        .await
        .expect("suspect() did not complete within 10 s of refused writes");
    assert_eq!(guard.state(), LeaseState::Suspect);
    assert!(guard.is_held());
    set_min_replicas("0")
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the guard is held again",
        || async { guard.state() == LeaseState::Held },
    )
    .await;
    assert_eq!(guard.loss_cause(), None);
    guard.release().await.unwrap();
}

/// A loss by takeover (the key deleted and taken by another owner) is lost at once,
/// with the cause `taken_over`; `run_with`'s context sees the same states.
#[tokio::test]
async fn a_taken_over_lease_is_lost_with_its_cause() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager
        .new_lock("taken-over")
        .with_lease(Duration::from_millis(600));
    let guard = lock.lock().await.unwrap();
    assert!(other.new_lock("taken-over").force_release().await.unwrap());
    let _thief = other.new_lock("taken-over").lock().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost() within 5 s");
    assert_eq!(guard.state(), LeaseState::Lost);
    assert_eq!(guard.loss_cause(), Some(LossCause::TakenOver));

    let states = manager
        .new_lock("ctx")
        .run_with(|ctx| async move { (ctx.state(), ctx) })
        .await
        .unwrap();
    assert_eq!(states.0, LeaseState::Held);
    // The run has ended: its context reads lost.
    assert_eq!(states.1.state(), LeaseState::Lost);
}

/// A `suspect()` future that was waiting when the lease turned suspect completes,
/// even if it is polled only after a renewal made the lease held again: the
/// transition happened while it waited (a busy executor may poll it late). Polled
/// once, left unpolled through a whole suspect episode, then polled again.
#[tokio::test]
async fn a_waiting_suspect_future_sees_an_episode_that_ended_before_it_was_polled() {
    let server = RedisServer::start();
    let proxy = FaultProxy::to_port(server.port()).await;
    let manager = manager_through(&proxy).await;
    let lock = manager
        .new_lock("suspect-episode-unpolled")
        .with_lease(LEASE);
    let guard = lock.lock().await.unwrap();
    let mut suspect = std::pin::pin!(guard.suspect());
    assert!(
        tokio::time::timeout(Duration::from_millis(50), suspect.as_mut())
            .await
            .is_err(),
        "suspect() completed on a held lease"
    );

    proxy.set(Mode::Blackhole);
    wait_until(Duration::from_secs(10), "the guard is suspect", || async {
        guard.state() == LeaseState::Suspect
    })
    .await;
    proxy.set(Mode::Pass);
    wait_until(
        Duration::from_secs(10),
        "the guard is held again",
        || async { guard.state() == LeaseState::Held },
    )
    .await;

    tokio::time::timeout(Duration::from_millis(500), suspect.as_mut())
        .await
        .expect("the suspect() future waiting through the episode never completed");
}

/// The same for a replaced connection: a `suspect()` future waiting when another
/// lock's timed-out command retired the connection completes, even if the guard's
/// next renewal (on the new connection) confirmed the lease before it was polled.
/// The blackhole lasts one response timeout, right after the acquisition: the guard's
/// own first renewal (a third of the lease later) does not meet it.
#[tokio::test]
async fn a_waiting_suspect_future_sees_a_replaced_connection_confirmed_since() {
    let server = RedisServer::start();
    let proxy = FaultProxy::to_port(server.port()).await;
    let manager = manager_through(&proxy).await;
    let lock = manager.new_lock("replaced-unpolled").with_lease(LEASE);
    let guard = lock.lock().await.unwrap();
    let mut suspect = std::pin::pin!(guard.suspect());
    assert!(
        tokio::time::timeout(Duration::from_millis(20), suspect.as_mut())
            .await
            .is_err(),
        "suspect() completed on a held lease"
    );

    proxy.set(Mode::Blackhole);
    let err = manager
        .new_lock("bystander-2")
        .try_lock()
        .await
        .unwrap_err();
    assert!(err.is_connection_error(), "{err:?}");
    proxy.set(Mode::Pass);
    assert_eq!(guard.state(), LeaseState::Suspect);
    wait_until(
        Duration::from_secs(10),
        "the guard is held again",
        || async { guard.state() == LeaseState::Held },
    )
    .await;

    tokio::time::timeout(Duration::from_millis(500), suspect.as_mut())
        .await
        .expect("the suspect() future waiting through the replacement never completed");
}
