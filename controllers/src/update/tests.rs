//! The rolling update's plan, step by step, with explicit clocks: the
//! update loop's state machine without a store.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use shoal_crd::{
    Duration as SpecDuration, FailureAction, Service, ServiceSpec, TaskState, TaskStatus, UpdateOrder, UpdateState,
    UpdateStatus,
};

use super::plan::{plan, Inputs, Plan};
use crate::service::slots::Slot;
use crate::tasks::{new_task, TaskView};

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::UNIX_EPOCH + chrono::Duration::seconds(secs)
}

fn spec(image: &str, replicas: u64) -> ServiceSpec {
    let mut spec = ServiceSpec::from_image(image);
    spec.replicas = Some(replicas);
    spec.update_config.parallelism = 2;
    spec.update_config.delay = SpecDuration::from_secs(10);
    spec.update_config.monitor = SpecDuration::from_secs(5);
    spec
}

/// A task of `image` in `slot`, created at `created`, in `state` (ready when running).
fn task(image: &str, slot: u64, created: i64, state: TaskState, desired: TaskState) -> TaskView {
    let service = Service::new("web", ServiceSpec::from_image(image));
    let mut task = new_task(&service, Some(slot), Some("n1"), at(created));
    task.metadata.name = format!("{image}-{slot}-{created}");
    task.metadata.created_at = Some(at(created));
    task.spec.desired_state = desired;
    task.status = Some(TaskStatus {
        state,
        timestamp: Some(at(created + 1)),
        started_at: Some(at(created + 1)),
        ..Default::default()
    });
    TaskView::new(Arc::new(task), None)
}

fn running(image: &str, slot: u64, created: i64) -> TaskView {
    task(image, slot, created, TaskState::Running, TaskState::Running)
}

/// One service at a point in time.
struct Case {
    spec: ServiceSpec,
    status: Option<UpdateStatus>,
    tasks: Vec<TaskView>,
}

impl Case {
    fn new(spec: ServiceSpec, tasks: Vec<TaskView>) -> Self {
        Self { spec, status: None, tasks }
    }

    fn plan(&self, now: i64) -> Plan {
        plan(&Inputs {
            name: "web",
            generation: 2,
            spec: &self.spec,
            status: self.status.as_ref(),
            tasks: &self.tasks,
            now: at(now),
        })
    }

    /// Plans and keeps the status, as the store would.
    fn step(&mut self, now: i64) -> Plan {
        let plan = self.plan(now);
        self.status = plan.status.clone();
        plan
    }
}

fn stopped(plan: &Plan) -> Vec<&str> {
    plan.stop.iter().map(|(n, _)| n.as_str()).collect()
}

fn state(plan: &Plan) -> UpdateState {
    plan.status.as_ref().unwrap().state
}

#[test]
fn a_fresh_service_has_no_update() {
    let case = Case::new(spec("demo:1", 2), vec![running("demo:1", 1, 0), running("demo:1", 2, 0)]);
    assert_eq!(case.plan(10), Plan::default());
}

#[test]
fn scaling_alone_starts_no_update() {
    let mut case = Case::new(spec("demo:1", 3), vec![running("demo:1", 1, 0), running("demo:1", 2, 0)]);
    assert!(case.step(10).status.is_none(), "slot 3 is the service loop's to fill");
}

#[test]
fn stop_first_replaces_parallelism_slots_then_waits_for_ready_monitor_and_delay() {
    let old: Vec<TaskView> = (1..=5).map(|n| running("demo:1", n, 0)).collect();
    let mut case = Case::new(spec("demo:2", 5), old.clone());
    let first = case.step(100);
    assert_eq!(state(&first), UpdateState::Updating);
    assert_eq!(stopped(&first), ["demo:1-1-0", "demo:1-2-0"], "two at a time, lowest slots first");
    assert!(first.create.is_empty(), "stop-first: the service loop starts the successors");

    // Slots 1 and 2 told to stop, not refilled yet: in flight, nothing more starts.
    case.tasks[0] = task("demo:1", 1, 0, TaskState::Running, TaskState::Shutdown);
    case.tasks[1] = task("demo:1", 2, 0, TaskState::Running, TaskState::Shutdown);
    assert!(case.step(101).stop.is_empty());
    // Refilled and running at 110: monitored until 115.
    case.tasks.push(running("demo:2", 1, 109));
    case.tasks.push(running("demo:2", 2, 109));
    let monitoring = case.step(110);
    assert!(monitoring.stop.is_empty());
    assert_eq!(monitoring.requeue_after, Some(std::time::Duration::from_secs(5)));
    // Monitor over at 115: the delay of 10 s starts.
    let delayed = case.step(115);
    assert!(delayed.stop.is_empty());
    assert_eq!(case.status.as_ref().unwrap().next_batch_at, Some(at(125)));
    assert!(case.step(124).stop.is_empty());
    assert_eq!(stopped(&case.step(125)), ["demo:1-3-0", "demo:1-4-0"]);
}

