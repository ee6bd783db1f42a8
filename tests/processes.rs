//! Holders in child processes: crashed (SIGKILL) and paused (SIGSTOP) holders.
//!
//! The child is this test binary run again with `--ignored --exact child_holder`: it
//! takes a lock, reports `ACQUIRED <fence>` on stdout, reports `LOST` when its guard
//! says the lease is gone, and on each `write` line from stdin makes a fenced write to
//! a resource and reports `WRITE accepted|rejected`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use rdlock::RdLockConnectionManager;
use support::{RedisServer, ServerConfig};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

async fn fenced_write(resource: &redis::Client, fence: u64, who: &str) -> bool {
    let mut conn = resource.get_multiplexed_async_connection().await.unwrap();
    let accepted: i64 = redis::Script::new(support::FENCED_WRITE)
        .key("resource:max-fence")
        .key("resource:log")
        .arg(fence)
        .arg(who)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    accepted == 1
}

/// The child's body (run by the tests below in a child process; ignored otherwise).
#[tokio::test]
#[ignore = "run by the other tests of this file as a child process"]
async fn child_holder() {
    let url = std::env::var("RDLOCK_CHILD_URL").expect("RDLOCK_CHILD_URL");
    let lease_ms: u64 = std::env::var("RDLOCK_CHILD_LEASE_MS")
        .unwrap()
        .parse()
        .unwrap();
    let resource = std::env::var("RDLOCK_CHILD_RESOURCE")
        .ok()
        .map(|u| redis::Client::open(u).unwrap());
    let manager = RdLockConnectionManager::new(url).await.unwrap();
    let lock = manager
        .new_lock("shared-job")
        .with_lease(Duration::from_millis(lease_ms));
    let guard = lock.lock().await.unwrap();
    let fence = guard.fencing_token();
    say(&format!("ACQUIRED {fence}"));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut reported = false;
    loop {
        tokio::select! {
            _ = guard.lost(), if !reported => {
                reported = true;
                say("LOST");
            }
            line = lines.next_line() => match line.unwrap().as_deref() {
                Some("write") => {
                    let resource = resource.as_ref().expect("a resource url");
                    let accepted = fenced_write(resource, fence, "child").await;
                    say(if accepted { "WRITE accepted" } else { "WRITE rejected" });
                }
                Some(_) => {}
                None => return,
            },
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Holder {
    fn spawn(url: &str, lease_ms: u64, resource: Option<&str>) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--ignored",
                "--exact",
                "child_holder",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RDLOCK_CHILD_URL", url)
            .env("RDLOCK_CHILD_LEASE_MS", lease_ms.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(resource) = resource {
            command.env("RDLOCK_CHILD_RESOURCE", resource);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// Waits for a line containing `prefix` and returns it from there on (the test
    /// harness prints `test child_holder ... ` on the same line as the first output).
    async fn expect(&mut self, prefix: &str, bound: Duration) -> String {
        let deadline = Instant::now() + bound;
        loop {
            let line = tokio::time::timeout_at(deadline.into(), self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {prefix:?} line from the child within {bound:?}"))
                .unwrap_or_else(|| panic!("the child exited before saying {prefix:?}"));
            if let Some(at) = line.find(prefix) {
                return line[at..].to_owned();
            }
        }
    }

    /// Waits for a line containing `a` or `b` and returns it from there on.
    async fn expect_either(&mut self, a: &str, b: &str, bound: Duration) -> String {
        let deadline = Instant::now() + bound;
        loop {
            let line = tokio::time::timeout_at(deadline.into(), self.lines.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no {a:?} or {b:?} line from the child within {bound:?}")
                })
                .unwrap_or_else(|| panic!("the child exited before saying {a:?} or {b:?}"));
            if let Some(at) = line.find(a).or_else(|| line.find(b)) {
                return line[at..].to_owned();
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A holder killed with SIGKILL blocks others for about one lease at most.
async fn crashed_holder_is_replaced_within_a_lease(server: &RedisServer) {
    let lease = Duration::from_millis(1000);
    let mut holder = Holder::spawn(&server.url(), 1000, None);
    holder.expect("ACQUIRED", Duration::from_secs(30)).await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("shared-job");
    let waiter = tokio::spawn(async move {
        let g = lock.lock().await.unwrap();
        (Instant::now(), g)
    });
    // Long enough for the child to renew at least once: it is alive and holding.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiter.is_finished(), "acquired while the holder was alive");
    let killed = Instant::now();
    holder.child.kill().unwrap(); // SIGKILL
    holder.child.wait().unwrap();
    let (acquired, guard) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("taken over after the lease, not hanging")
        .unwrap();
    let after = acquired.saturating_duration_since(killed);
    println!("acquired {after:?} after the kill (lease {lease:?})");
    // At most one lease (the PTTL at the kill) plus a few round trips, with room for a
    // busy machine; a waiter that waits for its own 30 s lease, or never retries,
    // misses by far.
    assert!(after <= lease + Duration::from_secs(2), "took {after:?}");
    assert!(guard.is_held());
}

#[tokio::test]
async fn crashed_holder_without_keyspace_events() {
    let server = RedisServer::start();
    crashed_holder_is_replaced_within_a_lease(&server).await;
}

#[tokio::test]
async fn crashed_holder_with_keyspace_events() {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
    crashed_holder_is_replaced_within_a_lease(&server).await;
}

/// A holder paused past its lease (a GC pause, SIGSTOP) comes back to find its lease
/// lost, and the fenced resource rejects its stale write.
#[tokio::test]
async fn paused_holder_is_fenced_off() {
    let server = RedisServer::start();
    let resource_server = RedisServer::start();
    let resource = resource_server.client();
    let mut holder = Holder::spawn(&server.url(), 1000, Some(&resource_server.url()));
    let first: u64 = holder
        .expect("ACQUIRED", Duration::from_secs(30))
        .await
        .trim_start_matches("ACQUIRED ")
        .parse()
        .unwrap();
    holder.signal("-STOP");
    // The paused holder cannot renew: after its lease, someone else takes the lock.
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = tokio::time::timeout(
        Duration::from_secs(10),
        manager.new_lock("shared-job").lock(),
    )
    .await
    .expect("taken over after the paused holder's lease")
    .unwrap();
    assert!(guard.fencing_token() > first);
    assert!(fenced_write(&resource, guard.fencing_token(), "successor").await);
    // The paused holder wakes up, still holding its guard...
    holder.signal("-CONT");
    holder.send("write");
    // ...learns the lease is gone, and its write with the old token is rejected. The
    // child sees the loss and the `write` line at once when it resumes, and may handle
    // either first: the two lines come in either order.
    let mut lines = [
        holder
            .expect_either("LOST", "WRITE", Duration::from_secs(10))
            .await,
        holder
            .expect_either("LOST", "WRITE", Duration::from_secs(10))
            .await,
    ];
    lines.sort();
    assert_eq!(lines, ["LOST", "WRITE rejected"]);
    // Writes from the current holder still go through.
    assert!(fenced_write(&resource, guard.fencing_token(), "successor").await);
    let mut conn = resource.get_multiplexed_async_connection().await.unwrap();
    let log: Vec<String> = redis::cmd("LRANGE")
        .arg("resource:log")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(log, ["successor", "successor"]);
}
