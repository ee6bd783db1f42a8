//! Redis Cluster: redis-rs's cluster client for commands (each lock's keys share one
//! hash tag, so each script runs on the master of one slot), and one plain subscriber
//! connection to any one node, for classic pub/sub.
//!
//! Classic `PUBLISH` is broadcast over the cluster bus to every node, so a subscriber on
//! any node, master or replica, receives every release whatever the slot of its
//! channel; a failover or a slot migration does not touch its subscriptions. When its
//! node dies, the notifier reconnects through [`Cluster::subscriber`], which rotates
//! over the nodes known (the seeds and the nodes of `CLUSTER SLOTS`), resubscribes and
//! wakes every waiter. Sharded pub/sub (`SPUBLISH`) would need a subscriber per master
//! and follow every slot move (the server ends sharded subscriptions of a migrated
//! slot); see the crate docs.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult, ServerErrorKind, Value,
};

use super::{Replaceable, Ticket};
use crate::config::Timeouts;
use crate::errors::RdLockError;

/// Retries of one request inside the cluster client (redirections, `TRYAGAIN`, a
/// reconnect); rdlock's own retry loops and deadlines decide the rest.
const RETRIES: u32 = 3;
/// The cluster client's waits between its retries, in ms.
const MIN_RETRY_WAIT_MS: u64 = 20;
const MAX_RETRY_WAIT_MS: u64 = 200;
/// Per node connection attempt: a silent seed costs this much.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long building a replacement connection may take before it is abandoned (the
/// next failure starts another).
const REBUILD_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a replacement connection is built again while a master of its map does
/// not answer, and for how long at most ([`Cluster::retire`]).
const HEAL_RETRY: Duration = Duration::from_millis(500);
const HEAL_FOR: Duration = Duration::from_secs(60);
/// A request dropped unanswered after this long counts as a timeout
/// ([`Cluster::watch`]): a round trip on a healthy cluster takes a few ms.
const SLOW: Duration = Duration::from_millis(250);
/// How long refreshing the node list (before a subscriber reconnect) may take.
const REFRESH_TIMEOUT: Duration = Duration::from_millis(500);

pub(crate) struct Cluster {
    /// Seeds given by the user, first (its credentials and TLS are everyone's).
    seeds: Vec<ConnectionInfo>,
    timeouts: Timeouts,
    pub(super) conn: Arc<Replaceable<ClusterConnection>>,
    /// A replacement connection is being built ([`Self::retire`]).
    rebuilding: Arc<AtomicBool>,
    /// Every node known: the seeds, then those of the last `CLUSTER SLOTS`.
    nodes: Mutex<Vec<ConnectionInfo>>,
    /// The ids of the nodes of the last `CLUSTER SLOTS`: a subscriber connects only to
    /// one of them ([`Self::subscriber`]).
    node_ids: Mutex<Vec<String>>,
    /// A plain connection to the first seed, for
    /// [`get_connection_manager`](crate::RdLockConnectionManager::get_connection_manager).
    seed_conn: ConnectionManager,
}

