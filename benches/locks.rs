//! Lock benchmarks: this crate against the raw redis-rs floor and peer crates, on one
//! private redis-server, then on a private Redis Cluster (3 masters + 3 replicas,
//! started by the bench with the test rig, `tests/support/cluster.rs`).
//!
//! `cargo bench --bench locks` runs everything in full and prints the tables that
//! BENCHMARKS.md reports; `cargo test --benches` (CI) runs each part once, briefly.
//! The server has keyspace events on (`KA`), because rdlock 1.x refuses to start
//! without them; every contender runs against the same server.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use support::cluster::RedisCluster;
use support::{commands_run, connected_clients, reset_stats, RedisServer, ServerConfig};

/// How long each scenario runs, and how many rounds the uncontended comparison takes.
#[derive(Clone, Copy)]
struct Scale {
    scenario: Duration,
    cycles: usize,
    rounds: usize,
    held: [usize; 2],
    window: Duration,
}

// Uncontended: 25 interleaved rounds of 400 cycles (10,000 per contender), so that a
// burst of load on the shared machine hits one short round of each contender, not one
// contender's whole measurement.
const FULL: Scale = Scale {
    scenario: Duration::from_secs(5),
    cycles: 400,
    rounds: 25,
    held: [1_000, 10_000],
    window: Duration::from_secs(6),
};
const QUICK: Scale = Scale {
    scenario: Duration::from_millis(200),
    cycles: 20,
    rounds: 1,
    held: [10, 100],
    window: Duration::from_millis(500),
};

const KEY: &str = "bench";
const LEASE: Duration = Duration::from_secs(30);

fn main() {
    if let Ok(kind) = std::env::var("RDLOCK_BENCH_WORKER") {
        match kind.strip_prefix("redlock-") {
            Some(kind) => redlock_worker(kind),
            None => worker_process(&kind),
        }
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let scale = if full { FULL } else { QUICK };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // RDLOCK_BENCH_UNCONTENDED_ONLY=1: only the one-server uncontended table (about
    // half a minute in full).
    if std::env::var_os("RDLOCK_BENCH_UNCONTENDED_ONLY").is_some() {
        let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
        println!("\n## Uncontended acquire+release cycle (interleaved rounds, median of rounds)\n");
        runtime.block_on(uncontended_table(&server, scale));
        return;
    }
    // RDLOCK_BENCH_CONTENDED_ONLY=1: only the single-server uncontended-cycle and
    // contended tables (16 tasks; 4 processes x 4 tasks), about 1 minute in full.
    if std::env::var_os("RDLOCK_BENCH_CONTENDED_ONLY").is_some() {
        let server = RedisServer::start_with(ServerConfig::keyspace("KA"));
        contended_tables(&runtime, &server, scale);
        return;
    }
    // RDLOCK_BENCH_REDLOCK_ONLY=1: only the Redlock tables (about 1 minute in full).
    if std::env::var_os("RDLOCK_BENCH_REDLOCK_ONLY").is_some() {
        runtime.block_on(redlock_tables(scale));
        return;
    }
    // RDLOCK_BENCH_CLUSTER_ONLY=1: only the Redis Cluster tables (about 1 minute).
    if std::env::var_os("RDLOCK_BENCH_CLUSTER_ONLY").is_none() {
        one_server(&runtime, scale, full);
        runtime.block_on(redlock_tables(scale));
    }
    let cluster = runtime.block_on(RedisCluster::start());
    println!("\n## Redis Cluster (3 masters + 3 replicas): uncontended acquire+release cycle\n");
    let cycle = runtime.block_on(cluster_uncontended(&cluster, scale));
    println!("\n## Redis Cluster: contended, one process, 16 tasks on one key\n");
    runtime.block_on(cluster_contended(&cluster, scale, cycle));
}

/// The tables on one server.
fn one_server(runtime: &tokio::runtime::Runtime, scale: Scale, full: bool) {
    let server = RedisServer::start_with(ServerConfig::keyspace("KA"));

    criterion_uncontended(runtime, &server, full);
    contended_tables(runtime, &server, scale);
    println!("\n## 1,000 waiting tasks on 100 keys, one manager\n");
    runtime.block_on(many_waiters(&server, scale));
    println!("\n## Held guards: renewal traffic, CPU and memory\n");
    runtime.block_on(held_guards(&server, scale));
}

/// The uncontended cycle (the reference of the wait ratios) and the contended tables.
fn contended_tables(runtime: &tokio::runtime::Runtime, server: &RedisServer, scale: Scale) {
    println!("\n## Uncontended acquire+release cycle (interleaved rounds, median of rounds)\n");
    let cycle = runtime.block_on(uncontended_table(server, scale));
    println!("\n## Contended, one process, 16 tasks on one key\n");
    runtime.block_on(contended_in_process(server, scale, cycle));
    println!("\n## Contended, 4 processes x 4 tasks on one key\n");
    runtime.block_on(contended_processes(server, scale, cycle));
}

// ---------------------------------------------------------------------------------
// The contenders: one acquire+release cycle each.

/// The floor: the same redis-rs client doing `SET NX PX` + `DEL` back to back.
async fn floor_cycle(conn: &mut (impl redis::aio::ConnectionLike + Send)) {
    let ok: Option<String> = redis::cmd("SET")
        .arg(KEY)
        .arg("v")
        .arg("NX")
        .arg("PX")
        .arg(30_000)
        .query_async(conn)
        .await
        .expect("SET");
    assert!(ok.is_some(), "the floor loop found its key taken");
    let _: i64 = redis::cmd("DEL")
        .arg(KEY)
        .query_async(conn)
        .await
        .expect("DEL");
}

/// rdlock's own scripts (the same source files), acquire then release, with a fixed
/// token and owner record.
async fn scripts_cycle(conn: &mut (impl redis::aio::ConnectionLike + Send)) {
    static ACQUIRE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(concat!(
            include_str!("../src/scripts/queue.lua"),
            include_str!("../src/scripts/acquire.lua")
        ))
    });
    static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(concat!(
            include_str!("../src/scripts/queue.lua"),
            include_str!("../src/scripts/release.lua")
        ))
    });
    let (ok, _, _): (i64, i64, String) = ACQUIRE
        .key("rdlock:{raw}:lock")
        .key("rdlock:{raw}:fence")
        .key("rdlock:{raw}:owner")
        .key("rdlock:{raw}:queue")
        .arg("token")
        .arg(30_000)
        .arg("1\nhost\n")
        .arg(1_700_000_000_000u64)
        .arg("raw-process")
        .arg("0")
        .arg("rdlock:{raw}:release")
        .invoke_async(conn)
        .await
        .expect("acquire script");
    assert_eq!(ok, 1);
    let released: Option<String> = RELEASE
        .key("rdlock:{raw}:lock")
        .key("rdlock:{raw}:owner")
        .key("rdlock:{raw}:waiters")
        .key("rdlock:{raw}:queue")
        .arg("token")
        .arg("rdlock:{raw}:release")
        .arg(250)
        .invoke_async(conn)
        .await
        .expect("release script");
    assert_eq!(released.as_deref(), Some("token"));
}

