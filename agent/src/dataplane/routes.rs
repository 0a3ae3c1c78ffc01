//! Routes to the other nodes' task subnets (the mesh's part 3), so a DNAT
//! to a backend on another node reaches it. Every other ready node with a
//! task subnet gets one of two, chosen per node at every apply:
//!
//! - the node is on this node's L2 segment (`ip route get <addr>` names no
//!   gateway): a host route, `ip route replace <taskSubnet> via <node addr>`;
//! - it is not (a router is in between): a peer of the VXLAN
//!   [`overlay`](super::overlay), whose device `shoal-vxlan` exists while
//!   at least one node needs it.
//!
//! Either is removed when the node goes (down, deleted, subnet gone or
//! changed) and on the data plane's cleanup (agent shutdown); a node that
//! moves between the two is removed from one before it is added to the
//! other. [`desired`] and [`overlay_desired`] are pure (tested below);
//! [`Routes`] holds what is installed and changes the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;

use ipnet::Ipv4Net;
use shoal_crd::{Node, NodeState};

use super::overlay::{self, Overlay, Vtep};
use super::{Cluster, DataPlaneError};
use crate::network::{already_gone, ip, NetworkError};

/// How this node reaches another node's task subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// `via` the node's address: it is on this node's L2 segment.
    Direct(Ipv4Addr),
    /// Over the VXLAN overlay to the node at this address.
    Overlay(Ipv4Addr),
}

/// Task subnet → how to reach it.
pub type RouteTable = BTreeMap<Ipv4Net, NextHop>;

/// The routes this node wants: other ready nodes' subnets, directly when
/// `on_link(addr)` says so, over the overlay when the node is behind a
/// gateway; none to a node the kernel has no route to (the overlay could
/// not reach it either), none overlapping `local_subnet`, none to a node on
/// loopback.
pub fn desired(
    nodes: &[Arc<Node>],
    local: &str,
    local_subnet: Option<Ipv4Net>,
    on_link: impl Fn(Ipv4Addr) -> Option<bool>,
) -> RouteTable {
    let mut routes = RouteTable::new();
    for node in nodes.iter().filter(|n| n.metadata.name != local) {
        let Some(status) = &node.status else { continue };
        if status.state != NodeState::Ready {
            continue;
        }
        let (Some(Ok(subnet)), Ok(addr)) =
            (status.task_subnet.as_deref().map(str::parse::<Ipv4Net>), status.addr.parse::<Ipv4Addr>())
        else {
            continue;
        };
        let subnet = subnet.trunc();
        if local_subnet.is_some_and(|l| l.contains(&subnet.network()) || subnet.contains(&l.network()))
            || addr.is_loopback()
        {
            continue;
        }
        let hop = match on_link(addr) {
            Some(true) => NextHop::Direct(addr),
            Some(false) => NextHop::Overlay(addr),
            None => {
                tracing::warn!(node = %node.metadata.name, addr = %addr, subnet = %subnet, "no route to the node's address: its tasks are unreachable from this node");
                continue;
            }
        };
        routes.insert(subnet, hop);
    }
    routes
}

/// Whether the kernel reaches `addr` without a gateway (`ip route get`
/// names none); None when it has no route to it at all.
pub fn on_link(addr: Ipv4Addr) -> Option<bool> {
    let output = Command::new("ip").args(["-o", "route", "get", &addr.to_string()]).output().ok()?;
    output.status.success().then(|| !String::from_utf8_lossy(&output.stdout).contains(" via "))
}

