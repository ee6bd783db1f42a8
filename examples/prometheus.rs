//! rdlock's metrics (feature `metrics`) exported in the Prometheus text format: two
//! workers contend for one lock, a third gives up after 300 ms, and the metrics are
//! printed as a Prometheus server would scrape them. A real service would serve
//! `handle.render()` on `/metrics` (or use the exporter's HTTP listener).
//!
//! Run with: `cargo run --example prometheus --features metrics` (Redis at
//! `REDIS_URL`, default `redis://127.0.0.1:6379`).

use std::error::Error;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use rdlock::RdLockConnectionManager;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Histograms as summaries by default; buckets make them Prometheus histograms.
    let handle = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0])?
        .install_recorder()?;

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let manager = RdLockConnectionManager::new(url).await?;
    let lock = manager
        .new_lock("prometheus-example")
        .with_lease(Duration::from_secs(1))
        .with_metrics_name("example");

    let workers: Vec<_> = (0..2)
        .map(|_| {
            let lock = lock.clone();
            tokio::spawn(async move {
                // `async` so that the sleep starts with the job, not at spawn.
                lock.run(async { tokio::time::sleep(Duration::from_millis(700)).await })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let impatient = lock.lock_timeout(Duration::from_millis(300)).await;
    println!("# the impatient worker: {:?}\n", impatient.map(|_| ()));
    for worker in workers {
        worker.await??;
    }
    manager.shutdown().await?;

    print!("{}", handle.render());
    Ok(())
}
