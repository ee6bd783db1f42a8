//! The `rdlock` binary against private redis-servers.
#![cfg(feature = "cli")]

mod cli_support;
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::{
    code, rdlock, read, run, stderr, wait_child, wait_for_file, Captured, Terminal, PROMPTLY,
    RDLOCK,
};
use rdlock::RdLockConnectionManager;
use support::{get, RedisServer};

#[tokio::test]
async fn two_execs_of_one_id_run_one_after_the_other() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "echo start $(date +%s%N) >> {0}; sleep 0.3; echo end $(date +%s%N) >> {0}",
        log.display()
    );
    let children: Vec<Child> = (0..3)
        .map(|_| {
            rdlock(&server, &["exec", "job", "--", "sh", "-c", &script])
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert_eq!(wait_child(&mut child, Duration::from_secs(60)), 0);
    }
    let text = read(&log);
    let stamps: Vec<(String, u128)> = text
        .lines()
        .map(|l| {
            let (what, at) = l.split_once(' ').unwrap();
            (what.to_owned(), at.parse().unwrap())
        })
        .collect();
    assert_eq!(stamps.len(), 6, "{text}");
    for pair in stamps.chunks(2) {
        assert_eq!(
            (pair[0].0.as_str(), pair[1].0.as_str()),
            ("start", "end"),
            "overlap:\n{text}"
        );
        assert!(pair[0].1 < pair[1].1);
    }
}

#[tokio::test]
async fn the_command_gets_the_lock_id_and_fencing_token_and_its_exit_code_is_passed_on() {
    let server = RedisServer::start();
    let out = run(
        &server,
        &[
            "exec",
            "env-job",
            "--",
            "sh",
            "-c",
            "echo $RDLOCK_ID $RDLOCK_FENCING_TOKEN; exit 3",
        ],
    );
    assert_eq!(code(&out), 3);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "env-job 1");
    let out = run(
        &server,
        &[
            "exec",
            "env-job",
            "--",
            "sh",
            "-c",
            "echo $RDLOCK_FENCING_TOKEN",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    let out = run(&server, &["exec", "env-job", "--", "/nonexistent/command"]);
    assert_eq!(code(&out), 127);
    // The lock was released each time.
    let mut raw = server.conn().await;
    assert_eq!(get(&mut raw, "rdlock:{env-job}:lock").await, None);
}

#[tokio::test]
async fn no_wait_and_wait_give_up_with_their_exit_code_while_held() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let _held = manager
        .new_lock("busy")
        .with_label("the test")
        .lock()
        .await
        .unwrap();
    let started = Instant::now();
    let out = run(&server, &["exec", "busy", "--no-wait", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    // At once: a broken --no-wait would wait for the test's lease, renewed forever.
    assert!(started.elapsed() < PROMPTLY);
    assert!(
        stderr(&out).contains("the test"),
        "says who holds it: {}",
        stderr(&out)
    );
    let started = Instant::now();
    let out = run(&server, &["exec", "busy", "--wait", "500ms", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(started.elapsed() >= Duration::from_millis(500));
    // Not a terminal: one log line per state change, not a line a second.
    let waiting = stderr(&out).matches("waiting for busy").count();
    assert_eq!(waiting, 1, "{}", stderr(&out));
}

#[tokio::test]
async fn a_stolen_lock_makes_exec_stop_its_command_and_exit_lease_lost() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "trap 'echo term >> {0}; exit 0' TERM; echo ready >> {0}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut child = rdlock(
        &server,
        &["exec", "stolen", "--lease", "3s", "--", "sh", "-c", &script],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_for_file(&log, "ready").await;
    let _: () = redis::cmd("SET")
        .arg("rdlock:{stolen}:lock")
        .arg("thief")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(wait_child(&mut child, PROMPTLY), 79);
    assert!(read(&log).contains("term"), "the command got SIGTERM");
    assert_eq!(
        get(&mut raw, "rdlock:{stolen}:lock").await.as_deref(),
        Some("thief")
    );
}

#[tokio::test]
async fn a_command_ignoring_sigterm_is_killed_after_the_grace_period() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "trap '' TERM; echo ready >> {0}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut child = rdlock(
        &server,
        &[
            "exec", "stubborn", "--lease", "3s", "--grace", "500ms", "--", "sh", "-c", &script,
        ],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_for_file(&log, "ready").await;
    let _: () = redis::cmd("DEL")
        .arg("rdlock:{stubborn}:lock")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(wait_child(&mut child, PROMPTLY), 79);
}

#[tokio::test]
async fn sigterm_to_rdlock_reaches_the_command_and_the_lock_is_released() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "trap 'echo term >> {0}; exit 0' TERM; echo ready >> {0}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut child = rdlock(&server, &["exec", "stopped", "--", "sh", "-c", &script])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_file(&log, "ready").await;
    assert!(get(&mut raw, "rdlock:{stopped}:lock").await.is_some());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        wait_child(&mut child, PROMPTLY),
        0,
        "the command's own exit code"
    );
    assert!(read(&log).contains("term"));
    assert_eq!(
        get(&mut raw, "rdlock:{stopped}:lock").await,
        None,
        "released after the command"
    );
}

