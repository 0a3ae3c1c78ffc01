//! The data plane: how a node makes services reachable — VIPs and
//! published ports load-balanced over the backends of every Endpoints
//! object, and routes to the other nodes' task subnets.
//!
//! - [`DataPlane`]: the trait. It takes the *full* desired state on every
//!   call and works out what to change itself, so callers never track
//!   deltas and a failed call is repaired by the next one.
//! - [`nftables`]: kube-proxy's nftables mode: one `shoal` table, changed
//!   by one atomic `nft -f -` transaction per call, touching only the
//!   chains and elements of the services that changed.
//! - [`ruleset`]: the table as data (pure; golden-text tests).
//! - [`ipvs`]: kube-proxy's IPVS mode: virtual servers over generic
//!   netlink, VIPs on the dummy interface `shoal-ipvs0`, a small
//!   masquerade table; used when the kernel has IPVS.
//! - [`conformance`]: the checks every data plane must pass, against real
//!   backends in network namespaces (`shoal agent dataplane-conformance`).
//! - [`routes`]: `ip route` to other nodes' task subnets: a host route to
//!   a node on this node's L2 segment, else over the [`overlay`].
//! - [`overlay`]: the VXLAN overlay (`shoal-vxlan`) to nodes behind a router.
//! - [`sync`]: the agent's loop: watch Endpoints and Nodes, apply
//!   (debounced), record the programmed revision.
//! - [`userspace`]: for agents that are not root: the agent proxies every
//!   published port itself (TCP and UDP, round-robin); no VIPs.
//! - [`layered`]: two planes as one (IPVS plus the userspace proxy on
//!   loopback, since IPVS cannot serve `127.0.0.1:<published>`).
//! - [`drain`]: the draining handshake: a stopping task waits until every
//!   ready node has programmed the Endpoints revision without it
//!   ([`sync::programmed_key`]).
//! - [`fake`]: a recording data plane for tests of the sync logic.
//!
//! Service DNS lives beside this module, in `crate::dns`.

pub mod conformance;
pub mod drain;
pub mod fake;
pub mod ipvs;
pub mod layered;
pub mod nftables;
pub mod overlay;
pub mod routes;
pub mod ruleset;
pub mod sync;
pub mod userspace;

use std::sync::Arc;

use ipnet::Ipv4Net;
use shoal_crd::{Endpoints, Node};

use crate::network::NetworkError;

pub use ipvs::IpvsDataPlane;
pub use nftables::NftablesDataPlane;
pub use ruleset::LocalNode;
pub use userspace::UserspaceDataPlane;

/// Which data plane the agent runs (`shoal agent --dataplane`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPlaneMode {
    /// IPVS virtual servers over netlink, VIPs on a dummy interface (root; kernels with IPVS).
    Ipvs,
    /// The `shoal` nftables table and routes between nodes (root).
    Nftables,
    /// A TCP/UDP proxy in the agent on published ports (non-root development).
    Userspace,
    /// Nothing is programmed: VIPs and published ports do not answer on this node.
    None,
}

/// Why programming the data plane failed.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("cannot program the nftables table: {0}")]
    Nftables(#[source] NetworkError),
    #[error("cannot set a route to another node's tasks: {0}")]
    Route(#[source] NetworkError),
    #[error("cannot set up the VXLAN overlay to another node's tasks (device shoal-vxlan): {0}")]
    Overlay(#[source] NetworkError),
    #[error("cannot enable route_localnet (needed for 127.0.0.1:<published>): {0}")]
    Sysctl(#[source] std::io::Error),
    #[error("cannot program IPVS: {0}")]
    Ipvs(#[source] ipvs::IpvsError),
}

/// The cluster as this node sees it: itself, its task subnet, every Node.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub local: LocalNode,
    pub nodes: Vec<Arc<Node>>,
}

impl Cluster {
    pub fn new(node: &str, subnet: Option<Ipv4Net>, nodes: Vec<Arc<Node>>) -> Self {
        Self { local: LocalNode { name: node.into(), subnet }, nodes }
    }
}

/// A node's load balancer and routes.
pub trait DataPlane: Send + 'static {
    /// Makes the kernel match `endpoints` (every service) and `cluster`.
    /// After an error the next call starts from a clean slate.
    fn apply(&mut self, endpoints: &[Arc<Endpoints>], cluster: &Cluster) -> Result<(), DataPlaneError>;

    /// Removes everything this data plane programmed.
    fn cleanup(&mut self) -> Result<(), DataPlaneError>;
}

/// The kernel data plane for a root agent when none is asked for: IPVS
/// when this kernel has it, else nftables.
///
/// "Has it" means `/proc/net/ip_vs` exists, after a `modprobe ip_vs` when it
/// did not (the module is not loaded until something asks for it).
pub fn detect_kernel_mode() -> DataPlaneMode {
    let loaded = || std::path::Path::new("/proc/net/ip_vs").exists();
    if !loaded() {
        let _ = std::process::Command::new("modprobe")
            .arg("ip_vs")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    if loaded() {
        DataPlaneMode::Ipvs
    } else {
        DataPlaneMode::Nftables
    }
}

/// The backends of `spec` with an IPv4 address (the data planes program
/// IPv4 only); any other is left out and logged.
pub fn ipv4_backends(spec: &shoal_crd::EndpointsSpec) -> Vec<(std::net::Ipv4Addr, &shoal_crd::Backend)> {
    spec.backends
        .iter()
        .filter_map(|b| match b.address.parse() {
            Ok(address) => Some((address, b)),
            Err(_) => {
                tracing::warn!(service = %spec.service, task = %b.task, address = %b.address, "backend address is not IPv4: left out of the data plane");
                None
            }
        })
        .collect()
}

/// The service's VIP, when it is in vip mode and has an IPv4 one.
pub fn ipv4_vip(spec: &shoal_crd::EndpointsSpec) -> Option<std::net::Ipv4Addr> {
    spec.vip.as_deref().filter(|_| spec.endpoint_mode == shoal_crd::EndpointMode::Vip).and_then(|v| v.parse().ok())
}
