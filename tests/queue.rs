//! The Redis-side queue of waiting processes (`src/queue.rs`): a release passes the
//! turn to the first process in line with one message, waiters make no attempt that a
//! wake-up did not call for, a dead process's entry costs a reservation and not a
//! lease, a cancelled waiter leaves no entry and no reserved turn, `try_lock` does not
//! queue, and processes share the lock fairly.
//!
//! Each manager is one process of the queue (as one OS process would be).

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rdlock::{RdLockConnectionManager, RdLockError, HANDOFF_BUDGET, RESERVATION};
use support::{calls, queue, reset_stats, wait_until, RedisServer};

/// Every message published on `channel` from now on, collected in the background.
async fn listen(server: &RedisServer, channel: &str) -> Arc<std::sync::Mutex<Vec<String>>> {
    let mut pubsub = server.client().get_async_pubsub().await.unwrap();
    pubsub.subscribe(channel).await.unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let payload: String = message.get_payload().unwrap();
            sink.lock().unwrap().push(payload);
        }
    });
    seen
}

/// Six processes, one task each, take a key in turns: every release with processes
/// in line publishes one `turn` message naming one process, nothing wakes the others,
/// and the only attempts that fail are those that put a process in line (one per
/// wait), not one per waiter per release as when every release wakes every waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_the_next_process_only_and_waiters_make_no_failed_attempts() {
    const PROCESSES: usize = 6;
    const ROUNDS: usize = 25;
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let mut managers = Vec::new();
    for _ in 0..PROCESSES {
        managers.push(RdLockConnectionManager::new(server.url()).await.unwrap());
    }
    // Scripts loaded outside the count.
    managers[0]
        .new_lock("turns")
        .lock()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let messages = listen(&server, "rdlock:{turns}:release").await;
    reset_stats(&mut raw).await;
    let start = Arc::new(tokio::sync::Barrier::new(PROCESSES));
    let tasks: Vec<_> = managers
        .iter()
        .map(|manager| {
            let (lock, start) = (manager.new_lock("turns"), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                for _ in 0..ROUNDS {
                    let guard = lock.lock().await.unwrap();
                    // A hold long enough for every other process to queue.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    guard.release().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("every process gets its turns")
            .unwrap();
    }
    let acquisitions = (PROCESSES * ROUNDS) as u64;
    // An attempt that fails queues its process: one LPOS each.
    let failed = calls(&mut raw, "lpos").await;
    let publishes = calls(&mut raw, "publish").await;
    wait_until(Duration::from_secs(10), "every message heard", || {
        let heard = messages.lock().unwrap().len() as u64;
        async move { heard >= publishes }
    })
    .await;
    let messages = messages.lock().unwrap().clone();
    let turns: Vec<&String> = messages.iter().filter(|m| m.starts_with("turn ")).collect();
    let mut named = BTreeMap::new();
    for turn in &turns {
        let next = turn.split(' ').nth(1).expect("a turn names a process");
        *named.entry(next.to_owned()).or_insert(0u64) += 1;
    }
    println!(
        "{acquisitions} acquisitions: {failed} failed attempts, {publishes} messages \
         ({} turns to {} processes, {} others: {:?})",
        turns.len(),
        named.len(),
        messages.len() - turns.len(),
        messages
            .iter()
            .filter(|m| !m.starts_with("turn "))
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        !messages.iter().any(|m| m == "released"),
        "a release woke every waiter"
    );
    // Nearly every acquisition was a turn passed on (a process finding the key free
    // takes it without one).
    assert!(
        turns.len() as u64 >= acquisitions / 2,
        "{} turns for {acquisitions} acquisitions",
        turns.len()
    );
    assert_eq!(named.len(), PROCESSES, "turns went to {named:?}");
    // With every release waking every waiter, each release would cost about one
    // failed attempt per other waiting process (5 here): 600+. A queue costs one per
    // wait, plus a few after a standby's check on a stalled machine.
    assert!(
        failed <= acquisitions * 3 / 2,
        "{failed} failed attempts for {acquisitions} acquisitions"
    );
    for manager in &managers {
        manager.shutdown().await.unwrap();
    }
}

/// Two processes die in line (their entries stay): the live waiter behind them gets
/// the lock about two reservations after the release, not after the holder's lease.
#[tokio::test]
async fn dead_processes_in_line_cost_a_reservation_each_not_a_lease() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let guard = holder
        .new_lock("dead")
        .with_lease(lease)
        .lock()
        .await
        .unwrap();
    // Two processes that queued and died (a crash leaves its entry behind).
    for dead in ["d1d1d1d1", "d2d2d2d2"] {
        let _: () = redis::cmd("RPUSH")
            .arg("rdlock:{dead}:queue")
            .arg(dead)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    let waiting = tokio::spawn({
        let lock = waiter.new_lock("dead").with_lease(lease);
        async move {
            let guard = lock.lock().await.unwrap();
            let at = Instant::now();
            guard.release().await.unwrap();
            at
        }
    });
    wait_until(Duration::from_secs(10), "the waiter queued", || {
        let mut raw = raw.clone();
        async move { queue(&mut raw, "dead").await.len() == 3 }
    })
    .await;
    let released = Instant::now();
    guard.release().await.unwrap();
    let acquired = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiter gets the lock long before the 30 s lease")
        .unwrap();
    let after = acquired - released;
    println!("acquired {after:?} after the release, behind two dead processes");
    // The turn was reserved for the first dead process: nobody took the key before
    // its reservation ended.
    assert!(after >= RESERVATION, "took the key after {after:?}");
    // The waiter took the key after the first dead process's reservation ended (as
    // the second standby: the first, d2, is dead too), and its release passed the turn
    // on to d2, the last in line.
    assert!(queue(&mut raw, "dead").await.is_empty());
    assert_eq!(
        support::get(&mut raw, "rdlock:{dead}:lock")
            .await
            .as_deref(),
        Some("q:d2d2d2d2")
    );
}

/// A waiter cancelled while its process is in line, as a turn was being reserved for
/// that process: the process leaves the queue and the turn passes to the next one.
#[tokio::test]
async fn a_cancelled_waiter_leaves_no_entry_and_passes_its_reserved_turn_on() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let first = RdLockConnectionManager::new(server.url()).await.unwrap();
    let second = RdLockConnectionManager::new(server.url()).await.unwrap();
    // Held by someone with a 30 s lease.
    let _: () = redis::cmd("SET")
        .arg("rdlock:{cancel}:lock")
        .arg("someone")
        .arg("PX")
        .arg(30_000)
        .query_async(&mut raw)
        .await
        .unwrap();
    let cancelled = tokio::spawn({
        let lock = first.new_lock("cancel");
        async move { lock.lock().await.map(drop) }
    });
    wait_until(Duration::from_secs(10), "the first process queued", || {
        let mut raw = raw.clone();
        async move { queue(&mut raw, "cancel").await.len() == 1 }
    })
    .await;
    let first_process = queue(&mut raw, "cancel").await.remove(0);
    let waiting = tokio::spawn({
        let lock = second.new_lock("cancel");
        async move {
            let guard = lock.lock().await.unwrap();
            guard.release().await.unwrap();
        }
    });
    wait_until(Duration::from_secs(10), "the second process queued", || {
        let mut raw = raw.clone();
        async move { queue(&mut raw, "cancel").await.len() == 2 }
    })
    .await;
    // The holder's release, as release.lua makes it, but its message lost: a turn
    // reserved for the first process, for 30 s (so that a turn left behind would
    // show), that its waiter has not heard of yet.
    let _: () = redis::cmd("LPOP")
        .arg("rdlock:{cancel}:queue")
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("rdlock:{cancel}:lock")
        .arg(format!("q:{first_process}"))
        .arg("PX")
        .arg(30_000)
        .query_async(&mut raw)
        .await
        .unwrap();
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    // The first process leaves: the turn goes to the second, whose waiter takes it.
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the reserved turn was passed on")
        .unwrap();
    assert!(queue(&mut raw, "cancel").await.is_empty());
    assert_eq!(support::get(&mut raw, "rdlock:{cancel}:lock").await, None);
}

/// A cancelled waiter whose process is in line (no turn yet) takes the entry out.
#[tokio::test]
async fn a_waiter_that_times_out_takes_its_process_out_of_line() {
    let server = RedisServer::start();
    let raw = server.conn().await;
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(server.url()).await.unwrap();
    let _guard = holder.new_lock("timeout").lock().await.unwrap();
    let outcome = waiter
        .new_lock("timeout")
        .lock_timeout(Duration::from_millis(300))
        .await;
    assert!(matches!(outcome, Err(RdLockError::TimeoutReached)));
    wait_until(Duration::from_secs(10), "the entry is gone", || {
        let mut raw = raw.clone();
        async move { queue(&mut raw, "timeout").await.is_empty() }
    })
    .await;
}

/// `try_lock` never queues: it fails at once and leaves no entry.
#[tokio::test]
async fn try_lock_does_not_queue() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let _guard = holder.new_lock("try").lock().await.unwrap();
    for _ in 0..3 {
        assert!(matches!(
            other.new_lock("try").try_lock().await,
            Err(RdLockError::LockUnavailable)
        ));
    }
    let exists: u64 = redis::cmd("EXISTS")
        .arg("rdlock:{try}:queue")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(exists, 0, "try_lock queued");
}

