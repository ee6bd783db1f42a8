//! Research probes for the cluster backend (issue 9): what redis-rs 1.8's cluster
//! client and a plain pub/sub connection do on a real cluster during faults. They print
//! measurements for notes/cluster-backend.md and assert only what the notes rely on.
//! Ignored by default (they throw faults and take ~30 s); run them with
//!
//!   cargo test --all-features --test cluster_facts -- --ignored --nocapture --test-threads 1
//!
//! and with `RDLOCK_SERVER_BIN=$(bash .ci/install-valkey)` for Valkey.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::Script;
use support::cluster::{key_slot, RedisCluster};

/// A lock-like script over two keys of one slot, publishing on a classic channel.
const SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', 30000)
local fence = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[2], 'released')
return {fence, ARGV[1]}
";

/// What a hammer saw: (ms since start, outcome) events, and counts per outcome.
type Hammered = (Vec<(u128, String)>, BTreeMap<String, u64>);

/// The client settings proposed for the backend (see the notes).
fn client(cluster: &RedisCluster) -> redis::cluster::ClusterClient {
    ClusterClientBuilder::new(cluster.urls())
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .retries(2)
        .min_retry_wait(20)
        .max_retry_wait(200)
        .build()
        .expect("a valid client")
}

/// Runs the script in a loop on `tag`'s slot until `stop`; returns a timeline of
/// (ms since start, outcome) at each change of outcome, plus counts.
fn hammer(
    mut conn: ClusterConnection,
    tag: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Hammered> {
    tokio::spawn(async move {
        let script = Script::new(SCRIPT);
        let started = Instant::now();
        let mut timeline: Vec<(u128, String)> = Vec::new();
        let mut counts = BTreeMap::new();
        let mut n = 0u64;
        let mut last: Option<String> = None;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let token = format!("t{n}");
            let t0 = Instant::now();
            let result: redis::RedisResult<(u64, String)> = script
                .key(format!("rdlock:{{{tag}}}:lock"))
                .key(format!("rdlock:{{{tag}}}:fence"))
                .arg(&token)
                .arg(format!("rdlock:{{{tag}}}:release"))
                .invoke_async(&mut conn)
                .await;
            let outcome = match result {
                Ok((_, echo)) if echo == token => "ok".to_owned(),
                Ok((_, echo)) => format!("WRONG REPLY (echo {echo} for {token})"),
                Err(e) => format!("{:?}", e.kind()),
            };
            let took = t0.elapsed().as_millis();
            *counts.entry(outcome.clone()).or_insert(0) += 1;
            // An event at each change of outcome, and for every call slower than 100 ms.
            if last.as_ref() != Some(&outcome) || took > 100 {
                timeline.push((
                    started.elapsed().as_millis(),
                    format!("{outcome} (call took {took} ms)"),
                ));
            }
            last = Some(outcome.clone());
            if outcome != "ok" {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        (timeline, counts)
    })
}

async fn report(what: &str, handle: tokio::task::JoinHandle<Hammered>) {
    let (timeline, counts) = handle.await.expect("hammer task");
    println!("--- {what}");
    for (ms, outcome) in &timeline {
        println!("  t={ms:>6} ms  {outcome}");
    }
    println!("  counts: {counts:?}");
    assert!(
        !counts.keys().any(|k| k.starts_with("WRONG")),
        "a reply answered another request"
    );
}

#[tokio::test]
#[ignore = "research probe: cargo test --test cluster_facts -- --ignored --nocapture"]
async fn script_errors_during_failover_kill_and_migration() {
    let mut cluster = RedisCluster::start().await;
    let tag = "probe";
    let slot = key_slot(format!("rdlock:{{{tag}}}:lock").as_bytes());

    // NOSCRIPT is healed: flush scripts on every node, then invoke again.
    let mut conn = client(&cluster)
        .get_async_connection()
        .await
        .expect("connect");
    let script = Script::new(SCRIPT);
    let invoke = |conn: &mut ClusterConnection| {
        let mut conn = conn.clone();
        let script = script.clone();
        async move {
            script
                .key(format!("rdlock:{{{tag}}}:lock"))
                .key(format!("rdlock:{{{tag}}}:fence"))
                .arg("x")
                .arg("ch")
                .invoke_async::<(u64, String)>(&mut conn)
                .await
        }
    };
    invoke(&mut conn).await.expect("first invoke");
    for i in cluster.running() {
        let _: () = cluster.query(i, redis::cmd("SCRIPT").arg("FLUSH")).await;
    }
    let healed = invoke(&mut conn).await;
    println!("invoke after SCRIPT FLUSH on every node: {healed:?}");
    assert!(healed.is_ok());

    // Empty hash tag: keys of one lock in different slots.
    let crossslot = Script::new("return 1")
        .key("rdlock:{}:lock")
        .key("rdlock:{}:fence")
        .invoke_async::<i64>(&mut conn)
        .await;
    println!(
        "keys rdlock:{{}}:lock + rdlock:{{}}:fence: {:?}",
        crossslot.as_ref().map_err(|e| e.kind())
    );

    // Graceful failover while the script runs in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let handle = hammer(conn.clone(), tag, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let (old, new) = cluster.failover_slot(slot).await;
    println!("failover {old} -> {new} settled after {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    report("CLUSTER FAILOVER (hammer started 300 ms before)", handle).await;

    // Migration of the slot, keys moved one by one in between (TRYAGAIN window).
    let stop = Arc::new(AtomicBool::new(false));
    let handle = hammer(conn.clone(), tag, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let to = cluster.other_master(slot).await;
    let from = cluster.begin_migration(slot, to).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: redis::Value = cluster
        .query(
            from,
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(cluster.node(to).port())
                .arg(format!("rdlock:{{{tag}}}:lock"))
                .arg(0)
                .arg(5000),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.move_keys(slot, from, to).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.finish_migration(slot, from, to).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    report(
        "migration: +300 IMPORTING/MIGRATING, +500 lock key moved, +800 rest moved, +1000 SETSLOT NODE",
        handle,
    )
    .await;

    // SIGKILL of the master.
    let stop = Arc::new(AtomicBool::new(false));
    let handle = hammer(conn.clone(), tag, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let (old, new) = cluster.kill_master_of_slot(slot).await;
    println!(
        "kill {old} -> {new} promoted, settled after {:?}",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    report(
        "SIGKILL of the master (hammer started 300 ms before)",
        handle,
    )
    .await;
}

#[tokio::test]
#[ignore = "research probe: cargo test --test cluster_facts -- --ignored --nocapture"]
async fn noscript_while_a_replica_is_down() {
    let mut cluster = RedisCluster::start().await;
    let tag = "noscript";
    let slot = key_slot(format!("rdlock:{{{tag}}}:lock").as_bytes());
    let mut old_conn = client(&cluster)
        .get_async_connection()
        .await
        .expect("connect");
    let script = Script::new(SCRIPT);
    let run = |conn: ClusterConnection| {
        let script = script.clone();
        async move {
            let mut conn = conn;
            let t = Instant::now();
            let r = script
                .key(format!("rdlock:{{{tag}}}:lock"))
                .key(format!("rdlock:{{{tag}}}:fence"))
                .arg("x")
                .arg("ch")
                .invoke_async::<(u64, String)>(&mut conn)
                .await;
            (
                r.map(|_| ()).map_err(|e| format!("{:?} {e}", e.kind())),
                t.elapsed(),
            )
        }
    };
    println!("before: {:?}", run(old_conn.clone()).await);
    // Kill a replica of ANOTHER shard: the lock's shard is untouched.
    let owner = cluster.master_of_slot(slot).await;
    let other = cluster.other_master(slot).await;
    let victim = cluster.replicas_of(other).await[0];
    cluster.kill(victim);
    cluster.wait_settled("a replica is down").await;
    for i in cluster.running() {
        let _: () = cluster.query(i, redis::cmd("SCRIPT").arg("FLUSH")).await;
    }
    println!(
        "replica {victim} of {other} down, lock on {owner}, scripts flushed: existing connection: {:?}",
        run(old_conn.clone()).await
    );
    for i in cluster.running() {
        let _: () = cluster.query(i, redis::cmd("SCRIPT").arg("FLUSH")).await;
    }
    let fresh = client(&cluster)
        .get_async_connection()
        .await
        .expect("connect");
    println!(
        "  fresh connection (seeded with running nodes): {:?}",
        run(fresh).await
    );
    // Same with the connection's own view refreshed by time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in cluster.running() {
        let _: () = cluster.query(i, redis::cmd("SCRIPT").arg("FLUSH")).await;
    }
    println!(
        "  existing connection, 2 s later: {:?}",
        run(old_conn.clone()).await
    );
    let _ = &mut old_conn;
}

#[tokio::test]
#[ignore = "research probe: cargo test --test cluster_facts -- --ignored --nocapture"]
async fn plain_pubsub_on_one_node_across_faults() {
    let mut cluster = RedisCluster::start().await;
    let tag = "wake";
    let channel = format!("rdlock:{{{tag}}}:release");
    let slot = key_slot(channel.as_bytes());
    let owner = cluster.master_of_slot(slot).await;
    // Subscribe on a node of another shard: the bus carries classic PUBLISH everywhere.
    let other = cluster.other_master(slot).await;
    let subscriber_node = cluster.replicas_of(other).await[0];
    let mut pubsub = cluster
        .node(subscriber_node)
        .url()
        .parse::<redis::ConnectionInfo>()
        .and_then(redis::Client::open)
        .expect("client")
        .get_async_pubsub()
        .await
        .expect("pubsub");
    pubsub.subscribe(&channel).await.expect("SUBSCRIBE");
    let mut stream = pubsub.into_on_message();
    let mut conn = client(&cluster)
        .get_async_connection()
        .await
        .expect("connect");
    let script = Script::new(SCRIPT);

    async fn publish_and_wait(
        what: &str,
        script: &Script,
        conn: &mut ClusterConnection,
        stream: &mut redis::aio::PubSubStream,
        tag: &str,
    ) -> bool {
        let t = Instant::now();
        let sent: redis::RedisResult<(u64, String)> = script
            .key(format!("rdlock:{{{tag}}}:lock"))
            .key(format!("rdlock:{{{tag}}}:fence"))
            .arg("x")
            .arg(format!("rdlock:{{{tag}}}:release"))
            .invoke_async(conn)
            .await;
        let got = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        let ok = matches!(got, Ok(Some(_)));
        println!(
            "{what}: script {:?}, message {} after {:?}",
            sent.as_ref().map(|_| ()).map_err(|e| e.kind()),
            match &got {
                Ok(Some(_)) => "received",
                Ok(None) => "stream ENDED",
                Err(_) => "NOT received in 5 s",
            },
            t.elapsed()
        );
        ok
    }

    println!("subscriber on node {subscriber_node} (replica of {other}); slot {slot} on {owner}");
    assert!(publish_and_wait("steady", &script, &mut conn, &mut stream, tag).await);
    let (old, new) = cluster.failover_slot(slot).await;
    println!("failover of the channel's shard {old} -> {new}");
    assert!(
        publish_and_wait(
            "after failover of the publishing shard",
            &script,
            &mut conn,
            &mut stream,
            tag
        )
        .await
    );
    let to = cluster.other_master(slot).await;
    cluster.migrate_slot(slot, to).await;
    println!("migrated slot {slot} to {to}");
    assert!(
        publish_and_wait(
            "after migration of the slot",
            &script,
            &mut conn,
            &mut stream,
            tag
        )
        .await
    );
    // Fail over the subscriber's own shard (the subscriber is the replica: it becomes master).
    let was = cluster.failover(subscriber_node).await;
    println!("failover of the subscriber's shard: {was} -> {subscriber_node}");
    assert!(
        publish_and_wait(
            "after the subscriber's node was promoted",
            &script,
            &mut conn,
            &mut stream,
            tag
        )
        .await
    );
    // Kill the subscriber's node: the stream must end.
    let t = Instant::now();
    cluster.kill(subscriber_node);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
    println!(
        "SIGKILL of the subscriber's node: stream {} after {:?}",
        match end {
            Ok(None) => "ended",
            Ok(Some(_)) => "yielded a message",
            Err(_) => "still open after 10 s",
        },
        t.elapsed()
    );
    // Reconnect at once to another running node (no wait for the failover) and
    // resubscribe: messages flow again.
    let t = Instant::now();
    let next = cluster.running()[0];
    let mut pubsub = redis::Client::open(cluster.node(next).url())
        .expect("client")
        .get_async_pubsub()
        .await
        .expect("pubsub on another node");
    pubsub.subscribe(&channel).await.expect("SUBSCRIBE");
    let mut stream = pubsub.into_on_message();
    println!("resubscribed on node {next} after {:?}", t.elapsed());
    // (The killed node may have been the channel's master too: then nothing is
    // published until its replica takes over.)
    cluster
        .wait_settled("the subscriber's shard failed over")
        .await;
    assert!(
        publish_and_wait(
            "on the new subscriber, after the killed node's shard failed over",
            &script,
            &mut conn,
            &mut stream,
            tag
        )
        .await
    );
}

#[tokio::test]
#[ignore = "research probe: cargo test --test cluster_facts -- --ignored --nocapture"]
async fn unreachable_seeds() {
    let ports = [support::free_port(), support::free_port()];
    let client = ClusterClientBuilder::new(
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect::<Vec<_>>(),
    )
    .connection_timeout(Duration::from_millis(500))
    .response_timeout(Duration::from_millis(500))
    .retries(2)
    .build()
    .expect("client");
    let t = Instant::now();
    let result = client.get_async_connection().await;
    let err = result.err().expect("no cluster there");
    println!(
        "unreachable seeds (closed ports): {:?} {err} after {:?}",
        err.kind(),
        t.elapsed()
    );
    // A blackholed seed: a listener that never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let client = ClusterClientBuilder::new(vec![format!("redis://127.0.0.1:{port}/")])
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .retries(2)
        .build()
        .expect("client");
    let t = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), client.get_async_connection()).await;
    match result {
        Ok(Ok(_)) => panic!("connected to a silent listener"),
        Ok(Err(e)) => println!("silent seed: {:?} {e} after {:?}", e.kind(), t.elapsed()),
        Err(_) => println!("silent seed: NO ERROR within 30 s"),
    }
    drop(listener);
}

/// Fencing across a paused (SIGSTOP) master: the script (SET + INCR fence) runs in a
/// loop through one cluster connection made before the pause; compares the largest
/// fence the client was acknowledged with the fence the cluster holds afterwards.
#[tokio::test]
#[ignore = "research probe: cargo test --test cluster_facts -- --ignored --nocapture"]
async fn acknowledged_fences_across_a_paused_master() {
    let mut cluster = RedisCluster::start().await;
    let tag = "zombie";
    let slot = key_slot(format!("rdlock:{{{tag}}}:lock").as_bytes());
    let conn = client(&cluster)
        .get_async_connection()
        .await
        .expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        let mut conn = conn.clone();
        tokio::spawn(async move {
            let script = Script::new(SCRIPT);
            let started = Instant::now();
            let mut max_fence = 0u64;
            let mut acked = 0u64;
            let mut repeated = 0u64;
            let mut events: Vec<String> = Vec::new();
            let mut last = String::new();
            while !stop.load(Ordering::Relaxed) {
                let result: redis::RedisResult<(u64, String)> = script
                    .key(format!("rdlock:{{{tag}}}:lock"))
                    .key(format!("rdlock:{{{tag}}}:fence"))
                    .arg("x")
                    .arg("ch")
                    .invoke_async(&mut conn)
                    .await;
                let outcome = match &result {
                    Ok((fence, _)) => {
                        acked += 1;
                        if *fence <= max_fence {
                            repeated += 1;
                            format!("ok, fence went BACK {max_fence} -> {fence}")
                        } else {
                            "ok".to_owned()
                        }
                    }
                    Err(e) => format!("{:?}", e.kind()),
                };
                if let Ok((fence, _)) = result {
                    max_fence = max_fence.max(fence);
                }
                if outcome != last {
                    events.push(format!("t={} ms {outcome}", started.elapsed().as_millis()));
                    last = outcome;
                }
                if last != "ok" {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (max_fence, acked, repeated, events)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let (old, new) = cluster.pause_master_of_slot(slot).await;
    println!("paused {old}, {new} promoted after {:?}", t.elapsed());
    cluster.resume(old);
    cluster.wait_settled("resumed master demoted").await;
    println!("resumed {old}, settled after {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let (max_fence, acked, repeated, events) = worker.await.expect("worker");
    let final_fence: u64 = cluster
        .query(
            new,
            redis::cmd("GET").arg(format!("rdlock:{{{tag}}}:fence")),
        )
        .await;
    for e in &events {
        println!("  {e}");
    }
    println!(
        "acked {acked} scripts; {repeated} acked fences were not above an earlier acked \
         one (repeated tokens); largest acked fence {max_fence}, on the cluster now \
         {final_fence}"
    );
}
