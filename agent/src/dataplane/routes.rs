//! Routes to the other nodes' task subnets (the mesh's part 3): for every
//! other ready node with a task subnet, `ip route replace <taskSubnet> via
//! <node addr>`, so a DNAT to a backend on another node reaches it; removed
//! when the node goes (down, deleted, subnet gone) and on shutdown.
//!
//! Only nodes on a shared L2 segment get one: `via` needs a next hop the
//! kernel reaches directly (`ip route get <addr>` names no gateway). Nodes
//! behind a router need an overlay (VXLAN), which is not built yet; they
//! are logged and skipped.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;

use ipnet::Ipv4Net;
use shoal_crd::{Node, NodeState};

use super::DataPlaneError;
use crate::network::{already_gone, ip};

/// Task subnet → next hop (the owning node's address).
pub type RouteTable = BTreeMap<Ipv4Net, Ipv4Addr>;

/// The routes this node wants: other ready nodes' subnets via their
/// addresses, when `on_link(addr)` (directly reachable); never a subnet
/// overlapping `local_subnet`.
pub fn desired(
    nodes: &[Arc<Node>],
    local: &str,
    local_subnet: Option<Ipv4Net>,
    on_link: impl Fn(Ipv4Addr) -> bool,
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
        if !on_link(addr) {
            tracing::warn!(node = %node.metadata.name, addr = %addr, subnet = %subnet, "node is not on this node's L2 segment: no route to its tasks (an overlay is not built yet)");
            continue;
        }
        routes.insert(subnet, addr);
    }
    routes
}

/// True when the kernel reaches `addr` without a gateway.
pub fn on_link(addr: Ipv4Addr) -> bool {
    let Ok(output) = Command::new("ip").args(["-o", "route", "get", &addr.to_string()]).output() else { return false };
    output.status.success() && !String::from_utf8_lossy(&output.stdout).contains(" via ")
}

/// Installs `next` over `current` (both as `ip route` knows them); returns
/// what is installed now, also when a step failed.
pub fn apply(current: &RouteTable, next: &RouteTable) -> (RouteTable, Result<(), DataPlaneError>) {
    let mut installed = current.clone();
    for (subnet, via) in current {
        if next.get(subnet) != Some(via) {
            if let Err(err) = ip(&["route", "del", &subnet.to_string(), "via", &via.to_string()]).or_else(already_gone)
            {
                tracing::warn!(subnet = %subnet, via = %via, error = %err, "cannot remove the route");
            }
            installed.remove(subnet);
        }
    }
    for (subnet, via) in next {
        if installed.get(subnet) == Some(via) {
            continue;
        }
        if let Err(err) = ip(&["route", "replace", &subnet.to_string(), "via", &via.to_string()]) {
            return (installed, Err(DataPlaneError::Route(err)));
        }
        tracing::info!(subnet = %subnet, via = %via, "route to another node's tasks");
        installed.insert(*subnet, *via);
    }
    (installed, Ok(()))
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

    #[test]
    fn other_ready_nodes_subnets_are_routed_via_their_addresses() {
        let nodes = [
            node("me", "192.168.5.1", Some("10.200.1.0/24"), NodeState::Ready),
            node("two", "192.168.5.2", Some("10.200.2.0/24"), NodeState::Ready),
            node("down", "192.168.5.3", Some("10.200.3.0/24"), NodeState::Down),
            node("unassigned", "192.168.5.4", None, NodeState::Ready),
            node("far", "172.16.0.9", Some("10.200.5.0/24"), NodeState::Ready),
            node("clash", "192.168.5.6", Some("10.200.1.0/24"), NodeState::Ready),
        ];
        let routes = desired(&nodes, "me", Some("10.200.1.0/24".parse().unwrap()), |a| a.octets()[0] == 192);
        let expected: RouteTable = [("10.200.2.0/24".parse().unwrap(), Ipv4Addr::new(192, 168, 5, 2))].into();
        assert_eq!(routes, expected);
    }
}