#[test]
fn start_first_creates_successors_and_stops_the_old_task_once_the_new_one_is_ready() {
    let mut s = spec("demo:2", 2);
    s.update_config.order = UpdateOrder::StartFirst;
    s.update_config.parallelism = 1;
    let mut case = Case::new(s, vec![running("demo:1", 1, 0), running("demo:1", 2, 0)]);
    let first = case.step(100);
    assert_eq!(first.create, [Slot::Replica(1)]);
    assert!(first.stop.is_empty(), "the old task runs on until its successor is ready");
    case.tasks.push(task("demo:2", 1, 100, TaskState::Starting, TaskState::Running));
    assert!(case.step(101).stop.is_empty());
    case.tasks.pop();
    case.tasks.push(running("demo:2", 1, 100));
    assert_eq!(stopped(&case.step(102)), ["demo:1-1-0"]);
}

#[test]
fn a_task_failing_within_its_monitor_window_pauses_the_update() {
    let mut case = Case::new(spec("demo:2", 4), (1..=4).map(|n| running("demo:1", n, 0)).collect());
    case.step(100);
    case.tasks[0] = task("demo:1", 1, 0, TaskState::Shutdown, TaskState::Shutdown);
    case.tasks[1] = task("demo:1", 2, 0, TaskState::Shutdown, TaskState::Shutdown);
    case.tasks.push(running("demo:2", 1, 101));
    case.tasks.push(running("demo:2", 2, 101));
    case.step(102);
    // Fails 2 s after becoming ready, within the 5 s monitor window.
    case.tasks.pop();
    case.tasks.push(task("demo:2", 2, 101, TaskState::Failed, TaskState::Running));
    let paused = case.step(104);
    assert_eq!(state(&paused), UpdateState::Paused);
    let message = &paused.status.as_ref().unwrap().message;
    assert_eq!(message, "update paused due to failure or early termination of task demo:2-2-101");
    assert!(case.step(200).stop.is_empty(), "a paused update does nothing");
}

#[test]
fn failures_within_max_failure_ratio_are_tolerated() {
    let mut s = spec("demo:2", 4);
    s.update_config.max_failure_ratio = 0.3;
    let mut case = Case::new(s, vec![task("demo:2", 1, 100, TaskState::Failed, TaskState::Running)]);
    case.status = Some(UpdateStatus {
        state: UpdateState::Updating,
        started_at: Some(at(100)),
        target: case.spec.template_hash(),
        ..Default::default()
    });
    let plan = case.step(102);
    assert_eq!(state(&plan), UpdateState::Updating, "1 of 4 failed: 0.25 ≤ 0.3");
    assert_eq!(case.status.as_ref().unwrap().failed, ["demo:2-1-100"]);
}

#[test]
fn failure_action_rollback_asks_for_a_rollback_but_a_failing_rollback_pauses() {
    let mut s = spec("demo:2", 2);
    s.update_config.failure_action = FailureAction::Rollback;
    s.rollback_config.failure_action = FailureAction::Rollback;
    let failing = vec![task("demo:2", 1, 100, TaskState::Failed, TaskState::Running), running("demo:1", 2, 0)];
    let mut case = Case::new(s, failing);
    case.status = Some(UpdateStatus {
        state: UpdateState::Updating,
        started_at: Some(at(100)),
        target: case.spec.template_hash(),
        ..Default::default()
    });
    let plan = case.plan(102);
    assert_eq!(
        plan.rollback.as_deref(),
        Some("update rolled back due to failure or early termination of task demo:2-1-100")
    );
    case.status.as_mut().unwrap().state = UpdateState::RollbackStarted;
    let plan = case.plan(102);
    assert!(plan.rollback.is_none(), "never a rollback of a rollback");
    assert_eq!(state(&plan), UpdateState::RollbackPaused);
}

