//! Restart policy: whether, and when, a task that ended on its own gets a
//! successor in its slot. Pure: the caller passes the clock.
//!
//! Docker's semantics: `condition` any | on-failure (anything but a clean
//! exit) | none; the successor starts `delay` after the task ended; at most
//! `maxAttempts` restarts (0 = unlimited) counted within the last `window`
//! (0 = ever). The count comes from the slot's finished tasks in the store
//! — no memory of its own, so a new leader continues the count — which is
//! why history trimming keeps the tasks still being counted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shoal_crd::{RestartCondition, RestartPolicy, TaskState};

use crate::tasks::TaskView;

/// What to do about a task that ended while desired running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartDecision {
    /// Create its successor now; this is restart number `attempt`.
    Restart { attempt: u64 },
    /// Not yet: the delay runs for this much longer.
    Wait(Duration),
    /// Never: the slot stays empty until the service changes.
    GiveUp(String),
}

/// Decides for `ended` (the slot's latest task), given the slot's `earlier` tasks.
pub fn decide(policy: &RestartPolicy, ended: &TaskView, earlier: &[&TaskView], now: DateTime<Utc>) -> RestartDecision {
    match policy.condition {
        RestartCondition::None => return RestartDecision::GiveUp("restart condition is none".into()),
        RestartCondition::OnFailure if ended.state == TaskState::Complete => {
            return RestartDecision::GiveUp("task completed and the restart condition is on-failure".into())
        }
        _ => {}
    }
    let attempts = counted(policy, earlier.iter().copied(), now).count() as u64;
    if policy.max_attempts > 0 && attempts >= policy.max_attempts {
        let within = if policy.window.0.is_zero() { String::new() } else { format!(" within {}", policy.window) };
        return RestartDecision::GiveUp(format!(
            "restarted {attempts} time(s){within}: max attempts {} reached",
            policy.max_attempts
        ));
    }
    let ended_at = ended.since.unwrap_or(now);
    let due = ended_at + chrono::Duration::from_std(policy.delay.0).unwrap_or(chrono::Duration::MAX);
    match (due - now).to_std() {
        Ok(wait) if !wait.is_zero() => RestartDecision::Wait(wait),
        _ => RestartDecision::Restart { attempt: attempts + 1 },
    }
}

/// The tasks that count as restart attempts: ended on their own, within
/// the window (if any).
pub fn counted<'a>(
    policy: &'a RestartPolicy,
    tasks: impl Iterator<Item = &'a TaskView> + 'a,
    now: DateTime<Utc>,
) -> impl Iterator<Item = &'a TaskView> + 'a {
    let window = (!policy.window.0.is_zero())
        .then(|| chrono::Duration::from_std(policy.window.0).unwrap_or(chrono::Duration::MAX));
    tasks.filter(move |t| t.ended_by_itself() && window.is_none_or(|w| t.since.is_none_or(|since| now - since <= w)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::new_task;
    use shoal_crd::{Duration as SpecDuration, Service, ServiceSpec, TaskStatus};
    use std::sync::Arc;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + chrono::Duration::seconds(secs)
    }

    fn ended(state: TaskState, secs: i64) -> TaskView {
        let service = Service::new("web", ServiceSpec::from_image("demo"));
        let mut task = new_task(&service, Some(1), Some("n1"), at(0));
        task.status = Some(TaskStatus { state, timestamp: Some(at(secs)), ..Default::default() });
        TaskView::new(Arc::new(task), None)
    }

    fn policy(condition: RestartCondition, delay: u64, max_attempts: u64, window: u64) -> RestartPolicy {
        RestartPolicy {
            condition,
            delay: SpecDuration::from_secs(delay),
            max_attempts,
            window: SpecDuration::from_secs(window),
        }
    }

    #[test]
    fn a_failed_task_restarts_after_the_delay() {
        let p = policy(RestartCondition::Any, 5, 0, 0);
        let task = ended(TaskState::Failed, 100);
        assert_eq!(decide(&p, &task, &[], at(102)), RestartDecision::Wait(Duration::from_secs(3)));
        assert_eq!(decide(&p, &task, &[], at(105)), RestartDecision::Restart { attempt: 1 });
    }

    #[test]
    fn on_failure_leaves_completed_tasks_alone_but_restarts_failed_ones() {
        let p = policy(RestartCondition::OnFailure, 0, 0, 0);
        assert!(matches!(decide(&p, &ended(TaskState::Complete, 0), &[], at(1)), RestartDecision::GiveUp(_)));
        assert_eq!(decide(&p, &ended(TaskState::Failed, 0), &[], at(1)), RestartDecision::Restart { attempt: 1 });
        assert_eq!(decide(&p, &ended(TaskState::Rejected, 0), &[], at(1)), RestartDecision::Restart { attempt: 1 });
    }

    #[test]
    fn condition_none_never_restarts() {
        let p = policy(RestartCondition::None, 0, 0, 0);
        assert_eq!(
            decide(&p, &ended(TaskState::Failed, 0), &[], at(1)),
            RestartDecision::GiveUp("restart condition is none".into())
        );
    }

    #[test]
    fn max_attempts_counts_earlier_failures_of_the_slot() {
        let p = policy(RestartCondition::Any, 0, 2, 0);
        let (a, b) = (ended(TaskState::Failed, 1), ended(TaskState::Failed, 2));
        assert_eq!(decide(&p, &ended(TaskState::Failed, 3), &[&a], at(4)), RestartDecision::Restart { attempt: 2 });
        let RestartDecision::GiveUp(reason) = decide(&p, &ended(TaskState::Failed, 3), &[&a, &b], at(4)) else {
            panic!()
        };
        assert_eq!(reason, "restarted 2 time(s): max attempts 2 reached");
    }

    #[test]
    fn only_failures_within_the_window_count() {
        let p = policy(RestartCondition::Any, 0, 1, 60);
        let old = ended(TaskState::Failed, 0);
        assert_eq!(
            decide(&p, &ended(TaskState::Failed, 100), &[&old], at(100)),
            RestartDecision::Restart { attempt: 1 }
        );
        let recent = ended(TaskState::Failed, 90);
        assert!(matches!(decide(&p, &ended(TaskState::Failed, 100), &[&recent], at(100)), RestartDecision::GiveUp(_)));
    }

    #[test]
    fn tasks_told_to_stop_do_not_count_as_attempts() {
        let p = policy(RestartCondition::Any, 0, 1, 0);
        let stopped = ended(TaskState::Shutdown, 1);
        assert_eq!(
            decide(&p, &ended(TaskState::Failed, 2), &[&stopped], at(3)),
            RestartDecision::Restart { attempt: 1 }
        );
    }
}
