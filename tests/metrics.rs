//! The metrics (feature `metrics`), read back with `metrics-util`'s debugging recorder
//! after scripted scenarios. The recorder is global to this test binary: each test
//! gives its locks its own metrics name (label `lock`) and reads only those.
#![cfg(feature = "metrics")]

mod support;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use rdlock::{LossCause, RdLockConnectionManager, RdLockError};
use support::proxy::{FaultProxy, Mode};
use support::{get, wait_until, RedisServer};

/// Everything recorded so far, by (name, sorted labels). The debugging recorder's
/// snapshots drain what they read (counters and gauges too), so every read is added
/// up here: gauges only move by increments and decrements, so their sum is their value.
#[derive(Default)]
struct Recorded {
    counters: HashMap<Id, u64>,
    gauges: HashMap<Id, f64>,
    histograms: HashMap<Id, Vec<f64>>,
}

/// A metric's name and its labels, sorted.
type Id = (String, Vec<(String, String)>);

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this test binary");
        snapshotter
    })
}

fn recorded() -> std::sync::MutexGuard<'static, Recorded> {
    static RECORDED: OnceLock<Mutex<Recorded>> = OnceLock::new();
    let mut all = RECORDED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let mut labels: Vec<(String, String)> = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        let id = (key.key().name().to_owned(), labels);
        match (key.kind(), value) {
            (MetricKind::Counter, DebugValue::Counter(n)) => {
                *all.counters.entry(id).or_default() += n
            }
            (MetricKind::Gauge, DebugValue::Gauge(g)) => *all.gauges.entry(id).or_default() += g.0,
            (MetricKind::Histogram, DebugValue::Histogram(xs)) => all
                .histograms
                .entry(id)
                .or_default()
                .extend(xs.into_iter().map(|x| x.0)),
            _ => {}
        }
    }
    all
}

fn labels(lock: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.push(("lock".to_owned(), lock.to_owned()));
    labels.sort();
    labels
}

fn counter(name: &str, lock: &str, extra: &[(&str, &str)]) -> u64 {
    let key = (name.to_owned(), labels(lock, extra));
    recorded().counters.get(&key).copied().unwrap_or(0)
}

fn gauge(name: &str, lock: &str) -> f64 {
    let key = (name.to_owned(), labels(lock, &[]));
    recorded().gauges.get(&key).copied().unwrap_or(0.0)
}

fn histogram(name: &str, lock: &str, extra: &[(&str, &str)]) -> Vec<f64> {
    let key = (name.to_owned(), labels(lock, extra));
    recorded().histograms.get(&key).cloned().unwrap_or_default()
}

fn waits(lock: &str, outcome: &str) -> Vec<f64> {
    histogram("rdlock_acquire_wait_seconds", lock, &[("outcome", outcome)])
}

fn lost(lock: &str, cause: LossCause) -> u64 {
    counter(
        "rdlock_leases_lost_total",
        lock,
        &[("cause", cause.as_str())],
    )
}

/// Both gauges of `lock` are back to zero, and no loss other than `expected` was
/// counted.
fn assert_settled(lock: &str, expected: Option<LossCause>) {
    assert_eq!(
        gauge("rdlock_waiting_tasks", lock),
        0.0,
        "{lock}: waiting tasks"
    );
    assert_eq!(
        gauge("rdlock_held_guards", lock),
        0.0,
        "{lock}: held guards"
    );
    for cause in [
        LossCause::TakenOver,
        LossCause::Expired,
        LossCause::Unreachable,
        LossCause::MaxHold,
    ] {
        let want = u64::from(Some(cause) == expected);
        assert_eq!(lost(lock, cause), want, "{lock}: losses by {cause:?}");
    }
}

async fn manager(server: &RedisServer) -> RdLockConnectionManager {
    snapshotter();
    RdLockConnectionManager::new(server.url()).await.unwrap()
}

