//! Test support: private `redis-server` processes on free loopback ports.
//!
//! Every test starts its own server (never the one on 6379), configured as it needs,
//! in its own temporary directory; the server is killed when the value is dropped.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod cluster;
pub mod gate;
pub mod history;
pub mod proxy;
pub mod sentinel;
pub mod v2_0;

use std::future::Future;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How a test server is configured.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    /// `notify-keyspace-events` flags; `None` leaves them off (the Redis default).
    pub keyspace_events: Option<&'static str>,
    /// Further `--name value` arguments.
    pub args: Vec<String>,
}

impl ServerConfig {
    pub fn keyspace(flags: &'static str) -> Self {
        Self {
            keyspace_events: Some(flags),
            args: Vec::new(),
        }
    }
}

/// A private redis-server, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    config: ServerConfig,
    dir: TempDir,
}

impl RedisServer {
    /// A server with the default configuration (keyspace events off).
    pub fn start() -> Self {
        Self::start_with(ServerConfig::default())
    }

    pub fn with_keyspace_events() -> Self {
        Self::start_with(ServerConfig::keyspace("KA"))
    }

    pub fn start_with(config: ServerConfig) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rdlock-test-")
            .tempdir()
            .expect("create a temporary directory");
        let mut server = Self {
            child: None,
            port: 0,
            config,
            dir,
        };
        // The port is free when we look, but another process may take it before the
        // server binds: try a few ports.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start; its log:\n{}", server.log());
    }

    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut command = Command::new(server_bin());
        command
            .args(["--bind", "127.0.0.1", "--port", &port])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &dir, "--logfile", "redis.log"])
            .args(["--enable-debug-command", "local"])
            .args([
                "--notify-keyspace-events",
                self.config.keyspace_events.unwrap_or(""),
            ]);
        for arg in &self.config.args {
            command.arg(arg);
        }
        let child = match command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH: install it (Debian/Ubuntu: \
                 `sudo apt-get install -y redis-server`) or run `bash .ci/run`"
            ),
            Err(e) => panic!("could not start redis-server: {e}"),
        };
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
        false
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the server with kill(1).
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let status = Command::new("kill")
                .args([format!("-{signal}"), pid.to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -{signal} {pid} failed");
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid url")
    }

    /// A raw connection for the test's own commands.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test server")
    }

    /// Kills the server (SIGKILL): nothing is saved.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Starts a stopped server again on the same port, empty.
    pub fn start_again(&mut self) {
        assert!(
            self.spawn(),
            "redis-server did not restart:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server binary tests start: `RDLOCK_SERVER_BIN` when set (e.g. `valkey-server`,
/// or a path from `.ci/install-valkey`), else `redis-server`.
pub fn server_bin() -> String {
    std::env::var("RDLOCK_SERVER_BIN")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "redis-server".to_owned())
}

/// The cli that forms test clusters: `RDLOCK_CLI_BIN` when set, else `redis-cli`
/// (Debian's `redis-cli` forms Valkey clusters too).
pub fn cli_bin() -> String {
    std::env::var("RDLOCK_CLI_BIN")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "redis-cli".to_owned())
}

