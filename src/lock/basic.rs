//! The rdlock 1.x lock, kept so that existing code compiles and behaves as documented.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{Acquired, Lock};
use crate::errors::RdLockError;
use crate::lease::{valid_until, wall_valid_until};
use crate::manager::RdLockConnectionManager;
use crate::names::LockNames;
use crate::scripts;

/// The most basic type of lock (the rdlock 1.x API). It holds no value and is atomic
/// across all instances connected to the same Redis instance. The lock is only
/// released automatically when its TTL ends; call [`release`](Self::release) to unlock
/// it early. There is no watchdog and no guard: dropping a locked `BasicLock` leaves
/// the key until its TTL ends, as in 1.x.
///
/// New code should prefer [`Lock`], whose guard renews the lease and releases on drop.
///
/// Unlike 1.x, every acquisition stores a random owner token, so `release` can never
/// delete a lock that expired and was taken by someone else, and `lock` waits on the
/// shared subscriber instead of opening a connection per call.
///
/// It uses the same keys as [`Lock`] (`rdlock:{id}:lock`): a `BasicLock` and a `Lock`
/// with the same id exclude each other.
///
/// # rdlock 1.x processes
///
/// On one server (or Sentinel), a `BasicLock` also takes the rdlock 1.x key
/// `/rdlock/<id>/.lock`, as [`Lock::with_v1_compat`] does: 1.x processes still running
/// `new_basic_lock` with the same id exclude it and are excluded by it, so a fleet can
/// be upgraded one process at a time (README, "Rolling upgrade from 1.x"). It costs one
/// more key written per acquisition and read per release, in the same script. Once
/// no 1.x process is left, turn it off with
/// [`without_v1_compat`](Self::without_v1_compat) (a `BasicLock` without it and one
/// with it still exclude each other, through `rdlock:{id}:lock`). The limits are those
/// of [`Lock::with_v1_compat`]: as safe as 1.x with 1.x (a 1.x process's unconditional
/// `DEL` can still delete the 1.x key, and a `BasicLock`, having no watchdog, does not
/// notice a 1.x process that takes it then before [`release`](Self::release), which
/// reports [`RdLockError::LockNotAcquired`]), fencing tokens are ours only. On a Redis
/// Cluster and on Redlock it is off: the 1.x key is outside the lock's hash tag, and
/// 1.x never ran on a cluster or over several masters.
///
/// # Example
///
/// ```no_run
/// # async fn demo(manager: rdlock::RdLockConnectionManager) -> Result<(), rdlock::RdLockError> {
/// let mut basic_lock = manager.new_basic_lock("my_lock", 3600);
/// basic_lock.lock().await?;
/// assert!(basic_lock.is_locked());
/// basic_lock.release().await?;
/// # Ok(())
/// # }
/// ```
pub struct BasicLock {
    lock: Lock,
    ttl: u64,
    held: Option<Held>,
}

/// The last acquisition. It is kept past the local cut-off (`valid_until`): after it
/// (the drift margin, 1 % of the TTL + 2 ms: 36 s with a TTL of 3600, or longer if the
/// server's clock runs slow) the key may still hold the token, and `release`, `try_lock`
/// and `lock` ask Redis — token-checked — instead of colliding with it. Redis, not the
/// local clock, says when it is gone.
struct Held {
    token: Arc<str>,
    /// The keys it was taken with: with or without the 1.x key, as the lock was then
    /// ([`BasicLock::without_v1_compat`] may have changed it since).
    names: Arc<LockNames>,
    valid_until: Instant,
    /// The same deadline on the wall clock, which (unlike `Instant` on Linux and macOS)
    /// counts a suspend of the machine, as for a `LockGuard`.
    wall_valid_until: SystemTime,
}

impl Held {
    fn expired(&self) -> bool {
        Instant::now() >= self.valid_until || SystemTime::now() >= self.wall_valid_until
    }
}

impl BasicLock {
    pub(crate) fn new(manager: RdLockConnectionManager, lock_id: &str, ttl: u64) -> Self {
        let mut lock = manager
            .new_lock(lock_id)
            .with_lease(Duration::from_secs(ttl))
            .without_watchdog();
        // 1.x compatibility by default where it can work (see the type docs).
        // 1.x ran on one server only: no compatibility on a cluster or on Redlock.
        let one_server = !matches!(
            *manager.inner().conn,
            crate::backend::Backend::Cluster(_) | crate::backend::Backend::Redlock(_)
        );
        lock.set_v1_compat(one_server);
        Self {
            lock,
            ttl,
            held: None,
        }
    }

    /// Stops taking the rdlock 1.x key `/rdlock/<id>/.lock` (see the type docs,
    /// "rdlock 1.x processes"): for when no 1.x process uses this Redis any more. It
    /// applies from the next acquisition on; one held now is still released (and, in
    /// the drift margin, renewed) with its 1.x key.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// let lock = manager.new_basic_lock("dog", 60).without_v1_compat();
    /// assert_eq!(lock.v1_key(), None);
    /// # }
    /// ```
    #[must_use]
    pub fn without_v1_compat(mut self) -> Self {
        // An acquisition held now keeps the names it was taken with (`Held::names`):
        // its release, or a renewal in the drift window, still covers its 1.x key.
        self.lock.set_v1_compat(false);
        self
    }

