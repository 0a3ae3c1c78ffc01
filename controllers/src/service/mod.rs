//! The service loop, SwarmKit's replicated and global orchestrators in
//! one reconcile: keeps the right tasks desired running for each service.
//!
//! - [`slots`]: the plan (which tasks to create, stop, delete), pure.
//! - [`restart`]: restart policy decisions, pure.
//! - [`history`]: task history retention, pure.
//! - [`remove`]: a deleted service's tasks are stopped, then deleted.
//!
//! Writes: Task objects (create; `desiredState`; delete) and the Service's
//! status (`observedGeneration`, `runningReplicas`, `desiredReplicas`).
//! Never a task's node (the scheduler's) nor any observation (agents').
//!
//! # Guarantees
//! - A reconcile plans on a cache that shows this loop's own earlier
//!   writes for the service (see [`crate::expectations`]), so a slot is
//!   never filled twice because the cache lagged.
//! - Every write is compare-and-swap on the leader's fenced store.

pub mod history;
pub mod remove;
pub mod restart;
pub mod slots;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shoal_crd::{Service, ServiceMode, ServiceStatus, Task, TaskObservation, TaskState};
use shoal_store::client::{Store, StoreError};

use crate::caches::Caches;
use crate::expectations::Expectations;
use crate::runtime::{Action, Controller, Decision, Recorder};
use crate::scheduler::constraints::{all_match, Constraint};
use crate::tasks::{new_task, shut_down, tasks_of, NodeCondition, TaskView};
use crate::writes::Batch;
use slots::{Inputs, Slot, Want};

/// The controller's name in logs and events.
pub const NAME: &str = "service";

/// Docker's default `task-history-limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 5;

/// What the service loop's reconciles share.
pub struct Context {
    pub store: Store,
    pub caches: Caches,
    pub recorder: Recorder,
    /// Finished tasks kept per slot.
    pub history_limit: usize,
    expectations: Expectations,
}

impl Context {
    pub fn new(store: Store, caches: Caches, history_limit: usize) -> Self {
        Self { store, caches, recorder: Recorder::new(NAME), history_limit, expectations: Expectations::new() }
    }
}

/// Runs the service loop until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    let caches = ctx.caches.clone();
    let (by_task, services) = (caches.clone(), caches.services.clone());
    Controller::new(NAME, caches.services.clone())
        .watches(caches.tasks.clone(), |task: &Task| vec![task.spec.service_name.clone()])
        .watches(caches.observations.clone(), move |o: &TaskObservation| {
            by_task.service_of_task(&o.metadata.name).into_iter().collect()
        })
        // Node changes matter to global services and to services with tasks there;
        // every service is the simple, safe answer at Swarm's scale.
        .watches(caches.nodes.clone(), move |_| services.list().iter().map(|s| s.metadata.name.clone()).collect())
        .resync_every(Duration::from_secs(30))
        .run(reconcile, |_, _: &StoreError, _| Action::requeue(Duration::from_millis(200)), ctx, shutdown)
        .await;
}

