//! The prober of one running task: a tokio task that runs its probe on the
//! [`Tracker`]'s schedule and publishes the task's health after every probe.
//!
//! The worker owns the monitor and the task's observation: it writes what
//! the monitor publishes (a `watch` channel, so a worker busy elsewhere
//! sees only the latest health — at most one write per probe) and stops the
//! task once it is unhealthy. Dropping the monitor aborts the prober and
//! with it a probe in flight (its process is killed on drop).

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use shoal_crd::{HealthStatus, ProbeResult, TaskHealth};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{ProbeConfig, Tracker};

/// What one probe run came to: its exit code (-1 when it could not run or
/// timed out) and output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: i32,
    pub output: String,
}

/// A running prober; probing stops when this is dropped.
pub struct HealthMonitor {
    health: watch::Receiver<TaskHealth>,
    prober: JoinHandle<()>,
}

impl HealthMonitor {
    /// Probes with `run` (given the probe's argv and timeout) on `probe`'s
    /// schedule, from `health`, for a task that started at `started`.
    pub fn spawn<F, Fut>(probe: ProbeConfig, health: TaskHealth, started: Instant, run: F) -> Self
    where
        F: Fn(Vec<String>, Duration) -> Fut + Send + 'static,
        Fut: Future<Output = Outcome> + Send,
    {
        let (tx, rx) = watch::channel(health.clone());
        let prober = tokio::spawn(async move {
            let mut tracker = Tracker::new(&probe, health);
            while tracker.health().status != HealthStatus::Unhealthy {
                tokio::time::sleep(tracker.next_delay(started.elapsed())).await;
                let since_start = started.elapsed();
                let start = Utc::now();
                let outcome = run(probe.argv.clone(), probe.timeout).await;
                let result =
                    ProbeResult { start, end: Utc::now(), exit_code: outcome.exit_code, output: outcome.output };
                tracker.record(result, since_start);
                if tx.send(tracker.health().clone()).is_err() {
                    return;
                }
            }
        });
        Self { health: rx, prober }
    }

    /// The task's health after the next probe the worker has not seen yet;
    /// never resolves once probing ended (the task is unhealthy).
    pub async fn changed(&mut self) -> TaskHealth {
        if self.health.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.health.borrow_and_update().clone()
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.prober.abort();
    }
}

/// The next health of `monitor`, or never when there is none: for `select!`.
pub async fn next(monitor: &mut Option<HealthMonitor>) -> TaskHealth {
    match monitor {
        Some(monitor) => monitor.changed().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    fn probe(retries: u32, start_period: Duration) -> ProbeConfig {
        crate::health::config::test_probe(Duration::from_millis(500), Duration::from_millis(100), retries, start_period)
    }

    /// A probe answering with the exit codes in turn (the last one forever), counting runs.
    fn scripted(
        codes: &'static [i32],
        runs: Arc<AtomicUsize>,
    ) -> impl Fn(Vec<String>, Duration) -> std::future::Ready<Outcome> + Send + 'static {
        move |_, _| {
            let n = runs.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Outcome { exit_code: codes[n.min(codes.len() - 1)], output: String::new() })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_monitor_probes_on_schedule_and_stops_once_unhealthy() {
        let runs = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut monitor = HealthMonitor::spawn(
            probe(2, Duration::ZERO),
            TaskHealth::default(),
            started,
            scripted(&[0, 1, 1], runs.clone()),
        );
        let healthy = monitor.changed().await;
        assert_eq!((healthy.status, started.elapsed()), (HealthStatus::Healthy, Duration::from_millis(500)));
        assert_eq!(monitor.changed().await.failing_streak, 1);
        let unhealthy = monitor.changed().await;
        assert_eq!((unhealthy.status, unhealthy.log.len()), (HealthStatus::Unhealthy, 3));
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "no probe after unhealthy");
    }

    #[tokio::test(start_paused = true)]
    async fn the_start_period_probes_at_the_start_interval_without_counting_failures() {
        let runs = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut monitor = HealthMonitor::spawn(
            probe(1, Duration::from_secs(1)),
            TaskHealth::default(),
            started,
            scripted(&[1, 1, 1, 0], runs.clone()),
        );
        for _ in 0..3 {
            let health = monitor.changed().await;
            assert_eq!((health.status, health.failing_streak), (HealthStatus::Starting, 0));
        }
        let healthy = monitor.changed().await;
        assert_eq!((healthy.status, started.elapsed()), (HealthStatus::Healthy, Duration::from_millis(400)));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_monitor_stops_probing() {
        let runs = Arc::new(AtomicUsize::new(0));
        let mut monitor = HealthMonitor::spawn(
            probe(3, Duration::ZERO),
            TaskHealth::default(),
            Instant::now(),
            scripted(&[0], runs.clone()),
        );
        monitor.changed().await;
        drop(monitor);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
