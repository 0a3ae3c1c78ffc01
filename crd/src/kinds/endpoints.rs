//! The Endpoints kind: how to reach one service — its virtual IP, its ports
//! (published ones included) and its backends, the tasks that may take
//! traffic now (`{prefix}/endpoints/<service>`).
//!
//! Who writes what: only the endpoints controller writes it (spec and
//! status alike); agents read it to program their data plane and answer
//! DNS. A task leaves `backends` before it is stopped (the draining
//! handshake), and joins only once it is ready (running and healthy).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{kind, EndpointMode, PortProtocol, PublishMode};

kind!(
    /// Where a service's traffic goes.
    Endpoints, EndpointsSpec, "endpoints"
);

/// Written by the endpoints controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EndpointsSpec {
    /// The service's name.
    pub service: String,
    /// The service's uid (a re-created service gets a fresh allocation).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service_uid: String,
    /// `vip` (one virtual IP load-balanced over the backends) or `dnsrr`
    /// (no VIP; DNS answers with the backends' addresses).
    pub endpoint_mode: EndpointMode,
    /// The virtual IP from the service CIDR (vip mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// The service's ports with the published port allocated.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
    /// Tasks that may take new connections now, sorted by task id.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPort {
    pub protocol: PortProtocol,
    /// The port the tasks listen on.
    pub target: u16,
    /// The port every node (ingress) or the task's node (host) answers on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<u16>,
    #[serde(default)]
    pub publish_mode: PublishMode,
}

/// A task that takes traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// Task id.
    pub task: String,
    /// Node the task runs on.
    pub node: String,
    /// The task's address (its network namespace's, or the node's when it shares the host network).
    pub address: String,
    /// Target port → the port the task listens on instead (a task on its
    /// node's host network, see `TaskObservation.spec.ports`); a target port
    /// not listed is reached as itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<u16, u16>,
}

impl Backend {
    /// The port to reach this backend's `target` port at.
    pub fn port(&self, target: u16) -> u16 {
        self.ports.get(&target).copied().unwrap_or(target)
    }
}
