//! Where locks live: the seam between the locking logic and the Redis deployment.
//!
//! Everything above this module (`Lock`, `LockGuard`, the wait loop, the watchdog, the
//! notifier) is the same for every deployment; it reaches Redis only through
//! [`Backend`]: run one lock's script where the lock lives, run a pipeline on one lock's
//! keys, open a subscriber connection, and say what it is connected to. One file per
//! deployment: [`single`] (one server) and [`cluster`] (Redis Cluster). Sentinel and
//! Redlock add variants.
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
            Self::Redlock(_) => (Ticket { generation: 0 }, Err(not_one_connection())),
        };
        self.check(ticket, result)
    }

    /// Runs `result` past the connection it came on: a timeout or a mismatched reply
    /// retires that connection.
    pub(crate) fn check<T>(&self, ticket: Ticket, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            if e.is_timeout() || is_mismatch(e) {
                match self {
                    Self::Single(single) => single.retire(ticket),
                    Self::Cluster(cluster) => cluster.retire(ticket),
                    // Each node's connection is checked where its reply comes in.
                    Self::Redlock(_) => {}
                }
            }
        }
        result
    }

    /// A new subscriber connection for the notifier, never shared with commands.
    /// `attempt` counts the notifier's connection attempts: the cluster backend rotates
    /// over the nodes it knows, so that a dead node is not tried twice in a row.
    pub(crate) async fn subscriber(&self, attempt: u64) -> RedisResult<redis::aio::PubSub> {
        match self {
            Self::Single(single) => single.subscriber().await,
            Self::Cluster(cluster) => cluster.subscriber(attempt).await,
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
