//! The nftables ruleset as data: what the `shoal` table should hold for a
//! set of Endpoints ([`Ruleset::desired`]), the whole table as one `nft -f`
//! script ([`Ruleset::full`]) and the smallest transaction from one ruleset
//! to the next ([`Ruleset::diff`]). Pure functions: no kernel involved, so
//! the golden-text tests below pin the layout.
//!
//! Layout (kube-proxy's nftables mode, in Swarm's words):
//!
//! - `prerouting` and `output` (nat hooks, dstnat) jump to `services`;
//!   `postrouting` (srcnat) masquerades packets carrying [`MASQ_MARK`].
//! - `services`: `ip daddr . meta l4proto . th dport vmap @service-ips`
//!   (a service's declared ports), then `ip daddr vmap @service-vips`
//!   (every other port of a VIP, as Swarm's VIPs carry any port: a stack's
//!   `redis` without `ports:` is still `redis:6379` to its neighbours),
//!   then, for packets to one of this node's own addresses (127.0.0.1
//!   included), `jump nodeports`.
//! - `nodeports`: `meta l4proto . th dport vmap @service-nodeports`.
//! - `mark-for-masquerade`: sets [`MASQ_MARK`].
//! - `input-guard` (filter, input): with `route_localnet` on (needed for
//!   127.0.0.1:published), drops packets from elsewhere addressed to
//!   127.0.0.0/8 unless we DNATed them, as kube-proxy does.
//! - per service port: `svc-<service>-<proto>-<target>` marks traffic
//!   from this node's task subnet for masquerade (when a backend is in it:
//!   hairpin and same-node replies must come back through the bridge) and
//!   from this node's other backends (a task reaching itself),
//!   then picks a backend and DNATs to it in one rule, `meta l4proto tcp
//!   dnat ip addr . port to numgen random mod N map { 0 : address . port,
//!   … }` (a host-network task's port is its mapped host port; `reject`
//!   when there is no backend: a refused connection, not a hang). No chain
//!   per backend, unlike kube-proxy: the table stays a few chains per
//!   service, and `nft` reads the whole table before each change, so one
//!   backend change stays quick at thousands of services;
//! - per VIP: `svc-<service>-any`, the same with `dnat to numgen … map
//!   { 0 : address, … }`, keeping the port (backends reached through a
//!   mapped host port are left out: only declared ports map);
//! - per published port: `np-<service>-<proto>-<published>` marks for
//!   masquerade and goes to the service chain (ingress), or to this node's
//!   own backends only (host mode; absent on nodes running none).
//!
//! Chain names carry the service's name so `nft list table ip shoal` reads
//! like the services it serves; names with other characters than letters,
//! digits, `-` and `_` are hashed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use shoal_crd::{Backend, Endpoints, PortProtocol, PublishMode};

/// The packet mark asking `postrouting` to masquerade (a bit kube-proxy's 0x4000 does not use).
pub const MASQ_MARK: &str = "0x00100000";

/// VIP, protocol and port → the service chain.
pub const SERVICE_IPS: &str = "service-ips";
/// Protocol and published port → the node-port chain.
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
/// VIP → the chain for any port the service does not declare.
pub const SERVICE_VIPS: &str = "service-vips";

/// One chain: a base chain's hook line (`type nat hook … ;`) or none, and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub hook: Option<&'static str>,
    pub rules: Vec<String>,
}

/// Everything the table holds, by name; elements as `key → verdict` text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: BTreeMap<String, Chain>,
    /// Map name → element key → verdict.
    pub maps: BTreeMap<&'static str, BTreeMap<String, String>>,
}

/// What this node needs to know about itself to build its ruleset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalNode {
    pub name: String,
    /// The node's task subnet: traffic from it to a backend on this node is masqueraded.
    pub subnet: Option<Ipv4Net>,
}

impl Ruleset {
    /// The table for `endpoints` as seen from `local`. Backends whose
    /// address is not IPv4 are left out (and logged).
    pub fn desired(endpoints: &[Arc<Endpoints>], local: &LocalNode) -> Self {
        let mut set = Self::fixed();
        for e in endpoints {
            set.add_service(e, local);
        }
        set
    }

