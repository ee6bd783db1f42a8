//! Grant histories and the safety checker (TESTPLAN §6.1–6.3).
//!
//! A [`Grant`] is one acquisition as its holder lived it, on one monotonic timeline:
//!
//! - `start`: just before the holder's first `is_held()` check after `lock()` returned;
//! - `believed_until`: just before the holder's last `is_held()` that answered `true`
//!   (`None` if the first check already said `false`). The holder checks often (every
//!   few ms) and right before each write and before releasing; since `is_held()` never
//!   turns `true` again once `false`, the holder *believed* it held the lock during
//!   exactly `[start, believed_until]`, up to the sampling. (Clock reads come *before*
//!   the calls: a `true` answer means the guard's deadline was still ahead at the read,
//!   while a pause between the read and the call can only turn the answer `false`.)
//! - `end`: when it stopped acting on the lock (release invoked, or loss observed);
//! - `lost`: whether the guard reported the loss (`lost()`/`is_held() == false`, or a
//!   release that found another token).
//!
//! [`check`] reports, per lock id:
//!
//! - **belief overlaps** (violations): a grant starts while an earlier one still believed
//!   it held the lock — two holders believing at once;
//! - **unreported losses** (violations): a grant starts while an earlier holder was still
//!   acting on the lock although that holder never learnt of the loss;
//! - **fence regressions** (violations): among grants that believed they held the lock,
//!   in start order, fencing tokens must strictly increase (and never repeat);
//! - **expected overlaps** (not violations): an earlier holder was still acting when a
//!   later one started, but had stopped believing before it and reported the loss — a
//!   holder paused past its lease (SIGSTOP, GC) that found out on waking. Fencing exists
//!   for these.
//!
//! On a Redis Cluster, [`Verdict::excuse`] moves the violations that a documented
//! [`Window`] (a kill or pause failover of the lock's master) explains to `excused`.
//!
//! Timestamps from several processes are put on the parent's timeline with a
//! [`ClockMap`] per child, measured by a ping-pong over the child's stdin/stdout.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::fmt;
use std::time::Duration;

/// One acquisition (see the module docs for the meaning of each instant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub lock: String,
    pub client: String,
    pub fence: u64,
    pub start: Duration,
    pub believed_until: Option<Duration>,
    pub end: Duration,
    pub lost: bool,
}

impl Grant {
    /// A grant that believed it held the lock from `start` to `end` and released it.
    pub fn released(lock: &str, client: &str, fence: u64, start_ms: u64, end_ms: u64) -> Self {
        Self {
            lock: lock.to_owned(),
            client: client.to_owned(),
            fence,
            start: Duration::from_millis(start_ms),
            believed_until: Some(Duration::from_millis(end_ms)),
            end: Duration::from_millis(end_ms),
            lost: false,
        }
    }

    /// Marks the grant as having stopped believing at `believed_ms` and reported the
    /// loss, while it stopped acting only at its `end` (a paused holder).
    pub fn lost_at(mut self, believed_ms: u64) -> Self {
        self.believed_until = Some(Duration::from_millis(believed_ms));
        self.lost = true;
        self
    }
}

/// A finding of [`check`], with indices into the (sorted) grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// `later` started `by` before `earlier` stopped believing it held the lock.
    BeliefOverlap {
        earlier: usize,
        later: usize,
        by: Duration,
    },
    /// `later` started while `earlier` still acted on the lock without knowing it was lost.
    UnreportedLoss { earlier: usize, later: usize },
    /// `later` started after `earlier` (both believed they held the lock) with a fencing
    /// token that is not greater.
    FenceRegression { earlier: usize, later: usize },
    /// `later` overlapped the acting (not the believing) interval of `earlier`, which
    /// reported the loss: expected under pauses, harmless with fencing.
    ExpectedOverlap { earlier: usize, later: usize },
}

impl Finding {
    pub fn is_violation(&self) -> bool {
        !matches!(self, Finding::ExpectedOverlap { .. })
    }
}

