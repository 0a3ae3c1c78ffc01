//! The Task kind: one slot of a service on one node. SwarmKit's split of
//! ownership: the spec (and `desiredState`) is written only by controllers,
//! the status only by the agent running the task. The agent writes what it
//! observes to a separate key, the task's [`super::TaskObservation`]
//! (`{prefix}/taskobservations/<task name>`), never to the Task's own key.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{kind, ServiceSpec};

kind!(
    /// One scheduled instance of a service.
    Task, TaskSpec, "tasks", status: TaskStatus
);

/// Written by controllers (service controller creates, scheduler assigns the node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskSpec {
    /// Name of the owning service.
    pub service_name: String,
    /// Replica slot (replicated mode); absent in global mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// Node the task is assigned to (by the scheduler); absent until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The state controllers want the task in (`running`, `shutdown`, `remove`).
    pub desired_state: TaskState,
    /// Service spec generation this task was created from.
    #[serde(default)]
    pub service_generation: i64,
    /// Snapshot of the service spec at creation.
    pub spec: ServiceSpec,
}

/// Swarm's task states, in lifecycle order.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum TaskState {
    #[default]
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Starting,
    Running,
    Complete,
    Failed,
    Shutdown,
    Rejected,
    Orphaned,
    Remove,
}

impl Task {
    /// The name users see, Docker's way: `<service>.<slot>` in replicated
    /// mode, `<service>.<node>` in global mode (`web_web.3`).
    pub fn display_name(&self) -> String {
        match (self.spec.slot, &self.spec.node_id) {
            (Some(slot), _) => format!("{}.{slot}", self.spec.service_name),
            (None, Some(node)) => format!("{}.{node}", self.spec.service_name),
            (None, None) => format!("{}.{}", self.spec.service_name, self.metadata.name),
        }
    }
}

impl TaskState {
    /// States after which a task never runs again.
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }
}

/// A task's lifecycle state. Two writers, two keys: on the Task itself it is
/// written only by controllers (the service controller: `new` or `assigned`
/// at creation; the scheduler: `pending` with a reason such as `no suitable
/// node (…)`, or `assigned`); on the task's [`super::TaskObservation`] only
/// by the agent running it (everything from `accepted` on). The agent's
/// report wins once there is one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TaskStatus {
    pub state: TaskState,
    /// Human-readable reason for the state (`no suitable node (…)`, `exit code 1`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When `state` was entered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime<Utc>>,
    /// When the task's process started running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Process exit code, once exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}
