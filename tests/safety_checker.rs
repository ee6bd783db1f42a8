//! The safety checker (`support::history`), proved able to fail on hand-made histories,
//! then run on a randomized workload: 4 child processes × 3 tasks contending for two
//! locks through one fault proxy per child, while the parent injects latency,
//! partitions, connection cuts and SIGSTOP/SIGCONT pauses at random.
//!
//! # What counts as a violation
//!
//! A lock on Redis is a lease: a holder paused past its lease (SIGSTOP here, a GC pause
//! in real life) *will* still be inside its critical section when a successor gets the
//! lock. What the library promises is that the holder *knows*: once the lease may be
//! over, `is_held()` says `false` and `lost()` completes. So the checker works on what
//! each holder believed, sampled: a holder calls `is_held()` every few milliseconds, and
//! before each write and before releasing. A grant's *belief interval* runs from its
//! first to its last `is_held() == true` (the timestamp is read just *before* each call:
//! `true` at the call means the guard's deadline was still ahead at that timestamp,
//! and a pause between the timestamp and the call can only make the call say `false`).
//!
//! - **violation**: a grant whose belief interval starts before an earlier grant's belief
//!   interval ends (two holders believing at once); a grant that acted after a successor
//!   started without ever reporting the loss; fencing tokens not strictly increasing in
//!   start order among grants that believed; a stale write rejected by the fenced
//!   resource from a grant that never reported its loss;
//! - **expected, fenced**: a holder still acting (it had not yet noticed, e.g. stopped by
//!   SIGSTOP) when a successor started, whose belief had ended before and which reported
//!   the loss on waking. Its writes carry its fencing token; the resource (a Lua script
//!   on a separate Redis) rejects them once a successor has written; they are counted.
//!
//! # One timeline for five processes
//!
//! Children timestamp with their own `Instant` (CLOCK_MONOTONIC, system-wide on Linux);
//! the offset to the parent's `Instant` is bounded by ping-pongs over stdin/stdout
//! ([`support::history::ClockMap`]), and overlaps shorter than that uncertainty (tens
//! of µs) are not reported. Timestamping lines on arrival in the parent was rejected:
//! pipe and scheduling delay shift starts and ends by different amounts, which can both
//! hide and invent overlaps.
//!
//! # Faults
//!
//! Per child, at random: latency 5–150 ms each way for 0.3–2 s; a partition that holds
//! the bytes (TCP-like) for 0.2–1.5 s; a blackhole (bytes dropped) for 0.2–1.5 s, healed
//! by passing traffic again *and cutting the connections* (without the cut the manager
//! never recovers: see the ignored tests in `faults_network.rs`); a cut of all its
//! connections; SIGSTOP for 0.1–1.5 s then SIGCONT. Leases are 0.5–1 s per child; holds
//! are 0–10 ms, up to one lease, or one to two leases (the watchdog must renew).
//!
//! Replay: the seed is printed; `RDLOCK_SEED=<seed>` replays the same choices (the timing
//! of a multi-process run is not replayable). `RDLOCK_SOAK_SECS` sets the length of the
//! faulty phase (default 35 s).

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdlock::{RdLockConnectionManager, RdLockError};
use support::history::{check, ClockMap, Event, Finding, Grant};
use support::proxy::{FaultProxy, Mode};
use support::{RedisServer, ServerConfig};
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------
// The checker can fail: hand-made histories.

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[test]
fn a_clean_history_has_no_findings() {
    let mut g = vec![
        Grant::released("a", "c1", 1, 0, 100),
        Grant::released("a", "c2", 2, 101, 200),
        Grant::released("a", "c1", 3, 250, 260),
    ];
    let v = check(&mut g, Duration::ZERO);
    assert!(v.findings.is_empty(), "{:?}", v.findings);
}

#[test]
fn an_overlapping_pair_is_a_violation() {
    let mut g = vec![
        Grant::released("a", "c1", 1, 0, 100),
        Grant::released("a", "c2", 2, 90, 200),
    ];
    let v = check(&mut g, Duration::ZERO);
    assert_eq!(
        v.findings,
        [Finding::BeliefOverlap {
            earlier: 0,
            later: 1,
            by: ms(10)
        }]
    );
    assert_eq!(v.violations().len(), 1);
    let text = v.explain(
        &g,
        &[Event {
            at: ms(95),
            what: "SIGSTOP c1".into(),
        }],
    );
    assert!(
        text.contains("SIGSTOP c1") && text.contains("fence 2"),
        "{text}"
    );
}

