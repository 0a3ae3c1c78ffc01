//! The Node kind: a machine running `shoal agent`. The spec is the
//! operator's (availability, role, labels: `shoal node update`); the status
//! is the agent's own report (written on registration and heartbeat) and
//! the health controller's verdict (`state`).
//!
//! Keys and writers:
//! - `{prefix}/nodes/<name>`: created by the node's agent on first
//!   registration (default spec, `--labels`); afterwards the spec is the
//!   operator's. The agent rewrites only the status facts (hostname,
//!   platform, cpus, memory, addr, agentVersion, sealingKey) with compare-and-swap,
//!   keeping `state`, which only the health controller writes, and
//!   `taskSubnet`, which only the controllers' node loop writes.
//! - `{prefix}/heartbeats/<name>` ([`heartbeat_key`]): written only by the
//!   node's agent, attached to its lease (TTL 3 s by default). Its
//!   disappearance is how the health controller learns the agent is gone.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::kind;

kind!(
    /// A node of the cluster.
    Node, NodeSpec, "nodes", status: NodeStatus
);

/// Key segment of node heartbeats: `{prefix}/heartbeats/<node>`.
pub const HEARTBEATS: &str = "heartbeats";

/// The heartbeat key of node `name` under `prefix` (`/shoal`).
pub fn heartbeat_key(prefix: &str, name: &str) -> String {
    format!("{}/{HEARTBEATS}/{name}", prefix.trim_end_matches('/'))
}

/// Written by the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NodeSpec {
    pub availability: Availability,
    pub role: NodeRole,
    /// Node labels, matched by `node.labels.*` constraints.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Whether the scheduler may place tasks on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Availability {
    /// Takes new tasks.
    #[default]
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Its tasks are moved elsewhere.
    Drain,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    #[default]
    Worker,
    Manager,
}

/// Written by the agent (facts), the health controller (`state`) and the
/// controllers' node loop (`taskSubnet`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NodeStatus {
    pub hostname: String,
    pub platform: Platform,
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory in bytes.
    pub memory: u64,
    /// Address other nodes reach this one at.
    pub addr: String,
    pub state: NodeState,
    /// `shoal agent` version.
    pub agent_version: String,
    /// The IPv4 subnet (CIDR, e.g. `10.200.3.0/24`) the node's agent takes
    /// task addresses from when tasks get network namespaces of their own.
    /// Written only by the controllers' node loop (from the cluster CIDR,
    /// `10.200.0.0/16` by default); stable for the node's lifetime and freed
    /// when the Node is deleted. The agent only reads it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_subnet: Option<String>,
    /// The X25519 public key the node's agent generated (its private half
    /// never leaves the node): the secrets controller seals secrets' data
    /// keys to it (SealedSecret). Written only by the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sealing_key: Option<crate::sealing::PublicKey>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `x86_64`, `aarch64`.
    pub architecture: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    #[default]
    Unknown,
    Ready,
    Down,
}
