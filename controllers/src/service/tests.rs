//! The slot plan, case by case, with explicit clocks.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use shoal_crd::{
    Duration as SpecDuration, RestartCondition, RestartPolicy, Service, ServiceSpec, TaskState, TaskStatus,
};

use super::slots::{plan, Inputs, Plan, Slot, Want};
use crate::tasks::{new_task, NodeCondition, TaskView};

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::UNIX_EPOCH + chrono::Duration::seconds(secs)
}

/// A task of slot `slot` created at `created` on `node`, in `state`.
fn task(slot: u64, created: i64, node: &str, state: TaskState, desired: TaskState) -> TaskView {
    let service = Service::new("web", ServiceSpec::from_image("demo"));
    let mut task = new_task(&service, Some(slot), Some(node), at(created));
    task.metadata.name = format!("t{slot}-{created}");
    task.metadata.created_at = Some(at(created));
    task.metadata.generation = 1;
    task.spec.service_generation = 1;
    task.spec.desired_state = desired;
    task.status = Some(TaskStatus { state, timestamp: Some(at(created)), ..Default::default() });
    TaskView::new(Arc::new(task), None)
}

fn running(slot: u64, node: &str) -> TaskView {
    task(slot, 0, node, TaskState::Running, TaskState::Running)
}

struct Case {
    tasks: Vec<TaskView>,
    replicas: u64,
    nodes: BTreeMap<String, NodeCondition>,
    restart: RestartPolicy,
    generation: i64,
    now: i64,
}

impl Case {
    fn new(replicas: u64, tasks: Vec<TaskView>) -> Self {
        let nodes = ["n1", "n2", "n3"].iter().map(|n| (n.to_string(), NodeCondition::Active)).collect();
        Self { tasks, replicas, nodes, restart: RestartPolicy::default(), generation: 1, now: 100 }
    }

    fn plan(&self) -> Plan {
        let node = |name: &str| self.nodes.get(name).copied().unwrap_or(NodeCondition::Down);
        plan(&Inputs {
            generation: self.generation,
            restart: &self.restart,
            tasks: &self.tasks,
            slots: (1..=self.replicas).map(|n| (Slot::Replica(n), Want::Fill)).collect(),
            node: &node,
            history_limit: 5,
            retired: "scaled",
            now: at(self.now),
        })
    }
}

fn stopped(plan: &Plan) -> Vec<&str> {
    plan.shutdown.iter().map(|(name, _)| name.as_str()).collect()
}

#[test]
fn a_new_service_gets_one_task_per_slot() {
    let plan = Case::new(3, vec![]).plan();
    assert_eq!(plan.create, [Slot::Replica(1), Slot::Replica(2), Slot::Replica(3)]);
    assert!(plan.shutdown.is_empty() && plan.delete.is_empty());
}

#[test]
fn a_service_at_its_replicas_needs_nothing() {
    let plan = Case::new(2, vec![running(1, "n1"), running(2, "n2")]).plan();
    assert_eq!(plan, Plan::default());
}

#[test]
fn scaling_down_stops_the_highest_slots() {
    let tasks = (1..=5).map(|s| running(s, "n1")).collect();
    let plan = Case::new(3, tasks).plan();
    assert_eq!(stopped(&plan), ["t4-0", "t5-0"]);
    assert!(plan.create.is_empty());
}

#[test]
fn tasks_of_a_down_or_drained_node_are_replaced() {
    let mut case = Case::new(2, vec![running(1, "n1"), running(2, "n2")]);
    case.nodes.insert("n1".into(), NodeCondition::Down);
    case.nodes.insert("n2".into(), NodeCondition::Drained);
    let plan = case.plan();
    assert_eq!(stopped(&plan), ["t1-0", "t2-0"]);
    assert_eq!(plan.create, [Slot::Replica(1), Slot::Replica(2)]);
}

#[test]
fn a_paused_node_keeps_its_tasks() {
    let mut case = Case::new(1, vec![running(1, "n1")]);
    case.nodes.insert("n1".into(), NodeCondition::Paused);
    assert_eq!(case.plan(), Plan::default());
}

#[test]
fn when_a_down_node_returns_its_stale_task_is_stopped_not_the_replacement() {
    // The old task is still desired running (say the stop was never
    // written); its replacement is newer. Only the newest may run.
    let tasks = vec![
        task(1, 0, "n1", TaskState::Running, TaskState::Running),
        task(1, 10, "n2", TaskState::Running, TaskState::Running),
    ];
    let plan = Case::new(1, tasks).plan();
    assert_eq!(stopped(&plan), ["t1-0"]);
    assert!(plan.create.is_empty());
}

