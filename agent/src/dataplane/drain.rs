//! The draining handshake: before a task that may be a backend is stopped,
//! traffic stops reaching it everywhere first.
//!
//! The endpoints controller drops a task from its service's backends as
//! soon as the task's desired state leaves `running`. Every node's data
//! plane records the Endpoints revision it has programmed at
//! `{prefix}/dataplane/<node>`. The stopping task's agent waits until the
//! Endpoints object no longer lists the task, then until every node that
//! runs a data plane has programmed at least that revision — so no node
//! still sends new connections to it — and only then sends the stop signal
//! (the task finishes the connections it has during its grace period).
//!
//! # Guarantees
//! - Bounded: after `timeout` the agent stops the task anyway and logs which
//!   nodes lagged (a dead node must not block every update).
//! - A service without an Endpoints object (no endpoints controller, or the
//!   service is gone) does not wait at all.
//!
//! # Why revisions compare
//! A data plane applies its whole cached Endpoints set at once, and etcd
//! delivers watch events in revision order, so a node that programmed any
//! Endpoints revision ≥ R has applied every Endpoints change up to R.

use std::time::Duration;

use shoal_crd::Endpoints;
use shoal_store::client::keys::prefix_range_end;
use shoal_store::client::Store;
use shoal_store::proto::RangeRequest;
use tokio::time::Instant;

use crate::network::conntrack;

/// How long a stopping task waits for the mesh to forget it (the default).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the handshake re-reads the store.
const POLL: Duration = Duration::from_millis(50);

/// How the handshake ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drained {
    /// The service has no Endpoints object: nothing routes to the task.
    NoEndpoints,
    /// Every data plane has programmed the revision without the task.
    Everywhere { revision: i64 },
    /// Gave up after the timeout; these nodes (or the controller) lagged.
    TimedOut { lagging: Vec<String> },
}

/// Waits until no ready node routes new connections to `task` of `service`.
pub async fn wait_until_drained(store: &Store, service: &str, task: &str, timeout: Duration) -> Drained {
    let deadline = Instant::now() + timeout;
    let revision = loop {
        match store.get::<Endpoints>(service).await {
            Ok(None) => return Drained::NoEndpoints,
            Ok(Some(e)) if !e.spec.backends.iter().any(|b| b.task == task) => break e.metadata.resource_version,
            Ok(Some(_)) => {}
            Err(err) => tracing::debug!(task, error = %err, "reading endpoints while draining"),
        }
        if Instant::now() >= deadline {
            return Drained::TimedOut { lagging: vec!["endpoints controller".into()] };
        }
        tokio::time::sleep(POLL).await;
    };
    loop {
        let lagging = match (programmed_revisions(store).await, ready_nodes(store).await) {
            (Ok(nodes), Ok(ready)) => nodes
                .into_iter()
                .filter(|(node, programmed)| *programmed < revision && ready.contains(node))
                .map(|(node, _)| node)
                .collect(),
            (Err(err), _) | (_, Err(err)) => vec![format!("store ({err})")],
        };
        if lagging.is_empty() {
            return Drained::Everywhere { revision };
        }
        if Instant::now() >= deadline {
            return Drained::TimedOut { lagging };
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How long, at most, a drained task's open connections get to finish
/// before the stop signal (they keep the grace period after it, too).
pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// After the drain: waits until no connection to `address` is still open
/// (tracked ESTABLISHED — including ones accepted by the kernel but not yet
/// read by the task, which a stopping server would drop), at most
/// `timeout`. Returns how many were still open at the end.
pub async fn wait_for_open_connections(address: &str, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        // Read off the async threads: the table may hold tens of thousands of lines.
        let table = tokio::fs::read_to_string(conntrack::TABLE).await;
        let open = table.map(|t| conntrack::established_to(&t, address)).unwrap_or(0);
        if open == 0 || Instant::now() >= deadline {
            return open;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Names of the nodes that are ready: a down node's data plane is not
/// waited for (its record may be stale; it takes no traffic anyway).
async fn ready_nodes(store: &Store) -> Result<Vec<String>, shoal_store::client::StoreError> {
    let (nodes, _) = store.list::<shoal_crd::Node>().await?;
    Ok(nodes
        .into_iter()
        .filter(|n| n.status.as_ref().is_some_and(|s| s.state == shoal_crd::NodeState::Ready))
        .map(|n| n.metadata.name)
        .collect())
}

/// Every node's programmed Endpoints revision, from `{prefix}/dataplane/`.
async fn programmed_revisions(store: &Store) -> Result<Vec<(String, i64)>, shoal_store::client::StoreError> {
    let prefix = format!("{}/dataplane/", store.prefix()).into_bytes();
    let request = RangeRequest { range_end: prefix_range_end(&prefix), key: prefix.clone(), ..Default::default() };
    let response = store.etcd().unary(store.etcd().kv().range(request)).await?;
    Ok(response
        .kvs
        .iter()
        .map(|kv| {
            let node = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            let programmed = serde_json::from_slice::<serde_json::Value>(&kv.value)
                .ok()
                .and_then(|v| v.get("programmedRevision").and_then(|r| r.as_i64()))
                .unwrap_or(0);
            (node, programmed)
        })
        .collect())
}
