//! The manager's response timeout (`ManagerBuilder::response_timeout`): validated, checked
//! against leases, and what keeps a lease alive over a link slower than the default.

mod support;

use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::proxy::{FaultProxy, Mode};
use support::{get, wait_until, RedisServer};

/// Absurd values are refused by `connect` before it opens anything: a closed port
/// would otherwise give `Unreachable`.
#[tokio::test]
async fn out_of_range_timeouts_are_refused_before_connecting() {
    for timeout in [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_micros(999),
        rdlock::MAX_LEASE,
        Duration::MAX,
    ] {
        let started = Instant::now();
        let outcome = RdLockConnectionManager::builder()
            .response_timeout(timeout)
            .connect("redis://127.0.0.1:1/")
            .await;
        let err = outcome.expect_err("refused");
        assert!(
            matches!(
                err,
                RdLockError::InvalidConfig {
                    option: "response_timeout",
                    ..
                }
            ),
            "{timeout:?}: {err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "no connection attempted"
        );
        println!("{timeout:?}: {err}");
    }
}

/// A set timeout says replies may take that long: a lease that cannot fit a renewal
/// of that length is refused by every acquire method; `BasicLock` (no watchdog) is not.
#[tokio::test]
async fn leases_too_short_for_a_set_timeout_are_refused() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::builder()
        .response_timeout(Duration::from_secs(5))
        .connect(server.url())
        .await
        .unwrap();
    assert_eq!(manager.response_timeout(), Duration::from_secs(5));
    let short = manager
        .new_lock("short")
        .with_lease(Duration::from_millis(7_600));
    for outcome in [
        short.try_lock().await.map(drop),
        short.lock().await.map(drop),
        short.lock_timeout(Duration::from_secs(1)).await.map(drop),
        short.run(async {}).await,
    ] {
        let err = outcome.expect_err("refused");
        assert!(
            matches!(err, RdLockError::InvalidLease { lease, .. } if lease == Duration::from_millis(7_600)),
            "{err:?}"
        );
        println!("{err}");
    }
    let guard = manager
        .new_lock("long-enough")
        .with_lease(Duration::from_millis(7_700))
        .try_lock()
        .await
        .unwrap();
    guard.release().await.unwrap();
    let mut basic = manager.new_basic_lock("basic", 1);
    basic.try_lock().await.unwrap();
    basic.release().await.unwrap();

    // The default (2 s, not set) accepts every lease, as before.
    let default = RdLockConnectionManager::new(server.url()).await.unwrap();
    assert_eq!(default.response_timeout(), rdlock::DEFAULT_RESPONSE_TIMEOUT);
    let guard = default
        .new_lock("tiny")
        .with_lease(rdlock::MIN_LEASE * 10)
        .try_lock()
        .await
        .unwrap();
    drop(guard);
}

/// Issue 18.3: round trips of 2.2 s (1.1 s each way). With the default 2 s timeout every
/// command times out, so no lock can be taken (or renewed); with the timeout raised to
/// 3.5 s, a lock with a 6 s lease is taken and kept by its renewals past its first lease,
/// and the subscriber's PINGs do not time out either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_timeout_keeps_a_lease_over_a_slow_link() {
    let server = RedisServer::start();
    let proxy = FaultProxy::to_port(server.port()).await;
    let default = RdLockConnectionManager::new(proxy.url()).await.unwrap();
    let patient = RdLockConnectionManager::builder()
        .response_timeout(Duration::from_millis(3_500))
        .connect(proxy.url())
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "both subscribers connected",
        || {
            let n = (
                default.subscriber_connections(),
                patient.subscriber_connections(),
            );
            async move { n == (1, 1) }
        },
    )
    .await;
    // Load the scripts on the server first (a NOSCRIPT reply would add two round
    // trips): a 30 ms lease is renewed at once, then released.
    let warm = default
        .new_lock("warm-up")
        .with_lease(Duration::from_millis(30))
        .lock()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(warm.is_held(), "renewed");
    warm.release().await.unwrap();

    proxy.set(Mode::Latency(Duration::from_millis(1_100)));
    let on_default = default.new_lock("slow-link-default");
    let on_patient = patient
        .new_lock("slow-link")
        .with_lease(Duration::from_secs(6));
    let (fast, slow) = tokio::join!(on_default.try_lock(), on_patient.try_lock());
    let err = fast.expect_err("the default 2 s timeout is shorter than a round trip");
    assert!(err.is_connection_error(), "{err:?}");
    let guard = slow.expect("a 3.5 s timeout fits a 2.2 s round trip");
    let acquired = Instant::now();
    // Past the first lease: only renewals (sent at 2 s, answered at ~4.2 s) keep it.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(guard.is_held(), "renewed over the slow link");
    proxy.set(Mode::Pass);
    let mut raw = server.conn().await;
    assert!(get(&mut raw, guard.lock().key()).await.is_some());
    println!(
        "held {:?} after acquiring over a 2.2 s round trip; subscriber connections {}",
        acquired.elapsed(),
        patient.subscriber_connections()
    );
    assert_eq!(
        patient.subscriber_connections(),
        1,
        "the subscriber's PING fits the raised timeout"
    );
    guard.release().await.unwrap();
}
