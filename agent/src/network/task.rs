//! One task's network: a named namespace `shoal-<task id>`, a veth pair
//! whose host end (`vs<hash>`) is on the node's bridge and whose other end
//! is `eth0` inside (the host end in hairpin mode, so a task reaches
//! itself through a service VIP), `lo` up, the task's address and a default route via
//! the bridge. The task's process enters the namespace before exec (the
//! shim, see [`crate::sys::enter_netns`]).
//!
//! What was set up is recorded in the task's `network.json`
//! ([`NetworkRecord`]) before anything is created: the record is what keeps
//! the address taken, what a restarted agent re-reads (it never recreates
//! nor renumbers a running task's namespace), and what teardown undoes.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{already_gone, ip, link_exists, Bridge, NetworkError};

/// The interface name of the task's end of the veth pair.
const TASK_IFACE: &str = "eth0";

/// A task's network, as recorded in its directory's `network.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRecord {
    /// The named namespace, `/run/netns/<netns>`.
    pub netns: String,
    /// The host end of the veth pair.
    pub host_veth: String,
    /// The bridge the host end is attached to.
    pub bridge: String,
    /// The task's address with the subnet's prefix (`10.200.3.5/24`).
    pub address: Ipv4Net,
    /// The default route's next hop: the bridge's address.
    pub gateway: Ipv4Addr,
}

impl NetworkRecord {
    /// The network task `id` gets on `bridge` at `address`.
    pub fn new(id: &str, bridge: &Bridge, address: Ipv4Addr) -> Self {
        Self {
            netns: netns_name(id),
            host_veth: veth_name(id),
            bridge: bridge.name().into(),
            address: Ipv4Net::new(address, bridge.subnet().prefix_len()).expect("the bridge's prefix"),
            gateway: bridge.gateway(),
        }
    }

    /// The namespace's file, what the task process enters.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    /// Creates whatever of the task's network is missing; safe to repeat
    /// (an interrupted start is simply started again).
    pub fn plumb(&self) -> Result<(), NetworkError> {
        let (ns, veth) = (self.netns.as_str(), self.host_veth.as_str());
        if !self.netns_path().exists() {
            ip(&["netns", "add", ns])?;
        }
        if !link_exists(veth) {
            ip(&["link", "add", veth, "type", "veth", "peer", "name", TASK_IFACE, "netns", ns])?;
        }
        ip(&["link", "set", veth, "master", &self.bridge, "up"])?;
        // Hairpin: with br_netfilter a service VIP DNATed back to the
        // sending task leaves through the port it came in by.
        ip(&["link", "set", veth, "type", "bridge_slave", "hairpin", "on"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "addr", "replace", &self.address.to_string(), "dev", TASK_IFACE])?;
        ip(&["-n", ns, "link", "set", TASK_IFACE, "up"])?;
        ip(&["-n", ns, "route", "replace", "default", "via", &self.gateway.to_string(), "dev", TASK_IFACE])?;
        self.forget_neighbor();
        Ok(())
    }

    /// Drops the host's ARP entry for the task's address: addresses are
    /// reused, and an entry left from the previous holder would send the
    /// new task's traffic to a vanished MAC until it aged out (connections
    /// time out meanwhile). Best effort: a missing entry is fine.
    fn forget_neighbor(&self) {
        let address = self.address.addr().to_string();
        let _ = ip(&["neigh", "flush", "to", &address, "dev", &self.bridge]);
    }

    /// Deletes the namespace (taking `eth0` and so the whole veth pair with
    /// it) and the host end should it linger; safe to repeat. The kernel
    /// destroys a deleted namespace's links asynchronously, so the host end
    /// may vanish between the check and the delete: that counts as done.
    pub fn unplumb(&self) -> Result<(), NetworkError> {
        if self.netns_path().exists() {
            ip(&["netns", "del", &self.netns]).or_else(already_gone)?;
        }
        if link_exists(&self.host_veth) {
            ip(&["link", "del", &self.host_veth]).or_else(already_gone)?;
        }
        super::conntrack::forget_connections_of(&self.address.addr().to_string());
        self.forget_neighbor();
        Ok(())
    }
}

