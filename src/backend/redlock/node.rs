//! One Redlock node: its command connection, bounded requests, and when to replace
//! the connection.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::{FromRedisValue, Pipeline, RedisError, RedisResult, ScriptInvocation};

use super::super::single::Single;
use super::super::{is_mismatch, mismatch, Ticket};
use crate::config::Timeouts;
use crate::errors::RdLockError;

pub(super) struct Node {
    pub(super) single: Single,
    /// When the node last answered anything: a connection that stays silent for a
    /// whole response timeout is replaced (a paused node costs one new connection per
    /// response timeout, not one per request).
    last_answer: Mutex<Instant>,
    /// The manager's response timeout.
    response: Duration,
}

impl Node {
    /// A node whose connection opens on first use.
    pub(super) fn lazy(
        info: redis::ConnectionInfo,
        timeouts: Timeouts,
    ) -> Result<Self, RdLockError> {
        Ok(Self {
            single: Single::lazy(info, timeouts)?,
            last_answer: Mutex::new(Instant::now()),
            response: timeouts.response,
        })
    }

    /// One script on this node, within `timeout`.
    ///
    /// A connection found broken (the node restarted: the first command on the old
    /// connection fails) is retried once on the reconnected one, within the same
    /// timeout. Every Redlock script may run twice: they act by token (a second
    /// acquire finds the key and counts as "held", which only loses a vote; the undo
    /// releases it by token).
    pub(super) async fn script<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
        timeout: Duration,
    ) -> RedisResult<T> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut retried = false;
        loop {
            let (ticket, mut conn) = self.single.conn.get();
            let result =
                tokio::time::timeout_at(deadline, invocation.invoke_async(&mut conn)).await;
            match result {
                Ok(Err(e)) if !retried && (e.is_connection_dropped() || e.is_io_error()) => {
                    tracing::debug!(error = %e, "redlock node: connection broken, retrying once");
                    retried = true;
                }
                result => return self.settle(ticket, started, result),
            }
        }
    }

    /// One pipeline on this node, within `timeout` (retried once as
    /// [`script`](Self::script)).
    pub(super) async fn pipeline<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
        timeout: Duration,
    ) -> RedisResult<T> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut retried = false;
        loop {
            let (ticket, mut conn) = self.single.conn.get();
            let result = tokio::time::timeout_at(deadline, pipe.query_async(&mut conn)).await;
            match result {
                Ok(Err(e)) if !retried && (e.is_connection_dropped() || e.is_io_error()) => {
                    retried = true;
                }
                result => return self.settle(ticket, started, result),
            }
        }
    }

    /// Books a reply: an answer refreshes the node; a redis-rs timeout or a wrong echo
    /// retires its connection, and so does the per-node timeout once the node has been
    /// silent for a whole response timeout.
    fn settle<T>(
        &self,
        ticket: Ticket,
        started: Instant,
        result: Result<RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> RedisResult<T> {
        let mut last = self
            .last_answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(Err(e)) if e.is_timeout() || is_mismatch(&e) => {
                drop(last);
                self.single.retire(ticket);
                Err(e)
            }
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() => Err(e),
            Ok(result) => {
                *last = Instant::now().max(*last);
                result
            }
            Err(_) => {
                if started.saturating_duration_since(*last) >= self.response {
                    *last = Instant::now();
                    drop(last);
                    self.single.retire(ticket);
                }
                Err(node_timed_out())
            }
        }
    }

    /// Checks the node's echo of `token`; a wrong one retires its connection.
    pub(super) fn echoed(&self, echo: &str, token: &str) -> RedisResult<()> {
        if echo == token {
            return Ok(());
        }
        let (ticket, _) = self.single.conn.get();
        self.single.retire(ticket);
        Err(mismatch())
    }
}

pub(super) fn node_timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the redlock node did not answer within the per-node timeout",
    ))
}
