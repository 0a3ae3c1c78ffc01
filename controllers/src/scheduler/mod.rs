//! The scheduler loop: gives every unassigned task of a service a node.
//!
//! One reconcile per service places all of its waiting tasks at once
//! (SwarmKit batches the same way) and writes the assignments in few
//! multi-object transactions. A task that fits nowhere stays `pending`
//! with Docker's explanation in its status message, and is tried again
//! when nodes or other tasks change.
//!
//! - [`constraints`]: `node.labels.zone==a` and friends.
//! - [`placement`]: filters and spread, pure.
//!
//! # Guarantees
//! - Only tasks without a node, desired running, are touched; a task's node
//!   is never changed once set (moving work is the service loop's job: it
//!   replaces the task).
//! - Services are scheduled one at a time, each on a cache that shows every
//!   earlier assignment of this scheduler (see [`crate::expectations`]), so
//!   loads and reservations are not double-counted across services.

pub mod constraints;
pub mod placement;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use shoal_crd::{Service, Task, TaskState, TaskStatus};
use shoal_store::client::{Store, StoreError};

use crate::caches::Caches;
use crate::expectations::Expectations;
use crate::runtime::{Action, Controller, Decision, Recorder};
use crate::tasks::{state_of, TaskView};
use crate::writes::Batch;
use placement::{Candidate, Demand};

/// The controller's name in logs and events.
pub const NAME: &str = "scheduler";

/// All writes of the scheduler share one expectation key: each reconcile
/// must see every earlier assignment, whatever service it was for.
const ALL: &str = "*";

/// What the scheduler's reconciles share.
pub struct Context {
    pub store: Store,
    pub caches: Caches,
    pub recorder: Recorder,
    expectations: Expectations,
    /// Services left with unplaceable tasks: retried on any node or task change.
    waiting: Mutex<BTreeSet<String>>,
}

impl Context {
    pub fn new(store: Store, caches: Caches) -> Self {
        Self {
            store,
            caches,
            recorder: Recorder::new(NAME),
            expectations: Expectations::new(),
            waiting: Mutex::default(),
        }
    }

    fn waiting(&self) -> Vec<String> {
        self.waiting.lock().expect("waiting lock").iter().cloned().collect()
    }

    fn set_waiting(&self, service: &str, waiting: bool) {
        let mut set = self.waiting.lock().expect("waiting lock");
        if waiting {
            set.insert(service.to_string());
        } else {
            set.remove(service);
        }
    }
}

/// Runs the scheduler until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    let caches = ctx.caches.clone();
    let (on_task, on_node, on_observation) = (ctx.clone(), ctx.clone(), ctx.clone());
    Controller::new(NAME, caches.services.clone())
        .watches(caches.tasks.clone(), move |task: &Task| {
            let mut keys = on_task.waiting();
            if task.spec.node_id.is_none() {
                keys.push(task.spec.service_name.clone());
            }
            keys
        })
        .watches(caches.nodes.clone(), move |_| on_node.waiting())
        .watches(caches.observations.clone(), move |_| on_observation.waiting())
        // One at a time: each placement must see the previous one's loads.
        .concurrency(1)
        .run(reconcile, |_, _: &StoreError, _| Action::requeue(Duration::from_millis(200)), ctx, shutdown)
        .await;
}

