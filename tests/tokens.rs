//! Owner tokens: random uuid v4s, never printed, and the only key to a lock. The public
//! API takes no token, so a client cannot release (or renew) a lock it does not hold
//! by guessing one; only the administrator's `Lock::force_release` deletes a lock
//! regardless of its holder, and its victim is told.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::{free_port, get, RedisServer};

async fn set(conn: &mut redis::aio::MultiplexedConnection, key: &str, value: &str) {
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("PX")
        .arg(60_000)
        .query_async(conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn owner_tokens_are_random_uuid_v4s() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("tokens");
    let mut seen = HashSet::new();
    // For each of the 30 random hex digits of a v4 uuid (all but the version digit and
    // the variant digit's top bits): which values showed up.
    let mut digits = vec![HashSet::new(); 32];
    for i in 0..1000 {
        let guard = lock.try_lock().await.unwrap();
        let token = get(&mut raw, lock.key()).await.unwrap();
        assert_eq!(token.len(), 32, "32 hex digits: {token:?}");
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "lowercase hex: {token:?}"
        );
        assert_eq!(&token[12..13], "4", "version 4: {token:?}");
        assert!(
            matches!(&token[16..17], "8" | "9" | "a" | "b"),
            "RFC 4122 variant: {token:?}"
        );
        for (d, c) in token.chars().enumerate() {
            digits[d].insert(c);
        }
        assert!(
            seen.insert(token.clone()),
            "token repeated after {i}: {token}"
        );
        // The guard's Debug output does not show it.
        let debug = format!("{guard:?} {guard:#?} {lock:?}");
        assert!(!debug.contains(&token), "token in Debug: {debug}");
        guard.release().await.unwrap();
    }
    // Nothing time-, pid- or counter-like: every random digit took every value.
    for (d, values) in digits.iter().enumerate() {
        if d == 12 {
            assert_eq!(values.len(), 1);
        } else if d == 16 {
            assert_eq!(values.len(), 4);
        } else {
            assert_eq!(values.len(), 16, "digit {d} took only {values:?}");
        }
    }
    assert_eq!(seen.len(), 1000);
}

/// A holder whose key was taken over (here: overwritten by a thief who guessed nothing,
/// just wrote) cannot delete the thief's value through `release()` — whether it is the
/// manager that acquired or another one — and learns that the lease is lost.
#[tokio::test]
async fn a_release_after_the_key_was_stolen_leaves_the_thiefs_value() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    for round in 0..2 {
        let a = RdLockConnectionManager::new(server.url()).await.unwrap();
        let b = RdLockConnectionManager::new(server.url()).await.unwrap();
        // Round 0: the first manager holds; round 1: a second manager does.
        let holder = if round == 0 { &a } else { &b };
        let lock = holder.new_lock("stolen").with_lease(Duration::from_secs(1));
        let guard = lock.lock().await.unwrap();
        let thief = format!("thief-{round}");
        set(&mut raw, lock.key(), &thief).await;
        let err = guard.release().await.unwrap_err();
        assert_eq!(err, RdLockError::LockNotAcquired, "round {round}");
        assert_eq!(
            get(&mut raw, lock.key()).await.as_deref(),
            Some(thief.as_str()),
            "round {round}: the thief's value was touched"
        );
        // Dropping (instead of releasing) a robbed guard leaves it too.
        let guard = b
            .new_lock("stolen-too")
            .with_lease(Duration::from_secs(1))
            .lock()
            .await
            .unwrap();
        let key = guard.lock().key().to_owned();
        set(&mut raw, &key, &thief).await;
        tokio::time::timeout(Duration::from_secs(3), guard.lost())
            .await
            .expect("the next renewal finds another value");
        drop(guard);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            get(&mut raw, &key).await.as_deref(),
            Some(thief.as_str()),
            "round {round}: the drop-release touched the thief's value"
        );
        let () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    }
}

