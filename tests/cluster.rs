//! `RdLockConnectionManager::cluster` on a real Redis Cluster (3 masters + 3 replicas,
//! tests/support/cluster.rs): locking on every shard, exclusion between managers,
//! fencing, wake-ups on every master and after a `CLUSTER FAILOVER`, a slot migration
//! and a SIGKILL of the lock's master while a waiter waits, guards held across those
//! faults, and bad input.
//!
//! Waiters wait on holders with a 30 s lease: a waiter that gets the lock within a few
//! seconds of the release was woken by the release, not by the lease running out.
//! Runs on Redis or on Valkey (`RDLOCK_SERVER_BIN=$(bash .ci/install-valkey)`).

mod support;

use std::time::{Duration, Instant};

use rdlock::{LockGuard, RdLockConnectionManager, RdLockError};
use support::cluster::RedisCluster;
use support::RedisServer;
use tokio::task::JoinHandle;

/// The holders' lease: far longer than any wake-up bound.
const LONG_LEASE: Duration = Duration::from_secs(30);
/// A waiter must get the lock within this long of its release (busy 2-core machine;
/// measured wake-ups are printed).
const WAKE_BOUND: Duration = Duration::from_secs(5);
/// The lease of guards held across a fault: renewed every second.
const SHORT_LEASE: Duration = Duration::from_secs(3);

/// A manager seeded with every node, node `first` first: its subscriber connects
/// there first.
async fn manager(cluster: &RedisCluster, first: usize) -> RdLockConnectionManager {
    let mut seeds = vec![cluster.node(first).url()];
    seeds.extend(
        cluster
            .running()
            .into_iter()
            .filter(|&i| i != first)
            .map(|i| cluster.node(i).url()),
    );
    match RdLockConnectionManager::cluster(seeds.clone()).await {
        Ok(m) => m,
        Err(e) => panic!("cluster({seeds:?}): {e:?}\n{}", cluster.logs()),
    }
}

type Waiter = JoinHandle<(Result<LockGuard, RdLockError>, Instant)>;

/// Starts `lock()` on `id` in a task and returns once the manager watches the lock
/// (the waiter found it held and waits for its release).
async fn start_waiter(manager: &RdLockConnectionManager, id: &str) -> Waiter {
    let lock = manager.new_lock(id).with_lease(LONG_LEASE);
    let waiter = tokio::spawn(async move {
        let outcome = lock.lock_timeout(Duration::from_secs(90)).await;
        (outcome, Instant::now())
    });
    let started = Instant::now();
    while manager.footprint().watched_locks == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the waiter on {id} never started waiting"
        );
        assert!(!waiter.is_finished(), "the waiter on {id} ended early");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    waiter
}

/// Releases `guard` and returns how long after the release the waiter got the lock
/// (its guard, checked for a larger fencing token).
async fn release_and_wake(
    cluster: &RedisCluster,
    guard: LockGuard,
    waiter: Waiter,
    what: &str,
) -> (LockGuard, Duration) {
    assert!(
        !waiter.is_finished(),
        "{what}: the waiter got the lock while it was held"
    );
    let fence = guard.fencing_token();
    let released = Instant::now();
    if let Err(e) = guard.release().await {
        panic!("{what}: release failed: {e:?}\n{}", cluster.logs());
    }
    let (outcome, at) = match tokio::time::timeout(Duration::from_secs(60), waiter).await {
        Ok(joined) => joined.expect("the waiter task"),
        Err(_) => panic!("{what}: waiter not done 60 s after the release"),
    };
    let next = match outcome {
        Ok(g) => g,
        Err(e) => panic!("{what}: the waiter failed: {e:?}\n{}", cluster.logs()),
    };
    let latency = at.saturating_duration_since(released);
    println!("{what}: waiter woken {latency:?} after the release");
    assert!(
        latency < WAKE_BOUND,
        "{what}: waiter got the lock {latency:?} after the release (bound {WAKE_BOUND:?})"
    );
    assert!(
        next.fencing_token() > fence,
        "{what}: fencing token {} after {fence}",
        next.fencing_token()
    );
    (next, latency)
}

