//! Self-tests of the cluster rig (tests/support/cluster.rs): the cluster forms within
//! a bound, every shard takes writes through redis-rs's cluster client, and each fault
//! helper leaves the topology it promises. Also pins what redis-rs's cluster client does
//! with a server that is not a cluster (for `RdLockConnectionManager::cluster`).
//!
//! Runs on Redis or on Valkey (`RDLOCK_SERVER_BIN=$(bash .ci/install-valkey)`).

mod support;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::cluster::{key_slot, lock_slot, RedisCluster, SLOTS};
use support::RedisServer;

/// Writes `key` on its master and waits until the master's replicas have it, so that
/// a failover cannot lose it. `WAIT` counts replicas that acknowledged the writes of
/// *its own connection*: it must follow the `SET` on the same connection (on a fresh
/// connection it returns at once, and the test once lost the key to a kill).
async fn write_replicated(cluster: &RedisCluster, key: &str, value: &str) {
    let master = cluster.master_of_key(key.as_bytes()).await;
    let replicas = cluster.replicas_of(master).await.len();
    let mut conn = cluster.conn(master).await;
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut conn)
        .await
        .expect("SET on the key's master");
    let acked: usize = redis::cmd("WAIT")
        .arg(replicas)
        .arg(5000)
        .query_async(&mut conn)
        .await
        .expect("WAIT");
    assert_eq!(acked, replicas, "every replica of {master} has {key}");
}

async fn cluster_get(cluster: &RedisCluster, key: &str) -> Option<String> {
    let mut conn = cluster.cluster_conn().await;
    match conn.get(key).await {
        Ok(value) => value,
        Err(e) => panic!(
            "GET {key} through the cluster: {:?} {e}\n{}",
            e.kind(),
            cluster.logs()
        ),
    }
}

/// `key` still reads "before" through the cluster; else panics with what every node
/// holds and the logs.
async fn assert_survived(cluster: &RedisCluster, key: &str) {
    let value = cluster_get(cluster, key).await;
    if value.as_deref() == Some("before") {
        return;
    }
    let mut held = Vec::new();
    for i in cluster.running() {
        let mut conn = cluster.conn(i).await;
        let _: redis::RedisResult<()> = redis::cmd("READONLY").query_async(&mut conn).await;
        let on_node: redis::RedisResult<Option<String>> =
            redis::cmd("GET").arg(key).query_async(&mut conn).await;
        held.push((i, cluster.is_master(i).await, on_node));
    }
    panic!(
        "{key} reads {value:?} through the cluster, not \"before\"; (node, master, GET): \
         {held:?}\n{}",
        cluster.logs()
    );
}

#[tokio::test]
async fn forms_within_a_bound_and_every_shard_takes_writes() {
    let started = Instant::now();
    let cluster = RedisCluster::start().await;
    let formed = started.elapsed();
    let info: String = cluster.query(0, redis::cmd("INFO").arg("server")).await;
    let version = info
        .lines()
        .filter(|l| l.starts_with("redis_version:") || l.starts_with("valkey_version:"))
        .collect::<Vec<_>>()
        .join(" ");
    println!("cluster of {version} formed and ready in {formed:?}");
    assert!(formed < Duration::from_secs(40), "formed in {formed:?}");

    // Topology: 3 masters covering every slot, one running replica each.
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "masters: {masters:?}");
    let mut covered = 0u32;
    for &m in &masters {
        assert!(cluster.is_master(m).await);
        let replicas = cluster.replicas_of(m).await;
        assert_eq!(replicas.len(), 1, "replicas of {m}: {replicas:?}");
        assert!(!cluster.is_master(replicas[0]).await);
        covered += cluster
            .slots_of(m)
            .await
            .iter()
            .map(|&(a, b)| u32::from(b - a) + 1)
            .sum::<u32>();
    }
    assert_eq!(covered, u32::from(SLOTS));

    // The local slot function agrees with the server (hash tags, binary keys).
    let keys: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"a".to_vec(),
        b"foo".to_vec(),
        b"rdlock:{job-1}:lock".to_vec(),
        b"rdlock:{job-1}:fence".to_vec(),
        b"{}x".to_vec(),
        b"x{}{y}".to_vec(),
        b"{a}{b}".to_vec(),
        vec![0, 255, b'{', 1, 2, b'}', 7],
        "ключ-🔒".as_bytes().to_vec(),
    ];
    for key in &keys {
        let server: u16 = cluster
            .query(0, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await;
        assert_eq!(key_slot(key), server, "slot of {key:?}");
    }

    // An id on every master: written through the cluster client, found on that node.
    let mut conn = cluster.cluster_conn().await;
    for &m in &masters {
        let id = cluster.id_on_master(m, "shard-").await;
        let key = format!("rdlock:{{{id}}}:lock");
        assert_eq!(cluster.master_of_slot(lock_slot(&id)).await, m);
        let _: () = conn.set(&key, m).await.expect("SET through the cluster");
        let on_node: Option<usize> = cluster.query(m, redis::cmd("GET").arg(&key)).await;
        assert_eq!(on_node, Some(m), "{key} lives on node {m}");
    }
}