#[test]
fn a_holder_inside_a_longer_one_is_found() {
    // The second grant ends before the first; the third still overlaps the first.
    let mut g = vec![
        Grant::released("a", "c1", 1, 0, 500),
        Grant::released("a", "c2", 2, 100, 120),
        Grant::released("a", "c3", 3, 300, 400),
    ];
    let v = check(&mut g, Duration::ZERO);
    assert_eq!(v.violations().len(), 2, "{:?}", v.findings);
}

#[test]
fn a_fence_regression_is_a_violation() {
    let mut g = vec![
        Grant::released("a", "c1", 5, 0, 100),
        Grant::released("a", "c2", 4, 200, 300),
    ];
    let v = check(&mut g, Duration::ZERO);
    assert_eq!(
        v.findings,
        [Finding::FenceRegression {
            earlier: 0,
            later: 1
        }]
    );
}

#[test]
fn a_fence_given_twice_is_a_violation() {
    let mut g = vec![
        Grant::released("a", "c1", 7, 0, 100),
        Grant::released("a", "c2", 7, 200, 300),
    ];
    assert_eq!(check(&mut g, Duration::ZERO).violations().len(), 1);
}

#[test]
fn a_paused_holder_that_reported_the_loss_is_expected() {
    // c1 stopped believing at 100 (its deadline), was paused until 900, then noticed;
    // c2 took the lock at 150.
    let mut lost = Grant::released("a", "c1", 1, 0, 900).lost_at(100);
    lost.end = ms(900);
    let mut g = vec![lost, Grant::released("a", "c2", 2, 150, 400)];
    let v = check(&mut g, Duration::ZERO);
    assert_eq!(
        v.findings,
        [Finding::ExpectedOverlap {
            earlier: 0,
            later: 1
        }]
    );
    assert!(v.violations().is_empty());
    assert_eq!(v.expected_overlaps(), 1);
}

#[test]
fn acting_on_after_a_loss_without_reporting_it_is_a_violation() {
    // c1's belief ended at 100 but it went on until 900 and never reported the loss.
    let mut silent = Grant::released("a", "c1", 1, 0, 900);
    silent.believed_until = Some(ms(100));
    let mut g = vec![silent, Grant::released("a", "c2", 2, 150, 400)];
    let v = check(&mut g, Duration::ZERO);
    assert_eq!(
        v.findings,
        [Finding::UnreportedLoss {
            earlier: 0,
            later: 1
        }]
    );
}

#[test]
fn overlaps_within_the_tolerance_are_not_reported() {
    let make = || {
        vec![
            Grant::released("a", "c1", 1, 0, 100),
            Grant::released("a", "c2", 2, 99, 200),
        ]
    };
    assert!(check(&mut make(), ms(2)).findings.is_empty());
    assert_eq!(check(&mut make(), Duration::ZERO).violations().len(), 1);
}

#[test]
fn locks_are_checked_separately_and_in_any_input_order() {
    let mut g = vec![
        Grant::released("b", "c2", 1, 50, 150),
        Grant::released("a", "c1", 1, 0, 100),
        Grant::released("a", "c2", 2, 120, 130),
    ];
    assert!(check(&mut g, Duration::ZERO).findings.is_empty());
}

#[test]
fn a_grant_that_never_believed_conflicts_with_nobody() {
    // c2 was paused between lock() returning and its first is_held(): it never believed.
    let mut never = Grant::released("a", "c2", 2, 50, 60);
    never.believed_until = None;
    never.lost = true;
    let mut g = vec![Grant::released("a", "c1", 3, 0, 100), never];
    // Its (smaller) fence is no regression either: it never acted on it.
    assert!(check(&mut g, Duration::ZERO).findings.is_empty());
}

