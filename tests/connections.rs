//! A manager uses two Redis connections, whatever the number of locks and waiters.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rdlock::RdLockConnectionManager;
use support::{connected_clients, wait_until, RedisServer};

#[tokio::test]
async fn two_hundred_waiters_on_twenty_keys_use_two_connections() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let baseline = connected_clients(&mut raw).await; // our own connection
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let waiters = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut guards = Vec::new();
    for k in 0..20 {
        guards.push(holder.new_lock(&format!("key-{k}")).lock().await.unwrap());
    }
    let mut tasks = Vec::new();
    for w in 0..200 {
        let lock = Arc::new(waiters.new_lock(&format!("key-{}", w % 20)));
        tasks.push(tokio::spawn(async move {
            let g = lock.lock().await.unwrap();
            g.release().await.unwrap();
        }));
    }
    // Every key's release channel has exactly one subscriber from the waiting manager.
    wait_until(Duration::from_secs(10), "all 20 keys subscribed", || {
        let mut raw = raw.clone();
        async move {
            let mut cmd = redis::cmd("PUBSUB");
            cmd.arg("NUMSUB");
            for k in 0..20 {
                cmd.arg(format!("rdlock:{{key-{k}}}:release"));
            }
            let counts: Vec<(String, i64)> = cmd.query_async(&mut raw).await.unwrap();
            counts.iter().all(|(_, n)| *n == 1)
        }
    })
    .await;
    let clients = connected_clients(&mut raw).await - baseline;
    assert_eq!(clients, 4, "two managers, two connections each");
    drop(guards);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(connected_clients(&mut raw).await - baseline, 4);
}
