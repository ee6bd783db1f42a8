//! The trimmed uncontended cycle: what the scripts run per acquire + release, that a
//! release publishes only when someone waits (a process in the queue,
//! `rdlock:{<id>}:queue`, or the waiters marker of 1.x-compatible waiters,
//! `rdlock:{<id>}:waiters`), that no waiter loses its wake-up for it, and that holders
//! written by today's scripts and by rdlock 2.0's (`tests/support/v2_0/`, a mixed fleet
//! during a rolling deploy) read and release each other.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, StreamExt};
use rdlock::RdLockConnectionManager;
use support::{get, reset_stats, v2_0, wait_until, RedisServer};

/// `INFO commandstats` as `name -> calls` (commands run inside scripts included),
/// without the measurement's own `CONFIG RESETSTAT` and `INFO`.
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| line.strip_prefix("cmdstat_"))
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let calls = rest.split_once("calls=")?.1.split(',').next()?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .filter(|(name, _)| !name.starts_with("config") && name != "info")
        .collect()
}

fn calls(expected: &[(&str, u64)]) -> BTreeMap<String, u64> {
    expected
        .iter()
        .map(|(n, c)| ((*n).to_owned(), *c))
        .collect()
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

/// A subscriber to `channel`, confirmed before this returns.
async fn subscribe(server: &RedisServer, channel: &str) -> redis::aio::PubSub {
    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(channel).await.unwrap();
    pubsub
}

#[tokio::test]
async fn an_uncontended_cycle_runs_six_commands_in_two_scripts_and_publishes_nothing() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("cycle");
    // Loads the scripts (SCRIPT LOAD after the first NOSCRIPT), outside the count.
    lock.lock().await.unwrap().release().await.unwrap();
    let mut raw = server.conn().await;
    reset_stats(&mut raw).await;
    const CYCLES: u64 = 20;
    for _ in 0..CYCLES {
        lock.lock().await.unwrap().release().await.unwrap();
    }
    // acquire.lua: SET NX (won), INCR (the fence), SET (the owner record, with the
    // client's clock); release.lua: GET (the token check), LPOP (nobody queued), DEL
    // (lock, owner record and marker at once; 2 deleted: nobody waits, so no PUBLISH).
    // rdlock 2.0 ran 10: PTTL, SET, INCR, TIME, SET; GET, DEL, PUBLISH.
    assert_eq!(
        command_calls(&mut raw).await,
        calls(&[
            ("evalsha", 2 * CYCLES),
            ("set", 2 * CYCLES),
            ("incr", CYCLES),
            ("get", CYCLES),
            ("lpop", CYCLES),
            ("del", CYCLES),
        ])
    );
    assert_eq!(get(&mut raw, "rdlock:{cycle}:waiters").await, None);
}

#[tokio::test]
async fn a_waiter_queues_its_process_and_is_woken_by_the_release() {
    let server = RedisServer::start();
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let guard = holder
        .new_lock("wake")
        .with_lease(lease)
        .lock()
        .await
        .unwrap();
    let mut raw = server.conn().await;
    let lock = waiter.new_lock("wake");
    let task = tokio::spawn(async move { lock.lock().await });
    wait_until(
        Duration::from_secs(10),
        "the waiter queued its process",
        || {
            let mut raw = raw.clone();
            async move { pttl(&mut raw, "rdlock:{wake}:queue").await > 0 }
        },
    )
    .await;
    // Never shorter than the holder's lease: the release finds it. (Both read in one
    // MULTI, at one instant of the server's clock.)
    let (lock_pttl, marker): (i64, i64) = redis::pipe()
        .atomic()
        .pttl("rdlock:{wake}:lock")
        .pttl("rdlock:{wake}:queue")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        marker >= lock_pttl && marker <= 30_000,
        "marker {marker} ms, lock {lock_pttl} ms"
    );
    reset_stats(&mut raw).await;
    guard.release().await.unwrap();
    // Woken by the message: the waiter's own timer is the holder's PTTL, ~30 s.
    let g = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("woken long before the 30 s lease ran out")
        .unwrap()
        .unwrap();
    // The turn message, and the claim's notice only if someone else were queued.
    let published = command_calls(&mut raw).await.get("publish").copied();
    assert_eq!(published, Some(1), "one message for the one release");
    g.release().await.unwrap();
}

