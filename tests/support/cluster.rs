//! Test support: a private Redis Cluster (3 masters + 3 replicas by default) of
//! `redis-server` processes on free loopback ports, and the faults tests throw at it.
//!
//! Every node runs in its own temporary directory (its `nodes.conf` and log live there)
//! and is killed when the cluster is dropped. The cluster is formed with
//! `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`. Every wait is
//! bounded and a timed-out wait panics with the nodes' logs.
//!
//! Nodes are named by their index in [`RedisCluster::nodes`], which never changes: a
//! killed node keeps its index (and its port) and can be started again.
//!
//! The server and cli binaries follow `RDLOCK_SERVER_BIN` / `RDLOCK_CLI_BIN` (see
//! [`super::server_bin`]); Debian's `redis-cli` forms Valkey clusters too.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tempfile::TempDir;

use super::{cli_bin, free_port, server_bin};

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// How long any single wait of the rig may take before it panics. Generous: a busy
/// 2-core machine forms a cluster in ~2-5 s and promotes a replica ~4 s after a kill.
pub const WAIT_BOUND: Duration = Duration::from_secs(45);

/// How a test cluster is configured.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub masters: usize,
    pub replicas_per_master: usize,
    /// `cluster-node-timeout`: how long a silent master takes to be failed over.
    pub node_timeout_ms: u64,
    /// Further `--name value` arguments for every node.
    pub args: Vec<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            masters: 3,
            replicas_per_master: 1,
            node_timeout_ms: 2000,
            args: Vec::new(),
        }
    }
}

/// One node of a test cluster.
pub struct ClusterNode {
    child: Option<Child>,
    port: u16,
    bus_port: u16,
    dir: TempDir,
    /// Stopped with SIGSTOP (see [`RedisCluster::pause`]).
    paused: bool,
}

impl ClusterNode {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Alive and not paused.
    pub fn is_running(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process with kill(1).
    fn signal(&self, signal: &str) {
        let Some(child) = self.child.as_ref() else {
            panic!("node on port {} is not running", self.port);
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn spawn(&mut self, config: &ClusterConfig) -> std::io::Result<()> {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut command = Command::new(server_bin());
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &self.bus_port.to_string()])
            // Relative to --dir: each node keeps its own.
            .args(["--cluster-config-file", "nodes.conf"])
            .args([
                "--cluster-node-timeout",
                &config.node_timeout_ms.to_string(),
            ])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--dir", &dir, "--logfile", "server.log"])
            .args(["--enable-debug-command", "local"]);
        for arg in &config.args {
            command.arg(arg);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: nothing is saved (its `nodes.conf` stays, so it can be started again).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL ends a stopped process too
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Whether the process exited on its own (then it is forgotten).
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

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What one node says about one node of the cluster (a line of `CLUSTER NODES`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// Flagged `fail` (not `fail?`).
    pub failed: bool,
    /// Flagged `fail?`: the viewer suspects it.
    pub suspected: bool,
    /// The line of the viewer itself.
    pub myself: bool,
    /// The id of its master, for a replica.
    pub master_id: Option<String>,
    /// Slot ranges it serves (inclusive), for a master.
    pub slots: Vec<(u16, u16)>,
}

/// Parses the reply of `CLUSTER NODES`.
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeEntry> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            // 127.0.0.1:7000@17000[,hostname]
            let addr = fields[1].split(['@', ',']).next()?;
            let port = addr.rsplit_once(':')?.1.parse().ok()?;
            let flags: Vec<&str> = fields[2].split(',').collect();
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('[')) // [slot->-id] / [slot-<-id]: in migration
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => {
                        let slot = s.parse().ok()?;
                        Some((slot, slot))
                    }
                })
                .collect();
            Some(NodeEntry {
                id: fields[0].to_owned(),
                port,
                master: flags.contains(&"master"),
                failed: flags.contains(&"fail"),
                suspected: flags.contains(&"fail?"),
                myself: flags.contains(&"myself"),
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            })
        })
        .collect()
}

