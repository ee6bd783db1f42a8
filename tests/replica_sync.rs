//! Replica sync (`ManagerBuilder::replica_sync`, `WAIT` after each acquisition) on a
//! real Sentinel group (tests/support/sentinel.rs) and on one server with a replica:
//! with the replicas stopped a synced acquire fails with the typed error and leaves no
//! key; a synced lock survives the crash of its master (repeated, 0 lost), while
//! without sync a lock granted while the replicas lag is lost by the failover (the
//! contrast the option exists for).
//!
//! Runs on Redis or on Valkey (`RDLOCK_SERVER_BIN=$(bash .ci/install-valkey)`).

mod support;

use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::sentinel::{SentinelGroup, SERVICE};
use support::{RedisServer, ServerConfig};

const SYNC_TIMEOUT: Duration = Duration::from_millis(300);

/// The two Sentinel groups of this file run one at a time: on a busy 2-core machine,
/// two groups failing over in a loop starve sentinels into TILT mode (no failover for
/// 30 s).
static ONE_GROUP_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn synced(group: &SentinelGroup, replicas: u32) -> RdLockConnectionManager {
    RdLockConnectionManager::builder()
        .replica_sync(replicas, SYNC_TIMEOUT)
        .sentinel(group.sentinel_urls(), SERVICE)
        .await
        .unwrap_or_else(|e| panic!("synced manager: {e:?}\n{}", group.logs()))
}

