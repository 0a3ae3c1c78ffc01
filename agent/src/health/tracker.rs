//! The health state machine, as pure functions of probe results and the
//! time since the task started (an explicit clock, so tests need no sleeps).
//!
//! Docker's rules (`daemon/health.go`): a task is `starting` until a probe
//! succeeds, then `healthy`; a success resets the failing streak; a failure
//! adds to it unless the task is still `starting` within its start period;
//! `retries` consecutive counted failures make it `unhealthy`. While
//! `starting` within the start period probes run every `start_interval`,
//! otherwise every `interval`. The last [`TaskHealth::MAX_LOG`] results are
//! kept, their output cut to [`ProbeResult::MAX_OUTPUT`] bytes.

use std::time::Duration;

use shoal_crd::{HealthStatus, ProbeResult, TaskHealth};

use super::ProbeConfig;

/// One task's health, advanced one probe result at a time.
#[derive(Debug, Clone)]
pub struct Tracker {
    retries: u32,
    interval: Duration,
    start_period: Duration,
    start_interval: Duration,
    health: TaskHealth,
}

impl Tracker {
    /// Tracks `probe` from `health` (the default `starting` for a new task,
    /// the last observed one for a re-adopted task).
    pub fn new(probe: &ProbeConfig, health: TaskHealth) -> Self {
        Self {
            retries: probe.retries.max(1),
            interval: probe.interval,
            start_period: probe.start_period,
            start_interval: probe.start_interval,
            health,
        }
    }

    pub fn health(&self) -> &TaskHealth {
        &self.health
    }

    /// Records a probe that began `since_start` after the task started;
    /// returns the new status if it changed.
    pub fn record(&mut self, mut result: ProbeResult, since_start: Duration) -> Option<HealthStatus> {
        let before = self.health.status;
        if result.exit_code == 0 {
            self.health.failing_streak = 0;
            self.health.status = HealthStatus::Healthy;
        } else if !self.in_start_period(since_start) {
            self.health.failing_streak = self.health.failing_streak.saturating_add(1);
            if self.health.failing_streak >= self.retries {
                self.health.status = HealthStatus::Unhealthy;
            }
        }
        result.output = ProbeResult::truncate_output(&result.output);
        let log = &mut self.health.log;
        log.push(result);
        let excess = log.len().saturating_sub(TaskHealth::MAX_LOG);
        log.drain(..excess);
        (self.health.status != before).then_some(self.health.status)
    }

    /// How long to wait before the next probe, `since_start` after the task started.
    pub fn next_delay(&self, since_start: Duration) -> Duration {
        if self.in_start_period(since_start) {
            self.start_interval
        } else {
            self.interval
        }
    }

