//! Where tasks go, as pure functions: SwarmKit's filter pipeline (each
//! node is kept or rejected by the first filter it fails, and the
//! rejections explain an unplaceable task), then spread: the node with
//! the fewest tasks of this service wins, ties broken by fewest tasks in
//! total, then by name — after `spread` preferences, which first balance
//! the service over the values of a node label.

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_crd::{Node, ServiceSpec};

use super::constraints::{all_match, Constraint, ConstraintError};
use crate::tasks::NodeCondition;

/// One node as the scheduler sees it, with the load it already carries.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub node: Arc<Node>,
    pub condition: NodeCondition,
    /// Tasks of the service being placed.
    pub service_tasks: u64,
    /// Tasks of every service.
    pub total_tasks: u64,
    /// CPUs reserved by the tasks on it.
    pub reserved_cpus: f64,
    /// Memory (bytes) reserved by the tasks on it.
    pub reserved_memory: u64,
}

impl Candidate {
    /// A node carrying nothing yet.
    pub fn idle(node: Arc<Node>) -> Self {
        let condition = NodeCondition::of(Some(&node));
        Self { node, condition, service_tasks: 0, total_tasks: 0, reserved_cpus: 0.0, reserved_memory: 0 }
    }

    fn name(&self) -> &str {
        &self.node.metadata.name
    }
}

/// What one task of a service asks of a node.
#[derive(Debug, Clone, Default)]
pub struct Demand {
    pub constraints: Vec<Constraint>,
    pub max_replicas_per_node: Option<u64>,
    pub cpus: f64,
    pub memory: u64,
    /// Label names to spread over, in order (`zone` for `node.labels.zone`).
    pub spread: Vec<String>,
}

impl Demand {
    /// The demand of one task of `spec`; fails on a bad constraint.
    pub fn of(spec: &ServiceSpec) -> Result<Self, ConstraintError> {
        let reservations = spec.resources.reservations.clone().unwrap_or_default();
        let spread = spec
            .placement
            .preferences
            .iter()
            .map(|p| p.spread.strip_prefix("node.labels.").unwrap_or(&p.spread).to_string())
            .collect();
        Ok(Self {
            constraints: Constraint::parse_all(&spec.placement.constraints)?,
            max_replicas_per_node: spec.placement.max_replicas_per_node,
            cpus: reservations.cpus.unwrap_or(0.0),
            memory: reservations.memory.unwrap_or(0),
            spread,
        })
    }
}

/// The filters, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    NotAvailable,
    ConstraintMismatch,
    MaxReplicas,
    InsufficientResources,
}

impl Rejection {
    fn explain(self, nodes: usize) -> String {
        let (one, many) = match self {
            Rejection::NotAvailable => ("node not available for new tasks", "nodes not available for new tasks"),
            Rejection::ConstraintMismatch => ("node had constraint mismatch", "nodes had constraint mismatch"),
            Rejection::MaxReplicas => ("node reached max replicas per node", "nodes reached max replicas per node"),
            Rejection::InsufficientResources => ("node had insufficient resources", "nodes had insufficient resources"),
        };
        format!("{nodes} {}", if nodes == 1 { one } else { many })
    }
}

/// The first filter `candidate` fails for `demand`, if any.
pub fn reject(demand: &Demand, candidate: &Candidate) -> Option<Rejection> {
    if candidate.condition != NodeCondition::Active {
        return Some(Rejection::NotAvailable);
    }
    if !all_match(&demand.constraints, &candidate.node) {
        return Some(Rejection::ConstraintMismatch);
    }
    if demand.max_replicas_per_node.is_some_and(|max| candidate.service_tasks >= max) {
        return Some(Rejection::MaxReplicas);
    }
    // Called for every node for every task placed: borrow, never clone.
    let (cpus, memory) = candidate.node.status.as_ref().map_or((0, 0), |s| (s.cpus, s.memory));
    let cpus_left = f64::from(cpus) - candidate.reserved_cpus;
    let memory_left = memory.saturating_sub(candidate.reserved_memory);
    if (demand.cpus > 0.0 && cpus_left + 1e-9 < demand.cpus) || (demand.memory > 0 && memory_left < demand.memory) {
        return Some(Rejection::InsufficientResources);
    }
    None
}

/// Docker's explanation: `no suitable node (1 node not available for new
/// tasks; 2 nodes had constraint mismatch)`.
pub fn explain(demand: &Demand, candidates: &[Candidate]) -> String {
    if candidates.is_empty() {
        return "no suitable node (no nodes registered)".to_string();
    }
    let mut counts: BTreeMap<Rejection, usize> = BTreeMap::new();
    for candidate in candidates {
        if let Some(rejection) = reject(demand, candidate) {
            *counts.entry(rejection).or_default() += 1;
        }
    }
    let parts: Vec<String> = counts.into_iter().map(|(r, n)| r.explain(n)).collect();
    format!("no suitable node ({})", parts.join("; "))
}

/// Places `count` tasks one after another, each on the best node left
/// (loads updated as it goes). `Ok(node)` per placed task; the first task
/// that fits nowhere ends the run with `Err(reason)` for it and every
/// task after it.
pub fn place(demand: &Demand, candidates: &mut [Candidate], count: usize) -> Vec<Result<String, String>> {
    let mut placed = Vec::with_capacity(count);
    for i in 0..count {
        let Some(best) = best(demand, candidates) else {
            let reason = explain(demand, candidates);
            placed.extend((i..count).map(|_| Err(reason.clone())));
            break;
        };
        let chosen = &mut candidates[best];
        chosen.service_tasks += 1;
        chosen.total_tasks += 1;
        chosen.reserved_cpus += demand.cpus;
        chosen.reserved_memory += demand.memory;
        placed.push(Ok(chosen.name().to_string()));
    }
    placed
}

