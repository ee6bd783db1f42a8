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
//! At most [`HANDOFF_BUDGET`] hand-offs follow each other while other processes wait:
//! the next hand-off script, finding processes in the Redis-side queue
//! ([`crate::queue`]), gives the turn to the first of them instead and queues this
//! process again at the end; the next local task then waits for this process's turn
//! without an attempt. With no other process queued, hand-offs go on (a new budget).
//!
//! The gate also keeps the lock's subscription ([`Watch`]) from the first wait until
//! the gate is free again, so that a process that takes turns with others stays
//! subscribed between them: its waits then need no attempt after subscribing.
//!
//! The queue's entries carry each waiter's [`Lock`]: what differs between `Lock`
//! values of one key (lease, label, maximum hold, metrics name, 1.x compatibility) is
//! known to whoever passes the turn on. The hand-off script needs only the lease and
//! the owner record; the rest is the recipient's own business when it builds its guard.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::oneshot;

use crate::lock::{Granted, Lock};
use crate::notifier::Watch;

/// How many local hand-offs may follow each other while other processes wait for the
/// key: 8.
///
/// A process whose tasks queue for a key keeps it for at most this many hand-offs in
/// a row when other processes are in the key's queue (see [queue of
/// processes](crate#queue-of-processes)); then the turn goes to the first of them, and
/// this process queues again at the end. Larger
/// budgets save Redis work (a turn to another process costs a message and its claim)
/// but make other processes wait longer (up to N + 1 holds of this process).
///
/// ```
/// assert_eq!(rdlock::HANDOFF_BUDGET, 8);
/// ```
pub const HANDOFF_BUDGET: u32 = 8;

/// How a task that received a plain turn starts contending in Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Start {
    /// With an attempt.
    #[default]
    Attempt,
    /// With a wait for this process's turn: a hand-off script gave the key to another
    /// process and queued this one again.
    Requeued,
    /// With a short wait (once subscribed): a hand-off script released the key for
    /// marked waiters not in line (1.x compatibility), which try first.
    OthersFirst,
}

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
    /// The waiter the turn is reserved for (a hand-off in transit).
    reserved: Option<oneshot::Sender<Delivery>>,
    /// How the turn's next holder starts (`lock/wait.rs`), after a hand-off script
    /// that ended a budget.
    start: Start,
    queue: VecDeque<Entry>,
    /// Hand-offs since the budget last started.
    handoffs: u32,
    /// The lock's subscription, kept from the first wait until the gate is free.
    watch: Option<Arc<Watch>>,
    next_id: u64,
}

impl GateState {
    /// Takes the first live waiter out of the queue for a hand-off, if it can take
    /// one; counts the hand-off, and tells whether the budget is spent (the hand-off
    /// script then gives the turn to another process if one waits).
    fn reserve(&mut self) -> Option<(oneshot::Sender<Delivery>, Lock, bool)> {
        while self.queue.front().is_some_and(|e| e.tx.is_closed()) {
            self.queue.pop_front();
        }
        // Strict FIFO: a head that cannot take a hand-off gets a plain turn.
        if self.queue.front().is_none_or(|e| e.recipient.is_none()) {
            return None;
        }
        let entry = self.queue.pop_front()?;
        let spent = self.handoffs >= HANDOFF_BUDGET;
        self.handoffs = self.handoffs.saturating_add(1);
        entry.recipient.map(|lock| (entry.tx, lock, spent))
    }
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
    /// `None` once passed on. The turn's own state (a reservation, the budget flags)
    /// lives in the gate, which has one turn at a time: the turn stays one pointer
    /// wide inside guards and acquisitions.
    gate: Option<Arc<Gate>>,
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

    /// The next waiter to pass a plain turn to, or `Err` after freeing the gate, with
    /// the subscription it kept (to be dropped outside the gate's mutex).
    fn next_or_free(&self) -> Result<oneshot::Sender<Delivery>, Option<Arc<Watch>>> {
        let mut state = self.state();
        // The key was (or will be) released in Redis: the budget starts again.
        state.handoffs = 0;
        while let Some(entry) = state.queue.pop_front() {
            if !entry.tx.is_closed() {
                return Ok(entry.tx);
            }
        }
        state.held = false;
        state.start = Start::Attempt;
        Err(state.watch.take())
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
        Self { gate: Some(gate) }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut GateState) -> T) -> Option<T> {
        self.gate.as_ref().map(|gate| f(&mut gate.state()))
    }

    /// A hand-off script ended a budget: a new one starts, and the turn's next holder
    /// starts as `start` says.
    pub(crate) fn restart_budget(&mut self, start: Start) {
        self.with_state(|s| {
            s.handoffs = 0;
            s.start = start;
        });
    }

    /// How the turn's new holder starts. Read once, by that holder.
    pub(crate) fn take_start(&self) -> Start {
        self.with_state(|s| std::mem::take(&mut s.start))
            .unwrap_or_default()
    }

    /// The lock's subscription kept by the gate, if any.
    pub(crate) fn watch(&self) -> Option<Arc<Watch>> {
        self.with_state(|s| s.watch.clone()).flatten()
    }

    /// Keeps `watch` until the gate is free.
    pub(crate) fn keep_watch(&self, watch: &Arc<Watch>) {
        self.with_state(|s| s.watch = Some(watch.clone()));
    }

    /// Reserves this turn for the first waiter of the queue, if it can take a hand-off;
    /// returns that waiter's lock, and whether the budget is spent. If the turn is then
    /// dropped (the hand-off failed), the waiter receives it as a plain turn.
    pub(crate) fn reserve_for_hand_off(&mut self) -> Option<(Lock, bool)> {
        let gate = self.gate.as_ref()?;
        let mut state = gate.state();
        if state.reserved.is_some() {
            return None;
        }
        let (tx, lock, spent) = state.reserve()?;
        state.reserved = Some(tx);
        Some((lock, spent))
    }

    /// Delivers `granted` (which holds this turn, unreserved) to the waiter this turn
    /// was reserved for. If that waiter is gone, the acquisition is dropped: it is
    /// released by its token, and the turn passed on after that.
    pub(crate) fn deliver(self, build: impl FnOnce(Turn) -> Granted) {
        let tx = self.with_state(|s| s.reserved.take()).flatten();
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
        let mut next = gate.state().reserved.take();
        loop {
            let tx = match next.take() {
                Some(tx) => tx,
                None => match gate.next_or_free() {
                    Ok(tx) => tx,
                    // The gate is free; its subscription (if any) is dropped here.
                    Err(_watch) => return,
                },
            };
            // Sent outside the gate's mutex: a turn sent back is disarmed, not dropped.
            match tx.send(Delivery::Turn(Turn::new(gate.clone()))) {
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
