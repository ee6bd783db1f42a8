//! Fuzzed inputs (proptest): lock ids, leases, timeouts and connection URLs. Each gives
//! `Ok` or a typed error within a bound — never a panic or a hang — and every lock's
//! keys land in one Redis Cluster slot.
//!
//! Each property runs against one private server started for it, with at most 64 cases
//! and small sizes (plus fixed 1 MiB ids). The id properties use a one-node Redis
//! Cluster owning every slot, so that `CLUSTER KEYSLOT` answers and the scripts run
//! under cluster rules (`CROSSSLOT` if a lock's keys were in two slots). The proptest seed is printed and can be set
//! with `RDLOCK_SEED` to replay a run.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use rdlock::{RdLockConnectionManager, RdLockError, MAX_LEASE, MIN_LEASE};
use support::{free_port, get, RedisServer, ServerConfig};

/// No single operation of these tests may take longer.
const BOUND: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A runner with `cases` cases and a printed, replayable seed.
fn runner(name: &str, cases: u32) -> TestRunner {
    let seed = support::seed();
    println!("{name}: seed {seed} (replay with RDLOCK_SEED={seed})");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {BOUND:?}"))
}

/// The hash tag Redis Cluster uses: the text between the first `{` and the first `}`
/// after it, when that text is not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')? + open + 1;
    (close > open + 1).then(|| &key[open + 1..close])
}

/// A one-node Redis Cluster that owns every slot: `CLUSTER KEYSLOT` works there (not on
/// a standalone server), and the scripts run under cluster rules — a script touching
/// keys of two slots fails with `CROSSSLOT`.
fn cluster_node(rt: &tokio::runtime::Runtime) -> RedisServer {
    let server = RedisServer::start_with(ServerConfig {
        keyspace_events: None,
        args: [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ]
        .map(String::from)
        .to_vec(),
    });
    rt.block_on(async {
        let mut conn = server.conn().await;
        let () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .query_async(&mut conn)
            .await
            .unwrap();
        support::wait_until(Duration::from_secs(10), "cluster_state:ok", || {
            let mut conn = conn.clone();
            async move {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                info.contains("cluster_state:ok")
            }
        })
        .await;
    });
    server
}

async fn keyslot(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(conn)
        .await
        .expect("CLUSTER KEYSLOT")
}

/// Characters that matter to key names, hash tags, escaping, glob patterns and
/// protocols, mixed with arbitrary Unicode.
fn id_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>(),
        2 => prop::sample::select(vec![
            '{', '}', '%', ':', '*', '?', '[', ']', '\\', '\0', '\n', '\r', ' ', '"', '\'',
            '7', 'B', 'D', 'é', '日', '🔒',
        ]),
    ]
}

fn ids() -> impl Strategy<Value = String> {
    prop::collection::vec(id_char(), 0..48).prop_map(|chars| chars.into_iter().collect())
}

