//! The IPVS table as data: the virtual servers and real servers a set of
//! Endpoints asks for on this node ([`Desired::new`]), and the changes
//! that turn what the kernel holds into that ([`changes`]). Pure: no
//! kernel involved, so the tests below pin the semantics.
//!
//! Semantics, the same as the nftables plane's ruleset:
//!
//! - a VIP service port is a virtual server `VIP:target` over every backend;
//! - a published port is a virtual server `ADDR:published` on each of the
//!   node's IPv4 addresses (kube-proxy's NodePorts in IPVS mode): over
//!   every backend in ingress mode, over this node's backends only in host
//!   mode (and none at all on a node running none);
//! - real servers are `address:port` with the backend's own port for the
//!   target, masquerade (NAT) forwarding, weight 1, scheduler `rr`.
//!
//! A backend that leaves is first *quiesced* (weight 0: no new
//! connections, established ones go on, as kube-proxy's graceful
//! termination does) and deleted at a later apply once IPVS tracks no
//! connection to it. Deleting it at once would cut its in-flight requests:
//! IPVS drops packets of connections whose real server is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use shoal_crd::{Endpoints, PortProtocol, PublishMode};

use crate::dataplane::LocalNode;

/// The only scheduler used: round robin.
pub const SCHEDULER: &str = "rr";

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u16 {
        match self {
            Protocol::Tcp => libc::IPPROTO_TCP as u16,
            Protocol::Udp => libc::IPPROTO_UDP as u16,
        }
    }

    pub fn from_number(number: u16) -> Option<Self> {
        match i32::from(number) {
            libc::IPPROTO_TCP => Some(Protocol::Tcp),
            libc::IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// The name nftables uses.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// An IPVS virtual server: what clients connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtualServer {
    pub address: Ipv4Addr,
    pub protocol: Protocol,
    pub port: u16,
}

impl std::fmt::Display for VirtualServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.address, self.port, self.protocol.name())
    }
}

/// An IPVS real server: a backend task's address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealServer {
    pub address: Ipv4Addr,
    pub port: u16,
}

impl std::fmt::Display for RealServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.address, self.port)
    }
}

/// What this node should serve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Every virtual server with its real servers.
    pub servers: BTreeMap<VirtualServer, BTreeSet<RealServer>>,
    /// The virtual servers on VIPs (bound to the dummy interface).
    pub vips: BTreeSet<VirtualServer>,
    /// The virtual servers on the node's own addresses (published ports).
    pub published: BTreeSet<VirtualServer>,
}

impl Desired {
    /// The table for `endpoints` on node `local` whose IPv4 addresses are
    /// `node_addresses`. Backends that are not IPv4 are left out (and logged).
    pub fn new(endpoints: &[Arc<Endpoints>], local: &LocalNode, node_addresses: &[Ipv4Addr]) -> Self {
        let mut desired = Self::default();
        for e in endpoints {
            desired.add_service(e, local, node_addresses);
        }
        desired
    }

    /// The VIP addresses to bind to the dummy interface.
    pub fn vip_addresses(&self) -> BTreeSet<Ipv4Addr> {
        self.vips.iter().map(|v| v.address).collect()
    }

    fn add_service(&mut self, endpoints: &Endpoints, local: &LocalNode, node_addresses: &[Ipv4Addr]) {
        let spec = &endpoints.spec;
        let backends = crate::dataplane::ipv4_backends(spec);
        let vip = crate::dataplane::ipv4_vip(spec);
        for port in &spec.ports {
            let protocol = match port.protocol {
                PortProtocol::Tcp => Protocol::Tcp,
                PortProtocol::Udp => Protocol::Udp,
            };
            let reals = |only_here: bool| -> BTreeSet<RealServer> {
                backends
                    .iter()
                    .filter(|(_, b)| !only_here || b.node == local.name)
                    .map(|(address, b)| RealServer { address: *address, port: b.port(port.target) })
                    .collect()
            };
            if let Some(address) = vip {
                let server = VirtualServer { address, protocol, port: port.target };
                if self.claim(server, reals(false), &spec.service) {
                    self.vips.insert(server);
                }
            }
            let Some(published) = port.published else { continue };
            let reals = reals(port.publish_mode == PublishMode::Host);
            if reals.is_empty() && port.publish_mode == PublishMode::Host {
                continue;
            }
            for &address in node_addresses {
                let server = VirtualServer { address, protocol, port: published };
                if self.claim(server, reals.clone(), &spec.service) {
                    self.published.insert(server);
                }
            }
        }
    }

