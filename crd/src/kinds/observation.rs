//! The TaskObservation kind: what a node's agent sees of one task it runs.
//!
//! One writer per key: a Task (`{prefix}/tasks/<id>`) is written only by
//! controllers (spec, `desiredState`); its observation
//! (`{prefix}/taskobservations/<same id>`) only by the agent of the node the
//! task is assigned to — spec and status alike. Controllers read both. The
//! agent deletes the observation once the Task is gone.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{kind, TaskStatus};

kind!(
    /// A node agent's report on one task: identity and runtime facts in the
    /// spec, lifecycle (Swarm's task states) in the status.
    TaskObservation, TaskObservationSpec, "taskobservations", status: TaskStatus
);

/// Written by the agent running the task: what it set up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TaskObservationSpec {
    /// Node whose agent writes this observation.
    pub node_id: String,
    /// `metadata.uid` of the Task observed: an observation whose uid differs
    /// from the Task's belongs to an earlier task of the same name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub task_uid: String,
    /// Process id of the task's main process while it runs (on `nodeId`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The network the task's process is in.
    pub network: TaskNetwork,
    /// The task's addresses in CIDR notation (`10.200.3.5/24`) when it has
    /// a network namespace of its own; empty on the host network.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// On the host network: the free host port the agent gave the task for
    /// each target port of its service (told to it as `SHOAL_PORT_<target>`
    /// and, for the first, `PORT`), since replicas sharing one network cannot
    /// all listen on the target port. Empty in a namespace of its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// Directory on `nodeId` holding the task's `stdout.log` and
    /// `stderr.log` (rotated copies `.1`, `.2`, …), read by `shoal service logs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<String>,
}

/// A target port of the service and the host port a host-network task
/// listens on instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    /// The port the service's spec says its tasks listen on.
    pub target: u16,
    /// The port this task listens on, on its node (TCP and UDP alike).
    pub host: u16,
}

/// Which network a task's process shares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TaskNetwork {
    /// The node's own network namespace (the process runtime without per-task namespaces).
    #[default]
    Host,
    /// A network namespace of its own on the node's bridge.
    Namespace,
}