impl Cluster {
    /// Connects to the cluster through any of `seeds` and learns its slots.
    pub(crate) async fn connect(
        seeds: Vec<ConnectionInfo>,
        timeouts: Timeouts,
    ) -> Result<Self, RdLockError> {
        if seeds.is_empty() {
            return Err(RdLockError::InvalidConfig {
                option: "nodes",
                reason: "no node given: a cluster needs at least one seed node",
            });
        }
        let client = client(&seeds, timeouts).map_err(RdLockError::InvalidUrl)?;
        let conn = client.get_async_connection().await.map_err(|e| {
            if e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
                && e.to_string().contains("cluster support disabled")
            {
                RdLockError::InvalidConfig {
                    option: "nodes",
                    reason: "not a Redis Cluster: the server has cluster support disabled \
                             (use RdLockConnectionManager::new for one server)",
                }
            } else {
                RdLockError::from_redis(e)
            }
        })?;
        let seed_client = redis::Client::open(seeds[0].clone()).map_err(RdLockError::InvalidUrl)?;
        let seed_conn = ConnectionManager::new_lazy_with_config(
            seed_client,
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeouts.connect))
                .set_response_timeout(Some(timeouts.response)),
        )
        .map_err(RdLockError::InvalidUrl)?;
        let cluster = Self {
            nodes: Mutex::new(seeds.clone()),
            node_ids: Mutex::new(Vec::new()),
            seeds,
            timeouts,
            conn: Arc::new(Replaceable::new(conn)),
            rebuilding: Arc::new(AtomicBool::new(false)),
            seed_conn,
        };
        cluster.refresh_nodes().await;
        Ok(cluster)
    }

    /// A clone of the current cluster connection.
    pub(crate) fn cluster_connection(&self) -> ClusterConnection {
        self.conn.get().1
    }

    /// The plain connection to the first seed.
    pub(crate) fn seed_connection(&self) -> ConnectionManager {
        self.seed_conn.clone()
    }

    /// The first seed's parameters.
    pub(crate) fn first_seed(&self) -> &ConnectionInfo {
        &self.seeds[0]
    }

    /// Replaces the cluster connection, with one that is connected and knows where
    /// every slot lives.
    ///
    /// redis-rs learns a new topology from `MOVED` replies and errors, never from
    /// timeouts: a master that hangs (paused, partitioned) keeps its slots in the
    /// client's map after a replica took them over, and every request for them times
    /// out. And a lazy connection would spend each first request's response timeout
    /// on connecting to the hung node, then be retired in turn. So the replacement is
    /// built in the background (one task at a time), from every node known (the seeds
    /// may be the nodes that died), swapped in once it has learnt the slots, and built
    /// again every [`HEAL_RETRY`] until every master of its map answers `PING` (the
    /// hung master was failed over), for at most [`HEAL_FOR`]. Meanwhile the current
    /// connection serves; the scripts' token echo still checks every reply.
    pub(super) fn retire(&self, _ticket: Ticket) {
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return; // a replacement is on its way
        }
        let nodes = self.known_nodes();
        let timeouts = self.timeouts;
        // Weak: the loop ends with the manager (it would otherwise go on connecting to
        // every node for up to HEAL_FOR after the manager is gone).
        let slot = Arc::downgrade(&self.conn);
        let rebuilding = self.rebuilding.clone();
        let seed = self.seeds[0].clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (dropped while it shuts down): nothing will use the connection.
            self.rebuilding.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(async move {
            let started = tokio::time::Instant::now();
            let mut was_healthy = false;
            loop {
                if slot.strong_count() == 0 {
                    break;
                }
                let connecting = async {
                    let client = client(&nodes, timeouts)?;
                    let config = ClusterConfig::new()
                        .set_connection_timeout(NODE_CONNECT_TIMEOUT.min(timeouts.connect))
                        .set_response_timeout(timeouts.response);
                    client.get_async_connection_with_config(config).await
                };
                match tokio::time::timeout(REBUILD_TIMEOUT, connecting).await {
                    Ok(Ok(conn)) => {
                        let Some(current) = slot.upgrade() else { break };
                        let mut probe = conn.clone();
                        let (ticket, _) = current.get();
                        current.replace(ticket, || Some(conn));
                        drop(current);
                        let healthy =
                            every_master_answers(&mut probe, &seed, timeouts.response).await;
                        // Done when the connection swapped in was built after the
                        // topology was already seen healthy: nodes learn a promotion
                        // by gossip, so the map of a connection built at that moment
                        // may still name the hung master.
                        if healthy && was_healthy {
                            break;
                        }
                        was_healthy = healthy;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "cluster connection: rebuild failed"),
                    Err(_) => tracing::warn!("cluster connection: rebuild timed out"),
                }
                if started.elapsed() > HEAL_FOR {
                    tracing::warn!("cluster connection: a master still does not answer");
                    break;
                }
                tokio::time::sleep(HEAL_RETRY).await;
            }
            rebuilding.store(false, Ordering::Release);
        });
    }

    /// Waits (at most one response timeout) until the connection `ticket` was for has
    /// been replaced; `true` if it was.
    pub(super) async fn rebuilt_since(&self, ticket: Ticket) -> bool {
        let started = Instant::now();
        loop {
            if self.conn.get().0.generation != ticket.generation {
                return true;
            }
            if started.elapsed() >= self.timeouts.response {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Watches one request on `ticket`'s connection: if it is dropped unanswered after
    /// [`SLOW`] (a watchdog's deadline or a `lock_timeout` cut it short), the master
    /// may hang, and the connection is healed as after a timeout.
    pub(super) fn watch(&self, ticket: Ticket) -> InFlight<'_> {
        InFlight {
            cluster: self,
            ticket,
            started: Instant::now(),
            answered: false,
        }
    }

    /// A subscriber connection to one node: the `attempt`-th of those known, after a
    /// refresh of the list from `CLUSTER SLOTS` on reconnects.
    pub(super) async fn subscriber(&self, attempt: u64) -> RedisResult<redis::aio::PubSub> {
        if attempt > 0 {
            self.refresh_nodes().await;
        }
        let nodes = self.known_nodes();
        let index = usize::try_from(attempt).unwrap_or(0) % nodes.len().max(1);
        let info = nodes
            .get(index)
            .cloned()
            .unwrap_or_else(|| self.seeds[0].clone());
        let client = redis::Client::open(info)?;
        if !self.is_member(&client).await? {
            // A seed outside the cluster (a standalone server, another cluster) never
            // hears this cluster's releases: waiters would sleep out every lease. The
            // notifier tries the next node.
            tracing::warn!(node = %client.get_connection_info().addr(), "subscriber: node is not a member of the cluster; skipped");
            return Err(RedisError::from((
                ErrorKind::Client,
                "not a node of this cluster",
            )));
        }
        client.get_async_pubsub().await
    }

    /// Whether the node of `client` belongs to this cluster: its `CLUSTER MYID` is among
    /// the ids of the last `CLUSTER SLOTS`. `true` when that cannot be told (no ids
    /// known, `CLUSTER MYID` not allowed by an ACL); an error when the node does not
    /// answer.
    async fn is_member(&self, client: &redis::Client) -> RedisResult<bool> {
        let ids = self
            .node_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if ids.is_empty() {
            return Ok(true);
        }
        let mut conn = client.get_multiplexed_async_connection().await?;
        match redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async::<String>(&mut conn)
            .await
        {
            Ok(id) => Ok(ids.contains(&id)),
            Err(e)
                if e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
                    && e.to_string().contains("cluster support disabled") =>
            {
                Ok(false)
            }
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) => Ok(true),
            Err(e) if e.is_timeout() || e.is_io_error() || e.is_connection_dropped() => Err(e),
            Err(_) => Ok(true),
        }
    }

    fn known_nodes(&self) -> Vec<ConnectionInfo> {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Adds the nodes of `CLUSTER SLOTS` to the list (best effort, bounded).
    async fn refresh_nodes(&self) {
        let mut conn = self.cluster_connection();
        let reply = tokio::time::timeout(
            REFRESH_TIMEOUT.min(self.timeouts.response),
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut conn),
        )
        .await;
        let Ok(Ok(reply)) = reply else { return };
        let ids = slot_node_ids(&reply);
        if !ids.is_empty() {
            *self.node_ids.lock().unwrap_or_else(PoisonError::into_inner) = ids;
        }
        let mut nodes = self.seeds.clone();
        for (host, port) in slot_nodes(&reply, false) {
            let info = node_info(&self.seeds[0], host, port);
            if !nodes.iter().any(|n| n.addr() == info.addr()) {
                nodes.push(info);
            }
        }
        *self.nodes.lock().unwrap_or_else(PoisonError::into_inner) = nodes;
    }
}

