//! The IPVS data plane, kube-proxy's IPVS mode in Swarm's words: a virtual
//! server per VIP and service port and per published port on each of the
//! node's IPv4 addresses, real servers = the backends (masquerade, `rr`),
//! programmed over generic netlink; the VIPs bound (/32) to the dummy
//! interface `shoal-ipvs0` so the kernel takes their packets as local and
//! hands them to IPVS; a small nftables table masquerading what must come
//! back through this node; and the [`routes`](super::routes) to other
//! nodes, as the nftables plane has them.
//!
//! - [`desired`]: the virtual servers as data and the diff (pure, tested).
//! - [`netlink`]: the IPVS generic-netlink messages and socket.
//! - [`host`]: dummy interface, node addresses, sysctls, masquerade table.
//!
//! Every apply reads the kernel's virtual servers back (one dump) and
//! changes only what differs, so a failed or interrupted apply, or an
//! agent restart, is repaired by the next one without a rewrite.
//!
//! # Ownership
//!
//! One agent per network namespace, as with kube-proxy: every IPv4 TCP/UDP
//! virtual server on an address of this node (the dummy's VIPs and the
//! node's own addresses) that the Endpoints do not ask for is removed.
//! Virtual servers on other addresses (fwmark, IPv6, keepalived's on
//! addresses the node does not hold) are left alone.
//!
//! # Caveats
//!
//! - Published ports do not answer on 127.0.0.1 (IPVS cannot masquerade a
//!   loopback source to another host); they do on every other address.
//! - A VIP is a local address: a port the service does not publish is
//!   answered by whatever listens on 0.0.0.0 (kube-proxy's IPVS mode too).
//! - The node's addresses are read on every apply; one that appears later
//!   gets its published ports at the next Endpoints or Node change.
//! - A removed backend is quiesced (weight 0) and deleted at a later apply
//!   once IPVS tracks no connection to it (see [`desired`]); deleting a
//!   whole service cuts its open connections.

pub mod desired;
pub mod host;
pub mod netlink;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use shoal_crd::Endpoints;

use self::desired::{changes, Change, Desired, Kernel, KernelServer, RealState};
use self::netlink::{IpvsSocket, FWD_MASQ};
use super::routes::Routes;
use super::{Cluster, DataPlane, DataPlaneError};
use crate::network::NetworkError;