    /// The static chains and the two (empty) maps.
    fn fixed() -> Self {
        let chain = |hook, rules: &[&str]| Chain { hook, rules: rules.iter().map(|r| r.to_string()).collect() };
        let mut chains = BTreeMap::new();
        chains.insert(
            "prerouting".into(),
            chain(Some("type nat hook prerouting priority dstnat; policy accept;"), &["jump services"]),
        );
        chains.insert(
            "output".into(),
            chain(Some("type nat hook output priority -100; policy accept;"), &["jump services"]),
        );
        let masquerade = format!("meta mark & {MASQ_MARK} == {MASQ_MARK} masquerade");
        chains.insert(
            "postrouting".into(),
            chain(Some("type nat hook postrouting priority srcnat; policy accept;"), &[&masquerade]),
        );
        let guard = "iifname != \"lo\" ip daddr 127.0.0.0/8 ct status ! dnat drop";
        chains.insert(
            "input-guard".into(),
            chain(Some("type filter hook input priority filter; policy accept;"), &[guard]),
        );
        let dispatch = format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}");
        let any_port = format!("ip daddr vmap @{SERVICE_VIPS}");
        chains.insert("services".into(), chain(None, &[&dispatch, &any_port, "fib daddr type local jump nodeports"]));
        chains
            .insert("nodeports".into(), chain(None, &[&format!("meta l4proto . th dport vmap @{SERVICE_NODEPORTS}")]));
        chains.insert("mark-for-masquerade".into(), chain(None, &[&format!("meta mark set meta mark | {MASQ_MARK}")]));
        let maps =
            [(SERVICE_IPS, BTreeMap::new()), (SERVICE_NODEPORTS, BTreeMap::new()), (SERVICE_VIPS, BTreeMap::new())]
                .into();
        Self { chains, maps }
    }

    fn add_service(&mut self, endpoints: &Endpoints, local: &LocalNode) {
        let spec = &endpoints.spec;
        let service = ident(if spec.service.is_empty() { &endpoints.metadata.name } else { &spec.service });
        let backends = super::ipv4_backends(spec);
        let vip = super::ipv4_vip(spec);
        if let Some(vip) = vip {
            self.add_any_port(&service, vip, &backends, local);
        }
        let mut seen = BTreeSet::new();
        for port in &spec.ports {
            let proto = match port.protocol {
                PortProtocol::Tcp => "tcp",
                PortProtocol::Udp => "udp",
            };
            // Host-network tasks share their node's address: told apart by their host port.
            let targets: Vec<Target> = backends
                .iter()
                .map(|(addr, backend)| Target {
                    addr: *addr,
                    port: Some(backend.port(port.target)),
                    local: backend.node == local.name,
                })
                .collect();
            let service_chain = format!("svc-{service}-{proto}-{}", port.target);
            if (vip.is_some() || port.publish_mode == PublishMode::Ingress) && seen.insert((proto, port.target)) {
                self.chains
                    .insert(service_chain.clone(), Chain { hook: None, rules: balance(Some(proto), &targets, local) });
                if let Some(vip) = vip {
                    self.element(SERVICE_IPS, format!("{vip} . {proto} . {}", port.target), &service_chain);
                }
            }
            let Some(published) = port.published else { continue };
            let node_port = format!("np-{service}-{proto}-{published}");
            let mut rules = vec!["jump mark-for-masquerade".to_string()];
            match port.publish_mode {
                PublishMode::Ingress => rules.push(format!("goto {service_chain}")),
                PublishMode::Host => {
                    let here: Vec<Target> = targets.iter().filter(|t| t.local).cloned().collect();
                    if here.is_empty() {
                        continue;
                    }
                    rules.extend(balance(Some(proto), &here, local));
                }
            }
            self.chains.insert(node_port.clone(), Chain { hook: None, rules });
            self.element(SERVICE_NODEPORTS, format!("{proto} . {published}"), &node_port);
        }
    }

    /// `svc-<service>-any`: every port of `vip` the service does not
    /// declare, DNATed to the same port of a backend (backends reached
    /// through a mapped host port are left out: only declared ports map).
    fn add_any_port(&mut self, service: &str, vip: Ipv4Addr, backends: &[(Ipv4Addr, &Backend)], local: &LocalNode) {
        let targets: Vec<Target> = backends
            .iter()
            .filter(|(_, backend)| backend.ports.is_empty())
            .map(|(addr, backend)| Target { addr: *addr, port: None, local: backend.node == local.name })
            .collect();
        let service_chain = format!("svc-{service}-any");
        self.chains.insert(service_chain.clone(), Chain { hook: None, rules: balance(None, &targets, local) });
        self.element(SERVICE_VIPS, vip.to_string(), &service_chain);
    }

    fn element(&mut self, map: &'static str, key: String, chain: &str) {
        self.maps.entry(map).or_default().insert(key, format!("goto {chain}"));
    }

    /// The whole table as one script: declared (so the delete succeeds on
    /// a fresh host), deleted and rebuilt, all in one transaction.
    pub fn full(&self, table: &str) -> String {
        let mut out = format!("table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n");
        out.push_str(&format!("\tmap {SERVICE_IPS} {{ type ipv4_addr . inet_proto . inet_service : verdict; }}\n"));
        out.push_str(&format!("\tmap {SERVICE_NODEPORTS} {{ type inet_proto . inet_service : verdict; }}\n"));
        out.push_str(&format!("\tmap {SERVICE_VIPS} {{ type ipv4_addr : verdict; }}\n}}\n"));
        let everything = Ruleset { chains: BTreeMap::new(), maps: BTreeMap::new() };
        out.push_str(&everything.diff(self, table));
        out
    }

    /// The transaction turning `self` (what the kernel holds) into `next`:
    /// new chains declared first, changed and new chains flushed and
    /// refilled, elements swapped, gone chains flushed and deleted last
    /// (once nothing refers to them). Empty when nothing changed.
    pub fn diff(&self, next: &Ruleset, table: &str) -> String {
        let mut out = String::new();
        for (name, chain) in next.chains.iter().filter(|(n, _)| !self.chains.contains_key(*n)) {
            match chain.hook {
                Some(hook) => writeln!(out, "add chain ip {table} {name} {{ {hook} }}"),
                None => writeln!(out, "add chain ip {table} {name}"),
            }
            .expect("writing to a String");
        }
        for (name, chain) in &next.chains {
            match self.chains.get(name) {
                Some(old) if old == chain => continue,
                Some(_) => writeln!(out, "flush chain ip {table} {name}").expect("writing to a String"),
                None => {}
            }
            for rule in &chain.rules {
                writeln!(out, "add rule ip {table} {name} {rule}").expect("writing to a String");
            }
        }
        let empty = BTreeMap::new();
        for (map, elements) in &next.maps {
            let old = self.maps.get(map).unwrap_or(&empty);
            for (key, verdict) in old {
                if elements.get(key) != Some(verdict) {
                    writeln!(out, "delete element ip {table} {map} {{ {key} }}").expect("writing to a String");
                }
            }
            for (key, verdict) in elements {
                if old.get(key) != Some(verdict) {
                    writeln!(out, "add element ip {table} {map} {{ {key} : {verdict} }}").expect("writing to a String");
                }
            }
        }
        for name in self.chains.keys().filter(|n| !next.chains.contains_key(*n)) {
            writeln!(out, "flush chain ip {table} {name}\ndelete chain ip {table} {name}")
                .expect("writing to a String");
        }
        out
    }
}