/// A request in flight ([`Cluster::watch`]).
pub(super) struct InFlight<'a> {
    cluster: &'a Cluster,
    ticket: Ticket,
    started: Instant,
    answered: bool,
}

impl InFlight<'_> {
    /// The reply came (whatever it was: the caller checks it).
    pub(super) fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.answered && self.started.elapsed() >= SLOW {
            self.cluster.retire(self.ticket);
        }
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seeds: Vec<String> = self.seeds.iter().map(|s| s.addr().to_string()).collect();
        f.debug_struct("Cluster")
            .field("seeds", &seeds)
            .field("known_nodes", &self.known_nodes().len())
            .finish()
    }
}

/// A cluster client with rdlock's settings: bounded connects and replies, few retries
/// with short waits (the caller's deadline decides the rest).
fn client(nodes: &[ConnectionInfo], timeouts: Timeouts) -> RedisResult<ClusterClient> {
    ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(NODE_CONNECT_TIMEOUT.min(timeouts.connect))
        .response_timeout(timeouts.response)
        .retries(RETRIES)
        .min_retry_wait(MIN_RETRY_WAIT_MS)
        .max_retry_wait(MAX_RETRY_WAIT_MS)
        .build()
}

/// Whether every master of the slot map (`CLUSTER SLOTS`, as one node sees it) answers
/// `PING` on a plain connection within `timeout`. (A `PING` through the cluster
/// connection says nothing of a master it holds no connection to.)
async fn every_master_answers(
    conn: &mut ClusterConnection,
    seed: &ConnectionInfo,
    timeout: Duration,
) -> bool {
    let slots = tokio::time::timeout(
        timeout,
        redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Value>(conn),
    )
    .await;
    let Ok(Ok(slots)) = slots else { return false };
    let mut masters = slot_nodes(&slots, true);
    masters.sort();
    masters.dedup();
    if masters.is_empty() {
        return false;
    }
    for (host, port) in masters {
        let ping = async {
            let client = redis::Client::open(node_info(seed, host, port))?;
            let mut plain = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<()>(&mut plain).await
        };
        if !matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(()))) {
            return false;
        }
    }
    true
}

