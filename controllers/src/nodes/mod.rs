//! The node lifecycle loop: a node is `ready` while its agent's heartbeat
//! key exists and `down` once it is gone (the key lives on the agent's
//! lease, so it vanishes a TTL after the agent stops renewing).
//!
//! - [`heartbeats`]: the set of nodes with a heartbeat key.
//!
//! Writes only `status.state` of Node objects (the agent writes the other
//! status facts, the operator the spec), compare-and-swap.

pub mod heartbeats;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_crd::{Node, NodeState};
use shoal_store::client::{Store, StoreError};

use crate::runtime::{Action, Controller, Decision, Recorder};
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
pub async fn reconcile(key: String, node: Option<Arc<Node>>, ctx: Arc<Context>) -> Result<Action, StoreError> {
    let Some(node) = node else { return Ok(Action::await_change()) };
    let (state, reason) = verdict(ctx.heartbeats.is_alive(&key));
    let mut status = node.status.clone().unwrap_or_default();
    if status.state == state {
        return Ok(Action::await_change());
    }
    let was = status.state;
    status.state = state;
    let mut next = (*node).clone();
    next.status = Some(status);
    ctx.store.update(next).await?;
    let action = format!("{was:?} → {state:?}").to_lowercase();
    ctx.recorder.record(&Decision::about(&*node, action, reason));
    Ok(Action::await_change())
}
