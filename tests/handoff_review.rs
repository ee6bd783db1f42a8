//! Review of the local hand-off (src/handoff.rs): the recipient's own parameters, a
//! hand-off answered after the recipient's lease, a recipient that times out while the
//! script is in flight, the backends and lock kinds that must not hand off,
//! `try_lock` / `BasicLock` interleaved with hand-offs, random cancellations across two
//! managers, and hand-offs and the budget on a Redis Cluster.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::{assert_quiescent, blocked_clients, pause_writes, wait_until, RedisServer};

const LONG_LEASE: Duration = Duration::from_secs(30);

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("PTTL")
}

/// Whether the server ever loaded the hand-off script (`EVALSHA` of a script the server
/// does not know makes redis-rs load it: a hand-off ever sent leaves it cached).
async fn hand_off_script_loaded(conn: &mut redis::aio::MultiplexedConnection) -> bool {
    let sha = redis::Script::new(include_str!("../src/scripts/handoff.lua"))
        .get_hash()
        .to_owned();
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(sha)
        .query_async(conn)
        .await
        .expect("SCRIPT EXISTS");
    exists == [1]
}

/// Starts `lock.lock()` in a task; a single-threaded runtime queues it at the next
/// yield.
fn spawn_lock(
    lock: rdlock::Lock,
) -> tokio::task::JoinHandle<Result<rdlock::LockGuard, RdLockError>> {
    tokio::spawn(async move { lock.lock().await })
}

/// A hand-off writes the recipient's lease and owner record, and the recipient's
/// guard runs on its own lease, in both directions (shorter and longer than the
/// giver's).
#[tokio::test]
async fn the_recipient_gets_its_own_lease_and_label() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut raw = server.conn().await;
    let long = manager
        .new_lock("params")
        .with_lease(LONG_LEASE)
        .with_label("long");
    let short = manager
        .new_lock("params")
        .with_lease(Duration::from_millis(1500))
        .with_label("short");
    let holder = long.lock().await.unwrap();
    let to_short = spawn_lock(short.clone());
    tokio::task::yield_now().await;
    holder.release().await.unwrap();
    let guard = to_short.await.unwrap().unwrap();
    assert_eq!(guard.fencing_token(), 2, "a hand-off");
    assert!(
        pttl(&mut raw, long.key()).await <= 1500,
        "the giver's lease"
    );
    let holder_info = short.holder().await.unwrap().expect("held");
    assert_eq!(holder_info.label, "short");
    assert_eq!(holder_info.fencing_token, 2);
    // Renewed on its own lease: still held well past 1.5 s.
    let renewed = Instant::now();
    wait_until(Duration::from_secs(10), "three leases pass", || {
        let done = renewed.elapsed() > Duration::from_millis(4500);
        async move { done }
    })
    .await;
    assert!(guard.is_held(), "the recipient's lease was not renewed");
    let to_long = spawn_lock(long.clone());
    tokio::task::yield_now().await;
    guard.release().await.unwrap();
    let guard = to_long.await.unwrap().unwrap();
    assert_eq!(guard.fencing_token(), 3, "a hand-off");
    assert!(
        pttl(&mut raw, long.key()).await > 1500,
        "the short lease stuck"
    );
    assert_eq!(long.holder().await.unwrap().unwrap().label, "long");
    guard.release().await.unwrap();
    assert_quiescent(&server, &manager, long.key()).await;
}

/// The hand-off script is held back longer than the recipient's lease: its reply must
/// not become a guard (the key it wrote may be gone already). The recipient acquires
/// afresh and holds a live lease.
#[tokio::test]
async fn a_hand_off_answered_after_the_recipients_lease_is_not_a_guard() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut raw = server.conn().await;
    let giver = manager.new_lock("late").with_lease(LONG_LEASE);
    let recipient = manager
        .new_lock("late")
        .with_lease(Duration::from_millis(300));
    let holder = giver.lock().await.unwrap();
    let waiter = spawn_lock(recipient.clone());
    tokio::task::yield_now().await;
    pause_writes(&mut raw, 800).await;
    let release = tokio::spawn(holder.release());
    wait_until(Duration::from_secs(5), "the hand-off is in flight", || {
        let mut raw = raw.clone();
        async move { blocked_clients(&mut raw).await >= 1 }
    })
    .await;
    release.await.unwrap().unwrap();
    let guard = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter gets the lock")
        .unwrap()
        .unwrap();
    assert_eq!(
        guard.fencing_token(),
        3,
        "the late hand-off (2) became a guard"
    );
    assert!(guard.is_held());
    guard.release().await.unwrap();
    assert_quiescent(&server, &manager, giver.key()).await;
}

