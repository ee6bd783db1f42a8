//! The guards a manager currently holds, so that shutdown can release them, and the
//! watchdogs not started yet, with the one task per manager that starts them (the
//! *starter*: see [`crate::watchdog`] for why watchdogs start late).
//!
//! The not-yet-started watchdog of a guard lives in the guard's registry entry, so that
//! registering a guard and scheduling its watchdog is one step under one mutex, and so
//! is taking the guard out (its release or drop): a guard released before its start
//! leaves nothing behind — no task, no entry, no clone of its span. Shutdown drains the
//! registry, and the watchdogs with it.
//!
//! The schedule is a `BTreeSet` of (start instant, guard key), not a timer wheel or a
//! `BinaryHeap`: an entry must be removable at once when its guard ends (a heap would
//! keep it, and whatever it holds, until its instant), and the set gives the earliest
//! instant in `O(log n)`. The starter sleeps until that instant. An acquisition wakes it
//! only when its watchdog must start earlier than the instant the starter sleeps for:
//! waking it on every acquisition would cost what the late start saves.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::lease::Lease;
use crate::names::LockNames;
use crate::watchdog::{Watchdog, START_DELAY};

/// What shutdown needs to stop and release one live guard.
pub(crate) struct Held {
    pub(crate) names: Arc<LockNames>,
    pub(crate) id: Arc<str>,
    pub(crate) token: Arc<str>,
    pub(crate) fence: u64,
    pub(crate) state: Arc<Lease>,
    /// The guard's watchdog until the starter spawns it; `None` once spawned, and for a
    /// lock without a watchdog.
    pub(crate) late: Option<Late>,
}

/// A watchdog waiting for its start.
pub(crate) struct Late {
    /// When the starter spawns it: [`start_at`].
    pub(crate) at: Instant,
    pub(crate) watchdog: Watchdog,
    /// The guard's `rdlock.hold` span, which the watchdog runs in.
    pub(crate) span: tracing::Span,
}

/// When the watchdog of a lease granted by a command sent at `sent` starts: at the
/// first renewal (`lease / 3`), or after [`START_DELAY`] if that is earlier, so that the
/// clocks are still checked every [`START_DELAY`] from the acquisition on.
pub(crate) fn start_at(sent: Instant, lease: std::time::Duration) -> Instant {
    sent + START_DELAY.min(lease / 3)
}

pub(crate) struct HeldGuards {
    shared: Arc<Shared>,
    /// Where the watchdogs run (the manager's tracker, which shutdown waits for).
    tasks: TaskTracker,
    /// The starter alone, so that [`pending_tasks`](crate::RdLockConnectionManager::pending_tasks)
    /// still counts one task per started watchdog and shutdown can wait for it too.
    starter: TaskTracker,
    /// Stops the starter: cancelled by the manager's shutdown (a child of its token),
    /// or when the manager is dropped without one.
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

struct Shared {
    next: AtomicU64,
    map: Mutex<Registry>,
    /// Wakes the starter: a watchdog must start before the instant it sleeps for.
    wake: Notify,
}

#[derive(Default)]
struct Registry {
    guards: HashMap<u64, Held>,
    /// The watchdogs not started yet, earliest first: (start instant, guard key).
    due: BTreeSet<(Instant, u64)>,
    /// The starter task is alive (spawned and not ended: a runtime that shuts down
    /// drops it, and the next acquisition spawns another).
    starter_alive: bool,
    /// The instant the starter will wake at, at the latest; `None` while it waits only
    /// for a notification.
    wakes_at: Option<Instant>,
    /// A guard was registered since the starter last looked: it stays on its
    /// [`START_DELAY`] tick rather than waiting for a notification (see [`starter`]).
    busy: bool,
    /// Set by shutdown: no guard is registered any more.
    closed: bool,
}

impl HeldGuards {
    /// An empty registry whose watchdogs run in `tasks`, and whose starter stops with
    /// `shutdown`.
    pub(crate) fn new(tasks: TaskTracker, shutdown: &CancellationToken) -> Self {
        let stop = shutdown.child_token();
        Self {
            shared: Arc::new(Shared {
                next: AtomicU64::new(0),
                map: Mutex::new(Registry::default()),
                wake: Notify::new(),
            }),
            tasks,
            starter: TaskTracker::new(),
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        }
    }

