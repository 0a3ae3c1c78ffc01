//! What the loops share about tasks and nodes: a task's effective state
//! (the agent's observation wins over the controllers' own status), new
//! task objects, and what a node's state means for the tasks on it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use shoal_crd::{Availability, Node, NodeState, Service, Task, TaskObservation, TaskSpec, TaskState, TaskStatus};
use shoal_store::client::reflector::Reader;

/// A task with the state it is really in.
#[derive(Debug, Clone)]
pub struct TaskView {
    pub task: Arc<Task>,
    /// The agent's reported state if it reported, else the controllers'.
    pub state: TaskState,
    /// When `state` was entered, if known.
    pub since: Option<DateTime<Utc>>,
    /// Exit code, once the process exited.
    pub exit_code: Option<i32>,
    /// Why, as reported (`exit code 1`, `no suitable node (…)`).
    pub message: String,
    /// Running, and healthy if it has a healthcheck: what counts as up for
    /// rolling updates ([`shoal_crd::TaskStatus::is_ready`]).
    pub ready: bool,
    /// When its process started running, if it did.
    pub started_at: Option<DateTime<Utc>>,
}

impl TaskView {
    /// Combines a task with its observation (ignored when it belongs to an
    /// earlier task of the same name, i.e. its `taskUid` differs).
    pub fn new(task: Arc<Task>, observation: Option<&TaskObservation>) -> Self {
        let observation = observation.filter(|o| observes(o, &task));
        let reported = observation.and_then(|o| o.status.as_ref().map(|s| (s, o.metadata.updated_at)));
        let own = task.status.as_ref().map(|s| (s, task.metadata.updated_at));
        let (state, since, exit_code, message) = match reported.or(own) {
            Some((status, written)) => {
                (status.state, status.timestamp.or(written), status.exit_code, status.message.clone())
            }
            None => (TaskState::New, task.metadata.created_at, None, String::new()),
        };
        let status = reported.or(own).map(|(status, _)| status);
        let (ready, started_at) = (status.is_some_and(|s| s.is_ready()), status.and_then(|s| s.started_at));
        Self { task, state, since, exit_code, message, ready, started_at }
    }

    /// The task with its cached observation.
    pub fn observe(task: Arc<Task>, observations: &Reader<TaskObservation>) -> Self {
        let observation = observations.get(&task.metadata.name);
        Self::new(task, observation.as_deref())
    }

    pub fn name(&self) -> &str {
        &self.task.metadata.name
    }

    pub fn node(&self) -> Option<&str> {
        self.task.spec.node_id.as_deref()
    }

    pub fn desired(&self) -> TaskState {
        self.task.spec.desired_state
    }

    /// Desired running (not yet told to stop).
    pub fn wanted(&self) -> bool {
        self.desired() <= TaskState::Running
    }

    /// Ended on its own (exited, failed, rejected) rather than being told to stop.
    pub fn ended_by_itself(&self) -> bool {
        matches!(self.state, TaskState::Complete | TaskState::Failed | TaskState::Rejected)
    }
}

/// Whether `observation` is of `task` (not of an earlier task of the same name).
pub fn observes(observation: &TaskObservation, task: &Task) -> bool {
    observation.spec.task_uid.is_empty() || observation.spec.task_uid == task.metadata.uid
}

/// The state `task` is really in, as [`TaskView::state`] says, without
/// building a view (no copies): for scans over every task in the cache.
pub fn state_of(task: &Task, observations: &Reader<TaskObservation>) -> TaskState {
    let observation = observations.get(&task.metadata.name);
    let reported = observation.as_deref().filter(|o| observes(o, task)).and_then(|o| o.status.as_ref());
    reported.or(task.status.as_ref()).map_or(TaskState::New, |s| s.state)
}

/// Every task of `service`, with its observation. `tasks` must be grouped
/// by service (as [`crate::caches::Caches::tasks`] is): this runs on every
/// service reconcile and must not scan every task of the cluster.
pub fn tasks_of(service: &str, tasks: &Reader<Task>, observations: &Reader<TaskObservation>) -> Vec<TaskView> {
    tasks.group(service).into_iter().map(|t| TaskView::observe(t, observations)).collect()
}

