//! `rdlock exec` owns its whole command: the command runs in a process group of its own,
//! every signal rdlock forwards and every kill on lease loss goes to that group, and the
//! lock is released only once no process of the group is left. Each test runs the real
//! binary against a private redis-server.
#![cfg(feature = "cli")]

mod cli_support;
mod support;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::{
    alive, pid_in, proc_stat, rdlock, rdlock_at, read, script, signal, wait_child, wait_for_file,
    wait_for_state, Captured, Terminal, PROMPTLY, RDLOCK,
};
use nix::sys::signal::Signal;
use support::proxy::{FaultProxy, Mode};
use support::{get, wait_until, RedisServer};

/// The reproduction: the command's real work is a background process. When the
/// lease is lost, `--on-lost kill` kills it too, and rdlock exits only once it is gone.
#[tokio::test]
async fn a_lost_lease_kills_the_whole_process_group_before_rdlock_exits() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let command = script(
        dir.path(),
        "job.sh",
        &format!("sleep 300 & echo $! > {}; wait", pid_file.display()),
    );
    let mut child = rdlock(
        &server,
        &[
            "exec",
            "grp",
            "--lease",
            "3s",
            "--on-lost",
            "kill",
            "--",
            "sh",
            &command,
        ],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let worker = pid_in(&pid_file);
    assert!(alive(worker));
    let _: () = redis::cmd("DEL")
        .arg("rdlock:{grp}:lock")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(wait_child(&mut child, PROMPTLY), 79);
    assert!(
        !alive(worker),
        "the background worker must be dead when rdlock exits: {:?}",
        proc_stat(worker)
    );
}

/// `--on-lost term`: SIGTERM to the group; a process that ignores it gets the SIGKILL
/// after the grace period, even once the command itself has exited.
#[tokio::test]
async fn the_grace_period_sigkill_reaches_a_leftover_process_that_ignores_sigterm() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let command = script(
        dir.path(),
        "job.sh",
        &format!(
            "(trap '' TERM; exec sleep 300) & echo $! > {}; wait",
            pid_file.display()
        ),
    );
    let mut child = rdlock(
        &server,
        &[
            "exec", "grace", "--lease", "3s", "--grace", "500ms", "--", "sh", &command,
        ],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let worker = pid_in(&pid_file);
    let _: () = redis::cmd("DEL")
        .arg("rdlock:{grace}:lock")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(wait_child(&mut child, PROMPTLY), 79);
    assert!(!alive(worker), "{:?}", proc_stat(worker));
}

/// A SIGTERM to rdlock reaches every process of the command, not only its first.
#[tokio::test]
async fn a_forwarded_sigterm_reaches_every_process_of_the_command() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let command = script(
        dir.path(),
        "job.sh",
        &format!("sleep 300 & echo $! > {}; wait", pid_file.display()),
    );
    let mut child = rdlock(&server, &["exec", "term", "--", "sh", &command])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let worker = pid_in(&pid_file);
    let (_, group) = proc_stat(worker).unwrap();
    assert_eq!(
        proc_stat(child.id() as i32).map(|(_, g)| g == group),
        Some(false),
        "the command runs in a process group of its own"
    );
    signal(child.id() as i32, Signal::SIGTERM);
    assert_eq!(
        wait_child(&mut child, PROMPTLY),
        128 + 15,
        "sh died of SIGTERM"
    );
    assert!(!alive(worker), "{:?}", proc_stat(worker));
    assert_eq!(get(&mut raw, "rdlock:{term}:lock").await, None);
}

/// The command exits but leaves a process of its group running: the lock is held, and
/// rdlock waits, until that one is gone too.
#[tokio::test]
async fn the_lock_is_held_until_the_last_process_of_the_group_exits() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let command = script(
        dir.path(),
        "job.sh",
        &format!(
            "(sleep 5; echo leftover-done >> {0}) & echo command-done >> {0}",
            log.display()
        ),
    );
    let mut child = rdlock(&server, &["exec", "leftover", "--", "sh", &command])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_file(&log, "command-done").await;
    assert!(
        get(&mut raw, "rdlock:{leftover}:lock").await.is_some(),
        "held while the leftover runs: {:?}",
        read(&log)
    );
    let out = rdlock(&server, &["exec", "leftover", "--no-wait", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "another exec must not run yet");
    assert_eq!(wait_child(&mut child, PROMPTLY), 0);
    assert!(
        read(&log).contains("leftover-done"),
        "rdlock exited before the leftover: {:?}",
        read(&log)
    );
    assert_eq!(get(&mut raw, "rdlock:{leftover}:lock").await, None);
}

/// SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2 and SIGWINCH sent to rdlock reach
/// the command; rdlock exits with the command's code and releases the lock after it.
#[tokio::test]
async fn every_forwarded_signal_reaches_the_command() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let signals = [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ];
    let mut runs = Vec::new();
    for sig in signals {
        let name = &sig.as_str()[3..]; // "HUP"
        let log = dir.path().join(name);
        let command = script(
            dir.path(),
            &format!("{name}.sh"),
            &format!(
                "trap 'echo got-{name} >> {0}; exit 0' {name}\n\
                 echo ready >> {0}\n\
                 while :; do sleep 0.05; done",
                log.display()
            ),
        );
        let child = rdlock(&server, &["exec", name, "--", "sh", &command])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        runs.push((sig, name, log, child));
    }
    for (sig, name, log, child) in &mut runs {
        wait_for_file(log, "ready").await;
        signal(child.id() as i32, *sig);
        println!("{name}: sent to rdlock"); // shown on failure: which signal hung
        let code = wait_child(child, PROMPTLY);
        assert_eq!(code, 0, "{name}: rdlock exits with the command's code");
        assert!(read(log).contains(&format!("got-{name}")), "{name}");
        let key = format!("rdlock:{{{name}}}:lock");
        assert_eq!(get(&mut raw, &key).await, None, "{name}: released");
    }
}

/// A signal ignored when rdlock starts (`nohup`) stays ignored, for the command too.
#[tokio::test]
async fn a_signal_ignored_at_start_stays_ignored() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let stop = dir.path().join("stop");
    let command = script(
        dir.path(),
        "job.sh",
        &format!(
            "trap 'echo got-HUP >> {0}' HUP\n\
             echo $$ >> {0}\n\
             while [ ! -e {1} ]; do sleep 0.05; done",
            log.display(),
            stop.display()
        ),
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' HUP; exec {RDLOCK} --url {} exec nohup -- sh {command}",
            server.url()
        ))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let command_pid = pid_in(&log);
    signal(child.id() as i32, Signal::SIGHUP);
    signal(command_pid, Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_child(&mut child, PROMPTLY), 0);
    assert!(!read(&log).contains("got-HUP"), "{}", read(&log));
}

/// A shell's Ctrl-C signals the whole foreground process group: the command must get
/// one SIGINT, not that one plus rdlock's forwarded copy.
#[tokio::test]
async fn a_sigint_to_rdlocks_whole_group_reaches_the_command_once() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let stop = dir.path().join("stop");
    let command = script(
        dir.path(),
        "job.sh",
        &format!(
            "trap 'echo INT >> {0}' INT\n\
             echo ready >> {0}\n\
             while [ ! -e {1} ]; do sleep 0.05; done",
            log.display(),
            stop.display()
        ),
    );
    // As a shell runs a foreground job: rdlock leads a process group of its own.
    let mut child = rdlock(&server, &["exec", "once", "--", "sh", &command])
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    wait_for_file(&log, "ready").await;
    signal(-(child.id() as i32), Signal::SIGINT);
    wait_for_file(&log, "INT").await;
    std::thread::sleep(Duration::from_millis(500)); // room for a second one
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_child(&mut child, PROMPTLY), 0);
    assert_eq!(read(&log).matches("INT").count(), 1, "{}", read(&log));
}

/// On a terminal the command is the foreground job: it reads the terminal, and one
/// Ctrl-C reaches it once. rdlock takes the terminal back afterwards.
#[tokio::test]
async fn on_a_terminal_the_command_is_the_foreground_job() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let stop = dir.path().join("stop");
    let command = script(
        dir.path(),
        "job.sh",
        &format!(
            "trap 'echo INT >> {0}' INT\n\
             read line; echo \"read $line\" >> {0}\n\
             while [ ! -e {1} ]; do sleep 0.05; done",
            log.display(),
            stop.display()
        ),
    );
    let mut terminal = Terminal::run(&format!(
        "exec {RDLOCK} --url {} exec fg -- sh {command}",
        server.url()
    ));
    terminal.output.wait_for("acquired fg");
    terminal.type_in(b"hello\n");
    wait_for_file(&log, "read hello").await;
    terminal.type_in(b"\x03");
    wait_for_file(&log, "INT").await;
    std::thread::sleep(Duration::from_millis(500)); // room for a second one
    std::fs::write(&stop, "").unwrap();
    assert_eq!(terminal.wait(), 0, "{:?}", terminal.output.text());
    assert_eq!(read(&log).matches("INT").count(), 1, "{}", read(&log));
    assert_eq!(get(&mut raw, "rdlock:{fg}:lock").await, None);
}

