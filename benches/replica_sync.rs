//! The cost of replica sync (`ManagerBuilder::replica_sync`): an uncontended
//! acquire+release cycle with and without `WAIT` for the replicas, on one private
//! redis-server with two replicas, interleaved rounds, in one run.
//!
//! `cargo bench --bench replica_sync` runs it in full; `cargo test --benches` (CI) runs
//! it once, briefly.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use rdlock::RdLockConnectionManager;
use support::{RedisServer, ServerConfig};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, cycles) = if full { (5, 2_000) } else { (1, 20) };
    let primary = RedisServer::start();
    let replicas: Vec<RedisServer> = (0..2)
        .map(|_| {
            RedisServer::start_with(ServerConfig {
                keyspace_events: None,
                args: vec![
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    primary.port().to_string(),
                ],
            })
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for replica in &replicas {
            let raw = replica.conn().await;
            support::wait_until(Duration::from_secs(20), "replica linked", || {
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
        }
        let plain = RdLockConnectionManager::new(primary.url())
            .await
            .expect("manager");
        let synced = RdLockConnectionManager::builder()
            .replica_sync(2, Duration::from_millis(500))
            .connect(primary.url())
            .await
            .expect("synced manager");
        let contenders: [(&str, &RdLockConnectionManager); 2] = [
            ("rdlock", &plain),
            ("rdlock + replica_sync(2, 500 ms)", &synced),
        ];
        let mut means: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
        let mut not_replicated = 0u64;
        for _ in 0..rounds {
            for (i, (_, manager)) in contenders.iter().enumerate() {
                let lock = manager.new_lock("bench-sync");
                let started = Instant::now();
                for _ in 0..cycles {
                    let guard = loop {
                        match lock.try_lock().await {
                            Ok(guard) => break guard,
                            // A replica slower than the WAIT timeout (a busy machine):
                            // counted, and the cycle's time includes the retry.
                            Err(rdlock::RdLockError::NotReplicated { .. }) => not_replicated += 1,
                            Err(e) => panic!("acquire: {e:?}"),
                        }
                    };
                    guard.release().await.expect("release");
                }
                means[i].push(started.elapsed() / u32::try_from(cycles).unwrap_or(1));
            }
        }
        println!("\n## Replica sync: uncontended acquire+release, primary + 2 replicas\n");
        println!("(synced acquisitions retried after NotReplicated: {not_replicated})\n");
        println!("| contender | cycle (median of {rounds} rounds x {cycles}) | vs rdlock |");
        println!("|---|---|---|");
        let base = median(&mut means[0].clone());
        for (i, (name, _)) in contenders.iter().enumerate() {
            let m = median(&mut means[i]);
            println!(
                "| {name} | {} µs | {:.2}x |",
                m.as_micros(),
                m.as_secs_f64() / base.as_secs_f64()
            );
        }
    });
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}
