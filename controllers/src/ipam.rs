//! Task subnets per node, as pure functions: the controllers' node loop
//! gives every Node a /24 out of the cluster CIDR (`10.200.0.0/16` by
//! default: 256 nodes of 253 tasks each) and writes it to
//! `status.taskSubnet`; the node's agent puts its bridge on the subnet's
//! `.1` and hands its tasks the other addresses.
//!
//! # Guarantees
//!
//! - Stable: a node keeps the subnet it was given for as long as it stays
//!   valid (inside the cluster CIDR, a /24, not overlapping a node that sorts
//!   before it). Re-running the allocation never moves a node.
//! - Released with the Node: the taken set is computed from the Nodes that
//!   exist, so a deleted node's subnet is free for the next node.
//! - Lowest first: a new node gets the lowest free /24.
//!
//! # Assumptions
//!
//! One writer (the leader's node loop) allocates at a time; should two nodes
//! still end up overlapping (an operator's edit), the one whose name sorts
//! first keeps its subnet and the other is given a new one.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use shoal_crd::Node;

/// The prefix length of one node's task subnet.
pub const NODE_SUBNET_PREFIX: u8 = 24;

/// The cluster CIDR node subnets come from unless configured: `10.200.0.0/16`.
pub fn default_cluster_cidr() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 200, 0, 0), 16).expect("a valid prefix length")
}

/// The lowest /24 of `cluster` that overlaps none of `taken`; `None` when
/// the CIDR is full or smaller than a /24.
pub fn allocate_node_subnet(cluster: Ipv4Net, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    cluster.trunc().subnets(NODE_SUBNET_PREFIX).ok()?.find(|candidate| !taken.iter().any(|t| overlaps(candidate, t)))
}

/// The subnet `node` should have given every Node of the cluster (`nodes`
/// may include `node` itself): its current one while valid, else a newly
/// allocated one. `None` when the cluster CIDR has no /24 left.
///
/// The caller writes the result to `status.taskSubnet` when it differs.
pub fn node_subnet<'a>(node: &Node, nodes: impl IntoIterator<Item = &'a Node>, cluster: Ipv4Net) -> Option<Ipv4Net> {
    let name = &node.metadata.name;
    let others: Vec<(&str, Ipv4Net)> = nodes
        .into_iter()
        .filter(|n| n.metadata.name != *name)
        .filter_map(|n| Some((n.metadata.name.as_str(), subnet_of(n)?)))
        .collect();
    if let Some(current) = subnet_of(node) {
        let valid = current.prefix_len() == NODE_SUBNET_PREFIX && cluster.contains(&current);
        let contested = others.iter().any(|(other, subnet)| other < &name.as_str() && overlaps(&current, subnet));
        if valid && !contested {
            return Some(current);
        }
    }
    let taken: Vec<Ipv4Net> = others.into_iter().map(|(_, subnet)| subnet).collect();
    allocate_node_subnet(cluster, &taken)
}

/// A node's `status.taskSubnet`, when set and a valid CIDR.
pub fn subnet_of(node: &Node) -> Option<Ipv4Net> {
    node.status.as_ref()?.task_subnet.as_deref()?.parse::<Ipv4Net>().ok().map(|net| net.trunc())
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use shoal_crd::{NodeSpec, NodeStatus};

    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    fn node(name: &str, subnet: Option<&str>) -> Node {
        let mut node = Node::new(name, NodeSpec::default());
        node.status = Some(NodeStatus { task_subnet: subnet.map(str::to_string), ..Default::default() });
        node
    }

    #[test]
    fn new_nodes_get_the_lowest_free_slash_24() {
        let cluster = default_cluster_cidr();
        assert_eq!(allocate_node_subnet(cluster, &[]), Some(net("10.200.0.0/24")));
        assert_eq!(
            allocate_node_subnet(cluster, &[net("10.200.0.0/24"), net("10.200.2.0/24")]),
            Some(net("10.200.1.0/24"))
        );
        // Something outside the cluster CIDR takes nothing from it.
        assert_eq!(allocate_node_subnet(cluster, &[net("192.168.0.0/24")]), Some(net("10.200.0.0/24")));
        // A wider taken range blocks every /24 inside it.
        assert_eq!(allocate_node_subnet(cluster, &[net("10.200.0.0/23")]), Some(net("10.200.2.0/24")));
    }

    #[test]
    fn a_full_or_too_small_cluster_cidr_yields_none() {
        let cluster = net("10.9.0.0/23");
        assert_eq!(allocate_node_subnet(cluster, &[net("10.9.0.0/24"), net("10.9.1.0/24")]), None);
        assert_eq!(allocate_node_subnet(net("10.9.0.0/25"), &[]), None);
        // A CIDR written with host bits counts from its network address.
        assert_eq!(allocate_node_subnet(net("10.9.7.9/16"), &[]), Some(net("10.9.0.0/24")));
    }

    #[test]
    fn a_node_keeps_its_subnet_while_it_is_valid() {
        let cluster = default_cluster_cidr();
        let a = node("a", Some("10.200.0.0/24"));
        let b = node("b", Some("10.200.7.0/24"));
        let all = [a.clone(), b.clone()];
        assert_eq!(node_subnet(&b, &all, cluster), Some(net("10.200.7.0/24")));
        assert_eq!(node_subnet(&a, &all, cluster), Some(net("10.200.0.0/24")));
    }

    #[test]
    fn a_node_without_a_subnet_gets_one_no_other_node_has() {
        let cluster = default_cluster_cidr();
        let all = [node("a", Some("10.200.0.0/24")), node("b", Some("10.200.1.0/24")), node("c", None)];
        assert_eq!(node_subnet(&all[2], &all, cluster), Some(net("10.200.2.0/24")));
    }

    #[test]
    fn a_deleted_nodes_subnet_is_given_to_the_next_node() {
        let cluster = default_cluster_cidr();
        // "a" held 10.200.0.0/24 and was deleted: it is no longer among the nodes.
        let all = [node("b", Some("10.200.1.0/24")), node("c", None)];
        assert_eq!(node_subnet(&all[1], &all, cluster), Some(net("10.200.0.0/24")));
    }

    #[test]
    fn invalid_or_contested_subnets_are_replaced() {
        let cluster = default_cluster_cidr();
        let outside = node("x", Some("192.168.1.0/24"));
        assert_eq!(node_subnet(&outside, [&outside], cluster), Some(net("10.200.0.0/24")));
        let garbage = node("x", Some("not a cidr"));
        assert_eq!(node_subnet(&garbage, [&garbage], cluster), Some(net("10.200.0.0/24")));
        let wide = node("x", Some("10.200.0.0/16"));
        assert_eq!(node_subnet(&wide, [&wide], cluster), Some(net("10.200.0.0/24")));
        // Two nodes with one subnet: the first by name keeps it.
        let all = [node("a", Some("10.200.0.0/24")), node("b", Some("10.200.0.0/24"))];
        assert_eq!(node_subnet(&all[0], &all, cluster), Some(net("10.200.0.0/24")));
        assert_eq!(node_subnet(&all[1], &all, cluster), Some(net("10.200.1.0/24")));
    }
}
