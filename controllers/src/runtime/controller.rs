//! The controller: reflector changes, extra triggers and a periodic resync
//! feed a [`WorkQueue`]; a runner hands its keys to the reconciler, which
//! reads the *current* cached object, and turns the answer into the next
//! schedule.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use futures::FutureExt;
use shoal_crd::Resource;
use shoal_store::client::reflector::Reader;
use tokio::task::{Id, JoinSet};

use super::queue::{Backoff, Outcome, WorkQueue};

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile this object again after `after`, even if nothing changes
    /// (for polling external state, or checking a deadline).
    pub fn requeue(after: Duration) -> Self {
        Self { requeue_after: Some(after) }
    }

    /// Nothing to do until the object (or a trigger of it) changes.
    pub fn await_change() -> Self {
        Self { requeue_after: None }
    }

    /// The requested delay, if any.
    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// Starts a feeder: a future that queues keys until it is dropped.
type Feeder = Box<dyn FnOnce(Arc<WorkQueue>) -> BoxFuture<'static, ()> + Send>;

/// A reconcile loop over kind `R`, configured by chained calls and started
/// by [`Controller::run`].
pub struct Controller<R: Resource> {
    name: String,
    reader: Reader<R>,
    feeders: Vec<Feeder>,
    gates: Vec<BoxFuture<'static, ()>>,
    resync: Option<Duration>,
    concurrency: usize,
    backoff: Backoff,
}

impl<R: Resource> Controller<R> {
    /// A controller named `name` (as its log lines say) reconciling every
    /// object in `reader`'s cache, one reconcile whenever one changes.
    pub fn new(name: &str, reader: Reader<R>) -> Self {
        let mut controller = Self {
            name: name.to_string(),
            reader: reader.clone(),
            feeders: Vec::new(),
            gates: Vec::new(),
            resync: None,
            concurrency: 4,
            backoff: Backoff::default(),
        };
        controller.add_trigger(reader, |object: &R| vec![object.metadata().name.clone()]);
        controller
    }

    /// Also reconciles the keys `mapper` names for every changed object of
    /// another kind (e.g. a Task → its Service). A changed object is mapped
    /// both as it was and as it is, so a key it left is reconciled too.
    /// The first reconcile also waits for this reader to be ready.
    pub fn watches<O: Resource>(
        mut self,
        reader: Reader<O>,
        mapper: impl Fn(&O) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.add_trigger(reader, mapper);
        self
    }

    /// Also reconciles every key `keys` yields — for sources that are not a
    /// kind, such as node heartbeat keys. The first reconcile also waits
    /// for `ready` (e.g. the source's first complete list).
    pub fn triggers(
        mut self,
        ready: impl Future<Output = ()> + Send + 'static,
        keys: impl futures::Stream<Item = String> + Send + 'static,
    ) -> Self {
        self.gates.push(ready.boxed());
        self.feeders.push(Box::new(move |queue| {
            async move {
                let mut keys = std::pin::pin!(keys);
                while let Some(key) = futures::StreamExt::next(&mut keys).await {
                    queue.enqueue(&key);
                }
            }
            .boxed()
        }));
        self
    }

    /// Also reconciles every cached object each `period` (catches anything
    /// a missed change or an outside effect left undone).
    pub fn resync_every(mut self, period: Duration) -> Self {
        self.resync = Some(period);
        self
    }

