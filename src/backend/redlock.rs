//! Redlock: N independent Redis masters, each lock held while a quorum (N/2 + 1) of
//! them holds its token.
//!
//! One lock operation is not one script on one connection here: the backend runs the
//! acquire, renewal, release and read of one lock as a *quorum operation* — the same
//! script on every node in parallel, each bounded by the per-node timeout — and hands
//! the lock code one aggregated outcome of the types it already knows (`Acquire`,
//! "renewed / not ours", "released / not ours"). An operation returns as soon as its
//! outcome is decided (a quorum agreed, or a quorum can no longer agree): a node that
//! is slow or paused costs nothing once the others have answered, and at most the
//! per-node timeout otherwise.
//!
//! # Fencing tokens
//!
//! Per-node `INCR` counters diverge, and "the largest of the quorum's counters" can go
//! backwards (SCALE-OUT.md, "Redlock"). The fencing token is agreed on instead by a
//! quorum compare-and-set register (the scheme of pottery's `NextId`): the acquire
//! script reads each granting node's counter (a majority), the client proposes the
//! largest + 1, and each node takes the proposal only if it is greater than its
//! counter; the acquisition gets the token only if a majority took that exact value
//! (else it proposes again above the largest counter seen). Any two majorities share a
//! node, so a token handed out was taken by a majority, the next acquisition reads at
//! least it from its own majority, and tokens strictly increase — as long as the nodes
//! of a majority keep their counters: fence keys never expire, and a node restarts
//! with its data, or stays down for at least one maximum lease.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use redis::{ConnectionInfo, RedisError, RedisResult, Script, ScriptInvocation};

mod node;

use crate::config::Timeouts;
use crate::errors::{is_transient, RdLockError};
use crate::names::LockNames;
use crate::scripts::Acquire;
use node::{node_timed_out, Node};

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/redlock_acquire.lua")));
static FENCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/redlock_fence.lua")));
static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/redlock_renew.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/redlock_release.lua")));
static FORCE_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/redlock_force_release.lua")));

/// The most nodes a Redlock manager takes (the subscriber keeps one bit per node).
pub(crate) const MAX_NODES: usize = 64;
/// Rounds of the fence compare-and-set before an acquisition gives up (only concurrent
/// proposers, which a held quorum lock makes rare, make a round fail).
const FENCE_ROUNDS: usize = 4;
/// The per-node timeout, when none is set, is the lease / [`LEASE_FRACTION`] (5 %, as
/// redsync), within [`MIN_NODE_TIMEOUT`] and the response timeout.
const LEASE_FRACTION: u32 = 20;
const MIN_NODE_TIMEOUT: Duration = Duration::from_millis(50);
/// The per-node timeout of releases and reads when none is set (they have no lease at
/// hand), within the response timeout.
const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(500);
/// The random back-off after a split vote: this much at most.
const SPLIT_BACKOFF_MAX_MS: u64 = 100;

/// N independent masters.
pub(crate) struct Redlock {
    nodes: Vec<Arc<Node>>,
    quorum: usize,
    /// Set on the builder; `None`: derived from the lease.
    node_timeout: Option<Duration>,
    timeouts: Timeouts,
}

/// What one node said to an operation: `None` while it has not answered.
type Replies<T> = Vec<Option<RedisResult<T>>>;