    /// Registers a new guard and schedules its watchdog, if it has one; `None` once
    /// shutdown has drained the registry, so that an acquisition that completes during
    /// or after shutdown never becomes a live guard (the check and the insert are one
    /// step under the mutex that [`close_and_drain`](Self::close_and_drain) takes).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, when the manager's starter task has to be spawned
    /// (only ever called by an acquisition, on a runtime).
    pub(crate) fn insert(&self, held: Held) -> Option<u64> {
        let mut map = self.shared.map();
        if map.closed {
            return None;
        }
        let key = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let at = held.late.as_ref().map(|late| late.at);
        map.guards.insert(key, held);
        let Some(at) = at else {
            return Some(key);
        };
        map.due.insert((at, key));
        map.busy = true;
        if !map.starter_alive {
            map.starter_alive = true;
            map.wakes_at = Some(at);
            // Spawned outside the mutex: a runtime that shuts down drops the task at
            // once, and `Alive` takes the mutex when dropped.
            drop(map);
            let alive = Alive(self.shared.clone());
            self.starter
                .spawn(starter(alive, self.tasks.clone(), self.stop.clone()));
        } else if map.wakes_at.is_none_or(|wakes| at < wakes) {
            // Only when it sleeps past this start: an acquisition that finds the
            // starter already due to wake in time costs no wake-up.
            map.wakes_at = Some(at);
            drop(map);
            self.shared.wake.notify_one();
        }
        Some(key)
    }

    /// Takes a guard out, with its watchdog if not started yet (dropped by the caller,
    /// outside the mutex); `None` when shutdown has already taken (and released) it.
    pub(crate) fn remove(&self, key: u64) -> Option<Held> {
        let mut map = self.shared.map();
        let held = map.guards.remove(&key)?;
        if let Some(late) = &held.late {
            map.due.remove(&(late.at, key));
        }
        // The starter is not woken: it finds nothing due at its instant.
        Some(held)
    }

    pub(crate) fn len(&self) -> usize {
        self.shared.map().guards.len()
    }

    /// Refuses every later [`insert`](Self::insert) and returns the guards alive now,
    /// without their watchdogs not started yet (those are dropped: the guards end).
    pub(crate) fn close_and_drain(&self) -> Vec<Held> {
        let mut map = self.shared.map();
        map.closed = true;
        map.due.clear();
        map.guards
            .drain()
            .map(|(_, mut held)| {
                held.late = None;
                held
            })
            .collect()
    }

    /// Completes once the starter has stopped (it stops at once with shutdown).
    pub(crate) async fn starter_stopped(&self) {
        self.starter.close();
        self.starter.wait().await;
        self.starter.reopen();
    }
}

impl Shared {
    fn map(&self) -> MutexGuard<'_, Registry> {
        // Every update leaves the registry consistent (no user code runs under the
        // mutex): it is usable even if a thread panicked while holding it.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks the starter gone when its future ends or is dropped — also unpolled, by a
/// runtime shutting down — so that the next acquisition spawns another.
struct Alive(Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        let mut map = self.0.map();
        map.starter_alive = false;
        map.wakes_at = None;
    }
}

/// The starter: spawns each watchdog at its instant, until `stop`.
///
/// With nothing left to start, it waits one more [`START_DELAY`] if a guard was
/// registered since it last looked, and only then for a notification: a loop of short
/// holds (each released before its start) then wakes it about once per `START_DELAY`,
/// not once per acquisition, and an idle manager not at all.
async fn starter(alive: Alive, tasks: TaskTracker, stop: CancellationToken) {
    let shared = &alive.0;
    let mut started = Vec::new();
    loop {
        let now = Instant::now();
        let (wakes_at, in_flight) = {
            let mut map = shared.map();
            while let Some(&(at, key)) = map.due.first() {
                if at > now {
                    break;
                }
                map.due.pop_first();
                if let Some(late) = map.guards.get_mut(&key).and_then(|h| h.late.take()) {
                    started.push(late);
                }
            }
            let wakes_at = match map.due.first() {
                Some(&(at, _)) => Some(at),
                None if map.busy => Some(now + START_DELAY),
                None => None,
            };
            map.busy = false;
            map.wakes_at = wakes_at;
            // Counted under the mutex that shutdown drains the registry under: a
            // watchdog taken out above belongs to a guard not drained yet, and
            // shutdown's wait for the tasks covers its spawn. (If shutdown drains the
            // guard meanwhile, its scope is cancelled and the watchdog returns at once.)
            (wakes_at, (!started.is_empty()).then(|| tasks.token()))
        };
        for late in started.drain(..) {
            tasks.spawn(late.watchdog.run().instrument(late.span));
        }
        drop(in_flight);
        let sleep = async {
            match wakes_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = shared.wake.notified() => {}
            () = sleep => {}
        }
    }
}
