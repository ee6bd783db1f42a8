//! rdlock on a Redis Cluster: three workers contend for each of a few locks (whose
//! keys land on different shards), one at a time per lock, and print the fencing token
//! and the shard-independent holder record of each acquisition.
//!
//! Run with (any one reachable node is enough; list a few in case one is down):
//!
//! ```text
//! REDIS_CLUSTER_NODES=redis://127.0.0.1:7000,redis://127.0.0.1:7001 \
//!     cargo run --example cluster
//! ```

use std::error::Error;
use std::time::Duration;

use rdlock::RdLockConnectionManager;

// `pub`: tests/cluster.rs runs this very file against its test cluster.
#[tokio::main]
pub async fn main() -> Result<(), Box<dyn Error>> {
    let nodes =
        std::env::var("REDIS_CLUSTER_NODES").unwrap_or_else(|_| "redis://127.0.0.1:7000".into());
    let nodes: Vec<String> = nodes.split(',').map(|n| n.trim().to_owned()).collect();
    let manager = RdLockConnectionManager::builder()
        .response_timeout(Duration::from_secs(1))
        .cluster(nodes)
        .await?;
    println!("connected: {manager:?}");

    let mut workers = Vec::new();
    for id in ["invoices", "reports", "emails"] {
        for n in 1..=3 {
            let manager = manager.clone();
            workers.push(tokio::spawn(async move {
                let lock = manager.new_lock(id).with_lease(Duration::from_secs(5));
                let guard = lock.lock_timeout(Duration::from_secs(30)).await?;
                let holder = lock.holder().await?;
                println!(
                    "{id}: worker {n} holds it, fencing token {} (holder record: {:?})",
                    guard.fencing_token(),
                    holder.map(|h| h.fencing_token)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
                guard.release().await?;
                Ok::<_, rdlock::RdLockError>(())
            }));
        }
    }
    for worker in workers {
        worker.await??;
    }
    manager.shutdown().await?;
    Ok(())
}