/// The hash slot of a key (CRC16/XMODEM of the key or of its `{hash tag}`, mod 16384),
/// as Redis computes it.
pub fn key_slot(key: &[u8]) -> u16 {
    let mut hashed = key;
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                hashed = &key[open + 1..open + 1 + len];
            }
        }
    }
    crc16_xmodem(hashed) % SLOTS
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of rdlock's keys for lock `id` (`rdlock:{tag}:...`, where the tag is the id
/// with `%`, `{` and `}` percent-escaped, as src/names.rs builds it).
pub fn lock_slot(id: &str) -> u16 {
    let tag = id
        .replace('%', "%25")
        .replace('{', "%7B")
        .replace('}', "%7D");
    key_slot(format!("rdlock:{{{tag}}}:lock").as_bytes())
}

/// Slot range (inclusive) -> id of the master serving it, as one node sees it.
type SlotOwners = BTreeMap<(u16, u16), String>;

/// A private Redis Cluster; every node is killed on drop.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    config: ClusterConfig,
    /// Node ids (`CLUSTER MYID`), by node index.
    ids: Vec<String>,
}

impl RedisCluster {
    /// 3 masters + 3 replicas, formed and ready (see [`Self::wait_settled`]).
    pub async fn start() -> Self {
        Self::start_with(ClusterConfig::default()).await
    }

    pub async fn start_with(config: ClusterConfig) -> Self {
        let count = config.masters * (1 + config.replicas_per_master);
        let mut cluster = Self {
            nodes: Vec::with_capacity(count),
            config,
            ids: Vec::new(),
        };
        for _ in 0..count {
            let node = cluster.start_node().await;
            cluster.nodes.push(node);
        }
        cluster.create().await;
        let mut ids = Vec::with_capacity(count);
        for i in 0..count {
            let id: String = cluster.query(i, redis::cmd("CLUSTER").arg("MYID")).await;
            ids.push(id);
        }
        cluster.ids = ids;
        cluster.wait_settled("the new cluster is ready").await;
        cluster
    }