/// A wait that times out, then an acquisition: their waits, the waiting and held
/// gauges while they last, and the hold once released.
#[tokio::test]
async fn a_wait_that_times_out_and_an_acquisition() {
    const NAME: &str = "wait-timeout";
    let server = RedisServer::start();
    let manager = manager(&server).await;
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("m-wait").with_metrics_name(NAME);
    let holder = other
        .new_lock("m-wait")
        .with_metrics_name(NAME)
        .lock()
        .await
        .unwrap();
    assert_eq!(waits(NAME, "acquired").len(), 1);
    assert_eq!(gauge("rdlock_held_guards", NAME), 1.0);

    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.lock_timeout(Duration::from_millis(500)).await })
    };
    wait_until(Duration::from_secs(5), "one task waiting", || async {
        gauge("rdlock_waiting_tasks", NAME) == 1.0
    })
    .await;
    let err = waiter.await.unwrap().unwrap_err();
    assert_eq!(err, RdLockError::TimeoutReached);
    let timed_out = waits(NAME, "timeout");
    assert_eq!(timed_out.len(), 1, "{timed_out:?}");
    assert!(timed_out[0] >= 0.5, "waited {timed_out:?} s");
    assert_eq!(gauge("rdlock_waiting_tasks", NAME), 0.0);

    // try_lock while held: unavailable.
    assert!(lock.try_lock().await.unwrap_err().is_unavailable());
    assert_eq!(waits(NAME, "unavailable").len(), 1);

    let started = Instant::now();
    holder.release().await.unwrap();
    let hold = histogram("rdlock_hold_seconds", NAME, &[]);
    assert_eq!(hold.len(), 1, "{hold:?}");
    let guard = lock.lock().await.unwrap();
    assert_eq!(waits(NAME, "acquired").len(), 2);
    assert_eq!(gauge("rdlock_held_guards", NAME), 1.0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    guard.release().await.unwrap();
    let hold = histogram("rdlock_hold_seconds", NAME, &[]);
    assert_eq!(hold.len(), 2, "{hold:?}");
    assert!(
        hold[1] >= 0.05 && hold[1] <= started.elapsed().as_secs_f64(),
        "{hold:?}"
    );
    assert!(waits(NAME, "error").is_empty() && waits(NAME, "cancelled").is_empty());
    assert_settled(NAME, None);
}

/// A `lock()` future dropped while it waits: outcome `cancelled`, the gauge back to 0.
/// An acquisition refused for bad input: outcome `error`.
#[tokio::test]
async fn a_cancelled_wait_and_an_error() {
    const NAME: &str = "cancelled";
    let server = RedisServer::start();
    let manager = manager(&server).await;
    let lock = manager.new_lock("m-cancel").with_metrics_name(NAME);
    let holder = lock.lock().await.unwrap();
    let wait = tokio::time::timeout(Duration::from_millis(300), lock.lock()).await;
    assert!(wait.is_err(), "the lock is held: the wait was cut short");
    assert_eq!(waits(NAME, "cancelled").len(), 1);
    assert_eq!(gauge("rdlock_waiting_tasks", NAME), 0.0);
    drop(holder);

    let bad = manager
        .new_lock("m-cancel")
        .with_metrics_name(NAME)
        .with_lease(Duration::ZERO);
    assert!(matches!(
        bad.lock().await,
        Err(RdLockError::InvalidLease { .. })
    ));
    assert_eq!(waits(NAME, "error").len(), 1);
    wait_until(
        Duration::from_secs(5),
        "the dropped guard released",
        || async { manager.pending_tasks() == 0 },
    )
    .await;
    assert_settled(NAME, None);
}

/// The key deleted and taken by another owner: `taken_over`, a failed renewal, and
/// the guard no longer counted as held (before it is dropped).
#[tokio::test]
async fn a_loss_by_takeover() {
    const NAME: &str = "taken-over";
    let server = RedisServer::start();
    let manager = manager(&server).await;
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = manager
        .new_lock("m-takeover")
        .with_lease(Duration::from_millis(600))
        .with_metrics_name(NAME)
        .lock()
        .await
        .unwrap();
    assert!(other.new_lock("m-takeover").force_release().await.unwrap());
    let _thief = other.new_lock("m-takeover").lock().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost within 5 s");
    assert_eq!(lost(NAME, LossCause::TakenOver), 1);
    assert!(counter("rdlock_renewal_failures_total", NAME, &[]) >= 1);
    assert_eq!(gauge("rdlock_held_guards", NAME), 0.0);
    assert_eq!(histogram("rdlock_hold_seconds", NAME, &[]).len(), 1);
    // Releasing the lost guard counts nothing more.
    assert_eq!(guard.release().await, Err(RdLockError::LockNotAcquired));
    assert_eq!(histogram("rdlock_hold_seconds", NAME, &[]).len(), 1);
    assert_settled(NAME, Some(LossCause::TakenOver));
}

