//! The VXLAN overlay: how this node reaches the tasks of a node that is not
//! on its L2 segment (one behind a router), where a `via <node addr>` route
//! cannot work. [`routes`](super::routes) decides per node: on-link, a host
//! route; otherwise a peer here. Modelled on flannel's `vxlan` backend.
//!
//! # How it works
//!
//! One VXLAN device, [`DEVICE`] (VNI [`VNI`], UDP port [`PORT`],
//! `nolearning`), sending from this node's advertised address, exists
//! while at least one node needs it. A node's end of the tunnel (its
//! [`Vtep`]) follows from its task subnet alone: the device's address is
//! the subnet's network address as a /32 (`10.200.3.0/32`), its MAC
//! `0a:58:` and those four bytes (locally administered, unicast). A Node's
//! `status.addr` and `status.taskSubnet` are thus all a peer needs: nothing
//! more is published, nothing is learnt from traffic. Per peer:
//!
//! - `ip neigh replace <peer VTEP addr> lladdr <peer MAC> dev shoal-vxlan
//!   nud permanent`: no ARP crosses the overlay;
//! - `bridge fdb replace <peer MAC> dev shoal-vxlan dst <peer node addr>`:
//!   frames for that MAC go in UDP to the peer;
//! - `ip route replace <peer subnet> via <peer VTEP addr> dev shoal-vxlan
//!   onlink`.
//!
//! What this node masquerades towards a peer's tasks (published ports, and
//! tasks leaving the subnet by the bridge's rule) leaves with the device's
//! address as its source. That address is in this node's subnet, so the
//! peer's route to the subnet brings the replies back over the overlay.
//!
//! [`steps`] is the pure part (what to change, tested below); [`Overlay`]
//! runs the steps and remembers what the kernel holds.
//!
//! # Guarantees
//!
//! - Idempotent: an apply with nothing new runs no command.
//! - Repairable: the device is deleted and rebuilt whole at the first apply
//!   (a killed agent's leftover is replaced), when this node's VTEP or MTU
//!   changes, and at the apply after a failed device step or peer removal.
//!   A peer whose steps failed is not recorded, so the next apply retries
//!   it (every step is a `replace`).
//! - The device goes with the last peer, and on an apply with nothing
//!   desired (the data plane's cleanup, at agent shutdown).
//!
//! # Caveats
//!
//! - MTU: the device's is the underlay's (the interface holding the
//!   advertised address) minus [`OVERHEAD`]. Tasks' interfaces keep 1500;
//!   TCP connections forwarded into the overlay have their MSS clamped to
//!   the device's MTU (table `ip shoal-overlay`), so they never need
//!   path-MTU discovery. Large UDP datagrams still do.
//! - IPv4 only and unencrypted; the underlay must pass UDP [`PORT`] between
//!   nodes.
//! - One agent per network namespace: the device is the agent's alone.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;

use ipnet::Ipv4Net;

use crate::network::{already_gone, ip, run, NetworkError};

/// The VXLAN device (flannel's is `flannel.1`).
pub const DEVICE: &str = "shoal-vxlan";
/// The VXLAN network identifier: any number, as long as every node uses the same.
pub const VNI: u32 = 7340;
/// The nftables table of the overlay's MSS clamp ([`clamp_script`]).
pub const CLAMP_TABLE: &str = "shoal-overlay";
/// IANA's VXLAN port (Linux's default, 8472, predates it).
pub const PORT: u16 = 4789;
/// What VXLAN adds to a packet: outer IPv4 (20), UDP (8), VXLAN (8) and inner Ethernet (14) headers.
pub const OVERHEAD: u32 = 50;
/// The underlay's MTU when the interface holding the node's address cannot be found.
const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A node's end of the overlay: its task subnet and its (underlay) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vtep {
    pub subnet: Ipv4Net,
    pub node: Ipv4Addr,
}

impl Vtep {
    pub fn new(subnet: Ipv4Net, node: Ipv4Addr) -> Self {
        Self { subnet: subnet.trunc(), node }
    }

    /// The device's address: the subnet's network address, which no task gets.
    pub fn address(&self) -> Ipv4Addr {
        self.subnet.network()
    }

    /// `0a:58:` and the address's four bytes.
    pub fn mac(&self) -> Mac {
        let [a, b, c, d] = self.address().octets();
        Mac([0x0a, 0x58, a, b, c, d])
    }
}

/// This node's device: its own end and its MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub local: Vtep,
    pub mtu: u32,
}