/// The first address of `bridge`'s subnet after `after` (from the start
/// when None), wrapping around, that is neither the gateway nor in `taken`
/// (network and broadcast addresses are never handed out).
///
/// Handing addresses out in turn, as Docker's and Kubernetes' allocators
/// do, rather than lowest first keeps a just-released address unused for as
/// long as the subnet allows: other nodes may still hold connection-tracking
/// state for the task that had it, which a new task at the same address
/// would receive.
pub fn next_free(bridge: &Bridge, taken: &[Ipv4Addr], after: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    let free = |a: &Ipv4Addr| *a != bridge.gateway() && !taken.contains(a);
    let later = bridge.subnet().hosts().filter(|a| after.is_some_and(|after| *a > after)).find(free);
    later.or_else(|| bridge.subnet().hosts().find(free))
}

/// `shoal-<task id>`; ids that are not plain names (or are long) are hashed.
pub fn netns_name(id: &str) -> String {
    let plain =
        id.len() <= 40 && !id.starts_with('.') && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if plain {
        format!("shoal-{id}")
    } else {
        format!("shoal-{:016x}", fnv1a(id))
    }
}

/// `vs` + 12 hex digits of the id's hash: interface names have 15 bytes at most.
pub fn veth_name(id: &str) -> String {
    format!("vs{:012x}", fnv1a(id) >> 16)
}

/// FNV-1a, 64 bits: stable across builds and platforms (std's hasher is not).
pub(crate) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(subnet: &str) -> Bridge {
        Bridge::new("shoal0", subnet.parse().unwrap()).unwrap()
    }

    #[test]
    fn addresses_are_handed_out_in_turn_skipping_the_gateway() {
        let bridge = bridge("10.200.3.0/24");
        let a = |last| Ipv4Addr::new(10, 200, 3, last);
        assert_eq!(next_free(&bridge, &[], None), Some(a(2)));
        assert_eq!(next_free(&bridge, &[a(2), a(3), a(5)], None), Some(a(4)));
        // A released address is not reused while later ones are free…
        assert_eq!(next_free(&bridge, &[a(3)], Some(a(3))), Some(a(4)));
        // …and the turn wraps around at the end of the subnet.
        assert_eq!(next_free(&bridge, &[a(2)], Some(a(254))), Some(a(3)));
    }

    #[test]
    fn a_full_subnet_has_no_free_address() {
        let bridge = bridge("10.0.0.0/30");
        assert_eq!(next_free(&bridge, &[], None), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(next_free(&bridge, &[Ipv4Addr::new(10, 0, 0, 2)], Some(Ipv4Addr::new(10, 0, 0, 2))), None);
        let full: Vec<Ipv4Addr> = (2..=254).map(|n| Ipv4Addr::new(10, 200, 3, n)).collect();
        assert_eq!(next_free(&self::bridge("10.200.3.0/24"), &full, None), None);
    }

    #[test]
    fn the_record_carries_the_subnets_prefix_and_gateway() {
        let record = NetworkRecord::new("0123456789abcdef", &bridge("10.200.3.0/24"), Ipv4Addr::new(10, 200, 3, 7));
        assert_eq!(record.address.to_string(), "10.200.3.7/24");
        assert_eq!(record.gateway, Ipv4Addr::new(10, 200, 3, 1));
        assert_eq!(record.netns, "shoal-0123456789abcdef");
        assert_eq!(record.netns_path(), PathBuf::from("/run/netns/shoal-0123456789abcdef"));
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<NetworkRecord>(&json).unwrap(), record);
    }

    #[test]
    fn names_fit_the_kernels_limits_and_differ_per_task() {
        assert_eq!(veth_name("a").len(), 14);
        assert_ne!(veth_name("t-1"), veth_name("t-2"));
        assert_eq!(veth_name("t-1"), veth_name("t-1"));
        assert!(netns_name("../etc").starts_with("shoal-") && !netns_name("../etc").contains('/'));
        assert_eq!(netns_name(&"x".repeat(41)).len(), "shoal-".len() + 16);
    }
}