    /// Adds `server` unless another service has it already (logged); true when added.
    fn claim(&mut self, server: VirtualServer, reals: BTreeSet<RealServer>, service: &str) -> bool {
        if self.servers.contains_key(&server) {
            tracing::warn!(service, server = %server, "virtual server already taken by another service: left out");
            return false;
        }
        self.servers.insert(server, reals);
        true
    }
}

/// A real server as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealState {
    pub weight: u32,
    /// Masquerade forwarding (anything else is rewritten).
    pub masquerade: bool,
    /// Connections IPVS still tracks (active and inactive).
    pub connections: u32,
}

/// A virtual server as the kernel holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelServer {
    pub scheduler: String,
    pub reals: BTreeMap<RealServer, RealState>,
}

/// The kernel's virtual servers this data plane owns.
pub type Kernel = BTreeMap<VirtualServer, KernelServer>;

/// One netlink call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    AddServer(VirtualServer),
    /// Set the scheduler back to [`SCHEDULER`].
    EditServer(VirtualServer),
    DeleteServer(VirtualServer),
    AddReal(VirtualServer, RealServer),
    /// Masquerade with this weight (0: quiesce a backend that left).
    EditReal(VirtualServer, RealServer, u32),
    DeleteReal(VirtualServer, RealServer),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::AddServer(s) => write!(f, "add virtual server {s}"),
            Change::EditServer(s) => write!(f, "set the scheduler of virtual server {s}"),
            Change::DeleteServer(s) => write!(f, "delete virtual server {s}"),
            Change::AddReal(s, r) => write!(f, "add real server {r} to {s}"),
            Change::EditReal(s, r, w) => write!(f, "set real server {r} of {s} to weight {w}"),
            Change::DeleteReal(s, r) => write!(f, "delete real server {r} of {s}"),
        }
    }
}

