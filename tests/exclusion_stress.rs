//! Mutual exclusion under contention: several managers and tasks, hold times across
//! the lease boundary, and a lost-update check on a counter only safe under the lock.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdlock::RdLockConnectionManager;
use support::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_two_holders_overlap() {
    let server = RedisServer::start();
    let seed = support::seed();
    println!("seed {seed} (replay with RDLOCK_SEED={seed})");
    let run_for = Duration::from_secs(4);
    let inside = Arc::new(AtomicBool::new(false));
    let acquisitions = Arc::new(AtomicU64::new(0));
    let last_fence = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for m in 0..3u64 {
        let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
        for t in 0..4u64 {
            // A 1 s lease; some critical sections last 1.5 leases, so the watchdog must
            // keep the lease alive under contention. (A shorter lease leaves a busy
            // machine too little room: a renewal delayed by two thirds of it loses the
            // lease, and the exclusion checked below is then no longer promised.)
            let lock = manager
                .new_lock("stress")
                .with_lease(Duration::from_secs(1));
            let mut counter = server.conn().await;
            let inside = inside.clone();
            let acquisitions = acquisitions.clone();
            let last_fence = last_fence.clone();
            let mut rng = seed ^ (m * 4 + t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                while started.elapsed() < run_for {
                    let guard = lock.lock().await.unwrap();
                    assert!(
                        !inside.swap(true, Ordering::SeqCst),
                        "two holders at once (seed {seed})"
                    );
                    let fence = guard.fencing_token();
                    let previous = last_fence.swap(fence, Ordering::SeqCst);
                    assert!(fence > previous, "fence {fence} after {previous}");
                    // Read-modify-write that loses updates without exclusion.
                    let value: u64 = redis::cmd("GET")
                        .arg("counter")
                        .query_async::<Option<u64>>(&mut counter)
                        .await
                        .unwrap()
                        .unwrap_or(0);
                    rng = support::xorshift(rng);
                    let hold = if rng.is_multiple_of(20) {
                        1500
                    } else {
                        rng % 3
                    };
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    let _: () = redis::cmd("SET")
                        .arg("counter")
                        .arg(value + 1)
                        .query_async(&mut counter)
                        .await
                        .unwrap();
                    assert!(guard.is_held(), "lease lost during a {hold} ms hold");
                    inside.store(false, Ordering::SeqCst);
                    acquisitions.fetch_add(1, Ordering::SeqCst);
                    guard.release().await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = acquisitions.load(Ordering::SeqCst);
    let mut raw = server.conn().await;
    let counter: u64 = redis::cmd("GET")
        .arg("counter")
        .query_async(&mut raw)
        .await
        .unwrap();
    println!("{total} acquisitions by 12 tasks in 3 managers, 0 overlaps, 0 lost updates");
    assert!(
        total >= 12,
        "every task got the lock at least once: {total}"
    );
    assert_eq!(counter, total, "lost updates");
}