#[test]
fn a_batch_that_never_becomes_ready_misses_the_progress_deadline() {
    let mut s = spec("demo:2", 2);
    s.update_config.progress_deadline = SpecDuration::from_secs(60);
    let mut case = Case::new(s, vec![running("demo:1", 1, 0), running("demo:1", 2, 0)]);
    case.step(100);
    case.tasks = vec![
        task("demo:1", 1, 0, TaskState::Shutdown, TaskState::Shutdown),
        task("demo:1", 2, 0, TaskState::Shutdown, TaskState::Shutdown),
        task("demo:2", 1, 101, TaskState::Starting, TaskState::Running),
        task("demo:2", 2, 101, TaskState::Starting, TaskState::Running),
    ];
    assert_eq!(state(&case.step(159)), UpdateState::Updating);
    let late = case.step(161);
    assert_eq!(state(&late), UpdateState::Paused);
    assert!(late.status.unwrap().message.contains("progress deadline 1m0s exceeded: slot 1, slot 2 not ready"));
}

#[test]
fn the_update_completes_when_every_slot_is_ready_and_monitored() {
    let mut case = Case::new(spec("demo:2", 2), vec![running("demo:1", 1, 0)]);
    case.step(100);
    case.tasks = vec![
        task("demo:1", 1, 0, TaskState::Shutdown, TaskState::Shutdown),
        running("demo:2", 1, 101),
        running("demo:2", 2, 101),
    ];
    assert_eq!(state(&case.step(102)), UpdateState::Updating);
    let done = case.step(107);
    assert_eq!(state(&done), UpdateState::Completed);
    assert_eq!(done.status.unwrap().completed_at, Some(at(107)));
}

#[test]
fn a_new_spec_during_an_update_starts_over_and_resumes_a_paused_one() {
    let mut case = Case::new(spec("demo:2", 1), vec![running("demo:1", 1, 0)]);
    case.status = Some(UpdateStatus {
        state: UpdateState::Paused,
        target: spec("demo:2", 1).template_hash(),
        ..Default::default()
    });
    assert!(case.step(100).stop.is_empty(), "paused");
    case.spec = spec("demo:3", 1);
    let resumed = case.step(101);
    assert_eq!(state(&resumed), UpdateState::Updating);
    assert_eq!(stopped(&resumed), ["demo:1-1-0"]);
}

/// `running(…)` with secret `db` at `version` in the task's spec.
fn with_secret(mut view: TaskView, version: i64) -> TaskView {
    let mut task = (*view.task).clone();
    task.spec.spec.secrets =
        vec![shoal_crd::FileReference { version: Some(version), ..shoal_crd::FileReference::to("db") }];
    view.task = Arc::new(task);
    view
}

fn with_db_secret(mut spec: ServiceSpec, version: i64) -> ServiceSpec {
    spec.secrets = vec![shoal_crd::FileReference::to("db")];
    spec.resolved(|_, _| Some(version))
}

#[test]
fn a_new_secret_version_rolls_the_tasks_and_says_so_in_one_decision() {
    let old: Vec<TaskView> = (1..=4).map(|n| with_secret(running("demo:1", n, 0), 1)).collect();
    let mut case = Case::new(with_db_secret(spec("demo:1", 4), 1), old);
    assert_eq!(case.step(50), Plan::default(), "every task has the current version");
    case.spec = with_db_secret(spec("demo:1", 4), 2);
    let first = case.step(100);
    assert_eq!(first.decisions[0].0, "secret db v2: rolling web (4 tasks)");
    assert_eq!(stopped(&first), ["demo:1-1-0", "demo:1-2-0"], "with the service's own parallelism");
}

#[test]
fn a_rollback_written_without_versions_is_adopted_not_restarted() {
    let mut case = Case::new(with_db_secret(spec("demo:1", 1), 1), vec![with_secret(running("demo:2", 1, 0), 1)]);
    let unresolved = case.spec.unresolved().template_hash();
    case.status = Some(UpdateStatus {
        state: UpdateState::RollbackStarted,
        started_at: Some(at(100)),
        target: unresolved,
        ..Default::default()
    });
    let plan = case.step(101);
    assert_eq!(state(&plan), UpdateState::RollbackStarted);
    assert_eq!(plan.status.unwrap().target, case.spec.template_hash());
}
