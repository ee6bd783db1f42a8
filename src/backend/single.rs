//! One Redis server: a multiplexed `ConnectionManager` for commands, replaced when it
//! can no longer be trusted, and one plain subscriber connection.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionInfo, RedisResult};

use super::{Replaceable, SyncPool, Ticket};
use crate::config::Timeouts;
use crate::errors::RdLockError;

/// Connection attempts after the first one, with jittered exponential backoff: bounds
/// connecting to an unreachable server to three attempts of the connect timeout (2 s,
/// or a longer response timeout that was set).
const CONNECT_RETRIES: usize = 2;

pub(crate) struct Single {
    client: Client,
    config: ConnectionManagerConfig,
    pub(super) conn: Replaceable<ConnectionManager>,
    info: ConnectionInfo,
    /// Connections for acquisitions followed by `WAIT` (replica sync).
    pub(super) sync: SyncPool,
}

/// What connecting found out besides the connection.
pub(crate) struct Connected {
    pub(crate) single: Single,
    /// The database number, when the server has keyspace events on.
    pub(crate) keyspace_db: Option<i64>,
}

impl Single {
    /// Connects (a few attempts), checks the server answers, and reads whether it has
    /// keyspace events on.
    pub(crate) async fn connect(
        info: ConnectionInfo,
        timeouts: Timeouts,
    ) -> Result<Connected, RdLockError> {
        let client = Client::open(info.clone()).map_err(RdLockError::InvalidUrl)?;
        let config = manager_config(&timeouts);
        let mut conn = ConnectionManager::new_with_config(client.clone(), config.clone())
            .await
            .map_err(RdLockError::from_redis)?;
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(RdLockError::from_redis)?;
        let keyspace_db = keyspace_events_enabled(&mut conn)
            .await
            .then_some(info.redis_settings().db());
        Ok(Connected {
            single: Self {
                client,
                config,
                conn: Replaceable::new(conn),
                info,
                sync: SyncPool::new(timeouts.sync_config()),
            },
            keyspace_db,
        })
    }

    /// A server whose command connection is opened on first use (a Redlock node: the
    /// manager must start while a minority of its nodes is down).
    pub(crate) fn lazy(info: ConnectionInfo, timeouts: Timeouts) -> Result<Self, RdLockError> {
        let client = Client::open(info.clone()).map_err(RdLockError::InvalidUrl)?;
        let config = manager_config(&timeouts);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(RdLockError::InvalidUrl)?;
        Ok(Self {
            client,
            config,
            conn: Replaceable::new(conn),
            info,
            sync: SyncPool::new(timeouts.sync_config()),
        })
    }

    #[cfg(test)]
    pub(super) fn unconnected(url: &str) -> Self {
        let client = Client::open(url).expect("a valid test URL");
        let config = ConnectionManagerConfig::new();
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .expect("a lazy connection");
        Self {
            info: client.get_connection_info().clone(),
            client,
            config,
            conn: Replaceable::new(conn),
            sync: SyncPool::new(redis::AsyncConnectionConfig::new()),
        }
    }

    /// The server's connection parameters.
    pub(crate) fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// A clone of the current command connection.
    pub(crate) fn connection_manager(&self) -> ConnectionManager {
        self.conn.get().1
    }

    pub(super) fn retire(&self, ticket: Ticket) {
        self.conn.replace(ticket, || {
            // Lazy: connects on first use, so this never blocks or fails on I/O here.
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()).ok()
        });
    }

    pub(super) async fn subscriber(&self) -> RedisResult<redis::aio::PubSub> {
        self.client.get_async_pubsub().await
    }
}

/// The command connection's settings: bounded connect and response times, and a few
/// reconnection attempts, so that an unreachable server is reported, not waited for.
fn manager_config(timeouts: &Timeouts) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeouts.connect))
        .set_response_timeout(Some(timeouts.response))
        .set_number_of_retries(CONNECT_RETRIES)
        .set_max_delay(Duration::from_secs(1))
}

impl fmt::Debug for Single {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Single")
            .field("addr", self.info.addr())
            .field("db", &self.info.redis_settings().db())
            .finish()
    }
}

/// Reads `notify-keyspace-events`; `false` when it is off or `CONFIG` is not allowed.
async fn keyspace_events_enabled(conn: &mut ConnectionManager) -> bool {
    let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(conn)
        .await;
    match reply {
        Ok(pair) => pair.get(1).is_some_and(|flags| {
            // K: keyspace channel; A (all), g (del) or x (expired): events we use.
            flags.contains('K')
                && (flags.contains('A') || flags.contains('g') || flags.contains('x'))
        }),
        Err(_) => false,
    }
}