/// Places the waiting tasks of `service`.
pub async fn reconcile(key: String, service: Option<Arc<Service>>, ctx: Arc<Context>) -> Result<Action, StoreError> {
    ctx.expectations.wait(ALL, &ctx.caches.tasks, Duration::from_secs(3)).await;
    let caches = &ctx.caches;
    let mut waiting: Vec<TaskView> = caches
        .tasks
        .group(&key)
        .into_iter()
        .filter(|t| t.spec.node_id.is_none() && t.spec.desired_state <= TaskState::Running)
        .map(|t| TaskView::observe(t, &caches.observations))
        .filter(|t| !t.state.is_terminal())
        .collect();
    if waiting.is_empty() {
        ctx.set_waiting(&key, false);
        return Ok(Action::await_change());
    }
    waiting.sort_by_key(|t| (t.task.spec.slot, t.task.metadata.created_at, t.name().to_string()));

    let mut candidates = candidates(caches, &key);
    let mut batch = Batch::new();
    let mut assigned: BTreeMap<String, usize> = BTreeMap::new();
    let mut pending: Vec<String> = Vec::new();
    // Tasks of one service may carry different spec snapshots (during an
    // update): place each generation with its own demand.
    let mut by_generation: BTreeMap<i64, Vec<&TaskView>> = BTreeMap::new();
    for task in &waiting {
        by_generation.entry(task.task.spec.service_generation).or_default().push(task);
    }
    let now = Utc::now();
    for tasks in by_generation.values() {
        let placed = match Demand::of(&tasks[0].task.spec.spec) {
            Ok(demand) => placement::place(&demand, &mut candidates, tasks.len()),
            Err(err) => tasks.iter().map(|_| Err(err.to_string())).collect(),
        };
        for (view, placed) in tasks.iter().zip(placed) {
            let task = &view.task;
            let mut next = (**task).clone();
            let status = match placed {
                Ok(node) => {
                    *assigned.entry(node.clone()).or_default() += 1;
                    next.spec.node_id = Some(node);
                    TaskStatus { state: TaskState::Assigned, timestamp: Some(now), ..TaskStatus::default() }
                }
                Err(reason) => {
                    let current = task.status.clone().unwrap_or_default();
                    if current.state == TaskState::Pending && current.message == reason {
                        continue;
                    }
                    pending.push(reason.clone());
                    TaskStatus {
                        state: TaskState::Pending,
                        message: reason,
                        timestamp: Some(now),
                        ..TaskStatus::default()
                    }
                }
            };
            next.status = Some(status);
            batch.update(&ctx.store, &**task, next);
        }
    }
    let still_waiting = waiting.len() - assigned.values().sum::<usize>();
    ctx.set_waiting(&key, still_waiting > 0);
    if batch.is_empty() {
        return Ok(Action::await_change());
    }
    let written = batch.commit(&ctx.store, &format!("task assignments of service {key}")).await?;
    ctx.expectations.expect(ALL, written);
    record(&ctx.recorder, service.as_deref(), &key, &assigned, &pending);
    Ok(Action::await_change())
}

/// Every node with the load it carries, counted for `service`.
fn candidates(caches: &Caches, service: &str) -> Vec<Candidate> {
    let mut by_name: HashMap<String, Candidate> =
        caches.nodes.list().into_iter().map(|n| (n.metadata.name.clone(), Candidate::idle(n))).collect();
    for task in caches.tasks.list() {
        let Some(candidate) = task.spec.node_id.as_ref().and_then(|n| by_name.get_mut(n)) else { continue };
        if state_of(&task, &caches.observations).is_terminal() {
            continue;
        }
        // A task told to stop still holds its reservation until it has stopped.
        if let Some(reservations) = &task.spec.spec.resources.reservations {
            candidate.reserved_cpus += reservations.cpus.unwrap_or(0.0);
            candidate.reserved_memory += reservations.memory.unwrap_or(0);
        }
        if task.spec.desired_state <= TaskState::Running {
            candidate.total_tasks += 1;
            if task.spec.service_name == service {
                candidate.service_tasks += 1;
            }
        }
    }
    let mut candidates: Vec<Candidate> = by_name.into_values().collect();
    candidates.sort_by(|a, b| a.node.metadata.name.cmp(&b.node.metadata.name));
    candidates
}

fn record(
    recorder: &Recorder,
    service: Option<&Service>,
    key: &str,
    assigned: &BTreeMap<String, usize>,
    pending: &[String],
) {
    let decide = |action: String, reason: String| match service {
        Some(service) => Decision::about(service, action, reason),
        None => Decision::about_name(key, action, reason),
    };
    if !assigned.is_empty() {
        let total: usize = assigned.values().sum();
        let spread: Vec<String> = assigned.iter().map(|(node, n)| format!("{node}={n}")).collect();
        recorder
            .record(&decide(format!("assigned {total} task(s)"), format!("spread over nodes: {}", spread.join(", "))));
    }
    if let Some(reason) = pending.first() {
        recorder.record(&decide(format!("{} task(s) pending", pending.len()), reason.clone()));
    }
}