/// A `lock()` future that is queued, then not polled for longer than its lease while
/// the lock is handed off to it (a stalled task): when it is polled at last, the stale
/// hand-off does not become a guard (its lease may be over); it is released and the
/// task acquires anew, with a live lease and a new fencing token.
#[tokio::test]
async fn a_hand_off_taken_after_its_lease_is_not_a_guard() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let raw = server.conn().await;
    let lease = Duration::from_millis(300);
    let giver = manager.new_lock("stale").with_lease(LONG_LEASE);
    let recipient = manager.new_lock("stale").with_lease(lease);
    let holder = giver.lock().await.unwrap();
    let mut waiter = std::pin::pin!(recipient.lock());
    // Polled once: queued behind the holder.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut waiter)
            .await
            .is_err(),
        "the lock is held: the waiter must queue"
    );
    holder.release().await.unwrap();
    // The hand-off ran (fence 2 written for the queued waiter) while it is not polled.
    wait_until(Duration::from_secs(10), "the lock is handed off", || {
        let mut raw = raw.clone();
        async move {
            support::get(&mut raw, "rdlock:{stale}:fence")
                .await
                .as_deref()
                == Some("2")
        }
    })
    .await;
    // Not polled for longer than the lease (the stall this test is about).
    tokio::time::sleep(lease * 3).await;
    let guard = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter gets the lock")
        .unwrap();
    assert!(
        guard.fencing_token() >= 3,
        "the stale hand-off (fence 2) became a guard"
    );
    assert!(guard.is_held(), "a guard for a lease that is over");
    guard.release().await.unwrap();
    assert_quiescent(&server, &manager, giver.key()).await;
}

/// A recipient whose `lock_timeout` runs out while the hand-off script is in flight:
/// the key it was handed is released, and the waiter behind it gets the lock.
#[tokio::test]
async fn a_recipient_timing_out_mid_hand_off_strands_nothing() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut raw = server.conn().await;
    let lock = manager.new_lock("timeout").with_lease(LONG_LEASE);
    let holder = lock.lock().await.unwrap();
    let impatient = tokio::spawn({
        let lock = lock.clone();
        async move { lock.lock_timeout(Duration::from_millis(300)).await }
    });
    let next = spawn_lock(lock.clone());
    tokio::task::yield_now().await;
    pause_writes(&mut raw, 1500).await;
    drop(holder);
    wait_until(Duration::from_secs(5), "the hand-off is in flight", || {
        let mut raw = raw.clone();
        async move { blocked_clients(&mut raw).await >= 1 }
    })
    .await;
    assert_eq!(
        impatient.await.unwrap().unwrap_err(),
        RdLockError::TimeoutReached
    );
    let guard = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("the next waiter gets the lock")
        .unwrap()
        .unwrap();
    assert_eq!(guard.fencing_token(), 3);
    guard.release().await.unwrap();
    assert_quiescent(&server, &manager, lock.key()).await;
}

/// Locks with 1.x compatibility never hand off, as giver or recipient; the queue still
/// serves them in order.
#[tokio::test]
async fn v1_compat_locks_never_hand_off() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut raw = server.conn().await;
    let plain = manager.new_lock("v1").with_lease(LONG_LEASE);
    let v1 = manager
        .new_lock("v1")
        .with_lease(LONG_LEASE)
        .with_v1_compat();
    // plain -> v1 -> plain -> v1: every pair has one side with 1.x compatibility.
    let mut guard = plain.lock().await.unwrap();
    for next in [&v1, &plain, &v1] {
        let waiter = spawn_lock(next.clone());
        tokio::task::yield_now().await;
        guard.release().await.unwrap();
        guard = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiter gets the lock")
            .unwrap()
            .unwrap();
    }
    guard.release().await.unwrap();
    assert!(
        !hand_off_script_loaded(&mut raw).await,
        "a hand-off was sent"
    );
    assert_quiescent(&server, &manager, plain.key()).await;
}

/// Redlock never hands off (a quorum of independent masters); queued waiters still
/// get the lock in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_never_hands_off() {
    let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let manager =
        RdLockConnectionManager::redlock(nodes.iter().map(RedisServer::url).collect::<Vec<_>>())
            .await
            .unwrap();
    let lock = Arc::new(manager.new_lock("quorum").with_lease(LONG_LEASE));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let lock = lock.clone();
            tokio::spawn(async move {
                let mut fences = Vec::new();
                for _ in 0..5 {
                    let guard = lock.lock().await.unwrap();
                    fences.push(guard.fencing_token());
                    guard.release().await.unwrap();
                }
                fences
            })
        })
        .collect();
    for h in handles {
        tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("every task gets its turns")
            .unwrap();
    }
    for node in &nodes {
        let mut raw = node.conn().await;
        assert!(
            !hand_off_script_loaded(&mut raw).await,
            "a hand-off was sent"
        );
    }
}