/// A port that was free a moment ago, outside the ephemeral range when possible.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Polls `condition` every 10 ms until it is true; panics with `what` after `bound`.
pub async fn wait_until<F, Fut>(bound: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return;
        }
        assert!(
            started.elapsed() < bound,
            "timed out after {bound:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value at `key`, if any.
/// How many clients are blocked (e.g. a script held back by `CLIENT PAUSE ... WRITE`).
pub async fn blocked_clients(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(conn)
        .await
        .expect("INFO clients");
    info.lines()
        .find_map(|line| line.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Holds back every write (scripts included) for `ms`: a command sent meanwhile stays
/// in flight, which [`blocked_clients`] shows.
pub async fn pause_writes(conn: &mut redis::aio::MultiplexedConnection, ms: u64) {
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query_async(conn)
        .await
        .expect("CLIENT PAUSE");
}

pub async fn get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("GET")
}

/// The lock keys (`rdlock:*:lock`) present on the server.
pub async fn lock_keys(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    redis::cmd("KEYS")
        .arg("rdlock:*:lock")
        .query_async(conn)
        .await
        .expect("KEYS")
}

/// The number of clients connected to the server, the caller's own included.
pub async fn connected_clients(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .expect("CLIENT LIST");
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Commands the server has run since the last `CONFIG RESETSTAT`, from
/// How many times `command` ran since the last reset (`INFO commandstats`, commands
/// run inside scripts included).
pub async fn calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// The processes in the queue of lock `id` (`rdlock:{<id>}:queue`), oldest first.
pub async fn queue(conn: &mut redis::aio::MultiplexedConnection, id: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(format!("rdlock:{{{id}}}:queue"))
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .expect("LRANGE of the queue")
}

/// `INFO commandstats` (commands run inside scripts included), leaving out the
/// `INFO`/`CONFIG` calls of the measurement itself.
pub async fn commands_run(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| line.strip_prefix("cmdstat_"))
        .filter(|line| !line.starts_with("info:") && !line.starts_with("config"))
        .filter_map(|line| {
            let calls = line.split_once("calls=")?.1;
            calls.split(',').next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Resets the server's command statistics.
pub async fn reset_stats(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .expect("CONFIG RESETSTAT");
}

/// Waits (5 s at most for each) until `key` is gone and the manager runs no background
/// task: nothing is left held, no watchdog or release is left running.
pub async fn assert_quiescent(
    server: &RedisServer,
    manager: &rdlock::RdLockConnectionManager,
    key: &str,
) {
    let raw = server.conn().await;
    wait_until(
        Duration::from_secs(5),
        "the key is gone (a leak would hold it for the 30 s lease)",
        || {
            let mut raw = raw.clone();
            let key = key.to_owned();
            async move { get(&mut raw, &key).await.is_none() }
        },
    )
    .await;
    wait_until(Duration::from_secs(5), "no background task is left", || {
        let n = manager.pending_tasks();
        async move { n == 0 }
    })
    .await;
}

/// The seed of a randomized test: `RDLOCK_SEED` when set (to replay a run), else the
/// clock. Print it in the test's output.
pub fn seed() -> u64 {
    std::env::var("RDLOCK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
}

/// One step of a xorshift64 generator: enough randomness for test schedules, and
/// replayable from the printed seed.
pub fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// A resource's side of fencing (KEYS: highest fence seen, log; ARGV: fence, value):
/// accepts a write only if its fencing token is at least the largest one seen,
/// atomically; returns 1 if accepted, 0 if rejected as stale.
pub const FENCED_WRITE: &str = r"
local max = tonumber(redis.call('GET', KEYS[1]) or '0')
local fence = tonumber(ARGV[1])
if fence < max then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
";

impl RedisServer {
    /// Starts a stopped server again on the same port, with the data it saved in its
    /// directory (an RDB from `SAVE`), and returns as soon as it answers, even if only
    /// with `-LOADING`: for tests that talk to a server while it loads its dataset.
    /// Without `--loading-process-events-interval-bytes` set low, a server answers
    /// nobody until it has loaded a small dataset.
    pub fn start_again_loading(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut command = Command::new(server_bin());
        command
            .args(["--bind", "127.0.0.1", "--port", &port])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &dir, "--logfile", "redis.log"])
            .args(["--enable-debug-command", "local"])
            .args([
                "--notify-keyspace-events",
                self.config.keyspace_events.unwrap_or(""),
            ]);
        for arg in &self.config.args {
            command.arg(arg);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Some(reply) = self.ping_reply() {
                if reply == "PONG" || reply.starts_with("LOADING") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("redis-server did not answer:\n{}", self.log());
    }

    /// `PONG`, or the error code and message the server answered a `PING` with;
    /// `None` when it cannot be reached.
    pub fn ping_reply(&self) -> Option<String> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .ok()?;
        match redis::cmd("PING").query::<String>(&mut conn) {
            Ok(pong) => Some(pong),
            Err(e) => Some(format!(
                "{} {}",
                e.code().unwrap_or("?"),
                e.detail().unwrap_or("")
            )),
        }
    }
}
