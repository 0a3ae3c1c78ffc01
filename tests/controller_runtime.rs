//! The controller runtime and leader election against both backends — the
//! embedded store (a real `shoal store` process) and a real etcd: a
//! reconciler converges status to spec, sees deletions, backs off on
//! errors; one campaigner leads, and a deposed leader's fenced writes fail.

mod support;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal_controllers::runtime::{Action, Backoff, Controller, Decision, Recorder};
use shoal_crd::{ObjectMeta, Resource};
use shoal_store::client::election::{leader, Election};
use shoal_store::client::reflector::reflector;
use shoal_store::client::{Store, StoreError};
use shoal_store::proto::{LeaseRevokeRequest, RangeRequest};
use support::{connect, StoreUnderTest};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A tiny kind: a spec the user writes, a status the controller writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Dial {
    metadata: ObjectMeta,
    spec: DialSpec,
    #[serde(default)]
    status: DialStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
struct DialSpec {
    level: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct DialStatus {
    observed_generation: i64,
}

impl Resource for Dial {
    const KIND: &'static str = "Dial";
    const PLURAL: &'static str = "dials";
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

fn dial(name: &str, level: u32) -> Dial {
    Dial { metadata: ObjectMeta::named(name), spec: DialSpec { level }, status: DialStatus::default() }
}

async_on_both_backends!(
    status_converges_to_every_new_generation,
    a_deleted_object_is_reconciled_once_with_none,
    a_failing_reconcile_is_retried_with_growing_backoff,
    a_mapped_trigger_reconciles_the_key_it_names,
    an_unchanged_object_is_reconciled_again_on_resync,
    one_campaigner_leads_and_resigning_hands_over,
    a_deposed_leader_notices_and_its_fenced_writes_fail,
);

/// What the test reconciler did, for the assertions.
struct Ctx {
    store: Store,
    recorder: Recorder,
    /// Keys reconciled with `None`.
    deleted: Mutex<Vec<String>>,
    /// Each reconcile's key and start.
    attempts: Mutex<Vec<(String, Instant)>>,
    /// Reconciles of a present object that still fail before one succeeds.
    failures_left: Mutex<u32>,
}

impl Ctx {
    fn new(store: Store, failures: u32) -> Arc<Self> {
        Arc::new(Ctx {
            store,
            recorder: Recorder::new("dial-observer"),
            deleted: Mutex::default(),
            attempts: Mutex::default(),
            failures_left: Mutex::new(failures),
        })
    }
}

/// Writes status.observedGeneration = metadata.generation.
async fn observe(key: String, dial: Option<Arc<Dial>>, ctx: Arc<Ctx>) -> Result<Action, StoreError> {
    ctx.attempts.lock().unwrap().push((key.clone(), Instant::now()));
    let Some(dial) = dial else {
        ctx.deleted.lock().unwrap().push(key.clone());
        ctx.recorder.record(&Decision::about_name(&key, "nothing", "deleted"));
        return Ok(Action::await_change());
    };
    {
        let mut left = ctx.failures_left.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return Err(StoreError::Config(format!("injected failure ({} left)", *left)));
        }
    }
    if dial.status.observed_generation == dial.metadata.generation {
        return Ok(Action::await_change());
    }
    let mut next = (*dial).clone();
    next.status.observed_generation = dial.metadata.generation;
    ctx.store.update(next).await?;
    ctx.recorder.record(&Decision::about(&*dial, "observed", "spec changed"));
    Ok(Action::await_change())
}

fn retry_soon(_key: &str, _err: &StoreError, _ctx: &Ctx) -> Action {
    Action::requeue(Duration::ZERO)
}

impl Ctx {
    fn attempts_of(&self, key: &str) -> usize {
        self.attempts.lock().unwrap().iter().filter(|(k, _)| k == key).count()
    }
}

/// Starts the observer controller; dropping the returned sender stops it.
fn start_observer(store: &Store, ctx: Arc<Ctx>) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    start_observer_with(store, ctx, |controller| controller)
}

/// Like [`start_observer`], with extra configuration.
fn start_observer_with(
    store: &Store,
    ctx: Arc<Ctx>,
    configure: impl FnOnce(Controller<Dial>) -> Controller<Dial>,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (reader, _cache) = reflector::<Dial>(store.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let controller = Controller::new("dial-observer", reader)
        .backoff(Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(1) });
    let controller = configure(controller);
    let run = tokio::spawn(controller.run(observe, retry_soon, ctx, async move {
        let _ = stopped.await;
    }));
    (stop, run)
}

/// Polls `check` every 50 ms until it holds; panics after 10 s.
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn observed(store: &Store, name: &str) -> Option<(i64, i64)> {
    let dial = store.get::<Dial>(name).await.unwrap()?;
    Some((dial.metadata.generation, dial.status.observed_generation))
}

async fn status_converges_to_every_new_generation(backend: &StoreUnderTest) {
    let store = connect(backend).await;
    store.create(dial("before-start", 1)).await.unwrap();
    let (stop, run) = start_observer(&store, Ctx::new(store.clone(), 0));
    eventually("an object that existed before the start is observed", || async {
        observed(&store, "before-start").await == Some((1, 1))
    })
    .await;
    let mut current = store.create(dial("d", 1)).await.unwrap();
    for level in 2..=4 {
        current = loop {
            let mut next = store.require::<Dial>("d").await.unwrap();
            next.spec.level = level;
            match store.update(next).await {
                Ok(written) => break written,
                Err(err) if err.is_conflict() => continue, // the controller wrote status meanwhile
                Err(err) => panic!("{err}"),
            }
        };
    }
    assert_eq!(current.metadata.generation, 4);
    eventually("generation 4 is observed", || async { observed(&store, "d").await == Some((4, 4)) }).await;
    drop(stop);
    tokio::time::timeout(Duration::from_secs(5), run).await.expect("stops on shutdown").unwrap();
}

async fn a_deleted_object_is_reconciled_once_with_none(backend: &StoreUnderTest) {
    let store = connect(backend).await;
    let ctx = Ctx::new(store.clone(), 0);
    let (_stop, _run) = start_observer(&store, ctx.clone());
    store.create(dial("gone", 1)).await.unwrap();
    eventually("it is observed", || async { observed(&store, "gone").await == Some((1, 1)) }).await;
    assert!(store.delete::<Dial>("gone", None).await.unwrap());
    eventually("the deletion is reconciled", || async { !ctx.deleted.lock().unwrap().is_empty() }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*ctx.deleted.lock().unwrap(), ["gone"], "exactly one reconcile with None");
}

async fn a_failing_reconcile_is_retried_with_growing_backoff(backend: &StoreUnderTest) {
    let store = connect(backend).await;
    let ctx = Ctx::new(store.clone(), 4);
    store.create(dial("flaky", 1)).await.unwrap();
    let (_stop, _run) = start_observer(&store, ctx.clone());
    eventually("it is observed after four failures", || async { observed(&store, "flaky").await == Some((1, 1)) })
        .await;
    let attempts: Vec<Instant> = ctx.attempts.lock().unwrap().iter().map(|(_, at)| *at).collect();
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    // Four failures wait 50, 100, 200, 400 ms; then the success writes status.
    for (i, gap) in gaps.iter().take(4).enumerate() {
        let backoff = Duration::from_millis(50) * 2u32.pow(i as u32);
        assert!(*gap >= backoff, "retry {i} came after {gap:?}, before its backoff {backoff:?}: {gaps:?}");
    }
    assert!(gaps[3] > gaps[0] * 4, "the backoff grows: {gaps:?}");
}

async fn a_mapped_trigger_reconciles_the_key_it_names(backend: &StoreUnderTest) {
    let store = connect(backend).await;
    let ctx = Ctx::new(store.clone(), 0);
    // Dials labelled `follows=X` trigger X — here X does not exist, so the
    // only way it is reconciled (with None) is through the mapper.
    let (followers, _cache) = reflector::<Dial>(store.clone());
    let (_stop, _run) = start_observer_with(&store, ctx.clone(), |controller| {
        controller.watches(followers, |dial: &Dial| dial.metadata.labels.get("follows").cloned().into_iter().collect())
    });
    let mut follower = dial("follower", 1);
    follower.metadata.labels.insert("follows".into(), "ghost".into());
    store.create(follower).await.unwrap();
    eventually("the named key is reconciled", || async { ctx.deleted.lock().unwrap().contains(&"ghost".to_string()) })
        .await;
}

async fn an_unchanged_object_is_reconciled_again_on_resync(backend: &StoreUnderTest) {
    let store = connect(backend).await;
    let ctx = Ctx::new(store.clone(), 0);
    store.create(dial("still", 1)).await.unwrap();
    let (_stop, _run) =
        start_observer_with(&store, ctx.clone(), |controller| controller.resync_every(Duration::from_millis(200)));
    eventually("it is observed", || async { observed(&store, "still").await == Some((1, 1)) }).await;
    let before = ctx.attempts_of("still");
    eventually("resync reconciles it twice more", || async { ctx.attempts_of("still") >= before + 2 }).await;
}

async fn campaign(election: &Election) -> shoal_store::client::election::Leadership {
    tokio::time::timeout(Duration::from_secs(10), election.campaign()).await.expect("elected within 10 s").unwrap()
}

async fn one_campaigner_leads_and_resigning_hands_over(backend: &StoreUnderTest) {
    let (a, b) = (connect(backend).await, connect(backend).await);
    let first = campaign(&Election::new(a.clone(), "ctl", "one", 2)).await;
    assert_eq!(leader(&a, "ctl").await.unwrap().as_deref(), Some("one"));
    let second = tokio::spawn(async move { Election::new(b, "ctl", "two", 2).campaign().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "only one leader at a time");

    first.store().create(dial("by-one", 1)).await.expect("the leader's fenced write succeeds");
    let deposed = first.store();
    first.resign().await.unwrap();
    let second =
        tokio::time::timeout(Duration::from_secs(5), second).await.expect("handed over at once").unwrap().unwrap();
    assert_eq!(leader(&a, "ctl").await.unwrap().as_deref(), Some("two"));
    let err = deposed.create(dial("by-deposed", 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::FenceLost), "{err}");
    second.store().create(dial("by-two", 1)).await.expect("the new leader writes");
}

async fn a_deposed_leader_notices_and_its_fenced_writes_fail(backend: &StoreUnderTest) {
    let (a, b) = (connect(backend).await, connect(backend).await);
    let first = campaign(&Election::new(a.clone(), "ctl", "one", 2)).await;
    let written = first.store().create(dial("contested", 1)).await.unwrap();
    let deposed = first.store();

    // The server ends the first leader's lease behind its back, as expiry would.
    expire_leader_lease(&a, "ctl").await;
    tokio::time::timeout(Duration::from_secs(5), first.lost()).await.expect("loss noticed within 5 s");
    assert!(!first.is_leader());
    let second = campaign(&Election::new(b, "ctl", "two", 2)).await;

    let mut stale = written.clone();
    stale.spec.level = 99;
    let err = deposed.update(stale).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(a.require::<Dial>("contested").await.unwrap().spec.level, 1, "the deposed write changed nothing");
    let mut fresh = written;
    fresh.spec.level = 2;
    second.store().update(fresh).await.expect("the new leader's write succeeds");
    drop(first);
}

/// Revokes the lease the election key is attached to.
async fn expire_leader_lease(store: &Store, name: &str) {
    let etcd = store.etcd();
    let key = format!("{}/election/{name}", store.prefix()).into_bytes();
    let range = etcd.unary(etcd.kv().range(RangeRequest { key: key.clone(), ..Default::default() })).await.unwrap();
    let lease = range.kvs.first().expect("the election key exists").lease;
    assert_ne!(lease, 0, "the election key is attached to a lease");
    etcd.unary(etcd.lease().lease_revoke(LeaseRevokeRequest { id: lease })).await.unwrap();
}