/// One id, end to end: names, slot, and a try_lock/release round trip.
async fn check_id(
    manager: &RdLockConnectionManager,
    conn: &mut redis::aio::MultiplexedConnection,
    id: &str,
) -> Result<(), TestCaseError> {
    let lock = manager.new_lock(id).with_lease(Duration::from_secs(5));
    if id.is_empty() {
        let err = bounded("empty id", lock.try_lock()).await.unwrap_err();
        prop_assert!(matches!(err, RdLockError::InvalidLockId { .. }), "{err:?}");
        return Ok(());
    }
    let key = lock.key().to_owned();
    let base = key.strip_suffix(":lock");
    prop_assert!(base.is_some(), "key {key:?} does not end in :lock");
    let base = base.unwrap();
    prop_assert!(
        base.starts_with("rdlock:{") && base.ends_with('}'),
        "unexpected key shape {:?}",
        key
    );
    let fence = format!("{base}:fence");
    let owner = format!("{base}:owner");
    let tag = hash_tag(&key);
    prop_assert!(tag.is_some(), "empty or missing hash tag in {key:?}");
    prop_assert_eq!(hash_tag(&fence), tag);
    prop_assert_eq!(hash_tag(&owner), tag);
    let slot = keyslot(conn, &key).await;
    prop_assert_eq!(
        keyslot(conn, &fence).await,
        slot,
        "fence key in another slot"
    );
    prop_assert_eq!(
        keyslot(conn, &owner).await,
        slot,
        "owner key in another slot"
    );
    let tag = tag.unwrap().to_owned();
    prop_assert_eq!(keyslot(conn, &tag).await, slot, "the slot is the tag's");

    let guard = bounded("try_lock", lock.try_lock())
        .await
        .map_err(|e| TestCaseError::fail(format!("try_lock {id:?}: {e:?}")))?;
    prop_assert!(get(conn, &key).await.is_some(), "no key at {key:?}");
    let counter: Option<u64> = redis::cmd("GET")
        .arg(&fence)
        .query_async(conn)
        .await
        .unwrap();
    prop_assert_eq!(
        counter,
        Some(guard.fencing_token()),
        "fence key {:?}",
        fence
    );
    bounded("release", guard.release())
        .await
        .map_err(|e| TestCaseError::fail(format!("release {id:?}: {e:?}")))?;
    prop_assert_eq!(get(conn, &key).await, None);
    Ok(())
}

#[test]
fn lock_ids_round_trip_and_keep_their_keys_in_one_slot() {
    let rt = runtime();
    let server = cluster_node(&rt);
    let manager = rt
        .block_on(RdLockConnectionManager::new(server.url()))
        .unwrap();
    let conn = rt.block_on(server.conn());
    runner("ids", 64)
        .run(&ids(), |id| {
            rt.block_on(check_id(&manager, &mut conn.clone(), &id))
        })
        .unwrap();
}

#[test]
fn distinct_ids_get_distinct_keys() {
    let server = RedisServer::start();
    let rt = runtime();
    let manager = rt
        .block_on(RdLockConnectionManager::new(server.url()))
        .unwrap();
    // Fixed pairs that a naive escaping would merge, then random ones.
    for (a, b) in [
        ("{", "%7B"),
        ("}", "%7D"),
        ("%", "%25"),
        ("a:fence", "a"),
        ("{a}", "a"),
        ("x}:lock", "x"),
    ] {
        assert_ne!(
            manager.new_lock(a).key(),
            manager.new_lock(b).key(),
            "{a:?} and {b:?}"
        );
    }
    runner("distinct ids", 64)
        .run(&(ids(), ids()), |(a, b)| {
            if a != b {
                prop_assert_ne!(
                    manager.new_lock(&a).key().to_owned(),
                    manager.new_lock(&b).key().to_owned()
                );
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn one_mebibyte_ids_work_or_fail_typed() {
    let rt = runtime();
    let server = cluster_node(&rt);
    let manager = rt
        .block_on(RdLockConnectionManager::new(server.url()))
        .unwrap();
    let mut conn = rt.block_on(server.conn());
    let mib = 1 << 20;
    for (what, id) in [
        ("1 MiB of 'x'", "x".repeat(mib)),
        ("1 MiB of braces", "{}".repeat(mib / 2)),
        ("1 MiB of 4-byte chars", "🔒".repeat(mib / 4)),
    ] {
        let started = std::time::Instant::now();
        rt.block_on(check_id(&manager, &mut conn, &id))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        println!("{what}: round trip in {:?}", started.elapsed());
    }
}

fn leases() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::from_micros(999)),
        Just(Duration::from_millis(1)),
        Just(MIN_LEASE - Duration::from_nanos(1)),
        Just(MIN_LEASE),
        Just(Duration::from_micros(10_500)),
        Just(Duration::from_secs(1)),
        Just(MAX_LEASE),
        Just(MAX_LEASE + Duration::from_nanos(1)),
        Just(Duration::from_millis(i64::MAX as u64)),
        Just(Duration::MAX),
        any::<u64>().prop_map(Duration::from_nanos),
        any::<u64>().prop_map(Duration::from_millis),
        (0u64..5_000_000).prop_map(Duration::from_micros),
    ]
}

fn timeouts() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::from_millis(1)),
        Just(Duration::from_secs(10 * 365 * 24 * 3600)),
        Just(Duration::from_millis(u64::MAX)),
        Just(Duration::MAX),
        any::<u64>().prop_map(Duration::from_nanos),
    ]
}