#[tokio::test]
async fn failover_swaps_master_and_replica() {
    let cluster = RedisCluster::start().await;
    let key = "rdlock:{failover}:lock";
    let slot = key_slot(key.as_bytes());
    write_replicated(&cluster, key, "before").await;
    let slots_before = cluster.slots_of(cluster.master_of_slot(slot).await).await;

    let started = Instant::now();
    let (old, new) = cluster.failover_slot(slot).await;
    println!("CLUSTER FAILOVER settled in {:?}", started.elapsed());

    assert_ne!(old, new);
    assert_eq!(cluster.master_of_slot(slot).await, new);
    assert!(cluster.is_master(new).await);
    assert!(!cluster.is_master(old).await);
    assert_eq!(cluster.replicas_of(new).await, vec![old]);
    assert_eq!(cluster.slots_of(new).await, slots_before);
    assert!(cluster.slots_of(old).await.is_empty());
    // The old master is a read-only replica now.
    let mut raw = cluster.conn(old).await;
    let err = redis::cmd("SET")
        .arg(key)
        .arg("x")
        .query_async::<()>(&mut raw)
        .await
        .expect_err("a replica refuses writes");
    println!("write to the demoted master: {:?} / {err}", err.kind());
    assert_survived(&cluster, key).await;

    // And back, with TAKEOVER (no agreement asked of the other masters).
    let started = Instant::now();
    assert_eq!(cluster.failover_with(old, Some("TAKEOVER")).await, new);
    println!(
        "CLUSTER FAILOVER TAKEOVER settled in {:?}",
        started.elapsed()
    );
    assert_eq!(cluster.master_of_slot(slot).await, old);
    assert_eq!(cluster.replicas_of(old).await, vec![new]);
    assert_survived(&cluster, key).await;
}

#[tokio::test]
async fn kill_promotes_the_replica_and_the_old_master_rejoins() {
    let mut cluster = RedisCluster::start().await;
    let key = "rdlock:{kill}:lock";
    let slot = key_slot(key.as_bytes());
    write_replicated(&cluster, key, "before").await;

    let started = Instant::now();
    let (old, new) = cluster.kill_master_of_slot(slot).await;
    println!(
        "SIGKILL -> replica promoted, settled in {:?}",
        started.elapsed()
    );

    assert!(!cluster.node(old).is_running());
    assert_eq!(cluster.master_of_slot(slot).await, new);
    assert!(cluster.is_master(new).await);
    assert_eq!(cluster.masters().await.len(), 3);
    assert!(cluster.replicas_of(new).await.is_empty());
    assert_eq!(cluster.urls().len(), 5);
    assert_survived(&cluster, key).await;

    // Back with its nodes.conf and no data: it follows the new master.
    let started = Instant::now();
    cluster.restart(old).await;
    println!(
        "killed master rejoined as a replica in {:?}",
        started.elapsed()
    );
    assert!(cluster.node(old).is_running());
    assert_eq!(cluster.master_of_slot(slot).await, new);
    assert_eq!(cluster.replicas_of(new).await, vec![old]);
    assert!(!cluster.is_master(old).await);
}

