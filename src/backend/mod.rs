//! Where locks live: the seam between the locking logic and the Redis deployment.
//!
//! Everything above this module (`Lock`, `LockGuard`, the wait loop, the watchdog, the
//! notifier) is the same for every deployment; it reaches Redis only through
//! [`Backend`]: run one lock's script where the lock lives, run a pipeline on one lock's
//! keys, open a subscriber connection, and say what it is connected to. One file per
//! deployment: [`single`] (one server), [`cluster`] (Redis Cluster), [`sentinel`] (a
//! master behind Redis Sentinel, followed across failovers) and [`redlock`] (N
//! independent masters, each lock on a quorum).
//!
//! # Connections that can no longer be trusted
//!
//! redis-rs pairs replies with requests by their order on the connection. After a
//! command times out, nothing says whether the server got it: if the network swallowed
//! requests without closing the connection, every later reply would answer an earlier
//! request; if the connection went silent for good (a NAT that forgot it), every later
//! command would time out until the kernel gives up, hours later. redis-rs reconnects
//! on I/O errors but not on timeouts, so rdlock does it: a command that times out, or a
//! reply that does not echo the request's token, retires the connection, and the next
//! command opens a new one. On a cluster the whole cluster connection is rebuilt in
//! the background, and a request cut short by its caller's deadline counts too
//! (`cluster::Cluster::retire`): that is how a hung master is noticed.

pub(crate) mod cluster;
pub(crate) mod redlock;
pub(crate) mod sentinel;
pub(crate) mod single;

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use redis::{FromRedisValue, Pipeline, RedisError, RedisResult, ScriptInvocation};

/// The deployment a manager talks to.
pub(crate) enum Backend {
    /// One Redis server.
    Single(Box<single::Single>),
    /// A Redis Cluster.
    Cluster(cluster::Cluster),
    /// A master behind Redis Sentinel.
    Sentinel(sentinel::Sentinel),
    /// N independent masters, each lock on a quorum (`redlock.rs`: the scripts run
    /// as quorum operations there, not through [`Backend::invoke`]).
    Redlock(redlock::Redlock),
}

/// Which connection a reply came on, to retire that one (and no later one) when the
/// reply cannot be trusted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    generation: u64,
}

impl Backend {
    /// Runs one lock's script where the lock lives; a timeout retires the connection.
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> (Ticket, RedisResult<T>) {
        let (ticket, result) = match self {
            Self::Single(single) => {
                let (ticket, mut conn) = single.conn.get();
                (ticket, invocation.invoke_async(&mut conn).await)
            }
            Self::Cluster(cluster) => {
                let (ticket, mut conn) = cluster.conn.get();
                let in_flight = cluster.watch(ticket);
                let result = invocation.invoke_async(&mut conn).await;
                in_flight.answered();
                (ticket, result)
            }
            Self::Sentinel(sentinel) => match sentinel.get().await {
                (ticket, Ok(mut conn)) => (ticket, invocation.invoke_async(&mut conn).await),
                (ticket, Err(e)) => (ticket, Err(e)),
            },
            Self::Redlock(_) => (Ticket { generation: 0 }, Err(not_one_connection())),
        };
        (ticket, self.check(ticket, result))
    }

    /// [`invoke`](Self::invoke) for a script that may safely run twice (a renewal, a
    /// release: both act only while the key holds the owner's token). On a cluster, a
    /// timeout is retried once when the connection was rebuilt meanwhile (a hung master
    /// was failed over: see `cluster::Cluster::retire`), so that the release of a lock
    /// on it is not left to its lease.
    ///
    /// The third value is the first attempt's error when the reply is the retry's:
    /// that attempt may have run (only its reply was lost), so a retry that finds the
    /// key no longer ours cannot tell "lost before" from "released by the first try".
    pub(crate) async fn invoke_idempotent<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> (Ticket, RedisResult<T>, Option<RedisError>) {
        let (ticket, result) = self.invoke(invocation).await;
        match (self, result) {
            (Self::Cluster(cluster), Err(e)) if e.is_timeout() => {
                if cluster.rebuilt_since(ticket).await {
                    let (ticket, retried) = self.invoke(invocation).await;
                    (ticket, retried, Some(e))
                } else {
                    (ticket, Err(e), None)
                }
            }
            // The master moved (or its connection broke): once more, on the master the
            // sentinels name now (the call waits for it, up to a response timeout).
            (Self::Sentinel(_), Err(e)) if e.is_timeout() || sentinel::lost_master(&e) => {
                let (ticket, retried) = self.invoke(invocation).await;
                (ticket, retried, Some(e))
            }
            (_, result) => (ticket, result, None),
        }
    }

