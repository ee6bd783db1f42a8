//! The local, per-key FIFO queue in front of Redis, and the local hand-off.
//!
//! Within one manager, the tasks that want the same lock line up in a FIFO [`Gate`];
//! only the task holding the gate's [`Turn`] contends in Redis. A release passes the
//! turn to the next local task in arrival order, in one of two ways:
//!
//! - **a plain turn**: the holder releases the key in Redis (token-checked `DEL` +
//!   `PUBLISH`), then the next task acquires it afresh — two round trips from holder
//!   to holder;
//! - **a hand-off** (see [`crate::handoff`]): one script checks the holder's token and,
//!   in the same step, stores a fresh token for the next task with *its* lease,
//!   increments the fence and writes its owner record. The next task receives the
//!   acquisition through its queue entry and builds its guard from it — one round trip
//!   from holder to holder.
//!
//! Redis ownership is never bypassed: the key passes from one token to the next inside
//! one script, so there is no moment where it is free, nor one where two tokens own it.
//! At most [`HANDOFF_BUDGET`] hand-offs follow each other; then the holder makes a
//! real release (with its `PUBLISH`), so that waiters of other processes get their
//! chance at the key.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::oneshot;

use crate::lock::{Granted, Lock};

/// How many local hand-offs may follow each other before the holder releases the key
/// in Redis (with its `PUBLISH`) instead: 8.
///
/// A process whose tasks queue for a key keeps it for at most this many hand-offs in
/// a row; then waiters of other processes, woken by the release, race the next local
/// task for the key on equal terms (one attempt each). Larger budgets save Redis
/// work (N + 2 scripts per N + 1 acquisitions: 10 per 9 here) but make other
/// processes wait longer (up to N + 1 holds of this process).
///
/// ```
/// assert_eq!(rdlock::HANDOFF_BUDGET, 8);
/// ```
pub const HANDOFF_BUDGET: u32 = 8;

/// What a queued task receives.
pub(crate) enum Delivery {
    /// Its turn: it acquires the key in Redis itself.
    Turn(Turn),
    /// The key itself, handed off by the previous holder; the turn is inside
    /// ([`Granted::take_turn`]). Dropped untaken, it releases the key by its token, then
    /// passes the turn on.
    HandedOff(Granted),
}

/// One task's place in the queue.
struct Entry {
    id: u64,
    /// The waiter's lock, when a hand-off can serve it (see [`Lock::takes_hand_offs`]).
    recipient: Option<Lock>,
    tx: oneshot::Sender<Delivery>,
}

#[derive(Default)]
struct GateState {
    /// A [`Turn`] is out (held, or on its way to a waiter).
    held: bool,
    queue: VecDeque<Entry>,
    /// Hand-offs since the key was last released in Redis.
    handoffs: u32,
    next_id: u64,
}

/// The FIFO queue of one key.
#[derive(Default)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
}

/// The right to contend for (or to hold) a key in Redis, one per [`Gate`] at a time.
/// Dropping it passes it on: to the waiter it was reserved for, if any, else to the
/// first waiter in the queue.
pub(crate) struct Turn {
    gate: Option<Arc<Gate>>,
    /// The waiter this turn is reserved for (a hand-off in transit).
    reserved: Option<oneshot::Sender<Delivery>>,
    /// The budget of hand-offs is spent: the key is released in Redis instead.
    budget_spent: bool,
    /// That release woke waiters of other processes: the next local task lets them
    /// try first (it subscribes before its first attempt, see `lock/wait.rs`).
    others_woken: bool,
}

/// A task's entry in the queue while it waits. Dropping it (a cancelled waiter) takes
/// the entry out; a delivery already made to it is dropped with it, which passes the
/// turn on (and releases a handed-off key by its token).
pub(crate) struct Queued {
    gate: Arc<Gate>,
    id: u64,
    rx: oneshot::Receiver<Delivery>,
}

impl Gate {
    fn state(&self) -> MutexGuard<'_, GateState> {
        // Each update leaves the state consistent: a panic elsewhere cannot corrupt it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The turn, if nobody holds it (and so nobody waits): never queues.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Turn> {
        let mut state = self.state();
        if state.held {
            return None;
        }
        state.held = true;
        Some(Turn::new(self.clone()))
    }

    /// The turn at once if it is free; otherwise an entry at the end of the queue.
    /// `recipient`: the waiter's lock, when it may receive a hand-off.
    pub(crate) fn enqueue(self: &Arc<Self>, recipient: Option<Lock>) -> Result<Turn, Queued> {
        let mut state = self.state();
        if !state.held {
            state.held = true;
            return Ok(Turn::new(self.clone()));
        }
        let (tx, rx) = oneshot::channel();
        let id = state.next_id;
        state.next_id += 1;
        state.queue.push_back(Entry { id, recipient, tx });
        Err(Queued {
            gate: self.clone(),
            id,
            rx,
        })
    }

    /// Takes the first live waiter out of the queue for a hand-off, if it can take one
    /// and the budget allows; counts the hand-off.
    /// `Err(())` when a waiter could take one but the budget is spent.
    fn reserve(&self) -> Result<Option<(oneshot::Sender<Delivery>, Lock)>, ()> {
        let mut state = self.state();
        while state.queue.front().is_some_and(|e| e.tx.is_closed()) {
            state.queue.pop_front();
        }
        // Strict FIFO: a head that cannot take a hand-off gets a plain turn.
        if state.queue.front().is_none_or(|e| e.recipient.is_none()) {
            return Ok(None);
        }
        if state.handoffs >= HANDOFF_BUDGET {
            return Err(());
        }
        let Some(entry) = state.queue.pop_front() else {
            return Ok(None);
        };
        state.handoffs += 1;
        Ok(entry.recipient.map(|lock| (entry.tx, lock)))
    }

    /// The next waiter to pass a plain turn to, or `None` after freeing the gate.
    fn next_or_free(&self) -> Option<oneshot::Sender<Delivery>> {
        let mut state = self.state();
        // The key was (or will be) released in Redis: the budget starts again.
        state.handoffs = 0;
        while let Some(entry) = state.queue.pop_front() {
            if !entry.tx.is_closed() {
                return Some(entry.tx);
            }
        }
        state.held = false;
        None
    }

    fn remove(&self, id: u64) {
        self.state().queue.retain(|e| e.id != id);
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.state().queue.len()
    }
}