/// What a node's spec and status mean for tasks on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCondition {
    /// Ready and active: keeps its tasks and takes new ones.
    Active,
    /// Ready and paused: keeps its tasks, takes none.
    Paused,
    /// Drained: its tasks move elsewhere.
    Drained,
    /// Not ready (heartbeat gone, or never seen), or not registered at all:
    /// its tasks move elsewhere.
    Down,
}

impl NodeCondition {
    pub fn of(node: Option<&Node>) -> Self {
        let Some(node) = node else { return NodeCondition::Down };
        let ready = node.status.as_ref().is_some_and(|s| s.state == NodeState::Ready);
        match (ready, node.spec.availability) {
            (_, Availability::Drain) => NodeCondition::Drained,
            (false, _) => NodeCondition::Down,
            (true, Availability::Active) => NodeCondition::Active,
            (true, Availability::Pause) => NodeCondition::Paused,
        }
    }

    /// Tasks on this node keep running.
    pub fn keeps_tasks(self) -> bool {
        matches!(self, NodeCondition::Active | NodeCondition::Paused)
    }
}

/// A random task id: 16 hex digits (64 bits; creates compare against
/// absence, so even a collision could not overwrite).
pub fn new_task_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

/// A new task of `service` for `slot` (replicated) or `node` (global),
/// desired running, carrying a snapshot of the service's spec and labels.
pub fn new_task(service: &Service, slot: Option<u64>, node: Option<&str>, now: DateTime<Utc>) -> Task {
    let spec = TaskSpec {
        service_name: service.metadata.name.clone(),
        slot,
        node_id: node.map(str::to_string),
        desired_state: TaskState::Running,
        service_generation: service.metadata.generation,
        spec: service.spec.clone(),
    };
    let mut task = Task::new(new_task_id(), spec);
    task.metadata.labels = service.metadata.labels.clone();
    // A task created for a node is assigned already; the others wait for the scheduler.
    let state = if node.is_some() { TaskState::Assigned } else { TaskState::New };
    task.status = Some(TaskStatus { state, timestamp: Some(now), ..TaskStatus::default() });
    task
}

/// `task` told to stop: desired state shutdown, status untouched.
pub fn shut_down(task: &Task) -> Task {
    let mut task = task.clone();
    task.spec.desired_state = TaskState::Shutdown;
    task
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crd::{NodeSpec, NodeStatus, ServiceSpec, TaskObservationSpec};

    fn task() -> Arc<Task> {
        let service = Service::new("web", ServiceSpec::from_image("demo"));
        let mut task = new_task(&service, Some(1), None, Utc::now());
        task.metadata.uid = "u1".into();
        Arc::new(task)
    }

    fn observation(uid: &str, state: TaskState) -> TaskObservation {
        let spec = TaskObservationSpec { node_id: "n1".into(), task_uid: uid.into(), ..Default::default() };
        let mut o = TaskObservation::new("t", spec);
        o.status = Some(TaskStatus { state, exit_code: Some(1), ..Default::default() });
        o
    }

    #[test]
    fn the_agents_observation_wins_over_the_controllers_status() {
        let view = TaskView::new(task(), Some(&observation("u1", TaskState::Failed)));
        assert_eq!(view.state, TaskState::Failed);
        assert_eq!(view.exit_code, Some(1));
        assert!(view.ended_by_itself());
    }

    #[test]
    fn an_observation_of_an_earlier_task_with_the_same_name_is_ignored() {
        let view = TaskView::new(task(), Some(&observation("other", TaskState::Failed)));
        assert_eq!(view.state, TaskState::New);
    }

    #[test]
    fn node_conditions_follow_readiness_and_availability() {
        let mut node = Node::new("n1", NodeSpec::default());
        assert_eq!(NodeCondition::of(None), NodeCondition::Down);
        assert_eq!(NodeCondition::of(Some(&node)), NodeCondition::Down, "never reported ready");
        node.status = Some(NodeStatus { state: NodeState::Ready, ..Default::default() });
        assert_eq!(NodeCondition::of(Some(&node)), NodeCondition::Active);
        node.spec.availability = Availability::Pause;
        assert_eq!(NodeCondition::of(Some(&node)), NodeCondition::Paused);
        node.spec.availability = Availability::Drain;
        assert_eq!(NodeCondition::of(Some(&node)), NodeCondition::Drained);
    }

    #[test]
    fn task_names_read_like_dockers() {
        assert_eq!(task().display_name(), "web.1");
    }
}