    /// Runs a pipeline on the keys of one lock (one hash tag, so one slot on a
    /// cluster); a timeout retires the connection.
    pub(crate) async fn query<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        let (ticket, result) = match self {
            Self::Single(single) => {
                let (ticket, mut conn) = single.conn.get();
                (ticket, pipe.query_async(&mut conn).await)
            }
            Self::Cluster(cluster) => {
                let (ticket, mut conn) = cluster.conn.get();
                let in_flight = cluster.watch(ticket);
                let result = pipe.query_async(&mut conn).await;
                in_flight.answered();
                (ticket, result)
            }
            Self::Sentinel(sentinel) => match sentinel.get().await {
                (ticket, Ok(mut conn)) => (ticket, pipe.query_async(&mut conn).await),
                (ticket, Err(e)) => (ticket, Err(e)),
            },
            Self::Redlock(_) => (Ticket { generation: 0 }, Err(not_one_connection())),
        };
        self.check(ticket, result)
    }

    /// Runs `result` past the connection it came on: a timeout or a mismatched reply
    /// retires that connection.
    pub(crate) fn check<T>(&self, ticket: Ticket, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            match self {
                Self::Single(single) if e.is_timeout() || is_mismatch(e) => single.retire(ticket),
                Self::Cluster(cluster) if e.is_timeout() || is_mismatch(e) => {
                    cluster.retire(ticket);
                }
                // Behind Sentinel a broken connection or a `READONLY` reply means the
                // master may have moved: never reconnect to the same address blindly.
                Self::Sentinel(sentinel)
                    if e.is_timeout() || is_mismatch(e) || sentinel::lost_master(e) =>
                {
                    sentinel.retire(ticket);
                }
                // Redlock: each node's connection is checked where its reply comes in.
                _ => {}
            }
        }
        result
    }

    /// A number that changes whenever this backend replaces its command connection or
    /// sees its topology change; a lease confirmed under one generation is *suspect*
    /// under another until a renewal confirms it again.
    ///
    /// - one server: the generation of the retire-and-replace connection
    ///   ([`Replaceable`]: bumped when a command timed out or a reply was
    ///   desynchronised). A reconnect that redis-rs's `ConnectionManager` makes by
    ///   itself after an I/O error is not counted: the command that met the error
    ///   failed, which a renewal reports on its own.
    /// - a cluster: bumped at every rebuild of the cluster connection (after a timeout,
    ///   a desynchronised reply, or a request cut short on a master that may hang:
    ///   `cluster::Cluster::retire`), each swap of the heal loop included. `MOVED` and
    ///   `ASK` replies are followed inside redis-rs, where they cannot be seen
    ///   cheaply, so they are not counted; one that redis-rs's retries did not absorb
    ///   fails the command, which a renewal reports on its own.
    /// - Sentinel: bumped each time the master moved to another node (a
    ///   `+switch-master`, a role check or a `READONLY` that found another master).
    /// - Redlock: the sum of the nodes' connection replacements. A node that lost the
    ///   key is not counted here: the renewal that finds it puts the key back (`SET NX`)
    ///   or, when a quorum no longer has it, reports the lease lost.
    pub(crate) fn generation(&self) -> u64 {
        match self {
            Self::Single(single) => single.conn.generation(),
            Self::Cluster(cluster) => cluster.conn.generation(),
            Self::Sentinel(sentinel) => sentinel.generation(),
            Self::Redlock(redlock) => redlock.generation(),
        }
    }

    /// Completes once the master has moved since `generation` (Sentinel); never on
    /// other backends. The notifier then leaves its subscriber connection (it may be
    /// on a demoted or dead master) and reconnects, waking every waiter.
    pub(crate) async fn moved(&self, generation: u64) {
        match self {
            Self::Sentinel(sentinel) => sentinel.moved(generation).await,
            _ => std::future::pending().await,
        }
    }

    /// The kind of deployment, for diagnostics (the `backend` field of rdlock's spans).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Single(_) => "single",
            Self::Cluster(_) => "cluster",
            Self::Sentinel(_) => "sentinel",
            Self::Redlock(_) => "redlock",
        }
    }

    /// A new subscriber connection for the notifier, never shared with commands.
    /// `attempt` counts the notifier's connection attempts: the cluster backend rotates
    /// over the nodes it knows, so that a dead node is not tried twice in a row.
    pub(crate) async fn subscriber(&self, attempt: u64) -> RedisResult<redis::aio::PubSub> {
        match self {
            Self::Single(single) => single.subscriber().await,
            Self::Cluster(cluster) => cluster.subscriber(attempt).await,
            Self::Sentinel(sentinel) => sentinel.subscriber().await,
            Self::Redlock(redlock) => redlock.subscriber(0).await,
        }
    }

    /// How many subscriber connections the notifier keeps: one per Redlock node, else
    /// one.
    pub(crate) fn subscribers(&self) -> usize {
        match self {
            Self::Redlock(redlock) => redlock.len(),
            _ => 1,
        }
    }

    /// How many subscribers must have heard the release of the same holder before a
    /// waiter is woken: a Redlock quorum, else one.
    pub(crate) fn wake_quorum(&self) -> usize {
        match self {
            Self::Redlock(redlock) => redlock.quorum(),
            _ => 1,
        }
    }

    /// A new subscriber connection for the notifier's `node`-th subscriber (see
    /// [`subscribers`](Self::subscribers)).
    pub(crate) async fn subscriber_at(
        &self,
        node: usize,
        attempt: u64,
    ) -> RedisResult<redis::aio::PubSub> {
        match self {
            Self::Redlock(redlock) => redlock.subscriber(node).await,
            _ => self.subscriber(attempt).await,
        }
    }
}

