//! What IPVS needs around it on the node: the dummy interface holding the
//! VIPs, the node's own addresses (where published ports are served), the
//! sysctls, and the small nftables table that masquerades IPVS traffic.
//!
//! # Why the masquerade table
//!
//! IPVS in NAT mode rewrites only the destination. A reply must come back
//! through this node to be rewritten back, which it does not when the
//! backend can reach the client without it: a backend on this node's
//! bridge answering a task next to it, or any backend answering the node
//! itself (whose source address for a VIP is the VIP — bound on every
//! node). kube-proxy marks such packets before IPVS sees them (iptables and
//! ipsets) and masquerades marked packets in POSTROUTING; the `shoal-ipvs`
//! table does the same with two nftables sets and two mark bits:
//!
//! - `prerouting`/`output` (nat, before IPVS's LOCAL_IN/LOCAL_OUT hooks)
//!   mark packets to a published port ([`MASQ_MARK`], always, as Swarm's
//!   ingress does) and to a VIP: [`MASQ_MARK`] unless they come from this
//!   node's task subnet, [`LOCAL_TASK_MARK`] when they do;
//! - `postrouting` (after IPVS picked the real server) masquerades
//!   [`MASQ_MARK`], and [`LOCAL_TASK_MARK`] when the real server is on this
//!   node's subnet too — a task reaching a task on another node keeps its
//!   source address.
//!
//! The mark survives IPVS's rewrite (same packet), and with
//! `net.ipv4.vs.conntrack=1` IPVS keeps the connection-tracking entry that
//! NAT needs. Matching IPVS traffic directly in POSTROUTING is not possible
//! in nftables (no `ipvs` match; `ct original proto-dst` cannot be part of
//! a set key), hence marks.
//!
//! The table is rewritten whole (one atomic `nft -f`) when its sets change,
//! which happens when services or ports do, not when backends do.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::desired::{Desired, VirtualServer};
use super::IpvsError;
use crate::network::{already_gone, ip, run};

/// The dummy interface the VIPs are bound to (kube-proxy's is `kube-ipvs0`).
pub const DUMMY: &str = "shoal-ipvs0";
/// The nftables table marking and masquerading IPVS traffic.
pub const TABLE: &str = "shoal-ipvs";
/// Masquerade this connection (the bit the nftables plane uses too).
pub const MASQ_MARK: &str = "0x00100000";
/// A VIP connection from this node's task subnet: masqueraded only to a real server on it.
pub const LOCAL_TASK_MARK: &str = "0x00200000";

/// Writes `value` to `/proc/sys/<path>`.
pub fn sysctl(path: &str, value: &str) -> Result<(), IpvsError> {
    let file = format!("/proc/sys/{path}");
    std::fs::write(&file, value).map_err(|source| IpvsError::Sysctl { path: file, source })
}

/// The sysctls kube-proxy's IPVS mode sets: forwarding for NAT to other
/// hosts, and connection tracking of IPVS connections for the masquerade.
pub fn enable_sysctls() -> Result<(), IpvsError> {
    sysctl("net/ipv4/ip_forward", "1")?;
    sysctl("net/ipv4/vs/conntrack", "1")
}

/// Creates the dummy interface unless it exists. It stays down, as
/// `kube-ipvs0` does: its addresses are local either way.
pub fn ensure_dummy() -> Result<(), IpvsError> {
    if dummy_exists() {
        return Ok(());
    }
    ip(&["link", "add", DUMMY, "type", "dummy"]).map_err(IpvsError::Interface)
}

