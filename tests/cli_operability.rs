//! `rdlock exec --max-hold` (and the lease-state options) against a private
//! redis-server, running the real binary.
#![cfg(feature = "cli")]

mod cli_support;
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cli_support::{code, rdlock, read, run, stderr, wait_child, wait_for_file, PROMPTLY};
use support::{get, RedisServer};

/// A command that outlives `--max-hold`: the lease runs out (at most `--lease` after
/// the maximum hold), the command gets SIGTERM (`--on-lost term`), rdlock exits 124,
/// and the key is gone.
#[tokio::test]
async fn max_hold_ends_the_command_and_exits_124() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "trap 'echo term >> {0}; exit 0' TERM; echo ready >> {0}; while :; do sleep 0.05; done",
        log.display()
    );
    let started = Instant::now();
    let mut child = rdlock(
        &server,
        &[
            "exec",
            "capped",
            "--lease",
            "1s",
            "--max-hold",
            "1500ms",
            "--",
            "sh",
            "-c",
            &script,
        ],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_for_file(&log, "ready").await;
    assert_eq!(wait_child(&mut child, PROMPTLY), 124);
    let ended = started.elapsed();
    println!("rdlock exited {ended:?} after it started");
    assert!(
        ended >= Duration::from_millis(1500),
        "ended at {ended:?}: before the max hold"
    );
    assert!(read(&log).contains("term"), "the command got SIGTERM");
    support::wait_until(Duration::from_secs(2), "the key expired", || async {
        get(&mut server.conn().await, "rdlock:{capped}:lock")
            .await
            .is_none()
    })
    .await;
    assert_eq!(get(&mut raw, "rdlock:{capped}:lock").await, None);
}

#[tokio::test]
async fn a_bad_max_hold_is_a_usage_error() {
    let server = RedisServer::start();
    for bad in ["0s", "0ms", "100000000h", "soon"] {
        let output = run(&server, &["exec", "bad", "--max-hold", bad, "--", "true"]);
        assert_eq!(code(&output), 64, "--max-hold {bad}: {}", stderr(&output));
    }
}
