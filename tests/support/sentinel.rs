//! Test support: a private Sentinel group — one master, two replicas and three
//! sentinels — of server processes on free loopback ports, and the faults tests throw
//! at it.
//!
//! Every process runs in its own temporary directory (its log, and for a sentinel the
//! `sentinel.conf` written fresh for each run: Sentinel rewrites its config) and is
//! killed when the group is dropped. Sentinels run `down-after-milliseconds 1000` and
//! `failover-timeout 5000`, quorum 2. Every wait is bounded and a timed-out wait panics
//! with the tails of every log.
//!
//! Data nodes are named by their index in [`SentinelGroup::nodes`] (0 is the first
//! master), which never changes: a killed node keeps its index, port and directory and
//! can be started again. The server binary follows `RDLOCK_SERVER_BIN`
//! ([`super::server_bin`]); `valkey-server --sentinel` is a sentinel as
//! `redis-server --sentinel` is.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tempfile::TempDir;

use super::{free_port, server_bin};

/// The service (master) name the sentinels monitor.
pub const SERVICE: &str = "rdlock-test";

/// How long any single wait of the rig may take before it panics. Generous: a busy
/// 2-core machine forms the group in ~2-5 s and promotes a replica ~1-3 s after a kill;
/// a sentinel in TILT (starved for 2 s) sits out 30 s.
pub const WAIT_BOUND: Duration = Duration::from_secs(90);

/// Sentinel's `down-after-milliseconds` for the group.
pub const DOWN_AFTER_MS: u64 = 1000;

/// One process of the group (data node or sentinel).
pub struct Proc {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    paused: bool,
}