/// The calls turning `kernel` into `desired`, in a safe order: new virtual
/// and real servers first, then edits (quiescing included), then deletions,
/// so a backend swap never leaves a service without a real server.
pub fn changes(kernel: &Kernel, desired: &Desired) -> Vec<Change> {
    let mut adds = Vec::new();
    let mut edits = Vec::new();
    let mut deletes = Vec::new();
    for (server, reals) in &desired.servers {
        let Some(current) = kernel.get(server) else {
            adds.push(Change::AddServer(*server));
            adds.extend(reals.iter().map(|r| Change::AddReal(*server, *r)));
            continue;
        };
        if current.scheduler != SCHEDULER {
            edits.push(Change::EditServer(*server));
        }
        for real in reals {
            match current.reals.get(real) {
                None => adds.push(Change::AddReal(*server, *real)),
                Some(state) if state.weight != 1 || !state.masquerade => {
                    edits.push(Change::EditReal(*server, *real, 1))
                }
                Some(_) => {}
            }
        }
        for (real, state) in current.reals.iter().filter(|(r, _)| !reals.contains(r)) {
            if state.weight != 0 {
                edits.push(Change::EditReal(*server, *real, 0));
            } else if state.connections == 0 {
                deletes.push(Change::DeleteReal(*server, *real));
            }
        }
    }
    deletes.extend(kernel.keys().filter(|s| !desired.servers.contains_key(s)).map(|s| Change::DeleteServer(*s)));
    adds.into_iter().chain(edits).chain(deletes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crd::{Backend, EndpointPort, EndpointsSpec};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn endpoints(mode: PublishMode, backends: &[(&str, &str)]) -> Arc<Endpoints> {
        let backends = backends
            .iter()
            .map(|(node, address)| Backend {
                task: format!("t-{address}"),
                node: node.to_string(),
                address: address.to_string(),
                ports: Default::default(),
            })
            .collect();
        let port = EndpointPort { protocol: PortProtocol::Tcp, target: 80, published: Some(30080), publish_mode: mode };
        Arc::new(Endpoints::new(
            "web",
            EndpointsSpec {
                service: "web".into(),
                vip: Some("10.96.0.1".into()),
                ports: vec![port],
                backends,
                ..Default::default()
            },
        ))
    }

    fn local() -> LocalNode {
        LocalNode { name: "n1".into(), subnet: None }
    }

    fn server(address: &str, port: u16) -> VirtualServer {
        VirtualServer { address: ip(address), protocol: Protocol::Tcp, port }
    }

    fn real(address: &str) -> RealServer {
        RealServer { address: ip(address), port: 80 }
    }

    #[test]
    fn a_vip_and_a_published_port_become_virtual_servers_on_the_vip_and_every_node_address() {
        let e = endpoints(PublishMode::Ingress, &[("n1", "10.200.1.2"), ("n2", "10.200.2.2")]);
        let desired = Desired::new(&[e], &local(), &[ip("192.168.5.1"), ip("10.200.1.1")]);
        let both: BTreeSet<RealServer> = [real("10.200.1.2"), real("10.200.2.2")].into();
        let expected: BTreeMap<VirtualServer, BTreeSet<RealServer>> = [
            (server("10.96.0.1", 80), both.clone()),
            (server("192.168.5.1", 30080), both.clone()),
            (server("10.200.1.1", 30080), both),
        ]
        .into();
        assert_eq!(desired.servers, expected);
        assert_eq!(desired.vip_addresses(), [ip("10.96.0.1")].into());
        assert_eq!(desired.published.len(), 2);
    }

    #[test]
    fn host_mode_publishes_only_this_nodes_backends_and_nothing_without_one() {
        let e = endpoints(PublishMode::Host, &[("n1", "10.200.1.2"), ("n2", "10.200.2.2")]);
        let desired = Desired::new(&[e], &local(), &[ip("192.168.5.1")]);
        assert_eq!(desired.servers[&server("192.168.5.1", 30080)], [real("10.200.1.2")].into());
        let elsewhere = endpoints(PublishMode::Host, &[("n2", "10.200.2.2")]);
        let desired = Desired::new(&[elsewhere], &local(), &[ip("192.168.5.1")]);
        assert!(desired.published.is_empty());
        assert_eq!(desired.servers.len(), 1, "the VIP still balances over every backend");
    }

    #[test]
    fn the_diff_adds_what_is_missing_and_leaves_what_matches_alone() {
        let e = endpoints(PublishMode::Ingress, &[("n1", "10.200.1.2"), ("n1", "10.200.1.3")]);
        let desired = Desired::new(&[e], &local(), &[]);
        let vip = server("10.96.0.1", 80);
        assert_eq!(
            changes(&Kernel::new(), &desired),
            [
                Change::AddServer(vip),
                Change::AddReal(vip, real("10.200.1.2")),
                Change::AddReal(vip, real("10.200.1.3"))
            ]
        );
        let live = RealState { weight: 1, masquerade: true, connections: 3 };
        let kernel: Kernel = [(
            vip,
            KernelServer {
                scheduler: "rr".into(),
                reals: [(real("10.200.1.2"), live), (real("10.200.1.3"), live)].into(),
            },
        )]
        .into();
        assert_eq!(changes(&kernel, &desired), []);
    }

    #[test]
    fn a_backend_that_leaves_is_quiesced_then_deleted_once_idle_and_stray_servers_go() {
        let e = endpoints(PublishMode::Ingress, &[("n1", "10.200.1.3")]);
        let desired = Desired::new(&[e], &local(), &[]);
        let vip = server("10.96.0.1", 80);
        let stray = server("10.96.0.9", 53);
        let state = |weight, connections| RealState { weight, masquerade: true, connections };
        let kernel = |old: RealState| -> Kernel {
            [
                (
                    vip,
                    KernelServer {
                        scheduler: "wlc".into(),
                        reals: [(real("10.200.1.2"), old), (real("10.200.1.3"), state(1, 0))].into(),
                    },
                ),
                (stray, KernelServer::default()),
            ]
            .into()
        };
        assert_eq!(
            changes(&kernel(state(1, 4)), &desired),
            [Change::EditServer(vip), Change::EditReal(vip, real("10.200.1.2"), 0), Change::DeleteServer(stray)]
        );
        // Quiesced and still busy: left alone.
        assert_eq!(changes(&kernel(state(0, 4)), &desired)[1..], [Change::DeleteServer(stray)]);
        // Quiesced and idle: deleted.
        assert_eq!(
            changes(&kernel(state(0, 0)), &desired)[1..],
            [Change::DeleteReal(vip, real("10.200.1.2")), Change::DeleteServer(stray)]
        );
    }
}