/// Why programming IPVS failed.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error("the kernel has no IPVS (load it with `modprobe ip_vs`, or run the agent with --dataplane nftables): {0}")]
    NoIpvs(#[source] std::io::Error),
    #[error("cannot open a generic netlink socket for IPVS: {0}")]
    Socket(#[source] std::io::Error),
    #[error("cannot {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the dummy interface shoal-ipvs0 or its VIPs: {0}")]
    Interface(#[source] NetworkError),
    #[error("cannot program the masquerade table ip shoal-ipvs: {0}")]
    Masquerade(#[source] NetworkError),
    #[error("cannot set {path} (IPVS needs it): {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list this node's addresses: {0}")]
    Addresses(#[source] std::io::Error),
}

/// Programs IPVS, the dummy interface, the masquerade table and the routes.
#[derive(Debug, Default)]
pub struct IpvsDataPlane {
    /// Opened on first use; dropped after an error so the next apply starts afresh.
    socket: Option<IpvsSocket>,
    /// The masquerade table last written (None: write it).
    table: Option<String>,
    routes: Routes,
    /// The netlink calls the last apply made.
    last_changes: Vec<Change>,
}

impl IpvsDataPlane {
    pub fn new() -> Self {
        Self::default()
    }

    /// The netlink calls the last apply made (empty when nothing changed).
    pub fn last_changes(&self) -> &[Change] {
        &self.last_changes
    }

    fn socket(&mut self) -> Result<&mut IpvsSocket, IpvsError> {
        if self.socket.is_none() {
            let socket = IpvsSocket::open().map_err(|err| match err.kind() {
                std::io::ErrorKind::NotFound => IpvsError::NoIpvs(err),
                _ => IpvsError::Socket(err),
            })?;
            self.socket = Some(socket);
        }
        Ok(self.socket.as_mut().expect("opened above"))
    }

    /// The kernel's virtual servers on `owned` addresses, with their real servers.
    fn kernel(&mut self, owned: &BTreeSet<Ipv4Addr>) -> Result<Kernel, IpvsError> {
        let socket = self.socket()?;
        let failed = |what: &str| {
            let what = what.to_string();
            move |source| IpvsError::Request { what, source }
        };
        let mut kernel = Kernel::new();
        for entry in socket.services().map_err(failed("list IPVS virtual servers"))? {
            if !owned.contains(&entry.server.address) {
                continue;
            }
            let dests = socket
                .dests(&entry.server)
                .map_err(failed(&format!("list the real servers of virtual server {}", entry.server)))?;
            let reals = dests
                .into_iter()
                .map(|d| {
                    let state =
                        RealState { weight: d.weight, masquerade: d.forward == FWD_MASQ, connections: d.connections };
                    (d.real, state)
                })
                .collect();
            kernel.insert(entry.server, KernelServer { scheduler: entry.scheduler, reals });
        }
        Ok(kernel)
    }

    /// Makes the kernel's owned virtual servers match `desired`.
    fn program(&mut self, desired: &Desired, owned: &BTreeSet<Ipv4Addr>) -> Result<(), IpvsError> {
        let kernel = self.kernel(owned)?;
        let planned = changes(&kernel, desired);
        self.last_changes.clear();
        let socket = self.socket()?;
        for change in &planned {
            let result = match *change {
                Change::AddServer(s) => socket.add_service(&s, desired::SCHEDULER),
                Change::EditServer(s) => socket.edit_service(&s, desired::SCHEDULER),
                Change::DeleteServer(s) => socket.delete_service(&s),
                Change::AddReal(s, r) => socket.add_dest(&s, &r, 1),
                Change::EditReal(s, r, weight) => socket.edit_dest(&s, &r, weight),
                Change::DeleteReal(s, r) => socket.delete_dest(&s, &r),
            };
            result.map_err(|source| IpvsError::Request { what: change.to_string(), source })?;
            tracing::debug!(change = %change, "ipvs");
        }
        self.last_changes = planned;
        Ok(())
    }

    fn apply_ipvs(&mut self, endpoints: &[Arc<Endpoints>], cluster: &Cluster) -> Result<(), IpvsError> {
        // The socket first: resolving the family loads ip_vs where modprobe works,
        // and with it the net.ipv4.vs sysctls.
        self.socket()?;
        host::enable_sysctls()?;
        host::ensure_dummy()?;
        let (node_addresses, bound) = host::addresses()?;
        let desired = Desired::new(endpoints, &cluster.local, &node_addresses);
        let wanted = desired.vip_addresses();
        let owned: BTreeSet<Ipv4Addr> = node_addresses.iter().chain(&bound).chain(&wanted).copied().collect();
        host::bind_vips(&bound, &wanted)?;
        self.program(&desired, &owned)?;
        let table = host::masquerade_table(&desired, cluster.local.subnet);
        if self.table.as_ref() != Some(&table) {
            host::write_table(&table)?;
            self.table = Some(table);
        }
        if !self.last_changes.is_empty() {
            tracing::debug!(
                changes = self.last_changes.len(),
                virtual_servers = desired.servers.len(),
                "ipvs programmed"
            );
        }
        Ok(())
    }
}

impl DataPlane for IpvsDataPlane {
    fn apply(&mut self, endpoints: &[Arc<Endpoints>], cluster: &Cluster) -> Result<(), DataPlaneError> {
        if let Err(err) = self.apply_ipvs(endpoints, cluster) {
            self.socket = None;
            self.table = None;
            return Err(DataPlaneError::Ipvs(err));
        }
        self.routes.apply(cluster)
    }

    /// Removes every owned virtual server, the dummy interface (its VIPs
    /// with it), the masquerade table and the routes; goes on past a
    /// failed step and reports the first.
    fn cleanup(&mut self) -> Result<(), DataPlaneError> {
        let mut first: Option<DataPlaneError> = None;
        let mut keep = |result: Result<(), DataPlaneError>| {
            if let Err(err) = result {
                tracing::warn!(error = %err, "cannot remove part of the IPVS data plane");
                first.get_or_insert(err);
            }
        };
        match host::addresses() {
            Ok((node, bound)) => {
                let owned = node.into_iter().chain(bound).collect();
                match self.program(&Desired::default(), &owned) {
                    // Nothing to remove from a kernel without IPVS.
                    Err(IpvsError::NoIpvs(_)) => {}
                    other => keep(other.map_err(DataPlaneError::Ipvs)),
                }
            }
            Err(err) => keep(Err(DataPlaneError::Ipvs(err))),
        }
        self.socket = None;
        self.table = None;
        keep(host::delete_dummy().map_err(DataPlaneError::Ipvs));
        keep(host::delete_table().map_err(DataPlaneError::Ipvs));
        keep(self.routes.cleanup());
        first.map_or(Ok(()), Err)
    }
}
