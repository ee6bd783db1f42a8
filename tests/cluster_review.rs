//! Review of the cluster backend (issue 9) on the real rig (tests/support/cluster.rs):
//! regressions for defects found by the review.
//!
//! - A release retried on a rebuilt connection after its first attempt timed out must
//!   not report the lock lost when the first attempt did release it (the master was
//!   only slow: `DEBUG SLEEP`, no failover).
//! - The background rebuild of the cluster connection (`Cluster::retire`) must end with
//!   its manager, not keep connecting to the cluster for up to 60 s.
//! - A seed outside the cluster (a standalone server) must not take the subscriber.
//!
//! Coverage: a silent seed, locking under load while a slot migrates. A demonstration
//! of a known, documented limitation (ignored): a resumed stale master grants a lock.

mod support;

use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::cluster::RedisCluster;

/// Counts the library's "a reply did not echo its request's token" events (src/scripts.rs)
/// in this whole test binary: a global tracing subscriber, since the managers' tasks run
/// on every worker thread. `lock()` retries after such a reply, so the error itself may
/// never reach the caller; the event always fires.
mod mismatches {
    use std::fmt::Debug;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    static COUNT: AtomicU64 = AtomicU64::new(0);
    static INSTALLED: OnceLock<bool> = OnceLock::new();

    struct Counter;
    struct Message(bool);
    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            if field.name() == "message" {
                self.0 |= format!("{value:?}").contains("did not echo");
            }
        }
    }
    impl Subscriber for Counter {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut message = Message(false);
            event.record(&mut message);
            if message.0 {
                COUNT.fetch_add(1, Ordering::Relaxed);
            }
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    /// Installs the counter (once); panics if another global subscriber is set.
    pub fn install() {
        let ok =
            *INSTALLED.get_or_init(|| tracing::subscriber::set_global_default(Counter).is_ok());
        assert!(ok, "a global tracing subscriber was already set");
    }

    pub fn count() -> u64 {
        COUNT.load(Ordering::Relaxed)
    }
}

/// A manager seeded with every running node.
async fn manager(cluster: &RedisCluster) -> RdLockConnectionManager {
    let seeds = cluster.urls();
    match RdLockConnectionManager::cluster(seeds.clone()).await {
        Ok(m) => m,
        Err(e) => panic!("cluster({seeds:?}): {e:?}\n{}", cluster.logs()),
    }
}

/// Keeps the replicas of `master` from failing it over while it does not answer.
async fn no_failover(cluster: &RedisCluster, master: usize) {
    for replica in cluster.replicas_of(master).await {
        let _: () = cluster
            .query(
                replica,
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("cluster-replica-no-failover")
                    .arg("yes"),
            )
            .await;
    }
}

/// Whether node `i` answers `PING` within 200 ms on a new connection.
async fn answers(cluster: &RedisCluster, i: usize) -> bool {
    let ping = async {
        let client = redis::Client::open(cluster.node(i).url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(200), ping).await,
        Ok(Ok(()))
    )
}

