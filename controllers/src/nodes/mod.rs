//! The node lifecycle loop: a node is `ready` while its agent's heartbeat
//! key exists and `down` once it is gone (the key lives on the agent's
//! lease, so it vanishes a TTL after the agent stops renewing). A node
//! that never had a heartbeat stays `unknown` (and gets no tasks).
//!
//! - [`heartbeats`]: the set of nodes with a heartbeat key.
//!
//! It also gives each node a task subnet (`status.taskSubnet`, a /24 of
//! the cluster CIDR, see [`crate::ipam`]) that the node's agent puts its
//! tasks' network namespaces on. Reconciles run one at a time so two new
//! nodes never pick the same free subnet from the same cache.
//!
//! Writes only `status.state` and `status.taskSubnet` of Node objects (the
//! agent writes the other status facts, the operator the spec),
//! compare-and-swap.

pub mod heartbeats;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_crd::{Node, NodeState};
use shoal_store::client::{Store, StoreError};

use crate::expectations::Expectations;
use crate::runtime::{Action, Controller, Decision, Recorder};
use crate::writes::Written;
use heartbeats::Heartbeats;
use shoal_store::client::reflector::Reader;

/// The controller's name in logs and events.
pub const NAME: &str = "nodes";

/// What the node loop's reconciles share.
pub struct Context {
    pub store: Store,
    pub nodes: Reader<Node>,
    pub heartbeats: Heartbeats,
    pub recorder: Recorder,
}

impl Context {
    pub fn new(store: Store, nodes: Reader<Node>, heartbeats: Heartbeats) -> Self {
        Self { store, nodes, heartbeats, recorder: Recorder::new(NAME) }
    }
}

/// Runs the node loop until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    let heartbeats = ctx.heartbeats.clone();
    let ready = {
        let heartbeats = heartbeats.clone();
        async move { heartbeats.wait_until_ready().await }
    };
    Controller::new(NAME, ctx.nodes.clone())
        .concurrency(1)
        .triggers(ready, heartbeats.changes())
        .run(reconcile, |_, _: &StoreError, _| Action::requeue(Duration::from_millis(200)), ctx, shutdown)
        .await;
}

/// What a node's state should be: ready with a heartbeat, down without.
pub fn verdict(heartbeat: bool) -> (NodeState, &'static str) {
    if heartbeat {
        (NodeState::Ready, "heartbeat key present")
    } else {
        (NodeState::Down, "heartbeat key gone (agent stopped or its lease expired)")
    }
}

/// Brings one node's `status.state` in line with its heartbeat.
pub async fn reconcile(_key: String, node: Option<Arc<Node>>, ctx: Arc<Context>) -> Result<Action, StoreError> {
    let Some(node) = node else { return Ok(Action::await_change()) };
    update(&ctx, &node).await?;
    Ok(Action::await_change())
}

/// Before the other loops start in a new term: every node's state made
/// true to its heartbeat, and the cache showing it — so no loop moves
/// tasks off a node that came back while nobody led (its stored state
/// still says down).
pub async fn settle(ctx: &Context) {
    let mut nodes = ctx.nodes.clone();
    nodes.wait_until_ready().await;
    ctx.heartbeats.wait_until_ready().await;
    let expectations = Expectations::new();
    for node in ctx.nodes.list() {
        match update(ctx, &node).await {
            Ok(Some(revision)) => {
                expectations.expect(NAME, vec![Written { name: node.metadata.name.clone(), revision, deleted: false }])
            }
            Ok(None) => {}
            // The loop proper retries; settling is best effort.
            Err(err) => tracing::warn!(node = %node.metadata.name, error = %err, "could not settle node state"),
        }
    }
    expectations.wait(NAME, &ctx.nodes, Duration::from_secs(3)).await;
}

/// Writes `node`'s state if its heartbeat says otherwise, and its task
/// subnet if it has none (or a clashing one); the new revision when it wrote.
async fn update(ctx: &Context, node: &Node) -> Result<Option<i64>, StoreError> {
    let key = &node.metadata.name;
    let (state, reason) = verdict(ctx.heartbeats.is_alive(key));
    let mut status = node.status.clone().unwrap_or_default();
    let was = status.state;
    // A node registered a moment before its first heartbeat is not "down":
    // it stays unknown (not ready either) until its agent shows up.
    let state_changes = status.state != state && !(status.state == NodeState::Unknown && state == NodeState::Down);
    let all_nodes = ctx.nodes.list();
    let subnet = crate::ipam::node_subnet(node, all_nodes.iter().map(|n| &**n), crate::ipam::default_cluster_cidr())
        .map(|net| net.to_string());
    let subnet_changes = subnet.is_some() && subnet != status.task_subnet;
    if !state_changes && !subnet_changes {
        return Ok(None);
    }
    if state_changes {
        status.state = state;
    }
    if subnet_changes {
        status.task_subnet = subnet.clone();
    }
    let mut next = node.clone();
    next.status = Some(status);
    let written = ctx.store.update(next).await?;
    if state_changes {
        let action = format!("{was:?} → {state:?}").to_lowercase();
        ctx.recorder.record(&Decision::about(node, action, reason));
    }
    if subnet_changes {
        let reason = "tasks on this node get addresses from it";
        ctx.recorder.record(&Decision::about(node, format!("task subnet {}", subnet.unwrap_or_default()), reason));
    }
    Ok(Some(written.metadata.resource_version))
}
