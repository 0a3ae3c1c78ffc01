//! The service loop's plan, pure: given a service's tasks (with what their
//! agents report), which slots it wants, the nodes' conditions and the
//! clock, which tasks to create, stop and delete.
//!
//! A slot is a replica number (replicated mode) or a node (global mode).
//! Rules, after SwarmKit's orchestrators:
//! - A wanted slot has one task desired running: its newest. Older ones
//!   still desired running are stopped — so when a down node comes back,
//!   its stale task is already told to stop. The one exception is a
//!   start-first rolling update's handover (see [`crate::update`]): the old
//!   task keeps running until its replacement, of another spec, is ready.
//! - A slot whose task was told to stop (a stop-first update) gets its
//!   successor once that task has stopped, or its node is gone.
//! - A task on a down, drained or vanished node is stopped and replaced.
//! - A task that ended on its own is replaced per the restart policy
//!   ([`super::restart`]); a slot that gave up stays empty until the
//!   service's spec changes.
//! - Slots no longer wanted (scaled down, node no longer eligible) have
//!   their tasks stopped.
//! - History is trimmed ([`super::history`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shoal_crd::RestartPolicy;

use super::history;
use super::restart::{decide, RestartDecision};
use crate::tasks::{NodeCondition, TaskView};

/// A replica number or, in global mode, a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    Replica(u64),
    Node(String),
}

impl Slot {
    /// The slot a task belongs to.
    pub fn of(task: &TaskView) -> Slot {
        match (task.task.spec.slot, task.node()) {
            (Some(slot), _) => Slot::Replica(slot),
            (None, Some(node)) => Slot::Node(node.to_string()),
            (None, None) => Slot::Node(String::new()),
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Replica(n) => write!(f, "slot {n}"),
            Slot::Node(node) => write!(f, "node {node}"),
        }
    }
}

/// What the service wants of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A running task, created if missing.
    Fill,
    /// Whatever runs may stay, but nothing new starts (a paused node in global mode).
    Keep,
}

/// Everything the plan depends on.
pub struct Inputs<'a> {
    /// The service's generation (a slot that gave up is refilled once it moves).
    pub generation: i64,
    pub restart: &'a RestartPolicy,
    pub tasks: &'a [TaskView],
    pub slots: BTreeMap<Slot, Want>,
    pub node: &'a dyn Fn(&str) -> NodeCondition,
    pub history_limit: usize,
    /// Why slots not in `slots` are retired (`3 replicas wanted`).
    pub retired: &'a str,
    pub now: DateTime<Utc>,
}

/// The writes to make, with the decisions behind them.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// New tasks, by slot.
    pub create: Vec<Slot>,
    /// Task names to tell to stop, with why.
    pub shutdown: Vec<(String, String)>,
    /// Task names to delete.
    pub delete: Vec<String>,
    /// Look again after this long (a restart delay running).
    pub requeue_after: Option<Duration>,
    /// (action, reason) per decision, for the log.
    pub decisions: Vec<(String, String)>,
}

impl Plan {
    fn stop(&mut self, task: &TaskView, why: impl Into<String>) {
        self.shutdown.push((task.name().to_string(), why.into()));
    }

    fn replace(&mut self, slot: &Slot, task: &TaskView, action: &str, why: String) {
        self.stop(task, why.clone());
        self.create.push(slot.clone());
        self.decisions.push((format!("{action} {slot}"), format!("task {}: {why}", task.name())));
    }

    fn wait(&mut self, after: Duration) {
        self.requeue_after = Some(self.requeue_after.map_or(after, |d| d.min(after)));
    }
}

