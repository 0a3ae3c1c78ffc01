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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
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
    /// Health as the task's probes see it; absent when the task has no
    /// healthcheck. Written by the agent running the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<TaskHealth>,
}

impl TaskStatus {
    /// Whether the task counts as running for updates and endpoints: running,
    /// and healthy when it has a healthcheck (no probe means no `health`).
    /// As in Docker, a task with a probe is not ready while `starting`.
    pub fn is_ready(&self) -> bool {
        self.state == TaskState::Running && self.health.as_ref().is_none_or(|h| h.status == HealthStatus::Healthy)
    }
}

/// The result of a task's health probes, Docker's `State.Health`. Written by
/// the agent running the task, on its [`super::TaskObservation`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TaskHealth {
    pub status: HealthStatus,
    /// Consecutive failed probes that counted (those after the start period).
    pub failing_streak: u32,
    /// The last probes (at most [`TaskHealth::MAX_LOG`]), oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<ProbeResult>,
}

impl TaskHealth {
    /// Probe results kept in `log`, as in Docker.
    pub const MAX_LOG: usize = 5;
}

/// `starting` until the first successful probe, then `healthy`, `unhealthy`
/// after `retries` consecutive failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HealthStatus {
    #[default]
    Starting,
    Healthy,
    Unhealthy,
}

/// One run of a health probe. Written by the agent running the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeResult {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// 0 healthy, anything else a failure (-1: the probe could not run or timed out).
    pub exit_code: i32,
    /// Standard output and error, at most [`ProbeResult::MAX_OUTPUT`] bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
}

impl ProbeResult {
    /// Bytes of probe output kept (4 KiB, as in Docker).
    pub const MAX_OUTPUT: usize = 4096;

    /// `output` cut to [`Self::MAX_OUTPUT`] bytes on a character boundary.
    pub fn truncate_output(output: &str) -> String {
        let mut end = output.len().min(Self::MAX_OUTPUT);
        while !output.is_char_boundary(end) {
            end -= 1;
        }
        output[..end].to_string()
    }
}
