//! "Lock ID" from the rdlock 1.x documentation: the documented statements, unchanged,
//! wrapped in `main`; both "machines" connect to `REDIS_URL` (default
//! `redis://127.0.0.1:6379`) instead of `"<redis remote url>"`. It only creates the
//! locks (nothing is acquired) and prints nothing.
//!
//! Run with: `cargo run --example lock_id`

// The documented fragment creates locks without using them.
#![allow(unused_variables)]

use rdlock::RdLockConnectionManager;

#[tokio::main]
async fn main() {
    // Machine A
    let machine_a_manager = RdLockConnectionManager::new(redis_url()).await.unwrap();

    // Targets the same lock as `machine_b_dog_lock`
    let machine_a_dog_lock = machine_a_manager.new_basic_lock("dog", 3600);
    // Targets the same lock as `machine_b_cat_lock`
    let machine_a_cat_lock = machine_a_manager.new_basic_lock("cat", 3600);

    // Machine B
    let machine_b_manager = RdLockConnectionManager::new(redis_url()).await.unwrap();

    // Targets the same lock as `machine_a_dog_lock`
    let machine_b_dog_lock = machine_b_manager.new_basic_lock("dog", 3600);
    // Targets the same lock as `machine_a_cat_lock`
    let machine_b_cat_lock = machine_b_manager.new_basic_lock("cat", 3600);
}

/// The one change to the documented example: the URL of the Redis server.
fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}
