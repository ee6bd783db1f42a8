//! A clean exit: guards dropped right before the end are released in the background,
//! and `shutdown()` waits for those releases (and releases any guard still alive), so
//! no lock key is left behind in Redis.
//!
//! Run with: `cargo run --example shutdown` (Redis at `REDIS_URL`, default
//! `redis://127.0.0.1:6379`).

use std::error::Error;

use rdlock::RdLockConnectionManager;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let manager = RdLockConnectionManager::new(url).await?;

    let mut guards = Vec::new();
    for i in 0..10 {
        guards.push(
            manager
                .new_lock(&format!("shutdown-demo-{i}"))
                .lock()
                .await?,
        );
    }
    let still_alive = manager.new_lock("shutdown-demo-alive").lock().await?;
    println!("holding {} locks", guards.len() + 1);

    drop(guards); // releases are now in flight
    manager.shutdown().await?; // waits for them, and releases `still_alive`
    println!(
        "after shutdown, the live guard is held: {}",
        still_alive.is_held()
    );

    let mut conn = manager.get_connection_manager();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("rdlock:{shutdown-demo-*}:lock")
        .query_async(&mut conn)
        .await?;
    println!("lock keys left in Redis: {}", left.len());
    Ok(())
}
