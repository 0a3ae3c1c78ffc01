//! The typed store client against both backends — the embedded store (a
//! real `shoal store` process) and a real etcd — with the same assertions:
//! compare-and-swap, generation semantics, all-or-nothing plans, watcher,
//! reflector and leases.

mod support;

use std::time::Duration;

use futures::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal_crd::{ObjectMeta, Resource};
use shoal_store::client::lease::Lease;
use shoal_store::client::reflector::reflector;
use shoal_store::client::watcher::{watcher, WatchEvent};
use shoal_store::client::{ApplyPlan, Change, Store, StoreConfig, StoreError};
use support::{connect, StoreUnderTest};

/// A minimal kind for exercising the client without depending on real specs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Widget {
    metadata: ObjectMeta,
    spec: WidgetSpec,
    #[serde(default)]
    status: WidgetStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
struct WidgetSpec {
    size: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
struct WidgetStatus {
    observed: u32,
}

impl Resource for Widget {
    const KIND: &'static str = "Widget";
    const PLURAL: &'static str = "widgets";
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn spec_value(&self) -> serde_json::Value {
        serde_json::to_value(&self.spec).unwrap()
    }
}

fn widget(name: &str, size: u32) -> Widget {
    Widget { metadata: ObjectMeta::named(name), spec: WidgetSpec { size }, status: WidgetStatus::default() }
}

async_on_both_backends!(
    create_sets_identity_and_refuses_duplicates,
    update_bumps_generation_only_when_spec_changes,
    stale_update_is_a_conflict_and_changes_nothing,
    plan_writes_all_or_nothing,
    reapplying_the_same_objects_writes_nothing,
    watcher_lists_then_streams_changes,
    reflector_mirrors_the_store,
    lease_keys_vanish_when_the_holder_stops,
);

async fn create_sets_identity_and_refuses_duplicates(backend: &StoreUnderTest) {
    let store = connect(backend).await;
    let created = store.create(widget("a", 1)).await.unwrap();
    assert_eq!(created.metadata.generation, 1);
    assert_eq!(created.metadata.uid.len(), 36);
    assert!(created.metadata.resource_version > 0);
    let read = store.require::<Widget>("a").await.unwrap();
    assert_eq!(read, created);
    let err = store.create(widget("a", 2)).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert_eq!(store.require::<Widget>("a").await.unwrap().spec.size, 1);
}

async fn update_bumps_generation_only_when_spec_changes(backend: &StoreUnderTest) {
    let store = connect(backend).await;
    let mut w = store.create(widget("g", 1)).await.unwrap();
    w.status.observed = 1;
    let w = store.update(w).await.unwrap();
    assert_eq!(w.metadata.generation, 1, "a status-only change keeps the generation");
    let mut changed = w.clone();
    changed.spec.size = 2;
    let changed = store.update(changed).await.unwrap();
    assert_eq!(changed.metadata.generation, 2);
    assert_eq!(changed.metadata.uid, w.metadata.uid);
    assert!(changed.metadata.resource_version > w.metadata.resource_version);
}

async fn stale_update_is_a_conflict_and_changes_nothing(backend: &StoreUnderTest) {
    let store = connect(backend).await;
    let first = store.create(widget("c", 1)).await.unwrap();
    let mut winner = first.clone();
    winner.spec.size = 2;
    store.update(winner).await.unwrap();
    let mut loser = first;
    loser.spec.size = 3;
    let err = store.update(loser).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(store.require::<Widget>("c").await.unwrap().spec.size, 2);
}

async fn plan_writes_all_or_nothing(backend: &StoreUnderTest) {
    let store = connect(backend).await;
    let existing = store.create(widget("p1", 1)).await.unwrap();
    let mut plan = ApplyPlan::new();
    plan.add(&store, Some(&existing), widget("p1", 5));
    plan.add::<Widget>(&store, None, widget("p2", 1));
    // Someone else changes p1 after the plan was made.
    let mut other = existing.clone();
    other.spec.size = 9;
    store.update(other).await.unwrap();
    let before = store.revision().await.unwrap();
    let err = store.commit(plan, "test plan").await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(store.revision().await.unwrap(), before, "a failed plan writes nothing");
    assert!(store.get::<Widget>("p2").await.unwrap().is_none());

    let current = store.require::<Widget>("p1").await.unwrap();
    let mut plan = ApplyPlan::new();
    plan.add(&store, Some(&current), widget("p1", 5));
    plan.add::<Widget>(&store, None, widget("p2", 1));
    let outcome = store.commit(plan, "test plan").await.unwrap();
    assert_eq!(outcome.revision, before + 1, "one transaction, one revision");
    let kinds: Vec<Change> = outcome.changes.iter().map(|c| c.change).collect();
    assert_eq!(kinds, vec![Change::Updated, Change::Created]);
}

async fn reapplying_the_same_objects_writes_nothing(backend: &StoreUnderTest) {
    let store = connect(backend).await;
    let current = store.create(widget("same", 4)).await.unwrap();
    let before = store.revision().await.unwrap();
    let mut plan = ApplyPlan::new();
    plan.add(&store, Some(&current), widget("same", 4));
    assert!(plan.is_noop());
    let outcome = store.commit(plan, "noop").await.unwrap();
    assert_eq!(outcome.revision, before);
    assert_eq!(store.require::<Widget>("same").await.unwrap().metadata.generation, 1);
}

async fn watcher_lists_then_streams_changes(backend: &StoreUnderTest) {
    let store = connect(backend).await;
    store.create(widget("w1", 1)).await.unwrap();
    let mut events = watcher::<Widget>(store.clone());
    let first = next_event(&mut events).await;
    assert!(
        matches!(&first, WatchEvent::Restarted(list) if list.len() == 1 && list[0].metadata.name == "w1"),
        "{first:?}"
    );
    store.create(widget("w2", 2)).await.unwrap();
    assert!(
        matches!(next_event(&mut events).await, WatchEvent::Applied(w) if w.metadata.name == "w2" && w.spec.size == 2)
    );
    store.delete::<Widget>("w1", None).await.unwrap();
    assert!(matches!(next_event(&mut events).await, WatchEvent::Deleted(w) if w.metadata.name == "w1"));
}

async fn next_event(
    events: &mut (impl futures::Stream<Item = Result<WatchEvent<Widget>, StoreError>> + Unpin),
) -> WatchEvent<Widget> {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("a watch event within 10 s")
        .expect("the stream stays open")
        .expect("no watch error")
}

async fn reflector_mirrors_the_store(backend: &StoreUnderTest) {
    let store = connect(backend).await;
    store.create(widget("r1", 1)).await.unwrap();
    let (mut reader, task) = reflector::<Widget>(store.clone());
    tokio::time::timeout(Duration::from_secs(10), reader.wait_until_ready()).await.expect("ready");
    assert_eq!(reader.list().len(), 1);
    let mut r1 = store.require::<Widget>("r1").await.unwrap();
    r1.spec.size = 7;
    store.update(r1).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reader.get("r1").map(|w| w.spec.size) != Some(7) {
        assert!(tokio::time::Instant::now() < deadline, "reflector never saw the update");
        let _ = tokio::time::timeout(Duration::from_millis(500), reader.changed()).await;
    }
    task.abort();
}

async fn lease_keys_vanish_when_the_holder_stops(backend: &StoreUnderTest) {
    let store = connect(backend).await;
    let lease = Lease::grant(store.etcd(), 2).await.unwrap();
    let key = store.key_of::<Widget>("leased");
    let put = shoal_store::proto::PutRequest {
        key: key.clone().into_bytes(),
        value: b"x".to_vec(),
        lease: lease.id(),
        ..Default::default()
    };
    store.etcd().unary(store.etcd().kv().put(put)).await.unwrap();
    // Kept alive past its TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(lease.is_alive());
    assert_eq!(count_keys(&store, &key).await, 1, "a renewed lease keeps its keys");
    drop(lease); // stops renewing: the key goes within TTL (+ expiry granularity)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count_keys(&store, &key).await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "leased key outlived its lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count_keys(store: &Store, key: &str) -> i64 {
    let range =
        shoal_store::proto::RangeRequest { key: key.as_bytes().to_vec(), count_only: true, ..Default::default() };
    store.etcd().unary(store.etcd().kv().range(range)).await.unwrap().count
}

#[tokio::test]
async fn unreachable_store_fails_fast_naming_the_endpoint() {
    let mut config = StoreConfig::for_endpoint("http://127.0.0.1:9");
    config.connect_timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let err = Store::connect(&config).await.err().expect("no store listens on port 9");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains("http://127.0.0.1:9"), "{err}");
}