/// The outcome of [`check`].
#[derive(Debug, Default)]
pub struct Verdict {
    pub findings: Vec<Finding>,
    /// Violations that a documented [`Window`] explains (moved out of `findings` by
    /// [`Verdict::excuse`]), with the index of the window.
    pub excused: Vec<(Finding, usize)>,
}

/// A period in which a lock's guarantees are knowingly weaker: on a Redis Cluster, the
/// lock's master was SIGKILLed or hung (SIGSTOP) and a replica promoted. Replication is
/// asynchronous, so the promoted replica may lack the lock key (a second holder gets
/// the lock while the first still believes it holds it until its deadline) and the
/// last fencing increments (tokens are handed out again); a hung master resumed after
/// the promotion can grant a lock held on the new master until gossip demotes it.
/// `from` is the fault; `to` is when the cluster was healed again (promoted, the
/// victim back as a replica, settled) plus the longest lease plus a margin: a holder
/// that acquired before the fault, or from the stale master, believes at most one
/// lease after its last renewal.
#[derive(Clone, Debug)]
pub struct Window {
    pub lock: String,
    pub from: Duration,
    pub to: Duration,
    pub what: String,
    /// A SIGKILL (not a pause): the victim grants nothing after `from` (it comes back
    /// empty, as a replica), so an overlap is excused only when its earlier grant came
    /// from the victim, i.e. started at most [`REPLY_WITHIN`] after the fault. Two grants
    /// of the promoted master that overlap are a bug even inside the window.
    pub killed: bool,
}

impl Window {
    /// Whether this window explains `finding` (indices into `grants`):
    /// - an overlap (`BeliefOverlap`, `UnreportedLoss`) on the window's lock whose later
    ///   grant started inside the window (after a kill: and whose earlier grant came from
    ///   the killed master, see [`Window::killed`]);
    /// - a fence regression or repetition on the window's lock between a grant that
    ///   started before the window ended and one that started after the fault (tokens
    ///   can repeat across a kill failover; between two grants that both started after
    ///   the window they must increase again), provided the later fence is above
    ///   [`Window::replicated`] (the fault cannot have lost those).
    pub fn explains(&self, grants: &[Grant], finding: &Finding) -> bool {
        match *finding {
            Finding::BeliefOverlap { earlier, later, .. }
            | Finding::UnreportedLoss { earlier, later } => {
                let (e, l) = (&grants[earlier], &grants[later]);
                e.lock == self.lock
                    && l.lock == self.lock
                    && self.from <= l.start
                    && l.start < self.to
                    && (!self.killed || e.start < self.from + REPLY_WITHIN)
            }
            Finding::FenceRegression { earlier, later } => {
                let (e, l) = (&grants[earlier], &grants[later]);
                e.lock == self.lock
                    && l.lock == self.lock
                    && e.start < self.to
                    && self.from <= l.start
                    && l.fence > self.replicated(grants)
            }
            Finding::ExpectedOverlap { .. } => false,
        }
    }

    /// The largest fence of the window's lock handed out by a grant that started more
    /// than [`REPLICATED_WITHIN`] before the fault: the replicas had it, so no failover
    /// hands it (or a smaller one) out again. 0 if there is none.
    pub fn replicated(&self, grants: &[Grant]) -> u64 {
        grants
            .iter()
            .filter(|g| g.lock == self.lock && g.start + REPLICATED_WITHIN < self.from)
            .map(|g| g.fence)
            .max()
            .unwrap_or(0)
    }
}

/// How long an acknowledged write may take to reach a replica: replication on loopback
/// takes micro- to milliseconds; a second covers a busy machine's scheduling. A kill or
/// pause failover can lose only the writes of this last moment before the fault, so
/// only fences handed out within it may be handed out again.
pub const REPLICATED_WITHIN: Duration = Duration::from_secs(1);

/// How long after a master's death a grant it handed out can start (the holder's first
/// `is_held()` after `lock()` returned): the reply was on its way; a second covers a
/// busy machine.
pub const REPLY_WITHIN: Duration = Duration::from_secs(1);