    /// At most `n` objects are reconciled at once (default 4).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// The per-object backoff after failures (default 100 ms doubling to 60 s).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    fn add_trigger<O: Resource>(
        &mut self,
        reader: Reader<O>,
        mapper: impl Fn(&O) -> Vec<String> + Send + Sync + 'static,
    ) {
        let mut gate = reader.clone();
        self.gates.push(async move { gate.wait_until_ready().await }.boxed());
        self.feeders.push(Box::new(move |queue| feed(reader, mapper, queue).boxed()));
    }

    /// Runs until `shutdown` resolves: waits for every reader's first list,
    /// then reconciles. On shutdown no new reconcile starts and the ones in
    /// flight are allowed to finish.
    ///
    /// `reconcile(key, current object or None if deleted, ctx)`; on `Err`,
    /// `error_policy(key, err, ctx)` says when to retry — never sooner than
    /// the key's backoff.
    pub async fn run<C, E, Rec, Fut, Pol>(
        self,
        reconcile: Rec,
        error_policy: Pol,
        ctx: Arc<C>,
        shutdown: impl Future<Output = ()>,
    ) where
        C: Send + Sync + 'static,
        E: std::fmt::Display + Send + 'static,
        Rec: Fn(String, Option<Arc<R>>, Arc<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        Pol: Fn(&str, &E, &C) -> Action + Send + Sync + 'static,
    {
        let Controller { name, reader, feeders, gates, resync, concurrency, backoff } = self;
        let name: Arc<str> = name.into();
        let queue = Arc::new(WorkQueue::new(concurrency, backoff));
        let reconcile = Arc::new(reconcile);
        let error_policy = Arc::new(error_policy);
        tokio::pin!(shutdown);

        // Dropping this set (on return) stops every feeder.
        let mut feeding = JoinSet::new();
        for feeder in feeders {
            feeding.spawn(feeder(queue.clone()));
        }
        if let Some(period) = resync {
            feeding.spawn(resync_loop(reader.clone(), period, queue.clone()));
        }

        tokio::select! {
            _ = join_all(gates) => {}
            _ = &mut shutdown => return,
        }
        tracing::info!(controller = %name, "caches ready; reconciling");

        let mut running: JoinSet<()> = JoinSet::new();
        let mut keys: HashMap<Id, String> = HashMap::new();
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(joined) = running.join_next_with_id() => settle(&name, &queue, &mut keys, joined),
                key = queue.next() => {
                    let object = reader.get(&key);
                    let run = reconcile_one(
                        name.clone(), key.clone(), object, ctx.clone(), queue.clone(),
                        reconcile.clone(), error_policy.clone(),
                    );
                    keys.insert(running.spawn(run).id(), key);
                }
            }
        }
        tracing::info!(controller = %name, in_flight = running.len(), "shutting down");
        while let Some(joined) = running.join_next_with_id().await {
            settle(&name, &queue, &mut keys, joined);
        }
    }
}

/// Longest a reconcile may run before it is abandoned and retried (every
/// store call inside has its own, shorter deadline; this guards the rest).
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(30);

