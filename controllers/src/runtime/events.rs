//! One structured line per reconcile decision — controller, object,
//! generation, action, reason — because reconcile logs are a product
//! feature: an operator reads them to learn why the system did what it did.
//!
//! A [`Recorder`] is handed to reconcilers (usually in their context). It
//! writes a `tracing` line and, once the process has installed an
//! [`EventSink`], also stores an Event object (`shoal events -w` shows
//! them). Storing is fire-and-forget through a bounded queue: a slow store
//! delays no reconcile, and when the queue is full events are dropped (and
//! counted in the log), never the decision itself.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use shoal_crd::{Event, EventSpec, ObjectReference, Resource};
use shoal_store::client::lease::grant_detached;
use shoal_store::client::Store;
use shoal_store::proto::PutRequest;
use tokio::sync::mpsc;

/// One decision about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The object's kind (`Service`), when known.
    pub kind: &'static str,
    /// The object's name.
    pub object: String,
    /// The object's generation the decision was made on (0 when deleted).
    pub generation: i64,
    /// What was done, as a short verb phrase (`created task`, `scaled down`, `nothing`).
    pub action: String,
    /// Why, in words a user can act on.
    pub reason: String,
}

impl Decision {
    /// A decision about `object` as it is cached.
    pub fn about<R: Resource>(object: &R, action: impl Into<String>, reason: impl Into<String>) -> Self {
        let meta = object.metadata();
        Self {
            kind: R::KIND,
            object: meta.name.clone(),
            generation: meta.generation,
            action: action.into(),
            reason: reason.into(),
        }
    }

    /// A decision about an object that is gone (or was never read).
    pub fn about_name(object: &str, action: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { kind: "", object: object.to_string(), generation: 0, action: action.into(), reason: reason.into() }
    }
}

/// Records the decisions of one controller.
#[derive(Debug, Clone)]
pub struct Recorder {
    controller: Arc<str>,
}

impl Recorder {
    /// A recorder for the controller named `controller`.
    pub fn new(controller: &str) -> Self {
        Self { controller: controller.into() }
    }

    /// The controller's name.
    pub fn controller(&self) -> &str {
        &self.controller
    }

    /// Records one decision.
    pub fn record(&self, decision: &Decision) {
        tracing::info!(
            controller = %self.controller,
            object = %decision.object,
            generation = decision.generation,
            action = %decision.action,
            reason = %decision.reason,
            "decision"
        );
        if let Some(sink) = SINK.get() {
            sink.send(&self.controller, decision);
        }
    }
}

/// The process-wide destination of Event objects (like tracing's global
/// subscriber: installed once by the process that runs controllers).
static SINK: OnceLock<EventSink> = OnceLock::new();

/// How long stored events live (Kubernetes keeps events for an hour too).
pub const EVENT_TTL: Duration = Duration::from_secs(3600);

/// Writes Event objects in the background, each attached to a lease so
/// the store forgets them after [`EVENT_TTL`].
#[derive(Debug, Clone)]
pub struct EventSink {
    queue: mpsc::Sender<Event>,
}

impl EventSink {
    /// Starts the writer and makes every [`Recorder`] of this process store
    /// its decisions. Returns false if a sink was already installed.
    pub fn install(store: Store) -> bool {
        let (queue, events) = mpsc::channel(1024);
        tokio::spawn(write_events(store, events));
        SINK.set(EventSink { queue }).is_ok()
    }

    fn send(&self, controller: &str, decision: &Decision) {
        let now = Utc::now();
        let name = format!("{}.{:x}", decision.object, now.timestamp_nanos_opt().unwrap_or_default());
        let event = Event::new(
            name,
            EventSpec {
                controller: controller.to_string(),
                object: ObjectReference { kind: decision.kind.to_string(), name: decision.object.clone() },
                generation: decision.generation,
                action: decision.action.clone(),
                reason: decision.reason.clone(),
                time: now,
            },
        );
        if self.queue.try_send(event).is_err() {
            tracing::warn!(controller, object = %decision.object, "event queue full; event not stored");
        }
    }
}

/// Stores queued events; one lease serves all events for a while, then a
/// new one is granted so each event lives between TTL and TTL + renewal.
async fn write_events(store: Store, mut events: mpsc::Receiver<Event>) {
    const LEASE_REUSE: Duration = Duration::from_secs(300);
    let mut lease: Option<(i64, Instant)> = None;
    while let Some(event) = events.recv().await {
        if lease.is_none_or(|(_, since)| since.elapsed() > LEASE_REUSE) {
            match grant_detached(store.etcd(), (EVENT_TTL + LEASE_REUSE).as_secs() as i64).await {
                Ok(id) => lease = Some((id, Instant::now())),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot grant the event lease; event not stored");
                    continue;
                }
            }
        }
        let key = store.key_of::<Event>(&event.metadata.name);
        let mut event = event;
        shoal_store::client::resources::stamp_new(&mut event);
        let put = PutRequest {
            key: key.into_bytes(),
            value: shoal_store::client::resources::encode(&event),
            lease: lease.map(|(id, _)| id).unwrap_or_default(),
            ..Default::default()
        };
        if let Err(err) = store.etcd().unary(store.etcd().kv().put(put)).await {
            tracing::warn!(error = %err, "event not stored");
        }
    }
}
