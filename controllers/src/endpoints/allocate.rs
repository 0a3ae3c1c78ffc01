//! Virtual IPs and published ports, as pure functions: each service in
//! `vip` mode gets one address of the service CIDR (`10.96.0.0/16` unless
//! configured), and each of its ingress ports a published port — the one
//! its spec gives, or one from 30000–32767 when it gives none (Docker's
//! behaviour).
//!
//! # Guarantees
//!
//! - Stable: a service keeps its VIP and auto-assigned ports for its life
//!   (while its uid stays the same and nothing else holds them); re-running
//!   the allocation never moves them.
//! - Released with the Endpoints object: what is taken is computed from the
//!   Endpoints objects that exist, so a deleted service's VIP and ports are
//!   free for the next service.
//! - Lowest first; the CIDR's `.1` (and its network and broadcast addresses)
//!   is never handed out.
//! - First come, first served: an ingress port/protocol already held by
//!   another service is refused to the service asking for it later, with a
//!   message saying who holds it.
//!
//! # Assumptions
//!
//! One writer (the leader's endpoints loop, one reconcile at a time)
//! allocates at a time, from a cache that shows its own earlier writes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

pub use ipnet::Ipv4Net;
use shoal_crd::{EndpointMode, EndpointPort, Endpoints, EndpointsSpec, PortProtocol, PublishMode, Service};

/// Where auto-assigned published ports come from (Docker's range).
pub const AUTO_PORTS: RangeInclusive<u16> = 30000..=32767;

/// The service CIDR VIPs come from unless configured: `10.96.0.0/16`.
pub fn default_service_cidr() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 16).expect("a valid prefix length")
}

/// Parses a `--service-cidr`: an IPv4 CIDR with room for at least one VIP
/// besides `.1`, not overlapping the task addresses' cluster CIDR.
pub fn parse_service_cidr(text: &str) -> Result<Ipv4Net, String> {
    let cidr =
        text.parse::<Ipv4Net>().map_err(|e| format!("{text:?} is not an IPv4 CIDR such as 10.96.0.0/16: {e}"))?.trunc();
    if cidr.prefix_len() > 29 {
        return Err(format!("service CIDR {cidr} is too small: use a /29 or larger"));
    }
    let tasks = crate::ipam::default_cluster_cidr();
    if cidr.contains(&tasks.network()) || tasks.contains(&cidr.network()) {
        return Err(format!("service CIDR {cidr} overlaps the task address range {tasks}"));
    }
    Ok(cidr)
}

/// A published port's identity on the routing mesh: (`tcp`|`udp`, port).
type PortKey = (&'static str, u16);

/// What other services hold: VIPs, and ingress ports by the service holding them.
#[derive(Debug, Default)]
pub struct Taken {
    vips: BTreeSet<Ipv4Addr>,
    ports: BTreeMap<PortKey, String>,
}

impl Taken {
    /// What every Endpoints object in `all` but `service`'s own holds.
    pub fn by_others<'a>(all: impl IntoIterator<Item = &'a Endpoints>, service: &str) -> Self {
        let mut taken = Taken::default();
        for endpoints in all.into_iter().filter(|e| e.metadata.name != service) {
            let spec = &endpoints.spec;
            taken.vips.extend(spec.vip.as_deref().and_then(|v| v.parse::<Ipv4Addr>().ok()));
            for port in spec.ports.iter().filter(|p| p.publish_mode == PublishMode::Ingress) {
                if let Some(published) = port.published {
                    taken
                        .ports
                        .entry((protocol(port.protocol), published))
                        .or_insert_with(|| endpoints.metadata.name.clone());
                }
            }
        }
        taken
    }
}

/// A service's VIP and ports, and what could not be given it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    pub vip: Option<Ipv4Addr>,
    /// The spec's ports in order, published ports filled in; refused ports left out.
    pub ports: Vec<EndpointPort>,
    /// Why something was refused, one sentence each.
    pub refused: Vec<String>,
}