/// One reconcile of `key`, ending with [`WorkQueue::finish`].
async fn reconcile_one<R, C, E, Rec, Fut, Pol>(
    controller: Arc<str>,
    key: String,
    object: Option<Arc<R>>,
    ctx: Arc<C>,
    queue: Arc<WorkQueue>,
    reconcile: Arc<Rec>,
    error_policy: Arc<Pol>,
) where
    E: std::fmt::Display,
    Rec: Fn(String, Option<Arc<R>>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, E>>,
    Pol: Fn(&str, &E, &C) -> Action,
{
    let deleted = object.is_none();
    let Ok(result) = tokio::time::timeout(RECONCILE_TIMEOUT, reconcile(key.clone(), object, ctx.clone())).await else {
        // A reconcile must not hold its key forever: give it up and retry.
        let retry = queue.finish(&key, Outcome::Failed(Some(Duration::ZERO)));
        tracing::error!(controller = %controller, object = %key, timeout = ?RECONCILE_TIMEOUT, retry_in = ?retry, "reconcile timed out");
        return;
    };
    match result {
        Ok(action) => {
            let requeue = queue.finish(&key, Outcome::Done(action.requeue_after()));
            tracing::debug!(controller = %controller, object = %key, deleted, requeue = ?requeue, "reconciled");
        }
        Err(err) => {
            let action = error_policy(&key, &err, &ctx);
            let retry = queue.finish(&key, Outcome::Failed(action.requeue_after()));
            tracing::warn!(controller = %controller, object = %key, error = %err, retry_in = ?retry, "reconcile failed");
        }
    }
}

/// Handles a finished reconcile task; a panicked one is finished here as
/// a failure so its key is not stuck "being reconciled" forever.
fn settle(
    controller: &str,
    queue: &WorkQueue,
    keys: &mut HashMap<Id, String>,
    joined: Result<(Id, ()), tokio::task::JoinError>,
) {
    let id = match &joined {
        Ok((id, ())) => *id,
        Err(err) => err.id(),
    };
    let Some(key) = keys.remove(&id) else { return };
    if let Err(err) = joined {
        let retry = queue.finish(&key, Outcome::Failed(Some(Duration::ZERO)));
        tracing::error!(controller, object = %key, error = %err, retry_in = ?retry, "reconcile panicked");
    }
}

/// Queues `mapper`'s keys for every object that appeared, changed (by
/// resourceVersion) or vanished since the last look. Level-triggered: the
/// cache is diffed, so coalesced notifications lose nothing.
async fn feed<O: Resource>(mut reader: Reader<O>, mapper: impl Fn(&O) -> Vec<String>, queue: Arc<WorkQueue>) {
    reader.wait_until_ready().await;
    let mut seen: Vec<Arc<O>> = Vec::new();
    loop {
        let found = diff(&mut seen, reader.list(), |object| enqueue_all(&queue, mapper(object)));
        if !found {
            // `changed()` returns at once forever when the reflector is
            // gone; pausing after a wake-up that found nothing keeps that
            // from spinning and costs a real change nothing.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reader.changed().await;
    }
}

/// Replaces `seen` with `current`, calling `touched` with each object that
/// is new, and with both versions of each changed or deleted one. True when
/// anything differed.
///
/// Both lists are sorted by name (as [`Reader::list`] returns them), so one
/// merge pass finds the differences; and the cache hands out the same `Arc`
/// until it replaces an object, so an unchanged object costs a pointer
/// compare — no lookup, no copy of its name. This runs on every cache
/// change, for every watched kind: with tens of thousands of tasks it must
/// stay cheap.
fn diff<O: Resource>(seen: &mut Vec<Arc<O>>, current: Vec<Arc<O>>, mut touched: impl FnMut(&O)) -> bool {
    use std::cmp::Ordering;
    let mut found = false;
    let (mut old, mut new) = (seen.iter().peekable(), current.iter().peekable());
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(o), Some(n)) if Arc::ptr_eq(o, n) => {
                old.next();
                new.next();
                continue;
            }
            (Some(o), Some(n)) => o.metadata().name.cmp(&n.metadata().name),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
        };
        match order {
            // The same object, maybe replaced by an equal version (a relist).
            Ordering::Equal => {
                let (o, n) = (old.next().expect("peeked"), new.next().expect("peeked"));
                if o.metadata().resource_version != n.metadata().resource_version {
                    touched(o);
                    touched(n);
                    found = true;
                }
            }
            // Only in `seen`: deleted.
            Ordering::Less => {
                touched(old.next().expect("peeked"));
                found = true;
            }
            // Only in `current`: new.
            Ordering::Greater => {
                touched(new.next().expect("peeked"));
                found = true;
            }
        }
    }
    *seen = current;
    found
}

fn enqueue_all(queue: &WorkQueue, keys: Vec<String>) {
    for key in keys {
        queue.enqueue(&key);
    }
}

/// Queues every cached object each `period`.
async fn resync_loop<R: Resource>(reader: Reader<R>, period: Duration, queue: Arc<WorkQueue>) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        ticks.tick().await;
        for object in reader.list() {
            queue.enqueue(&object.metadata().name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crd::{Node, NodeSpec};

    fn node(name: &str, revision: i64) -> Arc<Node> {
        let mut node = Node::new(name, NodeSpec::default());
        node.metadata.resource_version = revision;
        Arc::new(node)
    }

    fn touched(seen: &mut Vec<Arc<Node>>, current: Vec<Arc<Node>>) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        diff(seen, current, |n| out.push((n.metadata.name.clone(), n.metadata.resource_version)));
        out.sort();
        out
    }

    #[test]
    fn diff_reports_new_changed_and_deleted_objects_but_not_unchanged_ones() {
        let (a, b, c) = (node("a", 1), node("b", 1), node("c", 1));
        let mut seen = Vec::new();
        assert_eq!(touched(&mut seen, vec![a.clone(), b.clone(), c.clone()]).len(), 3);
        // b changed, c deleted, d new; a is the same Arc.
        let current = vec![a.clone(), node("b", 2), node("d", 1)];
        assert_eq!(touched(&mut seen, current), [("b".into(), 1), ("b".into(), 2), ("c".into(), 1), ("d".into(), 1)]);
        // A relist hands out new Arcs of equal versions: nothing changed.
        let relisted = vec![node("a", 1), node("b", 2), node("d", 1)];
        assert!(touched(&mut seen, relisted).is_empty());
        assert!(!diff(&mut seen, vec![node("a", 1), node("b", 2), node("d", 1)], |_| {}));
    }
}
