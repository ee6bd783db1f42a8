//! The local hand-off (src/handoff.rs): a released guard passes the key straight to the
//! next task of the same manager queued for it, in one script; fencing, cancel safety,
//! shutdown and the budget that lets other processes in.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError, HANDOFF_BUDGET};
use support::{
    assert_quiescent, blocked_clients, calls, commands_run, pause_writes, reset_stats, wait_until,
    RedisServer,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_tasks_cost_one_script_per_acquisition_with_rising_fences_and_fair_shares() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut raw = server.conn().await;
    let lock = Arc::new(manager.new_lock("handoff"));
    // Fences in the order the guards were held (appended while holding the lock).
    let fences = Arc::new(Mutex::new(Vec::new()));
    reset_stats(&mut raw).await;
    let started = Instant::now();
    let run_for = Duration::from_millis(1500);
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (lock, fences) = (lock.clone(), fences.clone());
            tokio::spawn(async move {
                let mut acquired = 0u64;
                while started.elapsed() < run_for {
                    let guard = lock.lock().await.unwrap();
                    fences.lock().unwrap().push(guard.fencing_token());
                    acquired += 1;
                    guard.release().await.unwrap();
                }
                acquired
            })
        })
        .collect();
    let mut per_task = Vec::new();
    for h in handles {
        per_task.push(h.await.unwrap());
    }
    let total: u64 = per_task.iter().sum();
    let scripts = calls(&mut raw, "evalsha").await + calls(&mut raw, "eval").await;
    let commands = commands_run(&mut raw).await;
    let per_acquisition = scripts as f64 / total as f64;
    let mean = total as f64 / per_task.len() as f64;
    let min = *per_task.iter().min().unwrap();
    println!(
        "{total} acquisitions: {per_acquisition:.3} scripts and {:.2} commands each; \
         per task min {min}, mean {mean:.1}",
        commands as f64 / total as f64
    );
    // One hand-off script per acquisition, plus per budget round one real release and
    // one acquire: (N + 2) / (N + 1); a little more for the first acquire and the
    // moments the queue was empty.
    let budget = f64::from(HANDOFF_BUDGET);
    assert!(
        per_acquisition <= (budget + 2.0) / (budget + 1.0) + 0.05,
        "{per_acquisition} scripts per acquisition"
    );
    assert!(min as f64 >= mean * 0.25, "a task starved: {per_task:?}");
    let fences = std::mem::take(&mut *fences.lock().unwrap());
    assert_eq!(fences.len() as u64, total);
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens did not strictly increase"
    );
    assert_eq!(
        lock.last_fencing_token().await.unwrap(),
        *fences.last().unwrap()
    );
    assert_quiescent(&server, &manager, lock.key()).await;
}

/// The hand-off script is held in flight (writes paused) while its recipient is
/// cancelled: the key it was handed is released by its token, and the next waiter
/// still gets the lock.
#[tokio::test]
async fn a_recipient_cancelled_mid_hand_off_strands_nothing() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut raw = server.conn().await;
    let lock = Arc::new(manager.new_lock("cancelled"));
    let holder = lock.lock().await.unwrap();
    let recipient = tokio::spawn({
        let lock = lock.clone();
        async move { lock.lock().await }
    });
    let next = tokio::spawn({
        let lock = lock.clone();
        async move { lock.lock().await }
    });
    // Single-threaded runtime: one yield lets both spawned tasks queue, in order.
    tokio::task::yield_now().await;
    pause_writes(&mut raw, 500).await;
    let release = tokio::spawn(holder.release());
    wait_until(Duration::from_secs(5), "the hand-off is in flight", || {
        let mut raw = raw.clone();
        async move { blocked_clients(&mut raw).await >= 1 }
    })
    .await;
    recipient.abort();
    assert!(recipient.await.unwrap_err().is_cancelled());
    assert!(
        !release.is_finished(),
        "the hand-off was answered before the recipient was cancelled"
    );
    release.await.unwrap().unwrap();
    let guard = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("the next waiter gets the lock")
        .unwrap()
        .unwrap();
    // The holder had fence 1; the cancelled recipient was handed 2; the next waiter
    // acquired afresh once 2 was released.
    assert_eq!(guard.fencing_token(), 3);
    guard.release().await.unwrap();
    assert_quiescent(&server, &manager, lock.key()).await;
}