/// rdlock 2.0's scripts as released (`tests/support/v2_0/`: `PTTL` first, the server's
/// `TIME`, a `PUBLISH` on every release), the same way: the "before" of the trim, in
/// the same run.
async fn scripts_cycle_before(conn: &mut (impl redis::aio::ConnectionLike + Send)) {
    let (ok, _, _): (i64, i64, String) = support::v2_0::ACQUIRE
        .key("rdlock:{raw}:lock")
        .key("rdlock:{raw}:fence")
        .key("rdlock:{raw}:owner")
        .arg("token")
        .arg(30_000)
        .arg("1\nhost\n")
        .invoke_async(conn)
        .await
        .expect("acquire script");
    assert_eq!(ok, 1);
    let released: Option<String> = support::v2_0::RELEASE
        .key("rdlock:{raw}:lock")
        .key("rdlock:{raw}:owner")
        .arg("token")
        .arg("rdlock:{raw}:release")
        .invoke_async(conn)
        .await
        .expect("release script");
    assert_eq!(released.as_deref(), Some("token"));
}

enum Contender {
    Floor(MultiplexedConnection),
    /// rdlock's acquire and release scripts sent straight through redis-rs: the server's
    /// share of rdlock's cycle, without the library around it.
    Scripts(MultiplexedConnection),
    /// The same with rdlock 2.0's scripts.
    ScriptsBefore(MultiplexedConnection),
    Ours(rdlock::Lock),
    V1(Box<rdlock_v1::lock::BasicLock>),
    Rslock(rslock::LockManager),
}

impl Contender {
    const NAMES: [&'static str; 6] = [
        "redis-rs floor",
        "rdlock (this crate)",
        "rdlock 1.0.3",
        "rslock 0.10",
        "rdlock's two scripts, raw",
        "rdlock 2.0's two scripts, raw (before the trim)",
    ];
    /// The locks, for the contended scenarios.
    const LOCKS: std::ops::RangeInclusive<usize> = 1..=3;

    async fn new(kind: usize, url: &str) -> Self {
        match kind {
            0 => Self::Floor(
                redis::Client::open(url)
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
            ),
            1 => Self::Ours(
                rdlock::RdLockConnectionManager::new(url)
                    .await
                    .unwrap()
                    .new_lock(KEY)
                    .with_lease(LEASE),
            ),
            2 => Self::V1(Box::new(
                rdlock_v1::RdLockConnectionManager::new(url)
                    .await
                    .unwrap()
                    .new_basic_lock(KEY, 30),
            )),
            3 => Self::Rslock(rslock::LockManager::new(vec![url.to_owned()])),
            4 => Self::Scripts(
                redis::Client::open(url)
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
            ),
            _ => Self::ScriptsBefore(
                redis::Client::open(url)
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
            ),
        }
    }

    /// One blocking acquire followed by a release.
    async fn cycle(&mut self) {
        match self {
            Self::Floor(conn) => floor_cycle(conn).await,
            Self::Scripts(conn) => scripts_cycle(conn).await,
            Self::ScriptsBefore(conn) => scripts_cycle_before(conn).await,
            Self::Ours(lock) => lock.lock().await.unwrap().release().await.unwrap(),
            Self::V1(lock) => {
                lock.lock().await.unwrap();
                lock.release().await.unwrap();
            }
            Self::Rslock(manager) => {
                let guard = manager.acquire(KEY.as_bytes(), LEASE).await.unwrap();
                guard.release().await;
            }
        }
    }