#[test]
fn clock_maps_bound_the_offset_and_refuse_inconsistent_samples() {
    // The child's clock reads 1000 ms less than the parent's.
    let samples = [
        (ms(1_000), ms(1), ms(1_003)),
        (ms(2_000), ms(1_001), ms(2_002)),
    ];
    // Offset in [999, 1002] and in [999, 1001]: [999, 1001].
    let map = ClockMap::from_samples(&samples).unwrap();
    assert_eq!(map.uncertainty(), ms(2));
    assert_eq!(map.earliest(ms(10)), ms(1_009));
    assert_eq!(map.latest(ms(10)), ms(1_011));
    assert_eq!(map.map(ms(10)), ms(1_010));
    // Answers that cannot come from one clock: no map.
    assert!(ClockMap::from_samples(&[(ms(0), ms(0), ms(1)), (ms(10), ms(0), ms(11))]).is_none());
    assert!(ClockMap::from_samples(&[]).is_none());
}

// ---------------------------------------------------------------------------------
// The child: this test binary run again with `--ignored --exact child_worker`.

/// Marks the child's protocol lines (the test harness prints on the same lines).
const MARK: &str = "@@ ";

/// A small seeded generator (xorshift64).
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        Self(support::xorshift(
            seed ^ (stream + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        ))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 = support::xorshift(self.0);
        self.0 % n
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on this process's monotonic timeline.
fn now_ns() -> u128 {
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos()
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARK}{line}").unwrap();
    out.flush().unwrap();
}

