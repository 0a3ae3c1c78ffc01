//! The update loop's plan, pure: given a service, the state of its rolling
//! update and its tasks (with what their agents report), which tasks to
//! stop or start and what the update's status becomes.
//!
//! A task is *fresh* when it carries the task template being rolled out
//! ([`ServiceSpec::template_hash`] of the service's spec *resolved*: each
//! config and secret reference with the object's current version, as new
//! tasks record it), *stale* otherwise. So `shoal secret rotate` rolls
//! every service using the secret, each with its own update config, like
//! any other change of the template. Per slot:
//! - **done**: a fresh task desired running has been ready for `monitor`
//!   (any other task still desired running in the slot is stopped: the end
//!   of a start-first handover, or a rollback keeping the old task);
//! - **monitoring**: a fresh task is ready, its `monitor` window runs;
//! - **in flight**: a fresh task is starting, or the slot's stale task was
//!   told to stop and the service loop has not refilled it yet;
//! - **failed**: a fresh task of this update failed before its monitor
//!   window ended (it counts toward `maxFailureRatio`);
//! - **dirty**: only stale tasks desired running — not touched yet.
//!
//! Batches are discrete, as the update's ideal duration
//! `ceil(replicas / parallelism) × (start + monitor + delay)` says: the
//! next batch of `parallelism` dirty slots (0 = all) starts once no slot is
//! in flight or monitoring and `delay` has passed since the last batch
//! ended. Stop-first tells the stale task to stop (the service loop starts
//! its successor once it has stopped); start-first creates the successor
//! here, and the stale task is stopped once that one is ready.
//!
//! What the plan remembers lives in the [`UpdateStatus`] it returns, never
//! in memory: a new leader continues where the last one stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shoal_crd::{FailureAction, ServiceMode, ServiceSpec, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus};

use crate::service::slots::Slot;
use crate::tasks::TaskView;

/// Everything the plan depends on.
pub struct Inputs<'a> {
    /// The service's name (for decisions).
    pub name: &'a str,
    pub generation: i64,
    /// The service's spec, resolved ([`ServiceSpec::resolved`]).
    pub spec: &'a ServiceSpec,
    pub status: Option<&'a UpdateStatus>,
    pub tasks: &'a [TaskView],
    pub now: DateTime<Utc>,
}

/// The writes to make, with the decisions behind them.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// The update's status from now on (`None`: there has never been one).
    pub status: Option<UpdateStatus>,
    /// Task names to tell to stop, with why.
    pub stop: Vec<(String, String)>,
    /// Slots to start a fresh task in (start-first).
    pub create: Vec<Slot>,
    /// The update failed and its failure action is rollback: why.
    pub rollback: Option<String>,
    /// (action, reason) per decision, for the log.
    pub decisions: Vec<(String, String)>,
    /// Look again after this long (a monitor window, a delay or a deadline).
    pub requeue_after: Option<Duration>,
}

impl Plan {
    fn wake_at(&mut self, at: DateTime<Utc>, now: DateTime<Utc>) {
        let after = (at - now).to_std().unwrap_or_default().max(Duration::from_millis(10));
        self.requeue_after = Some(self.requeue_after.map_or(after, |d| d.min(after)));
    }

    fn decide(&mut self, action: impl Into<String>, reason: impl Into<String>) {
        self.decisions.push((action.into(), reason.into()));
    }
}

/// Where one slot stands in the update.
#[derive(Debug, Clone)]
enum SlotState<'a> {
    Done,
    Monitoring { until: DateTime<Utc> },
    InFlight,
    Failed,
    Dirty { task: &'a TaskView },
}

/// The settings in force: `rollbackConfig` during a rollback.
pub fn config(spec: &ServiceSpec, state: UpdateState) -> &UpdateConfig {
    if state.is_rollback() {
        &spec.rollback_config
    } else {
        &spec.update_config
    }
}