    /// A node on fresh free ports, answering `PING`. The ports are free when we look,
    /// but another process may take one before the server binds: try a few.
    async fn start_node(&self) -> ClusterNode {
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("rdlock-cluster-")
                .tempdir()
                .expect("create a temporary directory");
            let mut node = ClusterNode {
                child: None,
                port: free_port(),
                bus_port: free_port(),
                dir,
                paused: false,
            };
            if node.port == node.bus_port || self.nodes.iter().any(|n| n.port == node.port) {
                continue;
            }
            if spawn_and_ping(&mut node, &self.config).await {
                return node;
            }
            last_log = node.log();
        }
        panic!("{} did not start; its log:\n{last_log}", server_bin());
    }

    /// `redis-cli --cluster create`, bounded; panics with its output and the logs.
    async fn create(&self) {
        let out_dir = tempfile::Builder::new()
            .prefix("rdlock-cluster-create-")
            .tempdir()
            .expect("create a temporary directory");
        let out_path = out_dir.path().join("create.out");
        let out = std::fs::File::create(&out_path).expect("create the output file");
        let err = out.try_clone().expect("clone the output file");
        let mut command = Command::new(cli_bin());
        command.args(["--cluster", "create"]);
        for node in &self.nodes {
            command.arg(node.addr());
        }
        command
            .args([
                "--cluster-replicas",
                &self.config.replicas_per_master.to_string(),
            ])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "{} is not on PATH: install redis-tools (Debian/Ubuntu: `sudo apt-get \
                 install -y redis-tools`), or set RDLOCK_CLI_BIN",
                cli_bin()
            ),
            Err(e) => panic!("could not start {}: {e}", cli_bin()),
        };
        let started = Instant::now();
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if started.elapsed() > WAIT_BOUND {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if status.is_none_or(|s| !s.success()) {
            let output = std::fs::read_to_string(&out_path).unwrap_or_default();
            panic!(
                "`{} --cluster create` failed ({}):\n{output}\n{}",
                cli_bin(),
                status.map_or_else(
                    || format!("timed out after {WAIT_BOUND:?}"),
                    |s| s.to_string()
                ),
                self.logs()
            );
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    pub fn node(&self, i: usize) -> &ClusterNode {
        &self.nodes[i]
    }

    /// The node id (`CLUSTER MYID`) of node `i`.
    pub fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// The index of the node with id `id`.
    pub fn index_of_id(&self, id: &str) -> Option<usize> {
        self.ids.iter().position(|x| x == id)
    }

    /// The indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// `redis://` URLs of every running node (seeds for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.running()
            .into_iter()
            .map(|i| self.nodes[i].url())
            .collect()
    }

    /// A redis-rs cluster client seeded with every running node, with short timeouts
    /// and retries so that the rig's own commands never hang.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClientBuilder::new(self.urls())
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(2))
            .retries(5)
            .min_retry_wait(50)
            .max_retry_wait(500)
            .build()
            .expect("a valid cluster client")
    }

    /// A cluster connection for the test's own commands.
    pub async fn cluster_conn(&self) -> redis::cluster_async::ClusterConnection {
        self.client()
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }

    /// A plain (non-cluster) connection to node `i`, with timeouts.
    pub async fn conn(&self, i: usize) -> MultiplexedConnection {
        connect(&self.nodes[i].url())
            .await
            .unwrap_or_else(|e| panic!("connect to node {i}: {e}\n{}", self.logs()))
    }

    /// Runs `cmd` on node `i`; panics (with the logs) on error.
    pub async fn query<T: redis::FromRedisValue>(&self, i: usize, cmd: &mut redis::Cmd) -> T {
        let mut conn = self.conn(i).await;
        match cmd.query_async(&mut conn).await {
            Ok(value) => value,
            Err(e) => panic!("node {i}: {cmd:?}: {e}\n{}", self.logs()),
        }
    }

    /// Every node's log, for a failure message (the last 40 lines of each).
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let log = node.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            all.push_str(&format!(
                "--- node {i} (port {}, {}) ---\n{}\n",
                node.port,
                if node.is_running() {
                    "running"
                } else {
                    "stopped"
                },
                tail.join("\n")
            ));
        }
        all
    }

    /// `CLUSTER NODES` as seen by node `i`.
    pub async fn view(&self, i: usize) -> Vec<NodeEntry> {
        let text: String = self.query(i, redis::cmd("CLUSTER").arg("NODES")).await;
        parse_cluster_nodes(&text)
    }

    /// The index of the master that serves `slot`, as node `i` sees it.
    async fn owner_seen_by(&self, i: usize, slot: u16) -> Option<usize> {
        let view = self.view(i).await;
        let owner = view
            .iter()
            .find(|e| e.master && e.slots.iter().any(|&(a, b)| a <= slot && slot <= b))?;
        self.index_of_id(&owner.id)
    }

    /// The index of the master that serves `slot` (asked of a running node; call
    /// [`Self::wait_settled`] first if the topology may be moving).
    pub async fn master_of_slot(&self, slot: u16) -> usize {
        let asker = self.running()[0];
        self.owner_seen_by(asker, slot)
            .await
            .unwrap_or_else(|| panic!("no master serves slot {slot}\n{}", self.logs()))
    }

    /// The index of the master that serves `key`.
    pub async fn master_of_key(&self, key: &[u8]) -> usize {
        self.master_of_slot(key_slot(key)).await
    }

    /// The masters (running, serving slots), by index.
    pub async fn masters(&self) -> Vec<usize> {
        let asker = self.running()[0];
        let view = self.view(asker).await;
        let mut masters: Vec<usize> = view
            .iter()
            .filter(|e| e.master && !e.failed && !e.slots.is_empty())
            .filter_map(|e| self.index_of_id(&e.id))
            .collect();
        masters.sort_unstable();
        masters
    }

    /// The running replicas of master `master`, by index.
    pub async fn replicas_of(&self, master: usize) -> Vec<usize> {
        let asker = self.running()[0];
        let view = self.view(asker).await;
        let mut replicas: Vec<usize> = view
            .iter()
            .filter(|e| !e.failed && e.master_id.as_deref() == Some(self.id(master)))
            .filter_map(|e| self.index_of_id(&e.id))
            .filter(|&i| self.nodes[i].is_running())
            .collect();
        replicas.sort_unstable();
        replicas
    }

    /// The slot ranges master `master` serves.
    pub async fn slots_of(&self, master: usize) -> Vec<(u16, u16)> {
        let view = self.view(master).await;
        view.into_iter()
            .find(|e| e.id == self.id(master))
            .map(|e| e.slots)
            .unwrap_or_default()
    }

    /// An id whose lock keys (`rdlock:{id}:...`) live on master `master`: `prefix`
    /// followed by the smallest number that lands there.
    pub async fn id_on_master(&self, master: usize, prefix: &str) -> String {
        let ranges = self.slots_of(master).await;
        assert!(!ranges.is_empty(), "node {master} serves no slot");
        (0u32..)
            .map(|n| format!("{prefix}{n}"))
            .find(|id| {
                let slot = lock_slot(id);
                ranges.iter().any(|&(a, b)| a <= slot && slot <= b)
            })
            .expect("some id lands on every master")
    }

    /// `role` from node `i`'s `INFO replication`, and for a replica its link status.
    async fn role(&self, i: usize) -> Option<(String, bool)> {
        let mut conn = connect(&self.nodes[i].url()).await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .ok()?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                .map(str::to_owned)
        };
        let role = field("role")?;
        let link_up = field("master_link_status").as_deref() == Some("up");
        Some((role, link_up))
    }

    /// Whether node `i` says `role:master`.
    pub async fn is_master(&self, i: usize) -> bool {
        matches!(self.role(i).await, Some((role, _)) if role == "master")
    }

    /// One check of "settled": every running node says `cluster_state:ok`, every running
    /// replica's link is up, and every running node sees the same master (a running
    /// one, saying `role:master`) for every slot. `Err` says what is not yet so.
    pub async fn settled(&self) -> Result<(), String> {
        let running = self.running();
        let mut reference: Option<(usize, SlotOwners)> = None;
        let mut views = Vec::with_capacity(running.len());
        for &i in &running {
            let mut conn = connect(&self.nodes[i].url())
                .await
                .map_err(|e| format!("node {i}: connect: {e}"))?;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("node {i}: CLUSTER INFO: {e}"))?;
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                return Err(format!("node {i}: cluster_state is not ok"));
            }
            match self.role(i).await {
                Some((role, link_up)) if role == "slave" && !link_up => {
                    return Err(format!("node {i}: replica link is not up"))
                }
                None => return Err(format!("node {i}: no role")),
                _ => {}
            }
            let text: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("node {i}: CLUSTER NODES: {e}"))?;
            let view = parse_cluster_nodes(&text);
            let mut owners = BTreeMap::new();
            for entry in view.clone() {
                if entry.master {
                    for range in entry.slots {
                        owners.insert(range, entry.id.clone());
                    }
                }
            }
            let covered: u32 = owners.keys().map(|&(a, b)| u32::from(b - a) + 1).sum();
            if covered != u32::from(SLOTS) {
                return Err(format!("node {i}: sees {covered} slots served"));
            }
            views.push((i, view));
            match &reference {
                None => reference = Some((i, owners)),
                Some((first, seen)) if *seen != owners => {
                    return Err(format!("nodes {first} and {i} disagree on slot owners"))
                }
                Some(_) => {}
            }
        }
        let Some((_, owners)) = reference else {
            return Err("no node is running".to_owned());
        };
        // Gossip has spread: every node sees every running node as it sees itself
        // (master, or replica of the same master), and suspects none of them.
        let selves: Vec<NodeEntry> = views
            .iter()
            .filter_map(|(_, view)| view.iter().find(|e| e.myself).cloned())
            .collect();
        for (i, view) in &views {
            for me in &selves {
                let Some(seen) = view.iter().find(|e| e.id == me.id) else {
                    return Err(format!("node {i} does not know node {}", me.port));
                };
                if seen.failed || seen.suspected {
                    return Err(format!("node {i} suspects running node {}", me.port));
                }
                if seen.master != me.master || seen.master_id != me.master_id {
                    return Err(format!("node {i} has a stale role for node {}", me.port));
                }
            }
        }
        let mut masters: Vec<&String> = owners.values().collect();
        masters.dedup();
        for id in masters {
            let Some(i) = self.index_of_id(id) else {
                return Err(format!("unknown master {id}"));
            };
            if !self.nodes[i].is_running() {
                return Err(format!("slots still served by stopped node {i}"));
            }
            if !self.is_master(i).await {
                return Err(format!("node {i} serves slots but is not role:master"));
            }
        }
        Ok(())
    }

    /// Waits (bounded by [`WAIT_BOUND`]) until [`Self::settled`]; panics with the
    /// reason and the logs.
    pub async fn wait_settled(&self, what: &str) {
        let started = Instant::now();
        loop {
            let last = match self.settled().await {
                Ok(()) => return,
                Err(reason) => reason,
            };
            if started.elapsed() > WAIT_BOUND {
                panic!(
                    "timed out after {WAIT_BOUND:?} waiting for: {what} (last: {last})\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs node `i` (whatever its role) and returns at once.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// SIGKILLs the master of `slot` and waits until one of its replicas serves the
    /// slot and the cluster is settled. Returns (killed master, promoted replica).
    pub async fn kill_master_of_slot(&mut self, slot: u16) -> (usize, usize) {
        let old = self.master_of_slot(slot).await;
        let replicas = self.replicas_of(old).await;
        assert!(
            !replicas.is_empty(),
            "master {old} has no running replica to promote"
        );
        self.kill(old);
        self.wait_settled(&format!(
            "a replica of killed master {old} serves slot {slot}"
        ))
        .await;
        let new = self.master_of_slot(slot).await;
        assert!(
            replicas.contains(&new),
            "slot {slot} went to node {new}, not to a replica of {old} ({replicas:?})"
        );
        (old, new)
    }

    /// SIGSTOPs node `i` and returns at once: it keeps its connections open but answers
    /// nothing; past `cluster-node-timeout` the others fail it over. It no longer counts
    /// as running (seeds, [`Self::settled`]) until [`Self::resume`].
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].signal("STOP");
        self.nodes[i].paused = true;
    }

    /// SIGCONTs a paused node and returns at once (see [`Self::wait_settled`]).
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].signal("CONT");
        self.nodes[i].paused = false;
    }

    /// SIGSTOPs the master of `slot` and waits until one of its replicas serves the slot
    /// and the others are settled. Returns (paused master, promoted replica); the paused
    /// master still believes it is the master until [`Self::resume`] and gossip.
    pub async fn pause_master_of_slot(&mut self, slot: u16) -> (usize, usize) {
        let old = self.master_of_slot(slot).await;
        let replicas = self.replicas_of(old).await;
        assert!(!replicas.is_empty(), "master {old} has no running replica");
        self.pause(old);
        self.wait_settled(&format!(
            "a replica of paused master {old} serves slot {slot}"
        ))
        .await;
        let new = self.master_of_slot(slot).await;
        assert!(
            replicas.contains(&new),
            "slot {slot} went to node {new}, not to a replica of {old} ({replicas:?})"
        );
        (old, new)
    }

    /// Starts a killed node again (same port, same directory: it rejoins with its
    /// `nodes.conf`, empty) and waits until the cluster is settled.
    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        let config = self.config.clone();
        let started = spawn_and_ping(&mut self.nodes[i], &config).await;
        assert!(
            started,
            "node {i} did not restart; its log:\n{}",
            self.nodes[i].log()
        );
        self.wait_settled(&format!("restarted node {i} rejoined"))
            .await;
    }

    /// `CLUSTER FAILOVER` on replica `replica`; waits until it is the master of its old
    /// master's slots, the old master is its replica, and the cluster is settled.
    /// Returns the old master.
    pub async fn failover(&self, replica: usize) -> usize {
        self.failover_with(replica, None).await
    }

    /// [`Self::failover`] with an option: `Some("FORCE")` (no handshake with the
    /// master) or `Some("TAKEOVER")` (no agreement of the other masters either).
    pub async fn failover_with(&self, replica: usize, option: Option<&str>) -> usize {
        let view = self.view(replica).await;
        let master_id = view
            .iter()
            .find(|e| e.id == self.id(replica))
            .and_then(|e| e.master_id.clone())
            .unwrap_or_else(|| panic!("node {replica} is not a replica"));
        let old = self
            .index_of_id(&master_id)
            .unwrap_or_else(|| panic!("node {replica}'s master {master_id} is unknown"));
        let slots = self.slots_of(old).await;
        let _: String = self
            .query(replica, redis::cmd("CLUSTER").arg("FAILOVER").arg(option))
            .await;
        let started = Instant::now();
        loop {
            let swapped = self.is_master(replica).await && !self.is_master(old).await;
            if swapped && self.settled().await.is_ok() {
                break;
            }
            if started.elapsed() > WAIT_BOUND {
                panic!(
                    "timed out after {WAIT_BOUND:?} waiting for replica {replica} to take \
                     over from {old}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(self.slots_of(replica).await, slots, "slots after failover");
        assert_eq!(
            self.replicas_of(replica).await,
            vec![old],
            "the old master follows the new one"
        );
        old
    }

    /// Fails over the master of `slot` to one of its replicas. Returns (old, new).
    pub async fn failover_slot(&self, slot: u16) -> (usize, usize) {
        let old = self.master_of_slot(slot).await;
        let replica = *self
            .replicas_of(old)
            .await
            .first()
            .unwrap_or_else(|| panic!("master {old} has no replica"));
        let was = self.failover(replica).await;
        assert_eq!(was, old);
        (old, replica)
    }

    /// First half of a slot migration: `to` IMPORTING, the owner MIGRATING. From here,
    /// commands for keys not yet moved get `ASK` redirections. Returns the source.
    pub async fn begin_migration(&self, slot: u16, to: usize) -> usize {
        let from = self.master_of_slot(slot).await;
        assert_ne!(from, to, "slot {slot} is already on node {to}");
        let _: () = self
            .query(
                to,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("IMPORTING")
                    .arg(self.id(from)),
            )
            .await;
        let _: () = self
            .query(
                from,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("MIGRATING")
                    .arg(self.id(to)),
            )
            .await;
        from
    }

    /// Moves every key of `slot` from `from` to `to` with `MIGRATE`, 100 at a time.
    pub async fn move_keys(&self, slot: u16, from: usize, to: usize) {
        let started = Instant::now();
        loop {
            let keys: Vec<Vec<u8>> = self
                .query(
                    from,
                    redis::cmd("CLUSTER")
                        .arg("GETKEYSINSLOT")
                        .arg(slot)
                        .arg(100),
                )
                .await;
            if keys.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < WAIT_BOUND,
                "keys of slot {slot} still on node {from} after {WAIT_BOUND:?}"
            );
            let _: redis::Value = self
                .query(
                    from,
                    redis::cmd("MIGRATE")
                        .arg("127.0.0.1")
                        .arg(self.nodes[to].port)
                        .arg("")
                        .arg(0)
                        .arg(5000)
                        .arg("KEYS")
                        .arg(&keys),
                )
                .await;
        }
    }

    /// Second half of a slot migration: `SETSLOT NODE` on the destination, the source,
    /// then every other master; waits until the cluster is settled with `to` serving
    /// the slot.
    pub async fn finish_migration(&self, slot: u16, from: usize, to: usize) {
        let mut order = vec![to, from];
        for m in self.masters().await {
            if !order.contains(&m) {
                order.push(m);
            }
        }
        for i in order {
            let _: () = self
                .query(
                    i,
                    redis::cmd("CLUSTER")
                        .arg("SETSLOT")
                        .arg(slot)
                        .arg("NODE")
                        .arg(self.id(to)),
                )
                .await;
        }
        let started = Instant::now();
        loop {
            if self.settled().await.is_ok() {
                let mut agreed = true;
                for i in self.running() {
                    if self.owner_seen_by(i, slot).await != Some(to) {
                        agreed = false;
                        break;
                    }
                }
                if agreed {
                    return;
                }
            }
            if started.elapsed() > WAIT_BOUND {
                panic!(
                    "timed out after {WAIT_BOUND:?} waiting for every node to see slot {slot} \
                     on node {to}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Migrates `slot` (and its keys) to master `to`: begin, move keys, finish.
    /// Returns the old owner.
    pub async fn migrate_slot(&self, slot: u16, to: usize) -> usize {
        let from = self.begin_migration(slot, to).await;
        self.move_keys(slot, from, to).await;
        self.finish_migration(slot, from, to).await;
        from
    }

    /// Another master than the one serving `slot` (to migrate it to).
    pub async fn other_master(&self, slot: u16) -> usize {
        let owner = self.master_of_slot(slot).await;
        self.masters()
            .await
            .into_iter()
            .find(|&m| m != owner)
            .expect("at least two masters")
    }
}

/// Spawns `node` and waits (bounded) until it answers `PING`; false if it exited
/// or never answered.
async fn spawn_and_ping(node: &mut ClusterNode, config: &ClusterConfig) -> bool {
    if let Err(e) = node.spawn(config) {
        if e.kind() == std::io::ErrorKind::NotFound {
            panic!(
                "{} is not on PATH: install redis-server (Debian/Ubuntu: `sudo apt-get \
                 install -y redis-server`), or set RDLOCK_SERVER_BIN",
                server_bin()
            );
        }
        panic!("could not start {}: {e}", server_bin());
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if node.exited() {
            return false;
        }
        if let Ok(mut conn) = connect(&node.url()).await {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
            if pong.is_ok() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.kill();
    false
}

/// A plain connection with short connect and response timeouts: the rig never hangs
/// on a dead or stopped node.
async fn connect(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