/// Makes the lock keys of `id` reach every replica of their master (a later kill of
/// the master must not lose them): a write on the same master, then `WAIT` on that
/// connection (replication is ordered, so the replicas then have the earlier writes).
async fn replicate(cluster: &RedisCluster, id: &str) {
    let key = format!("rdlock:{{{id}}}:probe");
    let master = cluster.master_of_key(key.as_bytes()).await;
    let replicas = cluster.replicas_of(master).await.len();
    let mut conn = cluster.conn(master).await;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("SET probe");
    let acked: usize = redis::cmd("WAIT")
        .arg(replicas)
        .arg(5000)
        .query_async(&mut conn)
        .await
        .expect("WAIT");
    assert_eq!(acked, replicas, "replicas of {master} acknowledged {id}");
}

/// A guard held across a fault: within two leases of the fault it is either still
/// held, with its record (and fencing token) in Redis and another manager refused, or
/// it has reported the loss (and then nobody else believes in it).
async fn check_held_across(guard: &LockGuard, other: &RdLockConnectionManager, what: &str) {
    let lost = tokio::time::timeout(SHORT_LEASE * 2, guard.lost()).await;
    if lost.is_ok() {
        assert!(!guard.is_held(), "{what}: lost() completed but is_held()");
        println!("{what}: the held guard reported its loss");
        return;
    }
    assert!(guard.is_held(), "{what}: neither lost nor held");
    let lock = other.new_lock(guard.lock().id());
    let holder = lock.holder().await;
    let fence = match &holder {
        Ok(Some(h)) => h.fencing_token,
        other => panic!("{what}: guard held but Redis has no holder: {other:?}"),
    };
    assert_eq!(
        fence,
        guard.fencing_token(),
        "{what}: holder's fencing token"
    );
    let remaining = holder.ok().flatten().and_then(|h| h.remaining_lease);
    assert!(
        remaining.is_some_and(|r| r > Duration::ZERO),
        "{what}: no lease left in Redis: {remaining:?}"
    );
    assert_eq!(
        lock.try_lock().await.err(),
        Some(RdLockError::LockUnavailable),
        "{what}: another manager got a held lock"
    );
    println!("{what}: the held guard is still held, renewed on the new owner ({remaining:?} left)");
}

#[tokio::test]
async fn locks_on_every_shard_exclude_fence_and_wake() {
    let cluster = RedisCluster::start().await;
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3);
    let a = manager(&cluster, masters[0]).await;
    let b = manager(&cluster, masters[1]).await;
    assert!(!a.keyspace_events(), "keyspace events are off on a cluster");
    for &m in &masters {
        let id = cluster.id_on_master(m, "shard").await;
        let what = format!("master {m} (id {id})");
        let lock = a.new_lock(&id).with_lease(LONG_LEASE);
        let first = lock.try_lock().await.expect("try_lock on a free lock");
        assert_eq!(
            b.new_lock(&id).try_lock().await.err(),
            Some(RdLockError::LockUnavailable),
            "{what}: two managers both got the lock"
        );
        let holder = b.new_lock(&id).holder().await.expect("holder()");
        assert_eq!(
            holder.map(|h| h.fencing_token),
            Some(first.fencing_token()),
            "{what}: holder()"
        );
        let waiter = start_waiter(&b, &id).await;
        let (second, _) = release_and_wake(&cluster, first, waiter, &what).await;
        let fence = second.fencing_token();
        second.release().await.expect("release");
        assert_eq!(
            a.new_lock(&id).last_fencing_token().await.expect("fence"),
            fence
        );
        assert!(b.new_lock(&id).force_release().await.is_ok());
    }
    // Ids of any bytes: every key of a lock shares one slot (else CROSSSLOT).
    let long = "x".repeat(1000);
    for id in [
        "{",
        "}",
        "{}",
        "a}b{c",
        "%7D",
        "日本語",
        "with space",
        long.as_str(),
    ] {
        let guard = match a.new_lock(id).try_lock().await {
            Ok(g) => g,
            Err(e) => panic!("id {id:?}: {e:?}"),
        };
        assert_eq!(
            b.new_lock(id).try_lock().await.err(),
            Some(RdLockError::LockUnavailable),
            "id {id:?}"
        );
        let holder = b.new_lock(id).holder().await.expect("holder()");
        assert_eq!(holder.map(|h| h.fencing_token), Some(guard.fencing_token()));
        guard.release().await.expect("release");
    }
    assert_eq!(
        a.new_lock("")
            .try_lock()
            .await
            .err()
            .map(|e| matches!(e, RdLockError::InvalidLockId { .. })),
        Some(true),
        "the empty id is refused before any command"
    );
    // NOSCRIPT (a new or flushed primary) is healed on the cluster path too.
    for i in cluster.running() {
        let _: () = cluster.query(i, redis::cmd("SCRIPT").arg("FLUSH")).await;
    }
    for &m in &masters {
        let id = cluster.id_on_master(m, "flushed").await;
        match a.new_lock(&id).try_lock().await {
            Ok(guard) => guard.release().await.expect("release after SCRIPT FLUSH"),
            Err(e) => panic!("master {m}: try_lock after SCRIPT FLUSH: {e:?}"),
        }
    }
    // Connections stay O(1): one subscriber each, whatever the number of locks.
    assert_eq!(a.subscriber_connections(), 1);
    assert_eq!(b.subscriber_connections(), 1);
    a.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
}