/// Allocates `service`'s VIP and ports, keeping what `current` (its
/// Endpoints as last written, ignored when of an earlier service of the
/// same name) holds where still valid.
pub fn allocate(service: &Service, current: Option<&EndpointsSpec>, taken: &Taken, cidr: Ipv4Net) -> Allocation {
    let current = current.filter(|c| c.service_uid == service.metadata.uid);
    let mut allocation = Allocation::default();
    let dnsrr = service.spec.endpoint_mode == EndpointMode::Dnsrr;
    if !dnsrr {
        let kept = current.and_then(|c| c.vip.as_deref()).and_then(|v| v.parse::<Ipv4Addr>().ok());
        allocation.vip = kept
            .filter(|vip| usable(*vip, cidr) && !taken.vips.contains(vip))
            .or_else(|| lowest_free_vip(cidr, &taken.vips));
        if allocation.vip.is_none() {
            allocation.refused.push(format!("no virtual IP left in service CIDR {cidr}"));
        }
    }

    // Explicit ports claim first, so an auto-assigned one never takes a
    // port the same service names.
    let mut claimed: BTreeSet<PortKey> = BTreeSet::new();
    let mut slots: Vec<Option<EndpointPort>> = vec![None; service.spec.ports.len()];
    for (i, port) in service.spec.ports.iter().enumerate() {
        let mut out = EndpointPort {
            protocol: port.protocol,
            target: port.target,
            published: port.published,
            publish_mode: port.mode,
        };
        if port.mode == PublishMode::Host {
            slots[i] = Some(out);
            continue;
        }
        let label = port.published.map_or(format!("target port {}", port.target), |p| format!("port {p}"));
        if dnsrr {
            allocation.refused.push(format!(
                "{label}/{}: ingress-published ports need endpoint mode vip; dnsrr services can publish in host mode only",
                protocol(port.protocol)
            ));
            continue;
        }
        let Some(published) = port.published else { continue };
        let key = (protocol(port.protocol), published);
        if let Some(holder) = taken.ports.get(&key) {
            allocation
                .refused
                .push(format!("port {published}/{} is already published by service {holder}", protocol(port.protocol)));
        } else if !claimed.insert(key) {
            allocation
                .refused
                .push(format!("port {published}/{} is published twice by this service", protocol(port.protocol)));
        } else {
            out.published = Some(published);
            slots[i] = Some(out);
        }
    }
    if !dnsrr {
        assign_auto_ports(service, current, taken, &mut claimed, &mut slots, &mut allocation.refused);
    }
    allocation.ports = slots.into_iter().flatten().collect();
    allocation
}

/// Gives every ingress port without a published one a port from
/// [`AUTO_PORTS`]: the one it had, else the lowest free.
fn assign_auto_ports(
    service: &Service,
    current: Option<&EndpointsSpec>,
    taken: &Taken,
    claimed: &mut BTreeSet<PortKey>,
    slots: &mut [Option<EndpointPort>],
    refused: &mut Vec<String>,
) {
    let mut previous: Vec<&EndpointPort> = current.map(|c| c.ports.iter().collect()).unwrap_or_default();
    for (i, port) in service.spec.ports.iter().enumerate() {
        if port.mode != PublishMode::Ingress || port.published.is_some() {
            continue;
        }
        let free = |p: u16, claimed: &BTreeSet<PortKey>| {
            let key = (protocol(port.protocol), p);
            !taken.ports.contains_key(&key) && !claimed.contains(&key)
        };
        let had = previous.iter().position(|old| {
            old.protocol == port.protocol
                && old.target == port.target
                && old.publish_mode == PublishMode::Ingress
                && old.published.is_some_and(|p| AUTO_PORTS.contains(&p) && free(p, claimed))
        });
        let published = match had {
            Some(at) => previous.remove(at).published,
            None => AUTO_PORTS.clone().find(|p| free(*p, claimed)),
        };
        let Some(published) = published else {
            refused.push(format!(
                "target port {}/{}: no free port left in 30000-32767",
                port.target,
                protocol(port.protocol)
            ));
            continue;
        };
        claimed.insert((protocol(port.protocol), published));
        slots[i] = Some(EndpointPort {
            protocol: port.protocol,
            target: port.target,
            published: Some(published),
            publish_mode: port.mode,
        });
    }
}