/// `try_lock` (this manager and another) and a `BasicLock` interleaved with tasks that
/// hand the lock to each other: never two holders, `try_lock` never waits, and the
/// others get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_and_basic_lock_interleaved_with_hand_offs_keep_exclusion() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = Arc::new(manager.new_lock("mixed").with_lease(LONG_LEASE));
    let holders = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let enter = {
        let (holders, overlaps) = (holders.clone(), overlaps.clone());
        move || {
            if holders.fetch_add(1, Ordering::SeqCst) != 0 {
                overlaps.fetch_add(1, Ordering::SeqCst);
            }
        }
    };
    let mut handles = Vec::new();
    for _ in 0..4 {
        let (lock, stop, holders, enter) =
            (lock.clone(), stop.clone(), holders.clone(), enter.clone());
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let guard = lock.lock().await.unwrap();
                enter();
                tokio::task::yield_now().await;
                holders.fetch_sub(1, Ordering::SeqCst);
                guard.release().await.unwrap();
                n += 1;
            }
            n
        }));
    }
    for try_manager in [manager.clone(), other.clone()] {
        let (stop, holders, enter) = (stop.clone(), holders.clone(), enter.clone());
        let lock = try_manager.new_lock("mixed").with_lease(LONG_LEASE);
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match lock.try_lock().await {
                    Ok(guard) => {
                        enter();
                        tokio::task::yield_now().await;
                        holders.fetch_sub(1, Ordering::SeqCst);
                        guard.release().await.unwrap();
                        n += 1;
                    }
                    Err(RdLockError::LockUnavailable) => {}
                    Err(e) => panic!("try_lock: {e}"),
                }
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "try_lock waited"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            n
        }));
    }
    let basic_rounds = Arc::new(AtomicU64::new(0));
    let basic = {
        let (stop, holders, enter, rounds) = (
            stop.clone(),
            holders.clone(),
            enter.clone(),
            basic_rounds.clone(),
        );
        let mut basic = other.new_basic_lock("mixed", 30);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                basic.lock().await.unwrap();
                enter();
                tokio::task::yield_now().await;
                holders.fetch_sub(1, Ordering::SeqCst);
                basic.release().await.unwrap();
                rounds.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    wait_until(
        Duration::from_secs(20),
        "the BasicLock gets in 5 times",
        || {
            let n = basic_rounds.load(Ordering::SeqCst);
            async move { n >= 5 }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for h in handles {
        counts.push(
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("every task ends")
                .unwrap(),
        );
    }
    tokio::time::timeout(Duration::from_secs(30), basic)
        .await
        .expect("the BasicLock task ends")
        .unwrap();
    println!("acquisitions per task (4 queued, 2 try_lock): {counts:?}");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two holders at once");
    assert_quiescent(&server, &manager, lock.key()).await;
}

/// Two managers, four tasks each, one key: random timeouts on `lock_timeout`, guards
/// released by `release()`, by drop, or by a `release()` future cut short, and short
/// write pauses of the server (hand-offs held in flight). Never two holders, fences
/// rise in holding order, every task ends, nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cancellations_around_hand_offs_across_two_managers() {
    let seed = support::seed();
    println!("seed {seed}");
    let server = RedisServer::start();
    let managers = [
        RdLockConnectionManager::new(server.url()).await.unwrap(),
        RdLockConnectionManager::new(server.url()).await.unwrap(),
    ];
    let holders = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicU64::new(0));
    let last_fence = Arc::new(AtomicU64::new(0));
    let regressions = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let run_for = Duration::from_secs(3);
    let mut handles = Vec::new();
    for (m, manager) in managers.iter().enumerate() {
        for t in 0..4u64 {
            let lock = manager.new_lock("random").with_lease(LONG_LEASE);
            let (holders, overlaps, last_fence, regressions) = (
                holders.clone(),
                overlaps.clone(),
                last_fence.clone(),
                regressions.clone(),
            );
            let mut x = (seed ^ (m as u64 * 1000 + t + 1)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            handles.push(tokio::spawn(async move {
                let mut acquired = 0u64;
                while started.elapsed() < run_for {
                    x = support::xorshift(x);
                    let guard = if x.is_multiple_of(4) {
                        match lock.lock_timeout(Duration::from_micros(x % 3000)).await {
                            Ok(guard) => guard,
                            Err(RdLockError::TimeoutReached) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    } else {
                        lock.lock().await.unwrap()
                    };
                    if holders.fetch_add(1, Ordering::SeqCst) != 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    if last_fence.fetch_max(guard.fencing_token(), Ordering::SeqCst)
                        >= guard.fencing_token()
                    {
                        regressions.fetch_add(1, Ordering::SeqCst);
                    }
                    x = support::xorshift(x);
                    if x.is_multiple_of(3) {
                        tokio::task::yield_now().await;
                    }
                    holders.fetch_sub(1, Ordering::SeqCst);
                    acquired += 1;
                    x = support::xorshift(x);
                    match x % 3 {
                        0 => guard.release().await.unwrap(),
                        1 => drop(guard),
                        _ => {
                            let cut = Duration::from_micros(x % 500);
                            drop(tokio::time::timeout(cut, guard.release()).await);
                        }
                    }
                }
                acquired
            }));
        }
    }
    let pauser = {
        let mut raw = server.conn().await;
        tokio::spawn(async move {
            let mut x = seed | 1;
            while started.elapsed() < run_for {
                x = support::xorshift(x);
                tokio::time::sleep(Duration::from_millis(50 + x % 200)).await;
                pause_writes(&mut raw, 5 + x % 40).await;
            }
        })
    };
    let mut counts = Vec::new();
    for h in handles {
        counts.push(
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("every task ends")
                .unwrap(),
        );
    }
    pauser.await.unwrap();
    println!("acquisitions per task: {counts:?}");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two holders at once");
    assert_eq!(
        regressions.load(Ordering::SeqCst),
        0,
        "a fence did not rise"
    );
    for manager in &managers {
        assert_quiescent(&server, manager, "rdlock:{random}:lock").await;
    }
}

/// A seeded cluster manager, node `first` first (its subscriber connects there).
async fn cluster_manager(
    cluster: &support::cluster::RedisCluster,
    first: usize,
) -> RdLockConnectionManager {
    let mut seeds = vec![cluster.node(first).url()];
    seeds.extend(
        cluster
            .running()
            .into_iter()
            .filter(|&i| i != first)
            .map(|i| cluster.node(i).url()),
    );
    RdLockConnectionManager::cluster(seeds).await.unwrap()
}

/// On a Redis Cluster: hand-offs between the tasks of a busy manager (fences rise in
/// holding order), and another manager whose subscriber is on another node than the
/// lock's master (so the budget release's `PUBLISH` counts no receiver there) still
/// gets in within a few budgets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_hand_offs_and_the_budget() {
    let cluster = support::cluster::RedisCluster::start().await;
    let master = cluster
        .master_of_slot(support::cluster::lock_slot("cbudget"))
        .await;
    let elsewhere = cluster
        .masters()
        .await
        .into_iter()
        .find(|&m| m != master)
        .expect("another master");
    let busy = cluster_manager(&cluster, master).await;
    let other = cluster_manager(&cluster, elsewhere).await;
    let lock = Arc::new(busy.new_lock("cbudget").with_lease(LONG_LEASE));
    let stop = Arc::new(AtomicBool::new(false));
    let fences = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (lock, stop, fences) = (lock.clone(), stop.clone(), fences.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let guard = lock.lock().await.unwrap();
                    fences.lock().unwrap().push(guard.fencing_token());
                    guard.release().await.unwrap();
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(10), "hand-offs under way", || {
        let lock = lock.clone();
        async move { lock.last_fencing_token().await.unwrap_or(0) >= 50 }
    })
    .await;
    let mut rounds = Vec::new();
    for _ in 0..6 {
        let before = lock.last_fencing_token().await.unwrap();
        let guard = tokio::time::timeout(
            Duration::from_secs(20),
            other.new_lock("cbudget").with_lease(LONG_LEASE).lock(),
        )
        .await
        .expect("the other manager's waiter gets in")
        .unwrap();
        rounds.push(guard.fencing_token() - before - 1);
        guard.release().await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    rounds.sort_unstable();
    println!("busy manager's acquisitions while the other waited: {rounds:?}");
    let fences = std::mem::take(&mut *fences.lock().unwrap());
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens did not strictly increase"
    );
    let median = rounds[rounds.len() / 2];
    assert!(
        median <= 4 * u64::from(rdlock::HANDOFF_BUDGET + 1),
        "the other manager waited {rounds:?} acquisitions"
    );
}
