//! Self-tests of the Sentinel rig (tests/support/sentinel.rs): the group forms within a
//! bound, and each fault helper leaves the topology it promises.
//!
//! Runs on Redis or on Valkey (`RDLOCK_SERVER_BIN=$(bash .ci/install-valkey)`).

mod support;

use std::time::{Duration, Instant};

use support::sentinel::SentinelGroup;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_forms_fails_over_and_restarts_nodes() {
    let started = Instant::now();
    let mut group = SentinelGroup::start().await;
    assert_eq!(group.master_per_sentinels().await, Some(0));
    assert_eq!(group.role(0).await.as_deref(), Some("master"));
    assert_eq!(group.role(1).await.as_deref(), Some("slave"));
    println!("group ready in {:?}", started.elapsed());

    // Graceful failover: another node becomes master, and the old one a replica.
    group.failover().await;
    let master = group.wait_promoted(0).await;
    let master = {
        let ready = group.wait_ready("every node follows the new master").await;
        assert_eq!(ready, master);
        ready
    };
    assert_eq!(group.role(0).await.as_deref(), Some("slave"));

    // Crash failover, then the old master comes back empty: it is a master (the split
    // brain window) until Sentinel demotes it.
    let killed = Instant::now();
    group.kill(master);
    let promoted = group.wait_promoted(master).await;
    println!(
        "promoted node {promoted} {:?} after the kill",
        killed.elapsed()
    );
    // (Its demotion, ~10 s later, is waited for in tests/sentinel.rs.)
    group.restart_empty(master).await;
    assert_eq!(group.role(master).await.as_deref(), Some("master"));
    let mut conn = group.conn(master).await;
    assert_eq!(support::lock_keys(&mut conn).await, Vec::<String>::new());
    // Restarted as a replica instead, it is linked at once.
    group.restart_as_replica(master, promoted).await;
    // `wait_ready` checks that every running node other than the master is a linked
    // replica of it. On a starved machine the sentinels have been seen to fail over once
    // more meanwhile (CI: the killed node ended up master again), so the master is not
    // asserted to be `promoted`; only that the restarted node is a replica, unless it
    // was promoted again.
    let ready = group
        .wait_ready("the restarted node is a linked replica")
        .await;
    if ready != promoted {
        println!("the sentinels failed over again meanwhile: master is node {ready}");
    }
    if ready != master {
        assert_eq!(group.role(master).await.as_deref(), Some("slave"));
    }

    // Pause and resume.
    let replica = (0..3).find(|&i| i != promoted).unwrap();
    group.pause(replica);
    assert_eq!(group.role(replica).await, None);
    group.resume(replica);
    support::wait_until(
        Duration::from_secs(10),
        "the resumed replica answers",
        || {
            let group = &group;
            async move { group.role(replica).await.is_some() }
        },
    )
    .await;
}