/// True when the dummy interface exists in this network namespace.
pub fn dummy_exists() -> bool {
    let name = std::ffi::CString::new(DUMMY).expect("no NUL in the name");
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// Deletes the dummy interface (and with it every VIP).
pub fn delete_dummy() -> Result<(), IpvsError> {
    ip(&["link", "del", DUMMY]).or_else(already_gone).map_err(IpvsError::Interface)
}

/// (interface, IPv4 address) of every address on this node.
fn interface_addresses() -> Result<Vec<(String, Ipv4Addr)>, IpvsError> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(IpvsError::Addresses(std::io::Error::last_os_error()));
    }
    let mut found = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || i32::from(unsafe { (*entry.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in; the name is a C string.
        let (address, name) = unsafe {
            let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
            (Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)), std::ffi::CStr::from_ptr(entry.ifa_name))
        };
        found.push((name.to_string_lossy().into_owned(), address));
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// The node's addresses (published ports are served on each) and the VIPs
/// bound to the dummy interface. Loopback is left out: IPVS cannot
/// masquerade a connection from 127.0.0.1 to another host, so published
/// ports do not answer on 127.0.0.1 in this mode (nor in kube-proxy's).
pub fn addresses() -> Result<(Vec<Ipv4Addr>, BTreeSet<Ipv4Addr>), IpvsError> {
    let mut node = Vec::new();
    let mut vips = BTreeSet::new();
    for (interface, address) in interface_addresses()? {
        if interface == DUMMY {
            vips.insert(address);
        } else if !address.is_loopback() && !node.contains(&address) {
            node.push(address);
        }
    }
    node.sort();
    Ok((node, vips))
}

/// Binds the `wanted` VIPs to the dummy interface and removes the others
/// in one `ip -batch` run.
pub fn bind_vips(bound: &BTreeSet<Ipv4Addr>, wanted: &BTreeSet<Ipv4Addr>) -> Result<(), IpvsError> {
    let mut script = String::new();
    for vip in wanted.difference(bound) {
        writeln!(script, "address add {vip}/32 dev {DUMMY}").expect("writing to a String");
    }
    for vip in bound.difference(wanted) {
        writeln!(script, "address del {vip}/32 dev {DUMMY}").expect("writing to a String");
    }
    if script.is_empty() {
        return Ok(());
    }
    run("ip", &["-batch", "-"], Some(&script)).map_err(IpvsError::Interface)
}

/// The whole `shoal-ipvs` table for `desired` (see the module docs).
pub fn masquerade_table(desired: &Desired, subnet: Option<Ipv4Net>) -> String {
    let elements = |servers: &BTreeSet<VirtualServer>| {
        let list: Vec<String> =
            servers.iter().map(|s| format!("{} . {} . {}", s.address, s.protocol.name(), s.port)).collect();
        if list.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", list.join(", "))
        }
    };
    let key = "ip daddr . meta l4proto . th dport";
    let mark = |bit: &str| format!("meta mark set meta mark | {bit}");
    let mut rules = vec![format!("{key} @published {}", mark(MASQ_MARK))];
    let mut post = vec![format!("meta mark & {MASQ_MARK} == {MASQ_MARK} masquerade")];
    match subnet {
        Some(subnet) => {
            rules.push(format!("{key} @vips ip saddr != {subnet} {}", mark(MASQ_MARK)));
            rules.push(format!("{key} @vips ip saddr {subnet} {}", mark(LOCAL_TASK_MARK)));
            post.push(format!("meta mark & {LOCAL_TASK_MARK} == {LOCAL_TASK_MARK} ip daddr {subnet} masquerade"));
        }
        None => rules.push(format!("{key} @vips {}", mark(MASQ_MARK))),
    }
    let set_type = "type ipv4_addr . inet_proto . inet_service;";
    let mut out = format!("table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n");
    writeln!(out, "\tset published {{ {set_type}{} }}", elements(&desired.published)).expect("writing to a String");
    writeln!(out, "\tset vips {{ {set_type}{} }}", elements(&desired.vips)).expect("writing to a String");
    out.push_str("\tchain prerouting { type nat hook prerouting priority dstnat; policy accept; jump mark-ipvs; }\n");
    out.push_str("\tchain output { type nat hook output priority -100; policy accept; jump mark-ipvs; }\n");
    writeln!(out, "\tchain mark-ipvs {{\n\t\t{}\n\t}}", rules.join("\n\t\t")).expect("writing to a String");
    writeln!(
        out,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\t{}\n\t}}",
        post.join("\n\t\t")
    )
    .expect("writing to a String");
    out.push_str("}\n");
    out
}

/// Replaces the table with `script` (from [`masquerade_table`]).
pub fn write_table(script: &str) -> Result<(), IpvsError> {
    run("nft", &["-f", "-"], Some(script)).map_err(IpvsError::Masquerade)
}

/// Deletes the table.
pub fn delete_table() -> Result<(), IpvsError> {
    run("nft", &["delete", "table", "ip", TABLE], None).or_else(already_gone).map_err(IpvsError::Masquerade)
}