#[tokio::test]
async fn pause_past_the_node_timeout_promotes_the_replica_and_resume_demotes() {
    let mut cluster = RedisCluster::start().await;
    let key = "rdlock:{pause}:lock";
    let slot = key_slot(key.as_bytes());
    write_replicated(&cluster, key, "before").await;

    let started = Instant::now();
    let (old, new) = cluster.pause_master_of_slot(slot).await;
    println!(
        "SIGSTOP -> replica promoted, settled in {:?}",
        started.elapsed()
    );
    assert!(cluster.node(old).is_paused());
    assert!(!cluster.running().contains(&old));
    assert_eq!(cluster.master_of_slot(slot).await, new);
    assert!(cluster.is_master(new).await);
    assert_survived(&cluster, key).await;

    let started = Instant::now();
    cluster.resume(old);
    cluster.wait_settled("the resumed master rejoined").await;
    println!(
        "SIGCONT -> old master demoted, settled in {:?}",
        started.elapsed()
    );
    assert_eq!(cluster.master_of_slot(slot).await, new);
    assert!(!cluster.is_master(old).await);
    assert_eq!(cluster.replicas_of(new).await, vec![old]);
}

#[tokio::test]
async fn migration_moves_the_slot_and_its_keys() {
    let cluster = RedisCluster::start().await;
    let id = "migrating";
    let slot = lock_slot(id);
    let lock_key = format!("rdlock:{{{id}}}:lock");
    let fence_key = format!("rdlock:{{{id}}}:fence");
    let mut conn = cluster.cluster_conn().await;
    let _: () = conn.set(&lock_key, "holder").await.expect("SET");
    let _: () = conn.set(&fence_key, 7).await.expect("SET");

    let to = cluster.other_master(slot).await;
    let started = Instant::now();
    let from = cluster.migrate_slot(slot, to).await;
    println!(
        "slot {slot} migrated {from} -> {to} in {:?}",
        started.elapsed()
    );

    assert_ne!(from, to);
    assert_eq!(cluster.master_of_slot(slot).await, to);
    for i in cluster.running() {
        let view = cluster.view(i).await;
        let owner = view
            .iter()
            .find(|e| e.master && e.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .map(|e| e.id.clone());
        assert_eq!(owner.as_deref(), Some(cluster.id(to)), "node {i}'s view");
    }
    let keys_on_new: u64 = cluster
        .query(to, redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot))
        .await;
    let keys_on_old: u64 = cluster
        .query(from, redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot))
        .await;
    assert_eq!((keys_on_old, keys_on_new), (0, 2));
    // The same cluster connection follows the MOVED redirection.
    let value: Option<String> = conn.get(&lock_key).await.expect("GET after migration");
    assert_eq!(value.as_deref(), Some("holder"));
    let fence: Option<u64> = conn.get(&fence_key).await.expect("GET after migration");
    assert_eq!(fence, Some(7));
    // The source answers MOVED to the new owner.
    let mut raw = cluster.conn(from).await;
    let err = redis::cmd("GET")
        .arg(&lock_key)
        .query_async::<Option<String>>(&mut raw)
        .await
        .expect_err("the old owner redirects");
    assert_eq!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::Moved)
    );
    assert_eq!(
        err.redirect_node().map(|(addr, s)| (addr.to_owned(), s)),
        Some((cluster.node(to).addr(), slot))
    );
}

/// What `RdLockConnectionManager::cluster` will face when given a plain server: redis-rs's
/// cluster client fails to connect, quickly, with an error naming the cause.
#[tokio::test]
async fn a_cluster_client_on_a_plain_server_errors_at_once() {
    let server = RedisServer::start();
    let client = redis::cluster::ClusterClientBuilder::new(vec![server.url()])
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(1))
        .retries(2)
        .build()
        .expect("a valid client");
    let started = Instant::now();
    let err = match client.get_async_connection().await {
        Ok(_) => panic!("a cluster connection to a non-cluster server"),
        Err(e) => e,
    };
    let took = started.elapsed();
    println!(
        "non-cluster server: kind {:?}, code {:?}: {err} (in {took:?})",
        err.kind(),
        err.code()
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        err.to_string().contains("cluster support disabled"),
        "unexpected error: {err}"
    );
}