    /// Acquires, runs `inside`, releases; returns the time spent waiting.
    async fn hold(&mut self) -> Duration {
        let asked = Instant::now();
        match self {
            Self::Floor(_) | Self::Scripts(_) | Self::ScriptsBefore(_) => {
                unreachable!("not a lock")
            }
            Self::Ours(lock) => {
                let guard = lock.lock().await.unwrap();
                let waited = asked.elapsed();
                guard.release().await.unwrap();
                waited
            }
            Self::V1(lock) => {
                lock.lock().await.unwrap();
                let waited = asked.elapsed();
                lock.release().await.unwrap();
                waited
            }
            Self::Rslock(manager) => {
                let guard = manager.acquire(KEY.as_bytes(), LEASE).await.unwrap();
                let waited = asked.elapsed();
                guard.release().await;
                waited
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Uncontended.

fn criterion_uncontended(runtime: &tokio::runtime::Runtime, server: &RedisServer, full: bool) {
    let mut criterion = Criterion::default().configure_from_args();
    if !full {
        criterion = criterion
            .sample_size(10)
            .warm_up_time(Duration::from_millis(50))
            .measurement_time(Duration::from_millis(100));
    }
    let mut group = criterion.benchmark_group("uncontended_cycle");
    for (kind, name) in Contender::NAMES.iter().enumerate() {
        let mut contender = runtime.block_on(Contender::new(kind, &server.url()));
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        contender.cycle().await;
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
    criterion.final_summary();
}

/// Median per-cycle time of each contender over interleaved rounds (A B C D, A B C D,
/// ...), so that machine noise hits all of them alike. Returns ours.
async fn uncontended_table(server: &RedisServer, scale: Scale) -> Duration {
    let mut contenders = Vec::new();
    for kind in 0..Contender::NAMES.len() {
        contenders.push(Contender::new(kind, &server.url()).await);
    }
    let mut raw = server.conn().await;
    let mut per_cycle = vec![Vec::new(); contenders.len()];
    let mut commands = vec![0.0; contenders.len()];
    for _ in 0..scale.rounds {
        for (kind, contender) in contenders.iter_mut().enumerate() {
            reset_stats(&mut raw).await;
            let started = Instant::now();
            for _ in 0..scale.cycles {
                contender.cycle().await;
            }
            per_cycle[kind].push(started.elapsed() / scale.cycles as u32);
            commands[kind] = commands_run(&mut raw).await as f64 / scale.cycles as f64;
        }
    }
    let ratios: Vec<f64> = (0..contenders.len())
        .map(|kind| median_ratio(&per_cycle, kind))
        .collect();
    let medians: Vec<Duration> = per_cycle.iter_mut().map(|v| median(v)).collect();
    println!("| contender | cycle (median) | vs floor (median of rounds' medians) | vs floor (median of per-round ratios) | Redis commands per cycle |");
    println!("|---|---|---|---|---|");
    for (kind, name) in Contender::NAMES.iter().enumerate() {
        println!(
            "| {name} | {:.1} µs | {:.2}x | {:.2}x | {:.1} |",
            micros(medians[kind]),
            ratio(medians[kind], medians[0]),
            ratios[kind],
            commands[kind]
        );
    }
    medians[1]
}

// ---------------------------------------------------------------------------------
// Contended.

struct Run {
    per_task: Vec<u64>,
    waits: Vec<Duration>,
    elapsed: Duration,
    commands: u64,
}

async fn contend(server: &RedisServer, kind: usize, tasks: usize, run_for: Duration) -> Run {
    let url = server.url();
    let mut raw = server.conn().await;
    // rdlock 1.x and rslock are used as their docs show: one lock value per task.
    // rdlock shares one manager (and so one subscriber) between the tasks.
    let shared = rdlock::RdLockConnectionManager::new(url.as_str())
        .await
        .unwrap();
    let mut contenders = Vec::new();
    for _ in 0..tasks {
        contenders.push(match kind {
            1 => Contender::Ours(shared.new_lock(KEY).with_lease(LEASE)),
            k => Contender::new(k, &url).await,
        });
    }
    reset_stats(&mut raw).await;
    let started = Instant::now();
    let handles: Vec<_> = contenders
        .into_iter()
        .map(|mut contender| {
            tokio::spawn(async move {
                let mut waits = Vec::new();
                while started.elapsed() < run_for {
                    waits.push(contender.hold().await);
                }
                waits
            })
        })
        .collect();
    let mut run = Run {
        per_task: Vec::new(),
        waits: Vec::new(),
        elapsed: Duration::ZERO,
        commands: 0,
    };
    for handle in handles {
        let waits = handle.await.unwrap();
        run.per_task.push(waits.len() as u64);
        run.waits.extend(waits);
    }
    run.elapsed = started.elapsed();
    run.commands = commands_run(&mut raw).await;
    run
}

async fn contended_in_process(server: &RedisServer, scale: Scale, our_cycle: Duration) {
    let floor_rate = floor_rate(server, scale).await;
    println!(
        "floor loop: {floor_rate:.0} cycles/s; rdlock uncontended cycle {:.1} µs\n",
        micros(our_cycle)
    );
    println!("| contender | acquisitions/s | vs floor | p50 wait | p99 wait | p99 wait / p50 uncontended cycle | min/mean per task | commands per acquisition |");
    println!("|---|---|---|---|---|---|---|---|");
    for kind in Contender::LOCKS {
        let mut run = contend(server, kind, 16, scale.scenario).await;
        let total: u64 = run.per_task.iter().sum();
        let rate = total as f64 / run.elapsed.as_secs_f64();
        let mean = total as f64 / run.per_task.len() as f64;
        let min = run.per_task.iter().min().copied().unwrap_or(0);
        run.waits.sort();
        let p50 = percentile(&run.waits, 0.50);
        let p99 = percentile(&run.waits, 0.99);
        println!(
            "| {} | {rate:.0} | {:.2}x | {:.2} ms | {:.2} ms | {:.1}x | {:.2} | {:.1} |",
            Contender::NAMES[kind],
            rate / floor_rate,
            millis(p50),
            millis(p99),
            ratio(p99, our_cycle),
            min as f64 / mean.max(1.0),
            run.commands as f64 / total.max(1) as f64,
        );
    }
}

async fn floor_rate(server: &RedisServer, scale: Scale) -> f64 {
    let mut conn = server.conn().await;
    let started = Instant::now();
    let mut cycles = 0u64;
    while started.elapsed() < scale.scenario {
        floor_cycle(&mut conn).await;
        cycles += 1;
    }
    cycles as f64 / started.elapsed().as_secs_f64()
}

/// 4 processes (this binary run again as workers) x 4 tasks.
async fn contended_processes(server: &RedisServer, scale: Scale, our_cycle: Duration) {
    let floor_rate = floor_rate(server, scale).await;
    let mut raw = server.conn().await;
    println!("| contender | acquisitions/s | vs floor | p50 wait | p99 wait | p99 wait / p50 uncontended cycle | min/mean per process | min/mean per task | commands per acquisition |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut queue_line = None;
    for kind in Contender::LOCKS {
        reset_stats(&mut raw).await;
        let started = Instant::now();
        let children: Vec<_> = (0..4)
            .map(|_| {
                std::process::Command::new(std::env::current_exe().unwrap())
                    .env("RDLOCK_BENCH_WORKER", kind.to_string())
                    .env("RDLOCK_BENCH_URL", server.url())
                    .env("RDLOCK_BENCH_MS", scale.scenario.as_millis().to_string())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("start a worker process")
            })
            .collect();
        let mut per_process = Vec::new();
        let mut per_task = Vec::new();
        let mut waits = Vec::new();
        for child in children {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let mut process = 0u64;
            for line in text.lines() {
                if let Some(n) = line.strip_prefix("ACQ ") {
                    let n = n.parse::<u64>().unwrap();
                    process += n;
                    per_task.push(n);
                } else if let Some(list) = line.strip_prefix("WAITS ") {
                    waits.extend(
                        list.split(',')
                            .filter(|w| !w.is_empty())
                            .map(|w| Duration::from_micros(w.parse().unwrap())),
                    );
                }
            }
            per_process.push(process);
        }
        let elapsed = started.elapsed();
        let commands = commands_run(&mut raw).await;
        // rdlock: messages (`turn` + `claimed`) and failed attempts (each queues its
        // process: one `LPOS`), for the queue of processes.
        let queue_figures = (kind == 1).then_some((
            support::calls(&mut raw, "publish").await,
            support::calls(&mut raw, "lpos").await,
        ));
        let total: u64 = per_process.iter().sum();
        let rate = total as f64 / elapsed.as_secs_f64();
        waits.sort();
        let (p50, p99) = if waits.is_empty() {
            (Duration::ZERO, Duration::ZERO)
        } else {
            (percentile(&waits, 0.50), percentile(&waits, 0.99))
        };
        println!(
            "| {} | {rate:.0} | {:.2}x | {:.2} ms | {:.2} ms | {:.1}x | {:.2} | {:.2} | {:.1} |",
            Contender::NAMES[kind],
            rate / floor_rate,
            millis(p50),
            millis(p99),
            ratio(p99, our_cycle),
            min_over_mean(&per_process),
            min_over_mean(&per_task),
            commands as f64 / total.max(1) as f64
        );
        if let Some((publishes, failed)) = queue_figures {
            queue_line = Some(format!(
                "rdlock: {total} acquisitions, {publishes} messages (`turn` + `claimed`: {:.3} \
                 per acquisition), {failed} failed attempts ({:.3} per acquisition)",
                publishes as f64 / total.max(1) as f64,
                failed as f64 / total.max(1) as f64
            ));
        }
    }
    if let Some(line) = queue_line {
        println!("\n{line}");
    }
}

/// A worker process: 4 tasks contend for `KEY` for the given time; prints `ACQ <n>`.
fn worker_process(kind: &str) {
    let kind: usize = kind.parse().unwrap();
    let url = std::env::var("RDLOCK_BENCH_URL").unwrap();
    let ms: u64 = std::env::var("RDLOCK_BENCH_MS").unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let shared = rdlock::RdLockConnectionManager::new(url.as_str())
            .await
            .unwrap();
        let mut handles = Vec::new();
        let started = Instant::now();
        for _ in 0..4 {
            let mut contender = match kind {
                1 => Contender::Ours(shared.new_lock(KEY).with_lease(LEASE)),
                k => Contender::new(k, &url).await,
            };
            handles.push(tokio::spawn(async move {
                let mut waits = Vec::new();
                while started.elapsed() < Duration::from_millis(ms) {
                    waits.push(contender.hold().await);
                }
                waits
            }));
        }
        // One `ACQ` line per task (the fairness columns), and every wait in µs.
        for h in handles {
            let waits = h.await.unwrap();
            println!("ACQ {}", waits.len());
            let list: Vec<String> = waits.iter().map(|w| w.as_micros().to_string()).collect();
            println!("WAITS {}", list.join(","));
        }
    });
}

// ---------------------------------------------------------------------------------
// Many waiters, many held guards (this crate only).

async fn many_waiters(server: &RedisServer, scale: Scale) {
    let (keys, waiters) = if scale.cycles > 100 {
        (100, 1_000)
    } else {
        (10, 100)
    };
    let mut raw = server.conn().await;
    let before = connected_clients(&mut raw).await;
    let holder = rdlock::RdLockConnectionManager::new(server.url())
        .await
        .unwrap();
    let manager = rdlock::RdLockConnectionManager::new(server.url())
        .await
        .unwrap();
    let mut held = Vec::new();
    for k in 0..keys {
        held.push(holder.new_lock(&format!("w{k}")).lock().await.unwrap());
    }
    let handles: Vec<_> = (0..waiters)
        .map(|w| {
            let lock = Arc::new(manager.new_lock(&format!("w{}", w % keys)));
            tokio::spawn(async move { lock.lock().await.unwrap().release().await.unwrap() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connections = connected_clients(&mut raw).await - before - 2; // less the holder's two
    reset_stats(&mut raw).await;
    let started = Instant::now();
    for guard in held {
        guard.release().await.unwrap();
    }
    for h in handles {
        h.await.unwrap();
    }
    let elapsed = started.elapsed();
    let commands = commands_run(&mut raw).await;
    println!("| waiting tasks | keys | connections of the waiting manager | time to serve all after release | commands per acquisition (release of the holder's key included) |");
    println!("|---|---|---|---|---|");
    println!(
        "| {waiters} | {keys} | {connections} | {:.1} ms | {:.1} |",
        millis(elapsed),
        commands as f64 / waiters as f64
    );
}

async fn held_guards(server: &RedisServer, scale: Scale) {
    println!("| guards held | lease | Redis commands/s | renewal scripts/s | CPU of this process per held guard | RSS per held guard |");
    println!("|---|---|---|---|---|---|");
    for count in scale.held {
        let lease = Duration::from_secs(3);
        let manager = rdlock::RdLockConnectionManager::new(server.url())
            .await
            .unwrap();
        let mut raw = server.conn().await;
        let rss_before = rss_bytes();
        let mut guards = Vec::with_capacity(count);
        for i in 0..count {
            guards.push(
                manager
                    .new_lock(&format!("held-{i}"))
                    .with_lease(lease)
                    .lock()
                    .await
                    .unwrap(),
            );
        }
        tokio::time::sleep(lease / 2).await; // renewals spread over their period
        let rss_after = rss_bytes();
        reset_stats(&mut raw).await;
        let cpu_before = cpu_time();
        let started = Instant::now();
        tokio::time::sleep(scale.window).await;
        let cpu = cpu_time().saturating_sub(cpu_before);
        let elapsed = started.elapsed().as_secs_f64();
        let commands = commands_run(&mut raw).await as f64 / elapsed;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut raw)
            .await
            .unwrap();
        let renewals = info
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|l| l.split(',').next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0)
            / elapsed;
        assert!(
            guards.iter().all(|g| g.is_held()),
            "a lease was lost while idle"
        );
        println!(
            "| {count} | {lease:?} | {commands:.0} | {renewals:.0} | {:.1} µs/s | {:.0} bytes |",
            cpu.as_secs_f64() * 1e6 / elapsed / count as f64,
            rss_after.saturating_sub(rss_before) as f64 / count as f64
        );
        drop(guards);
        manager.shutdown().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------
// Redis Cluster.

enum ClusterContender {
    /// `SET NX PX` + `DEL` through redis-rs's cluster client.
    Floor(ClusterConnection),
    Ours(rdlock::Lock),
    Rslock(rslock::LockManager),
    /// rdlock's two scripts through redis-rs's cluster client.
    Scripts(ClusterConnection),
    /// The same with rdlock 2.0's scripts.
    ScriptsBefore(ClusterConnection),
}

impl ClusterContender {
    const NAMES: [&'static str; 5] = [
        "redis-rs cluster floor",
        "rdlock (this crate)",
        "rslock 0.10 (`cluster` feature)",
        "rdlock's two scripts, raw",
        "rdlock 2.0's two scripts, raw (before the trim)",
    ];
    const LOCKS: [usize; 2] = [1, 2];

    async fn new(kind: usize, cluster: &RedisCluster) -> Self {
        match kind {
            0 => Self::Floor(cluster_client(cluster).await),
            1 => Self::Ours(
                rdlock::RdLockConnectionManager::cluster(cluster.urls())
                    .await
                    .unwrap()
                    .new_lock(KEY)
                    .with_lease(LEASE),
            ),
            2 => Self::Rslock(rslock::LockManager::new_cluster(cluster.urls()).unwrap()),
            3 => Self::Scripts(cluster_client(cluster).await),
            _ => Self::ScriptsBefore(cluster_client(cluster).await),
        }
    }

    async fn cycle(&mut self) {
        match self {
            Self::Floor(conn) => floor_cycle(conn).await,
            Self::Scripts(conn) => scripts_cycle(conn).await,
            Self::ScriptsBefore(conn) => scripts_cycle_before(conn).await,
            Self::Ours(lock) => lock.lock().await.unwrap().release().await.unwrap(),
            Self::Rslock(manager) => {
                let guard = manager.acquire(KEY.as_bytes(), LEASE).await.unwrap();
                guard.release().await;
            }
        }
    }

    /// Acquires, releases; returns the time spent waiting.
    async fn hold(&mut self) -> Duration {
        let asked = Instant::now();
        match self {
            Self::Floor(_) | Self::Scripts(_) | Self::ScriptsBefore(_) => {
                unreachable!("not a lock")
            }
            Self::Ours(lock) => {
                let guard = lock.lock().await.unwrap();
                let waited = asked.elapsed();
                guard.release().await.unwrap();
                waited
            }
            Self::Rslock(manager) => {
                let guard = manager.acquire(KEY.as_bytes(), LEASE).await.unwrap();
                let waited = asked.elapsed();
                guard.release().await;
                waited
            }
        }
    }
}

/// redis-rs's cluster client with its default settings, seeded with every node.
async fn cluster_client(cluster: &RedisCluster) -> ClusterConnection {
    redis::cluster::ClusterClient::new(cluster.urls())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}

/// What the cluster did, summed over its nodes.
#[derive(Clone, Copy, Default)]
struct ClusterWork {
    /// Commands run by the masters (`INFO commandstats`, script bodies included).
    masters: u64,
    /// Commands run by the replicas (what the masters replicate to them).
    replicas: u64,
    /// `PUBLISH` messages received over the cluster bus (`CLUSTER INFO`,
    /// `cluster_stats_messages_publish*_received`): a classic `PUBLISH` is sent to every
    /// other node.
    bus_publish: u64,
}

/// A plain connection to every node, and whether it is a master.
struct Nodes(Vec<(MultiplexedConnection, bool)>);

impl Nodes {
    async fn new(cluster: &RedisCluster) -> Self {
        let mut nodes = Vec::new();
        for i in cluster.running() {
            nodes.push((cluster.conn(i).await, cluster.is_master(i).await));
        }
        Self(nodes)
    }

    /// Resets the command statistics; returns the bus counters to subtract.
    async fn reset(&mut self) -> ClusterWork {
        for (conn, _) in &mut self.0 {
            reset_stats(conn).await;
        }
        let mut start = ClusterWork::default();
        for (conn, _) in &mut self.0 {
            start.bus_publish += bus_publish_received(conn).await;
        }
        start
    }

    /// The work since `start` (from [`Self::reset`]).
    async fn work(&mut self, start: ClusterWork) -> ClusterWork {
        // The bus delivers a PUBLISH after the publisher answered: let the last arrive.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut work = ClusterWork::default();
        for (conn, master) in &mut self.0 {
            // Less the measurement's own `CLUSTER INFO` (one per node in `reset`).
            let commands = commands_run(conn).await.saturating_sub(1);
            if *master {
                work.masters += commands;
            } else {
                work.replicas += commands;
            }
            work.bus_publish += bus_publish_received(conn).await;
        }
        work.bus_publish -= start.bus_publish;
        work
    }
}

/// Calls per command since the last reset, summed over the masters and over the
/// replicas: `(masters, replicas)`, e.g. `evalsha 2000, get 2000, ...`.
async fn breakdown(nodes: &mut Nodes) -> (String, String) {
    let mut by_role = [
        std::collections::BTreeMap::<String, u64>::new(),
        Default::default(),
    ];
    for (conn, master) in &mut nodes.0 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(conn)
            .await
            .expect("INFO commandstats");
        for line in info.lines().filter_map(|l| l.strip_prefix("cmdstat_")) {
            let Some((name, rest)) = line.split_once(":calls=") else {
                continue;
            };
            if name == "info" || name.starts_with("config") || name == "cluster|info" {
                continue;
            }
            let calls: u64 = rest
                .split(',')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            *by_role[usize::from(!*master)]
                .entry(name.to_owned())
                .or_default() += calls;
        }
    }
    let show = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    (show(&by_role[0]), show(&by_role[1]))
}

async fn bus_publish_received(conn: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(conn)
        .await
        .expect("CLUSTER INFO");
    info.lines()
        .filter(|l| l.starts_with("cluster_stats_messages_publish"))
        .filter_map(|l| l.trim().split_once("_received:"))
        .filter_map(|(_, n)| n.parse::<u64>().ok())
        .sum()
}

fn per(n: u64, acquisitions: u64) -> f64 {
    n as f64 / acquisitions.max(1) as f64
}

/// Interleaved rounds as on one server; returns rdlock's median cycle.
async fn cluster_uncontended(cluster: &RedisCluster, scale: Scale) -> Duration {
    let mut contenders = Vec::new();
    for kind in 0..ClusterContender::NAMES.len() {
        contenders.push(ClusterContender::new(kind, cluster).await);
    }
    let mut nodes = Nodes::new(cluster).await;
    let mut per_cycle = vec![Vec::new(); contenders.len()];
    let mut work = vec![ClusterWork::default(); contenders.len()];
    let mut breakdowns = (String::new(), String::new());
    for _ in 0..scale.rounds {
        for (kind, contender) in contenders.iter_mut().enumerate() {
            let start = nodes.reset().await;
            let started = Instant::now();
            for _ in 0..scale.cycles {
                contender.cycle().await;
            }
            per_cycle[kind].push(started.elapsed() / scale.cycles as u32);
            work[kind] = nodes.work(start).await;
            if kind == 1 {
                breakdowns = breakdown(&mut nodes).await;
            }
        }
    }
    let ratios: Vec<f64> = (0..contenders.len())
        .map(|kind| median_ratio(&per_cycle, kind))
        .collect();
    let medians: Vec<Duration> = per_cycle.iter_mut().map(|v| median(v)).collect();
    let cycles = scale.cycles as u64;
    println!("| contender | cycle (median) | vs floor (median of rounds' medians) | vs floor (median of per-round ratios) | commands per cycle: masters + replicas | cluster-bus PUBLISH messages received per cycle |");
    println!("|---|---|---|---|---|---|");
    for (kind, name) in ClusterContender::NAMES.iter().enumerate() {
        let w = work[kind];
        println!(
            "| {name} | {:.1} µs | {:.2}x | {:.2}x | {:.1} + {:.1} | {:.1} |",
            micros(medians[kind]),
            ratio(medians[kind], medians[0]),
            ratios[kind],
            per(w.masters, cycles),
            per(w.replicas, cycles),
            per(w.bus_publish, cycles),
        );
    }
    println!(
        "\nrdlock's last round of {} cycles, by command: masters: {}; replicas: {}",
        scale.cycles, breakdowns.0, breakdowns.1
    );
    medians[1]
}

async fn cluster_contended(cluster: &RedisCluster, scale: Scale, our_cycle: Duration) {
    let mut floor = ClusterContender::new(0, cluster).await;
    let started = Instant::now();
    let mut cycles = 0u64;
    while started.elapsed() < scale.scenario {
        floor.cycle().await;
        cycles += 1;
    }
    let floor_rate = cycles as f64 / started.elapsed().as_secs_f64();
    println!(
        "floor loop: {floor_rate:.0} cycles/s; rdlock uncontended cycle {:.1} µs\n",
        micros(our_cycle)
    );
    println!("| contender | acquisitions/s | vs floor | p50 wait | p99 wait | min/mean per task | commands per acquisition: masters + replicas | bus PUBLISH messages received per acquisition |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut nodes = Nodes::new(cluster).await;
    for kind in ClusterContender::LOCKS {
        // rdlock shares one manager between the tasks; rslock: one manager per task.
        let shared = rdlock::RdLockConnectionManager::cluster(cluster.urls())
            .await
            .unwrap();
        let mut contenders = Vec::new();
        for _ in 0..16 {
            contenders.push(match kind {
                1 => ClusterContender::Ours(shared.new_lock(KEY).with_lease(LEASE)),
                k => ClusterContender::new(k, cluster).await,
            });
        }
        let start = nodes.reset().await;
        let started = Instant::now();
        let run_for = scale.scenario;
        let handles: Vec<_> = contenders
            .into_iter()
            .map(|mut contender| {
                tokio::spawn(async move {
                    let mut waits = Vec::new();
                    while started.elapsed() < run_for {
                        waits.push(contender.hold().await);
                    }
                    waits
                })
            })
            .collect();
        let mut per_task = Vec::new();
        let mut waits = Vec::new();
        for handle in handles {
            let w = handle.await.unwrap();
            per_task.push(w.len() as u64);
            waits.extend(w);
        }
        let elapsed = started.elapsed();
        let work = nodes.work(start).await;
        let total: u64 = per_task.iter().sum();
        let rate = total as f64 / elapsed.as_secs_f64();
        let mean = total as f64 / per_task.len() as f64;
        let min = per_task.iter().min().copied().unwrap_or(0);
        waits.sort();
        println!(
            "| {} | {rate:.0} | {:.2}x | {:.2} ms | {:.2} ms | {:.2} | {:.1} + {:.1} | {:.1} |",
            ClusterContender::NAMES[kind],
            rate / floor_rate,
            millis(percentile(&waits, 0.50)),
            millis(percentile(&waits, 0.99)),
            min as f64 / mean.max(1.0),
            per(work.masters, total),
            per(work.replicas, total),
            per(work.bus_publish, total),
        );
        shared.shutdown().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------
// Redlock: this crate's Redlock backend against rslock's `LockManager` over the same 3
// and 5 local servers, in the same run. (A block of its own, apart from the one-server
// tables above.)

enum Quorum {
    Ours(rdlock::Lock),
    Rslock(rslock::LockManager),
}

impl Quorum {
    const NAMES: [&'static str; 2] = ["rdlock redlock (this crate)", "rslock 0.10 LockManager"];

    /// `shared`: our manager, shared by the tasks of one process (rslock: one
    /// `LockManager` per task, as its docs show).
    fn new(kind: usize, urls: &[String], shared: &rdlock::RdLockConnectionManager) -> Self {
        match kind {
            0 => Self::Ours(shared.new_lock(KEY).with_lease(LEASE)),
            _ => Self::Rslock(rslock::LockManager::new(urls.to_vec())),
        }
    }

    /// Acquires and releases; returns the time spent waiting for the lock.
    async fn hold(&mut self) -> Duration {
        let asked = Instant::now();
        match self {
            Self::Ours(lock) => {
                let guard = lock.lock().await.unwrap();
                let waited = asked.elapsed();
                guard.release().await.unwrap();
                waited
            }
            Self::Rslock(manager) => {
                let guard = manager.acquire(KEY.as_bytes(), LEASE).await.unwrap();
                let waited = asked.elapsed();
                guard.release().await;
                waited
            }
        }
    }
}

/// Commands run on all `nodes` since their last reset.
async fn commands_on(conns: &mut [MultiplexedConnection]) -> u64 {
    let mut total = 0;
    for conn in conns {
        total += commands_run(conn).await;
    }
    total
}

async fn reset_all(conns: &mut [MultiplexedConnection]) {
    for conn in conns {
        reset_stats(conn).await;
    }
}

async fn redlock_tables(scale: Scale) {
    let servers: Vec<RedisServer> = (0..5).map(|_| RedisServer::start()).collect();
    println!("\n## Redlock: uncontended acquire+release cycle (interleaved rounds, median)\n");
    println!(
        "| nodes | contender | cycle (median) | vs rslock | Redis commands per cycle, all nodes |"
    );
    println!("|---|---|---|---|---|");
    for n in [3, 5] {
        let urls: Vec<String> = servers[..n].iter().map(RedisServer::url).collect();
        let mut conns = Vec::new();
        for server in &servers[..n] {
            conns.push(server.conn().await);
        }
        let shared = rdlock::RdLockConnectionManager::redlock(urls.clone())
            .await
            .unwrap();
        let mut contenders: Vec<Quorum> = (0..2).map(|k| Quorum::new(k, &urls, &shared)).collect();
        let mut per_cycle = vec![Vec::new(); 2];
        let mut commands = [0.0; 2];
        for _ in 0..scale.rounds {
            for (kind, contender) in contenders.iter_mut().enumerate() {
                reset_all(&mut conns).await;
                let started = Instant::now();
                for _ in 0..scale.cycles {
                    contender.hold().await;
                }
                per_cycle[kind].push(started.elapsed() / scale.cycles as u32);
                commands[kind] = commands_on(&mut conns).await as f64 / scale.cycles as f64;
            }
        }
        let medians: Vec<Duration> = per_cycle.iter_mut().map(|v| median(v)).collect();
        for (kind, name) in Quorum::NAMES.iter().enumerate() {
            println!(
                "| {n} | {name} | {:.1} µs | {:.2}x | {:.1} |",
                micros(medians[kind]),
                ratio(medians[kind], medians[1]),
                commands[kind]
            );
        }
        shared.shutdown().await.unwrap();
    }

    println!("\n## Redlock: contended, one process, 16 tasks on one key\n");
    println!("| nodes | contender | acquisitions/s | p50 wait | p99 wait | min/mean acquisitions per task | commands per acquisition, all nodes |");
    println!("|---|---|---|---|---|---|---|");
    for n in [3, 5] {
        let urls: Vec<String> = servers[..n].iter().map(RedisServer::url).collect();
        let mut conns = Vec::new();
        for server in &servers[..n] {
            conns.push(server.conn().await);
        }
        for (kind, name) in Quorum::NAMES.iter().enumerate() {
            let shared = rdlock::RdLockConnectionManager::redlock(urls.clone())
                .await
                .unwrap();
            reset_all(&mut conns).await;
            let started = Instant::now();
            let run_for = scale.scenario;
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let mut contender = Quorum::new(kind, &urls, &shared);
                    tokio::spawn(async move {
                        let mut waits = Vec::new();
                        while started.elapsed() < run_for {
                            waits.push(contender.hold().await);
                        }
                        waits
                    })
                })
                .collect();
            let mut per_task = Vec::new();
            let mut waits = Vec::new();
            for handle in handles {
                let w = handle.await.unwrap();
                per_task.push(w.len() as u64);
                waits.extend(w);
            }
            let elapsed = started.elapsed();
            let commands = commands_on(&mut conns).await;
            let total: u64 = per_task.iter().sum();
            let mean = total as f64 / per_task.len() as f64;
            let min = per_task.iter().min().copied().unwrap_or(0);
            waits.sort();
            println!(
                "| {n} | {name} | {:.0} | {:.2} ms | {:.2} ms | {:.2} | {:.1} |",
                total as f64 / elapsed.as_secs_f64(),
                millis(percentile(&waits, 0.50)),
                millis(percentile(&waits, 0.99)),
                min as f64 / mean.max(1.0),
                commands as f64 / total.max(1) as f64,
            );
            shared.shutdown().await.unwrap();
        }
    }

    println!("\n## Redlock: contended, 4 processes x 4 tasks on one key\n");
    println!("| nodes | contender | acquisitions/s | commands per acquisition, all nodes | worst wait | run took |");
    println!("|---|---|---|---|---|---|");
    for n in [3, 5] {
        let urls: Vec<String> = servers[..n].iter().map(RedisServer::url).collect();
        let mut conns = Vec::new();
        for server in &servers[..n] {
            conns.push(server.conn().await);
        }
        for (kind, name) in Quorum::NAMES.iter().enumerate() {
            reset_all(&mut conns).await;
            let started = Instant::now();
            let children: Vec<_> = (0..4)
                .map(|_| {
                    std::process::Command::new(std::env::current_exe().unwrap())
                        .env("RDLOCK_BENCH_WORKER", format!("redlock-{kind}"))
                        .env("RDLOCK_BENCH_URL", urls.join(","))
                        .env("RDLOCK_BENCH_MS", scale.scenario.as_millis().to_string())
                        .stdout(std::process::Stdio::piped())
                        .spawn()
                        .expect("start a worker process")
                })
                .collect();
            let mut total = 0u64;
            let mut worst_us = 0u64;
            for child in children {
                let out = child.wait_with_output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                for line in text.lines() {
                    if let Some(n) = line.strip_prefix("ACQ ") {
                        total += n.parse::<u64>().unwrap();
                    } else if let Some(us) = line.strip_prefix("WORST_US ") {
                        worst_us = worst_us.max(us.parse().unwrap());
                    }
                }
            }
            let elapsed = started.elapsed();
            let commands = commands_on(&mut conns).await;
            // The worst wait and the run's length tell a stall (a waiter that waited
            // out a lease: the run outlasts its scenario) from a slow but steady run.
            println!(
                "| {n} | {name} | {:.0} | {:.1} | {:.1} ms | {:.1} s |",
                total as f64 / elapsed.as_secs_f64(),
                commands as f64 / total.max(1) as f64,
                millis(Duration::from_micros(worst_us)),
                elapsed.as_secs_f64()
            );
        }
    }
}

/// A Redlock worker process: 4 tasks contend for `KEY` on the nodes of
/// `RDLOCK_BENCH_URL` (comma-separated) for the given time; prints `ACQ <n>` and its
/// longest wait, `WORST_US <µs>`.
fn redlock_worker(kind: &str) {
    let kind: usize = kind.parse().unwrap();
    let urls: Vec<String> = std::env::var("RDLOCK_BENCH_URL")
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    let ms: u64 = std::env::var("RDLOCK_BENCH_MS").unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let shared = rdlock::RdLockConnectionManager::redlock(urls.clone())
            .await
            .unwrap();
        let started = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let mut contender = Quorum::new(kind, &urls, &shared);
                tokio::spawn(async move {
                    let mut n = 0u64;
                    let mut worst = Duration::ZERO;
                    while started.elapsed() < Duration::from_millis(ms) {
                        worst = worst.max(contender.hold().await);
                        n += 1;
                    }
                    (n, worst)
                })
            })
            .collect();
        let mut total = 0;
        let mut worst = Duration::ZERO;
        for h in handles {
            let (n, w) = h.await.unwrap();
            total += n;
            worst = worst.max(w);
        }
        println!("ACQ {total}");
        println!("WORST_US {}", worst.as_micros());
        shared.shutdown().await.unwrap();
    });
}

// ---------------------------------------------------------------------------------

/// The median over rounds of `kind`'s cycle divided by the floor's (kind 0) in the same
/// round: each ratio compares two measurements taken moments apart.
fn median_ratio(per_cycle: &[Vec<Duration>], kind: usize) -> f64 {
    let mut ratios: Vec<f64> = per_cycle[kind]
        .iter()
        .zip(&per_cycle[0])
        .map(|(ours, floor)| ratio(*ours, *floor))
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// The least share over the mean share (1.00: all equal).
fn min_over_mean(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if counts.is_empty() || total == 0 {
        return 0.0;
    }
    let mean = total as f64 / counts.len() as f64;
    *counts.iter().min().unwrap_or(&0) as f64 / mean
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(f64::MIN_POSITIVE)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Resident memory of this process, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// User + system CPU time of this process, from /proc (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or(vec![], |(_, rest)| rest.split(' ').collect());
    let ticks: u64 = fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}