/// One backend as a DNAT target: its address, the port (None: the
/// packet's own), and whether it runs on this node.
#[derive(Debug, Clone)]
struct Target {
    addr: Ipv4Addr,
    port: Option<u16>,
    local: bool,
}

/// The rules sending a new connection to one of `targets` at random:
/// first marked for masquerade where replies must come back through this
/// node (from a task of this node's subnet to a backend in it; from one
/// of this node's backends to itself), then DNATed through an anonymous map — no chain per backend, so the table stays small and `nft` has few
/// chains to read before each change. `reject` when there is none: a
/// refused connection, not a hang.
fn balance(proto: Option<&str>, targets: &[Target], local: &LocalNode) -> Vec<String> {
    if targets.is_empty() {
        return vec!["reject".into()];
    }
    let mut rules = Vec::new();
    let subnet = local.subnet.filter(|s| targets.iter().any(|t| s.contains(&t.addr)));
    if let Some(subnet) = subnet {
        rules.push(format!("ip saddr {subnet} jump mark-for-masquerade"));
    }
    // This node's backends outside its subnet (none known yet, or the host
    // network) may reach themselves through the VIP: a hairpin.
    let hairpins: BTreeSet<String> = targets
        .iter()
        .filter(|t| t.local && !subnet.is_some_and(|s| s.contains(&t.addr)))
        .map(|t| t.addr.to_string())
        .collect();
    if !hairpins.is_empty() {
        let set = hairpins.into_iter().collect::<Vec<_>>().join(", ");
        rules.push(format!("ip saddr {{ {set} }} jump mark-for-masquerade"));
    }
    let arms: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| match t.port {
            Some(port) => format!("{i} : {} . {port}", t.addr),
            None => format!("{i} : {}", t.addr),
        })
        .collect();
    let map = format!("numgen random mod {} map {{ {} }}", targets.len(), arms.join(", "));
    rules.push(match proto {
        Some(proto) => format!("meta l4proto {proto} dnat ip addr . port to {map}"),
        None => format!("dnat to {map}"),
    });
    rules
}

/// A service name usable in a chain name: kept when plain, else hashed.
fn ident(name: &str) -> String {
    let plain =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("h{:012x}", crate::network::task::fnv1a(name) >> 16)
    }
}

#[cfg(test)]
#[path = "ruleset_tests.rs"]
mod tests;