fn env<T: std::str::FromStr>(name: &str) -> T {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name}"))
        .parse()
        .unwrap_or_else(|_| panic!("{name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by randomized_workload_with_faults as a child process"]
async fn child_worker() {
    let Ok(url) = std::env::var("RDLOCK_CHILD_URL") else {
        return; // run by hand with --ignored: nothing to do
    };
    now_ns(); // fix the origin
    let id: u64 = env("RDLOCK_CHILD_ID");
    let seed: u64 = env("RDLOCK_CHILD_SEED");
    let lease = Duration::from_millis(env("RDLOCK_CHILD_LEASE_MS"));
    // The mutant: a holder that never asks its guard, to prove the harness sees that.
    let blind = std::env::var("RDLOCK_CHILD_BLIND").is_ok();
    let resource = redis::Client::open(env::<String>("RDLOCK_CHILD_RESOURCE")).unwrap();
    // Several URLs: the Redlock mode.
    let manager = if url.contains(',') {
        RdLockConnectionManager::redlock(url.split(','))
            .await
            .unwrap()
    } else {
        RdLockConnectionManager::new(url).await.unwrap()
    };
    let stop = Arc::new(AtomicBool::new(false));
    // stdin: SYNC requests from the parent, then STOP (or end of file).
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line.as_deref() {
                    Ok("SYNC") => say(&format!("SYNC {}", now_ns())),
                    Ok("STOP") | Err(_) => break,
                    Ok(_) => {}
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    say("READY");
    let mut tasks = Vec::new();
    for task in 0..3u64 {
        let manager = manager.clone();
        let stop = stop.clone();
        // A long response timeout: after a SIGSTOP, tokio may fire a short timer before
        // it reads the reply that arrived meanwhile, and the write's outcome must be known.
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        let mut conn = resource
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        let mut rng = Rng::new(seed, id * 16 + task);
        let held = move |guard: &rdlock::LockGuard| blind || guard.is_held();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let name = if rng.below(2) == 0 { "soak-a" } else { "soak-b" };
                let lock = manager.new_lock(name).with_lease(lease);
                let outcome =
                    tokio::time::timeout(Duration::from_secs(20), lock.lock_timeout(Duration::from_secs(3)))
                        .await;
                let guard = match outcome {
                    Err(_) => {
                        say(&format!("HANG {task} lock_timeout(3 s) still running after 20 s"));
                        continue;
                    }
                    Ok(Err(e)) => {
                        let kind = match e {
                            RdLockError::TimeoutReached => "timeout",
                            ref e if e.is_connection_error() => "unreachable",
                            RdLockError::LeaseLost => "lease-lost",
                            _ => "other",
                        };
                        say(&format!("ERR {task} {kind} {e:?}"));
                        continue;
                    }
                    Ok(Ok(guard)) => guard,
                };
                let fence = guard.fencing_token();
                // Timestamps are read *before* each is_held() (see the module docs).
                let start = now_ns();
                let mut believed_until = held(&guard).then_some(start);
                let mut lost = believed_until.is_none();
                let hold = match rng.below(100) {
                    0..=34 => Duration::from_millis(rng.below(10)),
                    35..=74 => Duration::from_millis(rng.between(10, lease.as_millis() as u64)),
                    _ => Duration::from_millis(rng.between(
                        lease.as_millis() as u64,
                        2 * lease.as_millis() as u64,
                    )),
                };
                let hold_until = Instant::now() + hold;
                let (mut accepted, mut rejected) = (0u32, 0u32);
                while !lost && Instant::now() < hold_until {
                    let nap = Duration::from_millis(rng.between(2, 15))
                        .min(hold_until.saturating_duration_since(Instant::now()));
                    tokio::select! {
                        _ = tokio::time::sleep(nap) => {}
                        _ = guard.lost(), if !blind => {}
                    }
                    let t = now_ns();
                    if !held(&guard) {
                        lost = true;
                        break;
                    }
                    believed_until = Some(t);
                    if rng.below(4) == 0 {
                        let ok: i64 = redis::Script::new(support::FENCED_WRITE)
                            .key(format!("resource:{name}:max-fence"))
                            .key(format!("resource:{name}:log"))
                            .arg(fence)
                            .arg(fence)
                            .invoke_async(&mut conn)
                            .await
                            .unwrap();
                        if ok == 1 {
                            accepted += 1;
                        } else {
                            rejected += 1;
                        }
                    }
                }
                // The end of acting on the lock; one last check before releasing.
                let end = now_ns();
                let outcome = if !lost && held(&guard) {
                    believed_until = Some(end);
                    match tokio::time::timeout(Duration::from_secs(10), guard.release()).await {
                        Ok(Ok(())) => "released".to_owned(),
                        Ok(Err(RdLockError::LockNotAcquired)) => {
                            lost = true;
                            "not-owner".to_owned()
                        }
                        Ok(Err(e)) => format!("release-error:{}", if e.is_connection_error() { "unreachable" } else { "other" }),
                        Err(_) => "release-hang".to_owned(),
                    }
                } else {
                    lost = true;
                    drop(guard);
                    "lost".to_owned()
                };
                say(&format!(
                    "GRANT {task} {name} {fence} {start} {} {end} {} {accepted} {rejected} {outcome}",
                    believed_until.map_or("-".to_owned(), |t| t.to_string()),
                    u8::from(lost),
                ));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    say("DONE");
}

// ---------------------------------------------------------------------------------
// The parent: proxies, children, nemesis, checker.

struct Worker {
    id: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Protocol lines with their arrival time on the parent's timeline.
    lines: mpsc::UnboundedReceiver<(Duration, String)>,
    proxy: FaultProxy,
    lease_ms: u64,
    clock: Option<ClockMap>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)] // a test helper; each is one child setting
    fn spawn(
        id: usize,
        proxy: FaultProxy,
        // The lock servers' URLs when not through the proxy (Redlock nodes).
        direct: Option<&str>,
        resource: &str,
        seed: u64,
        lease_ms: u64,
        origin: Instant,
        blind: bool,
    ) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        if blind {
            command.env("RDLOCK_CHILD_BLIND", "1");
        }
        let mut child = command
            .args([
                "--ignored",
                "--exact",
                "child_worker",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                "RDLOCK_CHILD_URL",
                direct.map_or_else(|| proxy.url(), str::to_owned),
            )
            .env("RDLOCK_CHILD_RESOURCE", resource)
            .env("RDLOCK_CHILD_ID", id.to_string())
            .env("RDLOCK_CHILD_SEED", seed.to_string())
            .env("RDLOCK_CHILD_LEASE_MS", lease_ms.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let at = origin.elapsed();
                let Ok(line) = line else { break };
                if let Some(i) = line.find(MARK) {
                    if tx.send((at, line[i + MARK.len()..].to_owned())).is_err() {
                        break;
                    }
                }
            }
        });
        Self {
            id,
            stdin: child.stdin.take(),
            child,
            lines,
            proxy,
            lease_ms,
            clock: None,
        }
    }

    fn send(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
        }
    }

    /// Waits for a line starting with `prefix`, keeping the others in `kept`.
    async fn expect(
        &mut self,
        prefix: &str,
        bound: Duration,
        kept: &mut Vec<String>,
    ) -> (Duration, String) {
        let deadline = Instant::now() + bound;
        loop {
            let (at, line) = tokio::time::timeout_at(deadline.into(), self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("child {}: no {prefix:?} within {bound:?}", self.id))
                .unwrap_or_else(|| panic!("child {} exited before {prefix:?}", self.id));
            if line.starts_with(prefix) {
                return (at, line);
            }
            kept.push(line);
        }
    }

    /// Bounds the child's clock offset with ping-pongs: at least 20, and more (up to
    /// 500) until the bound is within 1 ms — on a busy machine a round trip over the
    /// pipes is often slower than that, but some are not, and each sample narrows it.
    async fn sync_clock(&mut self, origin: Instant, kept: &mut Vec<String>) {
        let mut samples = Vec::new();
        while samples.len() < 20
            || (samples.len() < 500
                && ClockMap::from_samples(&samples)
                    .is_some_and(|c| c.uncertainty() > Duration::from_millis(1)))
        {
            let p0 = origin.elapsed();
            self.send("SYNC");
            let (p1, line) = self.expect("SYNC ", Duration::from_secs(10), kept).await;
            let c: u64 = line["SYNC ".len()..].parse().unwrap();
            samples.push((p0, Duration::from_nanos(c), p1));
        }
        self.clock = Some(
            ClockMap::from_samples(&samples)
                .unwrap_or_else(|| panic!("child {}: inconsistent clock samples", self.id)),
        );
    }

    fn signal(&self, signal: &str) {
        kill(signal, self.child.id());
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child as the nemesis sees it.
struct Victim {
    id: usize,
    proxy: support::proxy::Handle,
    pid: u32,
}

/// The fault schedule of one child, until `until`; returns the faults injected.
async fn nemesis(
    only_pauses: bool,
    // Redlock mode: the children talk to the nodes directly; only pauses.
    direct: bool,
    victim: Victim,
    mut rng: Rng,
    origin: Instant,
    until: Instant,
    events: Arc<Mutex<Vec<Event>>>,
) -> u64 {
    let Victim { id, proxy, pid } = victim;
    let log = |what: String| {
        events.lock().unwrap().push(Event {
            at: origin.elapsed(),
            what: format!("child {id}: {what}"),
        });
    };
    let signal = |s: &str| kill(s, pid);
    let mut faults = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.between(300, 1500))).await;
        if Instant::now() >= until {
            return faults;
        }
        faults += 1;
        let kind = if only_pauses || direct {
            4
        } else {
            rng.below(5)
        };
        match kind {
            0 => {
                let d = Duration::from_millis(rng.between(5, 150));
                log(format!("latency {d:?} each way"));
                proxy.set(Mode::Latency(d));
                tokio::time::sleep(Duration::from_millis(rng.between(300, 2000))).await;
                proxy.set(Mode::Pass);
                log("latency healed".into());
            }
            1 => {
                log("partition (bytes held)".into());
                proxy.set(Mode::Hold);
                tokio::time::sleep(Duration::from_millis(rng.between(200, 1500))).await;
                proxy.set(Mode::Pass);
                log("partition healed".into());
            }
            2 => {
                log("blackhole (bytes dropped)".into());
                proxy.set(Mode::Blackhole);
                tokio::time::sleep(Duration::from_millis(rng.between(200, 1500))).await;
                proxy.set(Mode::Pass);
                proxy.cut();
                log("blackhole healed, connections cut".into());
            }
            3 => {
                log("connections cut".into());
                proxy.cut();
            }
            _ => {
                log("SIGSTOP".into());
                signal("-STOP");
                let (lo, hi) = if only_pauses {
                    (1200, 2500)
                } else {
                    (100, 1500)
                };
                tokio::time::sleep(Duration::from_millis(rng.between(lo, hi))).await;
                signal("-CONT");
                log("SIGCONT".into());
            }
        }
    }
}