/// Each fault phase: a holder (30 s lease) and a waiter on `id`, a guard with a short
/// lease on `held_id` (same master), `fault` runs while the waiter waits, then the
/// release must wake the waiter.
#[tokio::test]
async fn waiters_and_held_guards_across_failover_migration_and_kill() {
    let mut cluster = RedisCluster::start().await;
    let masters = cluster.masters().await;
    let holders = manager(&cluster, masters[2]).await;
    let mut latencies = Vec::new();

    // 1. CLUSTER FAILOVER of the lock's master; the waiter's subscriber is on it.
    let m = masters[0];
    let (id, held_id) = (
        cluster.id_on_master(m, "fo").await,
        cluster.id_on_master(m, "fo-held").await,
    );
    let waiters = manager(&cluster, m).await;
    let guard = holders
        .new_lock(&id)
        .with_lease(LONG_LEASE)
        .lock()
        .await
        .expect("lock");
    let held = holders
        .new_lock(&held_id)
        .with_lease(SHORT_LEASE)
        .lock()
        .await
        .expect("lock");
    let waiter = start_waiter(&waiters, &id).await;
    let slot = support::cluster::lock_slot(&id);
    let (old, new) = cluster.failover_slot(slot).await;
    println!("failover: master {old} -> {new}");
    check_held_across(&held, &waiters, "after CLUSTER FAILOVER").await;
    let (next, latency) = release_and_wake(&cluster, guard, waiter, "after CLUSTER FAILOVER").await;
    latencies.push(("CLUSTER FAILOVER", latency));
    drop((next, held));

    // 2. Migration of the lock's slot to another master while the waiter waits.
    let m = masters[1];
    let (id, held_id) = (
        cluster.id_on_master(m, "mig").await,
        cluster.id_on_master(m, "mig-held").await,
    );
    let slot = support::cluster::lock_slot(&id);
    let waiters = manager(&cluster, m).await;
    let guard = holders
        .new_lock(&id)
        .with_lease(LONG_LEASE)
        .lock()
        .await
        .expect("lock");
    let waiter = start_waiter(&waiters, &id).await;
    let to = cluster.other_master(slot).await;
    let from = cluster.migrate_slot(slot, to).await;
    println!("migration: slot {slot} {from} -> {to}");
    let (next, latency) = release_and_wake(&cluster, guard, waiter, "after slot migration").await;
    latencies.push(("slot migration", latency));
    drop(next);
    let held = holders
        .new_lock(&held_id)
        .with_lease(SHORT_LEASE)
        .lock()
        .await
        .expect("lock");
    let held_slot = support::cluster::lock_slot(&held_id);
    let to = cluster.other_master(held_slot).await;
    cluster.migrate_slot(held_slot, to).await;
    check_held_across(&held, &waiters, "after slot migration").await;
    drop(held);

    // 3. SIGKILL of the lock's master (a replica is promoted); the waiter's subscriber
    //    is on the killed node and must move to another one.
    let m = masters[2];
    let (id, held_id) = (
        cluster.id_on_master(m, "kill").await,
        cluster.id_on_master(m, "kill-held").await,
    );
    let waiters = manager(&cluster, m).await;
    let holders = manager(&cluster, masters[0]).await;
    let guard = holders
        .new_lock(&id)
        .with_lease(LONG_LEASE)
        .lock()
        .await
        .expect("lock");
    let held = holders
        .new_lock(&held_id)
        .with_lease(SHORT_LEASE)
        .lock()
        .await
        .expect("lock");
    let waiter = start_waiter(&waiters, &id).await;
    replicate(&cluster, &id).await;
    let slot = support::cluster::lock_slot(&id);
    let killed_at = Instant::now();
    let (old, new) = cluster.kill_master_of_slot(slot).await;
    println!(
        "kill: master {old} -> {new}, settled after {:?}",
        killed_at.elapsed()
    );
    check_held_across(&held, &waiters, "after SIGKILL of the master").await;
    assert!(
        waiters.subscriber_connections() >= 2,
        "the waiters' subscriber did not reconnect after its node was killed"
    );
    let (next, latency) =
        release_and_wake(&cluster, guard, waiter, "after SIGKILL of the master").await;
    latencies.push(("SIGKILL of the master", latency));
    drop((next, held));

    // 4. SIGSTOP of the lock's master past the node timeout (it answers nothing, its
    //    connections stay open: commands time out and retire the cluster connection),
    //    a replica is promoted; then SIGCONT.
    let mut m = None;
    for candidate in cluster.masters().await {
        if !cluster.replicas_of(candidate).await.is_empty() {
            m = Some(candidate);
            break;
        }
    }
    let m = m.expect("a master with a running replica");
    let (id, held_id) = (
        cluster.id_on_master(m, "pause").await,
        cluster.id_on_master(m, "pause-held").await,
    );
    let waiters = manager(&cluster, masters[0]).await;
    // Its own manager: no renewal traffic (30 s lease) before its release, so that the
    // release is the first command to meet the hung master.
    let pause_holder = manager(&cluster, masters[0]).await;
    let guard = pause_holder
        .new_lock(&id)
        .with_lease(LONG_LEASE)
        .lock()
        .await
        .expect("lock");
    let held = holders
        .new_lock(&held_id)
        .with_lease(SHORT_LEASE)
        .lock()
        .await
        .expect("lock");
    let waiter = start_waiter(&waiters, &id).await;
    replicate(&cluster, &id).await;
    let slot = support::cluster::lock_slot(&id);
    let paused_at = Instant::now();
    let (old, new) = cluster.pause_master_of_slot(slot).await;
    println!(
        "pause: master {old} -> {new}, settled after {:?}",
        paused_at.elapsed()
    );
    check_held_across(&held, &waiters, "after SIGSTOP of the master").await;
    // Both managers' connections still route the slot to the hung master until a
    // command times out (or is cut short) and the connection is rebuilt. The waiters'
    // manager: wait for that (bounded), as its wait loop would, so that the latency
    // below is the wake-up's.
    for (name, manager) in [("waiters", &waiters)] {
        let started = Instant::now();
        loop {
            match manager.new_lock(&id).holder().await {
                Ok(Some(_)) => break,
                outcome => assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{name}: holder() after the pause: {outcome:?} for 30 s\n{}",
                    cluster.logs()
                ),
            }
        }
        println!(
            "pause: {name} manager answered again after {:?}",
            started.elapsed()
        );
    }
    // The holder's connection still names the hung master: the release times out,
    // the connection is rebuilt, and the release is retried once on it.
    let started = Instant::now();
    if let Err(e) = guard.release().await {
        panic!("release after the pause: {e:?}\n{}", cluster.logs());
    }
    let released = Instant::now();
    println!(
        "pause: the release took {:?} (timed out on the hung master, retried)",
        released - started
    );
    assert!(released - started < Duration::from_secs(10));
    let (outcome, at) = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("waiter done within 60 s of the release")
        .expect("the waiter task");
    let next = match outcome {
        Ok(g) => g,
        Err(e) => panic!(
            "after SIGSTOP: the waiter failed: {e:?}\n{}",
            cluster.logs()
        ),
    };
    let latency = at.saturating_duration_since(released);
    println!("after SIGSTOP of the master: waiter woken {latency:?} after the release");
    assert!(
        latency < WAKE_BOUND,
        "after SIGSTOP: woken {latency:?} after the release"
    );
    latencies.push(("SIGSTOP of the master", latency));
    cluster.resume(old);
    cluster.wait_settled("the paused master resumed").await;
    next.release()
        .await
        .expect("release after the old master resumed");
    drop(held);

    // 5. The waiters' subscriber node (a replica) hangs (SIGSTOP, no failover: replicas
    //    own no slots) while the waiter waits: the release message is lost with it; the
    //    subscriber's PING check notices, it reconnects to another node and wakes every
    //    waiter, who then finds the lock free.
    let mut replica = None;
    for r in cluster.running() {
        if !cluster.is_master(r).await {
            replica = Some(r);
            break;
        }
    }
    let replica = replica.expect("a running replica");
    let m = cluster.masters().await[0];
    let id = cluster.id_on_master(m, "sub-hang").await;
    let waiters = manager(&cluster, replica).await;
    let guard = holders
        .new_lock(&id)
        .with_lease(LONG_LEASE)
        .lock()
        .await
        .expect("lock");
    let waiter = start_waiter(&waiters, &id).await;
    let connections = waiters.subscriber_connections();
    cluster.pause(replica);
    let released = Instant::now();
    guard
        .release()
        .await
        .expect("release while the subscriber's node hangs");
    let (outcome, at) = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("waiter done within 60 s")
        .expect("the waiter task");
    let latency = at.saturating_duration_since(released);
    println!("subscriber node {replica} hung: waiter got the lock {latency:?} after the release");
    assert!(outcome.is_ok(), "subscriber node hung: {outcome:?}");
    assert!(
        waiters.subscriber_connections() > connections,
        "the subscriber did not reconnect"
    );
    // PING every 5 s, its reply awaited 2 s, then a reconnect: well under the 30 s lease.
    assert!(
        latency < Duration::from_secs(15),
        "subscriber node hung: woken {latency:?} after the release"
    );
    latencies.push(("hang of the waiter's subscriber node", latency));
    cluster.resume(replica);
    drop(outcome);
    println!("wake-up latencies after each fault: {latencies:?}");
}

