//! Golden text of the ruleset and of incremental diffs.

use super::*;
use shoal_crd::{Backend, EndpointMode, EndpointPort, EndpointsSpec};

fn local() -> LocalNode {
    LocalNode { name: "n1".into(), subnet: Some("10.200.1.0/24".parse().unwrap()) }
}

fn port(target: u16, published: Option<u16>, publish_mode: PublishMode) -> EndpointPort {
    EndpointPort { protocol: PortProtocol::Tcp, target, published, publish_mode }
}

/// An Endpoints object with `backends` as (node, address).
fn service(name: &str, vip: Option<&str>, ports: Vec<EndpointPort>, backends: &[(&str, &str)]) -> Arc<Endpoints> {
    let backends = backends
        .iter()
        .enumerate()
        .map(|(i, (node, address))| Backend {
            task: format!("{name}-{i}"),
            node: node.to_string(),
            address: address.to_string(),
            ports: Default::default(),
        })
        .collect();
    let spec = EndpointsSpec { service: name.into(), vip: vip.map(Into::into), ports, backends, ..Default::default() };
    Arc::new(Endpoints::new(name, spec))
}

fn web(backends: &[(&str, &str)]) -> Arc<Endpoints> {
    service("web", Some("10.96.0.10"), vec![port(80, Some(31080), PublishMode::Ingress)], backends)
}

const WEB_TWO_BACKENDS: &str = "\
table ip shoal
delete table ip shoal
table ip shoal {
\tmap service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }
\tmap service-nodeports { type inet_proto . inet_service : verdict; }
\tmap service-vips { type ipv4_addr : verdict; }
}
add chain ip shoal input-guard { type filter hook input priority filter; policy accept; }
add chain ip shoal mark-for-masquerade
add chain ip shoal nodeports
add chain ip shoal np-web-tcp-31080
add chain ip shoal output { type nat hook output priority -100; policy accept; }
add chain ip shoal postrouting { type nat hook postrouting priority srcnat; policy accept; }
add chain ip shoal prerouting { type nat hook prerouting priority dstnat; policy accept; }
add chain ip shoal services
add chain ip shoal svc-web-any
add chain ip shoal svc-web-tcp-80
add rule ip shoal input-guard iifname != \"lo\" ip daddr 127.0.0.0/8 ct status ! dnat drop
add rule ip shoal mark-for-masquerade meta mark set meta mark | 0x00100000
add rule ip shoal nodeports meta l4proto . th dport vmap @service-nodeports
add rule ip shoal np-web-tcp-31080 jump mark-for-masquerade
add rule ip shoal np-web-tcp-31080 goto svc-web-tcp-80
add rule ip shoal output jump services
add rule ip shoal postrouting meta mark & 0x00100000 == 0x00100000 masquerade
add rule ip shoal prerouting jump services
add rule ip shoal services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip shoal services ip daddr vmap @service-vips
add rule ip shoal services fib daddr type local jump nodeports
add rule ip shoal svc-web-any ip saddr 10.200.1.0/24 jump mark-for-masquerade
add rule ip shoal svc-web-any dnat to numgen random mod 2 map { 0 : 10.200.1.2, 1 : 10.200.2.2 }
add rule ip shoal svc-web-tcp-80 ip saddr 10.200.1.0/24 jump mark-for-masquerade
add rule ip shoal svc-web-tcp-80 meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 10.200.1.2 . 80, 1 : 10.200.2.2 . 80 }
add element ip shoal service-ips { 10.96.0.10 . tcp . 80 : goto svc-web-tcp-80 }
add element ip shoal service-nodeports { tcp . 31080 : goto np-web-tcp-31080 }
add element ip shoal service-vips { 10.96.0.10 : goto svc-web-any }
";

#[test]
fn a_service_with_a_vip_and_an_ingress_port_reads_as_golden_text() {
    let set = Ruleset::desired(&[web(&[("n1", "10.200.1.2"), ("n2", "10.200.2.2")])], &local());
    assert_eq!(set.full("shoal"), WEB_TWO_BACKENDS);
}

#[test]
fn removing_a_backend_rewrites_only_that_services_chains() {
    let db = service("db", Some("10.96.0.11"), vec![port(5432, None, PublishMode::Ingress)], &[("n2", "10.200.2.9")]);
    let before = Ruleset::desired(&[web(&[("n1", "10.200.1.2"), ("n2", "10.200.2.2")]), db.clone()], &local());
    let after = Ruleset::desired(&[web(&[("n1", "10.200.1.2")]), db], &local());
    assert_eq!(
        before.diff(&after, "shoal"),
        "\
flush chain ip shoal svc-web-any
add rule ip shoal svc-web-any ip saddr 10.200.1.0/24 jump mark-for-masquerade
add rule ip shoal svc-web-any dnat to numgen random mod 1 map { 0 : 10.200.1.2 }
flush chain ip shoal svc-web-tcp-80
add rule ip shoal svc-web-tcp-80 ip saddr 10.200.1.0/24 jump mark-for-masquerade
add rule ip shoal svc-web-tcp-80 meta l4proto tcp dnat ip addr . port to numgen random mod 1 map { 0 : 10.200.1.2 . 80 }
"
    );
    assert_eq!(after.diff(&after, "shoal"), "", "no change, no transaction");
}

