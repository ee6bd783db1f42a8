//! The rdlock 2 API: three workers contend for one lock. Each holds it for a 5 s job,
//! longer than its 2 s lease (the guard's watchdog renews the lease), and stops early
//! if the lease is lost. The output shows the workers strictly one after another.
//!
//! Run with: `cargo run --example guard` (Redis at `REDIS_URL`, default
//! `redis://127.0.0.1:6379`).

use std::error::Error;
use std::time::Duration;

use rdlock::{RdLockConnectionManager, RdLockError};

const LEASE: Duration = Duration::from_secs(2);
const JOB: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let manager = RdLockConnectionManager::new(url).await?;

    let workers: Vec<_> = (1..=3)
        .map(|n| tokio::spawn(worker(n, manager.clone())))
        .collect();
    for worker in workers {
        worker.await??;
    }
    // Waits for the last background release before the process exits.
    manager.shutdown().await?;
    Ok(())
}

async fn worker(n: u32, manager: RdLockConnectionManager) -> Result<(), RdLockError> {
    let lock = manager.new_lock("report").with_lease(LEASE);
    let guard = lock.lock().await?;
    let fence = guard.fencing_token();
    println!("worker {n} acquired, fencing token {fence}");

    tokio::select! {
        () = tokio::time::sleep(JOB) => {
            println!("worker {n} done after {JOB:?} (lease {LEASE:?}), held: {}", guard.is_held());
        }
        () = guard.lost() => println!("worker {n} lost the lease, job abandoned"),
    }
    drop(guard); // stops the watchdog; the lock is released in the background
    Ok(())
}