/// Whether grant `k`'s fencing token may have been handed out before, by a master
/// whose writes a [`Window`] lost: some window of its lock began before it started, its
/// token is above what that window's fault cannot have lost ([`Window::replicated`]), and
/// a grant of the same lock that started before that window ended had a token at least
/// as large. A fenced resource rightly rejects such a grant's writes as stale although
/// the grant never lost its lease.
pub fn token_reissued(grants: &[Grant], k: usize, windows: &[Window]) -> bool {
    let g = &grants[k];
    windows.iter().any(|w| {
        w.lock == g.lock
            && w.from <= g.start
            && g.fence > w.replicated(grants)
            && grants
                .iter()
                .enumerate()
                .any(|(i, h)| i != k && h.lock == g.lock && h.start < w.to && h.fence >= g.fence)
    })
}

impl Verdict {
    /// Moves the violations that one of `windows` explains to `excused` (cluster mode:
    /// see [`Window`]). Every other violation stays one.
    pub fn excuse(&mut self, grants: &[Grant], windows: &[Window]) {
        let findings = std::mem::take(&mut self.findings);
        for finding in findings {
            let window = finding
                .is_violation()
                .then(|| windows.iter().position(|w| w.explains(grants, &finding)))
                .flatten();
            match window {
                Some(w) => self.excused.push((finding, w)),
                None => self.findings.push(finding),
            }
        }
    }

    pub fn violations(&self) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.is_violation()).collect()
    }

    pub fn expected_overlaps(&self) -> usize {
        self.findings.len() - self.violations().len()
    }

    /// A readable account of every violation, with the grants involved and the events
    /// (faults) in the time window around them.
    pub fn explain(&self, grants: &[Grant], events: &[Event]) -> String {
        let mut out = String::new();
        for finding in self.violations() {
            let (a, b) = match *finding {
                Finding::BeliefOverlap { earlier, later, .. }
                | Finding::UnreportedLoss { earlier, later }
                | Finding::FenceRegression { earlier, later }
                | Finding::ExpectedOverlap { earlier, later } => (earlier, later),
            };
            out.push_str(&format!(
                "{finding:?}\n  earlier: {}\n  later:   {}\n",
                grants[a], grants[b]
            ));
            let from = grants[a].start.saturating_sub(Duration::from_secs(2));
            let to = grants[b].start + Duration::from_millis(100);
            for e in events.iter().filter(|e| e.at >= from && e.at <= to) {
                out.push_str(&format!("  event at {:?}: {}\n", e.at, e.what));
            }
        }
        out
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} fence {} start {:?} believed until {:?} end {:?}{}",
            self.lock,
            self.client,
            self.fence,
            self.start,
            self.believed_until,
            self.end,
            if self.lost { " (reported lost)" } else { "" }
        )
    }
}

/// Something the harness did (a fault), on the same timeline, for explanations.
#[derive(Clone, Debug)]
pub struct Event {
    pub at: Duration,
    pub what: String,
}

