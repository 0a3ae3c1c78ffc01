//! The update loop, SwarmKit's updater as a reconcile: rolls a service's
//! new task template out slot by slot (parallelism, delay, order, monitor,
//! max failure ratio, failure action, progress deadline), rolls back on
//! failure when asked to, and keeps every generation's spec as a
//! [`ServiceRevision`].
//!
//! - [`plan`]: the rolling update's state machine, pure.
//! - [`revisions`]: which revisions to record, keep and roll back to, pure.
//!
//! Writes: the Service's `status.updateStatus`, and its spec only for an
//! automatic rollback (compare-and-swap, as Swarm's manager does); Task
//! objects (`desiredState` of replaced tasks; start-first replacements);
//! ServiceRevision objects (sole writer).
//!
//! # Rotation
//! New tasks record the version of each config and secret they mount
//! ([`crate::caches::Caches::resolved`]); the plan compares tasks with the
//! service's spec resolved the same way. A new version (`shoal secret
//! rotate`) is thus a change of the template like a new image: this loop
//! watches Configs and Secrets and rolls every service using one, with
//! that service's update config, and says so in one decision
//! (`secret db-password v2: rolling web (4 tasks)`).
//!
//! # Sharing slots with the service loop
//! The service loop fills empty slots, restarts tasks that ended and
//! replaces tasks of down nodes — always with the current spec. This loop
//! only replaces tasks whose spec is out of date: stop-first by telling the
//! old task to stop (the service loop starts its successor once it has
//! stopped), start-first by creating the successor itself and stopping the
//! old task once the new one is ready. The service loop leaves such a
//! handover alone ([`crate::service::slots`]).
//!
//! # Guarantees
//! - Everything an update remembers is in `status.updateStatus`: a new
//!   leader continues where the old one stopped.
//! - A reconcile plans on a cache that shows this loop's own earlier
//!   writes (see [`crate::expectations`]).

pub mod plan;
pub mod revisions;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shoal_crd::{
    Config, FileKind, Resource, Secret, Service, ServiceRevision, Task, TaskObservation, UpdateState, UpdateStatus,
};
use shoal_store::client::reflector::Reader;
use shoal_store::client::{Store, StoreError};

use crate::caches::Caches;
use crate::expectations::Expectations;
use crate::runtime::{Action, Controller, Decision, Recorder};
use crate::service::slots::Slot;
use crate::tasks::{new_task, shut_down, tasks_of, TaskView};
use crate::writes::{Batch, Written};

/// The controller's name in logs and events.
pub const NAME: &str = "update";

/// What the update loop's reconciles share.
pub struct Context {
    pub store: Store,
    pub caches: Caches,
    pub revisions: Reader<ServiceRevision>,
    pub recorder: Recorder,
    /// Revisions kept per service.
    pub revision_limit: usize,
    task_writes: Expectations,
    service_writes: Expectations,
}

impl Context {
    pub fn new(store: Store, caches: Caches, revisions: Reader<ServiceRevision>, revision_limit: usize) -> Self {
        Self {
            store,
            caches,
            revisions,
            recorder: Recorder::new(NAME),
            revision_limit,
            task_writes: Expectations::new(),
            service_writes: Expectations::new(),
        }
    }
}

/// Runs the update loop until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    let caches = ctx.caches.clone();
    let (by_config, by_secret) = (caches.clone(), caches.clone());
    Controller::new(NAME, caches.services.clone())
        .watches(caches.tasks.clone(), |task: &Task| vec![task.spec.service_name.clone()])
        .watches(caches.observations.clone(), move |o: &TaskObservation| {
            caches.service_of_task(&o.metadata.name).into_iter().collect()
        })
        .watches(ctx.revisions.clone(), |r: &ServiceRevision| vec![r.spec.service.clone()])
        // A new version of a config or secret rolls the services using it.
        .watches(ctx.caches.configs.clone(), move |c: &Config| {
            by_config.services_using(FileKind::Config, &c.metadata.name)
        })
        .watches(ctx.caches.secrets.clone(), move |s: &Secret| {
            by_secret.services_using(FileKind::Secret, &s.metadata.name)
        })
        .resync_every(Duration::from_secs(30))
        .run(reconcile, |_, _: &StoreError, _| Action::requeue(Duration::from_millis(200)), ctx, shutdown)
        .await;
}