/// The queue is written with the holder's PTTL; a holder renewed for longer than that
/// must still find it at its release: the renew script extends it with the lease. The
/// waiter here is one failed acquire script and a subscription, so nothing but the
/// renewals can keep the queue alive (a library waiter would also re-queue at each
/// retry, when the PTTL it saw runs out).
#[tokio::test]
async fn a_queue_outlives_a_hold_renewed_past_its_first_expiry() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lease = Duration::from_secs(1);
    let guard = manager
        .new_lock("renewed")
        .with_lease(lease)
        .lock()
        .await
        .unwrap();
    let mut raw = server.conn().await;
    let mut pubsub = subscribe(&server, "rdlock:{renewed}:release").await;
    let acquire = redis::Script::new(concat!(
        include_str!("../src/scripts/queue.lua"),
        include_str!("../src/scripts/acquire.lua")
    ));
    let (ok, _, _): (i64, i64, String) = acquire
        .key("rdlock:{renewed}:lock")
        .key("rdlock:{renewed}:fence")
        .key("rdlock:{renewed}:owner")
        .key("rdlock:{renewed}:queue")
        .arg("waiter-token")
        .arg(1000)
        .arg("1\nhost\n")
        .arg(1)
        .arg("waiter-process")
        .arg("0")
        .arg("rdlock:{renewed}:release")
        .invoke_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(ok, 0, "held");
    assert!(pttl(&mut raw, "rdlock:{renewed}:queue").await <= 1000);
    // Two and a half leases: the marker's first expiry is long past; renewals (every
    // 333 ms) kept lock and marker.
    tokio::time::sleep(lease * 5 / 2).await;
    assert!(guard.is_held());
    assert!(
        pttl(&mut raw, "rdlock:{renewed}:queue").await > 0,
        "the renewals extended the queue"
    );
    guard.release().await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), pubsub.on_message().next())
        .await
        .expect("the release published")
        .unwrap();
    assert_eq!(
        message.get_payload::<String>().unwrap(),
        "turn waiter-process"
    );
    // The turn is reserved for that process; it is out of the queue.
    assert_eq!(
        get(&mut raw, "rdlock:{renewed}:lock").await.as_deref(),
        Some("q:waiter-process")
    );
    assert_eq!(pttl(&mut raw, "rdlock:{renewed}:queue").await, -2);
}