/// How a case acquires.
#[derive(Clone, Copy, Debug)]
enum Acquire {
    TryLock,
    LockTimeout(Duration),
    Lock,
    /// The 1.x `BasicLock`, with the lease's whole seconds as TTL.
    Basic(Duration),
}

fn acquires() -> impl Strategy<Value = Acquire> {
    prop_oneof![
        Just(Acquire::TryLock),
        timeouts().prop_map(Acquire::LockTimeout),
        Just(Acquire::Lock),
        timeouts().prop_map(Acquire::Basic),
    ]
}

#[test]
fn leases_and_timeouts_give_a_guard_or_a_typed_error() {
    let server = RedisServer::start();
    let rt = runtime();
    let manager = rt
        .block_on(RdLockConnectionManager::new(server.url()))
        .unwrap();
    let conn = rt.block_on(server.conn());
    let case = AtomicU64::new(0);
    let seen = Tally::default();
    runner("leases and timeouts", 64)
        .run(
            &(leases(), acquires(), any::<u64>()),
            |(lease, how, ttl)| {
                let (mut conn, manager, case, seen) = (conn.clone(), manager.clone(), &case, &seen);
                rt.block_on(async move {
                    // A fresh, free lock per case: a wait would be for nothing.
                    let id = format!("lease-{}", case.fetch_add(1, Ordering::Relaxed));
                    let valid = (MIN_LEASE..=MAX_LEASE).contains(&lease);
                    if let Acquire::Basic(timeout) = how {
                        // TTLs in whole seconds: the lease's, or an arbitrary u64.
                        let ttl = if ttl % 2 == 0 { lease.as_secs() } else { ttl };
                        let valid = (1..=MAX_LEASE.as_secs()).contains(&ttl);
                        let mut basic = manager.new_basic_lock(&id, ttl);
                        let outcome = bounded("BasicLock", basic.lock_timeout(timeout)).await;
                        seen.add(&format!(
                            "basic {}",
                            describe(&outcome.as_ref().map(|_| ()))
                        ));
                        match outcome {
                            Ok(()) => {
                                prop_assert!(valid, "ttl {ttl} accepted");
                                bounded("release", basic.release())
                                    .await
                                    .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                            }
                            Err(RdLockError::InvalidLease { .. }) => {
                                prop_assert!(!valid, "ttl {ttl} refused")
                            }
                            Err(e) => prop_assert!(false, "ttl {ttl}: {e:?}"),
                        }
                        return Ok(());
                    }
                    let lock = manager.new_lock(&id).with_lease(lease);
                    let outcome = bounded("acquire", async {
                        match how {
                            Acquire::TryLock => lock.try_lock().await,
                            Acquire::LockTimeout(t) => lock.lock_timeout(t).await,
                            Acquire::Lock => lock.lock().await,
                            Acquire::Basic(_) => unreachable!(),
                        }
                    })
                    .await;
                    seen.add(&describe(&outcome.as_ref().map(|_| ())));
                    match outcome {
                        Ok(guard) => {
                            prop_assert!(valid, "lease {lease:?} accepted");
                            let lease_ms = lease.as_millis() as i64;
                            if lease >= Duration::from_secs(2) {
                                let pttl: i64 = redis::cmd("PTTL")
                                    .arg(lock.key())
                                    .query_async(&mut conn)
                                    .await
                                    .unwrap();
                                // Never below two thirds of the lease while the watchdog
                                // renews, however late this PTTL is read.
                                prop_assert!(
                                    pttl <= lease_ms && pttl > lease_ms / 2,
                                    "lease {lease:?}: PTTL {pttl}"
                                );
                            }
                            // Tiny leases may be gone already; the release says so, typed.
                            match bounded("release", guard.release()).await {
                                Ok(()) | Err(RdLockError::LockNotAcquired) => {}
                                Err(e) => prop_assert!(false, "release: {e:?}"),
                            }
                        }
                        Err(RdLockError::InvalidLease { .. }) => {
                            prop_assert!(!valid, "lease {lease:?} refused")
                        }
                        // A lease shorter than the round trip can expire before the reply.
                        Err(RdLockError::LeaseLost | RdLockError::TimeoutReached)
                            if lease < Duration::from_millis(100) => {}
                        Err(e) => prop_assert!(false, "lease {lease:?}, {how:?}: {e:?}"),
                    }
                    Ok(())
                })
            },
        )
        .unwrap();
    println!("leases and timeouts: {}", seen.take());
}