impl Backend {
    /// A connection of its own to the master, for a command followed by `WAIT` (which
    /// blocks the connection it is sent on: never the shared one). Give it back with
    /// [`SyncPool::put`] after a clean exchange; drop it otherwise. `None` on a
    /// cluster (replica sync is refused there).
    pub(crate) async fn sync_connection(
        &self,
    ) -> Option<RedisResult<(u64, redis::aio::MultiplexedConnection)>> {
        let (generation, info) = match self {
            Self::Single(single) => (0, single.info().clone()),
            Self::Sentinel(sentinel) => match sentinel.master_info().await {
                Some(info) => (sentinel.generation(), info),
                None => {
                    return Some(Err(RedisError::from((
                        redis::ErrorKind::Io,
                        "no master: the sentinels have not named a reachable master yet",
                    ))))
                }
            },
            Self::Cluster(_) | Self::Redlock(_) => return None,
        };
        let pool = self.sync_pool()?;
        if let Some(conn) = pool.take(generation) {
            return Some(Ok((generation, conn)));
        }
        Some(pool.open(generation, info).await)
    }

    /// The pool of [`sync_connection`](Self::sync_connection)s.
    pub(crate) fn sync_pool(&self) -> Option<&SyncPool> {
        match self {
            Self::Single(single) => Some(&single.sync),
            Self::Sentinel(sentinel) => Some(sentinel.sync_pool()),
            Self::Cluster(_) | Self::Redlock(_) => None,
        }
    }
}

/// Idle connections for commands followed by `WAIT`, each tagged with the backend
/// generation (the master) it goes to: one of an older generation is dropped.
pub(crate) struct SyncPool {
    idle: Mutex<Vec<(u64, redis::aio::MultiplexedConnection)>>,
    /// Connect and response timeouts; the response timeout covers the `WAIT` too.
    config: redis::AsyncConnectionConfig,
}

/// Idle sync connections kept at most; more are opened when needed and dropped.
const SYNC_POOL_IDLE: usize = 4;

