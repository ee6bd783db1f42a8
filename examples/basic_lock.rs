//! "Example with a basic lock" from the rdlock 1.x documentation, unchanged except
//! that the URL comes from `REDIS_URL` (default `redis://127.0.0.1:6379`).
//!
//! Run with: `cargo run --example basic_lock`

use rdlock::RdLockConnectionManager;
use std::time::Duration;

async fn do_work(manager: RdLockConnectionManager) {
    println!("Started thread");
    let mut basic_lock = manager.new_basic_lock("my_lock", 3600);

    basic_lock.lock().await.unwrap();
    println!("Acquired lock");

    // Do stuff
    tokio::time::sleep(Duration::from_secs(5)).await;

    println!("Releasing lock");
    basic_lock.release().await.unwrap();
}

#[tokio::main]
pub async fn main() {
    let manager = RdLockConnectionManager::new(redis_url()).await.unwrap();

    // Both machines will use the same `lock_id`, so they will target the same lock.

    // This is clone safe
    let manager_clone = manager.clone();
    let h1 = tokio::spawn(async move { do_work(manager_clone).await });

    let manager_clone = manager.clone();
    let h2 = tokio::spawn(async move { do_work(manager_clone).await });

    let _ = h1.await;
    let _ = h2.await;
}

/// The one change to the documented example: the URL of the Redis server.
fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}