fn describe(outcome: &Result<(), &RdLockError>) -> String {
    match outcome {
        Ok(()) => "acquired".to_owned(),
        Err(e) => format!("{e:?}")
            .split(['(', ' ', '{'])
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Waiting on a held lock: small timeouts end on time with `TimeoutReached`; timeouts
/// too large to represent wait (no overflow into an immediate error) and succeed once
/// the lock is free.
#[test]
fn timeouts_on_a_held_lock() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let holder = RdLockConnectionManager::new(server.url()).await.unwrap();
        let waiter = RdLockConnectionManager::new(server.url()).await.unwrap();
        // A long lease: a small timeout that waited for the holder's PTTL instead of its
        // own deadline would take 30 s, not the few milliseconds asked.
        let lease = Duration::from_secs(30);
        let mut held = holder
            .new_lock("busy")
            .with_lease(lease)
            .lock()
            .await
            .unwrap();
        for t in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(1),
            Duration::from_millis(50),
        ] {
            let started = std::time::Instant::now();
            let err = bounded("small timeout", waiter.new_lock("busy").lock_timeout(t))
                .await
                .unwrap_err();
            assert_eq!(err, RdLockError::TimeoutReached, "{t:?}");
            assert!(started.elapsed() < t + Duration::from_secs(2), "{t:?}");
            let mut basic = waiter.new_basic_lock("busy", 1);
            let err = bounded("small timeout", basic.lock_timeout(t))
                .await
                .unwrap_err();
            assert_eq!(err, RdLockError::TimeoutReached, "BasicLock {t:?}");
        }
        for t in [
            Duration::from_secs(10 * 365 * 24 * 3600),
            Duration::from_millis(u64::MAX),
            Duration::MAX,
        ] {
            let waiting = {
                let lock = waiter.new_lock("busy").with_lease(lease);
                tokio::spawn(async move { lock.lock_timeout(t).await })
            };
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!waiting.is_finished(), "{t:?}: gave up at once");
            held.release().await.unwrap();
            let guard = bounded("huge timeout", waiting)
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{t:?}: {e:?}"));
            guard.release().await.unwrap();
            held = holder
                .new_lock("busy")
                .with_lease(lease)
                .lock()
                .await
                .unwrap();
        }
        held.release().await.unwrap();
    });
}