/// The parameters of node `host:port`: the seed's, with its credentials and TLS.
fn node_info(seed: &ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
    let addr = match seed.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    seed.clone().set_addr(addr)
}

/// The id of every node in a `CLUSTER SLOTS` reply.
fn slot_node_ids(reply: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Value::Array(ranges) = reply else {
        return out;
    };
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        for node in parts.iter().skip(2) {
            let Value::Array(fields) = node else { continue };
            let id = match fields.get(2) {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            if !id.is_empty() && !out.contains(&id) {
                out.push(id);
            }
        }
    }
    out
}

/// The `(host, port)` of every node (or every master) in a `CLUSTER SLOTS` reply:
/// `[[start, end, [host, port, id, ..], [replica ..] ..] ..]`.
fn slot_nodes(reply: &Value, masters_only: bool) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    let Value::Array(ranges) = reply else {
        return out;
    };
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let nodes = if masters_only { 1 } else { usize::MAX };
        for node in parts.iter().skip(2).take(nodes) {
            let Value::Array(fields) = node else { continue };
            let host = match fields.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            let port = match fields.get(1) {
                Some(Value::Int(p)) => u16::try_from(*p).ok(),
                _ => None,
            };
            if let Some(port) = port.filter(|_| !host.is_empty() && host != "?") {
                out.push((host, port));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::IntoConnectionInfo;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn slot_nodes_reads_masters_and_replicas() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8191),
                node("10.0.0.1", 7000),
                node("10.0.0.2", 7001),
            ]),
            Value::Array(vec![
                Value::Int(8192),
                Value::Int(16383),
                node("10.0.0.3", 7002),
                node("?", 7003),
                node("", 7004),
            ]),
        ]);
        assert_eq!(
            slot_nodes(&reply, false),
            vec![
                ("10.0.0.1".to_owned(), 7000),
                ("10.0.0.2".to_owned(), 7001),
                ("10.0.0.3".to_owned(), 7002),
            ]
        );
        assert_eq!(
            slot_nodes(&reply, true),
            vec![("10.0.0.1".to_owned(), 7000), ("10.0.0.3".to_owned(), 7002)]
        );
        assert!(slot_nodes(&Value::Nil, false).is_empty());
        assert_eq!(slot_node_ids(&reply), vec!["id".to_owned()]);
        assert!(slot_node_ids(&Value::Nil).is_empty());
    }

    #[test]
    fn node_info_keeps_the_seeds_credentials() {
        let seed = "redis://user:secret@10.0.0.1:7000/"
            .into_connection_info()
            .unwrap();
        let info = node_info(&seed, "10.0.0.9".to_owned(), 7009);
        assert_eq!(
            info.addr(),
            &ConnectionAddr::Tcp("10.0.0.9".to_owned(), 7009)
        );
        assert_eq!(info.redis_settings().username(), Some("user"));
        assert_eq!(info.redis_settings().password(), Some("secret"));
    }
}