/// What the overlay should be: no device, or the device and its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub device: Option<Device>,
    pub peers: BTreeSet<Vtep>,
}

impl Desired {
    /// The device at `local` for `peers`; none when there is no peer.
    /// `underlay_mtu` unknown: [`DEFAULT_UNDERLAY_MTU`].
    pub fn new(local: Vtep, peers: BTreeSet<Vtep>, underlay_mtu: Option<u32>) -> Self {
        if peers.is_empty() {
            return Self::default();
        }
        let mtu = underlay_mtu.unwrap_or(DEFAULT_UNDERLAY_MTU).saturating_sub(OVERHEAD);
        Self { device: Some(Device { local, mtu }), peers }
    }
}

/// The device as far as this node knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Held {
    /// Not known (first apply, or a step failed half-way): rebuild it.
    #[default]
    Unknown,
    Absent,
    Present(Device),
}

/// One change to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    DeleteDevice,
    CreateDevice(Device),
    RemovePeer(Vtep),
    AddPeer(Vtep),
}

/// The changes turning `held` with `peers` into `desired`: removals before
/// additions, so a peer whose address changed is replaced cleanly.
pub fn steps(held: Held, peers: &BTreeSet<Vtep>, desired: &Desired) -> Vec<Step> {
    match (held, desired.device) {
        (Held::Absent, None) => Vec::new(),
        (_, None) => vec![Step::DeleteDevice],
        (Held::Present(current), Some(wanted)) if current == wanted => {
            let gone = peers.difference(&desired.peers).map(|p| Step::RemovePeer(*p));
            gone.chain(desired.peers.difference(peers).map(|p| Step::AddPeer(*p))).collect()
        }
        (held, Some(wanted)) => {
            let rebuild = (held != Held::Absent).then_some(Step::DeleteDevice);
            let device = rebuild.into_iter().chain([Step::CreateDevice(wanted)]);
            device.chain(desired.peers.iter().map(|p| Step::AddPeer(*p))).collect()
        }
    }
}

/// The overlay this node installed; [`Overlay::apply`] makes the kernel match.
#[derive(Debug, Default)]
pub struct Overlay {
    held: Held,
    peers: BTreeSet<Vtep>,
}

