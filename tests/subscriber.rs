//! The shared subscriber keeps up: a waiter's wake-up is not lost while the subscriber
//! (re)connects or while it works through a burst of new subscriptions.
//!
//! Every test holds the lock with a long lease (20 s), so a waiter that missed the
//! release would wait most of it out: "woken promptly" (a few seconds at most, on a
//! busy machine) and "missed" are far apart.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdlock::RdLockConnectionManager;
use support::gate::ConnectionGate;
use support::proxy::{FaultProxy, Mode};
use support::{wait_until, RedisServer};

const HOLD: Duration = Duration::from_secs(20);
/// A waiter woken by the release gets the lock within this long of it; one that
/// missed the release waits out the rest of the 20 s lease.
const PROMPT: Duration = Duration::from_secs(3);

/// Calls of EVALSHA so far (every acquire attempt is one).
async fn evalsha_calls(server: &RedisServer) -> u64 {
    let mut admin = server.conn().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .and_then(|l| l.split_once("calls=")?.1.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Spawns `lock.lock()` and reports when it got the guard.
fn spawn_waiter(
    lock: rdlock::Lock,
) -> tokio::task::JoinHandle<Result<(Instant, rdlock::LockGuard), rdlock::RdLockError>> {
    tokio::spawn(async move {
        let guard = lock.lock().await?;
        Ok((Instant::now(), guard))
    })
}

/// Issue 18.1: the subscriber connection is killed; while its reconnect is held back by
/// the network, a waiter starts (its subscription is queued), tries, finds the lock held
/// and waits. The release lands before the subscriber is back. Once it is back and the
/// queued subscription is confirmed, the waiter must retry — not wait out the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_started_during_a_subscriber_reconnect_gets_the_release() {
    let server = RedisServer::start();
    let gate = ConnectionGate::to_port(server.port()).await;
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(gate.url()).await.unwrap();
    wait_until(Duration::from_secs(10), "the subscriber connected", || {
        let n = waiter.subscriber_connections();
        async move { n == 1 }
    })
    .await;
    let guard = holder.new_lock("x").with_lease(HOLD).lock().await.unwrap();
    // Redis counts a connection as `pubsub` only while it has a subscription: give the
    // subscriber one (a waiter on another held lock).
    let _other = holder
        .new_lock("other")
        .with_lease(HOLD)
        .lock()
        .await
        .unwrap();
    let _other_waiter = spawn_waiter(waiter.new_lock("other"));
    let mut admin = server.conn().await;
    wait_until(
        Duration::from_secs(10),
        "the subscriber has a subscription",
        || {
            let mut admin = admin.clone();
            async move {
                let n: Vec<(String, i64)> = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg("rdlock:{other}:release")
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                n.first().is_some_and(|(_, count)| *count == 1)
            }
        },
    )
    .await;

    // New connections through the gate are held from now on; the command connection
    // (already open) keeps working.
    gate.hold_new();
    let accepted = gate.accepted();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 1);
    wait_until(
        Duration::from_secs(10),
        "the subscriber is reconnecting (its new connection held)",
        || {
            let n = gate.accepted();
            async move { n > accepted }
        },
    )
    .await;

    let attempts = evalsha_calls(&server).await;
    let task = spawn_waiter(waiter.new_lock("x"));
    // Its fast-path attempt and its attempt after "subscribing": it now waits.
    wait_until(
        Duration::from_secs(10),
        "the waiter tried twice",
        || async { evalsha_calls(&server).await >= attempts + 2 },
    )
    .await;
    assert_eq!(waiter.subscriber_connections(), 1, "still reconnecting");

    let released = Instant::now();
    guard.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate.release();

    let (acquired, guard) = tokio::time::timeout(HOLD + Duration::from_secs(10), task)
        .await
        .expect("the waiter gets the lock, at the latest when the lease runs out")
        .unwrap()
        .unwrap();
    let late = acquired - released;
    println!(
        "woken {late:?} after the release; subscriber connections: {}",
        waiter.subscriber_connections()
    );
    assert!(
        late < PROMPT,
        "the waiter missed the release and waited {late:?} (most of the {HOLD:?} lease)"
    );
    assert!(guard.is_held());
}

