//! Everything one agent process is told at start (`shoal agent` flags).

use std::collections::BTreeMap;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::dataplane::DataPlaneMode;
use crate::image::ImageCatalog;
use crate::network::NetworkMode;

/// An agent's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name (the Node object's name; tasks' `nodeId`).
    pub name: String,
    /// Address other nodes reach this one at.
    pub advertise_addr: String,
    /// Labels of the Node when the agent creates it (afterwards the operator's).
    pub labels: BTreeMap<String, String>,
    /// Task directories, logs and the heartbeat lease id live here.
    pub data_dir: PathBuf,
    /// Heartbeat lease TTL in seconds: how soon a dead agent's node is down.
    pub heartbeat_ttl: i64,
    /// Images this node can run.
    pub catalog: ImageCatalog,
    /// The per-task supervisor command (`[shoal, "agent", "shim"]`).
    pub shim: Vec<String>,
    /// Log rotation: bytes per file, rotated files kept.
    pub log_max_bytes: u64,
    pub log_keep: usize,
    /// Task networking: a namespace per task on `bridge` (root), or the host's.
    pub network: NetworkMode,
    /// The node's bridge for task namespaces (`shoal0`).
    pub bridge: String,
    /// Stands in for (and overrides) the Node's `status.taskSubnet`.
    pub task_subnet: Option<Ipv4Net>,
    /// How services are made reachable on this node (nftables as root).
    pub dataplane: DataPlaneMode,
}

/// Parses `k=v` labels.
pub fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, String> {
    labels
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("invalid label {l:?}: write key=value")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_key_value_pairs() {
        let labels = parse_labels(&["zone=east".into(), "ssd=".into()]).unwrap();
        assert_eq!(labels["zone"], "east");
        assert_eq!(labels["ssd"], "");
        assert!(parse_labels(&["novalue".into()]).is_err());
    }
}