/// Waiters cancelled at random moments around hand-offs (before, during, after the
/// script) never strand the lock: the others go on, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_cancelled_at_random_moments_never_strand_the_lock() {
    let seed = support::seed();
    println!("seed {seed}");
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = Arc::new(manager.new_lock("random-cancel"));
    let mut x = seed | 1;
    let mut last_fence = 0;
    for _ in 0..40 {
        let holder = lock.lock().await.unwrap();
        assert!(holder.fencing_token() > last_fence);
        let doomed: Vec<_> = (0..3)
            .map(|_| {
                let lock = lock.clone();
                tokio::spawn(async move { lock.lock().await })
            })
            .collect();
        let survivor = tokio::spawn({
            let lock = lock.clone();
            async move { lock.lock().await }
        });
        x = support::xorshift(x);
        tokio::time::sleep(Duration::from_micros(x % 300)).await;
        drop(holder);
        x = support::xorshift(x);
        tokio::time::sleep(Duration::from_micros(x % 600)).await;
        for d in &doomed {
            d.abort();
        }
        for d in doomed {
            // Cancelled, or acquired before the abort (then dropped: released).
            drop(d.await);
        }
        let guard = tokio::time::timeout(Duration::from_secs(10), survivor)
            .await
            .expect("the surviving waiter gets the lock")
            .unwrap()
            .unwrap();
        last_fence = guard.fencing_token();
        drop(guard);
    }
    assert_quiescent(&server, &manager, lock.key()).await;
}

/// Shutdown while a hand-off script is in flight: the handed-off key is released, and
/// shutdown waits for that.
#[tokio::test]
async fn shutdown_during_a_hand_off_leaves_no_key() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut raw = server.conn().await;
    let lock = Arc::new(manager.new_lock("shutdown"));
    let holder = lock.lock().await.unwrap();
    let recipient = tokio::spawn({
        let lock = lock.clone();
        async move { lock.lock().await }
    });
    tokio::task::yield_now().await;
    pause_writes(&mut raw, 300).await;
    drop(holder); // hands off in the background
    wait_until(Duration::from_secs(5), "the hand-off is in flight", || {
        let mut raw = raw.clone();
        async move { blocked_clients(&mut raw).await >= 1 }
    })
    .await;
    manager.shutdown().await.unwrap();
    assert_eq!(recipient.await.unwrap().unwrap_err(), RdLockError::ShutDown);
    // The hand-off ran in Redis (fence 2), and was released since.
    assert_eq!(lock.last_fencing_token().await, Ok(2));
    assert!(
        support::get(&mut raw, lock.key()).await.is_none(),
        "key left behind"
    );
    assert_eq!(manager.pending_tasks(), 0);
}