/// A holder cut off from Redis (a blackhole): renewals fail until the deadline,
/// `unreachable`.
#[tokio::test]
async fn a_loss_by_unreachable_redis() {
    const NAME: &str = "unreachable";
    let server = RedisServer::start();
    let proxy = FaultProxy::to_port(server.port()).await;
    snapshotter();
    let manager = RdLockConnectionManager::builder()
        .response_timeout(Duration::from_millis(200))
        .connect(proxy.url())
        .await
        .unwrap();
    let guard = manager
        .new_lock("m-unreachable")
        .with_lease(Duration::from_secs(1))
        .with_metrics_name(NAME)
        .lock()
        .await
        .unwrap();
    proxy.set(Mode::Blackhole);
    tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost within 5 s");
    assert!(counter("rdlock_renewal_failures_total", NAME, &[]) >= 1);
    assert_settled(NAME, Some(LossCause::Unreachable));
    proxy.set(Mode::Pass);
}

/// The executor blocked past the lease (no renewal could run, none failed): the
/// deadline passes, `expired`.
#[tokio::test]
async fn a_loss_by_expiry() {
    const NAME: &str = "expired";
    let server = RedisServer::start();
    let manager = manager(&server).await;
    let guard = manager
        .new_lock("m-expired")
        .with_lease(Duration::from_millis(300))
        .with_metrics_name(NAME)
        .lock()
        .await
        .unwrap();
    // This test's runtime has one thread: blocking it starves the watchdog.
    std::thread::sleep(Duration::from_millis(400));
    assert!(!guard.is_held());
    assert_eq!(guard.loss_cause(), Some(LossCause::Expired));
    assert_settled(NAME, Some(LossCause::Expired));
}

/// The maximum hold: `max_hold`; renewals were counted until then.
#[tokio::test]
async fn a_loss_by_max_hold_after_counted_renewals() {
    const NAME: &str = "max-hold";
    let server = RedisServer::start();
    let manager = manager(&server).await;
    let lock = manager
        .new_lock("m-max-hold")
        .with_lease(Duration::from_millis(300))
        .with_max_hold(Duration::from_millis(700))
        .with_metrics_name(NAME);
    let outcome = lock.run(std::future::pending::<()>()).await;
    assert_eq!(outcome, Err(RdLockError::MaxHoldReached));
    // Renewals every 100 ms until 700 ms: a busy machine may run fewer, never none.
    let renewals = counter("rdlock_renewals_total", NAME, &[]);
    let failures = counter("rdlock_renewal_failures_total", NAME, &[]);
    assert!(renewals >= 2, "{renewals} renewals");
    assert_eq!(failures, 0);
    let timed = histogram("rdlock_renewal_seconds", NAME, &[]);
    assert_eq!(timed.len() as u64, renewals, "one duration per renewal");
    assert!(timed.iter().all(|&s| (0.0..1.0).contains(&s)), "{timed:?}");
    assert_settled(NAME, Some(LossCause::MaxHold));
}

/// A guard dropped on a thread without a runtime: its release cannot run, the lease
/// is left to expire, and `rdlock_release_fallbacks_total` counts it.
#[tokio::test]
async fn a_guard_dropped_outside_a_runtime() {
    const NAME: &str = "fallback";
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = manager(&server).await;
    let lock = manager
        .new_lock("m-fallback")
        .with_lease(Duration::from_secs(5))
        .with_metrics_name(NAME);
    let guard = lock.lock().await.unwrap();
    std::thread::spawn(move || drop(guard)).join().unwrap();
    assert_eq!(counter("rdlock_release_fallbacks_total", NAME, &[]), 1);
    assert!(
        get(&mut raw, lock.key()).await.is_some(),
        "left to its lease"
    );
    assert_eq!(histogram("rdlock_hold_seconds", NAME, &[]).len(), 1);
    assert_settled(NAME, None);
    // A guard dropped on the runtime is released: no fallback.
    let _ = lock.force_release().await.unwrap();
    drop(lock.lock().await.unwrap());
    assert_eq!(counter("rdlock_release_fallbacks_total", NAME, &[]), 1);
}