/// Reconciles one service: its revisions, then its rolling update.
pub async fn reconcile(key: String, service: Option<Arc<Service>>, ctx: Arc<Context>) -> Result<Action, StoreError> {
    ctx.task_writes.wait(&key, &ctx.caches.tasks, Duration::from_secs(3)).await;
    ctx.service_writes.wait(&key, &ctx.caches.services, Duration::from_secs(3)).await;
    let uid = service.as_ref().map(|s| s.metadata.uid.clone());
    let revisions = revisions_of(&key, &ctx.revisions);
    let (current, gone): (Vec<_>, Vec<_>) =
        revisions.into_iter().partition(|r| Some(&r.spec.service_uid) == uid.as_ref());
    delete_revisions(&ctx, gone.iter().map(Arc::as_ref), "its service is gone").await?;
    let Some(service) = service else { return Ok(Action::await_change()) };
    let current: Vec<&ServiceRevision> = current.iter().map(Arc::as_ref).collect();
    record_revision(&ctx, &service, &current).await?;

    let tasks = tasks_of(&key, &ctx.caches.tasks, &ctx.caches.observations);
    let status = service.status.as_ref().and_then(|s| s.update_status.as_ref());
    // What new tasks carry: the spec with the versions of what they mount.
    let template = ctx.caches.resolved(&service);
    let inputs = plan::Inputs {
        name: &key,
        generation: service.metadata.generation,
        spec: &template.spec,
        status,
        tasks: &tasks,
        now: Utc::now(),
    };
    let plan = plan::plan(&inputs);
    write_tasks(&ctx, &key, &template, &tasks, &plan).await?;
    for (action, reason) in &plan.decisions {
        ctx.recorder.record(&Decision::about(&*service, action.clone(), reason.clone()));
    }
    let written = match (&plan.rollback, &plan.status) {
        (Some(why), Some(update)) => roll_back(&ctx, &service, &current, update, why).await?,
        (None, Some(update)) if Some(update) != status => write_status(&ctx, &service, update.clone()).await?,
        _ => true,
    };
    if !written {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    Ok(plan.requeue_after.map_or(Action::await_change(), Action::requeue))
}

/// `service`'s revisions, oldest first.
fn revisions_of(service: &str, reader: &Reader<ServiceRevision>) -> Vec<Arc<ServiceRevision>> {
    let mut all: Vec<Arc<ServiceRevision>> = reader.list().into_iter().filter(|r| r.spec.service == service).collect();
    all.sort_by_key(|r| r.spec.revision);
    all
}

async fn record_revision(ctx: &Context, service: &Service, revisions: &[&ServiceRevision]) -> Result<(), StoreError> {
    if let Some(revision) = revisions::to_record(service, revisions) {
        let reason = format!("revision {}: {}", revision.spec.revision, revision.spec.change_cause);
        match ctx.store.create(revision).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(err) => return Err(err),
        }
        ctx.recorder.record(&Decision::about(service, "recorded revision", reason));
    }
    let doomed = revisions::to_delete(revisions, ctx.revision_limit);
    delete_revisions(ctx, doomed.into_iter(), &format!("revision history limit {}", ctx.revision_limit)).await
}

async fn delete_revisions<'a>(
    ctx: &Context,
    doomed: impl Iterator<Item = &'a ServiceRevision>,
    why: &str,
) -> Result<(), StoreError> {
    let mut batch = Batch::new();
    let mut names = Vec::new();
    for revision in doomed {
        batch.delete(&ctx.store, revision);
        names.push(revision.metadata.name.clone());
    }
    if batch.is_empty() {
        return Ok(());
    }
    batch.commit(&ctx.store, "old service revisions").await?;
    ctx.recorder.record(&Decision::about_name(&names.join(", "), "deleted revision(s)", why));
    Ok(())
}