/// SIGTSTP to rdlock (Ctrl-Z when it is the terminal's foreground job) stops the command
/// and then rdlock, so that the shell sees the job stopped; SIGCONT resumes both.
#[tokio::test]
async fn sigtstp_stops_the_command_and_rdlock_and_sigcont_resumes_them() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let stop = dir.path().join("stop");
    let command = script(
        dir.path(),
        "job.sh",
        &format!(
            "echo $$ >> {0}\n\
             while [ ! -e {1} ]; do sleep 0.05; done; echo done >> {0}",
            log.display(),
            stop.display()
        ),
    );
    // A job of a shell: rdlock leads its group, its parent is outside it.
    let mut child = rdlock(&server, &["exec", "tstp", "--", "sh", &command])
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let rdlock_pid = child.id() as i32;
    let command_pid = pid_in(&log);
    signal(rdlock_pid, Signal::SIGTSTP);
    wait_for_state(command_pid, "stopped", |s| s == Some('T'));
    wait_for_state(rdlock_pid, "stopped", |s| s == Some('T'));
    signal(rdlock_pid, Signal::SIGCONT);
    wait_for_state(command_pid, "running", |s| s != Some('T'));
    wait_for_state(rdlock_pid, "running", |s| s != Some('T'));
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_child(&mut child, PROMPTLY), 0);
    assert!(read(&log).contains("done"));
}

/// An acquire in flight when SIGINT comes: rdlock exits 130 and the attempt is undone
/// before it exits, instead of leaving the key held by nobody for the whole lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_an_acquire_in_flight_leaves_no_lock_behind() {
    let server = RedisServer::start();
    let raw = server.conn().await;
    let proxy = FaultProxy::to_port(server.port()).await;
    // Every reply is 400 ms away: when the acquire's key appears, its reply is not
    // there yet.
    proxy.set(Mode::Latency(Duration::from_millis(400)));
    let mut child = rdlock_at(&proxy.url(), &["exec", "inflight", "--", "true"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(PROMPTLY, "the acquire reached Redis", || {
        let mut raw = raw.clone();
        async move { get(&mut raw, "rdlock:{inflight}:lock").await.is_some() }
    })
    .await;
    signal(child.id() as i32, Signal::SIGINT);
    let exit = tokio::task::spawn_blocking(move || wait_child(&mut child, PROMPTLY))
        .await
        .unwrap();
    if exit == 0 {
        // The reply won the race against the signal: the command ran and released.
        eprintln!("the acquire completed before SIGINT; nothing in flight to undo");
    } else {
        assert_eq!(exit, 130);
    }
    let mut raw = raw.clone();
    assert_eq!(
        get(&mut raw, "rdlock:{inflight}:lock").await,
        None,
        "released before rdlock exited (a leak holds it for the 30 s lease)"
    );
}

/// A closed stderr (`rdlock exec ... 2>&1 | head -1`) neither stops rdlock from running
/// the command nor from forwarding signals; a closed stdout does not break `status`.
#[tokio::test]
async fn a_closed_stderr_or_stdout_breaks_nothing() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let command = script(
        dir.path(),
        "job.sh",
        &format!(
            // The command's own stderr is not the closed pipe: dash would die of
            // SIGPIPE reporting its killed `sleep` there.
            "exec 2>/dev/null\n\
             trap 'echo term >> {0}; exit 0' TERM\n\
             echo ready >> {0}\n\
             while :; do sleep 0.05; done",
            log.display()
        ),
    );
    let mut child = rdlock(&server, &["exec", "pipe", "--", "sh", &command])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take()); // the reader is gone before rdlock writes anything
    wait_for_file(&log, "ready").await;
    signal(child.id() as i32, Signal::SIGTERM);
    assert_eq!(wait_child(&mut child, PROMPTLY), 0);
    assert!(read(&log).contains("term"));
    assert_eq!(get(&mut raw, "rdlock:{pipe}:lock").await, None);

    let mut status = rdlock(&server, &["status", "pipe"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(status.stdout.take());
    let errors = Captured::start(status.stderr.take().unwrap());
    assert_eq!(wait_child(&mut status, PROMPTLY), 0, "{}", errors.text());
}

/// Stopped on its terminal with no job-control shell to resume it (`script` makes rdlock
/// a session leader), rdlock ignores Ctrl-Z as the kernel would: the command goes on.
#[tokio::test]
async fn ctrl_z_without_a_job_control_shell_is_ignored() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let command = script(
        dir.path(),
        "job.sh",
        &format!(
            "echo ready >> {0}; sleep 0.5; echo done >> {0}",
            log.display()
        ),
    );
    let mut terminal = Terminal::run(&format!(
        "exec {RDLOCK} --url {} exec ctrlz -- sh {command}",
        server.url()
    ));
    wait_for_file(&log, "ready").await;
    terminal.type_in(b"\x1a");
    let started = Instant::now();
    assert_eq!(terminal.wait(), 0, "{:?}", terminal.output.text());
    assert!(started.elapsed() < PROMPTLY);
    assert!(read(&log).contains("done"));
}
