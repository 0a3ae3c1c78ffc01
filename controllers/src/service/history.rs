//! Task history retention: each slot keeps its last N finished tasks
//! (5 by default, Docker's `task-history-limit`); older ones are deleted.
//!
//! "Finished" means told to stop and either stopped, never placed, or on a
//! node that is gone (its agent cannot report any more; when it returns it
//! stops whatever it still runs of a task that no longer exists).
//!
//! Kept beyond the limit: the tasks the restart policy still counts
//! (`maxAttempts` within `window`), so trimming never resets the count.

use chrono::{DateTime, Utc};
use shoal_crd::RestartPolicy;

use super::restart::counted;
use crate::tasks::{NodeCondition, TaskView};

/// Whether `task` is finished, given the condition of its node.
pub fn finished(task: &TaskView, node: NodeCondition) -> bool {
    !task.wanted() && (task.state.is_terminal() || task.node().is_none() || !node.keeps_tasks())
}

/// The tasks of one slot (oldest first) to delete: the finished ones
/// beyond the newest `limit`, except those still counted for restarts.
/// `keep_latest` protects the slot's newest task (it marks a slot that
/// gave up restarting); slots no longer wanted keep no history at all.
pub fn trim<'a>(
    slot: &[&'a TaskView],
    limit: usize,
    policy: &RestartPolicy,
    keep_latest: bool,
    node: impl Fn(&TaskView) -> NodeCondition,
    now: DateTime<Utc>,
) -> Vec<&'a TaskView> {
    let limit = if keep_latest { limit } else { 0 };
    let finished: Vec<&TaskView> = slot.iter().copied().filter(|t| finished(t, node(t))).collect();
    let excess = finished.len().saturating_sub(limit);
    let mut doomed: Vec<&TaskView> = finished.into_iter().take(excess).collect();
    if policy.max_attempts > 0 && keep_latest {
        // The newest `maxAttempts` of them are all a count can ever need.
        let all: Vec<&str> = counted(policy, slot.iter().copied(), now).map(TaskView::name).collect();
        let still_counted = &all[all.len().saturating_sub(policy.max_attempts as usize)..];
        doomed.retain(|t| !still_counted.contains(&t.name()));
    }
    if keep_latest {
        if let Some(latest) = slot.last() {
            doomed.retain(|t| t.name() != latest.name());
        }
    }
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::new_task;
    use shoal_crd::{Duration as SpecDuration, RestartCondition, Service, ServiceSpec, TaskState, TaskStatus};
    use std::sync::Arc;

    fn task(state: TaskState, desired: TaskState) -> TaskView {
        let service = Service::new("web", ServiceSpec::from_image("demo"));
        let mut task = new_task(&service, Some(1), Some("n1"), Utc::now());
        task.spec.desired_state = desired;
        task.status = Some(TaskStatus { state, timestamp: Some(Utc::now()), ..Default::default() });
        TaskView::new(Arc::new(task), None)
    }

    fn names(tasks: &[&TaskView]) -> Vec<String> {
        tasks.iter().map(|t| t.name().to_string()).collect()
    }

    const READY: fn(&TaskView) -> NodeCondition = |_| NodeCondition::Active;

    #[test]
    fn a_slot_keeps_its_last_five_finished_tasks() {
        let mut slot: Vec<TaskView> = (0..8).map(|_| task(TaskState::Shutdown, TaskState::Shutdown)).collect();
        slot.push(task(TaskState::Running, TaskState::Running));
        let refs: Vec<&TaskView> = slot.iter().collect();
        let doomed = trim(&refs, 5, &RestartPolicy::default(), true, READY, Utc::now());
        assert_eq!(names(&doomed), names(&refs[..3]), "the three oldest go");
    }

    #[test]
    fn tasks_still_stopping_are_not_history_yet() {
        let slot = [task(TaskState::Running, TaskState::Shutdown), task(TaskState::Running, TaskState::Running)];
        let refs: Vec<&TaskView> = slot.iter().collect();
        assert!(trim(&refs, 0, &RestartPolicy::default(), true, READY, Utc::now()).is_empty());
        let gone = |_: &TaskView| NodeCondition::Down;
        assert_eq!(trim(&refs, 0, &RestartPolicy::default(), true, gone, Utc::now()).len(), 1, "its node is gone");
    }

    #[test]
    fn failures_still_counted_by_the_restart_policy_are_kept() {
        let slot: Vec<TaskView> = (0..4).map(|_| task(TaskState::Failed, TaskState::Shutdown)).collect();
        let refs: Vec<&TaskView> = slot.iter().collect();
        let policy = RestartPolicy {
            condition: RestartCondition::Any,
            delay: SpecDuration::default(),
            max_attempts: 3,
            window: SpecDuration::default(),
        };
        let doomed = trim(&refs, 1, &policy, true, READY, Utc::now());
        assert_eq!(names(&doomed), names(&refs[..1]), "the newest three are still counted");
    }

    #[test]
    fn slots_no_longer_wanted_keep_no_history() {
        let slot = [task(TaskState::Shutdown, TaskState::Shutdown), task(TaskState::Complete, TaskState::Shutdown)];
        let refs: Vec<&TaskView> = slot.iter().collect();
        assert_eq!(trim(&refs, 5, &RestartPolicy::default(), false, READY, Utc::now()).len(), 2);
    }
}