/// The fault schedule of the Redlock nodes (none when there are none), until `until`:
/// one node at a time is paused (SIGSTOP 0.2-1.5 s), or killed and restarted *empty*
/// after staying down longer than the longest lease (1 s), the condition under which
/// Redlock and its fencing register are safe. Returns the faults injected; every node
/// runs again when it returns.
async fn node_nemesis(
    nodes: Arc<Mutex<Vec<RedisServer>>>,
    mut rng: Rng,
    origin: Instant,
    until: Instant,
    events: Arc<Mutex<Vec<Event>>>,
) -> u64 {
    let n = nodes.lock().unwrap().len();
    if n == 0 {
        return 0;
    }
    let log = |what: String| {
        events.lock().unwrap().push(Event {
            at: origin.elapsed(),
            what: format!("redlock {what}"),
        });
    };
    let mut faults = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.between(300, 1500))).await;
        if Instant::now() >= until {
            return faults;
        }
        faults += 1;
        let i = rng.below(n as u64) as usize;
        if rng.below(2) == 0 {
            log(format!("node {i}: SIGSTOP"));
            nodes.lock().unwrap()[i].signal("STOP");
            tokio::time::sleep(Duration::from_millis(rng.between(200, 1500))).await;
            nodes.lock().unwrap()[i].signal("CONT");
            log(format!("node {i}: SIGCONT"));
        } else {
            log(format!("node {i}: SIGKILL"));
            nodes.lock().unwrap()[i].stop();
            tokio::time::sleep(Duration::from_millis(rng.between(1200, 2000))).await;
            let nodes = nodes.clone();
            tokio::task::spawn_blocking(move || nodes.lock().unwrap()[i].start_again())
                .await
                .unwrap();
            log(format!("node {i}: restarted empty"));
        }
    }
}