/// URLs built from the parts that matter — mostly valid ones, so that connecting,
/// authenticating and selecting are reached — pointing only at loopback (no DNS
/// lookups) and never at a default port (6379).
fn structured_urls(live: u16, dead: u16) -> impl Strategy<Value = String> {
    fn weighted<T: Clone + std::fmt::Debug + 'static>(
        valid: Vec<T>,
        odd: Vec<T>,
    ) -> impl Strategy<Value = T> {
        prop_oneof![
            3 => prop::sample::select(valid),
            1 => prop::sample::select(odd),
        ]
    }
    let schemes = weighted(
        vec!["redis://"],
        vec![
            "rediss://",
            "redis+unix://",
            "unix://",
            "http://",
            "REDIS://",
            "redis:",
            "",
        ],
    );
    let users = weighted(
        vec!["", "default:@", ":@"],
        vec![
            "user:pw@", ":pw@", "user@", "u%zz:p@", "a:b:c@", "@", "%00:%00@",
        ],
    );
    let hosts = weighted(
        vec!["127.0.0.1", "localhost"],
        vec![
            "[::1]",
            "[::1",
            "::1",
            "127.0.0.256",
            "0.0.0.0",
            " ",
            "%00",
            "",
        ],
    );
    let ports = weighted(
        vec![format!(":{live}")],
        vec![
            format!(":{dead}"),
            ":0".to_owned(),
            ":65536".to_owned(),
            ":-1".to_owned(),
            ":abc".to_owned(),
            format!(":{live}:{live}"),
        ],
    );
    let paths = weighted(
        vec!["", "/", "/0", "/15"],
        vec![
            "/16",
            "/-1",
            "/x",
            "/99999999999999999999",
            "/nonexistent/sock",
        ],
    );
    let tails = weighted(
        vec!["", "?protocol=resp3", "?protocol=resp2"],
        vec!["?protocol=x", "?db=3", "#insecure", "#x", "?", "#"],
    );
    (schemes, users, hosts, ports, paths, tails)
        .prop_map(|(s, u, h, p, path, t)| format!("{s}{u}{h}{p}{path}{t}"))
}

/// Connects to `url`: `Ok` (then a lock round trip must work) or a typed error, in time.
async fn check_url(url: &str, seen: &Tally) -> Result<(), TestCaseError> {
    // Never the system's default server.
    prop_assume!(!url.contains("6379"));
    let outcome = bounded(url, RdLockConnectionManager::new(url)).await;
    seen.add(match &outcome {
        Ok(_) => "connected",
        Err(RdLockError::InvalidUrl(_)) => "InvalidUrl",
        Err(RdLockError::Unreachable(_)) => "Unreachable",
        Err(RdLockError::RedisError(_)) => "RedisError",
        Err(_) => "other",
    });
    match outcome {
        Ok(manager) => {
            let lock = manager.new_lock("url-case");
            let guard = bounded(url, lock.try_lock())
                .await
                .map_err(|e| TestCaseError::fail(format!("{url:?} connected but: {e:?}")))?;
            guard.release().await.unwrap();
            bounded(url, manager.shutdown()).await.unwrap();
        }
        Err(
            RdLockError::InvalidUrl(_) | RdLockError::Unreachable(_) | RdLockError::RedisError(_),
        ) => {}
        Err(e) => prop_assert!(false, "{url:?}: unexpected {e:?}"),
    }
    Ok(())
}

#[test]
fn urls_connect_or_fail_typed() {
    let server = RedisServer::start();
    let dead = free_port();
    let rt = runtime();
    let seen = Tally::default();
    runner("structured urls", 64)
        .run(&structured_urls(server.port(), dead), |url| {
            rt.block_on(check_url(&url, &seen))
        })
        .unwrap();
    println!("structured urls: {}", seen.take());
    runner("random strings", 64)
        .run(&any::<String>(), |url| rt.block_on(check_url(&url, &seen)))
        .unwrap();
    println!("random strings: {}", seen.take());
    runner("random bytes", 64)
        .run(&prop::collection::vec(any::<u8>(), 0..64), |bytes| {
            rt.block_on(check_url(&String::from_utf8_lossy(&bytes), &seen))
        })
        .unwrap();
    println!("random bytes: {}", seen.take());
}

/// Counts outcomes, to show what a run covered.
#[derive(Default)]
struct Tally(std::sync::Mutex<std::collections::BTreeMap<String, u64>>);

impl Tally {
    fn add(&self, what: &str) {
        *self.0.lock().unwrap().entry(what.to_owned()).or_default() += 1;
    }

    fn take(&self) -> String {
        format!("{:?}", std::mem::take(&mut *self.0.lock().unwrap()))
    }
}