impl Redlock {
    /// The nodes, with connections opened on first use; checks that a quorum answers.
    pub(crate) async fn connect(
        infos: Vec<ConnectionInfo>,
        node_timeout: Option<Duration>,
        timeouts: Timeouts,
    ) -> Result<Self, RdLockError> {
        if infos.is_empty() {
            return Err(RdLockError::InvalidConfig {
                option: "nodes",
                reason: "no node given: Redlock needs at least one node (typically 3 or 5)",
            });
        }
        if infos.len() > MAX_NODES {
            return Err(RdLockError::InvalidConfig {
                option: "nodes",
                reason: "more than 64 nodes",
            });
        }
        for (i, a) in infos.iter().enumerate() {
            // Another database of one server is the same server: it would fail with it.
            if infos[..i].iter().any(|b| b.addr() == a.addr()) {
                return Err(RdLockError::InvalidConfig {
                    option: "nodes",
                    reason: "the same node is given twice: it would count twice in the quorum",
                });
            }
        }
        let mut nodes = Vec::with_capacity(infos.len());
        for info in infos {
            nodes.push(Arc::new(Node::lazy(info, timeouts)?));
        }
        let quorum = nodes.len() / 2 + 1;
        let redlock = Self {
            nodes,
            quorum,
            node_timeout,
            timeouts,
        };
        // The first connections: every node in parallel, each within the connect
        // timeout. Each answering node names its server process (`run_id`): one server
        // given under two names (a host name and its address, two databases) would
        // count twice in the quorum, and losing that one process would lose two nodes.
        let ids = redlock
            .gather(
                |node| async move {
                    let (_, mut conn) = node.single.conn.get();
                    match tokio::time::timeout(
                        timeouts.connect,
                        redis::cmd("INFO")
                            .arg("server")
                            .query_async::<String>(&mut conn),
                    )
                    .await
                    {
                        Ok(Ok(info)) => Ok(run_id(&info)),
                        // A user whose ACL refuses INFO: the node answered, it cannot
                        // be told apart from the others (documented).
                        Ok(Err(e)) if e.code() == Some("NOPERM") => Ok(None),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(node_timed_out()),
                    }
                },
                |_| false,
            )
            .await;
        let answered: Vec<&Option<String>> = ids
            .iter()
            .flatten()
            .filter_map(|r| r.as_ref().ok())
            .collect();
        for (i, id) in answered.iter().enumerate() {
            if id.is_some() && answered[..i].contains(id) {
                return Err(RdLockError::InvalidConfig {
                    option: "nodes",
                    reason: "two nodes are the same server (the same run_id): it would count twice in the quorum",
                });
            }
        }
        if answered.len() < quorum {
            let errors = ids.into_iter().flatten().filter_map(Result::err);
            return Err(RdLockError::from_redis(
                redlock.no_quorum(errors, "connect"),
            ));
        }
        Ok(redlock)
    }

    /// The sum of the nodes' connection replacements (each node's connection is
    /// retired after a timeout or a desynchronised reply): a change makes a lease
    /// *suspect* until a quorum renewal confirms it again.
    pub(crate) fn generation(&self) -> u64 {
        self.nodes
            .iter()
            .map(|node| node.single.conn.generation())
            .sum()
    }

    /// How many nodes must agree.
    pub(crate) fn quorum(&self) -> usize {
        self.quorum
    }

    /// How many nodes there are.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The first node's parameters (there is one: `connect` refuses an empty list).
    pub(crate) fn first_node(&self) -> &ConnectionInfo {
        self.nodes[0].single.info()
    }

    /// A clone of the first node's command connection.
    pub(crate) fn first_connection(&self) -> redis::aio::ConnectionManager {
        self.nodes[0].single.connection_manager()
    }

    /// A new subscriber connection to node `node`.
    pub(crate) async fn subscriber(&self, node: usize) -> RedisResult<redis::aio::PubSub> {
        match self.nodes.get(node) {
            Some(n) => n.single.subscriber().await,
            None => Err(RedisError::from((
                redis::ErrorKind::Client,
                "no such redlock node",
            ))),
        }
    }

    /// The per-node timeout of an operation on a lock with `lease_ms`.
    fn timeout_for(&self, lease_ms: u64) -> Duration {
        self.node_timeout.unwrap_or_else(|| {
            let fraction = Duration::from_millis(lease_ms) / LEASE_FRACTION;
            fraction
                .max(MIN_NODE_TIMEOUT)
                .min(self.timeouts.response.max(MIN_NODE_TIMEOUT))
        })
    }

    /// The per-node timeout of releases and reads.
    fn timeout_without_lease(&self) -> Duration {
        self.node_timeout
            .unwrap_or_else(|| DEFAULT_NODE_TIMEOUT.min(self.timeouts.response))
    }