/// The 1.x `BasicLock`: an instance that never acquired cannot release the lock that
/// another instance (or a `Lock`) holds.
#[tokio::test]
async fn a_basic_lock_that_never_acquired_cannot_release() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let guard = manager.new_lock("basic").lock().await.unwrap();
    let token = get(&mut raw, "rdlock:{basic}:lock").await.unwrap();
    let mut never = other.new_basic_lock("basic", 60);
    assert_eq!(never.release().await, Err(RdLockError::LockNotAcquired));
    let mut never_same_manager = manager.new_basic_lock("basic", 60);
    assert_eq!(
        never_same_manager.release().await,
        Err(RdLockError::LockNotAcquired)
    );
    assert_eq!(
        get(&mut raw, "rdlock:{basic}:lock").await.as_deref(),
        Some(token.as_str())
    );
    assert!(guard.is_held());
    guard.release().await.unwrap();

    // A BasicLock whose key was taken over after it acquired: release leaves it.
    let mut basic = other.new_basic_lock("basic", 60);
    basic.lock().await.unwrap();
    set(&mut raw, "rdlock:{basic}:lock", "someone-else").await;
    assert_eq!(basic.release().await, Err(RdLockError::LockNotAcquired));
    assert_eq!(
        get(&mut raw, "rdlock:{basic}:lock").await.as_deref(),
        Some("someone-else")
    );
    let debug = format!("{basic:?}");
    assert!(!debug.contains("someone-else"));
}

/// `force_release` (the administrator's escape hatch) deletes a lock without its token;
/// the holder that lost it is told at its next renewal, within a third of its lease.
#[tokio::test]
async fn force_release_is_reported_to_the_holder_it_robbed() {
    let server = RedisServer::start();
    let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
    let admin = RdLockConnectionManager::new(server.url()).await.unwrap();
    // Renewals every 2 s; the lease would end at 6 s. A guard told at its next renewal
    // knows within 2 s (plus a busy machine's delay); one that only notices at its
    // deadline, 6 s, misses the bound by far.
    let lease = Duration::from_secs(6);
    let guard = holder
        .new_lock("forced")
        .with_lease(lease)
        .lock()
        .await
        .unwrap();
    let forced = Instant::now();
    assert!(admin.new_lock("forced").force_release().await.unwrap());
    tokio::time::timeout(lease, guard.lost())
        .await
        .expect("the loss is reported");
    let after = forced.elapsed();
    println!("force_release reported to the holder after {after:?}");
    assert!(after <= lease / 2, "{after:?}");
    assert_eq!(guard.release().await, Err(RdLockError::LockNotAcquired));
}

/// Secrets stay out of `Debug` and error output: owner tokens, and URL passwords.
#[tokio::test]
async fn debug_and_errors_show_no_token_and_no_password() {
    let server = RedisServer::start();
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager.new_lock("debug");
    let guard = lock.lock().await.unwrap();
    let token = get(&mut raw, lock.key()).await.unwrap();
    let shown = format!("{guard:?}\n{guard:#?}\n{lock:?}\n{manager:?}");
    assert!(!shown.contains(&token), "{shown}");
    assert!(shown.contains("fencing_token"), "{shown}");
    guard.release().await.unwrap();

    // A password in the URL: neither the manager nor its errors print it.
    let secret = "s3cr3t-pw-4711";
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("app")
        .arg("on")
        .arg(format!(">{secret}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut raw)
        .await
        .unwrap();
    let good =
        RdLockConnectionManager::new(format!("redis://app:{secret}@127.0.0.1:{}/", server.port()))
            .await
            .unwrap();
    let shown = format!("{good:?} {:?}", good.new_lock("x"));
    assert!(!shown.contains(secret), "{shown}");
    let failures = [
        // wrong password
        format!("redis://app:{secret}-wrong@127.0.0.1:{}/", server.port()),
        // nobody listens
        format!("redis://app:{secret}@127.0.0.1:{}/", free_port()),
        // unparsable
        format!("redis://app:{secret}@127.0.0.1:notaport/"),
    ];
    for url in failures {
        let err = RdLockConnectionManager::new(url.as_str())
            .await
            .unwrap_err();
        let shown = format!("{err:?} {err} {:?}", std::error::Error::source(&err));
        println!("{shown}");
        assert!(!shown.contains(secret), "password shown: {shown}");
    }
}