#[test]
fn adding_and_deleting_services_touches_their_elements_only() {
    let before = Ruleset::desired(&[web(&[("n1", "10.200.1.2")])], &local());
    let cache = service(
        "cache",
        Some("10.96.0.12"),
        vec![EndpointPort {
            protocol: PortProtocol::Udp,
            target: 11211,
            published: None,
            publish_mode: PublishMode::Ingress,
        }],
        &[],
    );
    let after = Ruleset::desired(&[cache], &local());
    let diff = before.diff(&after, "shoal");
    assert_eq!(
        diff,
        "\
add chain ip shoal svc-cache-any
add chain ip shoal svc-cache-udp-11211
add rule ip shoal svc-cache-any reject
add rule ip shoal svc-cache-udp-11211 reject
delete element ip shoal service-ips { 10.96.0.10 . tcp . 80 }
add element ip shoal service-ips { 10.96.0.12 . udp . 11211 : goto svc-cache-udp-11211 }
delete element ip shoal service-nodeports { tcp . 31080 }
delete element ip shoal service-vips { 10.96.0.10 }
add element ip shoal service-vips { 10.96.0.12 : goto svc-cache-any }
flush chain ip shoal np-web-tcp-31080
delete chain ip shoal np-web-tcp-31080
flush chain ip shoal svc-web-any
delete chain ip shoal svc-web-any
flush chain ip shoal svc-web-tcp-80
delete chain ip shoal svc-web-tcp-80
"
    );
}

#[test]
fn host_mode_ports_answer_only_on_nodes_running_a_backend() {
    let host =
        |backends: &[(&str, &str)]| service("edge", None, vec![port(80, Some(8080), PublishMode::Host)], backends);
    let here = Ruleset::desired(&[host(&[("n1", "10.200.1.5"), ("n2", "10.200.2.5")])], &local());
    assert_eq!(
        here.chains["np-edge-tcp-8080"].rules,
        [
            "jump mark-for-masquerade",
            "ip saddr 10.200.1.0/24 jump mark-for-masquerade",
            "meta l4proto tcp dnat ip addr . port to numgen random mod 1 map { 0 : 10.200.1.5 . 80 }"
        ],
        "this node's backend only"
    );
    assert_eq!(here.maps[SERVICE_NODEPORTS]["tcp . 8080"], "goto np-edge-tcp-8080");
    assert!(
        here.maps[SERVICE_IPS].is_empty() && !here.chains.contains_key("svc-edge-tcp-80"),
        "no VIP, no service chain"
    );
    let elsewhere = Ruleset::desired(&[host(&[("n2", "10.200.2.5")])], &local());
    assert!(elsewhere.maps[SERVICE_NODEPORTS].is_empty() && !elsewhere.chains.contains_key("np-edge-tcp-8080"));
}

#[test]
fn dnsrr_services_get_no_vip_and_odd_names_are_hashed() {
    let mut dnsrr = (*service(
        "my.svc",
        Some("10.96.0.13"),
        vec![port(80, None, PublishMode::Ingress)],
        &[("n1", "10.200.1.3"), ("n1", "not-an-ip")],
    ))
    .clone();
    dnsrr.spec.endpoint_mode = EndpointMode::Dnsrr;
    let set = Ruleset::desired(&[Arc::new(dnsrr)], &local());
    assert!(set.maps[SERVICE_IPS].is_empty());
    let names: Vec<&String> = set.chains.keys().filter(|n| n.starts_with("svc-")).collect();
    assert_eq!(names.len(), 1, "one service port, no VIP chain: {names:?}");
    assert!(names[0].starts_with("svc-h") && !names[0].contains("my.svc"), "{names:?}");
    let rules = &set.chains[names[0]].rules;
    assert!(
        rules.last().unwrap().contains("mod 1 map { 0 : 10.200.1.3 . 80 }"),
        "the non-IPv4 backend is left out: {rules:?}"
    );
}

#[test]
fn host_network_tasks_on_one_node_are_told_apart_by_their_host_ports() {
    let mut e = (*web(&[("n2", "192.0.2.2"), ("n2", "192.0.2.2")])).clone();
    e.spec.backends[0].ports = [(80, 41000)].into();
    e.spec.backends[1].ports = [(80, 41001)].into();
    let set = Ruleset::desired(&[Arc::new(e)], &local());
    assert_eq!(
        set.chains["svc-web-tcp-80"].rules.last().unwrap(),
        "meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 192.0.2.2 . 41000, 1 : 192.0.2.2 . 41001 }"
    );
    let any = &set.chains["svc-web-any"].rules;
    assert_eq!(any, &["reject"], "mapped tasks take declared ports only: {any:?}");
}
