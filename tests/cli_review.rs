//! Review of issue 17's `rdlock exec` (review-17): each test is a regression test for a
//! defect the review proved with it, running the real binary against a private
//! redis-server.
#![cfg(feature = "cli")]

mod cli_support;
mod support;

use std::process::Stdio;
use std::time::Duration;

use cli_support::{
    alive, pid_in, proc_stat, rdlock, read, run, script, signal, wait_child, wait_for_state,
    PROMPTLY,
};
use nix::sys::signal::Signal;
use support::proxy::{FaultProxy, Mode};
use support::{get, wait_until, RedisServer};

/// Signals whose default action ends a process, other than the seven of the README
/// (`timeout -s ALRM`, `kill -PWR`, a CPU or file-size limit, ...): each one killed
/// rdlock outright, leaving its command running with a lock nobody renews — once the
/// lease ran out another host ran the command beside it. They are forwarded now, and
/// rdlock releases only once the command is gone.
#[tokio::test]
async fn every_signal_that_would_kill_rdlock_is_forwarded_instead() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    for (i, sig) in [
        Signal::SIGALRM,
        Signal::SIGVTALRM,
        Signal::SIGPROF,
        Signal::SIGPWR,
        Signal::SIGIO,
        Signal::SIGXCPU,
        Signal::SIGXFSZ,
        Signal::SIGSTKFLT,
    ]
    .into_iter()
    .enumerate()
    {
        let pid_file = dir.path().join(format!("pid{i}"));
        let command = script(
            dir.path(),
            &format!("job{i}.sh"),
            &format!("echo $$ > {}; exec sleep 300", pid_file.display()),
        );
        let id = format!("sig{i}");
        let mut child = rdlock(
            &server,
            &["exec", &id, "--lease", "2s", "--", "sh", &command],
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let worker = pid_in(&pid_file);
        signal(child.id() as i32, sig);
        let status = {
            let started = std::time::Instant::now();
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    started.elapsed() < PROMPTLY,
                    "rdlock did not exit after {sig}"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        let still_running = alive(worker);
        if still_running {
            signal(worker, Signal::SIGKILL);
        }
        assert!(
            !still_running,
            "{sig}: rdlock ended ({status:?}) while its command runs: {:?}",
            proc_stat(worker)
        );
        assert_eq!(status.code(), Some(128 + sig as i32), "{sig}");
        assert_eq!(get(&mut raw, &format!("rdlock:{{{id}}}:lock")).await, None);
    }
}

/// A command stopped off a terminal (the README's SIGTTIN of a command that reads
/// `/dev/tty`, or a `kill -STOP`) never acted on a forwarded SIGTERM or Ctrl-C: the signal
/// stayed pending, and rdlock held (and renewed) the lock until someone found and
/// continued the command. rdlock now continues the group after forwarding a signal, as
/// `timeout(1)` does.
#[tokio::test]
async fn a_forwarded_sigterm_ends_a_stopped_command() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let command = script(
        dir.path(),
        "job.sh",
        &format!("echo $$ > {}; exec sleep 300", pid_file.display()),
    );
    let mut child = rdlock(&server, &["exec", "stopped", "--", "sh", &command])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let worker = pid_in(&pid_file);
    signal(-worker, Signal::SIGSTOP);
    wait_for_state(worker, "stopped", |state| state == Some('T'));
    signal(child.id() as i32, Signal::SIGTERM);
    let code = wait_child(&mut child, PROMPTLY);
    assert_eq!(code, 128 + Signal::SIGTERM as i32);
    assert!(!alive(worker));
    assert_eq!(
        cli_support::code(&run(
            &server,
            &["exec", "stopped", "--no-wait", "--", "true"]
        )),
        0
    );
}

/// `--no-wait` did not race its one attempt against signals: a SIGTERM (or Ctrl-C) that
/// arrived while the attempt was in flight (a slow Redis) was acted on only after it: the
/// lock was taken, the command started — though the README says a signal received while
/// still waiting for the lock ends rdlock with 128+N — and got the signal forwarded. Now
/// the attempt is abandoned (and undone) as with a waiting `exec`.
#[tokio::test]
async fn a_signal_during_a_no_wait_attempt_ends_rdlock_before_the_command_runs() {
    let server = RedisServer::start();
    let raw = server.conn().await;
    let proxy = FaultProxy::to_port(server.port()).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let command = script(
        dir.path(),
        "job.sh",
        &format!("trap '' TERM; echo ran > {}", marker.display()),
    );
    // Every chunk is 400 ms away in each direction (more and the connection's handshake
    // times out): when the attempt's key appears, its reply is 400 ms from rdlock.
    proxy.set(Mode::Latency(Duration::from_millis(400)));
    let mut child = cli_support::rdlock_at(
        &proxy.url(),
        &["exec", "nowait", "--no-wait", "--", "sh", &command],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let err = cli_support::Captured::start(child.stderr.take().unwrap());
    let waited = tokio::time::timeout(
        PROMPTLY,
        wait_until(PROMPTLY, "the attempt reached Redis", || {
            let mut raw = raw.clone();
            async move { get(&mut raw, "rdlock:{nowait}:lock").await.is_some() }
        }),
    )
    .await;
    assert!(waited.is_ok(), "no attempt reached Redis: {}", err.text());
    let seen = std::time::Instant::now();
    signal(child.id() as i32, Signal::SIGTERM);
    let late = seen.elapsed() > Duration::from_millis(200);
    let exit = tokio::task::spawn_blocking(move || cli_support::wait_child(&mut child, PROMPTLY))
        .await
        .unwrap();
    let text = err.text();
    if late {
        // The machine was too busy to signal while the reply was surely on its way.
        eprintln!("inconclusive: the signal was sent too late after the attempt");
        return;
    }
    assert!(
        !text.contains("acquired"),
        "the command was started after the SIGTERM: {text}"
    );
    assert_eq!(exit, 143, "{text}");
    assert_eq!(read(&marker), "");
    let mut raw = raw.clone();
    assert_eq!(get(&mut raw, "rdlock:{nowait}:lock").await, None);
}