async fn get_on(group: &SentinelGroup, i: usize, key: &str) -> Option<String> {
    let mut conn = group.conn(i).await;
    support::get(&mut conn, key).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_replicas_fail_a_synced_acquire_and_leave_no_key() {
    let _serial = ONE_GROUP_AT_A_TIME.lock().await;
    let mut group = SentinelGroup::start().await;
    let m = synced(&group, 2).await;
    let master = group.master_per_sentinels().await.expect("a master");
    // Healthy: both replicas acknowledge.
    m.new_lock("synced")
        .try_lock()
        .await
        .expect("synced acquire with healthy replicas")
        .release()
        .await
        .expect("release");

    let replicas: Vec<usize> = (0..3).filter(|&i| i != master).collect();
    for &r in &replicas {
        group.pause(r);
    }
    let started = Instant::now();
    let result = m.new_lock("synced").try_lock().await;
    let took = started.elapsed();
    assert_eq!(
        result.err(),
        Some(RdLockError::NotReplicated {
            acked: 0,
            wanted: 2
        })
    );
    assert!(took >= SYNC_TIMEOUT, "WAIT waited ({took:?})");
    assert_eq!(
        get_on(&group, master, "rdlock:{synced}:lock").await,
        None,
        "no key left"
    );
    // lock_timeout retries until its deadline, then times out; still no key.
    let result = m
        .new_lock("synced")
        .lock_timeout(Duration::from_millis(900))
        .await;
    assert_eq!(result.err(), Some(RdLockError::TimeoutReached));
    for &r in &replicas {
        group.resume(r);
    }
    support::wait_until(
        Duration::from_secs(10),
        "no key left after the retries",
        || {
            let group = &group;
            async move {
                get_on(group, master, "rdlock:{synced}:lock")
                    .await
                    .is_none()
            }
        },
    )
    .await;
    // Replicas back: lock() gets it.
    let guard = m
        .new_lock("synced")
        .lock_timeout(Duration::from_secs(15))
        .await
        .expect("synced acquire once the replicas are back");
    guard.release().await.expect("release");
}

/// One crash failover right after an acquisition; `lagging`: the replicas are stopped
/// while it is acquired (resumed right after the kill). Returns `None` when no lock was
/// granted, else whether the promoted node has it.
async fn crash_after_acquire(
    group: &mut SentinelGroup,
    m: &RdLockConnectionManager,
    id: &str,
    lagging: bool,
) -> Option<bool> {
    let master = group.wait_ready("the group is ready for a round").await;
    let replicas: Vec<usize> = (0..3).filter(|&i| i != master).collect();
    if lagging {
        for &r in &replicas {
            group.pause(r);
        }
        // A stopped replica's kernel still takes in what the master sends, up to its
        // socket buffers: fill them with a large value first, so that the lock's write
        // stays in the master's output buffer and dies with it.
        let mut conn = group.conn(master).await;
        let _: () = redis::cmd("SET")
            .arg("filler")
            .arg(vec![b'x'; 48 << 20])
            .query_async(&mut conn)
            .await
            .expect("SET filler");
    }
    let granted = m.new_lock(id).try_lock().await;
    group.kill(master);
    if lagging {
        for &r in &replicas {
            group.resume(r);
        }
    }
    let promoted = group.wait_promoted(master).await;
    let present = get_on(group, promoted, &format!("rdlock:{{{id}}}:lock"))
        .await
        .is_some();
    group.restart_as_replica(master, promoted).await;
    match granted {
        Ok(guard) => {
            drop(guard);
            Some(present)
        }
        Err(e) => {
            assert!(
                matches!(e, RdLockError::NotReplicated { .. }),
                "round {id}: {e:?}"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_locks_survive_crash_failovers_and_unsynced_ones_do_not() {
    let _serial = ONE_GROUP_AT_A_TIME.lock().await;
    let mut group = SentinelGroup::start().await;
    let with_sync = synced(&group, 1).await;
    let without = RdLockConnectionManager::sentinel(group.sentinel_urls(), SERVICE)
        .await
        .expect("manager");
    // Five rounds: each is a full crash failover (~5 s); the point is the contrast
    // with the lagging rounds below, which lose every unsynced lock.
    const ROUNDS: usize = 5;

    // With sync: every granted lock is on the promoted replica.
    let (mut granted, mut lost) = (0, 0);
    for round in 0..ROUNDS {
        match crash_after_acquire(&mut group, &with_sync, &format!("sync-{round}"), false).await {
            Some(true) => granted += 1,
            Some(false) => {
                granted += 1;
                lost += 1;
            }
            None => {}
        }
    }
    println!("with replica sync: {lost} lost of {granted} granted in {ROUNDS} crash failovers");
    assert_eq!(lost, 0, "a synced lock was lost\n{}", group.logs());
    assert!(
        granted >= ROUNDS / 2,
        "only {granted} of {ROUNDS} rounds granted"
    );

    // With sync and lagging replicas: never granted (so never lost).
    let lagging = crash_after_acquire(&mut group, &with_sync, "sync-lagging", true).await;
    assert_eq!(lagging, None, "a lock was granted without its replicas");

    // Without sync and lagging replicas: granted and lost (with healthy replicas the
    // window is too small on loopback to be hit reliably, so no round proves it).
    let (mut granted_lagging, mut lost_lagging) = (0, 0);
    for round in 0..2 {
        if let Some(present) =
            crash_after_acquire(&mut group, &without, &format!("plain-lag-{round}"), true).await
        {
            granted_lagging += 1;
            lost_lagging += usize::from(!present);
        }
    }
    println!("without replica sync: {lost_lagging} lost of {granted_lagging} (lagging replicas)");
    assert_eq!(granted_lagging, 2);
    assert_eq!(lost_lagging, 2, "the failover lost the unreplicated locks");
}

/// One server with a replica: replica sync works without Sentinel too, and a stopped
/// replica gives the typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_sync_on_one_server_with_a_replica() {
    let primary = RedisServer::start();
    let mut replica = RedisServer::start_with(ServerConfig {
        keyspace_events: None,
        args: vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port().to_string(),
        ],
    });
    let mut raw = replica.conn().await;
    support::wait_until(Duration::from_secs(20), "the replica is linked", || {
        let mut raw = raw.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut raw)
                .await
                .unwrap_or_default();
            info.contains("master_link_status:up")
        }
    })
    .await;
    let m = RdLockConnectionManager::builder()
        .replica_sync(1, SYNC_TIMEOUT)
        .connect(primary.url())
        .await
        .expect("manager");
    // `lock_timeout`, not `try_lock`: on a busy machine a first `WAIT` can miss its
    // 300 ms (the primary may not have counted the new replica yet); `lock` retries a
    // `NotReplicated` until its deadline, which is what this checks works at all.
    let guard = m
        .new_lock("one")
        .lock_timeout(Duration::from_secs(20))
        .await
        .expect("synced acquire");
    assert!(support::get(&mut raw, "rdlock:{one}:lock").await.is_some());
    guard.release().await.expect("release");

    let pid = replica_pid(&replica);
    signal(pid, "STOP");
    let result = m.new_lock("one").try_lock().await;
    signal(pid, "CONT");
    assert_eq!(
        result.err(),
        Some(RdLockError::NotReplicated {
            acked: 0,
            wanted: 1
        })
    );
    let mut conn = primary.conn().await;
    assert_eq!(support::get(&mut conn, "rdlock:{one}:lock").await, None);
    // Two replicas wanted, one exists: never satisfied.
    let m2 = RdLockConnectionManager::builder()
        .replica_sync(2, SYNC_TIMEOUT)
        .connect(primary.url())
        .await
        .expect("manager");
    assert_eq!(
        m2.new_lock("one").try_lock().await.err(),
        Some(RdLockError::NotReplicated {
            acked: 1,
            wanted: 2
        })
    );
    // Bad options: a typed error before connecting.
    for (n, t) in [
        (0, SYNC_TIMEOUT),
        (1, Duration::ZERO),
        (1, Duration::from_secs(61)),
    ] {
        assert!(matches!(
            RdLockConnectionManager::builder()
                .replica_sync(n, t)
                .connect(primary.url())
                .await,
            Err(RdLockError::InvalidConfig {
                option: "replica_sync",
                ..
            })
        ));
    }
    replica.stop();
}

fn replica_pid(server: &RedisServer) -> u32 {
    let client = server.client();
    let mut conn = client.get_connection().expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut conn)
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("process_id")
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill(1)");
    assert!(status.success());
}