/// Sorts `grants` by (lock, start) and checks them; findings refer to the sorted order.
///
/// `tolerance` absorbs the uncertainty of the timeline (see [`ClockMap`]): an overlap
/// is reported only when it is longer than that.
pub fn check(grants: &mut [Grant], tolerance: Duration) -> Verdict {
    grants.sort_by(|a, b| (a.lock.as_str(), a.start).cmp(&(b.lock.as_str(), b.start)));
    let mut findings = Vec::new();
    for (i, earlier) in grants.iter().enumerate() {
        let acting_until = earlier.end.max(earlier.believed_until.unwrap_or_default());
        for (k, later) in grants.iter().enumerate().skip(i + 1) {
            // Sorted by start: once one starts after `earlier` stopped, all later do.
            if later.lock != earlier.lock || later.start + tolerance >= acting_until {
                break;
            }
            // A grant that never believed it held the lock (it was paused between
            // `lock()` returning and its first check) cannot conflict with anyone.
            if later.believed_until.is_none() {
                continue;
            }
            match earlier.believed_until {
                Some(until) if later.start + tolerance < until => {
                    findings.push(Finding::BeliefOverlap {
                        earlier: i,
                        later: k,
                        by: until - later.start,
                    });
                }
                _ if later.start + tolerance < earlier.end => {
                    findings.push(if earlier.lost {
                        Finding::ExpectedOverlap {
                            earlier: i,
                            later: k,
                        }
                    } else {
                        Finding::UnreportedLoss {
                            earlier: i,
                            later: k,
                        }
                    });
                }
                _ => {}
            }
        }
    }
    // Fencing tokens: in start order, among grants that believed they held the lock,
    // strictly increasing; and no fence value given to two grants at all.
    // Each grant is also compared with the previous believed grant: against the largest
    // fence alone, a regression between two grants that both come after a larger
    // (excused, see [`Verdict::excuse`]) one would go unseen.
    let mut best: Option<usize> = None; // the believed grant with the largest fence so far
    let mut previous: Option<usize> = None; // the last believed grant
    let mut seen = std::collections::HashMap::new();
    for (k, g) in grants.iter().enumerate() {
        if let Some(j) = seen.insert((g.lock.as_str(), g.fence), k) {
            findings.push(Finding::FenceRegression {
                earlier: j,
                later: k,
            });
        }
        if g.believed_until.is_none() {
            continue;
        }
        if let Some(p) = previous.filter(|&p| grants[p].lock == g.lock && Some(p) != best) {
            if g.fence < grants[p].fence {
                findings.push(Finding::FenceRegression {
                    earlier: p,
                    later: k,
                });
            }
        }
        previous = Some(k);
        match best {
            Some(j) if grants[j].lock == g.lock => {
                if g.fence < grants[j].fence {
                    findings.push(Finding::FenceRegression {
                        earlier: j,
                        later: k,
                    });
                } else if g.fence > grants[j].fence {
                    best = Some(k);
                } // equal fences were reported above
            }
            _ => best = Some(k),
        }
    }
    Verdict {
        findings,
        excused: Vec::new(),
    }
}

/// Puts a child process's monotonic readings on the parent's timeline.
///
/// Both read the same system-wide `CLOCK_MONOTONIC` (std's `Instant` on Linux), so the
/// two timelines differ by a constant offset; it cannot be read directly (an `Instant`
/// cannot cross a process boundary), so it is bounded by ping-pongs: the parent notes
/// `p0`, asks the child for its reading `c`, and notes `p1` when the answer arrives; the
/// child read its clock in between, so `offset ∈ [p0 − c, p1 − c]`. The intersection of
/// all samples' intervals bounds it; its width is the uncertainty of every mapped time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockMap {
    /// Bounds of `parent − child`, in nanoseconds.
    lo: i128,
    hi: i128,
}

impl ClockMap {
    /// From `(p0, c, p1)` samples; `None` when they are inconsistent (the clocks are not
    /// the same clock) or there are none.
    pub fn from_samples(samples: &[(Duration, Duration, Duration)]) -> Option<Self> {
        let mut lo = i128::MIN;
        let mut hi = i128::MAX;
        for &(p0, c, p1) in samples {
            lo = lo.max(p0.as_nanos() as i128 - c.as_nanos() as i128);
            hi = hi.min(p1.as_nanos() as i128 - c.as_nanos() as i128);
        }
        (!samples.is_empty() && lo <= hi).then_some(Self { lo, hi })
    }

    /// The earliest parent time that child time `c` can be.
    pub fn earliest(&self, c: Duration) -> Duration {
        to_duration(c.as_nanos() as i128 + self.lo)
    }

    /// The latest parent time that child time `c` can be.
    pub fn latest(&self, c: Duration) -> Duration {
        to_duration(c.as_nanos() as i128 + self.hi)
    }

    /// The middle of the possible parent times of child time `c`: off by at most half
    /// the [`uncertainty`](Self::uncertainty).
    pub fn map(&self, c: Duration) -> Duration {
        to_duration(c.as_nanos() as i128 + self.lo + (self.hi - self.lo) / 2)
    }

    pub fn uncertainty(&self) -> Duration {
        to_duration(self.hi - self.lo)
    }
}

fn to_duration(ns: i128) -> Duration {
    Duration::from_nanos(u64::try_from(ns.max(0)).unwrap_or(u64::MAX))
}