/// `total_connections_received` of node `i`.
async fn connections_received(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .expect("INFO stats");
    info.lines()
        .find_map(|l| l.trim().strip_prefix("total_connections_received:"))
        .and_then(|v| v.parse().ok())
        .expect("total_connections_received")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_retried_after_a_slow_master_is_not_reported_lost() {
    let cluster = RedisCluster::start().await;
    let master = cluster.masters().await[0];
    no_failover(&cluster, master).await;
    let id = cluster.id_on_master(master, "slow-release-").await;
    let manager = manager(&cluster).await;
    // Loads the scripts on the master (a NOSCRIPT would make the first attempt a no-op).
    manager
        .new_lock(&id)
        .lock()
        .await
        .expect("warm-up lock")
        .release()
        .await
        .expect("warm-up release");
    let guard = manager
        .new_lock(&id)
        .with_lease(Duration::from_secs(30))
        .lock()
        .await
        .expect("lock");

    let key = format!("rdlock:{{{id}}}:lock");
    let exists: i64 = cluster.query(master, redis::cmd("EXISTS").arg(&key)).await;
    assert_eq!(exists, 1, "the lock key {key} is not there");

    // The master sleeps 3.5 s: the release (response timeout 2 s) times out, the
    // connection is rebuilt (it completes once the master answers again), and the
    // retry is sent after the master ran the first attempt, which released the lock:
    // the retry finds the key gone.
    let url = cluster.node(master).url();
    let sleeper = tokio::spawn(async move {
        let client = redis::Client::open(url).expect("url");
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect");
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("3.5")
            .query_async::<()>(&mut conn)
            .await
    });
    let started = Instant::now();
    while answers(&cluster, master).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "DEBUG SLEEP never started"
        );
    }

    let outcome = guard.release().await;
    sleeper.await.expect("sleeper").expect("DEBUG SLEEP");
    let exists: i64 = cluster.query(master, redis::cmd("EXISTS").arg(&key)).await;
    assert_eq!(exists, 0, "the lock key is still there");
    assert!(
        !matches!(outcome, Err(RdLockError::LockNotAcquired)),
        "the release did release the lock, yet it reported it lost: {outcome:?}"
    );
    println!("release after a 3.5 s stall: {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_rebuild_ends_with_its_manager() {
    let mut cluster = RedisCluster::start().await;
    let masters = cluster.masters().await;
    let (hung, other) = (masters[0], masters[1]);
    no_failover(&cluster, hung).await;
    let id = cluster.id_on_master(hung, "rebuild-").await;
    let manager = manager(&cluster).await;

    // A request to the hung master times out: the rebuild loop starts, and goes on
    // while a master of the map does not answer.
    cluster.pause(hung);
    // A short lease: the background undo of the timed-out attempt (retried until the
    // lease would have ended) is over long before the measure below.
    let attempt = manager
        .new_lock(&id)
        .with_lease(Duration::from_secs(4))
        .lock_timeout(Duration::from_secs(3))
        .await;
    assert!(attempt.is_err(), "locked on a paused master: {attempt:?}");
    drop(manager);

    // Whatever was in flight at the drop (the undo included) has ended well within this.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut conn = cluster.conn(other).await;
    let before = connections_received(&mut conn).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = connections_received(&mut conn).await;
    cluster.resume(hung);
    assert_eq!(
        after - before,
        0,
        "a dropped manager's rebuild loop still connects to the cluster ({} connections \
         to node {other} in 8 s)",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_outside_the_cluster_is_refused_or_never_used_for_wake_ups() {
    let cluster = RedisCluster::start().await;
    // A standalone server first among the seeds (a wrong port, a stale address).
    let stranger = support::RedisServer::start();
    let mut seeds = vec![stranger.url()];
    seeds.extend(cluster.urls());
    let mixed = match RdLockConnectionManager::cluster(seeds.clone()).await {
        Ok(m) => m,
        Err(e) => {
            // A clear refusal is fine too.
            println!("mixed seeds refused: {e:?}");
            return;
        }
    };
    let holder = manager(&cluster).await;
    let id = "mixed-seeds";
    let guard = holder
        .new_lock(id)
        .with_lease(Duration::from_secs(30))
        .lock()
        .await
        .expect("lock");
    let lock = mixed.new_lock(id).with_lease(Duration::from_secs(30));
    let waiter = tokio::spawn(async move {
        let outcome = lock.lock_timeout(Duration::from_secs(60)).await;
        (outcome, Instant::now())
    });
    let started = Instant::now();
    while mixed.footprint().watched_locks == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Past the waiter's first wait, bounded by the holder's PTTL, it relies on the
    // release's message.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let released = Instant::now();
    guard.release().await.expect("release");
    let (outcome, at) = waiter.await.expect("waiter task");
    let woken = at.saturating_duration_since(released);
    println!(
        "mixed seeds: waiter got {:?} {woken:?} after the release",
        outcome.is_ok()
    );
    assert!(outcome.is_ok(), "waiter: {outcome:?}");
    assert!(
        woken < Duration::from_secs(10),
        "the waiter slept {woken:?} after the release (its subscriber is on a server \
         outside the cluster: {seeds:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_seed_is_an_error_within_seconds() {
    // Accepts connections (the kernel does) but never answers, like a hung server.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "redis://127.0.0.1:{}",
        silent.local_addr().expect("addr").port()
    );
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        RdLockConnectionManager::cluster([url.clone(), url]),
    )
    .await;
    let took = started.elapsed();
    println!(
        "silent seed: {:?} after {took:?}",
        outcome.as_ref().map(|o| o.as_ref().err())
    );
    let outcome = outcome.expect("cluster() on a silent seed returned within 30 s");
    assert!(outcome.is_err(), "connected to a silent seed");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// Coverage (issue 9 asks for it on the rdlock path): locks of one slot taken and
/// released by 2 managers × 6 tasks while the slot migrates away and back; never two
/// guards held at once, no reply answered another request (every script echoes its
/// owner token and the library checks it: no mismatch event), and work goes on after
/// the migrations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_two_holders_under_load_during_slot_migrations() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    mismatches::install();

    let cluster = RedisCluster::start().await;
    // Four ids whose keys share one slot.
    let slot = support::cluster::lock_slot("mig-0");
    let ids: Vec<String> = (0u32..)
        .map(|n| format!("mig-{n}"))
        .filter(|id| support::cluster::lock_slot(id) == slot)
        .take(4)
        .collect();
    let managers = [manager(&cluster).await, manager(&cluster).await];
    let holders: Arc<Vec<AtomicUsize>> =
        Arc::new((0..ids.len()).map(|_| AtomicUsize::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(AtomicUsize::new(0));
    let cycles = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..12usize {
        let manager = managers[t % 2].clone();
        let (ids, holders, stop, violations, cycles) = (
            ids.clone(),
            holders.clone(),
            stop.clone(),
            violations.clone(),
            cycles.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut n = t;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let i = n % ids.len();
                let lock = manager
                    .new_lock(&ids[i])
                    .with_lease(Duration::from_secs(10));
                match lock.lock_timeout(Duration::from_secs(2)).await {
                    Ok(guard) => {
                        if holders[i].fetch_add(1, Ordering::AcqRel) != 0 {
                            violations.fetch_add(1, Ordering::AcqRel);
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        holders[i].fetch_sub(1, Ordering::AcqRel);
                        if let Err(e) = guard.release().await {
                            errors.push(format!("release: {e}"));
                        }
                        cycles.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(RdLockError::TimeoutReached) => {}
                    Err(e) => errors.push(format!("lock: {e}")),
                }
            }
            errors
        }));
    }
    let wait_cycles = |target: usize| {
        let cycles = cycles.clone();
        async move {
            let started = Instant::now();
            while cycles.load(Ordering::Acquire) < target {
                assert!(started.elapsed() < Duration::from_secs(60), "no progress");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_cycles(50).await;
    let to = cluster.other_master(slot).await;
    let from = cluster.migrate_slot(slot, to).await;
    let after_first = cycles.load(Ordering::Acquire);
    wait_cycles(after_first + 50).await;
    cluster.migrate_slot(slot, from).await;
    let after_second = cycles.load(Ordering::Acquire);
    wait_cycles(after_second + 50).await;
    stop.store(true, Ordering::Release);
    let mut errors = Vec::new();
    for task in tasks {
        errors.extend(task.await.expect("task"));
    }
    println!(
        "migrations under load: {} cycles, {} errors: {:?}",
        cycles.load(Ordering::Acquire),
        errors.len(),
        errors.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        violations.load(Ordering::Acquire),
        0,
        "two guards held at once"
    );
    assert!(
        !errors.iter().any(|e| e.contains("did not echo")),
        "a reply answered another request: {errors:?}"
    );
    assert_eq!(
        mismatches::count(),
        0,
        "replies that did not echo their request's token"
    );
}

/// A known limitation, not fixed (documented in the crate docs and README, "Redis
/// Cluster"): a hung master resumed after its failover serves, before gossip tells it
/// that it was demoted, a request that reached it while it hung (or from a client whose
/// slot map still names it): it grants a lock that the guard on the promoted replica
/// still holds. Fails 3 runs out of 3 (with the default 2 s response timeout and an
/// attempt right after the resume instead, about 1 run in 5). Run with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known limitation of Redis Cluster (a resumed stale master), documented; fails"]
async fn a_resumed_stale_master_does_not_grant_a_held_lock() {
    let mut cluster = RedisCluster::start().await;
    let master = cluster.masters().await[0];
    let id = cluster.id_on_master(master, "stale-").await;
    let slot = support::cluster::lock_slot(&id);
    let holder = manager(&cluster).await;
    // Long response timeout: its request, sent while the master hangs, is answered
    // when the master resumes.
    let stale = RdLockConnectionManager::builder()
        .response_timeout(Duration::from_secs(10))
        .cluster(cluster.urls())
        .await
        .expect("stale manager");
    // The stale manager learns the map (and opens its connection to the master).
    drop(stale.new_lock("warm").try_lock().await);
    drop(stale.new_lock(&id).try_lock().await.map(|_g| ()));
    let guard = holder
        .new_lock(&id)
        .with_lease(Duration::from_secs(15))
        .lock()
        .await
        .expect("lock");
    let paused = Instant::now();
    let (old, new) = cluster.pause_master_of_slot(slot).await;
    assert_eq!(old, master);
    // Until the holder's copy on the hung master has expired by its clock.
    tokio::time::sleep(Duration::from_secs(17).saturating_sub(paused.elapsed())).await;
    // The holder renewed on the new master meanwhile (or reported its loss).
    let held = guard.is_held();
    let pttl: i64 = cluster
        .query(new, redis::cmd("PTTL").arg(format!("rdlock:{{{id}}}:lock")))
        .await;
    println!("holder held={held}, PTTL on the new master {pttl}");
    let lock = stale.new_lock(&id).with_lease(Duration::from_secs(20));
    let attempt = tokio::spawn(async move { lock.try_lock().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.resume(old);
    let outcome = attempt.await.expect("attempt");
    let both = held && guard.is_held() && outcome.is_ok();
    println!(
        "stale manager's try_lock right after the resume: {:?}",
        outcome.as_ref().map(|g| g.fencing_token())
    );
    assert!(
        !both,
        "two guards hold {id}: the holder's and one granted by the resumed master"
    );
}

/// Coverage: `shutdown()` on a cluster manager seeded with duplicate nodes releases a
/// guard on every master and ends a waiter, within seconds; the keys are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_on_a_cluster_releases_every_shard() {
    let cluster = RedisCluster::start().await;
    let mut seeds = cluster.urls();
    seeds.extend(cluster.urls());
    let manager = RdLockConnectionManager::cluster(seeds)
        .await
        .expect("duplicate seeds");
    let other = manager.clone();
    let mut guards = Vec::new();
    let mut ids = Vec::new();
    for master in cluster.masters().await {
        let id = cluster.id_on_master(master, "shutdown-").await;
        guards.push(
            manager
                .new_lock(&id)
                .with_lease(Duration::from_secs(30))
                .lock()
                .await
                .expect("lock"),
        );
        ids.push((master, id));
    }
    let lock = other
        .new_lock(&ids[0].1)
        .with_lease(Duration::from_secs(30));
    let waiter = tokio::spawn(async move { lock.lock_timeout(Duration::from_secs(60)).await });
    // (A waiter of the holding manager waits its local turn; whether it has started or
    // not, shutdown ends it.)
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(20), manager.shutdown())
        .await
        .expect("shutdown returned");
    println!("shutdown: {outcome:?} after {:?}", started.elapsed());
    assert!(outcome.is_ok(), "{outcome:?}");
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("waiter ended")
        .expect("waiter task");
    assert!(
        matches!(waited, Err(RdLockError::ShutDown)),
        "waiter: {:?}",
        waited.map(|g| g.fencing_token())
    );
    for guard in &guards {
        assert!(!guard.is_held());
    }
    for (master, id) in &ids {
        let exists: i64 = cluster
            .query(
                *master,
                redis::cmd("EXISTS").arg(format!("rdlock:{{{id}}}:lock")),
            )
            .await;
        assert_eq!(exists, 0, "{id} still locked after shutdown");
    }
}
