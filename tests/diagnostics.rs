//! `tracing` events: what the library reports, with which fields, and never the token.
//!
//! One test per binary: `tracing` caches per-callsite interest process-wide, so a
//! test without a subscriber running in parallel could hide events from this one.

mod support;

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdlock::RdLockConnectionManager;
use support::{get, wait_until, RedisServer};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

#[derive(Debug, Clone)]
struct Captured {
    level: Level,
    fields: Vec<(String, String)>,
}

impl Captured {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal subscriber that records every event with its fields.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Captured>>>);

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
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Vec::new();
        event.record(&mut FieldVisitor(&mut fields));
        self.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            fields,
        });
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn lifecycle_events_carry_the_lock_id_and_fence_but_never_the_token() {
    let server = RedisServer::start();
    let recorder = Recorder::default();
    let _default = tracing::subscriber::set_default(recorder.clone());
    // A current-thread runtime: every task runs on this thread, under the recorder.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = runtime.block_on(async {
        let mut raw = server.conn().await;
        let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
        let lock = manager
            .new_lock("traced")
            .with_lease(Duration::from_secs(1));
        let guard = lock.lock().await.unwrap();
        let token = get(&mut raw, lock.key()).await.unwrap();
        // Held until the first renewal is logged (after a third of the lease), however
        // long a busy machine takes; a watchdog that never renews, or never says so,
        // does not get there.
        let recorded = recorder.clone();
        wait_until(Duration::from_secs(5), "a renewal is logged", || {
            let renewed = recorded
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.field("message") == Some("lease renewed"));
            async move { renewed }
        })
        .await;
        guard.release().await.unwrap();
        let guard = lock.lock().await.unwrap();
        let _: () = redis::cmd("SET")
            .arg(lock.key())
            .arg("thief")
            .query_async(&mut raw)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), guard.lost())
            .await
            .unwrap();
        token
    });
    let events = recorder.0.lock().unwrap().clone();
    let with = |message: &str| {
        events
            .iter()
            .filter(|e| e.field("message") == Some(message))
            .cloned()
            .collect::<Vec<_>>()
    };
    let acquired = with("acquired");
    assert_eq!(acquired.len(), 2, "{events:#?}");
    assert!(acquired.iter().all(|e| e.level == Level::DEBUG));
    assert_eq!(acquired[0].field("lock"), Some("traced"));
    assert_eq!(acquired[0].field("fence"), Some("1"));
    assert_eq!(acquired[1].field("fence"), Some("2"));
    let renewed = with("lease renewed");
    assert!(!renewed.is_empty() && renewed.iter().all(|e| e.level == Level::DEBUG));
    let released = with("released");
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].field("fence"), Some("1"));
    let lost = with("lease lost");
    assert_eq!(lost.len(), 1, "{events:#?}");
    assert_eq!(lost[0].level, Level::WARN);
    assert_eq!(lost[0].field("lock"), Some("traced"));
    assert_eq!(lost[0].field("fence"), Some("2"));
    for event in &events {
        for (_, value) in &event.fields {
            assert!(
                !value.contains(&token),
                "the owner token was logged: {event:?}"
            );
        }
    }
}