    /// Runs `op` on every node in parallel, each as a task of its own, and collects
    /// the replies until `decided` says the outcome is known (or every node has
    /// answered). Nodes that have not answered by then are left `None`; their tasks go
    /// on to the end (bounded by the per-node timeout), so that a node that is merely
    /// slower than the quorum still gets the request.
    async fn gather<T, F, Fut>(&self, op: F, decided: impl Fn(&Replies<T>) -> bool) -> Replies<T>
    where
        T: Send + 'static,
        F: Fn(Arc<Node>) -> Fut,
        Fut: Future<Output = RedisResult<T>> + Send + 'static,
    {
        let mut replies: Replies<T> = (0..self.nodes.len()).map(|_| None).collect();
        let mut pending: FuturesUnordered<_> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let task = tokio::spawn(op(node.clone()));
                async move {
                    let reply = task.await.unwrap_or_else(|e| {
                        Err(RedisError::from(std::io::Error::other(format!(
                            "redlock node task failed: {e}"
                        ))))
                    });
                    (i, reply)
                }
            })
            .collect();
        while let Some((i, reply)) = pending.next().await {
            replies[i] = Some(reply);
            if decided(&replies) {
                break;
            }
        }
        replies
    }

    /// The error for "no quorum could be reached": the first node error that retrying
    /// cannot cure if there is one (a `WRONGTYPE`, a `NOPERM`: `lock()` must not wait
    /// through it for ever), else an I/O-class error (transient: `lock()` and the
    /// watchdog retry, `try_lock` reports [`RdLockError::Unreachable`]) that says how
    /// many nodes failed and why.
    fn no_quorum(&self, errors: impl IntoIterator<Item = RedisError>, what: &str) -> RedisError {
        let errors: Vec<RedisError> = errors.into_iter().collect();
        if let Some(e) = errors.iter().find(|e| !is_transient(e)) {
            return e.clone();
        }
        let first = errors
            .first()
            .map_or_else(|| "no answer".to_owned(), ToString::to_string);
        RedisError::from(std::io::Error::other(format!(
            "redlock {what}: no quorum ({} of {} nodes needed; {} failed, first error: {first})",
            self.quorum,
            self.nodes.len(),
            errors.len(),
        )))
    }

    /// Acquires on a quorum: the acquire script on every node, then the fence
    /// compare-and-set. On failure the attempt is undone on every node by its token.
    pub(crate) async fn acquire(
        &self,
        names: &LockNames,
        token: &str,
        lease_ms: u64,
        owner: &str,
    ) -> RedisResult<Acquire> {
        let n = self.nodes.len();
        let q = self.quorum;
        let timeout = self.timeout_for(lease_ms);
        let mut invocation = ACQUIRE.key(&names.key);
        invocation.key(&names.fence).arg(token).arg(lease_ms);
        let invocation = Arc::new(invocation);
        let undo_one = Arc::new(self.release_invocation(names, token));
        let owned: Arc<str> = Arc::from(token);
        // Set when this acquisition will not be ours (it failed, or its future was
        // dropped): a node's request still in flight then undoes itself on that node,
        // *after* it ran there. A release sent beside it (the undo below, or the lock's
        // undo of a dropped attempt) can reach the node first (seen in tests on the first
        // ids of a run: most likely the script's first run on a connection, which takes
        // two round trips, NOSCRIPT then the script) and would leave the key there for a
        // whole lease.
        let abandon = Abandon::armed();
        let replies = self
            .gather(
                |node| {
                    let (invocation, token) = (invocation.clone(), owned.clone());
                    let (undo_one, abandoned) = (undo_one.clone(), abandon.flag());
                    async move {
                        if abandoned.load(Ordering::SeqCst) {
                            return Err(node_timed_out());
                        }
                        let reply = node
                            .script::<(i64, i64, String, String)>(&invocation, timeout)
                            .await
                            .and_then(|(ok, value, echo, holder)| {
                                node.echoed(&echo, &token)?;
                                Ok((ok == 1, value, holder))
                            });
                        // Granted, or unknown (an error, a timeout): the key may be ours.
                        if abandoned.load(Ordering::SeqCst) && !matches!(reply, Ok((false, _, _))) {
                            let _ = node.script::<Option<String>>(&undo_one, timeout).await;
                        }
                        reply
                    }
                },
                |replies| {
                    let granted = count(replies, |r| matches!(r, Ok((true, _, _))));
                    let other = count(replies, |r| !matches!(r, Ok((true, _, _))));
                    granted >= q || other > n - q
                },
            )
            .await;
        let mut granted_fences = Vec::new();
        let mut held_pttls = Vec::new();
        let mut holders = Vec::new();
        let mut errors = Vec::new();
        for reply in replies.into_iter().flatten() {
            match reply {
                Ok((true, fence, _)) => granted_fences.push(fence),
                Ok((false, pttl, holder)) => {
                    held_pttls.push(pttl);
                    holders.push(holder);
                }
                Err(e) => errors.push(e),
            }
        }
        if granted_fences.len() >= q {
            let base = granted_fences.iter().copied().max().unwrap_or(0);
            match self.fence(names, token, owner, base, timeout).await {
                Ok(fence) => {
                    // Ours: the nodes still to answer set our key, as they should.
                    abandon.disarm();
                    return Ok(Acquire::Acquired { fence });
                }
                Err(e) => {
                    abandon.set();
                    self.undo(names, token).await;
                    return Err(e);
                }
            }
        }
        abandon.set();
        // Not a quorum: undo on every node (those that did not answer may have run it;
        // they also undo themselves once they answer).
        if held_pttls.len() < n {
            self.undo(names, token).await;
        }
        // Held: one holder has a quorum (or had it: its keys expire), so its release
        // publishes on a quorum of nodes and wakes us. Keys of several holders, none
        // with a quorum, are a split vote's minorities (contenders that are undoing
        // them right now): their undos wake nobody, and waiting out their PTTL would
        // leave the lock free for a whole lease (every contender can see such a split
        // at once). That is a split vote for us too: the back-off below. (The replies
        // stop at the first n - quorum + 1 refusals: on an odd number of nodes that is a
        // quorum, all of one holder's when it holds the lock. On an even number a
        // holder may show fewer, and its waiters then retry after back-offs of 1-100 ms
        // instead of waiting for its release: more commands, never a lease.)
        if held_pttls.len() > n - q && most_by_one(&holders) >= q {
            // The lock can be ours once `need` of the holders' keys have expired.
            let need = q - (n - held_pttls.len());
            held_pttls.sort_unstable();
            let pttl = held_pttls.get(need - 1).copied().unwrap_or(-1);
            return Ok(Acquire::Held {
                pttl: u64::try_from(pttl).ok().map(Duration::from_millis),
            });
        }
        if errors.len() > n - q {
            return Err(self.no_quorum(errors, "acquire"));
        }
        // A split vote (contenders each got a minority), or a mix of holders and
        // failures: a random back-off, so that the contenders do not meet again.
        Ok(Acquire::Held {
            pttl: Some(split_backoff()),
        })
    }

    /// The quorum compare-and-set of the fencing token, starting above `base` (the
    /// largest counter of a majority).
    async fn fence(
        &self,
        names: &LockNames,
        token: &str,
        owner: &str,
        mut base: i64,
        timeout: Duration,
    ) -> RedisResult<u64> {
        let n = self.nodes.len();
        let q = self.quorum;
        for _ in 0..FENCE_ROUNDS {
            let proposal = base.saturating_add(1);
            let mut invocation = FENCE.key(&names.key);
            invocation
                .key(&names.fence)
                .key(&names.owner)
                .arg(token)
                .arg(proposal)
                .arg(owner);
            let invocation = Arc::new(invocation);
            let owned: Arc<str> = Arc::from(token);
            let replies = self
                .gather(
                    |node| {
                        let (invocation, token) = (invocation.clone(), owned.clone());
                        async move {
                            let (taken, current, echo): (i64, i64, String) =
                                node.script(&invocation, timeout).await?;
                            node.echoed(&echo, &token)?;
                            Ok((taken == 1, current))
                        }
                    },
                    |replies| {
                        let taken = count(replies, |r| matches!(r, Ok((true, _))));
                        let other = count(replies, |r| !matches!(r, Ok((true, _))));
                        taken >= q || other > n - q
                    },
                )
                .await;
            let mut taken = 0;
            let mut errors = Vec::new();
            for reply in replies.into_iter().flatten() {
                match reply {
                    Ok((true, _)) => taken += 1,
                    Ok((false, current)) => base = base.max(current),
                    Err(e) => errors.push(e),
                }
            }
            if taken >= q {
                return Ok(u64::try_from(proposal).unwrap_or(0));
            }
            if errors.len() > n - q {
                return Err(self.no_quorum(errors, "fence"));
            }
            base = base.max(proposal);
        }
        Err(self.no_quorum(Vec::new(), "fence (concurrent proposals)"))
    }

    /// Releases an attempt on every node by its token (best effort, bounded).
    async fn undo(&self, names: &LockNames, token: &str) {
        if let Err(e) = self.release(names, token).await {
            tracing::debug!(key = %names.key, error = %e, "redlock: undo of a failed attempt incomplete; the lease ends it");
        }
    }

    /// Renews on a quorum; a node that lost the key (restarted empty) gets it back
    /// with `SET NX`, never over another token, and counts as ours. `Ok(false)` as soon
    /// as so many nodes hold another token (or revoked ours: a force release) that no
    /// quorum is possible; an error when too few answered.
    pub(crate) async fn renew(
        &self,
        names: &LockNames,
        token: &str,
        lease_ms: u64,
    ) -> RedisResult<bool> {
        let n = self.nodes.len();
        let q = self.quorum;
        let timeout = self.timeout_for(lease_ms);
        let mut invocation = RENEW.key(&names.key);
        invocation
            .key(&names.owner)
            .key(revoked_key(names))
            .arg(token)
            .arg(lease_ms);
        let invocation = Arc::new(invocation);
        let owned: Arc<str> = Arc::from(token);
        let replies = self
            .gather(
                |node| {
                    let (invocation, token) = (invocation.clone(), owned.clone());
                    async move {
                        let (status, echo): (i64, String) =
                            node.script(&invocation, timeout).await?;
                        node.echoed(&echo, &token)?;
                        if status == 2 {
                            tracing::info!(node = ?node.single.info().addr(), "redlock: lock key put back on a node that had lost it");
                        }
                        Ok(status != 0)
                    }
                },
                |replies| {
                    count(replies, |r| matches!(r, Ok(true))) >= q
                        || count(replies, |r| matches!(r, Ok(false))) > n - q
                },
            )
            .await;
        if count(&replies, |r| matches!(r, Ok(true))) >= q {
            return Ok(true);
        }
        if count(&replies, |r| matches!(r, Ok(false))) > n - q {
            return Ok(false);
        }
        let errors = replies.into_iter().flatten().filter_map(Result::err);
        Err(self.no_quorum(errors, "renew"))
    }

    /// Releases on every node. `Ok(true)` when some node still held our token,
    /// `Ok(false)` when a quorum answered and none did; an error when fewer answered.
    pub(crate) async fn release(&self, names: &LockNames, token: &str) -> RedisResult<bool> {
        let q = self.quorum;
        let timeout = self.timeout_without_lease();
        let invocation = Arc::new(self.release_invocation(names, token));
        let owned: Arc<str> = Arc::from(token);
        let replies = self
            .gather(
                |node| {
                    let (invocation, token) = (invocation.clone(), owned.clone());
                    async move {
                        let echo: Option<String> = node.script(&invocation, timeout).await?;
                        match echo {
                            Some(echo) => node.echoed(&echo, &token).map(|()| true),
                            None => Ok(false),
                        }
                    }
                },
                // Free on a quorum: waiters can take it; the rest were sent.
                |replies| count(replies, |r| matches!(r, Ok(true))) >= q,
            )
            .await;
        if count(&replies, |r| matches!(r, Ok(true))) > 0 {
            return Ok(true);
        }
        if count(&replies, |r| r.is_ok()) >= q {
            return Ok(false);
        }
        let errors = replies.into_iter().flatten().filter_map(Result::err);
        Err(self.no_quorum(errors, "release"))
    }

    /// The release script of `token` on one node.
    fn release_invocation(&self, names: &LockNames, token: &str) -> ScriptInvocation<'static> {
        let mut invocation = RELEASE.key(&names.key);
        invocation
            .key(&names.owner)
            .arg(token)
            .arg(&names.release_channel);
        invocation
    }

    /// Deletes the lock on every node (only the acquisition with fencing token `fence`
    /// when given). `Ok(true)` when a node held it.
    pub(crate) async fn force_release(
        &self,
        names: &LockNames,
        fence: Option<u64>,
    ) -> RedisResult<bool> {
        let timeout = self.timeout_without_lease();
        let mut invocation = FORCE_RELEASE.key(&names.key);
        invocation
            .key(&names.owner)
            .key(revoked_key(names))
            .arg(&names.release_channel);
        if let Some(fence) = fence {
            invocation.arg(fence);
        }
        let invocation = Arc::new(invocation);
        let replies = self
            .gather(
                |node| {
                    let invocation = invocation.clone();
                    async move { node.script::<bool>(&invocation, timeout).await }
                },
                |_| false,
            )
            .await;
        if count(&replies, |r| matches!(r, Ok(true))) > 0 {
            return Ok(true);
        }
        if count(&replies, |r| r.is_ok()) >= self.quorum {
            return Ok(false);
        }
        let errors = replies.into_iter().flatten().filter_map(Result::err);
        Err(self.no_quorum(errors, "force release"))
    }

    /// The lock as a quorum sees it: the owner record and remaining lease of the token
    /// held on a quorum (`-2`: none is), and the largest fence counter of the nodes
    /// that answered (a quorum must).
    pub(crate) async fn inspect(
        &self,
        names: &LockNames,
    ) -> RedisResult<(Option<String>, i64, Option<u64>)> {
        let timeout = self.timeout_without_lease();
        let mut pipe = redis::pipe();
        pipe.get(&names.owner)
            .pttl(&names.key)
            .get(&names.fence)
            .get(&names.key);
        type Read = (Option<String>, i64, Option<u64>, Option<String>);
        let pipe = Arc::new(pipe);
        let replies = self
            .gather(
                |node| {
                    let pipe = pipe.clone();
                    async move { node.pipeline::<Read>(&pipe, timeout).await }
                },
                |_| false,
            )
            .await;
        if count(&replies, |r| r.is_ok()) < self.quorum {
            let errors = replies.into_iter().flatten().filter_map(Result::err);
            return Err(self.no_quorum(errors, "read"));
        }
        let reads: Vec<Read> = replies
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .collect();
        let fence = reads.iter().filter_map(|r| r.2).max();
        for (record, _, _, token) in &reads {
            let Some(token) = token else { continue };
            let mut pttls: Vec<i64> = reads
                .iter()
                .filter(|r| r.3.as_ref() == Some(token))
                .map(|r| r.1)
                .collect();
            if pttls.len() >= self.quorum {
                // Held while a quorum holds it: until the quorum-th longest lease ends.
                pttls.sort_unstable_by(|a, b| b.cmp(a));
                let record = record.clone().or_else(|| {
                    reads
                        .iter()
                        .find(|r| r.3.as_ref() == Some(token) && r.0.is_some())
                        .and_then(|r| r.0.clone())
                });
                return Ok((record, pttls[self.quorum - 1], fence));
            }
        }
        Ok((None, -2, fence))
    }
}