/// Without a metrics name, metrics carry no `lock` label.
#[tokio::test]
async fn without_a_name_there_is_no_lock_label() {
    let server = RedisServer::start();
    let manager = manager(&server).await;
    let lock = manager.new_lock("m-unnamed");
    assert_eq!(lock.metrics_name(), None);
    drop(lock.lock().await.unwrap());
    let all = recorded();
    let unlabelled = (
        "rdlock_acquire_wait_seconds".to_owned(),
        vec![("outcome".to_owned(), "acquired".to_owned())],
    );
    assert!(
        all.histograms
            .get(&unlabelled)
            .is_some_and(|v| !v.is_empty()),
        "an acquisition without a name is recorded without a lock label"
    );
}

/// A guard still held by a task when its runtime shuts down (the end of a
/// `#[tokio::main]` with a task still holding a lock): the task is dropped inside the
/// runtime's context, so a runtime handle is found, but the runtime spawns nothing any
/// more, so the release cannot run. It is left to its lease, and counted as a fallback.
#[tokio::test]
async fn a_guard_dropped_by_a_runtime_shutting_down() {
    const NAME: &str = "fallback-shutdown";
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    snapshotter();
    let url = server.url();
    let key = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let key = rt.block_on(async move {
            let manager = RdLockConnectionManager::new(url).await.unwrap();
            let lock = manager
                .new_lock("m-fallback-shutdown")
                .with_lease(Duration::from_secs(30))
                .with_metrics_name(NAME);
            let guard = lock.lock().await.unwrap();
            let (started, running) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let _guard = guard;
                let _ = started.send(());
                std::future::pending::<()>().await;
            });
            running.await.unwrap();
            lock.key().to_owned()
        });
        // Drops the task, and its guard, while the runtime shuts down.
        drop(rt);
        key
    })
    .join()
    .unwrap();
    assert!(get(&mut raw, &key).await.is_some(), "left to its lease");
    assert_eq!(
        counter("rdlock_release_fallbacks_total", NAME, &[]),
        1,
        "the release that could not run is counted"
    );
    assert_settled(NAME, None);
}

/// A job that panics in `run`, then a manager shut down with a guard alive and a task
/// queued behind it: both gauges come back to zero, each hold is recorded once, the
/// shutdown is not counted as a loss, and the queued wait ends with outcome `error`.
#[tokio::test]
async fn a_panic_in_run_and_a_shutdown_with_a_guard_alive() {
    const NAME: &str = "shutdown-alive";
    let server = RedisServer::start();
    let manager = manager(&server).await;
    let lock = manager.new_lock("m-shutdown-alive").with_metrics_name(NAME);

    let panicking = lock.clone();
    let panicked =
        tokio::spawn(async move { panicking.run(async { panic!("the job panics") }).await }).await;
    assert!(panicked.is_err_and(|e| e.is_panic()));
    assert_eq!(histogram("rdlock_hold_seconds", NAME, &[]).len(), 1);
    assert_eq!(gauge("rdlock_held_guards", NAME), 0.0);

    let guard = lock.lock().await.unwrap();
    let queued = tokio::spawn({
        let lock = lock.clone();
        async move { lock.lock().await.map(drop) }
    });
    wait_until(Duration::from_secs(10), "the second task waits", || async {
        gauge("rdlock_waiting_tasks", NAME) == 1.0
    })
    .await;
    assert_eq!(gauge("rdlock_held_guards", NAME), 1.0);
    manager.shutdown().await.unwrap();
    assert!(matches!(queued.await.unwrap(), Err(RdLockError::ShutDown)));
    assert_eq!(
        gauge("rdlock_held_guards", NAME),
        0.0,
        "ended by the shutdown"
    );
    drop(guard);
    assert_eq!(histogram("rdlock_hold_seconds", NAME, &[]).len(), 2);
    assert_eq!(waits(NAME, "error").len(), 1);
    assert_eq!(waits(NAME, "acquired").len(), 2);
    assert_settled(NAME, None);
}
