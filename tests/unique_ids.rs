//! Many distinct lock ids (`job-<n>`, each used once, as a queue consumer does) leave
//! nothing behind in the manager — its tables are pruned, no task or subscription
//! outlives its waiter — and nothing on the server but one fence counter per id.
//!
//! Scaled for CI from the 200,000-id run of issue 18 (RSS flat at 8.6 → 9.3 MB).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdlock::RdLockConnectionManager;
use support::{wait_until, RedisServer};

const IDS: usize = 6000;
const CONCURRENCY: usize = 50;
/// A waiter woken by the release gets the lock within this long; one that missed it
/// would wait out the 20 s lease.
const PROMPT: Duration = Duration::from_secs(3);

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_ids_leave_no_tables_tasks_or_subscriptions_behind() {
    let server = RedisServer::start();
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(server.url()).await.unwrap();
    let rss_before = rss_kib();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (holder, waiter, next) = (holder.clone(), waiter.clone(), next.clone());
            tokio::spawn(async move {
                let mut worst = Duration::ZERO;
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= IDS {
                        return worst;
                    }
                    let id = format!("job-{n}");
                    if n % 2 == 0 {
                        // Contended: the waiter subscribes, then is woken by the release.
                        let guard = holder
                            .new_lock(&id)
                            .with_lease(Duration::from_secs(20))
                            .lock()
                            .await
                            .unwrap();
                        let lock = waiter.new_lock(&id);
                        let task = tokio::spawn(async move { lock.lock().await });
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let released = Instant::now();
                        guard.release().await.unwrap();
                        let got = tokio::time::timeout(Duration::from_secs(30), task)
                            .await
                            .expect("the waiter gets the lock")
                            .unwrap()
                            .unwrap();
                        worst = worst.max(released.elapsed());
                        got.release().await.unwrap();
                    } else {
                        // Uncontended: the fast path, no subscription.
                        let guard = waiter.new_lock(&id).lock().await.unwrap();
                        guard.release().await.unwrap();
                    }
                }
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    for worker in workers {
        worst = worst.max(worker.await.unwrap());
    }
    let took = started.elapsed();

    wait_until(
        Duration::from_secs(10),
        "the waiting manager's tables are pruned",
        || {
            let footprint = waiter.footprint();
            async move {
                footprint.watched_locks == 0
                    && footprint.subscribed_channels == 0
                    && footprint.held_guards == 0
                    && footprint.pending_tasks == 0
            }
        },
    )
    .await;
    let mut admin = server.conn().await;
    wait_until(
        Duration::from_secs(10),
        "no subscription is left on the server",
        || {
            let mut admin = admin.clone();
            async move {
                let channels: Vec<String> = redis::cmd("PUBSUB")
                    .arg("CHANNELS")
                    .arg("rdlock:*")
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                channels.is_empty()
            }
        },
    )
    .await;
    let footprints = [holder.footprint(), waiter.footprint()];
    println!(
        "{IDS} ids in {took:?}, slowest wake-up {worst:?}; RSS {rss_before:?} → {:?} KiB; \
         footprints {footprints:?}",
        rss_kib()
    );
    assert!(
        worst < PROMPT,
        "a waiter took {worst:?} after its release (missed wake-up?)"
    );
    for footprint in footprints {
        assert_eq!(footprint.watched_locks, 0, "{footprint:?}");
        assert_eq!(footprint.subscribed_channels, 0, "{footprint:?}");
        assert_eq!(footprint.held_guards, 0, "{footprint:?}");
        // Dead queues are pruned as the table grows: tens, not thousands.
        assert!(footprint.local_queues <= 256, "{footprint:?}");
    }
    let numsub: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("rdlock:{job-0}:release")
        .arg(format!("rdlock:{{job-{}}}:release", IDS - 2))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(numsub.iter().all(|(_, n)| *n == 0), "{numsub:?}");
    // What stays on the server: one fence counter per id, nothing else.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(keys.len(), IDS, "one key per id");
    assert!(keys.iter().all(|k| k.ends_with(":fence")), "only fences");
}