/// Plans one service.
pub fn plan(inputs: &Inputs) -> Plan {
    let mut plan = Plan::default();
    let target = inputs.spec.template_hash();
    let groups = slots(inputs);
    let fresh = |t: &TaskView| t.task.spec.spec.template_hash() == target;
    let mut update = match inputs.status {
        Some(current) if current.target == target => current.clone(),
        // Written by one who does not resolve versions (`shoal service
        // rollback`, an automatic rollback): the same template; adopted.
        Some(current) if current.state.in_progress() && current.target == inputs.spec.unresolved().template_hash() => {
            UpdateStatus { target: target.clone(), ..current.clone() }
        }
        previous => {
            let stale: Vec<&TaskView> =
                groups.values().flatten().copied().filter(|t| t.wanted() && !fresh(t)).collect();
            if previous.is_none() && stale.is_empty() {
                return plan;
            }
            let (action, reason) = why_started(inputs, &stale);
            plan.decide(action, reason);
            UpdateStatus {
                state: UpdateState::Updating,
                started_at: Some(inputs.now),
                message: "update in progress".into(),
                target: target.clone(),
                ..UpdateStatus::default()
            }
        }
    };
    update.generation = inputs.generation;
    if !update.state.in_progress() {
        plan.status = Some(update);
        return plan;
    }
    let config = config(inputs.spec, update.state).clone();
    let monitor = chrono::Duration::from_std(config.monitor.0).unwrap_or(chrono::Duration::MAX);
    let now = inputs.now;
    let live: Vec<&str> = inputs.tasks.iter().map(TaskView::name).collect();
    update.ready.retain(|name, _| live.contains(&name.as_str()));

    let mut states = BTreeMap::new();
    let mut newly_failed = Vec::new();
    for (slot, tasks) in &groups {
        let failed: Vec<String> = tasks
            .iter()
            .filter(|t| fresh(t) && counts_as_failure(t, &update, monitor))
            .map(|t| t.name().to_string())
            .collect();
        update.failed.extend(failed.iter().cloned());
        newly_failed.extend(failed);
        let state = slot_state(tasks, &fresh, &mut update, monitor, now, &mut plan);
        states.insert(slot.clone(), state);
    }
    for name in &newly_failed {
        plan.decide(
            format!("counted task {name} as failed"),
            format!("it ended before its monitor window of {} was over", config.monitor),
        );
    }

    let total = groups.len().max(1);
    let ratio = update.failed.len() as f64 / total as f64;
    let overdue = overdue(&states, &update, &config, now);
    let failure = if ratio > config.max_failure_ratio && config.failure_action != FailureAction::Continue {
        let task = newly_failed.last().or(update.failed.last()).cloned().unwrap_or_default();
        Some(format!("failure or early termination of task {task}"))
    } else {
        overdue.clone()
    };
    if let Some(why) = failure {
        return fail(plan, update, &config, why);
    }
    if let Some(why) = &overdue {
        // Failure action continue: report, keep going.
        update.message = format!("update continuing despite {why}");
    }

    let in_flight = states.values().filter(|s| matches!(s, SlotState::InFlight | SlotState::Monitoring { .. })).count();
    let dirty: Vec<(&Slot, &TaskView)> = states
        .iter()
        .filter_map(|(slot, s)| match s {
            SlotState::Dirty { task } => Some((slot, *task)),
            _ => None,
        })
        .collect();
    for s in states.values() {
        match s {
            SlotState::Monitoring { until } => plan.wake_at(*until, now),
            SlotState::InFlight => {
                if let Some(started) = update.batch_started_at {
                    plan.wake_at(
                        started
                            + chrono::Duration::from_std(config.progress_deadline.0).unwrap_or(chrono::Duration::MAX),
                        now,
                    );
                }
            }
            _ => {}
        }
    }
    if in_flight == 0 && dirty.is_empty() {
        return complete(plan, update, now);
    }
    if in_flight > 0 || dirty.is_empty() {
        plan.status = Some(update);
        return plan;
    }
    if update.batch_started_at.take().is_some() {
        update.next_batch_at = Some(now + chrono::Duration::from_std(config.delay.0).unwrap_or(chrono::Duration::MAX));
    }
    if let Some(at) = update.next_batch_at.filter(|at| *at > now) {
        plan.wake_at(at, now);
        plan.status = Some(update);
        return plan;
    }
    start_batch(&mut plan, &mut update, &config, dirty, inputs.generation, now);
    plan.status = Some(update);
    plan
}