impl Overlay {
    /// Runs the [`steps`] to `desired`, going on past a failed peer; the first error.
    pub fn apply(&mut self, desired: &Desired) -> Result<(), NetworkError> {
        let mut first = None;
        for step in steps(self.held, &self.peers, desired) {
            match execute(step) {
                Ok(()) => {
                    if step == Step::DeleteDevice && matches!(self.held, Held::Present(_)) {
                        tracing::info!(device = DEVICE, "VXLAN overlay device removed: no node needs it");
                    }
                    self.record(step);
                }
                Err(err) => {
                    tracing::warn!(?step, error = %err, "VXLAN overlay step failed; retried at the next apply");
                    match step {
                        // The peer stays unrecorded and is added again next time.
                        Step::AddPeer(_) => {}
                        // A device half made, or a peer half removed: rebuild next time.
                        Step::RemovePeer(_) => self.held = Held::Unknown,
                        Step::DeleteDevice | Step::CreateDevice(_) => {
                            self.held = Held::Unknown;
                            return Err(err);
                        }
                    }
                    first.get_or_insert(err);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// What the kernel holds after `step` succeeded.
    fn record(&mut self, step: Step) {
        match step {
            Step::DeleteDevice => {
                self.held = Held::Absent;
                self.peers.clear();
            }
            Step::CreateDevice(device) => {
                self.held = Held::Present(device);
                self.peers.clear();
            }
            Step::RemovePeer(peer) => {
                self.peers.remove(&peer);
            }
            Step::AddPeer(peer) => {
                self.peers.insert(peer);
            }
        }
    }
}

/// Runs one step's `ip`/`bridge` commands.
fn execute(step: Step) -> Result<(), NetworkError> {
    match step {
        Step::DeleteDevice => {
            ip(&["link", "del", DEVICE]).or_else(already_gone)?;
            run("nft", &["delete", "table", "ip", CLAMP_TABLE], None).or_else(already_gone)
        }
        Step::CreateDevice(device) => create_device(device),
        Step::RemovePeer(peer) => remove_peer(peer),
        Step::AddPeer(peer) => add_peer(peer),
    }
}

fn create_device(device: Device) -> Result<(), NetworkError> {
    let local = device.local;
    let (mac, underlay) = (local.mac().to_string(), local.node.to_string());
    let (mtu, vni, port) = (device.mtu.to_string(), VNI.to_string(), PORT.to_string());
    let vxlan = ["type", "vxlan", "id", &vni, "dstport", &port, "local", &underlay, "nolearning"];
    let args: Vec<&str> = ["link", "add", DEVICE, "address", &mac, "mtu", &mtu].into_iter().chain(vxlan).collect();
    ip(&args)?;
    ip(&["addr", "replace", &format!("{}/32", local.address()), "dev", DEVICE])?;
    ip(&["link", "set", DEVICE, "up"])?;
    run("nft", &["-f", "-"], Some(&clamp_script()))?;
    tracing::info!(device = DEVICE, vni = VNI, local = %underlay, address = %local.address(), mtu = device.mtu, "VXLAN overlay device up");
    Ok(())
}

/// The table clamping the MSS of TCP connections forwarded into the
/// overlay to what fits its MTU: tasks' interfaces keep 1500, and without
/// it a full-size segment would depend on path-MTU discovery, which a
/// network dropping ICMP breaks. Each node clamps what it sends, so both
/// directions of a connection are covered. Replaced whole, so it is idempotent.
fn clamp_script() -> String {
    format!(
        "table ip {CLAMP_TABLE}\ndelete table ip {CLAMP_TABLE}\ntable ip {CLAMP_TABLE} {{\n\tchain forward {{\n\t\t\
         type filter hook forward priority mangle; policy accept;\n\t\t\
         oifname \"{DEVICE}\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu\n\t}}\n}}\n"
    )
}

fn add_peer(peer: Vtep) -> Result<(), NetworkError> {
    let (address, mac, node) = (peer.address().to_string(), peer.mac().to_string(), peer.node.to_string());
    ip(&["neigh", "replace", &address, "lladdr", &mac, "dev", DEVICE, "nud", "permanent"])?;
    run("bridge", &["fdb", "replace", &mac, "dev", DEVICE, "dst", &node], None)?;
    ip(&["route", "replace", &peer.subnet.to_string(), "via", &address, "dev", DEVICE, "onlink"])?;
    tracing::info!(subnet = %peer.subnet, node = %node, "route to another node's tasks over the VXLAN overlay");
    Ok(())
}

/// Undoes [`add_peer`]; what is already gone counts as removed.
fn remove_peer(peer: Vtep) -> Result<(), NetworkError> {
    let (address, mac, node) = (peer.address().to_string(), peer.mac().to_string(), peer.node.to_string());
    ip(&["route", "del", &peer.subnet.to_string(), "via", &address, "dev", DEVICE]).or_else(absent)?;
    ip(&["neigh", "del", &address, "dev", DEVICE]).or_else(absent)?;
    run("bridge", &["fdb", "del", &mac, "dev", DEVICE, "dst", &node], None).or_else(absent)?;
    tracing::info!(subnet = %peer.subnet, node = %node, "overlay route to another node's tasks removed");
    Ok(())
}

/// [`already_gone`], and a route that is not there ("No such process").
fn absent(err: NetworkError) -> Result<(), NetworkError> {
    match &err {
        NetworkError::Command { message, .. } if message.contains("No such process") => Ok(()),
        _ => already_gone(err),
    }
}

/// The MTU of the interface holding `addr` (`ip -j addr show to <addr>/32`).
pub fn underlay_mtu(addr: Ipv4Addr) -> Option<u32> {
    let output = Command::new("ip").args(["-j", "-4", "addr", "show", "to", &format!("{addr}/32")]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    parse_mtu(&String::from_utf8_lossy(&output.stdout), addr)
}

/// The `mtu` of the interface in `ip -j addr` output with `addr` among its addresses.
fn parse_mtu(json: &str, addr: Ipv4Addr) -> Option<u32> {
    let links: Vec<serde_json::Value> = serde_json::from_str(json).ok()?;
    let wanted = addr.to_string();
    let holds = |link: &serde_json::Value| {
        link["addr_info"].as_array().is_some_and(|a| a.iter().any(|i| i["local"].as_str() == Some(&wanted)))
    };
    let link = links.iter().find(|l| holds(l))?;
    link["mtu"].as_u64().and_then(|m| u32::try_from(m).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vtep(subnet: &str, node: &str) -> Vtep {
        Vtep::new(subnet.parse().unwrap(), node.parse().unwrap())
    }

    fn desired(local: Vtep, peers: &[Vtep]) -> Desired {
        Desired::new(local, peers.iter().copied().collect(), Some(1500))
    }

    /// Runs `steps` against `overlay`'s record as if every command succeeded.
    fn converge(overlay: &mut Overlay, desired: &Desired) -> Vec<Step> {
        let planned = steps(overlay.held, &overlay.peers, desired);
        for step in &planned {
            overlay.record(*step);
        }
        planned
    }

    #[test]
    fn a_vtep_is_derived_from_the_task_subnet_alone() {
        let v = vtep("10.200.3.77/24", "192.168.1.5");
        assert_eq!(v.address(), Ipv4Addr::new(10, 200, 3, 0));
        assert_eq!(v.mac().to_string(), "0a:58:0a:c8:03:00");
        assert_eq!(v.mac().0[0] & 0b11, 0b10, "locally administered, unicast");
    }

    #[test]
    fn the_device_mtu_leaves_room_for_the_vxlan_headers() {
        let local = vtep("10.200.1.0/24", "192.168.1.1");
        let peer = vtep("10.200.2.0/24", "192.168.2.1");
        let device = |mtu| Desired::new(local, [peer].into(), mtu).device.unwrap().mtu;
        assert_eq!(device(Some(9000)), 8950);
        assert_eq!(device(None), 1450);
        assert_eq!(Desired::new(local, BTreeSet::new(), Some(1500)), Desired::default(), "no peer, no device");
    }

    #[test]
    fn the_first_apply_rebuilds_the_device_and_a_second_changes_nothing() {
        let local = vtep("10.200.1.0/24", "192.168.1.1");
        let (b, c) = (vtep("10.200.2.0/24", "192.168.2.1"), vtep("10.200.3.0/24", "192.168.3.1"));
        let want = desired(local, &[b, c]);
        let mut overlay = Overlay::default();
        let device = want.device.unwrap();
        assert_eq!(
            converge(&mut overlay, &want),
            [Step::DeleteDevice, Step::CreateDevice(device), Step::AddPeer(b), Step::AddPeer(c)]
        );
        assert_eq!(converge(&mut overlay, &want), []);
    }

    #[test]
    fn a_gone_or_moved_peer_is_removed_before_its_replacement_is_added() {
        let local = vtep("10.200.1.0/24", "192.168.1.1");
        let (b, c) = (vtep("10.200.2.0/24", "192.168.2.1"), vtep("10.200.3.0/24", "192.168.3.1"));
        let mut overlay = Overlay::default();
        converge(&mut overlay, &desired(local, &[b, c]));
        let moved = vtep("10.200.2.0/24", "192.168.2.9");
        assert_eq!(
            converge(&mut overlay, &desired(local, &[moved])),
            [Step::RemovePeer(b), Step::RemovePeer(c), Step::AddPeer(moved)]
        );
    }

    #[test]
    fn the_device_goes_with_the_last_peer_and_is_rebuilt_when_this_node_changes() {
        let local = vtep("10.200.1.0/24", "192.168.1.1");
        let b = vtep("10.200.2.0/24", "192.168.2.1");
        let mut overlay = Overlay::default();
        converge(&mut overlay, &desired(local, &[b]));
        let renumbered = desired(vtep("10.200.9.0/24", "192.168.1.1"), &[b]);
        let device = renumbered.device.unwrap();
        assert_eq!(
            converge(&mut overlay, &renumbered),
            [Step::DeleteDevice, Step::CreateDevice(device), Step::AddPeer(b)]
        );
        assert_eq!(converge(&mut overlay, &Desired::default()), [Step::DeleteDevice]);
        assert_eq!(converge(&mut overlay, &Desired::default()), [], "nothing to delete twice");
    }

    #[test]
    fn an_unknown_device_is_deleted_even_when_none_is_wanted() {
        // A killed agent may have left one: the cleanup and the first apply remove it.
        assert_eq!(steps(Held::Unknown, &BTreeSet::new(), &Desired::default()), [Step::DeleteDevice]);
    }

    #[test]
    fn the_underlay_mtu_is_read_from_the_interface_holding_the_address() {
        let json = r#"[{"ifname":"lo","mtu":65536,"addr_info":[{"local":"127.0.0.1"}]},
            {},
            {"ifname":"eth0","mtu":1400,"addr_info":[{"local":"10.1.0.5","prefixlen":24}]}]"#;
        assert_eq!(parse_mtu(json, Ipv4Addr::new(10, 1, 0, 5)), Some(1400));
        assert_eq!(parse_mtu(json, Ipv4Addr::new(10, 1, 0, 6)), None);
        assert_eq!(parse_mtu("not json", Ipv4Addr::new(10, 1, 0, 5)), None);
    }
}