/// A mixed fleet during a rolling deploy: the lock key stays a string with the token,
/// the owner record keeps its format, so rdlock 2.0's scripts and today's read, refuse
/// and release each other's holders.
#[tokio::test]
async fn holders_of_todays_scripts_and_of_2_0_scripts_interoperate() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut raw = server.conn().await;
    let lock = manager.new_lock("fleet").with_label("new build");

    // Held by today's scripts: the record reads as before, by holder() and by hand.
    let before = SystemTime::now() - Duration::from_secs(1);
    let guard = lock.try_lock().await.unwrap();
    let record = get(&mut raw, "rdlock:{fleet}:owner").await.unwrap();
    let fields: Vec<&str> = record.splitn(5, '\n').collect();
    assert_eq!(fields.len(), 5, "{record:?}");
    assert_eq!(fields[0], guard.fencing_token().to_string());
    let ms: u64 = fields[1].parse().expect("unix ms");
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    assert!(at >= before && at <= SystemTime::now() + Duration::from_secs(1));
    assert_eq!(fields[2], std::process::id().to_string());
    assert_eq!(fields[4], "new build");
    let holder = lock.holder().await.unwrap().unwrap();
    assert_eq!(holder.fencing_token, guard.fencing_token());
    assert_eq!(holder.acquired_at, at);
    // A 2.0 process's attempt is refused with the holder's PTTL (and marks nothing:
    // an old waiter waits out that PTTL, see README "Upgrading within 2.x").
    let (ok, left, _): (i64, i64, String) = v2_0::ACQUIRE
        .key("rdlock:{fleet}:lock")
        .key("rdlock:{fleet}:fence")
        .key("rdlock:{fleet}:owner")
        .arg("old-token")
        .arg(30_000)
        .arg("2\nold-host\nold build")
        .invoke_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(ok, 0);
    assert!(left > 0 && left <= 30_000);
    assert_eq!(get(&mut raw, "rdlock:{fleet}:waiters").await, None);
    guard.release().await.unwrap();

    // Today's holder, released by 2.0's script (what an old process's guard would run
    // on its own acquisition: the token check reads the same string key).
    let token = "shared-token";
    let acquire = redis::Script::new(concat!(
        include_str!("../src/scripts/queue.lua"),
        include_str!("../src/scripts/acquire.lua")
    ));
    let (ok, fence, _): (i64, u64, String) = acquire
        .key("rdlock:{fleet}:lock")
        .key("rdlock:{fleet}:fence")
        .key("rdlock:{fleet}:owner")
        .key("rdlock:{fleet}:queue")
        .arg(token)
        .arg(30_000)
        .arg("3\nhost\nlabel")
        .arg(1_700_000_000_123u64)
        .arg("")
        .arg("0")
        .arg("rdlock:{fleet}:release")
        .invoke_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(ok, 1);
    let holder = lock.holder().await.unwrap().unwrap();
    assert_eq!((holder.fencing_token, holder.pid), (fence, 3));
    let released: Option<String> = v2_0::RELEASE
        .key("rdlock:{fleet}:lock")
        .key("rdlock:{fleet}:owner")
        .arg(token)
        .arg("rdlock:{fleet}:release")
        .invoke_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(released.as_deref(), Some(token));
    assert_eq!(lock.holder().await.unwrap(), None);

    // A 2.0 holder: today's waiter is woken by its release (2.0 publishes on every
    // release), and today's scripts see its record.
    let (ok, old_fence, _): (i64, u64, String) = v2_0::ACQUIRE
        .key("rdlock:{fleet}:lock")
        .key("rdlock:{fleet}:fence")
        .key("rdlock:{fleet}:owner")
        .arg("old-token")
        .arg(30_000)
        .arg("2\nold-host\nold build")
        .invoke_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(ok, 1);
    let holder = lock.holder().await.unwrap().unwrap();
    assert_eq!(
        (holder.fencing_token, holder.pid, holder.label.as_str()),
        (old_fence, 2, "old build")
    );
    let waiter = lock.clone();
    let task = tokio::spawn(async move { waiter.lock().await });
    wait_until(Duration::from_secs(10), "the new waiter queued", || {
        let mut raw = raw.clone();
        async move { pttl(&mut raw, "rdlock:{fleet}:queue").await > 0 }
    })
    .await;
    let released: Option<String> = v2_0::RELEASE
        .key("rdlock:{fleet}:lock")
        .key("rdlock:{fleet}:owner")
        .arg("old-token")
        .arg("rdlock:{fleet}:release")
        .invoke_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(released.as_deref(), Some("old-token"));
    let g = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("woken by the 2.0 release, long before its 30 s lease")
        .unwrap()
        .unwrap();
    assert!(g.fencing_token() > old_fence);
    g.release().await.unwrap();
}

/// Acquire scripts run since the last `CONFIG RESETSTAT` (renewals too: callers stay
/// well within a holder's first renewal, a third of its lease).
async fn evalsha_calls(raw: &redis::aio::MultiplexedConnection) -> u64 {
    let mut raw = raw.clone();
    command_calls(&mut raw)
        .await
        .get("evalsha")
        .copied()
        .unwrap_or(0)
}

