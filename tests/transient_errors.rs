//! Server errors that say "retry later" — `LOADING`, `BUSY`, `READONLY`, `MASTERDOWN` —
//! are waited through by `lock()`, reported as `Unreachable` by `try_lock()`, and
//! retried by the watchdog until its local deadline (issue 16, item 5).

mod support;

use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::{get, wait_until, RedisServer, ServerConfig};

/// A server that takes about two seconds to load 20 000 keys, and answers `-LOADING`
/// meanwhile.
fn slow_loading_server() -> RedisServer {
    RedisServer::start_with(ServerConfig {
        keyspace_events: None,
        args: [
            "--key-load-delay",
            "50",
            "--loading-process-events-interval-bytes",
            "1024",
        ]
        .map(String::from)
        .to_vec(),
    })
}

async fn populate_and_save(raw: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(20_000)
        .query_async(raw)
        .await
        .unwrap();
    let _: () = redis::cmd("SAVE").query_async(raw).await.unwrap();
}

fn cause_code(e: &RdLockError) -> Option<String> {
    match e {
        RdLockError::Unreachable(cause) | RdLockError::RedisError(cause) => {
            cause.code().map(str::to_owned)
        }
        _ => None,
    }
}

/// The reproduction: a restarted server loading its dataset made a waiting
/// `lock_timeout(20 s)` fail with `BusyLoading` after 69 ms.
#[tokio::test]
async fn lock_waits_while_the_server_loads_its_dataset() {
    let mut server = slow_loading_server();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("loading");
    lock.try_lock().await.unwrap().release().await.unwrap();
    populate_and_save(&mut server.conn().await).await;
    server.stop();
    server.start_again_loading();
    let restarted = Instant::now();

    // try_lock: a retryable error, at once, whose cause says LOADING (once the
    // manager has reconnected: the first tries may find the old connection dead).
    let mut saw_loading = false;
    while !saw_loading && server.ping_reply().unwrap().starts_with("LOADING") {
        let err = lock.try_lock().await.expect_err("no lock while loading");
        assert!(err.is_connection_error(), "{err:?}");
        saw_loading = cause_code(&err).as_deref() == Some("LOADING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        saw_loading,
        "the server was done loading before try_lock saw it"
    );

    // lock(): waits through LOADING and gets the lock once the server serves again.
    let guard = lock
        .lock_timeout(Duration::from_secs(20))
        .await
        .expect("lock_timeout waits through LOADING");
    println!("acquired {:?} after the restart", restarted.elapsed());
    assert_eq!(server.ping_reply().as_deref(), Some("PONG"));
    assert!(guard.is_held());
    guard.release().await.unwrap();
}

/// A guard whose key was saved survives a restart that loads for about two seconds
/// (lease 20 s):
/// the watchdog retries through the refused connections and `LOADING` and renews as
/// soon as the server serves, within its lease.
#[tokio::test]
async fn the_watchdog_renews_through_loading() {
    let mut server = slow_loading_server();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager
        .new_lock("renewed")
        .with_lease(Duration::from_secs(20));
    let guard = lock.lock().await.unwrap();
    populate_and_save(&mut server.conn().await).await;
    server.stop();
    server.start_again_loading();
    assert!(server.ping_reply().unwrap().starts_with("LOADING"));
    let mut raw = loop {
        if server.ping_reply().as_deref() == Some("PONG") {
            break server.conn().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let loaded_pttl: i64 = redis::cmd("PTTL")
        .arg(lock.key())
        .query_async(&mut raw)
        .await
        .unwrap();
    // Renewed within a retry interval (lease / 10, at most 500 ms) of the end of
    // loading; without renewals the PTTL only goes down.
    let key = lock.key().to_owned();
    wait_until(Duration::from_secs(10), "a renewal after loading", || {
        let (mut raw, key) = (raw.clone(), key.clone());
        async move {
            let pttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut raw)
                .await
                .unwrap();
            pttl > loaded_pttl + 500
        }
    })
    .await;
    println!("PTTL {loaded_pttl} ms after loading, then renewed");
    assert!(guard.is_held());
    assert!(get(&mut raw, lock.key()).await.is_some());
    guard.release().await.unwrap();
}

/// `BUSY`: a script of someone else's runs past `busy-reply-threshold`.
#[tokio::test]
async fn lock_waits_while_a_script_keeps_the_server_busy() {
    let server = RedisServer::start_with(ServerConfig {
        keyspace_events: None,
        args: ["--lua-time-limit", "50"].map(String::from).to_vec(),
    });
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("busy");
    lock.try_lock().await.unwrap().release().await.unwrap();
    let mut hog = server.conn().await;
    let busy = tokio::spawn(async move {
        redis::cmd("EVAL")
            .arg("while true do end")
            .arg(0)
            .query_async::<()>(&mut hog)
            .await
    });
    wait_until(Duration::from_secs(10), "the server answers BUSY", || {
        let reply = server.ping_reply();
        async move { reply.is_some_and(|r| r.starts_with("BUSY")) }
    })
    .await;
    let err = lock.try_lock().await.expect_err("no lock while busy");
    assert!(err.is_connection_error(), "{err:?}");
    assert_eq!(cause_code(&err).as_deref(), Some("BUSY"), "{err:?}");

    let killer = {
        let client = server.client();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            // A fresh connection: the shared ones may be queued behind the script.
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            redis::cmd("SCRIPT")
                .arg("KILL")
                .query_async::<()>(&mut conn)
                .await
        })
    };
    let started = Instant::now();
    let guard = lock
        .lock_timeout(Duration::from_secs(10))
        .await
        .expect("lock_timeout waits through BUSY");
    println!("acquired {:?} after BUSY began", started.elapsed());
    assert!(started.elapsed() >= Duration::from_millis(300));
    killer.await.unwrap().unwrap();
    assert!(busy.await.unwrap().is_err(), "the script was killed");
    guard.release().await.unwrap();
}

/// `READONLY` and `MASTERDOWN`: the server was demoted to a replica (a failover), then
/// promoted again.
#[tokio::test]
async fn lock_waits_while_the_server_is_a_replica() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    for (stale, code) in [("yes", "READONLY"), ("no", "MASTERDOWN")] {
        let lock = manager.new_lock(code);
        lock.try_lock().await.unwrap().release().await.unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("replica-serve-stale-data")
            .arg(stale)
            .query_async(&mut raw)
            .await
            .unwrap();
        // A master that does not exist: the link stays down.
        let _: () = redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(support::free_port())
            .query_async(&mut raw)
            .await
            .unwrap();
        let err = lock.try_lock().await.expect_err("no lock on a replica");
        assert!(err.is_connection_error(), "{err:?}");
        assert_eq!(cause_code(&err).as_deref(), Some(code), "{err:?}");

        let promote = {
            let mut raw = raw.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                redis::cmd("REPLICAOF")
                    .arg("NO")
                    .arg("ONE")
                    .query_async::<()>(&mut raw)
                    .await
            })
        };
        let started = Instant::now();
        let guard = lock
            .lock_timeout(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("lock_timeout waits through {code}: {e:?}"));
        println!(
            "{code}: acquired {:?} after the demotion",
            started.elapsed()
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        promote.await.unwrap().unwrap();
        guard.release().await.unwrap();
    }
}
