//! `rdlock exec --max-hold` and `--on-suspect` against a private
//! redis-server, running the real binary.
#![cfg(feature = "cli")]

mod cli_support;
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cli_support::{
    code, rdlock, rdlock_at, read, run, stderr, wait_child, wait_for_file, Captured, PROMPTLY,
};
use support::proxy::{FaultProxy, Mode};
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

/// `--on-suspect signal`: a blackhole between rdlock and Redis makes the lease suspect
/// at the first renewal that goes unanswered; the command gets `--suspect-signal`
/// (USR2 here), once; the partition heals, the lease is confirmed again before its
/// deadline, and the command finishes normally (exit 0: the lease was never lost).
// Multi-threaded: the proxy's tasks must go on forwarding while this test blocks in
// `wait_child`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_suspect_signal_sends_the_signal_when_the_lease_turns_suspect() {
    let server = RedisServer::start();
    let proxy = FaultProxy::to_port(server.port()).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let stop = dir.path().join("stop");
    let script = format!(
        "trap 'echo suspect >> {0}' USR2; echo ready >> {0}; while [ ! -e {1} ]; do sleep 0.05; done; echo done >> {0}",
        log.display(),
        stop.display()
    );
    // Renewals every 3 s; the first one that meets the blackhole times out after the
    // default 2 s response timeout (suspect); the deadline is ~9 s after the last
    // confirmed renewal.
    let mut child = rdlock_at(
        &proxy.url(),
        &[
            "exec",
            "suspected",
            "--lease",
            "9s",
            "--on-suspect",
            "signal",
            "--suspect-signal",
            "usr2",
            "--",
            "sh",
            "-c",
            &script,
        ],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let said = Captured::start(child.stderr.take().unwrap());
    wait_for_file(&log, "ready").await;
    let started = Instant::now();
    proxy.set(Mode::Blackhole);
    wait_for_file(&log, "suspect").await;
    println!("signalled {:?} after the blackhole", started.elapsed());
    proxy.set(Mode::Pass);
    // A renewal every ~0.5 s once suspect: confirmed again well within the deadline.
    support::wait_until(Duration::from_secs(10), "the lease confirmed again", || {
        let text = said.text();
        async move { text.contains("confirmed again") }
    })
    .await;
    println!("confirmed {:?} after the blackhole", started.elapsed());
    let mut raw = server.conn().await;
    assert!(get(&mut raw, "rdlock:{suspected}:lock").await.is_some());
    std::fs::write(&stop, "").unwrap();
    assert_eq!(
        wait_child(&mut child, PROMPTLY),
        0,
        "the lease was never lost"
    );
    let text = read(&log);
    assert_eq!(
        text.matches("suspect").count(),
        1,
        "one signal per suspect episode: {text}"
    );
    assert!(text.contains("done"));
    assert!(!said.text().contains("lost"), "{}", said.text());
    assert_eq!(
        get(&mut raw, "rdlock:{suspected}:lock").await,
        None,
        "released: {}",
        said.text()
    );
}

#[tokio::test]
async fn a_bad_suspect_signal_is_a_usage_error() {
    let server = RedisServer::start();
    for bad in ["NOPE", "KILL", "999"] {
        let output = run(
            &server,
            &[
                "exec",
                "bad",
                "--on-suspect",
                "signal",
                "--suspect-signal",
                bad,
                "--",
                "true",
            ],
        );
        assert_eq!(
            code(&output),
            64,
            "--suspect-signal {bad}: {}",
            stderr(&output)
        );
    }
}
