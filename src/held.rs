//! The guards a manager currently holds, so that shutdown can release them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::lease::Lease;
use crate::names::LockNames;

/// What shutdown needs to stop and release one live guard.
pub(crate) struct Held {
    pub(crate) names: Arc<LockNames>,
    pub(crate) id: Arc<str>,
    pub(crate) token: Arc<str>,
    pub(crate) fence: u64,
    pub(crate) state: Arc<Lease>,
}

#[derive(Default)]
pub(crate) struct HeldGuards {
    next: AtomicU64,
    map: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    guards: HashMap<u64, Held>,
    /// Set by shutdown: no guard is registered any more.
    closed: bool,
}

impl HeldGuards {
    /// Registers a new guard; `None` once shutdown has drained the registry, so that
    /// an acquisition that completes during or after shutdown never becomes a live
    /// guard (the check and the insert are one step under the mutex that
    /// [`close_and_drain`](Self::close_and_drain) takes).
    pub(crate) fn insert(&self, held: Held) -> Option<u64> {
        let mut map = self.map();
        if map.closed {
            return None;
        }
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        map.guards.insert(key, held);
        Some(key)
    }

    /// `None` when shutdown has already taken (and released) it.
    pub(crate) fn remove(&self, key: u64) -> Option<Held> {
        self.map().guards.remove(&key)
    }

    pub(crate) fn len(&self) -> usize {
        self.map().guards.len()
    }

    /// Refuses every later [`insert`](Self::insert) and returns the guards alive now.
    pub(crate) fn close_and_drain(&self) -> Vec<Held> {
        let mut map = self.map();
        map.closed = true;
        map.guards.drain().map(|(_, held)| held).collect()
    }

    fn map(&self) -> MutexGuard<'_, Registry> {
        // Every update is a single insert, remove or flag change: the map is consistent
        // even if a thread panicked while holding the mutex.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