#[tokio::test]
async fn status_shows_the_holder() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let out = run(&server, &["status", "report", "--json"]);
    assert_eq!(code(&out), 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"id":"report","key":"rdlock:{report}:lock","held":false,"holder":null,"last_fencing_token":0}"#
    );
    let script = format!("echo ready >> {}; sleep 30", log.display());
    let mut child = rdlock(
        &server,
        &[
            "exec",
            "report",
            "--label",
            "monthly \"report\"",
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
    let out = run(&server, &["status", "report", "--json"]);
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(json.contains(r#""held":true"#), "{json}");
    assert!(json.contains(r#""label":"monthly \"report\"""#), "{json}");
    assert!(json.contains(&format!(r#""pid":{}"#, child.id())), "{json}");
    assert!(json.contains(r#""fencing_token":1"#), "{json}");
    assert!(json.contains(r#""last_fencing_token":1"#), "{json}");
    let text = String::from_utf8_lossy(&run(&server, &["status", "report"]).stdout).into_owned();
    assert!(text.starts_with("report: held by pid"), "{text}");
    cli_support::signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
    wait_child(&mut child, PROMPTLY);
}

#[tokio::test]
async fn force_release_deletes_the_lock_with_yes_and_refuses_without_a_terminal() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = manager
        .new_lock("stale")
        .with_lease(Duration::from_secs(5))
        .lock()
        .await
        .unwrap();
    let out = run(&server, &["release", "stale", "--force"]);
    assert_eq!(code(&out), 64, "no confirmation possible: {}", stderr(&out));
    assert!(get(&mut raw, "rdlock:{stale}:lock").await.is_some());
    let out = run(&server, &["release", "stale"]);
    assert_eq!(code(&out), 64, "--force is required");
    let out = run(&server, &["release", "stale", "--force", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(get(&mut raw, "rdlock:{stale}:lock").await, None);
    tokio::time::timeout(PROMPTLY, guard.lost()).await.unwrap();
}

#[tokio::test]
async fn bad_usage_and_unreachable_redis_have_their_exit_codes() {
    let server = RedisServer::start();
    for args in [
        &["exec", "x", "--lease", "30", "--", "true"][..],
        &["exec", "x", "--lease", "1.5s", "--", "true"],
        &["exec", "x", "--wait", "soon", "--", "true"],
        &["exec", "x", "--lease", "0s", "--", "true"],
        &["exec", "x", "--no-wait", "--wait", "1s", "--", "true"],
        &["exec", "x"],
        &["exec", "", "--", "true"],
        &["frobnicate"],
    ] {
        let out = run(&server, args);
        assert_eq!(code(&out), 64, "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty(), "{args:?} printed no message");
    }
    let out = Command::new(RDLOCK)
        .args(["--url", "http://nowhere", "status", "x"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(stderr(&out).contains("invalid redis connection parameters"));
    let port = support::free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let out = Command::new(RDLOCK)
        .args(["--url", &url, "exec", "x", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    // REDIS_URL is the default URL.
    let out = Command::new(RDLOCK)
        .env("REDIS_URL", server.url())
        .args(["status", "x"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// On a terminal, waiting shows who holds the lock on one line rewritten in place
/// (`script` from util-linux gives rdlock a pseudo-terminal).
#[tokio::test]
async fn on_a_terminal_the_wait_is_one_line_updated_in_place() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let _held = manager
        .new_lock("tty")
        .with_label("the holder")
        .lock()
        .await
        .unwrap();
    let command = format!("{RDLOCK} --url {} exec tty --wait 4s -- true", server.url());
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let updates = text
        .matches("\r\x1b[2Krdlock: waiting for tty: held by")
        .count();
    assert!(updates >= 2, "one line, rewritten each second: {text:?}");
    assert!(text.contains("the holder"), "{text:?}");
    assert_eq!(code(&out), 75, "{text:?}");
}

/// `release --force` on a terminal asks about the holder it shows, and deletes the lock
/// only if that holder still has it: not whoever took the lock while the question was
/// on the screen.
#[tokio::test]
async fn force_release_deletes_only_the_holder_it_asked_about() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let first = manager
        .new_lock("handover")
        .with_label("holder A")
        .lock()
        .await
        .unwrap();
    let mut terminal = Terminal::run(&format!(
        "exec {RDLOCK} --url {} release --force handover",
        server.url()
    ));
    terminal.output.wait_for("[y/N]");
    let asked = terminal.output.text();
    assert!(
        asked.contains("holder A") && asked.contains("fencing token 1"),
        "{asked:?}"
    );
    // While the question is on the screen, A releases and B takes the lock.
    first.release().await.unwrap();
    let second = manager
        .new_lock("handover")
        .with_label("holder B")
        .lock()
        .await
        .unwrap();
    assert_eq!(second.fencing_token(), 2);
    let owner = get(&mut raw, "rdlock:{handover}:lock").await;
    terminal.type_in(b"y\n");
    let exit = terminal.wait();
    let text = terminal.output.text();
    assert_eq!(exit, 1, "not released: {text:?}");
    assert!(text.contains("holder B"), "says who has it now: {text:?}");
    assert_eq!(
        get(&mut raw, "rdlock:{handover}:lock").await,
        owner,
        "B's lock is untouched"
    );
    assert!(second.is_held());
    // Asked again, about B this time: yes deletes it.
    let mut terminal = Terminal::run(&format!(
        "exec {RDLOCK} --url {} release --force handover",
        server.url()
    ));
    terminal.output.wait_for("[y/N]");
    terminal.type_in(b"y\n");
    assert_eq!(terminal.wait(), 0, "{:?}", terminal.output.text());
    assert_eq!(get(&mut raw, "rdlock:{handover}:lock").await, None);
}

/// `release --force --fence N` (for scripts, after `status --json`): only the
/// acquisition with that fencing token is deleted.
#[tokio::test]
async fn force_release_with_a_fence_deletes_only_that_acquisition() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let first = manager.new_lock("fenced").lock().await.unwrap();
    first.release().await.unwrap();
    let _second = manager.new_lock("fenced").lock().await.unwrap();
    let out = run(
        &server,
        &["release", "fenced", "--force", "--fence", "1", "--yes"],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("fencing token 2"), "{}", stderr(&out));
    assert!(get(&mut raw, "rdlock:{fenced}:lock").await.is_some());
    let out = run(
        &server,
        &["release", "fenced", "--force", "--fence", "2", "--yes"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(get(&mut raw, "rdlock:{fenced}:lock").await, None);
    // Free: nothing to delete, whatever the fence.
    let out = run(
        &server,
        &["release", "fenced", "--force", "--fence", "2", "--yes"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not held"));
}

/// Redis dying while `exec --wait` waits is "unreachable" (69), not "busy" (75): a cron
/// wrapper can tell them apart.
#[tokio::test]
async fn redis_dying_during_a_wait_exits_unreachable() {
    let mut server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let _held = manager.new_lock("down").lock().await.unwrap();
    let mut child = rdlock(&server, &["exec", "down", "--wait", "6s", "--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Captured::start(child.stderr.take().unwrap());
    log.wait_for("waiting for down");
    server.stop();
    assert_eq!(wait_child(&mut child, PROMPTLY), 69, "{}", log.text());
    assert!(log.text().contains("unreachable"), "{}", log.text());
}

/// `--conflict-exit-code N` (as `flock -E N`): the code for "not obtained", so that it
/// cannot be mistaken for the command's own 75.
#[tokio::test]
async fn the_conflict_exit_code_can_be_chosen() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let _held = manager.new_lock("taken").lock().await.unwrap();
    let out = run(
        &server,
        &[
            "exec",
            "taken",
            "--no-wait",
            "--conflict-exit-code",
            "3",
            "--",
            "true",
        ],
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let out = run(
        &server,
        &["exec", "taken", "--wait", "200ms", "-E", "0", "--", "false"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(
        &server,
        &["exec", "free", "-E", "3", "--", "sh", "-c", "exit 75"],
    );
    assert_eq!(code(&out), 75, "the command's own code is passed on");
    let out = run(&server, &["exec", "x", "-E", "256", "--", "true"]);
    assert_eq!(code(&out), 64, "{}", stderr(&out));
}