impl Turn {
    fn new(gate: Arc<Gate>) -> Self {
        Self {
            gate: Some(gate),
            reserved: None,
            budget_spent: false,
            others_woken: false,
        }
    }

    /// The budget of hand-offs was spent when this turn's holder released.
    pub(crate) fn budget_spent(&self) -> bool {
        self.budget_spent
    }

    /// Records whether the release that ends a budget woke other processes' waiters.
    pub(crate) fn set_others_woken(&mut self, woken: bool) {
        self.others_woken = woken;
    }

    /// The release before this turn was passed on woke other processes' waiters: let
    /// them try first.
    pub(crate) fn others_woken(&self) -> bool {
        self.others_woken
    }

    /// Reserves this turn for the first waiter of the queue, if it can take a hand-off
    /// and the budget allows; returns that waiter's lock. If the turn is then dropped
    /// (the hand-off failed), the waiter receives it as a plain turn.
    pub(crate) fn reserve_for_hand_off(&mut self) -> Option<Lock> {
        if self.reserved.is_some() {
            return None;
        }
        match self.gate.as_ref()?.reserve() {
            Ok(reserved) => {
                let (tx, lock) = reserved?;
                self.reserved = Some(tx);
                Some(lock)
            }
            Err(()) => {
                self.budget_spent = true;
                None
            }
        }
    }

    /// Delivers `granted` (which holds this turn, unreserved) to the waiter this turn
    /// was reserved for. If that waiter is gone, the acquisition is dropped: it is
    /// released by its token, and the turn passed on after that.
    pub(crate) fn deliver(mut self, build: impl FnOnce(Turn) -> Granted) {
        let tx = self.reserved.take();
        let granted = build(self);
        match tx {
            Some(tx) => drop(tx.send(Delivery::HandedOff(granted))),
            None => drop(granted),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(gate) = self.gate.take() else {
            return;
        };
        let mut next = self.reserved.take();
        loop {
            let Some(tx) = next.take().or_else(|| gate.next_or_free()) else {
                return; // the gate is free
            };
            let mut turn = Turn::new(gate.clone());
            turn.others_woken = self.others_woken;
            // Sent outside the gate's mutex: a turn sent back is disarmed, not dropped.
            match tx.send(Delivery::Turn(turn)) {
                Ok(()) => return,
                Err(Delivery::Turn(mut turn)) => turn.gate = None,
                Err(Delivery::HandedOff(_)) => return, // not what was sent
            }
        }
    }
}

impl Queued {
    /// Waits for the turn or a hand-off.
    pub(crate) async fn delivered(&mut self) -> Option<Delivery> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.gate.remove(self.id);
        // A delivery already made is dropped with `rx`, after this: it passes the turn
        // on (and releases a handed-off key) without the gate's mutex held.
        self.rx.close();
    }
}

/// One queue per lock key, alive while some task holds or waits for it.
#[derive(Default)]
pub(crate) struct Gates {
    map: Mutex<GateMap>,
}

#[derive(Default)]
struct GateMap {
    gates: HashMap<String, Weak<Gate>>,
    /// Prune dead entries when the map grows past this size: amortised O(1).
    prune_at: usize,
}

impl Gates {
    pub(crate) fn get(&self, key: &str) -> Arc<Gate> {
        let mut map = self.map();
        if let Some(gate) = map.gates.get(key).and_then(Weak::upgrade) {
            return gate;
        }
        let gate = Arc::new(Gate::default());
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

    #[tokio::test]
    async fn turns_pass_in_arrival_order_and_skip_cancelled_waiters() {
        let gate = Arc::new(Gate::default());
        let first = gate.enqueue(None).ok().expect("free gate");
        assert!(gate.try_take().is_none(), "try_take never queues");
        let mut second = gate.enqueue(None).err().expect("queued");
        let cancelled = gate.enqueue(None).err().expect("queued");
        let mut third = gate.enqueue(None).err().expect("queued");
        drop(cancelled);
        assert_eq!(gate.queued(), 2);
        drop(first);
        let Some(Delivery::Turn(turn)) = second.delivered().await else {
            panic!("second gets the turn")
        };
        drop(second);
        drop(turn);
        let Some(Delivery::Turn(turn)) = third.delivered().await else {
            panic!("third gets the turn")
        };
        drop(third);
        drop(turn);
        assert!(gate.try_take().is_some(), "free again");
    }

    #[tokio::test]
    async fn a_turn_delivered_to_a_waiter_that_is_gone_passes_on() {
        let gate = Arc::new(Gate::default());
        let first = gate.enqueue(None).ok().expect("free gate");
        let gone = gate.enqueue(None).err().expect("queued");
        let mut next = gate.enqueue(None).err().expect("queued");
        drop(first);
        // Delivered to `gone`, which is dropped without taking it (a waiter cancelled
        // as its turn came): the turn goes on to the next waiter.
        drop(gone);
        assert!(matches!(next.delivered().await, Some(Delivery::Turn(_))));
    }
}