/// The index of the best node that passes every filter.
fn best(demand: &Demand, candidates: &[Candidate]) -> Option<usize> {
    // Per preference: how many of the service's tasks each label value holds.
    let groups: Vec<BTreeMap<String, u64>> = demand
        .spread
        .iter()
        .map(|label| {
            let mut counts = BTreeMap::new();
            for c in candidates {
                *counts.entry(label_of(c, label)).or_default() += c.service_tasks;
            }
            counts
        })
        .collect();
    let score = |c: &Candidate| {
        let spread: Vec<u64> =
            demand.spread.iter().zip(&groups).map(|(label, counts)| counts[&label_of(c, label)]).collect();
        (spread, c.service_tasks, c.total_tasks)
    };
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| reject(demand, c).is_none())
        .min_by(|(_, a), (_, b)| score(a).cmp(&score(b)).then_with(|| a.name().cmp(b.name())))
        .map(|(i, _)| i)
}

fn label_of(candidate: &Candidate, label: &str) -> String {
    candidate.node.spec.labels.get(label).cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crd::{Availability, NodeSpec, NodeState, NodeStatus};

    fn node(name: &str, labels: &[(&str, &str)]) -> Candidate {
        let mut node = Node::new(name, NodeSpec::default());
        node.spec.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        node.status = Some(NodeStatus { state: NodeState::Ready, cpus: 2, memory: 1 << 30, ..Default::default() });
        Candidate::idle(Arc::new(node))
    }

    fn counts(placed: &[Result<String, String>]) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for p in placed {
            *counts.entry(p.clone().unwrap_or_else(|e| e)).or_default() += 1;
        }
        counts
    }

    #[test]
    fn ten_replicas_over_three_equal_nodes_spread_four_three_three() {
        let mut nodes = vec![node("a", &[]), node("b", &[]), node("c", &[])];
        let placed = place(&Demand::default(), &mut nodes, 10);
        let mut spread: Vec<usize> = counts(&placed).into_values().collect();
        spread.sort();
        assert_eq!(spread, [3, 3, 4]);
    }

    #[test]
    fn ties_go_to_the_node_with_fewer_tasks_in_total() {
        let mut nodes = vec![node("a", &[]), node("b", &[])];
        nodes[0].total_tasks = 5;
        assert_eq!(place(&Demand::default(), &mut nodes, 1), [Ok("b".to_string())]);
    }

    #[test]
    fn spread_preferences_balance_label_values_before_nodes() {
        let mut nodes = vec![node("a1", &[("zone", "a")]), node("a2", &[("zone", "a")]), node("b1", &[("zone", "b")])];
        let demand = Demand { spread: vec!["zone".into()], ..Demand::default() };
        let placed = counts(&place(&demand, &mut nodes, 4));
        assert_eq!(placed["b1"], 2, "zone b gets half the tasks: {placed:?}");
        assert_eq!(placed["a1"] + placed["a2"], 2);
    }

    #[test]
    fn max_replicas_per_node_caps_and_explains() {
        let mut nodes = vec![node("a", &[]), node("b", &[])];
        let demand = Demand { max_replicas_per_node: Some(1), ..Demand::default() };
        let placed = place(&demand, &mut nodes, 3);
        assert!(placed[0].is_ok() && placed[1].is_ok());
        assert_eq!(placed[2], Err("no suitable node (2 nodes reached max replicas per node)".into()));
    }

    #[test]
    fn constraint_mismatch_and_unavailable_nodes_are_counted_in_the_reason() {
        let mut nodes = vec![node("a", &[("zone", "b")]), node("b", &[("zone", "b")]), node("c", &[("zone", "a")])];
        let mut drained = (*nodes[2].node).clone();
        drained.spec.availability = Availability::Drain;
        nodes[2] = Candidate::idle(Arc::new(drained));
        let demand = Demand {
            constraints: Constraint::parse_all(&["node.labels.zone==a".into()]).unwrap(),
            ..Demand::default()
        };
        assert_eq!(
            place(&demand, &mut nodes, 1),
            [Err("no suitable node (1 node not available for new tasks; 2 nodes had constraint mismatch)".to_string())]
        );
    }

    #[test]
    fn only_matching_nodes_get_constrained_tasks() {
        let mut nodes = vec![node("a", &[("zone", "a")]), node("b", &[("zone", "b")])];
        let demand = Demand {
            constraints: Constraint::parse_all(&["node.labels.zone==a".into()]).unwrap(),
            ..Demand::default()
        };
        assert_eq!(counts(&place(&demand, &mut nodes, 3))["a"], 3);
    }

    #[test]
    fn reservations_count_against_capacity() {
        let mut nodes = vec![node("a", &[])];
        nodes[0].reserved_cpus = 1.5;
        let demand = Demand { cpus: 0.5, memory: 1 << 29, ..Demand::default() };
        let placed = place(&demand, &mut nodes, 2);
        assert_eq!(placed[0], Ok("a".to_string()));
        assert_eq!(placed[1], Err("no suitable node (1 node had insufficient resources)".to_string()));
    }

    #[test]
    fn no_nodes_at_all_is_said_plainly() {
        assert_eq!(place(&Demand::default(), &mut [], 1), [Err("no suitable node (no nodes registered)".to_string())]);
    }
}