/// Waiters of one manager that do not line up in its local queue — the 1.x
/// `BasicLock`s (on a Redis Cluster they have no 1.x compatibility, so no wake-all) —
/// wait on one subscription. The release that deletes the marker must reach each of
/// them: a waiter it does not wake has no failed attempt left to come that would
/// re-arm the marker, so the next holder's release publishes nothing and that waiter
/// waits out the PTTL it saw (seen: ~30 s, the lease, with the lock free all along).
#[tokio::test]
async fn every_local_waiter_outside_the_queue_is_woken_by_the_release() {
    let server = RedisServer::start();
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiters = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = holder
        .new_lock("pair")
        .with_lease(Duration::from_secs(30))
        .lock()
        .await
        .unwrap();
    let mut raw = server.conn().await;
    reset_stats(&mut raw).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..2 {
        let mut basic = waiters.new_basic_lock("pair", 30).without_v1_compat();
        let tx = tx.clone();
        tokio::spawn(async move {
            basic.lock().await.unwrap();
            tx.send(basic).unwrap();
        });
    }
    // Each waiter fails twice before it waits: once before subscribing, once after
    // (the second may find the subscription in place already: then once).
    wait_until(Duration::from_secs(10), "both waiters wait", || {
        let raw = raw.clone();
        async move { evalsha_calls(&raw).await >= 3 }
    })
    .await;
    guard.release().await.unwrap();
    let mut first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a waiter woken by the holder's release")
        .unwrap();
    first.release().await.unwrap();
    let mut second = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the other waiter woken by the first's release, long before the 30 s PTTL it saw")
        .unwrap();
    second.release().await.unwrap();
}

/// Waiters of several managers: the release gives the turn to the first in line, whose
/// release gives it to the next — every waiter gets the lock long before the 30 s
/// lease any of them saw.
#[tokio::test]
async fn waiters_of_several_managers_each_get_the_lock_in_turn() {
    const WAITERS: usize = 3;
    let server = RedisServer::start();
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let guard = holder
        .new_lock("relay")
        .with_lease(lease)
        .lock()
        .await
        .unwrap();
    let mut raw = server.conn().await;
    reset_stats(&mut raw).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut managers = Vec::new();
    for _ in 0..WAITERS {
        let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
        let lock = manager.new_lock("relay").with_lease(lease);
        managers.push(manager);
        let tx = tx.clone();
        tokio::spawn(async move {
            let g = lock.lock().await.unwrap();
            // Held a moment, so that the others' woken attempts find it held.
            tokio::time::sleep(Duration::from_millis(20)).await;
            g.release().await.unwrap();
            tx.send(()).unwrap();
        });
    }
    wait_until(Duration::from_secs(10), "every waiter waits", || {
        let raw = raw.clone();
        async move { evalsha_calls(&raw).await >= 2 * WAITERS as u64 }
    })
    .await;
    guard.release().await.unwrap();
    for served in 0..WAITERS {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{served} of {WAITERS} waiters served, then a stall"))
            .unwrap();
    }
}

/// A local hand-off keeps the queue for the recipient's lease (as a renewal does), so
/// the recipient's real release still wakes the waiter of another manager.
#[tokio::test]
async fn a_hand_off_then_a_release_still_wakes_another_managers_waiter() {
    let server = RedisServer::start();
    let local = RdLockConnectionManager::new(server.url()).await.unwrap();
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let lock = local.new_lock("passed").with_lease(lease);
    let first = lock.lock().await.unwrap();
    let mut raw = server.conn().await;
    let next = lock.clone();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let mut recipient = Box::pin(async move {
        let g = next.lock().await.unwrap();
        got_tx.send(g.fencing_token()).unwrap();
        go_rx.await.unwrap();
        g.release().await.unwrap();
    });
    // Its first poll queues the local task behind `first` (in the gate, no Redis).
    assert!((&mut recipient).now_or_never().is_none());
    let recipient = tokio::spawn(recipient);
    let waiter_lock = other.new_lock("passed").with_lease(lease);
    let waiter = tokio::spawn(async move { waiter_lock.lock().await });
    wait_until(
        Duration::from_secs(10),
        "the other manager's waiter queued",
        || {
            let mut raw = raw.clone();
            async move { pttl(&mut raw, "rdlock:{passed}:queue").await > 0 }
        },
    )
    .await;
    let first_fence = first.fencing_token();
    first.release().await.unwrap();
    let handed = tokio::time::timeout(Duration::from_secs(10), got_rx)
        .await
        .expect("the local task got the lock")
        .unwrap();
    assert_eq!(
        handed,
        first_fence + 1,
        "handed off, not taken by the waiter"
    );
    assert!(
        pttl(&mut raw, "rdlock:{passed}:queue").await > 0,
        "the queue is kept through the hand-off"
    );
    go_tx.send(()).unwrap();
    recipient.await.unwrap();
    let g = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken by the recipient's release, long before the 30 s lease")
        .unwrap()
        .unwrap();
    g.release().await.unwrap();
}