impl SyncPool {
    pub(crate) fn new(config: redis::AsyncConnectionConfig) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            config,
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<(u64, redis::aio::MultiplexedConnection)>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self, generation: u64) -> Option<redis::aio::MultiplexedConnection> {
        let mut idle = self.idle();
        idle.retain(|(g, _)| *g == generation);
        idle.pop().map(|(_, conn)| conn)
    }

    async fn open(
        &self,
        generation: u64,
        info: redis::ConnectionInfo,
    ) -> RedisResult<(u64, redis::aio::MultiplexedConnection)> {
        let conn = redis::Client::open(info)?
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok((generation, conn))
    }

    /// Gives back a connection after a clean exchange.
    pub(crate) fn put(&self, generation: u64, conn: redis::aio::MultiplexedConnection) {
        let mut idle = self.idle();
        if idle.len() < SYNC_POOL_IDLE {
            idle.push((generation, conn));
        }
    }
}

/// What [`Backend::invoke`] and [`Backend::query`] answer on a Redlock backend, whose
/// operations are quorum operations (`scripts.rs` sends them to `redlock.rs`).
fn not_one_connection() -> RedisError {
    RedisError::from((
        redis::ErrorKind::Client,
        "a Redlock lock is not one script on one connection",
    ))
}

#[cfg(test)]
impl Backend {
    /// A single-server backend that has not connected (it connects on first use).
    pub(crate) fn unconnected(url: &str) -> Self {
        Self::Single(Box::new(single::Single::unconnected(url)))
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(single) => single.fmt(f),
            Self::Cluster(cluster) => cluster.fmt(f),
            Self::Sentinel(sentinel) => sentinel.fmt(f),
            Self::Redlock(redlock) => redlock.fmt(f),
        }
    }
}

/// A shared connection that can be swapped for a new one, once per failure.
pub(crate) struct Replaceable<C> {
    current: Mutex<Current<C>>,
}

struct Current<C> {
    /// Bumped at each replacement, so that several failures of one connection replace
    /// it once.
    generation: u64,
    conn: C,
}

impl<C: Clone> Replaceable<C> {
    pub(crate) fn new(conn: C) -> Self {
        Self {
            current: Mutex::new(Current {
                generation: 0,
                conn,
            }),
        }
    }

    /// The connection for one command, with the ticket to report against.
    pub(crate) fn get(&self) -> (Ticket, C) {
        let current = self.current();
        (
            Ticket {
                generation: current.generation,
            },
            current.conn.clone(),
        )
    }

    /// The number of replacements so far.
    pub(crate) fn generation(&self) -> u64 {
        self.current().generation
    }

    /// Replaces the connection `ticket` was for with `fresh()`, unless that was done
    /// already. `fresh` must not block (lazy connections).
    pub(crate) fn replace(&self, ticket: Ticket, fresh: impl FnOnce() -> Option<C>) {
        let mut current = self.current();
        if current.generation != ticket.generation {
            return; // already replaced
        }
        if let Some(conn) = fresh() {
            tracing::warn!("command connection timed out or desynchronised: replaced");
            current.generation += 1;
            current.conn = conn;
        }
    }

    /// Replaces the connection `ticket` was for with `fresh(&current)`, unless that was
    /// done already or `fresh` returns `None`; `true` if it replaced it.
    pub(crate) fn replace_if(&self, ticket: Ticket, fresh: impl FnOnce(&C) -> Option<C>) -> bool {
        let mut current = self.current();
        if current.generation != ticket.generation {
            return false;
        }
        match fresh(&current.conn) {
            Some(conn) => {
                current.generation += 1;
                current.conn = conn;
                true
            }
            None => false,
        }
    }

    /// Replaces the connection, whatever it is.
    pub(crate) fn set(&self, conn: C) {
        let mut current = self.current();
        current.generation += 1;
        current.conn = conn;
    }

    fn current(&self) -> MutexGuard<'_, Current<C>> {
        // A clone or a swap cannot leave the value half-written.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

const MISMATCH: &str = "a reply did not belong to its request (it did not echo the token)";

/// The error for a reply that answered another request: an I/O-class error, so that
/// callers treat it as a connection failure and retry.
pub(crate) fn mismatch() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        MISMATCH,
    ))
}

pub(crate) fn is_mismatch(e: &RedisError) -> bool {
    e.is_io_error() && e.to_string().contains(MISMATCH)
}
