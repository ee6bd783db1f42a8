//! `tracing` spans: one per acquisition (`rdlock.acquire`) and one per hold
//! (`rdlock.hold`), with the lock id, fencing token and backend, never the token; the
//! watchdog's events are inside the hold.
//!
//! One test per binary: `tracing` caches per-callsite interest process-wide.

mod support;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdlock::{RdLockConnectionManager, RdLockError};
use support::{get, wait_until, RedisServer};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

#[derive(Debug, Clone, Default)]
struct SpanRec {
    name: String,
    fields: Vec<(String, String)>,
    parent: Option<u64>,
    follows: Vec<u64>,
}

impl SpanRec {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
struct EventRec {
    fields: Vec<(String, String)>,
    /// The innermost span entered when the event was emitted.
    span: Option<u64>,
}

#[derive(Default)]
struct State {
    spans: HashMap<u64, SpanRec>,
    events: Vec<EventRec>,
    /// Entered spans (everything runs on one thread: a current-thread runtime).
    stack: Vec<u64>,
}

#[derive(Clone, Default)]
struct Recorder {
    next: Arc<AtomicU64>,
    state: Arc<Mutex<State>>,
}

struct FieldVisitor<'a>(&'a mut Vec<(String, String)>);
impl Visit for FieldVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = Vec::new();
        attrs.record(&mut FieldVisitor(&mut fields));
        let mut state = self.state.lock().unwrap();
        let parent = if attrs.is_root() {
            None
        } else if let Some(parent) = attrs.parent() {
            Some(parent.into_u64())
        } else {
            state.stack.last().copied()
        };
        state.spans.insert(
            id,
            SpanRec {
                name: attrs.metadata().name().to_owned(),
                fields,
                parent,
                follows: Vec::new(),
            },
        );
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut fields = Vec::new();
        values.record(&mut FieldVisitor(&mut fields));
        if let Some(rec) = self.state.lock().unwrap().spans.get_mut(&span.into_u64()) {
            rec.fields.extend(fields);
        }
    }
    fn record_follows_from(&self, span: &Id, follows: &Id) {
        if let Some(rec) = self.state.lock().unwrap().spans.get_mut(&span.into_u64()) {
            rec.follows.push(follows.into_u64());
        }
    }
    fn event(&self, event: &Event<'_>) {
        let mut fields = Vec::new();
        event.record(&mut FieldVisitor(&mut fields));
        let mut state = self.state.lock().unwrap();
        let span = state.stack.last().copied();
        state.events.push(EventRec { fields, span });
    }
    fn enter(&self, span: &Id) {
        self.state.lock().unwrap().stack.push(span.into_u64());
    }
    fn exit(&self, span: &Id) {
        let mut state = self.state.lock().unwrap();
        if let Some(at) = state.stack.iter().rposition(|&s| s == span.into_u64()) {
            state.stack.remove(at);
        }
    }
}

#[test]
fn acquisitions_and_holds_have_spans_with_lock_fence_and_backend_but_never_the_token() {
    let server = RedisServer::start();
    let recorder = Recorder::default();
    let _default = tracing::subscriber::set_default(recorder.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = runtime.block_on(async {
        let mut raw = server.conn().await;
        let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
        let lock = manager
            .new_lock("spanned")
            .with_lease(Duration::from_millis(600));
        let caller = tracing::info_span!("caller");
        let guard = {
            use tracing::Instrument;
            lock.lock().instrument(caller.clone()).await.unwrap()
        };
        let token = get(&mut raw, lock.key()).await.unwrap();
        let state = recorder.state.clone();
        wait_until(Duration::from_secs(5), "a renewal is logged", || {
            let renewed = state.lock().unwrap().events.iter().any(|e| {
                e.fields
                    .iter()
                    .any(|(n, v)| n == "message" && v == "lease renewed")
            });
            async move { renewed }
        })
        .await;
        // A wait that times out: its span says so.
        let err = lock
            .lock_timeout(Duration::from_millis(150))
            .await
            .unwrap_err();
        assert_eq!(err, RdLockError::TimeoutReached);
        guard.release().await.unwrap();
        token
    });
    let state = recorder.state.lock().unwrap();
    let named = |name: &str| {
        let mut spans: Vec<(u64, SpanRec)> = state
            .spans
            .iter()
            .filter(|(_, s)| s.name == name)
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        spans.sort_by_key(|(id, _)| *id);
        spans
    };
    let callers = named("caller");
    assert_eq!(callers.len(), 1);
    let caller_id = callers[0].0;

    let acquires = named("rdlock.acquire");
    assert_eq!(acquires.len(), 2, "{:#?}", state.spans);
    let (acquire_id, acquire) = &acquires[0];
    assert_eq!(acquire.field("lock"), Some("spanned"));
    assert_eq!(acquire.field("backend"), Some("single"));
    assert_eq!(acquire.field("fence"), Some("1"));
    assert_eq!(acquire.field("outcome"), Some("acquired"));
    assert_eq!(
        acquire.parent,
        Some(caller_id),
        "the acquisition is under the caller"
    );
    let timed_out = &acquires[1].1;
    assert!(
        timed_out
            .field("outcome")
            .is_some_and(|o| o.contains("timed out")),
        "{timed_out:?}"
    );
    assert_eq!(timed_out.field("fence"), None);

    let holds = named("rdlock.hold");
    assert_eq!(holds.len(), 1, "{:#?}", state.spans);
    let (hold_id, hold) = &holds[0];
    assert_eq!(hold.field("lock"), Some("spanned"));
    assert_eq!(hold.field("fence"), Some("1"));
    assert_eq!(hold.field("backend"), Some("single"));
    assert_eq!(
        hold.parent,
        Some(caller_id),
        "the hold is under the caller, beside the acquisition"
    );
    assert_eq!(
        hold.follows,
        vec![*acquire_id],
        "the hold follows from its acquisition"
    );

    let in_span = |message: &str| {
        state
            .events
            .iter()
            .filter(|e| e.fields.iter().any(|(n, v)| n == "message" && v == message))
            .map(|e| e.span)
            .collect::<Vec<_>>()
    };
    let renewals = in_span("lease renewed");
    assert!(!renewals.is_empty());
    assert!(
        renewals.iter().all(|&s| s == Some(*hold_id)),
        "renewals in the hold: {renewals:?}"
    );
    assert_eq!(in_span("released"), vec![Some(*hold_id)]);

    for span in state.spans.values() {
        for (_, value) in &span.fields {
            assert!(
                !value.contains(&token),
                "the owner token is in a span: {span:?}"
            );
        }
    }
    for event in &state.events {
        for (_, value) in &event.fields {
            assert!(
                !value.contains(&token),
                "the owner token was logged: {event:?}"
            );
        }
    }
}