/// The overlay `routes` ask for, from this node's end `local` (its subnet
/// and address, None while either is unknown); `underlay_mtu` is asked
/// only when there is a peer.
pub fn overlay_desired(
    routes: &RouteTable,
    local: Option<Vtep>,
    underlay_mtu: impl Fn(Ipv4Addr) -> Option<u32>,
) -> overlay::Desired {
    let peers: BTreeSet<Vtep> = routes
        .iter()
        .filter_map(|(subnet, hop)| match hop {
            NextHop::Overlay(addr) => Some(Vtep::new(*subnet, *addr)),
            NextHop::Direct(_) => None,
        })
        .collect();
    if peers.is_empty() {
        return overlay::Desired::default();
    }
    let Some(local) = local else {
        tracing::warn!(nodes = peers.len(), "nodes off this node's L2 segment are unreachable until this node has a task subnet and an address (the overlay needs both)");
        return overlay::Desired::default();
    };
    let mtu = underlay_mtu(local.node);
    if mtu.is_none() {
        tracing::warn!(addr = %local.node, "this node's advertised address is on none of its interfaces: the overlay sends from it anyway and assumes an underlay MTU of 1500");
    }
    overlay::Desired::new(local, peers, mtu)
}

/// This node's overlay end: its task subnet and its Node's `status.addr`.
fn local_vtep(cluster: &Cluster) -> Option<Vtep> {
    let subnet = cluster.local.subnet?;
    let node = cluster.nodes.iter().find(|n| n.metadata.name == cluster.local.name)?;
    let addr = node.status.as_ref()?.addr.parse().ok()?;
    Some(Vtep::new(subnet, addr))
}

/// The routes and the overlay this node installed.
#[derive(Debug, Default)]
pub struct Routes {
    /// Host routes: task subnet → the node's address.
    direct: BTreeMap<Ipv4Net, Ipv4Addr>,
    overlay: Overlay,
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the kernel's routes and overlay match `cluster`; a failed step
    /// is retried at the next call.
    pub fn apply(&mut self, cluster: &Cluster) -> Result<(), DataPlaneError> {
        let wanted = desired(&cluster.nodes, &cluster.local.name, cluster.local.subnet, on_link);
        let direct = wanted
            .iter()
            .filter_map(|(subnet, hop)| match hop {
                NextHop::Direct(addr) => Some((*subnet, *addr)),
                NextHop::Overlay(_) => None,
            })
            .collect();
        let overlay = overlay_desired(&wanted, local_vtep(cluster), overlay::underlay_mtu);
        self.install(&direct, &overlay)
    }

    /// Removes every route and the overlay device.
    pub fn cleanup(&mut self) -> Result<(), DataPlaneError> {
        self.install(&BTreeMap::new(), &overlay::Desired::default())
    }

    /// Host routes removed, the overlay changed, host routes added, in that
    /// order: a subnet moving between the two is never routed twice.
    fn install(
        &mut self,
        direct: &BTreeMap<Ipv4Net, Ipv4Addr>,
        overlay: &overlay::Desired,
    ) -> Result<(), DataPlaneError> {
        self.remove_stale(direct);
        let overlaid = self.overlay.apply(overlay).map_err(DataPlaneError::Overlay);
        let routed = self.add_missing(direct).map_err(DataPlaneError::Route);
        routed.and(overlaid)
    }

    /// Deletes the host routes `next` does not have (a failure is logged;
    /// the route is forgotten either way).
    fn remove_stale(&mut self, next: &BTreeMap<Ipv4Net, Ipv4Addr>) {
        self.direct.retain(|subnet, via| {
            if next.get(subnet) == Some(via) {
                return true;
            }
            if let Err(err) = ip(&["route", "del", &subnet.to_string(), "via", &via.to_string()]).or_else(already_gone)
            {
                tracing::warn!(subnet = %subnet, via = %via, error = %err, "cannot remove the route");
            }
            false
        });
    }