/// Marks an acquisition abandoned when dropped while armed (its future dropped, or a
/// failure), so that its node requests still in flight undo themselves.
struct Abandon {
    flag: Arc<AtomicBool>,
    armed: bool,
}

impl Abandon {
    fn armed() -> Self {
        Self {
            flag: Arc::new(AtomicBool::new(false)),
            armed: true,
        }
    }

    fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.armed {
            self.set();
        }
    }
}

/// The `run_id` line of an `INFO server` reply (`None` if a server does not give one).
fn run_id(info: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
}

/// `rdlock:{<id>}:revoked`: a force-released token, for the rest of its lease.
fn revoked_key(names: &LockNames) -> String {
    let prefix = names.key.strip_suffix(":lock").unwrap_or(&names.key);
    format!("{prefix}:revoked")
}

/// How many of `holders` (the SHA-1s of the holders' tokens) name the most frequent one.
fn most_by_one(holders: &[String]) -> usize {
    holders
        .iter()
        .map(|h| holders.iter().filter(|other| *other == h).count())
        .max()
        .unwrap_or(0)
}

/// How many replies match.
fn count<T>(replies: &Replies<T>, matches: impl Fn(&RedisResult<T>) -> bool) -> usize {
    replies.iter().flatten().filter(|r| matches(r)).count()
}

/// A random back-off after a split vote: 1..=[`SPLIT_BACKOFF_MAX_MS`] ms.
fn split_backoff() -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_millis(1 + random % SPLIT_BACKOFF_MAX_MS)
}

impl fmt::Debug for Redlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.single.info().addr().to_string())
            .collect();
        f.debug_struct("Redlock")
            .field("nodes", &nodes)
            .field("quorum", &self.quorum)
            .field("node_timeout", &self.node_timeout)
            .finish()
    }
}
