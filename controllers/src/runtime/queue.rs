//! The work queue between "something changed" and "reconcile it": keyed by
//! object name, it deduplicates, delays, serializes per key, bounds
//! concurrency and backs off failing keys (kube-runtime's scheduler and
//! runner in one place).
//!
//! # Guarantees
//! - A key queued many times before it runs, runs once.
//! - Of several requested times for one key, the earliest wins.
//! - A key is never handed out while it is being reconciled; queued
//!   meanwhile, it becomes due again once [`WorkQueue::finish`] is called.
//! - At most `concurrency` keys are handed out at once.
//! - A failing key waits at least its backoff (doubling per consecutive
//!   failure, capped), reset by its next success.
//!
//! # Caveats
//! - Earliest-wins means a change arriving during a key's backoff runs it
//!   at once: new information is worth a try. A reconciler that fails after
//!   changing its own object therefore retries at the pace of its writes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Per-key exponential backoff after failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub initial: Duration,
    /// The wait never grows beyond this.
    pub max: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling to 60 s.
    fn default() -> Self {
        Self { initial: Duration::from_millis(100), max: Duration::from_secs(60) }
    }
}

impl Backoff {
    /// The wait after `failures` consecutive failures (1 = the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// How a handed-out key ended, as told to [`WorkQueue::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Reconciled; run again after the duration, if any.
    Done(Option<Duration>),
    /// Failed; retry after the duration (but no sooner than the key's
    /// backoff), or only on the next change when `None`.
    Failed(Option<Duration>),
}

/// A work queue of object names.
pub struct WorkQueue {
    // A std Mutex, not tokio's: nothing async happens while it is held.
    state: Mutex<State>,
    wake: Notify,
    concurrency: usize,
    backoff: Backoff,
}

#[derive(Default)]
struct State {
    /// Queued keys by due time.
    due: BTreeSet<(Instant, String)>,
    /// Queued keys → their due time (the index into `due`).
    queued: HashMap<String, Instant>,
    /// Keys handed out and not yet finished.
    active: HashSet<String>,
    /// Consecutive failures per key.
    failures: HashMap<String, u32>,
}

impl WorkQueue {
    /// A queue handing out at most `concurrency` keys at once (at least 1).
    pub fn new(concurrency: usize, backoff: Backoff) -> Self {
        Self { state: Mutex::default(), wake: Notify::new(), concurrency: concurrency.max(1), backoff }
    }

    /// Queues `key` to run as soon as possible.
    pub fn enqueue(&self, key: &str) {
        self.enqueue_at(key, Instant::now());
    }

    /// Queues `key` to run after `delay`, unless it is already due sooner.
    pub fn enqueue_after(&self, key: &str, delay: Duration) {
        self.enqueue_at(key, Instant::now() + delay);
    }

    fn enqueue_at(&self, key: &str, at: Instant) {
        let earlier = self.lock().schedule(key, at);
        if earlier {
            self.wake.notify_waiters();
        }
    }