/// One `GRANT` line, put on the parent's timeline.
fn parse_grant(child: usize, clock: &ClockMap, line: &str) -> (Grant, u32, u32, String) {
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f.len(), 11, "bad GRANT line {line:?}");
    let t = |s: &str| clock.map(Duration::from_nanos(s.parse().unwrap()));
    let grant = Grant {
        lock: f[2].to_owned(),
        client: format!("c{child}/t{}", f[1]),
        fence: f[3].parse().unwrap(),
        start: t(f[4]),
        believed_until: (f[5] != "-").then(|| t(f[5])),
        end: t(f[6]),
        lost: f[7] == "1",
    };
    (
        grant,
        f[8].parse().unwrap(),
        f[9].parse().unwrap(),
        f[10].to_owned(),
    )
}

fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn seed() -> u64 {
    support::seed()
}

/// How a run is set up.
struct Soak {
    seed: u64,
    children: usize,
    /// How long faults are injected.
    faulty: Duration,
    /// Only long SIGSTOP pauses (longer than every lease), for the mutant run.
    only_pauses: bool,
    /// Children that never ask their guard (`is_held`/`lost`): the mutant.
    blind: bool,
    /// Redlock over this many nodes (0: one server through per-child proxies), with a
    /// node nemesis: pauses, and kills followed by an empty restart after the longest
    /// lease (the condition the fencing register needs), one node at a time.
    redlock_nodes: usize,
}

/// What a run found.
struct Summary {
    acquisitions: usize,
    /// Children that got no lock after their first fault: they never recovered.
    stalled: Vec<usize>,
    faults: u64,
    violations: usize,
    report: String,
}