/// Reconciles one service (or the tasks of a deleted one).
pub async fn reconcile(key: String, service: Option<Arc<Service>>, ctx: Arc<Context>) -> Result<Action, StoreError> {
    ctx.expectations.wait(&key, &ctx.caches.tasks, Duration::from_secs(3)).await;
    let tasks = tasks_of(&key, &ctx.caches.tasks, &ctx.caches.observations);
    let Some(service) = service else {
        return remove::reconcile(&key, &tasks, &ctx).await;
    };
    // Looked up per task, not collected per reconcile: a service has far
    // fewer tasks than a large cluster has nodes.
    let node = |name: &str| NodeCondition::of(ctx.caches.nodes.get(name).as_deref());
    let (wanted, retired) = match wanted_slots(&service, &ctx.caches) {
        Ok(wanted) => wanted,
        Err(reason) => {
            ctx.recorder.record(&Decision::about(&*service, "nothing", reason));
            return Ok(Action::await_change());
        }
    };
    let now = Utc::now();
    let plan = slots::plan(&Inputs {
        generation: service.metadata.generation,
        restart: &service.spec.restart_policy,
        tasks: &tasks,
        slots: wanted,
        node: &node,
        history_limit: ctx.history_limit,
        retired: &retired,
        now,
    });

    let mut batch = Batch::new();
    let by_name: HashMap<&str, &TaskView> = tasks.iter().map(|t| (t.name(), t)).collect();
    for (name, _) in &plan.shutdown {
        if let Some(task) = by_name.get(name.as_str()) {
            batch.update(&ctx.store, &*task.task, shut_down(&task.task));
        }
    }
    for name in &plan.delete {
        if let Some(task) = by_name.get(name.as_str()) {
            batch.delete(&ctx.store, &*task.task);
        }
    }
    // New tasks record the versions of the configs and secrets they use.
    let template = ctx.caches.resolved(&service);
    for slot in &plan.create {
        let task = match slot {
            Slot::Replica(n) => new_task(&template, Some(*n), None, now),
            Slot::Node(node) => new_task(&template, None, Some(node), now),
        };
        batch.create(&ctx.store, task);
    }
    if !batch.is_empty() {
        let written = batch.commit(&ctx.store, &format!("tasks of service {key}")).await?;
        ctx.expectations.expect(&key, written);
    }
    for (action, reason) in &plan.decisions {
        ctx.recorder.record(&Decision::about(&*service, action.clone(), reason.clone()));
    }
    if !plan.delete.is_empty() {
        let reason = format!("task history limit {} per slot", ctx.history_limit);
        ctx.recorder.record(&Decision::about(&*service, format!("deleted {} old task(s)", plan.delete.len()), reason));
    }
    write_status(&ctx, &service, &tasks, &plan).await?;
    Ok(plan.requeue_after.map_or(Action::await_change(), Action::requeue))
}

/// The slots `service` wants, and the reason given for retiring others.
fn wanted_slots(service: &Service, caches: &Caches) -> Result<(BTreeMap<Slot, Want>, String), String> {
    match service.spec.mode {
        ServiceMode::Replicated => {
            let replicas = service.spec.replicas.unwrap_or(1);
            let slots = (1..=replicas).map(|n| (Slot::Replica(n), Want::Fill)).collect();
            Ok((slots, format!("scaled to {replicas} replica(s)")))
        }
        ServiceMode::Global => {
            let constraints = Constraint::parse_all(&service.spec.placement.constraints).map_err(|e| e.to_string())?;
            let mut slots = BTreeMap::new();
            for node in caches.nodes.list() {
                if !all_match(&constraints, &node) {
                    continue;
                }
                let want = match NodeCondition::of(Some(&node)) {
                    NodeCondition::Active => Want::Fill,
                    NodeCondition::Paused => Want::Keep,
                    NodeCondition::Drained | NodeCondition::Down => continue,
                };
                slots.insert(Slot::Node(node.metadata.name.clone()), want);
            }
            Ok((slots, "node no longer eligible (down, drained or not matching constraints)".to_string()))
        }
    }
}

/// Writes the service's status when it changed: replicas wanted and
/// running, and the generation acted on.
async fn write_status(
    ctx: &Context,
    service: &Service,
    tasks: &[TaskView],
    plan: &slots::Plan,
) -> Result<(), StoreError> {
    let running = tasks.iter().filter(|t| t.wanted() && t.state == TaskState::Running).count() as u64;
    let desired = match service.spec.mode {
        ServiceMode::Replicated => service.spec.replicas.unwrap_or(1),
        ServiceMode::Global => {
            let live = tasks.iter().filter(|t| t.wanted()).count() + plan.create.len();
            live.saturating_sub(plan.shutdown.len()) as u64
        }
    };
    let current = service.status.clone().unwrap_or_default();
    let status = ServiceStatus {
        observed_generation: service.metadata.generation,
        running_replicas: running,
        desired_replicas: desired,
        ..current.clone()
    };
    if status == current {
        return Ok(());
    }
    let mut next = service.clone();
    next.status = Some(status);
    match ctx.store.update(next).await {
        // The service changed meanwhile: that change queues another reconcile.
        Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => Ok(()),
        other => other.map(|_| ()),
    }
}

#[cfg(test)]
mod tests;