    /// Starting and within the start period: failures do not count yet.
    fn in_start_period(&self, since_start: Duration) -> bool {
        self.health.status == HealthStatus::Starting && since_start < self.start_period
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthStatus::*;

    fn probe(retries: u32, start_period: u64) -> ProbeConfig {
        crate::health::config::test_probe(
            Duration::from_secs(5),
            Duration::from_secs(1),
            retries,
            Duration::from_secs(start_period),
        )
    }

    fn result(exit_code: i32, output: &str) -> ProbeResult {
        let at = chrono::DateTime::UNIX_EPOCH;
        ProbeResult { start: at, end: at, exit_code, output: output.into() }
    }

    /// Feeds exit codes at the given seconds since start; the status after each.
    fn run(tracker: &mut Tracker, probes: &[(u64, i32)]) -> Vec<(HealthStatus, u32)> {
        probes
            .iter()
            .map(|&(at, code)| {
                tracker.record(result(code, ""), Duration::from_secs(at));
                (tracker.health().status, tracker.health().failing_streak)
            })
            .collect()
    }

    #[test]
    fn a_task_is_starting_until_the_first_success_then_healthy() {
        let mut tracker = Tracker::new(&probe(3, 0), TaskHealth::default());
        assert_eq!(tracker.health().status, Starting);
        assert_eq!(tracker.record(result(0, "ok"), Duration::from_secs(5)), Some(Healthy));
        assert_eq!(tracker.record(result(0, "ok"), Duration::from_secs(10)), None, "no change, no transition");
        assert_eq!(tracker.health().log.len(), 2);
    }

    #[test]
    fn retries_consecutive_failures_make_a_task_unhealthy() {
        let mut tracker = Tracker::new(&probe(3, 0), TaskHealth::default());
        let seen = run(&mut tracker, &[(5, 0), (10, 1), (15, 1), (20, 1)]);
        assert_eq!(seen, [(Healthy, 0), (Healthy, 1), (Healthy, 2), (Unhealthy, 3)]);
        // A task that never succeeded becomes unhealthy the same way.
        let mut never = Tracker::new(&probe(2, 0), TaskHealth::default());
        assert_eq!(run(&mut never, &[(5, 1), (10, 1)]), [(Starting, 1), (Unhealthy, 2)]);
    }

    #[test]
    fn a_transient_failure_that_recovers_before_retries_leaves_the_task_alone() {
        let mut tracker = Tracker::new(&probe(3, 0), TaskHealth::default());
        let seen = run(&mut tracker, &[(5, 0), (10, 1), (15, 1), (20, 0), (25, 1), (30, 1)]);
        assert_eq!(seen, [(Healthy, 0), (Healthy, 1), (Healthy, 2), (Healthy, 0), (Healthy, 1), (Healthy, 2)]);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_until_it_ends() {
        let mut tracker = Tracker::new(&probe(1, 10), TaskHealth::default());
        let seen = run(&mut tracker, &[(1, 1), (5, 1), (9, 1)]);
        assert_eq!(seen, [(Starting, 0), (Starting, 0), (Starting, 0)], "one counted failure would be unhealthy");
        assert_eq!(tracker.health().log.len(), 3, "uncounted failures are still logged");
        assert_eq!(run(&mut tracker, &[(10, 1)]), [(Unhealthy, 1)], "the start period is over");
    }

    #[test]
    fn after_a_success_the_start_period_no_longer_shields_failures() {
        let mut tracker = Tracker::new(&probe(1, 60), TaskHealth::default());
        assert_eq!(run(&mut tracker, &[(1, 0), (2, 1)]), [(Healthy, 0), (Unhealthy, 1)]);
    }

    #[test]
    fn probes_run_at_the_start_interval_while_starting_in_the_start_period() {
        let mut tracker = Tracker::new(&probe(3, 10), TaskHealth::default());
        assert_eq!(tracker.next_delay(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(tracker.next_delay(Duration::from_secs(10)), Duration::from_secs(5), "start period over");
        tracker.record(result(0, ""), Duration::from_secs(2));
        assert_eq!(tracker.next_delay(Duration::from_secs(3)), Duration::from_secs(5), "healthy: the normal interval");
    }

    #[test]
    fn the_log_keeps_the_last_five_results_with_output_cut_to_4_kib() {
        let mut tracker = Tracker::new(&probe(100, 0), TaskHealth::default());
        for i in 0..7 {
            tracker.record(result(i, &i.to_string()), Duration::from_secs(i as u64));
        }
        let outputs: Vec<&str> = tracker.health().log.iter().map(|r| r.output.as_str()).collect();
        assert_eq!(outputs, ["2", "3", "4", "5", "6"], "oldest first, the oldest dropped");
        tracker.record(result(1, &"x".repeat(10_000)), Duration::from_secs(8));
        assert_eq!(tracker.health().log.last().unwrap().output.len(), ProbeResult::MAX_OUTPUT);
    }

    #[test]
    fn a_readopted_task_resumes_from_its_observed_health() {
        let observed = TaskHealth { status: Healthy, failing_streak: 2, log: vec![result(1, "")] };
        let mut tracker = Tracker::new(&probe(3, 0), observed);
        assert_eq!(tracker.record(result(1, ""), Duration::from_secs(100)), Some(Unhealthy));
    }
}