/// `tcp` or `udp`.
pub fn protocol(protocol: PortProtocol) -> &'static str {
    match protocol {
        PortProtocol::Tcp => "tcp",
        PortProtocol::Udp => "udp",
    }
}

/// Whether `vip` may be handed out from `cidr`: inside it, and neither its
/// network, broadcast nor `.1` address.
fn usable(vip: Ipv4Addr, cidr: Ipv4Net) -> bool {
    let first = u32::from(cidr.network()) + 1;
    cidr.contains(&vip) && vip != cidr.network() && vip != cidr.broadcast() && u32::from(vip) != first
}

fn lowest_free_vip(cidr: Ipv4Net, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    cidr.hosts().find(|vip| usable(*vip, cidr) && !taken.contains(vip))
}

#[cfg(test)]
mod tests {
    use shoal_crd::{PortConfig, ServiceSpec};

    use super::*;

    fn service(name: &str, ports: &[(u16, Option<u16>, PublishMode)]) -> Service {
        let mut spec = ServiceSpec::from_image("demo");
        spec.ports = ports
            .iter()
            .map(|&(target, published, mode)| PortConfig { target, published, protocol: PortProtocol::Tcp, mode })
            .collect();
        let mut service = Service::new(name, spec);
        service.metadata.uid = format!("uid-{name}");
        service
    }

    /// `service`'s Endpoints as the loop would write them from `allocation`.
    fn endpoints(service: &Service, allocation: &Allocation) -> Endpoints {
        let spec = EndpointsSpec {
            service: service.metadata.name.clone(),
            service_uid: service.metadata.uid.clone(),
            endpoint_mode: service.spec.endpoint_mode,
            vip: allocation.vip.map(|v| v.to_string()),
            ports: allocation.ports.clone(),
            backends: vec![],
        };
        Endpoints::new(service.metadata.name.clone(), spec)
    }

    fn published(allocation: &Allocation) -> Vec<Option<u16>> {
        allocation.ports.iter().map(|p| p.published).collect()
    }

    const INGRESS: PublishMode = PublishMode::Ingress;

    #[test]
    fn the_first_service_gets_dot_two_and_the_lowest_auto_port() {
        let web = service("web", &[(80, None, INGRESS), (443, Some(8443), INGRESS)]);
        let a = allocate(&web, None, &Taken::default(), default_service_cidr());
        assert_eq!(a.vip, Some(Ipv4Addr::new(10, 96, 0, 2)), ".1 is never handed out");
        assert_eq!(published(&a), [Some(30000), Some(8443)]);
        assert!(a.refused.is_empty());
    }

    #[test]
    fn allocations_are_stable_and_skip_what_others_hold() {
        let cidr = default_service_cidr();
        let web = service("web", &[(80, None, INGRESS)]);
        let first = allocate(&web, None, &Taken::default(), cidr);
        let web_endpoints = endpoints(&web, &first);
        let api = service("api", &[(80, None, INGRESS)]);
        let other = allocate(&api, None, &Taken::by_others([&web_endpoints], "api"), cidr);
        assert_eq!(other.vip, Some(Ipv4Addr::new(10, 96, 0, 3)));
        assert_eq!(published(&other), [Some(30001)]);
        // Re-running for web, with api holding things too, moves nothing.
        let api_endpoints = endpoints(&api, &other);
        let again =
            allocate(&web, Some(&web_endpoints.spec), &Taken::by_others([&web_endpoints, &api_endpoints], "web"), cidr);
        assert_eq!(again, first);
    }

    #[test]
    fn a_recreated_service_does_not_inherit_and_a_deleted_ones_vip_is_free_again() {
        let cidr = default_service_cidr();
        let web = service("web", &[]);
        let mut stale = endpoints(&web, &Allocation { vip: Some(Ipv4Addr::new(10, 96, 0, 9)), ..Default::default() });
        stale.spec.service_uid = "an-earlier-web".into();
        assert_eq!(allocate(&web, Some(&stale.spec), &Taken::default(), cidr).vip, Some(Ipv4Addr::new(10, 96, 0, 2)));
        // Nothing else exists: the lowest address is free for a new service.
        let fresh = service("fresh", &[]);
        assert_eq!(allocate(&fresh, None, &Taken::by_others([], "fresh"), cidr).vip, Some(Ipv4Addr::new(10, 96, 0, 2)));
    }

