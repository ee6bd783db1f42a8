//! Cancelling `lock()` futures, at any await point, never leaves the key held.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rdlock::RdLockConnectionManager;
use support::{assert_quiescent, get, wait_until, RedisServer};

/// The acquire reaches Redis, but the future is dropped before the reply: the SET
/// happens after the caller gave up. The attempt is undone by its token.
#[tokio::test]
async fn cancelled_after_the_set_reached_redis_is_undone() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("ambiguous");
    // Load the scripts first: on a fresh server the paused EVALSHA would only get
    // NOSCRIPT, and the cancelled future would never send the EVAL that sets the key.
    lock.try_lock().await.unwrap().release().await.unwrap();
    // Hold writes (EVALSHA included) for 1.5 s: the acquire is queued on the server.
    // The pause is far longer than the 100 ms the caller waits, so that a busy
    // machine's delays cannot let the reply arrive before the caller gives up, and
    // shorter than the 2 s response timeout, after which the connection (and the
    // commands queued on it) would be dropped.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("WRITE")
        .query_async(&mut raw)
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_millis(100), lock.lock()).await;
    assert!(
        outcome.is_err(),
        "the future was cancelled while the server paused"
    );
    // Once the pause ends, the SET runs (the fence counter goes from 1 to 2), then the
    // undo: waited for, not slept for.
    wait_until(Duration::from_secs(15), "the paused acquire ran", || {
        let mut raw = raw.clone();
        async move { get(&mut raw, "rdlock:{ambiguous}:fence").await.as_deref() == Some("2") }
    })
    .await;
    assert_quiescent(&server, &manager, lock.key()).await;
    // And the lock is free for anyone.
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    assert!(other.new_lock("ambiguous").try_lock().await.is_ok());
}

/// Many tasks contend and are cancelled at random points (while waiting, mid-attempt,
/// just after acquiring): afterwards nothing is held and nothing is left running.
#[tokio::test]
async fn heavy_cancellation_leaves_nothing_held() {
    let server = RedisServer::start();
    let managers = [
        RdLockConnectionManager::new(server.url()).await.unwrap(),
        RdLockConnectionManager::new(server.url()).await.unwrap(),
    ];
    let seed = support::seed();
    println!("seed {seed} (replay with RDLOCK_SEED={seed})");
    let mut tasks = Vec::new();
    for t in 0..24u64 {
        let lock = Arc::new(managers[(t % 2) as usize].new_lock("cancel-storm"));
        let mut rng = seed ^ (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        tasks.push(tokio::spawn(async move {
            let mut acquired = 0;
            for _ in 0..30 {
                rng = support::xorshift(rng);
                let budget = Duration::from_micros(rng % 3000);
                if let Ok(Ok(guard)) = tokio::time::timeout(budget, lock.lock()).await {
                    acquired += 1;
                    rng = support::xorshift(rng);
                    if rng.is_multiple_of(2) {
                        drop(guard);
                    } else {
                        let _ = guard.release().await;
                    }
                }
            }
            acquired
        }));
    }
    let mut acquired = 0;
    for t in tasks {
        acquired += t.await.unwrap();
    }
    println!("{acquired} acquisitions among 720 cancellable attempts");
    for manager in &managers {
        assert_quiescent(&server, manager, "rdlock:{cancel-storm}:lock").await;
    }
    // The subscriptions were given up too.
    let raw = server.conn().await;
    wait_until(
        Duration::from_secs(5),
        "no subscriber is left on the channel",
        || {
            let mut raw = raw.clone();
            async move {
                let n: Vec<(String, i64)> = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg("rdlock:{cancel-storm}:release")
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                n.first().is_some_and(|(_, count)| *count == 0)
            }
        },
    )
    .await;
}
