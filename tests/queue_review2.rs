//! Second adversarial review of the Redis-side queue of waiting processes
//! (`src/queue.rs`): the admin path during a reservation, a claim whose reply is lost,
//! and waiters that do not queue (1.x compatibility) next to processes that do.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::{queue, RedisServer};

/// Puts a process that will never claim its turn (a dead one) at the head of `id`'s
/// queue.
async fn dead_entry_first(conn: &mut redis::aio::MultiplexedConnection, id: &str) {
    let key = format!("rdlock:{{{id}}}:queue");
    let _: () = redis::cmd("LPUSH")
        .arg(&key)
        .arg("deadbeefdeadbeefdeadbeefdeadbeef")
        .query_async(conn)
        .await
        .unwrap();
    let _: () = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(60_000)
        .query_async(conn)
        .await
        .unwrap();
}

/// A turn reserved for a process (the key holds `q:<process>`, no owner record) is
/// not a lock "not written by rdlock": `holder()` must not report it as a foreign
/// holder (pid 0, fencing token 0), which `rdlock status` prints as "held by an
/// unknown owner (the key was not written by rdlock)" and `rdlock release --force`
/// offers to delete.
#[tokio::test]
#[ignore = "known limitation, documented on Lock::holder: a reservation (at most 250 ms) reads as a holder rdlock did not write; fix: inspect with a script that reads the key's value with pcall"]
async fn a_reservation_is_not_reported_as_a_foreign_holder() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("reserved");
    let guard = lock.lock().await.unwrap();
    dead_entry_first(&mut raw, "reserved").await;
    guard.release().await.unwrap();
    let value = support::get(&mut raw, "rdlock:{reserved}:lock").await;
    assert!(
        value.as_deref().is_some_and(|v| v.starts_with("q:")),
        "{value:?}"
    );
    let holder = lock.holder().await.unwrap();
    assert!(
        holder.as_ref().is_none_or(|h| h.pid != 0),
        "a reservation reported as a foreign holder: {holder:?}"
    );
}

/// The admin path while a turn is reserved for a dead process: `force_release`
/// deletes the reservation and wakes everyone; the live waiter takes the lock with a
/// new fencing token, and only one guard exists.
#[tokio::test]
async fn force_release_of_a_reservation_frees_the_lock_for_the_live_waiter() {
    const LEASE: Duration = Duration::from_secs(20);
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(server.url()).await.unwrap();
    let admin = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = holder
        .new_lock("admin")
        .with_lease(LEASE)
        .lock()
        .await
        .unwrap();
    let first_fence = guard.fencing_token();
    let waiting = tokio::spawn({
        let lock = waiter.new_lock("admin").with_lease(LEASE);
        async move { lock.lock_timeout(Duration::from_secs(30)).await }
    });
    support::wait_until(Duration::from_secs(10), "the waiter queued", || {
        let mut raw = raw.clone();
        async move { queue(&mut raw, "admin").await.len() == 1 }
    })
    .await;
    dead_entry_first(&mut raw, "admin").await;
    guard.release().await.unwrap();
    let lock = admin.new_lock("admin");
    assert_eq!(lock.last_fencing_token().await.unwrap(), first_fence);
    // Deleted whether or not the live waiter's standby timer took it already.
    let _ = lock.force_release().await.unwrap();
    let acquired = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiter gets the lock")
        .unwrap()
        .expect("acquired");
    assert!(acquired.fencing_token() > first_fence);
    let now = lock.holder().await.unwrap().expect("held");
    assert_eq!(now.fencing_token, acquired.fencing_token());
    assert!(lock.try_lock().await.is_err(), "one guard only");
    acquired.release().await.unwrap();
}

