//! The local, per-key FIFO queue in front of Redis.
//!
//! Within one manager, the tasks that want the same lock line up in a fair
//! `tokio::sync::Mutex` first; only the task at the head contends in Redis. A release
//! hands the turn to the next local task in arrival order. Redis ownership is never
//! bypassed — the next task still acquires the key in Redis — but the process sends one
//! attempt per handoff instead of one per waiting task, and no local task starves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

/// A turn at the head of a key's local queue; dropping it lets the next task in.
pub(crate) type Turn = tokio::sync::OwnedMutexGuard<()>;

/// One queue per lock key, alive while some task holds or waits for it.
#[derive(Default)]
pub(crate) struct Gates {
    map: Mutex<GateMap>,
}

#[derive(Default)]
struct GateMap {
    gates: HashMap<String, Weak<tokio::sync::Mutex<()>>>,
    /// Prune dead entries when the map grows past this size: amortised O(1).
    prune_at: usize,
}

impl Gates {
    pub(crate) fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map();
        if let Some(gate) = map.gates.get(key).and_then(Weak::upgrade) {
            return gate;
        }
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        map.gates.insert(key.to_owned(), Arc::downgrade(&gate));
        if map.gates.len() >= map.prune_at {
            map.gates.retain(|_, gate| gate.strong_count() > 0);
            map.prune_at = (map.gates.len() * 2).max(64);
        }
        gate
    }

    fn map(&self) -> MutexGuard<'_, GateMap> {
        // Each update leaves the map consistent: a panic elsewhere cannot corrupt it.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries, dead ones not yet pruned included.
    pub(crate) fn len(&self) -> usize {
        self.map().gates.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_gate_per_key_while_in_use_and_dead_gates_are_pruned() {
        let gates = Gates::default();
        let a = gates.get("a");
        assert!(Arc::ptr_eq(&a, &gates.get("a")));
        assert!(!Arc::ptr_eq(&a, &gates.get("b")));
        for i in 0..1000 {
            drop(gates.get(&format!("k{i}")));
        }
        assert!(gates.len() <= 130, "dead gates pile up: {}", gates.len());
        assert!(
            Arc::ptr_eq(&a, &gates.get("a")),
            "live gates survive pruning"
        );
    }
}
