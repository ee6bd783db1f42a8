//! The guards a manager currently holds, so that shutdown can release them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::lease::LeaseState;
use crate::names::LockNames;

/// What shutdown needs to stop and release one live guard.
pub(crate) struct Held {
    pub(crate) names: Arc<LockNames>,
    pub(crate) id: Arc<str>,
    pub(crate) token: Arc<str>,
    pub(crate) fence: u64,
    pub(crate) state: Arc<LeaseState>,
}

#[derive(Default)]
pub(crate) struct HeldGuards {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Held>>,
}

impl HeldGuards {
    pub(crate) fn insert(&self, held: Held) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.map().insert(key, held);
        key
    }

    /// `None` when shutdown has already taken (and released) it.
    pub(crate) fn remove(&self, key: u64) -> Option<Held> {
        self.map().remove(&key)
    }

    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }

    pub(crate) fn drain(&self) -> Vec<Held> {
        self.map().drain().map(|(_, held)| held).collect()
    }

    fn map(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        // Every update is a single insert or remove: the map is consistent even if a
        // thread panicked while holding the mutex.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
