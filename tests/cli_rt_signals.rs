//! Real-time signals (SIGRTMIN..=SIGRTMAX) sent to `rdlock exec`: their default action
//! would end rdlock while its command runs on with a lock nobody renews, so rdlock
//! forwards them to the command's group like the other signals it handles, and while it
//! still waits for the lock, one ends it with 128+N.
#![cfg(feature = "cli")]

mod cli_support;
mod support;

use std::process::Stdio;
use std::time::Duration;

use cli_support::{rdlock, read, script, wait_child, wait_for_file, PROMPTLY};
use support::{get, RedisServer};

/// Sends the raw signal number `sig` to `pid` (nix's `Signal` has no real-time ones).
fn kill_raw(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { nix::libc::kill(pid as i32, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// The real-time signals the test sends: the first, one inside, and the last.
fn rt_signals() -> [(String, i32); 3] {
    let min = nix::libc::SIGRTMIN();
    let max = nix::libc::SIGRTMAX();
    [
        ("RTMIN".into(), min),
        ("RTMIN3".into(), min + 3),
        ("RTMAX".into(), max),
    ]
}

/// SIGRTMIN, SIGRTMIN+3 and SIGRTMAX sent to rdlock reach the command, once; rdlock
/// exits with the command's code and releases the lock after it.
#[tokio::test]
async fn real_time_signals_reach_the_command() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for (name, sig) in rt_signals() {
        let log = dir.path().join(&name);
        // The trap counts deliveries; the command ends a moment after the first, so that
        // a second (duplicated) delivery would show.
        let command = script(
            dir.path(),
            &format!("{name}.sh"),
            &format!(
                "trap 'echo got-{sig} >> {0}; n=1' {sig}\n\
                 n=0\n\
                 echo ready >> {0}\n\
                 while [ $n = 0 ]; do sleep 0.05; done\n\
                 sleep 0.3\n\
                 exit 0",
                log.display()
            ),
        );
        let child = rdlock(&server, &["exec", &name, "--", "sh", &command])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        runs.push((name, sig, log, child));
    }
    for (name, sig, log, child) in &mut runs {
        wait_for_file(log, "ready").await;
        kill_raw(child.id(), *sig);
        println!("{name} ({sig}): sent to rdlock"); // shown on failure: which signal hung
        let code = wait_child(child, PROMPTLY);
        assert_eq!(code, 0, "{name}: rdlock exits with the command's code");
        let got = read(log).matches(&format!("got-{sig}")).count();
        assert_eq!(got, 1, "{name}: the command got it once");
        let key = format!("rdlock:{{{name}}}:lock");
        assert_eq!(get(&mut raw, &key).await, None, "{name}: released");
    }
}

/// A real-time signal while rdlock still waits for the lock ends it with 128+N; the
/// command never starts.
#[tokio::test]
async fn a_real_time_signal_while_waiting_ends_rdlock() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let held = dir.path().join("held");
    let stop = dir.path().join("stop");
    let holder_script = script(
        dir.path(),
        "holder.sh",
        &format!(
            "echo ready >> {0}\nwhile [ ! -e {1} ]; do sleep 0.05; done",
            held.display(),
            stop.display()
        ),
    );
    let mut holder = rdlock(&server, &["exec", "busy", "--", "sh", &holder_script])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_file(&held, "ready").await;
    let started = dir.path().join("started");
    for (name, sig) in rt_signals() {
        let mut waiter = rdlock(
            &server,
            &[
                "exec",
                "busy",
                "--",
                "touch",
                &started.display().to_string(),
            ],
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        // Time to install its handlers and start waiting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        kill_raw(waiter.id(), sig);
        let code = wait_child(&mut waiter, PROMPTLY);
        assert_eq!(code, 128 + sig, "{name}: rdlock ends with 128+N");
        assert!(!started.exists(), "{name}: the command did not start");
    }
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_child(&mut holder, PROMPTLY), 0);
}

/// A command that a forwarded real-time signal ends (no trap: the default action) is
/// seen to end: rdlock exits with 128+N and releases the lock, instead of waiting on
/// forever for a leader whose status was lost.
#[tokio::test]
async fn a_command_ended_by_a_real_time_signal_ends_rdlock() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    for (name, sig) in rt_signals() {
        let log = dir.path().join(format!("plain-{name}"));
        let command = script(
            dir.path(),
            &format!("plain-{name}.sh"),
            &format!(
                "echo ready >> {0}\nwhile :; do sleep 0.05; done",
                log.display()
            ),
        );
        let id = format!("plain-{name}");
        let mut child = rdlock(&server, &["exec", &id, "--", "sh", &command])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_file(&log, "ready").await;
        kill_raw(child.id(), sig);
        let code = wait_child(&mut child, PROMPTLY);
        assert_eq!(code, 128 + sig, "{name}: rdlock exits as its command did");
        let key = format!("rdlock:{{{id}}}:lock");
        assert_eq!(get(&mut raw, &key).await, None, "{name}: released");
    }
}
