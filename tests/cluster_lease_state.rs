//! The three-state lease on Redis Cluster: a master that hangs (SIGSTOP) under a held
//! lock makes renewals time out, which rebuilds the cluster connection (a new
//! generation) and makes the guard suspect; once the master resumes (before any
//! failover: a long node timeout), a renewal confirms the token and the guard is held
//! again.

mod support;

use std::time::{Duration, Instant};

use rdlock::{LeaseState, RdLockConnectionManager};
use support::cluster::{lock_slot, ClusterConfig, RedisCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_master_makes_a_guard_suspect_until_it_answers_again() {
    let mut cluster = RedisCluster::start_with(ClusterConfig {
        masters: 3,
        replicas_per_master: 0,
        // No failover while the master is paused: this test is about the way back.
        node_timeout_ms: 30_000,
        args: Vec::new(),
    })
    .await;
    let manager = RdLockConnectionManager::builder()
        .response_timeout(Duration::from_millis(500))
        .cluster(cluster.urls())
        .await
        .unwrap();
    let lock = manager
        .new_lock("cluster-suspect")
        .with_lease(Duration::from_secs(6));
    let guard = lock.lock().await.unwrap();
    assert_eq!(guard.state(), LeaseState::Held);

    let master = cluster.master_of_slot(lock_slot("cluster-suspect")).await;
    let paused = Instant::now();
    cluster.pause(master);
    let suspect = tokio::time::timeout(Duration::from_secs(10), guard.suspect()).await;
    let state = guard.state();
    let held = guard.is_held();
    cluster.resume(master);
    println!("suspect {:?} after the pause ({state:?})", paused.elapsed());
    assert!(
        suspect.is_ok(),
        "suspect() did not complete within 10 s of the pause"
    );
    assert_eq!(state, LeaseState::Suspect);
    assert!(held, "suspect, not lost");

    support::wait_until(
        Duration::from_secs(15),
        "the guard is held again",
        || async { guard.state() == LeaseState::Held },
    )
    .await;
    println!("held again {:?} after the pause", paused.elapsed());
    assert_eq!(guard.loss_cause(), None);
    guard.release().await.unwrap();
}
