//! The manager's command connection, replaced when it can no longer be trusted.
//!
//! redis-rs pairs replies with requests by their order on the connection. After a
//! command times out, nothing says whether the server got it: if the network swallowed
//! requests without closing the connection, every later reply would answer an earlier
//! request; if the connection went silent for good (a NAT that forgot it), every later
//! command would time out until the kernel gives up, hours later. redis-rs reconnects
//! on I/O errors but not on timeouts, so rdlock does it: a command that times out, or a
//! reply that does not echo the request's token, retires the connection, and the next
//! command opens a new one.

use std::sync::{Mutex, MutexGuard, PoisonError};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult};

pub(crate) struct Connection {
    client: redis::Client,
    config: ConnectionManagerConfig,
    current: Mutex<Current>,
}

struct Current {
    /// Bumped at each replacement, so that several failures of one connection replace
    /// it once.
    generation: u64,
    conn: ConnectionManager,
}

/// A connection handed out for one command, with the generation to report against.
pub(crate) struct Lease {
    generation: u64,
    pub(crate) conn: ConnectionManager,
}

impl Connection {
    pub(crate) fn new(
        client: redis::Client,
        config: ConnectionManagerConfig,
        conn: ConnectionManager,
    ) -> Self {
        Self {
            client,
            config,
            current: Mutex::new(Current {
                generation: 0,
                conn,
            }),
        }
    }

    pub(crate) fn get(&self) -> Lease {
        let current = self.current();
        Lease {
            generation: current.generation,
            conn: current.conn.clone(),
        }
    }

    /// Runs `result` past the connection: a timeout or a mismatched reply retires the
    /// connection it came from.
    pub(crate) fn check<T>(&self, lease: &Lease, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            if e.is_timeout() || is_mismatch(e) {
                self.replace(lease.generation);
            }
        }
        result
    }

    fn replace(&self, generation: u64) {
        let mut current = self.current();
        if current.generation != generation {
            return; // already replaced
        }
        // Lazy: connects on first use, so this never blocks or fails on I/O here.
        if let Ok(conn) =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
        {
            tracing::warn!("command connection timed out or desynchronised: replaced");
            current.generation += 1;
            current.conn = conn;
        }
    }

    fn current(&self) -> MutexGuard<'_, Current> {
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

fn is_mismatch(e: &RedisError) -> bool {
    e.is_io_error() && e.to_string().contains(MISMATCH)
}
