//! Registering this node: the agent creates its Node object when absent
//! (default spec plus `--labels`; afterwards the spec is the operator's) and
//! keeps the status facts it owns — hostname, platform, CPUs, memory,
//! address, agent version, public sealing key — current with compare-and-swap, leaving the
//! health controller's `state` alone.

use std::collections::BTreeMap;

use shoal_crd::sealing::PublicKey;
use shoal_crd::{Node, NodeSpec, NodeStatus, Platform};
use shoal_store::client::{Store, StoreError};

/// The facts this agent reports about its machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub hostname: String,
    pub os: String,
    pub architecture: String,
    pub cpus: u32,
    pub memory: u64,
    pub addr: String,
    pub agent_version: String,
    /// The public half of the node's key (secrets are sealed to it).
    pub sealing_key: Option<PublicKey>,
}

impl NodeFacts {
    /// Reads this machine's facts; `addr` is the advertised address.
    pub fn gather(addr: &str) -> Self {
        let hostname =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let memory = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| mem_total(&m)).unwrap_or_default();
        Self {
            hostname,
            os: std::env::consts::OS.into(),
            architecture: std::env::consts::ARCH.into(),
            cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            memory,
            addr: addr.into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            sealing_key: None,
        }
    }

    /// These facts, also publishing the node's public sealing key.
    pub fn with_sealing_key(mut self, key: PublicKey) -> Self {
        self.sealing_key = Some(key);
        self
    }

    /// `status` with these facts written over the agent's fields.
    pub fn apply(&self, mut status: NodeStatus) -> NodeStatus {
        status.hostname = self.hostname.clone();
        status.platform = Platform { os: self.os.clone(), architecture: self.architecture.clone() };
        status.cpus = self.cpus;
        status.memory = self.memory;
        status.addr = self.addr.clone();
        status.agent_version = self.agent_version.clone();
        if let Some(key) = &self.sealing_key {
            status.sealing_key = Some(key.clone());
        }
        status
    }
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Creates the Node `name` if absent, else brings its facts up to date.
pub async fn register(
    store: &Store,
    name: &str,
    facts: &NodeFacts,
    labels: &BTreeMap<String, String>,
) -> Result<Node, StoreError> {
    loop {
        let result = match store.get::<Node>(name).await? {
            None => {
                let mut node = Node::new(name, NodeSpec { labels: labels.clone(), ..Default::default() });
                node.status = Some(facts.apply(NodeStatus::default()));
                store.create(node).await
            }
            Some(node) => {
                let current = node.status.clone().unwrap_or_default();
                let wanted = facts.apply(current.clone());
                if wanted == current {
                    return Ok(node);
                }
                let mut updated = node;
                updated.status = Some(wanted);
                store.update(updated).await
            }
        };
        match result {
            Ok(node) => return Ok(node),
            Err(err) if err.is_conflict() || matches!(err, StoreError::AlreadyExists { .. }) => continue,
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crd::NodeState;

    #[test]
    fn memory_comes_from_memtotal_in_bytes() {
        assert_eq!(mem_total("MemTotal:       2048 kB\nMemFree: 1 kB\n"), Some(2048 * 1024));
        assert_eq!(mem_total("nothing"), None);
    }

    #[test]
    fn facts_overwrite_only_the_agents_fields() {
        let facts = NodeFacts::gather("10.0.0.5");
        let status = NodeStatus { state: NodeState::Down, hostname: "old".into(), ..Default::default() };
        let applied = facts.apply(status);
        assert_eq!(applied.state, NodeState::Down);
        assert_eq!(applied.addr, "10.0.0.5");
        assert_eq!(applied.hostname, facts.hostname);
        assert!(applied.cpus >= 1);
    }
}
