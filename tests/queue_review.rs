//! Adversarial review of the Redis-side queue of waiting processes (`src/queue.rs`):
//! interleavings the first tests did not construct.

mod support;

use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::{queue, RedisServer};

/// A waiter gives up (its deadline) and the same task waits again at once: the
/// background `leave` of the first wait must not take out the entry the second wait's
/// attempt just made, or the holder's release finds nobody in line, publishes nothing,
/// and the waiter sits out the holder's whole lease.
async fn retry_after_timeout_is_woken_by_the_release() {
    const LEASE: Duration = Duration::from_secs(20);
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = holder
        .new_lock("retry")
        .with_lease(LEASE)
        .lock()
        .await
        .unwrap();
    let lock = waiter.new_lock("retry");
    let waiting = tokio::spawn(async move {
        let first = lock.lock_timeout(Duration::from_millis(300)).await;
        assert!(
            matches!(first, Err(RdLockError::TimeoutReached)),
            "{first:?}"
        );
        // At once, as a retry loop does.
        lock.lock_timeout(Duration::from_secs(60)).await
    });
    // Long after the second wait began (and the first one's leave ran).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let in_line = queue(&mut raw, "retry").await;
    let released = Instant::now();
    guard.release().await.unwrap();
    let acquired = tokio::time::timeout(Duration::from_secs(40), waiting)
        .await
        .expect("acquired within the test's bound")
        .unwrap()
        .expect("acquired");
    let took = released.elapsed();
    assert!(
        took < LEASE / 4,
        "the retry waited {took:?} after the release (queue at release: {in_line:?})"
    );
    acquired.release().await.unwrap();
}

#[tokio::test]
async fn retry_after_timeout_is_woken_by_the_release_current_thread() {
    retry_after_timeout_is_woken_by_the_release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_timeout_is_woken_by_the_release_multi_thread() {
    retry_after_timeout_is_woken_by_the_release().await;
}

/// A `BasicLock` (which queues, without 1.x compatibility) and a run of `Lock` tasks
/// of the same process: the `Lock` tasks hand the key off to each other past the
/// budget while the `BasicLock` waits in line. A hand-off script with the budget spent
/// takes the process out of the queue to put it back at the end; with no other
/// process queued it must not leave it out, or the last release finds nobody in line,
/// publishes nothing, and the `BasicLock` sits out the lease it last saw.
#[tokio::test]
async fn hand_offs_past_the_budget_keep_the_process_in_line_for_its_other_waiters() {
    const LEASE: Duration = Duration::from_secs(20);
    const TASKS: usize = rdlock::HANDOFF_BUDGET as usize + 4;
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("budget").with_lease(LEASE);
    let first = lock.lock().await.unwrap();
    let mut basic = manager.new_basic_lock("budget", 20).without_v1_compat();
    let basic_waits = tokio::spawn(async move {
        basic
            .lock_timeout(Duration::from_secs(60))
            .await
            .map(|()| basic)
    });
    support::wait_until(Duration::from_secs(10), "the BasicLock queued", || {
        let mut raw = raw.clone();
        async move { queue(&mut raw, "budget").await.len() == 1 }
    })
    .await;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..TASKS {
        let (lock, done_tx, started) = (lock.clone(), done_tx.clone(), started.clone());
        tokio::spawn(async move {
            started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let guard = lock.lock().await.unwrap();
            done_tx.send(guard.fencing_token()).unwrap();
            drop(guard);
        });
    }
    // Each task, once started, is in the local queue (its first poll enqueues it).
    while started.load(std::sync::atomic::Ordering::SeqCst) < TASKS {
        tokio::task::yield_now().await;
    }
    tokio::task::yield_now().await;
    drop(first);
    for _ in 0..TASKS {
        tokio::time::timeout(Duration::from_secs(30), done_rx.recv())
            .await
            .expect("every task gets the lock")
            .unwrap();
    }
    let last_released = Instant::now();
    let in_line = queue(&mut raw, "budget").await;
    let mut basic = tokio::time::timeout(Duration::from_secs(40), basic_waits)
        .await
        .expect("the BasicLock gets the lock within the test's bound")
        .unwrap()
        .expect("acquired");
    let took = last_released.elapsed();
    assert!(
        took < LEASE / 4,
        "the BasicLock waited {took:?} after the last Lock task (queue then: {in_line:?})"
    );
    basic.release().await.unwrap();
}

/// Shutdown ends a waiter whose process is in line: when `shutdown` returns, the
/// process has left the queue (a program exits right after it: a leave still to run
/// then never runs, and the entry costs the others a reservation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_after_its_waiters_left_the_queue_multi_thread() {
    shutdown_returns_after_its_waiters_left_the_queue().await;
}

#[tokio::test]
async fn shutdown_returns_after_its_waiters_left_the_queue_current_thread() {
    shutdown_returns_after_its_waiters_left_the_queue().await;
}

async fn shutdown_returns_after_its_waiters_left_the_queue() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(server.url()).await.unwrap();
    let _guard = holder.new_lock("bye").lock().await.unwrap();
    let waiting = tokio::spawn({
        let lock = waiter.new_lock("bye");
        async move { lock.lock().await.map(drop) }
    });
    support::wait_until(Duration::from_secs(10), "the waiter queued", || {
        let mut raw = raw.clone();
        async move { queue(&mut raw, "bye").await.len() == 1 }
    })
    .await;
    waiter.shutdown().await.unwrap();
    let left_behind = queue(&mut raw, "bye").await;
    assert!(matches!(waiting.await.unwrap(), Err(RdLockError::ShutDown)));
    assert!(
        left_behind.is_empty(),
        "still in line after shutdown: {left_behind:?}"
    );
}

/// A waiter aborted while its first attempt is on its way (the connection holds it
/// up): the attempt reaches the server afterwards and queues the process, and the
/// waiter, gone, must still take it out of line, or its entry stays for the holder's
/// lease and costs the next release a reservation.
#[tokio::test]
async fn a_waiter_aborted_during_its_first_attempt_leaves_no_entry() {
    use std::sync::atomic::Ordering;
    use support::proxy::{FaultProxy, Mode};
    let server = RedisServer::start();
    let raw = server.conn().await;
    let proxy = FaultProxy::to_port(server.port()).await;
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(proxy.url()).await.unwrap();
    let _guard = holder
        .new_lock("aborted")
        .with_lease(Duration::from_secs(30))
        .lock()
        .await
        .unwrap();
    // Scripts loaded, connection up: the next attempt is one EVALSHA.
    assert!(waiter.new_lock("aborted").try_lock().await.is_err());
    proxy.set(Mode::Hold);
    let before = proxy.handle().stats().bytes_up.load(Ordering::SeqCst);
    let waiting = tokio::spawn({
        let lock = waiter.new_lock("aborted");
        async move { lock.lock().await.map(drop) }
    });
    support::wait_until(Duration::from_secs(10), "the attempt was sent", || {
        let sent = proxy.handle().stats().bytes_up.load(Ordering::SeqCst) > before;
        async move { sent }
    })
    .await;
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    proxy.set(Mode::Pass);
    // The attempt ran after the abort, and queued the process.
    support::wait_until(Duration::from_secs(10), "the attempt ran", || {
        let mut raw = raw.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut raw)
                .await
                .unwrap();
            info.contains("cmdstat_rpush:")
        }
    })
    .await;
    support::wait_until(
        Duration::from_secs(10),
        "the aborted waiter left no entry",
        || {
            let mut raw = raw.clone();
            async move { queue(&mut raw, "aborted").await.is_empty() }
        },
    )
    .await;
}