    /// The rdlock 1.x key this lock also takes, or `None` when it does not (after
    /// [`without_v1_compat`](Self::without_v1_compat), or on a cluster).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// assert_eq!(manager.new_basic_lock("dog", 60).v1_key(), Some("/rdlock/dog/.lock"));
    /// # }
    /// ```
    #[must_use]
    pub fn v1_key(&self) -> Option<&str> {
        self.lock.v1_key()
    }

    /// The lock id.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// assert_eq!(manager.new_basic_lock("dog", 60).id(), "dog");
    /// # }
    /// ```
    #[must_use]
    pub fn id(&self) -> String {
        self.lock.id().to_owned()
    }

    /// The TTL in seconds.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(manager: rdlock::RdLockConnectionManager) {
    /// assert_eq!(manager.new_basic_lock("dog", 60).ttl(), 60);
    /// # }
    /// ```
    #[must_use]
    pub fn ttl(&self) -> u64 {
        self.ttl
    }

    /// Attempts to acquire the lock instantly, fails otherwise. If the `BasicLock` is
    /// already locked by this instance, returns `Ok(())` instantly. In the drift margin
    /// (`is_locked()` already `false`, the key possibly still this instance's) the key
    /// is renewed with the full TTL if it still holds this instance's token.
    ///
    /// # Errors
    ///
    /// [`RdLockError::LockUnavailable`] when another owner holds it; a TTL of 0 or over
    /// [`MAX_LEASE`](crate::MAX_LEASE) gives [`RdLockError::InvalidLease`]; connection
    /// and Redis errors as for [`Lock::try_lock`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled attempt is undone by its token.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(manager: rdlock::RdLockConnectionManager) {
    /// let mut lock = manager.new_basic_lock("dog", 60);
    /// if lock.try_lock().await.is_ok() { /* ... */ }
    /// # }
    /// ```
    pub async fn try_lock(&mut self) -> Result<(), RdLockError> {
        if self.is_locked() || self.relock().await? {
            return Ok(());
        }
        let acquired = self.lock.try_acquire_raw().await?;
        self.keep(acquired);
        Ok(())
    }