/// A claim whose reply is lost (the connection is cut after the script ran): the
/// claiming attempt's token is undone by its release, so the key is neither left
/// held by a token nobody has for the lease, nor reserved; the waiter gets the lock
/// on a retry, well within the lease.
#[tokio::test]
async fn a_claim_whose_reply_is_lost_is_undone_and_the_waiter_gets_the_lock() {
    use support::proxy::{FaultProxy, Mode};
    const LEASE: Duration = Duration::from_secs(30);
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let proxy = FaultProxy::to_port(server.port()).await;
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiter = RdLockConnectionManager::new(proxy.url()).await.unwrap();
    let guard = holder
        .new_lock("lost")
        .with_lease(LEASE)
        .lock()
        .await
        .unwrap();
    let fence = guard.fencing_token();
    let waiting = tokio::spawn({
        let lock = waiter.new_lock("lost").with_lease(LEASE);
        async move { lock.lock_timeout(Duration::from_secs(60)).await }
    });
    support::wait_until(Duration::from_secs(10), "the waiter queued", || {
        let mut raw = raw.clone();
        async move { queue(&mut raw, "lost").await.len() == 1 }
    })
    .await;
    // Subscribed: its subscription counts as a client of the server besides ours.
    support::wait_until(Duration::from_secs(10), "the waiter subscribed", || {
        let mut raw = raw.clone();
        async move {
            let n: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("rdlock:{lost}:release")
                .query_async(&mut raw)
                .await
                .unwrap();
            n.first().is_some_and(|(_, n)| *n > 0)
        }
    })
    .await;
    // Every chunk takes 300 ms each way: the claim runs on the server 300 ms before
    // its reply would reach the waiter; the connection is cut in between.
    proxy.set(Mode::Latency(Duration::from_millis(300)));
    guard.release().await.unwrap();
    let claimed_at = Instant::now();
    let mut orphan = None;
    while claimed_at.elapsed() < Duration::from_secs(10) {
        let value = support::get(&mut raw, "rdlock:{lost}:lock").await;
        if let Some(v) = value.filter(|v| !v.starts_with("q:")) {
            orphan = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let orphan = orphan.expect("the claim ran");
    proxy.cut();
    proxy.set(Mode::Pass);
    let acquired = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiter gets the lock within the test's bound")
        .unwrap()
        .expect("acquired");
    let took = claimed_at.elapsed();
    assert!(
        took < LEASE / 3,
        "took {took:?}: the lost claim held the key"
    );
    assert!(acquired.fencing_token() > fence);
    let now = support::get(&mut raw, "rdlock:{lost}:lock").await;
    assert!(
        now.is_some_and(|now| now != orphan),
        "held by the acquisition, not by the lost claim's token"
    );
    assert!(queue(&mut raw, "lost").await.is_empty());
    acquired.release().await.unwrap();
}

/// A mixed fleet on one id (a rolling upgrade: some processes with 1.x
/// compatibility, which do not queue, some without): while processes without it take
/// turns through the queue, every release is a reservation for the next of them and
/// the key is never free, and a turn message wakes nobody else. The compatible waiter
/// only ever retries at the PTTL it saw, finds the key held or reserved, and starves.
/// (Freeing the key instead of reserving it while the waiters marker exists is not
/// enough: tried, the releasing process's next attempt, sent before anyone hears the
/// release, wins the free key every time.)
#[tokio::test]
async fn a_compat_waiter_is_not_starved_by_processes_taking_turns() {
    const LEASE: Duration = Duration::from_secs(2);
    const HOLD: Duration = Duration::from_millis(50);
    let server = RedisServer::start();
    let a = RdLockConnectionManager::new(server.url()).await.unwrap();
    let b = RdLockConnectionManager::new(server.url()).await.unwrap();
    let v = RdLockConnectionManager::new(server.url()).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let turns = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for manager in [&a, &b] {
        let lock = manager.new_lock("mixed").with_lease(LEASE);
        let (stop, turns) = (stop.clone(), turns.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let guard = lock.lock().await.unwrap();
                turns.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(HOLD).await;
                guard.release().await.unwrap();
            }
        }));
    }
    support::wait_until(
        Duration::from_secs(10),
        "the two processes alternate",
        || {
            let going = turns.load(Ordering::SeqCst) >= 4;
            async move { going }
        },
    )
    .await;
    let compat = v.new_lock("mixed").with_v1_compat().with_lease(LEASE);
    let started = Instant::now();
    // Four of the others' leases: a fair lock gives it one of ~100 turns.
    let got = compat.lock_timeout(4 * LEASE).await;
    let waited = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let others = turns.load(Ordering::SeqCst);
    let got = got.map_err(|e| {
        format!("the compatible waiter got nothing in {waited:?} while the others took {others} turns: {e}")
    });
    let guard = got.unwrap();
    guard.release().await.unwrap();
    for l in loops {
        tokio::time::timeout(Duration::from_secs(20), l)
            .await
            .unwrap()
            .unwrap();
    }
}

/// Ids with braces and percent signs, and a long id, queue and pass turns like any
/// other: the queue shares the escaped hash tag and the turn message carries the
/// process id only.
#[tokio::test]
async fn odd_and_long_ids_pass_turns() {
    let server = RedisServer::start();
    let a = RdLockConnectionManager::new(server.url()).await.unwrap();
    let b = RdLockConnectionManager::new(server.url()).await.unwrap();
    let long = "x{y}%".repeat(2000);
    for id in ["{", "}", "a}b{c", "%7B", "with space", long.as_str()] {
        let guard = a
            .new_lock(id)
            .with_lease(Duration::from_secs(30))
            .lock()
            .await
            .unwrap();
        let waiting = tokio::spawn({
            let lock = b.new_lock(id).with_lease(Duration::from_secs(30));
            async move { lock.lock_timeout(Duration::from_secs(30)).await }
        });
        let raw = server.conn().await;
        let queue_key = format!(
            "rdlock:{{{}}}:queue",
            id.replace('%', "%25")
                .replace('{', "%7B")
                .replace('}', "%7D")
        );
        support::wait_until(Duration::from_secs(10), "the waiter queued", || {
            let mut raw = raw.clone();
            let queue_key = queue_key.clone();
            async move {
                let n: i64 = redis::cmd("LLEN")
                    .arg(&queue_key)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                n == 1
            }
        })
        .await;
        let released = Instant::now();
        guard.release().await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .expect("acquired")
            .unwrap()
            .expect("acquired");
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "id of {} bytes: woken late",
            id.len()
        );
        got.release().await.unwrap();
    }
}

/// A lease shorter than the reservation (MIN_LEASE next to 250 ms): turns pass, and
/// exclusion holds, with holders that renew every few ms.
#[tokio::test]
async fn min_lease_holders_take_turns_without_overlap() {
    let server = RedisServer::start();
    let managers = [
        RdLockConnectionManager::new(server.url()).await.unwrap(),
        RdLockConnectionManager::new(server.url()).await.unwrap(),
        RdLockConnectionManager::new(server.url()).await.unwrap(),
    ];
    let inside = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for manager in &managers {
        let lock = manager.new_lock("short").with_lease(rdlock::MIN_LEASE);
        let (inside, done) = (inside.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let guard = match lock.lock_timeout(Duration::from_secs(30)).await {
                    Ok(g) => g,
                    Err(e) => panic!("{e}"),
                };
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "overlap");
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                match guard.release().await {
                    // A 10 ms lease on a busy machine may run out: that is the lease.
                    Ok(()) | Err(RdLockError::LeaseLost) => {}
                    Err(e) => panic!("{e}"),
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 60);
}