/// Stops and creates the tasks the plan names.
async fn write_tasks(
    ctx: &Context,
    key: &str,
    service: &Service,
    tasks: &[TaskView],
    plan: &plan::Plan,
) -> Result<(), StoreError> {
    let by_name: HashMap<&str, &TaskView> = tasks.iter().map(|t| (t.name(), t)).collect();
    let mut batch = Batch::new();
    for (name, _) in &plan.stop {
        if let Some(task) = by_name.get(name.as_str()).filter(|t| t.wanted()) {
            batch.update(&ctx.store, &*task.task, shut_down(&task.task));
        }
    }
    let now = Utc::now();
    for slot in &plan.create {
        let task = match slot {
            Slot::Replica(n) => new_task(service, Some(*n), None, now),
            Slot::Node(node) => new_task(service, None, Some(node), now),
        };
        batch.create(&ctx.store, task);
    }
    if !batch.is_empty() {
        let written = batch.commit(&ctx.store, &format!("rolling update of service {key}")).await?;
        ctx.task_writes.expect(key, written);
    }
    Ok(())
}

/// Writes `update` as the service's update status. On a conflict with a
/// write that left the spec and the update status as they were (the
/// service loop's replica counts), writes again on the fresh object, so a
/// batch's bookkeeping is not lost to a concurrent status write. False
/// when the service really changed meanwhile (that change queues another
/// reconcile).
async fn write_status(ctx: &Context, service: &Service, update: UpdateStatus) -> Result<bool, StoreError> {
    let planned_on = service.status.as_ref().and_then(|s| s.update_status.clone());
    let mut next = service.clone();
    for _ in 0..3 {
        next.status.get_or_insert_with(Default::default).update_status = Some(update.clone());
        if write_service(ctx, next).await? {
            return Ok(true);
        }
        let Some(fresh) = ctx.store.get::<Service>(&service.metadata.name).await? else { return Ok(false) };
        let unchanged = fresh.metadata.generation == service.metadata.generation
            && fresh.status.as_ref().and_then(|s| s.update_status.clone()) == planned_on;
        if !unchanged {
            return Ok(false);
        }
        next = fresh;
    }
    Ok(false)
}

/// Failure action rollback: the spec of the previous revision (replicas
/// kept) and a rollback status, in one compare-and-swap write. Without a
/// revision to go back to, the update pauses.
async fn roll_back(
    ctx: &Context,
    service: &Service,
    revisions: &[&ServiceRevision],
    update: &UpdateStatus,
    why: &str,
) -> Result<bool, StoreError> {
    let now = Utc::now();
    let Some(previous) = revisions::previous(&service.spec, revisions) else {
        let paused = UpdateStatus {
            state: UpdateState::Paused,
            message: format!("{why}; no earlier revision to roll back to"),
            ..update.clone()
        };
        return write_status(ctx, service, paused).await;
    };
    let mut next = service.clone();
    next.spec = revisions::restored(&service.spec, &previous.spec.spec);
    let rollback = UpdateStatus {
        state: UpdateState::RollbackStarted,
        started_at: Some(now),
        message: why.to_string(),
        generation: service.metadata.generation + 1,
        target: next.spec.template_hash(),
        ..UpdateStatus::default()
    };
    next.status.get_or_insert_with(Default::default).update_status = Some(rollback);
    let written = write_service(ctx, next).await?;
    if written {
        ctx.recorder.record(&Decision::about(
            service,
            format!("rollback to revision {}", previous.spec.revision),
            why.to_string(),
        ));
    }
    Ok(written)
}

async fn write_service(ctx: &Context, next: Service) -> Result<bool, StoreError> {
    let name = next.metadata.name.clone();
    match ctx.store.update(next).await {
        Ok(written) => {
            let revision = written.metadata().resource_version;
            ctx.service_writes.expect(&name, vec![Written { name: name.clone(), revision, deleted: false }]);
            Ok(true)
        }
        Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => Ok(false),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests;