    /// Locks, yielding until the lock is available and acquired. If the `BasicLock` is
    /// already locked by this instance, returns `Ok(())` instantly.
    ///
    /// # Errors
    ///
    /// As [`Lock::lock`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Lock::lock`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(manager: rdlock::RdLockConnectionManager) -> Result<(), rdlock::RdLockError> {
    /// let mut lock = manager.new_basic_lock("dog", 60);
    /// lock.lock().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn lock(&mut self) -> Result<(), RdLockError> {
        if self.is_locked() || self.relock().await.unwrap_or(false) {
            return Ok(());
        }
        let acquired = self.lock.acquire_raw(None).await?;
        self.keep(acquired);
        Ok(())
    }

    /// As [`lock`](Self::lock), giving up with [`RdLockError::TimeoutReached`] after
    /// `timeout`.
    ///
    /// # Errors
    ///
    /// As [`Lock::lock_timeout`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Lock::lock`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(manager: rdlock::RdLockConnectionManager) -> Result<(), rdlock::RdLockError> {
    /// let mut lock = manager.new_basic_lock("dog", 60);
    /// lock.lock_timeout(std::time::Duration::from_secs(5)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn lock_timeout(&mut self, timeout: Duration) -> Result<(), RdLockError> {
        if self.is_locked() || self.relock().await.unwrap_or(false) {
            return Ok(());
        }
        let deadline = Instant::now().checked_add(timeout);
        let acquired = self.lock.acquire_raw(deadline).await?;
        self.keep(acquired);
        Ok(())
    }

    /// Releases or unlocks the `BasicLock` early, before the TTL expires.
    ///
    /// # Errors
    ///
    /// [`RdLockError::LockNotAcquired`] if the lock was not acquired by this instance,
    /// its TTL has passed, or the key no longer holds this instance's token (nothing is
    /// deleted then). Once [`is_locked`](Self::is_locked) is `false` but before the TTL
    /// has surely passed (the drift margin), the token-checked release is still sent:
    /// the key is deleted if it is still this instance's. Connection and Redis errors leave the lock marked as held, so
    /// that `release` can be called again.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: if the future is dropped, the lock may or may not have been
    /// released in Redis while this instance still counts it as held; calling
    /// `release` again is harmless.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn demo(mut lock: rdlock::lock::BasicLock) -> Result<(), rdlock::RdLockError> {
    /// lock.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn release(&mut self) -> Result<(), RdLockError> {
        // Past the local cut-off too: in the drift margin the key may still hold our
        // token, and the script deletes it only if it does.
        let Some(held) = &self.held else {
            return Err(RdLockError::LockNotAcquired);
        };
        let conn = &self.lock.manager().inner().conn;
        let released = scripts::release(conn, &held.names, &held.token)
            .await
            .map_err(RdLockError::from_redis)?;
        self.held = None;
        if released {
            Ok(())
        } else {
            Err(RdLockError::LockNotAcquired)
        }
    }

    /// Returns `true` if the `BasicLock` is locked inside this instance. Also performs
    /// a local TTL check: once the TTL (less a margin for clock drift: 1 % of the TTL +
    /// 2 ms) has passed since the lock was acquired, it returns `false` — the lock can
    /// no longer be relied on, though its key may live on for that margin (see
    /// [`release`](Self::release) and [`try_lock`](Self::try_lock)). The TTL is checked
    /// on the monotonic clock and on the wall clock, so that a suspend of the machine
    /// (which the monotonic clock does not count on Linux and macOS) is counted too; a
    /// wall clock stepped forward can make it `false` early, never `true` late.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn demo(mut lock: rdlock::lock::BasicLock) {
    /// if !lock.is_locked() { /* acquire again before touching the resource */ }
    /// # }
    /// ```
    pub fn is_locked(&mut self) -> bool {
        self.held.as_ref().is_some_and(|held| !held.expired())
    }

    /// Past the local cut-off but within the drift margin: if the key still holds our
    /// token, renew it (token-checked, one round trip) instead of colliding with it;
    /// `Ok(true)` when it did. Nothing is sent when there was no earlier acquisition.
    async fn relock(&mut self) -> Result<bool, RdLockError> {
        let Some(held) = &self.held else {
            return Ok(false);
        };
        let lease_ms = self.lock.validate()?;
        let conn = &self.lock.manager().inner().conn;
        let sent = Instant::now();
        let sent_wall = SystemTime::now();
        let renewed = scripts::renew(conn, &held.names, &held.token, lease_ms)
            .await
            .map_err(RdLockError::from_redis)?;
        if renewed {
            let (token, names) = (held.token.clone(), held.names.clone());
            self.keep_with(
                Acquired {
                    token,
                    fence: 0,
                    sent,
                    sent_wall,
                    generation: 0,
                },
                names,
            );
        } else {
            self.held = None;
        }
        Ok(renewed)
    }

    /// Keeps a fresh acquisition, taken with the lock's current names.
    fn keep(&mut self, acquired: Acquired) {
        let names = self.lock.names.clone();
        self.keep_with(acquired, names);
    }

    fn keep_with(&mut self, acquired: Acquired, names: Arc<LockNames>) {
        self.held = Some(Held {
            names,
            valid_until: valid_until(acquired.sent, self.lock.lease()),
            wall_valid_until: wall_valid_until(acquired.sent_wall, self.lock.lease()),
            token: acquired.token,
        });
    }
}

impl fmt::Debug for BasicLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicLock")
            .field("key", &self.lock.key())
            .field("ttl", &self.ttl)
            .field("v1_key", &self.lock.v1_key())
            .field("locked", &self.held.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant, SystemTime};

    use super::*;

    /// A private redis-server on a free loopback port, killed when dropped (the
    /// directory, its working directory, is removed after it).
    struct Server(Child, u16, #[allow(dead_code)] tempfile::TempDir);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn start_server() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = std::env::var("RDLOCK_SERVER_BIN")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "redis-server".to_owned());
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &dir.path().to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Server(child, port, dir)
    }

    async fn manager(server: &Server) -> RdLockConnectionManager {
        let url = format!("redis://127.0.0.1:{}/", server.1);
        let started = Instant::now();
        loop {
            match RdLockConnectionManager::new(url.as_str()).await {
                Ok(manager) => return manager,
                Err(e) if started.elapsed() > Duration::from_secs(20) => {
                    panic!("redis-server did not start: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// What a suspend of the machine right after the acquire looks like: the monotonic
    /// clock did not count it, the wall clock (and the server's expiry) did. The TTL
    /// has passed in real time, so `is_locked` must say `false`, as for a `LockGuard`.
    #[tokio::test]
    async fn is_locked_is_false_once_the_wall_clock_passed_the_ttl() {
        let server = start_server();
        let manager = manager(&server).await;
        let ttl = 3600;
        let mut basic = manager.new_basic_lock("suspended-basic", ttl);
        basic.keep(Acquired {
            token: Arc::from("not-a-real-token"),
            fence: 1,
            sent: Instant::now(),
            sent_wall: SystemTime::now() - Duration::from_secs(2 * ttl),
            generation: 0,
        });
        assert!(
            !basic.is_locked(),
            "a suspend longer than the TTL: the key expired on the server while \
             is_locked() still says true"
        );
        // Without the suspend it is locked.
        basic.keep(Acquired {
            token: Arc::from("not-a-real-token"),
            fence: 1,
            sent: Instant::now(),
            sent_wall: SystemTime::now(),
            generation: 0,
        });
        assert!(basic.is_locked());
    }
}
