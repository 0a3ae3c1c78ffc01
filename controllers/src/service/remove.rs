//! A deleted service's tasks: told to stop, then deleted once stopped —
//! or at once when never placed or on a node that is gone, or after the
//! stop grace period plus a margin when the agent never confirms.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shoal_store::client::StoreError;

use super::Context;
use crate::runtime::{Action, Decision};
use crate::tasks::{shut_down, NodeCondition, TaskView};
use crate::writes::Batch;

/// Beyond a task's stop grace period, how long to wait for its agent to
/// confirm it stopped before deleting it anyway.
const CONFIRM_MARGIN: Duration = Duration::from_secs(10);

/// One pass over the tasks of deleted service `service`.
pub async fn reconcile(service: &str, tasks: &[TaskView], ctx: &Arc<Context>) -> Result<Action, StoreError> {
    if tasks.is_empty() {
        return Ok(Action::await_change());
    }
    let now = Utc::now();
    let mut batch = Batch::new();
    let (mut stopped, mut deleted) = (0, 0);
    for task in tasks {
        let node = task.node().map(|n| NodeCondition::of(ctx.caches.nodes.get(n).as_deref()));
        let gone = node.is_none_or(|n| !n.keeps_tasks());
        let grace = task.task.spec.spec.stop_grace_period.0 + CONFIRM_MARGIN;
        let told_at = task.task.metadata.updated_at.unwrap_or(now);
        let overdue = (now - told_at).to_std().is_ok_and(|waited| waited >= grace);
        if gone || task.state.is_terminal() || (!task.wanted() && overdue) {
            batch.delete(&ctx.store, &*task.task);
            deleted += 1;
        } else if task.wanted() {
            batch.update(&ctx.store, &*task.task, shut_down(&task.task));
            stopped += 1;
        }
    }
    if !batch.is_empty() {
        let written = batch.commit(&ctx.store, &format!("tasks of removed service {service}")).await?;
        ctx.expectations.expect(service, written);
        let action = format!("stopped {stopped} and deleted {deleted} task(s)");
        ctx.recorder.record(&Decision::about_name(service, action, "service removed"));
    }
    // Not everything is gone yet: observations wake us, this is the backstop.
    Ok(Action::requeue(Duration::from_secs(2)))
}