/// Four processes of four tasks each on one key, for a bounded time: each process
/// gets at least half the mean share, each task at least a quarter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_of_four_tasks_share_the_lock_fairly() {
    let server = RedisServer::start();
    let mut managers = Vec::new();
    for _ in 0..4 {
        managers.push(RdLockConnectionManager::new(server.url()).await.unwrap());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (p, manager) in managers.iter().enumerate() {
        for _ in 0..4 {
            let (lock, stop, total) = (manager.new_lock("fair"), stop.clone(), total.clone());
            tasks.push((
                p,
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let guard = lock.lock().await.unwrap();
                        n += 1;
                        total.fetch_add(1, Ordering::Relaxed);
                        guard.release().await.unwrap();
                    }
                    n
                }),
            ));
        }
    }
    // Enough turns for every process to have had several (each takes up to
    // HANDOFF_BUDGET + 1 acquisitions per turn), or 30 s on a very slow machine.
    let enough = 40 * (HANDOFF_BUDGET as usize + 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while total.load(Ordering::Relaxed) < enough && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut per_task = Vec::new();
    let mut per_process = [0u64; 4];
    for (p, task) in tasks {
        let n = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("every task stops")
            .unwrap();
        per_task.push(n);
        per_process[p] += n;
    }
    let sum: u64 = per_task.iter().sum();
    println!("{sum} acquisitions: per process {per_process:?}, per task {per_task:?}");
    assert!(
        sum >= 4 * (HANDOFF_BUDGET as u64 + 1),
        "{sum} acquisitions: too few turns to judge"
    );
    let process_mean = sum as f64 / 4.0;
    let task_mean = sum as f64 / 16.0;
    for n in per_process {
        assert!(
            n as f64 >= process_mean / 2.0,
            "a process got {n} of {sum}: {per_process:?}"
        );
    }
    for n in &per_task {
        assert!(
            *n as f64 >= task_mean / 4.0,
            "a task got {n} of {sum}: {per_task:?}"
        );
    }
}