    #[test]
    fn a_port_published_by_another_service_is_refused_with_its_name() {
        let cidr = default_service_cidr();
        let web = service("web", &[(80, Some(8080), INGRESS)]);
        let held = endpoints(&web, &allocate(&web, None, &Taken::default(), cidr));
        let api = service("api", &[(90, Some(8080), INGRESS), (91, Some(9090), INGRESS)]);
        let a = allocate(&api, None, &Taken::by_others([&held], "api"), cidr);
        assert_eq!(published(&a), [Some(9090)], "only the free port is kept");
        assert_eq!(a.refused, ["port 8080/tcp is already published by service web"]);
        // Another protocol is another port; host mode is not the mesh's.
        let mut udp = service("udp", &[(53, Some(8080), INGRESS), (80, Some(8080), PublishMode::Host)]);
        udp.spec.ports[0].protocol = PortProtocol::Udp;
        let u = allocate(&udp, None, &Taken::by_others([&held], "udp"), cidr);
        assert_eq!(published(&u), [Some(8080), Some(8080)]);
        assert!(u.refused.is_empty(), "{:?}", u.refused);
    }

    #[test]
    fn explicit_ports_win_over_auto_ones_and_duplicates_are_refused() {
        let svc = service("web", &[(80, None, INGRESS), (81, Some(30000), INGRESS), (82, Some(30000), INGRESS)]);
        let a = allocate(&svc, None, &Taken::default(), default_service_cidr());
        assert_eq!(published(&a), [Some(30001), Some(30000)]);
        assert_eq!(a.refused, ["port 30000/tcp is published twice by this service"]);
    }

    #[test]
    fn dnsrr_gets_no_vip_and_refuses_ingress_ports() {
        let mut svc = service("db", &[(5432, Some(5432), INGRESS), (5433, Some(5433), PublishMode::Host)]);
        svc.spec.endpoint_mode = EndpointMode::Dnsrr;
        let a = allocate(&svc, None, &Taken::default(), default_service_cidr());
        assert_eq!(a.vip, None);
        assert_eq!(published(&a), [Some(5433)], "host-mode ports stay");
        assert_eq!(a.refused.len(), 1);
        assert!(
            a.refused[0].starts_with("port 5432/tcp: ingress-published ports need endpoint mode vip"),
            "{:?}",
            a.refused
        );
    }

    #[test]
    fn a_full_cidr_or_port_range_says_so() {
        let cidr: Ipv4Net = "10.1.0.0/30".parse().unwrap(); // hosts .1 and .2; .1 is reserved
        let svc = service("a", &[]);
        assert_eq!(allocate(&svc, None, &Taken::default(), cidr).vip, Some(Ipv4Addr::new(10, 1, 0, 2)));
        let held = endpoints(&svc, &allocate(&svc, None, &Taken::default(), cidr));
        let b = allocate(&service("b", &[]), None, &Taken::by_others([&held], "b"), cidr);
        assert_eq!((b.vip, b.refused), (None, vec!["no virtual IP left in service CIDR 10.1.0.0/30".to_string()]));

        let taken =
            Taken { ports: AUTO_PORTS.map(|p| (("tcp", p), "big".to_string())).collect(), ..Default::default() };
        let c = allocate(&service("c", &[(80, None, INGRESS)]), None, &taken, default_service_cidr());
        assert!(c.ports.is_empty());
        assert_eq!(c.refused, ["target port 80/tcp: no free port left in 30000-32767"]);
    }

    #[test]
    fn service_cidrs_are_checked() {
        assert_eq!(parse_service_cidr("10.96.0.0/16"), Ok(default_service_cidr()));
        assert_eq!(parse_service_cidr("10.97.3.4/24").unwrap().to_string(), "10.97.3.0/24");
        assert!(parse_service_cidr("nonsense").is_err());
        assert!(parse_service_cidr("10.96.0.0/30").unwrap_err().contains("too small"));
        assert!(parse_service_cidr("10.0.0.0/8").unwrap_err().contains("overlaps"));
    }
}