/// Plans one service.
pub fn plan(inputs: &Inputs) -> Plan {
    let mut groups: BTreeMap<Slot, Vec<&TaskView>> = BTreeMap::new();
    for task in inputs.tasks {
        groups.entry(Slot::of(task)).or_default().push(task);
    }
    for tasks in groups.values_mut() {
        tasks.sort_by(|a, b| (a.task.metadata.created_at, a.name()).cmp(&(b.task.metadata.created_at, b.name())));
    }
    let mut plan = Plan::default();
    let mut missing = Vec::new();
    for (slot, want) in &inputs.slots {
        if *want == Want::Fill && !groups.contains_key(slot) {
            missing.push(slot.clone());
        }
    }
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(Slot::to_string).collect();
        plan.decisions
            .push((format!("created {} task(s)", missing.len()), format!("no task yet for {}", list.join(", "))));
        plan.create.extend(missing);
    }
    let mut scaled_down = 0;
    for (slot, tasks) in &groups {
        let want = inputs.slots.get(slot).copied();
        scaled_down += plan_slot(inputs, slot, want, tasks, &mut plan);
        let node = |t: &TaskView| t.node().map_or(NodeCondition::Down, inputs.node);
        for doomed in history::trim(tasks, inputs.history_limit, inputs.restart, want.is_some(), node, inputs.now) {
            plan.delete.push(doomed.name().to_string());
        }
    }
    if scaled_down > 0 {
        plan.decisions.push((format!("stopped {scaled_down} task(s)"), inputs.retired.to_string()));
    }
    plan
}

/// A start-first handover in progress: `newer` is a rolling update's
/// replacement of `older`, not ready yet. The update loop stops `older`
/// once it is (and a rollback may keep `older` and stop `newer` instead).
fn handing_over(older: &TaskView, newer: &TaskView) -> bool {
    !newer.ready && !older.task.spec.spec.same_template(&newer.task.spec.spec)
}

/// Plans one slot that has tasks; returns 1 if it stopped a task of a
/// slot no longer wanted.
fn plan_slot(inputs: &Inputs, slot: &Slot, want: Option<Want>, tasks: &[&TaskView], plan: &mut Plan) -> usize {
    // The slot's task: its newest desired running, else its newest.
    let Some(latest) = tasks.iter().rev().find(|t| t.wanted()).or(tasks.last()).copied() else { return 0 };
    let earlier: Vec<&TaskView> = tasks.iter().copied().filter(|t| t.name() != latest.name()).collect();
    for older in earlier.iter().filter(|t| t.wanted()) {
        if handing_over(older, latest) {
            continue;
        }
        plan.stop(older, format!("superseded by task {}", latest.name()));
        plan.decisions.push((
            format!("stopped stale task of {slot}"),
            format!("task {} is newer than {}", latest.name(), older.name()),
        ));
    }
    let Some(want) = want else {
        if latest.wanted() {
            plan.stop(latest, "slot no longer wanted");
            return 1;
        }
        return 0;
    };
    if want == Want::Keep {
        return 0;
    }
    if !latest.wanted() {
        // Stop-first: the successor starts once its predecessor has stopped.
        let stopping = !latest.state.is_terminal() && latest.node().is_some_and(|n| (inputs.node)(n).keeps_tasks());
        let gave_up = latest.ended_by_itself() && latest.task.spec.service_generation >= inputs.generation;
        if !gave_up && !stopping {
            plan.create.push(slot.clone());
            plan.decisions
                .push((format!("created task for {slot}"), format!("its last task {} was stopped", latest.name())));
        }
        return 0;
    }
    if let Some(node) = latest.node() {
        let why = match (inputs.node)(node) {
            NodeCondition::Down => Some(format!("node {node} is down")),
            NodeCondition::Drained => Some(format!("node {node} is drained")),
            NodeCondition::Active | NodeCondition::Paused => None,
        };
        if let Some(why) = why {
            plan.replace(slot, latest, "rescheduled", why);
            return 0;
        }
    }
    if latest.state.is_terminal() {
        let ended = match latest.exit_code {
            Some(code) => format!("{:?} (exit code {code})", latest.state).to_lowercase(),
            None => format!("{:?}", latest.state).to_lowercase(),
        };
        match decide(inputs.restart, latest, &earlier, inputs.now) {
            RestartDecision::Restart { attempt } => {
                plan.replace(slot, latest, "restarted", format!("{ended}; restart attempt {attempt}"))
            }
            RestartDecision::Wait(after) => plan.wait(after),
            RestartDecision::GiveUp(why) => {
                plan.stop(latest, format!("{ended}; not restarted: {why}"));
                plan.decisions.push((format!("gave up on {slot}"), format!("task {} {ended}; {why}", latest.name())));
            }
        }
    }
    0
}