    /// Waits for the next due key that is not being reconciled, while fewer
    /// than `concurrency` keys are out, and marks it as being reconciled.
    /// Cancel-safe: a key is taken only in the poll that returns it.
    pub async fn next(&self) -> String {
        loop {
            // Registered before looking, so a wake-up in between is not lost.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let wait_until = {
                let mut state = self.lock();
                match state.take_due(self.concurrency) {
                    Ok(key) => return key,
                    Err(wait_until) => wait_until,
                }
            };
            match wait_until {
                Some(at) => {
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    /// Ends the reconcile of `key` and schedules what `outcome` asks for.
    /// Returns the delay after which `key` runs again because of this
    /// outcome (a change may still run it sooner).
    pub fn finish(&self, key: &str, outcome: Outcome) -> Option<Duration> {
        let delay = {
            let mut state = self.lock();
            state.active.remove(key);
            let delay = match outcome {
                Outcome::Done(requeue) => {
                    state.failures.remove(key);
                    requeue
                }
                Outcome::Failed(retry) => {
                    let failures = state.failures.entry(key.to_string()).or_default();
                    *failures += 1;
                    let backoff = self.backoff.delay(*failures);
                    retry.map(|retry| retry.max(backoff))
                }
            };
            if let Some(delay) = delay {
                state.schedule(key, Instant::now() + delay);
            }
            delay
        };
        // Always wake: a slot freed, and a key queued meanwhile may now run.
        self.wake.notify_waiters();
        delay
    }

    /// How many keys are queued (including ones queued while running).
    pub fn queued(&self) -> usize {
        self.lock().queued.len()
    }

    /// How many keys are being reconciled.
    pub fn active(&self) -> usize {
        self.lock().active.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("work queue lock")
    }
}

impl State {
    /// Queues `key` at `at` unless it is due sooner; true when this made it
    /// due sooner (or queued it at all).
    fn schedule(&mut self, key: &str, at: Instant) -> bool {
        match self.queued.get(key) {
            Some(&current) if current <= at => false,
            Some(&current) => {
                self.due.remove(&(current, key.to_string()));
                self.queued.insert(key.to_string(), at);
                self.due.insert((at, key.to_string()));
                true
            }
            None => {
                self.queued.insert(key.to_string(), at);
                self.due.insert((at, key.to_string()));
                true
            }
        }
    }

    /// The first due key that is not active, taken and marked active; or
    /// else when to look again (`None`: only when woken).
    fn take_due(&mut self, concurrency: usize) -> Result<String, Option<Instant>> {
        if self.active.len() >= concurrency {
            return Err(None);
        }
        let first = self.due.iter().find(|(_, key)| !self.active.contains(key)).cloned();
        match first {
            Some((at, key)) if at <= Instant::now() => {
                self.due.remove(&(at, key.clone()));
                self.queued.remove(&key);
                self.active.insert(key.clone());
                Ok(key)
            }
            Some((at, _)) => Err(Some(at)),
            None => Err(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn queue(concurrency: usize) -> WorkQueue {
        WorkQueue::new(concurrency, Backoff::default())
    }

    /// The key `next()` hands out right now, if any (lets the runtime run
    /// timers first, so paused time can auto-advance only by zero).
    async fn ready_now(q: &WorkQueue) -> Option<String> {
        tokio::time::timeout(Duration::ZERO, q.next()).await.ok()
    }

    /// Queues `key` and takes it, as the runner does before a reconcile.
    async fn start(q: &WorkQueue, key: &str) {
        q.enqueue(key);
        assert_eq!(ready_now(q).await.as_deref(), Some(key));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_queued_twice_runs_once() {
        let q = queue(4);
        q.enqueue("a");
        q.enqueue("a");
        assert_eq!(q.queued(), 1);
        start(&q, "a").await;
        q.finish("a", Outcome::Done(None));
        assert_eq!(ready_now(&q).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_key_waits_for_its_time() {
        let q = queue(4);
        q.enqueue_after("a", 500 * MS);
        assert_eq!(ready_now(&q).await, None);
        tokio::time::advance(499 * MS).await;
        assert_eq!(ready_now(&q).await, None);
        tokio::time::advance(MS).await;
        assert_eq!(ready_now(&q).await.as_deref(), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_earliest_requested_time_wins() {
        let q = queue(4);
        q.enqueue_after("a", 10 * 1000 * MS);
        q.enqueue_after("a", 100 * MS);
        q.enqueue_after("a", 5 * 1000 * MS);
        tokio::time::advance(100 * MS).await;
        assert_eq!(ready_now(&q).await.as_deref(), Some("a"));
        q.finish("a", Outcome::Done(None));
        tokio::time::advance(10 * 1000 * MS).await;
        assert_eq!(ready_now(&q).await, None, "the later requests were merged into the first");
    }

    #[tokio::test(start_paused = true)]
    async fn next_waits_for_a_delayed_key_without_real_sleeps() {
        let q = queue(4);
        q.enqueue_after("a", 3000 * MS);
        let started = Instant::now();
        assert_eq!(q.next().await, "a");
        assert_eq!(started.elapsed(), 3000 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_never_handed_out_while_it_is_being_reconciled() {
        let q = queue(4);
        start(&q, "a").await;
        q.enqueue("a");
        q.enqueue("b");
        assert_eq!(ready_now(&q).await.as_deref(), Some("b"), "other keys still run");
        assert_eq!(ready_now(&q).await, None, "a is running: not handed out again");
        q.finish("a", Outcome::Done(None));
        assert_eq!(ready_now(&q).await.as_deref(), Some("a"), "queued meanwhile: runs again after");
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_while_running_beats_a_later_requeue() {
        let q = queue(4);
        start(&q, "a").await;
        q.enqueue("a");
        q.finish("a", Outcome::Done(Some(Duration::from_secs(300))));
        assert_eq!(ready_now(&q).await.as_deref(), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_concurrency_keys_are_out_at_once() {
        let q = queue(2);
        for key in ["a", "b", "c"] {
            q.enqueue(key);
        }
        assert_eq!(ready_now(&q).await.as_deref(), Some("a"));
        assert_eq!(ready_now(&q).await.as_deref(), Some("b"));
        assert_eq!(ready_now(&q).await, None, "two are out");
        assert_eq!(q.active(), 2);
        q.finish("b", Outcome::Done(None));
        assert_eq!(ready_now(&q).await.as_deref(), Some("c"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_next_is_woken_by_finish_and_enqueue() {
        let q = std::sync::Arc::new(queue(1));
        q.enqueue("a");
        assert_eq!(q.next().await, "a");
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        q.enqueue("b");
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the only slot is taken");
        q.finish("a", Outcome::Done(None));
        assert_eq!(waiter.await.unwrap(), "b");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_doubling_and_success_resets() {
        let q = queue(1);
        let mut delays = Vec::new();
        q.enqueue("a");
        for _ in 0..4 {
            let started = Instant::now();
            assert_eq!(q.next().await, "a");
            delays.push(started.elapsed());
            q.finish("a", Outcome::Failed(Some(Duration::ZERO)));
        }
        assert_eq!(delays, [Duration::ZERO, 100 * MS, 200 * MS, 400 * MS]);
        assert_eq!(q.next().await, "a");
        q.finish("a", Outcome::Done(None));
        q.enqueue("a");
        assert_eq!(q.next().await, "a");
        assert_eq!(q.finish("a", Outcome::Failed(Some(Duration::ZERO))), Some(100 * MS), "reset by the success");
    }

    #[tokio::test(start_paused = true)]
    async fn a_longer_retry_from_the_error_policy_is_kept_and_none_waits_for_a_change() {
        let q = queue(1);
        q.enqueue("a");
        q.next().await;
        assert_eq!(q.finish("a", Outcome::Failed(Some(Duration::from_secs(5)))), Some(Duration::from_secs(5)));
        q.next().await;
        assert_eq!(q.finish("a", Outcome::Failed(None)), None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(ready_now(&q).await, None);
    }

    #[test]
    fn backoff_is_capped() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(1), 100 * MS);
        assert_eq!(backoff.delay(2), 200 * MS);
        assert_eq!(backoff.delay(10), Duration::from_millis(51_200));
        assert_eq!(backoff.delay(11), Duration::from_secs(60));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(60));
    }
}