#[path = "../examples/cluster.rs"]
mod cluster_example;

/// The README's cluster example, as examples/cluster.rs runs it (the same calls, more
/// locks and workers), against a real cluster seeded with two nodes only: it connects,
/// every worker gets each lock in turn, and it shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_example_runs() {
    let cluster = RedisCluster::start().await;
    let seeds = cluster.urls()[..2].join(",");
    // Only the example reads this variable.
    std::env::set_var("REDIS_CLUSTER_NODES", &seeds);
    let run = tokio::task::spawn_blocking(|| cluster_example::main().map_err(|e| e.to_string()));
    let outcome = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the example ends within 60 s")
        .expect("the example does not panic");
    assert_eq!(outcome, Ok(()), "seeds {seeds}");
}

#[tokio::test]
async fn bad_input_is_a_typed_error_within_seconds() {
    // No node at all.
    let none: Vec<String> = Vec::new();
    let err = RdLockConnectionManager::cluster(none).await.err();
    assert!(
        matches!(
            err,
            Some(RdLockError::InvalidConfig {
                option: "nodes",
                ..
            })
        ),
        "empty node list: {err:?}"
    );
    // Unparseable node.
    let err = RdLockConnectionManager::cluster(["not a url"]).await.err();
    assert!(matches!(err, Some(RdLockError::InvalidUrl(_))), "{err:?}");
    // Unreachable seeds (closed ports): an error within seconds, not a hang.
    let closed: Vec<String> = (0..2)
        .map(|_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            format!(
                "redis://127.0.0.1:{}",
                listener.local_addr().expect("addr").port()
            )
        })
        .collect();
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(15),
        RdLockConnectionManager::cluster(closed.clone()),
    )
    .await
    .expect("cluster() on closed ports returned within 15 s");
    println!(
        "unreachable seeds: {:?} after {:?}",
        outcome.as_ref().err(),
        started.elapsed()
    );
    assert!(
        matches!(outcome, Err(ref e) if e.is_connection_error()),
        "unreachable seeds {closed:?}: {:?}",
        outcome.err()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A server that is not a cluster: a clear, non-transient error.
    let server = RedisServer::start();
    let started = Instant::now();
    let err = RdLockConnectionManager::cluster([server.url()]).await.err();
    println!("non-cluster server: {err:?} after {:?}", started.elapsed());
    match err {
        Some(RdLockError::InvalidConfig {
            option: "nodes",
            reason,
        }) => assert!(reason.contains("not a Redis Cluster"), "{reason}"),
        other => panic!("non-cluster server: {other:?}"),
    }
    // The builder's options are checked before anything is opened.
    let err = RdLockConnectionManager::builder()
        .response_timeout(Duration::ZERO)
        .cluster([server.url()])
        .await
        .err();
    assert!(
        matches!(
            err,
            Some(RdLockError::InvalidConfig {
                option: "response_timeout",
                ..
            })
        ),
        "{err:?}"
    );
}