    /// Installs the host routes of `next` not installed yet; stops at the first failure.
    fn add_missing(&mut self, next: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Result<(), NetworkError> {
        for (subnet, via) in next {
            if self.direct.get(subnet) == Some(via) {
                continue;
            }
            ip(&["route", "replace", &subnet.to_string(), "via", &via.to_string()])?;
            tracing::info!(subnet = %subnet, via = %via, "route to another node's tasks");
            self.direct.insert(*subnet, *via);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crd::{NodeSpec, NodeStatus};

    fn node(name: &str, addr: &str, subnet: Option<&str>, state: NodeState) -> Arc<Node> {
        let mut node = Node::new(name, NodeSpec::default());
        node.status =
            Some(NodeStatus { addr: addr.into(), state, task_subnet: subnet.map(Into::into), ..Default::default() });
        Arc::new(node)
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn other_ready_nodes_subnets_are_routed_directly_on_link_and_over_the_overlay_behind_a_gateway() {
        let nodes = [
            node("me", "192.168.5.1", Some("10.200.1.0/24"), NodeState::Ready),
            node("two", "192.168.5.2", Some("10.200.2.0/24"), NodeState::Ready),
            node("down", "192.168.5.3", Some("10.200.3.0/24"), NodeState::Down),
            node("unassigned", "192.168.5.4", None, NodeState::Ready),
            node("far", "172.16.0.9", Some("10.200.5.0/24"), NodeState::Ready),
            node("clash", "192.168.5.6", Some("10.200.1.0/24"), NodeState::Ready),
            node("loop", "127.0.0.1", Some("10.200.7.0/24"), NodeState::Ready),
            node("unroutable", "10.9.9.9", Some("10.200.8.0/24"), NodeState::Ready),
        ];
        let on_link = |a: Ipv4Addr| (a.octets()[0] != 10).then_some(a.octets()[0] == 192);
        let routes = desired(&nodes, "me", Some(net("10.200.1.0/24")), on_link);
        let expected: RouteTable = [
            (net("10.200.2.0/24"), NextHop::Direct(Ipv4Addr::new(192, 168, 5, 2))),
            (net("10.200.5.0/24"), NextHop::Overlay(Ipv4Addr::new(172, 16, 0, 9))),
        ]
        .into();
        assert_eq!(routes, expected);
    }

    #[test]
    fn the_overlay_has_a_peer_per_node_off_the_segment_and_the_underlay_mtu_less_its_headers() {
        let routes: RouteTable = [
            (net("10.200.2.0/24"), NextHop::Direct(Ipv4Addr::new(192, 168, 5, 2))),
            (net("10.200.5.0/24"), NextHop::Overlay(Ipv4Addr::new(172, 16, 0, 9))),
        ]
        .into();
        let local = Vtep::new(net("10.200.1.0/24"), Ipv4Addr::new(192, 168, 5, 1));
        let overlay = overlay_desired(&routes, Some(local), |addr| (addr == local.node).then_some(1400));
        let device = overlay.device.expect("a node off the segment needs the device");
        assert_eq!((device.local, device.mtu), (local, 1350));
        assert_eq!(overlay.peers, [Vtep::new(net("10.200.5.0/24"), Ipv4Addr::new(172, 16, 0, 9))].into());
    }

    #[test]
    fn no_overlay_without_a_node_off_the_segment_or_without_this_nodes_subnet() {
        let local = Vtep::new(net("10.200.1.0/24"), Ipv4Addr::new(192, 168, 5, 1));
        let direct: RouteTable = [(net("10.200.2.0/24"), NextHop::Direct(Ipv4Addr::new(192, 168, 5, 2)))].into();
        assert_eq!(overlay_desired(&direct, Some(local), |_| Some(1500)), overlay::Desired::default());
        let far: RouteTable = [(net("10.200.5.0/24"), NextHop::Overlay(Ipv4Addr::new(172, 16, 0, 9)))].into();
        assert_eq!(overlay_desired(&far, None, |_| Some(1500)), overlay::Desired::default());
    }

    #[test]
    fn this_nodes_vtep_is_its_subnet_and_advertised_address() {
        let nodes = vec![node("me", "192.168.5.1", None, NodeState::Ready)];
        let cluster = Cluster::new("me", Some(net("10.200.1.0/24")), nodes.clone());
        assert_eq!(local_vtep(&cluster), Some(Vtep::new(net("10.200.1.0/24"), Ipv4Addr::new(192, 168, 5, 1))));
        assert_eq!(local_vtep(&Cluster::new("me", None, nodes)), None, "no subnet yet");
        assert_eq!(local_vtep(&Cluster::new("me", Some(net("10.200.1.0/24")), Vec::new())), None, "no Node yet");
    }
}