/// Runs the workload and the checker; prints the summary line.
async fn soak(config: Soak) -> Summary {
    let Soak {
        seed,
        children,
        faulty: soak,
        only_pauses,
        blind,
        redlock_nodes,
    } = config;
    println!("seed {seed} (replay the choices with RDLOCK_SEED={seed}), faults for {soak:?}");
    let mut rng = Rng::new(seed, 999);
    let keyspace = rng.below(2) == 0;
    let server = if keyspace {
        RedisServer::start_with(ServerConfig::keyspace("KA"))
    } else {
        RedisServer::start()
    };
    let resource = RedisServer::start();
    let nodes: Arc<Mutex<Vec<RedisServer>>> = Arc::new(Mutex::new(
        (0..redlock_nodes).map(|_| RedisServer::start()).collect(),
    ));
    let direct = (redlock_nodes > 0).then(|| {
        let nodes = nodes.lock().unwrap();
        nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    });
    let origin = Instant::now();
    let mut workers = Vec::new();
    for id in 0..children {
        let proxy = FaultProxy::to_port(server.port()).await;
        let lease_ms = rng.between(500, 1000);
        workers.push(Worker::spawn(
            id,
            proxy,
            direct.as_deref(),
            &resource.url(),
            seed,
            lease_ms,
            origin,
            blind,
        ));
    }
    let mut lines: Vec<(usize, String)> = Vec::new();
    for w in &mut workers {
        let mut kept = Vec::new();
        w.expect("READY", Duration::from_secs(60), &mut kept).await;
        w.sync_clock(origin, &mut kept).await;
        lines.extend(kept.into_iter().map(|l| (w.id, l)));
    }
    let widest = workers
        .iter()
        .map(|w| w.clock.unwrap().uncertainty())
        .max()
        .unwrap();
    println!(
        "keyspace events {}; leases {:?} ms; clock offsets known to within {widest:?}",
        if keyspace { "on" } else { "off" },
        workers.iter().map(|w| w.lease_ms).collect::<Vec<_>>()
    );

    // The faulty phase.
    let events = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + soak;
    let nemeses: Vec<_> = workers
        .iter()
        .map(|w| {
            tokio::spawn(nemesis(
                only_pauses,
                direct.is_some(),
                Victim {
                    id: w.id,
                    proxy: w.proxy.handle(),
                    pid: w.child.id(),
                },
                Rng::new(seed, 100 + w.id as u64),
                origin,
                until,
                events.clone(),
            ))
        })
        .collect();
    let node_nemesis = tokio::spawn(node_nemesis(
        nodes.clone(),
        Rng::new(seed, 500),
        origin,
        until,
        events.clone(),
    ));
    let mut faults = tokio::time::timeout(soak + Duration::from_secs(10), node_nemesis)
        .await
        .expect("the node nemesis ends")
        .unwrap();
    for n in nemeses {
        faults += tokio::time::timeout(soak + Duration::from_secs(10), n)
            .await
            .expect("the nemesis ends")
            .unwrap();
    }
    // Heal everything, then let the children finish their current grant and exit.
    for w in &mut workers {
        w.proxy.set(Mode::Pass);
        w.signal("-CONT");
        w.send("STOP");
    }
    for w in &mut workers {
        let mut kept = Vec::new();
        w.expect("DONE", Duration::from_secs(60), &mut kept).await;
        lines.extend(kept.into_iter().map(|l| (w.id, l)));
        let status = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(status) = w.child.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the child exits after DONE");
        assert!(status.success(), "child {} failed: {status}", w.id);
    }

    // The history.
    let mut grants = Vec::new();
    let mut rejected_by_grant = Vec::new();
    let mut outcomes: HashMap<String, u64> = HashMap::new();
    let mut errors: HashMap<String, u64> = HashMap::new();
    let (mut accepted_writes, mut rejected_writes) = (0u64, 0u64);
    for (child, line) in &lines {
        let kind = line.split(' ').next().unwrap_or_default();
        match kind {
            "GRANT" => {
                let clock = workers[*child].clock.unwrap();
                let (grant, accepted, rejected, outcome) = parse_grant(*child, &clock, line);
                accepted_writes += u64::from(accepted);
                rejected_writes += u64::from(rejected);
                *outcomes.entry(outcome).or_default() += 1;
                rejected_by_grant.push((grant.clone(), rejected));
                grants.push(grant);
            }
            "ERR" => {
                let what = line.split(' ').nth(2).unwrap_or_default().to_owned();
                *errors.entry(what).or_default() += 1;
            }
            "HANG" => panic!("child {child}: {line}"),
            _ => {}
        }
    }
    // Sampling and the clock map have to be at least this precise to be trusted.
    assert!(
        widest < Duration::from_millis(2),
        "clock uncertainty {widest:?}"
    );
    let tolerance = widest;
    let verdict = check(&mut grants, tolerance);
    let mut violations = verdict.violations().len();
    let events = events.lock().unwrap().clone();
    let mut report = verdict.explain(&grants, &events);
    // A stale write can only come from a holder that then learnt of its loss.
    for (grant, rejected) in &rejected_by_grant {
        if *rejected > 0 && !grant.lost {
            violations += 1;
            report.push_str(&format!(
                "stale write rejected from a grant that never reported its loss: {grant}\n"
            ));
        }
    }
    // The resource accepted fences in non-decreasing order (its own rule, checked).
    let mut raw = resource.conn().await;
    for name in ["soak-a", "soak-b"] {
        let log: Vec<u64> = redis::cmd("LRANGE")
            .arg(format!("resource:{name}:log"))
            .arg(0)
            .arg(-1)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(
            log.windows(2).all(|w| w[0] <= w[1]),
            "resource log out of order"
        );
    }
    let acquisitions = grants.len();
    // Progress, measured against what the run could do whatever the machine's speed:
    // every child got a lock again after its first fault (0.3–1.5 s into a phase of
    // tens of seconds). A manager that never recovers from some fault, or tasks that
    // hang, leave their child stalled.
    let stalled: Vec<usize> = (0..workers.len())
        .filter(|id| {
            let prefix = format!("child {id}: ");
            let Some(first_fault) = events.iter().find(|e| e.what.starts_with(&prefix)) else {
                return false;
            };
            let client = format!("c{id}/");
            !grants
                .iter()
                .any(|g| g.client.starts_with(&client) && g.start > first_fault.at)
        })
        .collect();
    let losses = grants.iter().filter(|g| g.lost).count();
    let never_believed = grants.iter().filter(|g| g.believed_until.is_none()).count();
    println!(
        "{acquisitions} acquisitions, {faults} faults injected, {losses} losses reported, {violations} violations"
    );
    let mut outcomes: Vec<_> = outcomes.into_iter().collect();
    outcomes.sort();
    let mut errors: Vec<_> = errors.into_iter().collect();
    errors.sort();
    println!(
        "details: {} overlaps expected and fenced, {never_believed} grants lost before their first check, \
         {accepted_writes} fenced writes accepted and {rejected_writes} rejected as stale, \
         grant outcomes {outcomes:?}, failed acquisitions {errors:?}, tolerance {tolerance:?}",
        verdict.expected_overlaps()
    );
    Summary {
        acquisitions,
        stalled,
        faults,
        violations,
        report,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_workload_with_faults() {
    let seed = seed();
    let faulty = Duration::from_secs(
        std::env::var("RDLOCK_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(35),
    );
    let run = soak(Soak {
        seed,
        children: 4,
        faulty,
        only_pauses: false,
        blind: false,
        redlock_nodes: 0,
    })
    .await;
    assert_eq!(run.violations, 0, "seed {seed}:\n{}", run.report);
    assert!(
        run.stalled.is_empty(),
        "children {:?} got no lock after their first fault ({} acquisitions in all)",
        run.stalled,
        run.acquisitions
    );
    assert!(run.faults >= 20, "too few faults: {}", run.faults);
}

/// Redlock mode: 3 children × 3 tasks on 3 independent nodes (no proxies: the children
/// talk to the nodes directly), children paused at random, and the node nemesis
/// (pauses, kills with an empty restart after the longest lease, one node at a time).
/// No violation: two holders never believe at once, fencing tokens strictly increase
/// across the empty restarts, no stale write from a holder that did not report its loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_workload_with_node_faults() {
    let seed = seed();
    let faulty = Duration::from_secs(
        std::env::var("RDLOCK_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let run = soak(Soak {
        seed,
        children: 3,
        faulty,
        only_pauses: false,
        blind: false,
        redlock_nodes: 3,
    })
    .await;
    assert_eq!(run.violations, 0, "seed {seed}:\n{}", run.report);
    assert!(
        run.stalled.is_empty(),
        "children {:?} got no lock after their first fault ({} acquisitions in all)",
        run.stalled,
        run.acquisitions
    );
    assert!(run.faults >= 10, "too few faults: {}", run.faults);
}

/// The whole harness can fail: children that never ask their guard whether they still
/// hold the lock, paused longer than their lease, are caught. A random schedule may miss
/// (no pause lands on a holder while the other child is waiting), so up to three runs
/// with successive seeds; one must find violations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_catches_holders_that_ignore_their_guard() {
    let first_seed = seed();
    for attempt in 0..3u64 {
        let seed = first_seed.wrapping_add(attempt);
        let run = soak(Soak {
            seed,
            children: 2,
            faulty: Duration::from_secs(8),
            only_pauses: true,
            blind: true,
            redlock_nodes: 0,
        })
        .await;
        if run.violations > 0 {
            println!(
                "seed {seed}: first violations found:\n{}",
                run.report.lines().take(12).collect::<Vec<_>>().join("\n")
            );
            return;
        }
        println!("seed {seed}: no violation in this schedule, trying the next seed");
    }
    panic!("seeds {first_seed}..+3: blind holders went unnoticed");
}
