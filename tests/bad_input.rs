//! Bad input gets a typed error: never a panic, a hang or lost data.

mod support;

use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError, MAX_LEASE, MIN_LEASE};
use support::{free_port, get, RedisServer};

#[tokio::test]
async fn unparsable_urls_are_invalid_url_errors() {
    for url in [
        "",
        "not a url",
        "http://127.0.0.1:6379",
        "redis://127.0.0.1:notaport",
        "redis://[::1",
    ] {
        let err = RdLockConnectionManager::new(url).await.unwrap_err();
        assert!(
            matches!(err, RdLockError::InvalidUrl(_)),
            "{url:?} gave {err:?}"
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "the cause is chained"
        );
    }
}

#[tokio::test]
async fn an_unreachable_server_is_reported_within_seconds() {
    let port = free_port(); // nothing listens there
    let started = Instant::now();
    let err = RdLockConnectionManager::new(format!("redis://127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    assert!(err.is_connection_error(), "{err:?}");
    assert!(matches!(err, RdLockError::Unreachable(_)));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn empty_ids_and_out_of_range_leases_are_refused() {
    let server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let empty = manager.new_lock("");
    for err in [
        empty.try_lock().await.unwrap_err(),
        empty.lock().await.unwrap_err(),
        empty
            .lock_timeout(Duration::from_secs(1))
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(err, RdLockError::InvalidLockId { .. }), "{err:?}");
    }
    for lease in [
        Duration::ZERO,
        Duration::from_millis(1),
        MIN_LEASE - Duration::from_nanos(1),
        MAX_LEASE + Duration::from_secs(1),
        Duration::MAX,
    ] {
        let lock = manager.new_lock("leases").with_lease(lease);
        let err = lock.try_lock().await.unwrap_err();
        assert!(
            matches!(err, RdLockError::InvalidLease { .. }),
            "{lease:?} gave {err:?}"
        );
        let err = lock.lock().await.unwrap_err();
        assert!(
            matches!(err, RdLockError::InvalidLease { .. }),
            "{lease:?} gave {err:?}"
        );
    }
    // The bounds themselves are accepted.
    for lease in [MIN_LEASE, MAX_LEASE] {
        let guard = manager
            .new_lock("bounds")
            .with_lease(lease)
            .try_lock()
            .await
            .unwrap();
        guard.release().await.unwrap();
    }
    // BasicLock: a 0 s TTL is refused, not sent to Redis as `EX 0`.
    let mut basic = manager.new_basic_lock("basic", 0);
    assert!(matches!(
        basic.try_lock().await.unwrap_err(),
        RdLockError::InvalidLease { .. }
    ));
    let mut basic = manager.new_basic_lock("basic", u64::MAX);
    assert!(matches!(
        basic.lock().await.unwrap_err(),
        RdLockError::InvalidLease { .. }
    ));
}

#[tokio::test]
async fn a_64_kib_unicode_id_works() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let mut id = String::new();
    for c in "ключ-🔒-{}%".chars().cycle() {
        if id.len() + c.len_utf8() > 64 * 1024 {
            break;
        }
        id.push(c);
    }
    assert!(id.len() > 64 * 1024 - 4, "{} bytes", id.len());
    let lock = manager.new_lock(&id);
    assert_eq!(lock.id(), id);
    let guard = lock.lock().await.unwrap();
    assert!(get(&mut raw, lock.key()).await.is_some());
    assert_eq!(
        manager.new_lock(&id).try_lock().await.unwrap_err(),
        RdLockError::LockUnavailable
    );
    // The id's braces do not break the hash tag: the key names the whole id.
    assert!(lock.key().starts_with("rdlock:{"));
    assert_eq!(lock.key().matches('{').count(), 1);
    assert_eq!(lock.key().matches('}').count(), 1);
    guard.release().await.unwrap();
    assert!(get(&mut raw, lock.key()).await.is_none());
}

#[tokio::test]
async fn a_key_of_another_type_is_a_typed_error_not_a_guard() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("typed");
    let _: () = redis::cmd("RPUSH")
        .arg(lock.key())
        .arg("x")
        .query_async(&mut raw)
        .await
        .unwrap();
    for err in [
        lock.try_lock().await.unwrap_err(),
        lock.lock().await.unwrap_err(),
    ] {
        match err {
            RdLockError::RedisError(e) => assert_eq!(e.code(), Some("WRONGTYPE"), "{e:?}"),
            other => panic!("expected WRONGTYPE, got {other:?}"),
        }
    }
    let len: i64 = redis::cmd("LLEN")
        .arg(lock.key())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(len, 1, "the foreign value is left alone");
}

#[tokio::test]
async fn try_lock_fails_fast_while_redis_is_down() {
    let mut server = RedisServer::start();
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    server.stop();
    let started = Instant::now();
    let err = manager.new_lock("down").try_lock().await.unwrap_err();
    assert!(err.is_connection_error(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