/// Shutdown while 16 tasks hand the lock to each other: no key is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_hand_offs_leaves_no_key() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut raw = server.conn().await;
    let lock = Arc::new(manager.new_lock("busy"));
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let lock = lock.clone();
            tokio::spawn(async move {
                let mut acquired = 0u64;
                loop {
                    match lock.lock().await {
                        Ok(guard) => {
                            acquired += 1;
                            drop(guard);
                        }
                        Err(RdLockError::ShutDown) => return acquired,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    let key = lock.key().to_owned();
    wait_until(Duration::from_secs(10), "hand-offs under way", || {
        let lock = lock.clone();
        async move { lock.last_fencing_token().await.unwrap_or(0) >= 50 }
    })
    .await;
    manager.shutdown().await.unwrap();
    let mut total = 0;
    for h in handles {
        total += tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("every task ends")
            .unwrap();
    }
    let fence = lock.last_fencing_token().await.unwrap_or(0);
    assert!(total >= 50, "{total} acquisitions, fence {fence}");
    assert!(
        support::get(&mut raw, &key).await.is_none(),
        "key left behind"
    );
    assert_eq!(manager.pending_tasks(), 0);
}

/// Two managers (two processes), one key: a busy manager whose tasks hand the lock to
/// each other keeps doing so while nobody else waits (no release in Redis, no
/// message), and lets the other manager's queued waiter in at the end of the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_lets_another_managers_waiter_in() {
    let server = RedisServer::start();
    let busy = RdLockConnectionManager::new(server.url()).await.unwrap();
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = Arc::new(busy.new_lock("budget"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (lock, stop) = (lock.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let guard = lock.lock().await.unwrap();
                    guard.release().await.unwrap();
                }
            })
        })
        .collect();
    // Alone, the busy manager never releases the key in Redis: hand-offs go on, with
    // no message (the budget only matters while another process queues).
    let mut raw = server.conn().await;
    wait_until(Duration::from_secs(10), "hand-offs under way", || {
        let lock = lock.clone();
        async move { lock.last_fencing_token().await.unwrap_or(0) >= 20 }
    })
    .await;
    reset_stats(&mut raw).await;
    let first = lock.last_fencing_token().await.unwrap();
    wait_until(Duration::from_secs(10), "more hand-offs", || {
        let lock = lock.clone();
        async move { lock.last_fencing_token().await.unwrap_or(0) >= first + 200 }
    })
    .await;
    let publishes = calls(&mut raw, "publish").await;
    let acquisitions = lock.last_fencing_token().await.unwrap() - first;
    println!("alone: {acquisitions} acquisitions, {publishes} messages");
    assert_eq!(
        publishes, 0,
        "{publishes} messages for {acquisitions} acquisitions, alone"
    );
    let mut rounds = Vec::new();
    for _ in 0..10 {
        let before = lock.last_fencing_token().await.unwrap();
        let guard = tokio::time::timeout(Duration::from_secs(20), other.new_lock("budget").lock())
            .await
            .expect("the other manager's waiter gets in")
            .unwrap();
        // Acquisitions of the busy manager while the other waited.
        rounds.push(guard.fencing_token() - before - 1);
        guard.release().await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    rounds.sort_unstable();
    println!("busy manager's acquisitions while the other waited: {rounds:?}");
    // Queued by its first attempt, the waiter gets the turn at the end of the budget
    // that was running, or of the next one if that budget's last hand-off looked at the
    // queue just before it queued: at most 2 × (HANDOFF_BUDGET + 1) acquisitions of the
    // busy manager, one more for a hand-off in flight, whatever the timing.
    let worst = rounds[rounds.len() - 1];
    assert!(
        worst <= 2 * u64::from(HANDOFF_BUDGET + 1) + 1,
        "the other manager waited {rounds:?} acquisitions"
    );
}

/// The releasing future dropped while its hand-off script is in flight: the outcome is
/// unknown, so both tokens are released in the background and the waiter acquires
/// afresh.
#[tokio::test]
async fn a_release_cancelled_mid_hand_off_leaves_the_waiter_a_plain_turn() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut raw = server.conn().await;
    let lock = Arc::new(manager.new_lock("release-cancelled"));
    // One hand-off first, so that its script is cached by the server: a dropped
    // future cannot load it after a NOSCRIPT reply (fences 1 and 2).
    let first = lock.lock().await.unwrap();
    let second = tokio::spawn({
        let lock = lock.clone();
        async move { lock.lock().await }
    });
    tokio::task::yield_now().await;
    first.release().await.unwrap();
    second.await.unwrap().unwrap().release().await.unwrap();
    let holder = lock.lock().await.unwrap();
    assert_eq!(holder.fencing_token(), 3);
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.lock().await }
    });
    tokio::task::yield_now().await;
    pause_writes(&mut raw, 300).await;
    let mut release = Box::pin(holder.release());
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut release)
            .await
            .is_err(),
        "answered while writes were paused"
    );
    assert!(
        blocked_clients(&mut raw).await >= 1,
        "no hand-off in flight"
    );
    drop(release);
    let guard = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter gets the lock")
        .unwrap()
        .unwrap();
    // The script ran once writes resumed (fence 4, a token nobody took), both tokens
    // were released, and the waiter acquired afresh.
    assert_eq!(guard.fencing_token(), 5);
    guard.release().await.unwrap();
    assert_quiescent(&server, &manager, lock.key()).await;
}

/// A guard whose key was lost cannot hand it off: `release` reports it, and the waiter
/// gets a plain turn and acquires.
#[tokio::test]
async fn a_lost_key_is_not_handed_off() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = Arc::new(manager.new_lock("lost"));
    let holder = lock.lock().await.unwrap();
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.lock().await }
    });
    tokio::task::yield_now().await;
    assert!(lock.force_release().await.unwrap());
    assert_eq!(holder.release().await, Err(RdLockError::LockNotAcquired));
    let guard = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter gets the lock")
        .unwrap()
        .unwrap();
    assert_eq!(guard.fencing_token(), 2);
    guard.release().await.unwrap();
    assert_quiescent(&server, &manager, lock.key()).await;
}
