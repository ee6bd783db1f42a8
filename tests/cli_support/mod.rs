//! Shared by the tests that run the real `rdlock` binary (`tests/cli*.rs`): building its
//! command line, waiting for it, reading what it and its command write, and looking at
//! processes in `/proc`.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{wait_until, RedisServer};

pub const RDLOCK: &str = env!("CARGO_BIN_EXE_rdlock");

/// The bound of every wait for something that should take milliseconds: generous for a
/// busy 2-core machine, and still far below what a broken implementation takes (a lease
/// of 30 s, or forever).
pub const PROMPTLY: Duration = Duration::from_secs(15);

pub fn rdlock(server: &RedisServer, args: &[&str]) -> Command {
    rdlock_at(&server.url(), args)
}

pub fn rdlock_at(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(RDLOCK);
    command
        .arg("--url")
        .arg(url)
        .args(args)
        .stdin(Stdio::null());
    with_default_signals(&mut command);
    command
}

/// Starts `command` with the signals rdlock forwards at their default. rdlock leaves a
/// signal that was ignored when it started ignored (as documented): a test run under
/// `nohup`, or started with `&` from a script (SIGINT and SIGQUIT ignored), would
/// otherwise hand those signals ignored to every rdlock and fail the signal tests for a
/// reason outside the product. Tests of that rule ignore signals themselves.
pub fn with_default_signals(command: &mut Command) -> &mut Command {
    // SAFETY: only async-signal-safe calls (signal(2)) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            for sig in [
                nix::libc::SIGHUP,
                nix::libc::SIGINT,
                nix::libc::SIGQUIT,
                nix::libc::SIGTERM,
                nix::libc::SIGUSR1,
                nix::libc::SIGUSR2,
                nix::libc::SIGALRM,
            ] {
                nix::libc::signal(sig, nix::libc::SIG_DFL);
            }
            Ok(())
        })
    }
}

pub fn run(server: &RedisServer, args: &[&str]) -> Output {
    rdlock(server, args).output().expect("run rdlock")
}

pub fn code(output: &Output) -> i32 {
    output.status.code().expect("exited normally")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs rdlock and waits for it, bounded: a hang fails the test instead of stalling it
/// (the process is killed first, so that it does not outlive the test).
pub fn output_within(mut command: Command, bound: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rdlock");
    let pid = child.id();
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match wait.recv_timeout(bound) {
        Ok(output) => output.expect("rdlock's output"),
        Err(_) => {
            signal(pid as i32, nix::sys::signal::Signal::SIGKILL);
            panic!("rdlock did not exit within {bound:?}");
        }
    }
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub async fn wait_for_file(path: &Path, text: &str) {
    let path = path.to_owned();
    let text = text.to_owned();
    wait_until(PROMPTLY, &format!("{text:?} in {path:?}"), || {
        let found = read(&path).contains(&text);
        async move { found }
    })
    .await;
}

/// Waits (blocking) for the file to contain `text`.
pub fn wait_for_file_blocking(path: &Path, text: &str) {
    let started = Instant::now();
    while !read(path).contains(text) {
        assert!(
            started.elapsed() < PROMPTLY,
            "timed out waiting for {text:?} in {path:?}: {:?}",
            read(path)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for rdlock's exit code; panics if it is still running after `bound` or was
/// killed by a signal.
pub fn wait_child(child: &mut Child, bound: Duration) -> i32 {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status
                .code()
                .unwrap_or_else(|| panic!("rdlock was killed: {status:?}"));
        }
        if started.elapsed() >= bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rdlock did not exit within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal` to `pid` (negative: to a process group), as kill(1) would.
pub fn signal(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .unwrap_or_else(|e| panic!("kill({pid}, {signal}): {e}"));
}

/// A process's state letter (`R`, `S`, `T`, `Z`, ...) and process group, from
/// `/proc/<pid>/stat`; `None` once it is gone (reaped).
pub fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`: comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether `pid` is a live process (a zombie is dead: it only waits to be reaped).
pub fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

pub fn wait_for_state(pid: i32, what: &str, mut condition: impl FnMut(Option<char>) -> bool) {
    let started = Instant::now();
    loop {
        let state = proc_stat(pid).map(|(state, _)| state);
        if condition(state) {
            return;
        }
        assert!(
            started.elapsed() < PROMPTLY,
            "timed out waiting for pid {pid} to be {what}; it is {state:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Everything read so far from a child's pipe, by a thread.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn start(mut pipe: impl Read + Send + 'static) -> Self {
        let captured = Self::default();
        let buffer = captured.0.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buffer.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        captured
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn wait_for(&self, text: &str) {
        let started = Instant::now();
        while !self.text().contains(text) {
            assert!(
                started.elapsed() < PROMPTLY,
                "timed out waiting for {text:?} in {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A command run on a pseudo-terminal by `script(1)` (util-linux), in a session of its
/// own: the terminal's input comes from [`Terminal::type_in`], its output is captured.
pub struct Terminal {
    pub child: Child,
    input: ChildStdin,
    pub output: Captured,
}

impl Terminal {
    /// Runs `command` (a line for `/bin/sh -c`) on a new terminal.
    pub fn run(command: &str) -> Self {
        let mut child = with_default_signals(&mut Command::new("script"))
            .args(["-q", "-e", "-c", command, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("script (util-linux)");
        let input = child.stdin.take().unwrap();
        let output = Captured::start(child.stdout.take().unwrap());
        Self {
            child,
            input,
            output,
        }
    }

    /// What a user types: `\x03` is Ctrl-C, `\x1a` Ctrl-Z.
    pub fn type_in(&mut self, keys: &[u8]) {
        self.input.write_all(keys).unwrap();
        self.input.flush().unwrap();
    }

    /// The exit code of `script`, which is its command's; on a timeout the panic shows
    /// the terminal's output and the processes, for the diagnosis.
    pub fn wait(&mut self) -> i32 {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("script exited normally");
            }
            if started.elapsed() >= PROMPTLY {
                let ps = Command::new("ps")
                    .args(["-eo", "pid,ppid,pgid,sid,tpgid,stat,wchan:24,args"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the command on the terminal did not exit within {PROMPTLY:?}; \
                     output: {:?}\nprocesses:\n{ps}",
                    self.output.text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Writes a shell script to run as the command (`sh <file>`): no quoting to get wrong.
/// No core files from the processes that a forwarded SIGQUIT kills.
pub fn script(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("ulimit -c 0\n{text}\n")).unwrap();
    path.display().to_string()
}

/// The pid a command wrote to `path` (its first line).
pub fn pid_in(path: &Path) -> i32 {
    wait_for_file_blocking(path, "\n");
    read(path).trim().parse().unwrap()
}
