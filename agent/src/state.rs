//! The task state machine, as pure functions: given what the agent has
//! observed and what controllers desire, the one next step to take
//! (SwarmKit's `exec.Do`), and how a process exit maps to a final state.
//!
//! The path of a task that is wanted running: assigned → accepted (its image
//! resolved, else rejected) → preparing (its directory and launch written) →
//! starting (its shim spawned) → running → complete or failed. A desired
//! state of shutdown or remove stops it (stop signal, grace, SIGKILL) →
//! shutdown; a task stopped before it started goes to shutdown directly.
//! Final states are never left: restarting is the service controller's job,
//! with a new task.

use shoal_crd::TaskState;

use crate::taskdir::ExitRecord;

/// The next thing to do for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Resolve the image: → accepted or rejected.
    Accept,
    /// Write the task's directory and launch record: → preparing.
    Prepare,
    /// Spawn the shim and wait for the process: → starting → running.
    Start,
    /// The process runs: wait for it to exit or for the desired state to change.
    Wait,
    /// Stop the running process: → shutdown.
    Stop,
    /// Never started and no longer wanted: → shutdown without doing anything.
    Cancel,
    /// Nothing to do until the desired state changes.
    Idle,
}

/// The step for a task observed in `observed` and desired in `desired`.
pub fn next_step(observed: TaskState, desired: TaskState) -> Step {
    if observed.is_terminal() {
        return Step::Idle;
    }
    let stopping = desired > TaskState::Running;
    match observed {
        TaskState::Starting | TaskState::Running if stopping => Step::Stop,
        _ if stopping => Step::Cancel,
        _ if observed >= desired && observed != TaskState::Starting => {
            if observed == TaskState::Running {
                Step::Wait
            } else {
                Step::Idle
            }
        }
        TaskState::New | TaskState::Pending | TaskState::Assigned => Step::Accept,
        TaskState::Accepted => Step::Prepare,
        TaskState::Preparing => Step::Start,
        _ => Step::Wait,
    }
}

/// The final state and message for a process that exited; `stopping` when
/// the agent stopped it because it is no longer wanted.
pub fn exit_outcome(exit: &ExitRecord, stopping: bool) -> (TaskState, String) {
    if stopping {
        let how = match (exit.code, exit.signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => "gone".into(),
        };
        return (TaskState::Shutdown, format!("shutdown ({how})"));
    }
    match (exit.code, exit.signal, &exit.error) {
        (_, _, Some(error)) => (TaskState::Failed, error.clone()),
        (Some(0), _, _) => (TaskState::Complete, "finished".into()),
        (Some(code), _, _) => (TaskState::Failed, format!("task: non-zero exit ({code})")),
        (None, Some(signal), _) => (TaskState::Failed, format!("task: killed by signal {signal}")),
        _ => (TaskState::Failed, "task: exited for an unknown reason".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    #[test]
    fn a_task_wanted_running_walks_swarms_states_one_step_at_a_time() {
        let path: Vec<Step> =
            [Assigned, Accepted, Preparing, Starting, Running].iter().map(|&s| next_step(s, Running)).collect();
        assert_eq!(path, [Step::Accept, Step::Prepare, Step::Start, Step::Wait, Step::Wait]);
    }

    #[test]
    fn shutdown_stops_a_started_task_and_cancels_one_that_never_started() {
        assert_eq!(next_step(Running, Shutdown), Step::Stop);
        assert_eq!(next_step(Starting, Remove), Step::Stop);
        assert_eq!(next_step(Accepted, Shutdown), Step::Cancel);
        assert_eq!(next_step(Assigned, Remove), Step::Cancel);
    }

    #[test]
    fn final_states_are_never_left() {
        for state in [Complete, Failed, Shutdown, Rejected, Orphaned] {
            assert_eq!(next_step(state, Running), Step::Idle, "{state:?}");
            assert_eq!(next_step(state, Shutdown), Step::Idle, "{state:?}");
        }
    }

    #[test]
    fn a_task_desired_below_running_goes_no_further() {
        assert_eq!(next_step(Assigned, Accepted), Step::Accept);
        assert_eq!(next_step(Accepted, Accepted), Step::Idle);
    }

    #[test]
    fn exits_map_to_complete_failed_or_shutdown() {
        let exit = |code, signal| ExitRecord { code, signal, ..Default::default() };
        assert_eq!(exit_outcome(&exit(Some(0), None), false).0, Complete);
        assert_eq!(exit_outcome(&exit(Some(1), None), false), (Failed, "task: non-zero exit (1)".into()));
        assert_eq!(exit_outcome(&exit(None, Some(9)), false).1, "task: killed by signal 9");
        assert_eq!(exit_outcome(&exit(None, Some(15)), true), (Shutdown, "shutdown (signal 15)".into()));
        let never = ExitRecord { error: Some("cannot start \"x\"".into()), ..Default::default() };
        assert_eq!(exit_outcome(&never, false).0, Failed);
    }
}