/// The decision that starts an update. When the stale tasks differ from
/// the template only in versions of what they mount, it names them:
/// `secret db-password v2: rolling web (4 tasks)`.
fn why_started(inputs: &Inputs, stale: &[&TaskView]) -> (String, String) {
    let unresolved = inputs.spec.unresolved();
    let only_versions = stale.iter().all(|t| t.task.spec.spec.unresolved().same_template(&unresolved));
    let mut rotated: Vec<String> = stale.iter().flat_map(|t| t.task.spec.spec.changed_versions(inputs.spec)).collect();
    rotated.sort();
    rotated.dedup();
    if !only_versions || rotated.is_empty() {
        return ("update started".into(), format!("generation {} changes the tasks' spec", inputs.generation));
    }
    let action = format!("{}: rolling {} ({} tasks)", rotated.join(", "), inputs.name, stale.len());
    (action, "a new version of what its tasks mount: same target paths, new content".into())
}

/// The slots the update covers and their tasks, oldest first: replicas
/// `1..=replicas`, or in global mode every node with a task desired running.
fn slots<'a>(inputs: &Inputs<'a>) -> BTreeMap<Slot, Vec<&'a TaskView>> {
    let mut groups: BTreeMap<Slot, Vec<&TaskView>> = BTreeMap::new();
    if inputs.spec.mode == ServiceMode::Replicated {
        for n in 1..=inputs.spec.replicas.unwrap_or(1) {
            groups.insert(Slot::Replica(n), Vec::new());
        }
    }
    for task in inputs.tasks {
        let slot = Slot::of(task);
        match (inputs.spec.mode, groups.get_mut(&slot)) {
            (_, Some(tasks)) => tasks.push(task),
            (ServiceMode::Global, None) if task.wanted() => {
                groups.insert(slot, vec![task]);
            }
            _ => {}
        }
    }
    if inputs.spec.mode == ServiceMode::Global {
        // Finished tasks of slots that still have a wanted one.
        for task in inputs.tasks.iter().filter(|t| !t.wanted()) {
            if let Some(tasks) = groups.get_mut(&Slot::of(task)) {
                tasks.push(task);
            }
        }
    }
    for tasks in groups.values_mut() {
        tasks.sort_by(|a, b| (a.task.metadata.created_at, a.name()).cmp(&(b.task.metadata.created_at, b.name())));
    }
    groups
}

/// A fresh task of this update that ended on its own before its monitor
/// window was over (or before it was ever ready), not counted yet.
fn counts_as_failure(task: &TaskView, update: &UpdateStatus, monitor: chrono::Duration) -> bool {
    let of_this_update = match (task.task.metadata.created_at, update.started_at) {
        (Some(created), Some(started)) => created >= started,
        _ => true,
    };
    if !of_this_update || !task.ended_by_itself() || update.failed.iter().any(|n| n == task.name()) {
        return false;
    }
    match (update.ready.get(task.name()), task.since) {
        (Some(ready), Some(ended)) => ended < *ready + monitor,
        _ => true,
    }
}

fn slot_state<'a>(
    tasks: &[&'a TaskView],
    fresh: &dyn Fn(&TaskView) -> bool,
    update: &mut UpdateStatus,
    monitor: chrono::Duration,
    now: DateTime<Utc>,
    plan: &mut Plan,
) -> SlotState<'a> {
    let wanted: Vec<&TaskView> = tasks.iter().copied().filter(|t| t.wanted()).collect();
    if let Some(up) = wanted.iter().rev().find(|t| fresh(t) && t.ready) {
        let ready_at = *update.ready.entry(up.name().to_string()).or_insert(now);
        for other in wanted.iter().filter(|t| t.name() != up.name()) {
            plan.stop.push((other.name().to_string(), format!("replaced by task {}", up.name())));
        }
        return if now >= ready_at + monitor {
            SlotState::Done
        } else {
            SlotState::Monitoring { until: ready_at + monitor }
        };
    }
    let failed_here = tasks.iter().any(|t| update.failed.iter().any(|n| n == t.name()));
    if failed_here {
        return SlotState::Failed;
    }
    if wanted.iter().any(|t| fresh(t)) {
        return SlotState::InFlight;
    }
    if let Some(stale) = wanted.last() {
        return SlotState::Dirty { task: stale };
    }
    match tasks.last() {
        // The restart policy gave up on it: the slot stays as it is.
        Some(last) if fresh(last) && last.ended_by_itself() => SlotState::Failed,
        // Told to stop; the service loop refills it once it has stopped.
        Some(last) if !fresh(last) => SlotState::InFlight,
        // Empty: the service loop fills it with a fresh task.
        _ => SlotState::InFlight,
    }
}

