//! The node's bridge: created (or found) when the agent starts with a task
//! subnet, holding the subnet's first address as the tasks' gateway; IP
//! forwarding on; and an nftables table `shoal-agent-<bridge>` (the agent's
//! alone, replaced whole on every start) that masquerades traffic leaving
//! the subnet, so tasks reach the outside world with the node's address.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{already_gone, ip, link_exists, run, NetworkError};

/// The longest prefix a task subnet may have: a /30 holds the gateway and one task.
const MAX_PREFIX: u8 = 30;

/// A node's bridge on its task subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    name: String,
    subnet: Ipv4Net,
}

impl Bridge {
    /// Checks the name (a Linux interface name) and the subnet's size.
    pub fn new(name: &str, subnet: Ipv4Net) -> Result<Self, NetworkError> {
        let valid = (1..=15).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(NetworkError::BridgeName(name.into()));
        }
        if subnet.prefix_len() > MAX_PREFIX {
            return Err(NetworkError::SubnetTooSmall(subnet));
        }
        Ok(Self { name: name.into(), subnet: subnet.trunc() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The bridge's own address, the tasks' default route: the subnet's first host.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.hosts().next().expect("a /30 or wider subnet has hosts")
    }

    /// Creates what is missing and brings it up; safe to repeat.
    pub fn up(&self) -> Result<(), NetworkError> {
        let name = self.name.as_str();
        if !link_exists(name) {
            ip(&["link", "add", name, "type", "bridge"])?;
        }
        let address = Ipv4Net::new(self.gateway(), self.subnet.prefix_len()).expect("the subnet's prefix").to_string();
        ip(&["addr", "replace", &address, "dev", name])?;
        ip(&["link", "set", name, "up"])?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|source| NetworkError::Io { what: "enabling IP forwarding".into(), source })?;
        run("nft", &["-f", "-"], Some(&self.nft_ruleset()))
    }

    /// Removes the nftables table and the bridge (tasks must be gone).
    pub fn down(&self) -> Result<(), NetworkError> {
        run("nft", &["delete", "table", "ip", &self.nft_table()], None).or_else(already_gone)?;
        ip(&["link", "del", &self.name]).or_else(already_gone)
    }

    /// `shoal-agent-<bridge>`: one table per bridge, so agents with
    /// different bridges on one host never touch each other's rules.
    pub fn nft_table(&self) -> String {
        format!("shoal-agent-{}", self.name)
    }

    /// The whole table, replaced atomically: declaring it first makes the
    /// `delete` succeed on a fresh host, and `nft -f` applies all or nothing.
    fn nft_ruleset(&self) -> String {
        let (table, subnet) = (self.nft_table(), self.subnet);
        format!(
            "table ip {table}\n\
             delete table ip {table}\n\
             table ip {table} {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {subnet} ip daddr != {subnet} masquerade\n\
             \t}}\n\
             }}\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_the_subnets_first_address() {
        let bridge = Bridge::new("shoal0", "10.200.3.0/24".parse().unwrap()).unwrap();
        assert_eq!(bridge.gateway(), Ipv4Addr::new(10, 200, 3, 1));
        // Host bits in the configured CIDR are ignored.
        let bridge = Bridge::new("shoal0", "10.200.3.77/24".parse().unwrap()).unwrap();
        assert_eq!(bridge.subnet().to_string(), "10.200.3.0/24");
    }

    #[test]
    fn bridge_names_are_interface_names_and_subnets_need_room() {
        let subnet: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        assert!(Bridge::new("shoal-test_1", subnet).is_ok());
        for bad in ["", "0abc", "a-name-that-is-too-long", "has space", "a/b"] {
            assert!(matches!(Bridge::new(bad, subnet), Err(NetworkError::BridgeName(_))), "{bad:?}");
        }
        assert!(matches!(Bridge::new("b", "10.0.0.0/31".parse().unwrap()), Err(NetworkError::SubnetTooSmall(_))));
    }

    #[test]
    fn the_masquerade_rule_covers_traffic_leaving_the_subnet() {
        let bridge = Bridge::new("shoal0", "10.200.3.0/24".parse().unwrap()).unwrap();
        let rules = bridge.nft_ruleset();
        assert!(rules.contains("delete table ip shoal-agent-shoal0"), "{rules}");
        assert!(rules.contains("ip saddr 10.200.3.0/24 ip daddr != 10.200.3.0/24 masquerade"), "{rules}");
    }
}