/// Issue 16.3: a fresh manager whose subscriber has not connected yet (its connection
/// is held back); a waiter tries, finds the lock held and waits; the holder releases;
/// then the subscriber connects. The waiter must retry once its subscription is
/// confirmed, not wait out the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_before_the_first_subscribe_completes_is_not_lost() {
    let server = RedisServer::start();
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = holder
        .new_lock("first")
        .with_lease(HOLD)
        .lock()
        .await
        .unwrap();
    let gate = ConnectionGate::to_port(server.port()).await;
    // The manager's command connection is the first one; its subscriber's are held.
    gate.hold_after(1);
    let waiter = RdLockConnectionManager::new(gate.url()).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the subscriber is connecting",
        || {
            let n = gate.accepted();
            async move { n >= 2 }
        },
    )
    .await;

    let attempts = evalsha_calls(&server).await;
    let task = spawn_waiter(waiter.new_lock("first"));
    wait_until(
        Duration::from_secs(10),
        "the waiter tried twice",
        || async { evalsha_calls(&server).await >= attempts + 2 },
    )
    .await;
    assert_eq!(waiter.subscriber_connections(), 0, "not connected yet");

    let released = Instant::now();
    guard.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate.release();

    let (acquired, guard) = tokio::time::timeout(HOLD + Duration::from_secs(10), task)
        .await
        .expect("the waiter gets the lock, at the latest when the lease runs out")
        .unwrap()
        .unwrap();
    let late = acquired - released;
    println!("woken {late:?} after the release");
    assert!(
        late < PROMPT,
        "the waiter missed the release and waited {late:?} (most of the {HOLD:?} lease)"
    );
    assert!(guard.is_held());
}

/// Issue 18.2: 300 waiters on 300 distinct locks start at once behind 5 ms of latency
/// each way; every lock is released 2.5 s later. Each waiter must get its lock within
/// a few seconds of its release: the subscriber must subscribe them all in time (or wake
/// those it confirms late), not one SUBSCRIBE per round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_waiters_on_distinct_locks_is_subscribed_in_time() {
    const LOCKS: usize = 300;
    let server = RedisServer::start();
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let proxy = FaultProxy::to_port(server.port()).await;
    let waiter = RdLockConnectionManager::new(proxy.url()).await.unwrap();
    wait_until(Duration::from_secs(10), "the subscriber connected", || {
        let n = waiter.subscriber_connections();
        async move { n == 1 }
    })
    .await;
    proxy.set(Mode::Latency(Duration::from_millis(5)));

    let mut guards = Vec::new();
    for i in 0..LOCKS {
        let lock = holder.new_lock(&format!("burst-{i}")).with_lease(HOLD);
        guards.push(lock.lock().await.unwrap());
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..LOCKS)
        .map(|i| spawn_waiter(waiter.new_lock(&format!("burst-{i}"))))
        .collect();

    // Print how long subscribing them all took (for the record; the wake-ups decide).
    let mut admin = server.conn().await;
    let mut subscribed_after = None;
    while started.elapsed() < Duration::from_millis(2500) {
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg("rdlock:{burst-*}:release")
            .query_async(&mut admin)
            .await
            .unwrap();
        if subscribed_after.is_none() && channels.len() == LOCKS {
            subscribed_after = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("all {LOCKS} release channels subscribed after {subscribed_after:?}");

    let released: Arc<Vec<Instant>> = Arc::new({
        let mut at = Vec::new();
        for guard in guards {
            at.push(Instant::now());
            guard.release().await.unwrap();
        }
        at
    });
    let mut late = Vec::new();
    let mut worst = Duration::ZERO;
    for (i, task) in tasks.into_iter().enumerate() {
        let (acquired, guard) = tokio::time::timeout(HOLD + Duration::from_secs(10), task)
            .await
            .expect("every waiter gets its lock, at the latest when the lease runs out")
            .unwrap()
            .unwrap();
        let after = acquired.saturating_duration_since(released[i]);
        worst = worst.max(after);
        if after >= PROMPT {
            late.push((i, after));
        }
        drop(guard);
    }
    println!(
        "worst wake-up {worst:?} after the release; {} late",
        late.len()
    );
    assert!(
        late.is_empty(),
        "{} of {LOCKS} waiters woke {PROMPT:?} or more after their release (first: {:?})",
        late.len(),
        &late[..late.len().min(5)]
    );
}