/// Why the current batch missed its progress deadline, if it did.
fn overdue(
    states: &BTreeMap<Slot, SlotState>,
    update: &UpdateStatus,
    config: &UpdateConfig,
    now: DateTime<Utc>,
) -> Option<String> {
    let started = update.batch_started_at?;
    let deadline = started + chrono::Duration::from_std(config.progress_deadline.0).unwrap_or(chrono::Duration::MAX);
    if now < deadline {
        return None;
    }
    let late: Vec<String> =
        states.iter().filter(|(_, s)| matches!(s, SlotState::InFlight)).map(|(slot, _)| slot.to_string()).collect();
    if late.is_empty() {
        return None;
    }
    Some(format!("progress deadline {} exceeded: {} not ready", config.progress_deadline, late.join(", ")))
}

/// The update failed: pause, or ask for a rollback (a failing rollback pauses).
fn fail(mut plan: Plan, mut update: UpdateStatus, config: &UpdateConfig, why: String) -> Plan {
    let rolling_back = update.state.is_rollback();
    if config.failure_action == FailureAction::Rollback && !rolling_back {
        plan.decide("rolling back", format!("update failed: {why}"));
        plan.rollback = Some(format!("update rolled back due to {why}"));
        plan.status = Some(update);
        return plan;
    }
    let (state, what) =
        if rolling_back { (UpdateState::RollbackPaused, "rollback") } else { (UpdateState::Paused, "update") };
    update.state = state;
    update.message = format!("{what} paused due to {why}");
    update.batch_started_at = None;
    update.next_batch_at = None;
    plan.decide(format!("paused {what}"), why);
    plan.status = Some(update);
    plan
}

/// Every slot is done (or failed, with failure action continue).
fn complete(mut plan: Plan, mut update: UpdateStatus, now: DateTime<Utc>) -> Plan {
    let (state, what) = if update.state.is_rollback() {
        (UpdateState::RollbackCompleted, "rollback")
    } else {
        (UpdateState::Completed, "update")
    };
    update.state = state;
    update.completed_at = Some(now);
    update.message = match update.failed.len() {
        0 => format!("{what} completed"),
        n => format!("{what} completed with {n} failed task(s)"),
    };
    update.batch_started_at = None;
    update.next_batch_at = None;
    update.ready.clear();
    plan.decide(format!("{what} completed"), format!("every task runs the spec of generation {}", update.generation));
    plan.status = Some(update);
    plan
}

/// Starts the next batch: up to `parallelism` dirty slots (0 = all), those
/// whose stale task is not even ready first.
fn start_batch(
    plan: &mut Plan,
    update: &mut UpdateStatus,
    config: &UpdateConfig,
    mut dirty: Vec<(&Slot, &TaskView)>,
    generation: i64,
    now: DateTime<Utc>,
) {
    dirty.sort_by_key(|(slot, task)| (task.ready, (*slot).clone()));
    let take = if config.parallelism == 0 { dirty.len() } else { (config.parallelism as usize).min(dirty.len()) };
    let batch = &dirty[..take];
    for (slot, task) in batch {
        match config.order {
            UpdateOrder::StopFirst => {
                plan.stop.push((task.name().to_string(), format!("rolling update to generation {generation}")))
            }
            UpdateOrder::StartFirst => plan.create.push((*slot).clone()),
        }
    }
    let list: Vec<String> = batch.iter().map(|(slot, _)| slot.to_string()).collect();
    let order = match config.order {
        UpdateOrder::StopFirst => "stop-first",
        UpdateOrder::StartFirst => "start-first",
    };
    plan.decide(
        format!("updating {}", list.join(", ")),
        format!("batch {} ({order}, parallelism {})", update.batches + 1, config.parallelism),
    );
    update.batches += 1;
    update.batch_started_at = Some(now);
    update.next_batch_at = None;
}
