//! A job three times longer than its lease, kept alive by the watchdog, that stops
//! cleanly if the lease is lost. `Lock::run` polls the job only while the lease is held
//! and drops it at once if the lease goes.
//!
//! Run with: `cargo run --example long_job` (Redis at `REDIS_URL`, default
//! `redis://127.0.0.1:6379`). To see the lease-lost path, delete the key while it runs:
//! `redis-cli del 'rdlock:{long-job}:lock'`.

use std::error::Error;
use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};

const LEASE: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let manager = RdLockConnectionManager::new(url).await?;
    let lock = manager.new_lock("long-job").with_lease(LEASE);

    let started = Instant::now();
    let job = async {
        for step in 1..=6 {
            tokio::time::sleep(Duration::from_secs(1)).await; // one unit of work
            println!("step {step}/6 done at {:?}", started.elapsed());
        }
        "report written"
    };
    match lock.run(job).await {
        Ok(outcome) => println!(
            "{outcome} in {:?} with a {LEASE:?} lease",
            started.elapsed()
        ),
        Err(RdLockError::LeaseLost) => {
            println!(
                "lease lost after {:?}: the job was stopped",
                started.elapsed()
            );
        }
        Err(e) => return Err(e.into()),
    }
    manager.shutdown().await?;
    Ok(())
}