#[test]
fn a_failed_task_is_replaced_after_the_restart_delay() {
    let mut case = Case::new(1, vec![task(1, 0, "n1", TaskState::Failed, TaskState::Running)]);
    case.restart.delay = SpecDuration::from_secs(5);
    case.now = 2;
    let plan = case.plan();
    assert_eq!(plan.requeue_after, Some(std::time::Duration::from_secs(3)));
    assert!(plan.create.is_empty() && plan.shutdown.is_empty());
    case.now = 5;
    let plan = case.plan();
    assert_eq!(plan.create, [Slot::Replica(1)]);
    assert_eq!(stopped(&plan), ["t1-0"]);
}

#[test]
fn a_slot_that_gave_up_stays_empty_until_the_service_changes() {
    let mut case = Case::new(1, vec![task(1, 0, "n1", TaskState::Failed, TaskState::Running)]);
    case.restart.condition = RestartCondition::None;
    let plan = case.plan();
    assert_eq!(stopped(&plan), ["t1-0"], "told to stop, not restarted");
    assert!(plan.create.is_empty());

    case.tasks = vec![task(1, 0, "n1", TaskState::Failed, TaskState::Shutdown)];
    assert_eq!(case.plan(), Plan::default(), "still given up");
    case.generation = 2;
    assert_eq!(case.plan().create, [Slot::Replica(1)], "a new spec gets a new chance");
}

#[test]
fn a_slot_whose_task_was_stopped_gets_a_new_one() {
    let plan = Case::new(1, vec![task(1, 0, "n1", TaskState::Shutdown, TaskState::Shutdown)]).plan();
    assert_eq!(plan.create, [Slot::Replica(1)]);
}

#[test]
fn history_beyond_the_limit_is_deleted_and_retired_slots_keep_none() {
    let mut tasks: Vec<TaskView> = (0..7).map(|i| task(1, i, "n1", TaskState::Shutdown, TaskState::Shutdown)).collect();
    tasks.push(task(1, 50, "n1", TaskState::Running, TaskState::Running));
    tasks.push(task(2, 0, "n1", TaskState::Complete, TaskState::Shutdown));
    let plan = Case::new(1, tasks).plan();
    assert_eq!(plan.delete, ["t1-0", "t1-1", "t2-0"]);
}

#[test]
fn global_mode_wants_one_task_per_eligible_node() {
    let tasks =
        vec![TaskView::new(Arc::new(global_task("n1")), None), TaskView::new(Arc::new(global_task("n3")), None)];
    let node = |_: &str| NodeCondition::Active;
    let slots = [("n1", Want::Fill), ("n2", Want::Fill)].iter().map(|(n, w)| (Slot::Node(n.to_string()), *w)).collect();
    let plan = plan(&Inputs {
        generation: 1,
        restart: &RestartPolicy::default(),
        tasks: &tasks,
        slots,
        node: &node,
        history_limit: 5,
        retired: "node no longer eligible",
        now: at(0),
    });
    assert_eq!(plan.create, [Slot::Node("n2".into())]);
    assert_eq!(plan.shutdown.len(), 1, "n3 is no longer eligible");
}

fn global_task(node: &str) -> shoal_crd::Task {
    let service = Service::new("mon", ServiceSpec::from_image("demo"));
    let mut task = new_task(&service, None, Some(node), at(0));
    task.metadata.created_at = Some(at(0));
    task
}

/// `task` with another image: what a rolling update's replacement carries.
fn updated(mut view: TaskView) -> TaskView {
    let mut task = (*view.task).clone();
    task.spec.spec.image = "demo:2".into();
    view.task = Arc::new(task);
    view
}

#[test]
fn a_start_first_handover_keeps_the_old_task_until_its_replacement_is_ready() {
    let starting = updated(task(1, 10, "n2", TaskState::Starting, TaskState::Running));
    let tasks = vec![running(1, "n1"), starting];
    assert!(
        Case::new(1, tasks).plan().shutdown.is_empty(),
        "the update loop stops the old task once the new one is ready"
    );
    let ready = updated(task(1, 10, "n2", TaskState::Running, TaskState::Running));
    let tasks = vec![running(1, "n1"), TaskView { ready: true, ..ready }];
    assert_eq!(stopped(&Case::new(1, tasks).plan()), ["t1-0"]);
}

#[test]
fn a_slot_whose_task_was_told_to_stop_is_refilled_once_it_has_stopped() {
    let stopping = task(1, 0, "n1", TaskState::Running, TaskState::Shutdown);
    assert!(Case::new(1, vec![stopping]).plan().create.is_empty(), "stop-first: not before the old task is down");
    let stopped_task = task(1, 0, "n1", TaskState::Shutdown, TaskState::Shutdown);
    assert_eq!(Case::new(1, vec![stopped_task]).plan().create, [Slot::Replica(1)]);
    let mut gone = Case::new(1, vec![task(1, 0, "n1", TaskState::Running, TaskState::Shutdown)]);
    gone.nodes.insert("n1".into(), NodeCondition::Down);
    assert_eq!(gone.plan().create, [Slot::Replica(1)], "a down node's task will never report stopped");
}