impl Proc {
    fn new(prefix: &str) -> Self {
        Self {
            child: None,
            port: free_port(),
            dir: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("create a temporary directory"),
            paused: false,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Alive and not paused.
    pub fn is_running(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn signal(&self, signal: &str) {
        let Some(child) = self.child.as_ref() else {
            panic!("process on port {} is not running", self.port);
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    /// SIGKILL (ends a stopped process too); nothing is saved.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    fn spawn(&mut self, args: &[String]) {
        let child = match Command::new(server_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("{} is not on PATH: install redis-server", server_bin())
            }
            Err(e) => panic!("could not start {}: {e}", server_bin()),
        };
        self.child = Some(child);
    }

    /// Whether it answers `PING` within 200 ms.
    fn pings(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    /// Whether the process exited by itself (then it is forgotten).
    fn exited(&mut self) -> bool {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return true;
            }
        }
        self.child.is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private master + 2 replicas + 3 sentinels; every process is killed on drop.
pub struct SentinelGroup {
    nodes: Vec<Proc>,
    sentinels: Vec<Proc>,
}

impl SentinelGroup {
    /// The group, formed and ready ([`Self::wait_ready`]).
    pub async fn start() -> Self {
        let mut group = Self {
            nodes: Vec::new(),
            sentinels: Vec::new(),
        };
        for i in 0..3 {
            let node = group.start_data_node(i).await;
            group.nodes.push(node);
        }
        for _ in 0..3 {
            let sentinel = group.start_sentinel().await;
            group.sentinels.push(sentinel);
        }
        group.wait_ready("the new group is ready").await;
        group
    }

    fn data_args(port: u16, dir: &std::path::Path, replica_of: Option<u16>) -> Vec<String> {
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
            &dir.to_string_lossy(),
            "--logfile",
            "server.log",
            "--enable-debug-command",
            "local",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if let Some(master) = replica_of {
            args.extend([
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                master.to_string(),
            ]);
        }
        args
    }

    /// Data node `i` (0: the master, else a replica of node 0), answering `PING`; a
    /// few fresh ports are tried (another process may take one first).
    async fn start_data_node(&self, i: usize) -> Proc {
        let master = self.nodes.first().map(Proc::port);
        let mut last_log = String::new();
        for _ in 0..5 {
            let mut node = Proc::new("rdlock-sentinel-node-");
            if self.nodes.iter().any(|n| n.port == node.port) {
                continue;
            }
            let args = Self::data_args(node.port, node.dir.path(), master.filter(|_| i > 0));
            node.spawn(&args);
            if wait_pings(&mut node).await {
                return node;
            }
            last_log = node.log();
        }
        panic!("{} did not start; its log:\n{last_log}", server_bin());
    }

    async fn start_sentinel(&self) -> Proc {
        let master = self.nodes[0].port;
        let mut last_log = String::new();
        for _ in 0..5 {
            let mut sentinel = Proc::new("rdlock-sentinel-");
            let taken = self
                .nodes
                .iter()
                .chain(&self.sentinels)
                .any(|n| n.port == sentinel.port);
            if taken {
                continue;
            }
            let conf = sentinel.dir.path().join("sentinel.conf");
            let text = format!(
                "bind 127.0.0.1\n\
                 port {port}\n\
                 dir {dir}\n\
                 logfile server.log\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {SERVICE} 5000\n\
                 sentinel parallel-syncs {SERVICE} 1\n",
                port = sentinel.port,
                dir = sentinel.dir.path().display(),
            );
            std::fs::write(&conf, text).expect("write sentinel.conf");
            sentinel.spawn(&[conf.to_string_lossy().into_owned(), "--sentinel".to_owned()]);
            if wait_pings(&mut sentinel).await {
                return sentinel;
            }
            last_log = sentinel.log();
        }
        panic!(
            "{} --sentinel did not start; its log:\n{last_log}",
            server_bin()
        );
    }

    pub fn nodes(&self) -> &[Proc] {
        &self.nodes
    }

    pub fn node(&self, i: usize) -> &Proc {
        &self.nodes[i]
    }

    pub fn sentinel(&self, i: usize) -> &Proc {
        &self.sentinels[i]
    }

    /// `redis://` URLs of every sentinel (running or not).
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(Proc::url).collect()
    }

    /// The index of the data node on `port`.
    pub fn index_of_port(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    /// The tails of every log, for a failure message.
    pub fn logs(&self) -> String {
        self.log_tails(30)
    }

    /// The last `lines` lines of every log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            out += &format!(
                "\n--- node {i} (port {}) ---\n{}",
                node.port,
                node.log_tail(lines)
            );
        }
        for (i, s) in self.sentinels.iter().enumerate() {
            out += &format!(
                "\n--- sentinel {i} (port {}) ---\n{}",
                s.port,
                s.log_tail(lines)
            );
        }
        out
    }

    /// A connection to data node `i` (2 s connect and response timeouts).
    pub async fn conn(&self, i: usize) -> MultiplexedConnection {
        conn_to(&self.nodes[i].url())
            .await
            .unwrap_or_else(|e| panic!("connect to node {i}: {e}\n{}", self.logs()))
    }

    /// `ROLE`'s first field on data node `i` (`master`, `slave`), `None` when it does
    /// not answer.
    pub async fn role(&self, i: usize) -> Option<String> {
        if !self.nodes[i].is_running() {
            return None;
        }
        let mut conn = conn_to(&self.nodes[i].url()).await.ok()?;
        let role: redis::Value = redis::cmd("ROLE").query_async(&mut conn).await.ok()?;
        match role {
            redis::Value::Array(fields) => match fields.first() {
                Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into()),
                Some(redis::Value::SimpleString(s)) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// What running sentinel `s` names as the master's port.
    pub async fn master_per_sentinel(&self, s: usize) -> Option<u16> {
        if !self.sentinels[s].is_running() {
            return None;
        }
        let mut conn = conn_to(&self.sentinels[s].url()).await.ok()?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(SERVICE)
            .query_async(&mut conn)
            .await
            .ok()?;
        addr.map(|(_, port)| port)
    }

    /// The master's data node index, when every running sentinel names the same one.
    pub async fn master_per_sentinels(&self) -> Option<usize> {
        let mut seen = None;
        for s in 0..self.sentinels.len() {
            if !self.sentinels[s].is_running() {
                continue;
            }
            let port = self.master_per_sentinel(s).await?;
            if seen.is_some_and(|p| p != port) {
                return None;
            }
            seen = Some(port);
        }
        seen.map(|port| self.index_of_port(port))
    }

    /// Why the group is not ready yet, or `Ok(master index)`: every running sentinel
    /// names the same master, which says `ROLE` master, has every other running data
    /// node linked as a replica, and every sentinel knows the other two and both
    /// replicas.
    pub async fn ready(&self) -> Result<usize, String> {
        let master = self
            .master_per_sentinels()
            .await
            .ok_or("the sentinels do not agree on a master")?;
        if self.role(master).await.as_deref() != Some("master") {
            return Err(format!("node {master} is not (yet) a master"));
        }
        for i in 0..self.nodes.len() {
            if i == master || !self.nodes[i].is_running() {
                continue;
            }
            let mut conn = conn_to(&self.nodes[i].url())
                .await
                .map_err(|e| format!("node {i}: {e}"))?;
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("node {i}: {e}"))?;
            let linked = info.contains("role:slave")
                && info.contains(&format!("master_port:{}", self.nodes[master].port))
                && info.contains("master_link_status:up");
            if !linked {
                return Err(format!("node {i} is not a linked replica of node {master}"));
            }
        }
        let running_sentinels = self.sentinels.iter().filter(|s| s.is_running()).count();
        for (s, sentinel) in self.sentinels.iter().enumerate() {
            if !sentinel.is_running() {
                continue;
            }
            let mut conn = conn_to(&sentinel.url())
                .await
                .map_err(|e| format!("sentinel {s}: {e}"))?;
            let fields: Vec<String> = redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(SERVICE)
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("sentinel {s}: {e}"))?;
            let field = |name: &str| {
                fields
                    .iter()
                    .position(|f| f == name)
                    .and_then(|i| fields.get(i + 1))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0)
            };
            if field("num-other-sentinels") + 1 < running_sentinels {
                return Err(format!(
                    "sentinel {s} does not know the other sentinels yet"
                ));
            }
            if field("num-slaves") < 2 {
                return Err(format!("sentinel {s} does not know both replicas yet"));
            }
            // No failover in progress, the master not suspected down: a new fault now
            // starts a new failover instead of meeting a half-finished one.
            let flags = fields
                .iter()
                .position(|f| f == "flags")
                .and_then(|i| fields.get(i + 1))
                .cloned()
                .unwrap_or_default();
            if flags != "master" {
                return Err(format!("sentinel {s}: master flags {flags}"));
            }
            // A sentinel whose timer was starved for 2 s (a busy machine) enters TILT
            // for 30 s and takes no part in failovers; by then the replicas' links are
            // too old for a promotion (`-failover-abort-no-good-slave`). Start no fault
            // while one is in TILT.
            let info: String = redis::cmd("INFO")
                .arg("sentinel")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("sentinel {s}: {e}"))?;
            if !info.lines().any(|l| l.trim() == "sentinel_tilt:0") {
                return Err(format!("sentinel {s} is in TILT mode"));
            }
        }
        Ok(master)
    }

    /// Waits until [`Self::ready`]; returns the master's index. Panics with `what` and
    /// the logs after [`WAIT_BOUND`].
    pub async fn wait_ready(&self, what: &str) -> usize {
        let started = Instant::now();
        loop {
            match self.ready().await {
                Ok(master) => return master,
                Err(why) if started.elapsed() > WAIT_BOUND => panic!(
                    "timed out after {WAIT_BOUND:?} waiting for: {what} ({why})\n{}",
                    self.logs()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until every running sentinel names a master other than `old`, and that
    /// node says `ROLE` master; returns its index (replicas may not be linked yet).
    pub async fn wait_promoted(&self, old: usize) -> usize {
        let started = Instant::now();
        loop {
            if let Some(master) = self.master_per_sentinels().await {
                if master != old && self.role(master).await.as_deref() == Some("master") {
                    return master;
                }
            }
            assert!(
                started.elapsed() < WAIT_BOUND,
                "timed out after {WAIT_BOUND:?} waiting for a master other than node {old}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The PTTL of `key` on data node `i` (ms; negative when absent or without expiry).
    pub async fn pttl(&self, i: usize, key: &str) -> i64 {
        let mut conn = self.conn(i).await;
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap_or(-2)
    }

    /// Waits until `key` on data node `i` has been renewed (its PTTL rose by more than
    /// a second over the first one seen): the holder's watchdog reaches that node.
    pub async fn wait_renewed_on(&self, i: usize, key: &str) {
        let first = self.pttl(i, key).await;
        let started = Instant::now();
        loop {
            let now = self.pttl(i, key).await;
            if first >= 0 && now > first + 1000 {
                return;
            }
            assert!(
                now >= 0 || first < 0,
                "{key} vanished from node {i} (lease lost)\n{}",
                self.logs()
            );
            assert!(
                started.elapsed() < WAIT_BOUND,
                "{key} was not renewed on node {i} (PTTL {first} -> {now})\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL data node `i`: nothing is saved.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts data node `i` again on its port and in its directory, empty and as a
    /// master (`--save '' --appendonly no`, and the RDB a full sync left in its
    /// directory removed): what a crashed master looks like when it comes back
    /// without persistence.
    pub async fn restart_empty(&mut self, i: usize) {
        self.nodes[i].kill();
        let _ = std::fs::remove_file(self.nodes[i].dir.path().join("dump.rdb"));
        let args = Self::data_args(self.nodes[i].port, self.nodes[i].dir.path(), None);
        self.nodes[i].spawn(&args);
        if !wait_pings(&mut self.nodes[i]).await {
            panic!("node {i} did not restart\n{}", self.logs());
        }
    }

    /// Starts data node `i` again on its port and in its directory, empty, as a
    /// replica of data node `master` (as Sentinel would reconfigure it, without the
    /// ~10 s wait): to go on failing over in a loop.
    pub async fn restart_as_replica(&mut self, i: usize, master: usize) {
        self.nodes[i].kill();
        let _ = std::fs::remove_file(self.nodes[i].dir.path().join("dump.rdb"));
        let master_port = self.nodes[master].port;
        let args = Self::data_args(
            self.nodes[i].port,
            self.nodes[i].dir.path(),
            Some(master_port),
        );
        self.nodes[i].spawn(&args);
        if !wait_pings(&mut self.nodes[i]).await {
            panic!("node {i} did not restart\n{}", self.logs());
        }
    }

    /// `SENTINEL FAILOVER` on the first running sentinel (graceful: the master is
    /// demoted after the replica caught up); returns at once.
    pub async fn failover(&self) {
        let s = (0..self.sentinels.len())
            .find(|&s| self.sentinels[s].is_running())
            .expect("a running sentinel");
        let started = Instant::now();
        loop {
            let mut conn = conn_to(&self.sentinels[s].url())
                .await
                .unwrap_or_else(|e| panic!("connect to sentinel {s}: {e}"));
            let reply: redis::RedisResult<()> = redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg(SERVICE)
                .query_async(&mut conn)
                .await;
            match reply {
                Ok(()) => return,
                // INPROG (a failover is still running), NOGOODSLAVE (replicas not
                // linked yet): retry within the bound.
                Err(e) if started.elapsed() < WAIT_BOUND => {
                    tracing::debug!(error = %e, "SENTINEL FAILOVER refused; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("SENTINEL FAILOVER: {e}\n{}", self.logs()),
            }
        }
    }

    /// SIGSTOP data node `i`.
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].signal("STOP");
        self.nodes[i].paused = true;
    }

    /// SIGCONT data node `i`.
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].signal("CONT");
        self.nodes[i].paused = false;
    }

    /// SIGSTOP sentinel `s`.
    pub fn pause_sentinel(&mut self, s: usize) {
        self.sentinels[s].signal("STOP");
        self.sentinels[s].paused = true;
    }

    /// SIGCONT sentinel `s`.
    pub fn resume_sentinel(&mut self, s: usize) {
        self.sentinels[s].signal("CONT");
        self.sentinels[s].paused = false;
    }

    /// SIGKILL sentinel `s`.
    pub fn kill_sentinel(&mut self, s: usize) {
        self.sentinels[s].kill();
    }
}

/// The sentinel events [`SentinelGroup::watch_events`] reports with the reporting
/// sentinel's `config-epoch` of the service (read right after the event arrives).
const EPOCH_EVENTS: [&str; 6] = [
    "+switch-master",
    "+failover-end",
    "+failover-end-for-timeout",
    "+sdown",
    "+odown",
    "+config-update-from",
];

/// Ends the tasks of [`SentinelGroup::watch_events`] when dropped.
pub struct EventWatch(Vec<tokio::task::JoinHandle<()>>);

impl Drop for EventWatch {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl SentinelGroup {
    /// Reports every event every sentinel publishes (`PSUBSCRIBE *`) as `record(line)`,
    /// `line` being "sentinel S: CHANNEL PAYLOAD", and for [`EPOCH_EVENTS`] the
    /// sentinel's config epoch of the service after it ("(config-epoch N)"): a failover
    /// history to read beside a checker's findings (which master took over when, and
    /// whether a second failover followed the first). Each subscription is made again
    /// when it breaks (events meanwhile are missed, and a line says so).
    pub fn watch_events(&self, record: impl Fn(String) + Send + Sync + 'static) -> EventWatch {
        let record = std::sync::Arc::new(record);
        let tasks = self
            .sentinels
            .iter()
            .enumerate()
            .map(|(s, sentinel)| {
                let url = sentinel.url();
                let record = record.clone();
                tokio::spawn(async move {
                    loop {
                        if let Err(e) = relay_events(s, &url, &*record).await {
                            record(format!("sentinel {s}: event subscription lost ({e})"));
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            })
            .collect();
        EventWatch(tasks)
    }
}

/// One subscription of [`SentinelGroup::watch_events`], until it fails.
async fn relay_events(
    s: usize,
    url: &str,
    record: &(dyn Fn(String) + Send + Sync),
) -> redis::RedisResult<()> {
    use futures_util::StreamExt;
    let client = redis::Client::open(url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.psubscribe("*").await?;
    let mut queries = conn_to(url).await?;
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        let channel = message.get_channel_name().to_owned();
        if channel.starts_with("__sentinel__") {
            continue;
        }
        let payload: String = message.get_payload().unwrap_or_default();
        let mut line = format!("sentinel {s}: {channel} {payload}");
        if EPOCH_EVENTS.contains(&channel.as_str()) {
            let fields: redis::RedisResult<Vec<String>> = redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(SERVICE)
                .query_async(&mut queries)
                .await;
            let epoch = fields.ok().and_then(|f| {
                f.chunks(2)
                    .find(|p| p[0] == "config-epoch")
                    .and_then(|p| p.get(1).cloned())
            });
            line += &format!(" (config-epoch {})", epoch.as_deref().unwrap_or("?"));
        }
        record(line);
    }
    Err(redis::RedisError::from((
        redis::ErrorKind::Io,
        "subscription ended",
    )))
}

/// A connection with 2 s connect and response timeouts, so that the rig never hangs.
pub async fn conn_to(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Waits (10 s at most) until `p` answers `PING`; `false` if it exited or did not.
async fn wait_pings(p: &mut Proc) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if p.exited() {
            return false;
        }
        if p.pings() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.kill();
    false
}
