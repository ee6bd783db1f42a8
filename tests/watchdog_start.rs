//! Watchdogs start late: a guard's watchdog task is spawned by the manager's starter a
//! second after the acquisition (or at its first renewal, `lease / 3`, if sooner), so a
//! guard released before then never spawns one; one held longer is renewed as before;
//! shutdown releases guards whose watchdogs have not started, without waiting for the
//! starter's sleep.
//!
//! The observable is [`RdLockConnectionManager::pending_tasks`], which counts every
//! started watchdog (and not the starter), and the runtime's count of alive tasks.

mod support;

use std::time::{Duration, Instant};

use rdlock::{LeaseState, RdLockConnectionManager, RdLockError};
use support::{get, lock_keys, wait_until, RedisServer};

/// When a watchdog starts, for leases of 3 s and more (`START_DELAY`).
const START_DELAY: Duration = Duration::from_secs(1);

async fn pttl(raw: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(raw).await.unwrap()
}

/// Tasks alive on the test's runtime: the manager's subscriber, its starter, watchdogs,
/// releases.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test]
async fn short_holds_never_spawn_a_watchdog() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("short");
    let mut checked = 0;
    for _ in 0..50 {
        let before = Instant::now();
        let guard = lock.lock().await.unwrap();
        let tasks = manager.pending_tasks();
        // A check made later than the start delay (a stalled machine) proves nothing.
        if before.elapsed() < START_DELAY {
            assert_eq!(tasks, 0, "a watchdog was spawned at the acquisition");
            assert!(guard.is_held());
            assert_eq!(guard.state(), LeaseState::Held);
            checked += 1;
        }
        guard.release().await.unwrap();
        assert_eq!(get(&mut raw, lock.key()).await, None);
    }
    assert!(checked > 0, "every check came too late");
    // Dropped rather than released: the same.
    let before = Instant::now();
    let guard = lock.lock().await.unwrap();
    let tasks = manager.pending_tasks();
    drop(guard);
    if before.elapsed() < START_DELAY {
        assert_eq!(tasks, 0);
    }
    support::assert_quiescent(&server, &manager, lock.key()).await;
    // Nothing was left to start: no watchdog appears when the start instants pass.
    let waited = Instant::now();
    wait_until(Duration::from_secs(10), "two start delays pass", || {
        let done = waited.elapsed() >= 2 * START_DELAY;
        async move { done }
    })
    .await;
    assert_eq!(manager.pending_tasks(), 0);
    assert_eq!(manager.footprint().held_guards, 0);
}

#[tokio::test]
async fn a_guard_held_past_its_start_is_renewed_and_stays_held() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    // Starts at 1 s, renews every 2 s.
    let lease = Duration::from_secs(6);
    let lock = manager.new_lock("long").with_lease(lease);
    let acquired = Instant::now();
    let guard = lock.lock().await.unwrap();
    let token = get(&mut raw, lock.key()).await.unwrap();
    wait_until(Duration::from_secs(10), "the watchdog starts", || {
        let n = manager.pending_tasks();
        async move { n == 1 }
    })
    .await;
    // Without a renewal the key's PTTL falls below 6 s - 2.5 s; a renewal sets it back
    // near 6 s.
    wait_until(
        Duration::from_secs(20),
        "a renewal refreshed the PTTL",
        || {
            let mut raw = raw.clone();
            let key = lock.key().to_owned();
            async move {
                acquired.elapsed() >= Duration::from_millis(2500)
                    && pttl(&mut raw, &key).await > 5000
            }
        },
    )
    .await;
    assert!(guard.is_held());
    assert_eq!(guard.state(), LeaseState::Held);
    assert_eq!(get(&mut raw, lock.key()).await, Some(token));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), guard.lost())
            .await
            .is_err(),
        "lost() completed while held"
    );
    guard.release().await.unwrap();
    support::assert_quiescent(&server, &manager, lock.key()).await;
}

#[tokio::test]
async fn shutdown_releases_guards_whose_watchdogs_have_not_started() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    // Tasks alive before the first acquisition (and so before the starter): the
    // subscriber and redis-rs's connection drivers.
    let connected = alive_tasks();
    let first = Instant::now();
    let mut guards = Vec::new();
    for i in 0..20 {
        guards.push(
            manager
                .new_lock(&format!("pending-{i}"))
                .lock()
                .await
                .unwrap(),
        );
    }
    let tasks = manager.pending_tasks();
    assert_eq!(lock_keys(&mut raw).await.len(), 20);
    let started = Instant::now();
    manager.shutdown().await.unwrap();
    let ended = Instant::now();
    println!(
        "acquired in {:?}, shut down in {:?}",
        started - first,
        ended - started
    );
    // The starter sleeps until the first guard's start, a second after `first`: a
    // shutdown that waited for it would end after that. Checked when the acquisitions
    // left half a second for the shutdown (otherwise the machine was too slow to tell).
    if started - first < START_DELAY / 2 {
        assert_eq!(tasks, 0, "no watchdog had started");
        assert!(
            ended < first + START_DELAY,
            "shutdown waited for the starter's sleep: {:?}",
            ended - first
        );
    }
    assert_eq!(lock_keys(&mut raw).await, Vec::<String>::new());
    for guard in &guards {
        assert!(!guard.is_held());
        assert!(guard.cancellation_token().is_cancelled());
        tokio::time::timeout(Duration::from_millis(100), guard.lost())
            .await
            .expect("lost() completes");
    }
    assert_eq!(manager.pending_tasks(), 0);
    // The starter has stopped: with the subscriber gone too, fewer tasks are alive than
    // right after connecting (redis-rs's connection drivers live with the manager), and
    // none appears when the start instants pass.
    wait_until(
        Duration::from_secs(5),
        "the starter and the subscriber stop",
        || {
            let n = alive_tasks();
            async move { n < connected }
        },
    )
    .await;
    let after = alive_tasks();
    let waited = Instant::now();
    wait_until(Duration::from_secs(10), "two start delays pass", || {
        let done = waited.elapsed() >= 2 * START_DELAY;
        async move { done }
    })
    .await;
    assert_eq!(alive_tasks(), after);
    assert_eq!(manager.pending_tasks(), 0);
    for guard in guards {
        assert_eq!(guard.release().await.unwrap_err(), RdLockError::ShutDown);
    }
}

#[tokio::test]
async fn a_dropped_manager_stops_its_starter() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = manager.new_lock("gone").lock().await.unwrap();
    guard.release().await.unwrap();
    drop(manager);
    // The subscriber and the starter end with the last handle on the manager.
    wait_until(Duration::from_secs(10), "no task is alive", || {
        let n = alive_tasks();
        async move { n == 0 }
    })
    .await;
}
