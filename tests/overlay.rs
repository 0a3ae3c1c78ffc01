//! The VXLAN overlay's proof, on real kernel networking: two nodes (real
//! `shoal agent`s in network namespaces of their own, every task in a
//! namespace of its own on its node's bridge) on two different segments
//! joined by a router — no shared L2, so `ip route get` from one node to
//! the other names a gateway and a plain host route cannot reach the other
//! node's tasks. The overlay must, and the test checks what a user sees:
//!
//! - the published port of the edge node (which runs no replica of the
//!   service) is answered by the app node's tasks, for a client on a third
//!   segment;
//! - a task on the edge node fetching the service by name and by VIP gets
//!   the app node's tasks' answers;
//! - `ip -d link show shoal-vxlan` on the edge node shows the VXLAN device
//!   and the app node's subnet is routed through it;
//! - when the app node's agent dies (its node goes down) the overlay route
//!   and device go; when it is back, so is the overlay; when an agent stops
//!   cleanly, its device is removed.
//!
//! Root only (fails, never skips, otherwise), as CI runs.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::cluster::Cluster;
use support::Backend;

const SERVICE: &str = "web";
const PUBLISHED: u16 = 8080;
/// The edge node's host-mode port to its own task, which fetches for us.
const PROBER_PORT: u16 = 9090;
/// Time for each step of the scenario to converge.
const STEP: Duration = Duration::from_secs(90);
/// What `ip -d link show` says of the device: VXLAN, Shoal's VNI and port.
const VXLAN_DETAILS: &str = "vxlan id 7340";

/// `ip ARGS…` in network namespace `netns`: stdout, or None when it failed.
fn ip_in(netns: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("ip").args(["-n", netns]).args(args).output().expect("running ip");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The body of `GET http://ADDR/PATH`, made from network namespace
/// `netns` (a thread of this process enters it), when the answer is 200.
fn get(netns: &str, addr: SocketAddr, path: &str) -> Result<String, String> {
    get_padded(netns, addr, path, 0)
}

/// [`get`] with a header of `padding` bytes: a request of several
/// full-size packets, larger than the overlay's MTU.
fn get_padded(netns: &str, addr: SocketAddr, path: &str, padding: usize) -> Result<String, String> {
    let (netns, path, pad) = (format!("/run/netns/{netns}"), path.to_string(), "x".repeat(padding));
    std::thread::spawn(move || -> Result<String, String> {
        shoal_agent::sys::enter_netns(std::path::Path::new(&netns)).map_err(|e| format!("entering {netns}: {e}"))?;
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nX-Padding: {pad}\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut response = String::new();
        stream.read_to_string(&mut response).map_err(|e| format!("read from {addr}: {e}"))?;
        let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP answer: {response:?}"))?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("{addr}{path}: {head}\n{body}"));
        }
        Ok(body.to_string())
    })
    .join()
    .expect("the GET thread panicked")
}

/// The demo's whoami answer: (node, task) it names.
fn whoami(body: &str) -> (String, String) {
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not the demo's JSON ({e}): {body}"));
    (json["node"].as_str().unwrap_or_default().into(), json["task"].as_str().unwrap_or_default().into())
}

/// The service's Endpoints as `service inspect` shows them.
fn endpoint(cluster: &Cluster, service: &str) -> Value {
    let inspected: Value = serde_json::from_str(&cluster.shoal_ok(&["service", "inspect", service])).unwrap();
    inspected[0]["endpoint"].clone()
}

/// Node `name`'s task subnet, once the controllers assigned one.
fn task_subnet(cluster: &Cluster, name: &str) -> Option<String> {
    let nodes = cluster.nodes();
    let node = nodes.iter().find(|n| n.metadata.name == name)?;
    node.status.as_ref()?.task_subnet.clone()
}

/// True when `netns` routes `subnet` through the overlay device.
fn routed_over_overlay(netns: &str, subnet: &str) -> bool {
    ip_in(netns, &["route", "show", subnet]).is_some_and(|r| r.contains("dev shoal-vxlan"))
}

/// True when `netns` has no overlay device and no route through one.
fn overlay_gone(netns: &str) -> bool {
    ip_in(netns, &["link", "show", "shoal-vxlan"]).is_none()
        && ip_in(netns, &["route", "show"]).is_some_and(|r| !r.contains("shoal-vxlan"))
}

#[test]
fn nodes_behind_a_router_reach_each_others_tasks_over_the_vxlan_overlay() {
    assert!(shoal_agent::sys::is_root(), "this test needs root: it builds network namespaces (CI runs as root)");
    let mut cluster = Cluster::start_routed(Backend::Embedded, &["role=edge", "role=app"]);
    let (edge, app) = (cluster.agent_name(0).to_string(), cluster.agent_name(1).to_string());
    let edge_ns = cluster.agent_netns(0).expect("agents run in namespaces as root").to_string();
    let app_ns = cluster.agent_netns(1).expect("agents run in namespaces as root").to_string();
    let (edge_addr, app_addr) = (cluster.agent_address(0), cluster.agent_address(1));
    let path = ip_in(&edge_ns, &["-o", "route", "get", &app_addr.to_string()]).unwrap_or_default();
    assert!(path.contains(" via "), "the nodes must not share a segment: `ip route get {app_addr}` on {edge}: {path}");
    let (client, _) = cluster.add_client();

    cluster.shoal_ok(&[
        "service",
        "create",
        "--name",
        SERVICE,
        "--replicas",
        "2",
        "--constraint",
        "node.labels.role==app",
        "-p",
        &format!("{PUBLISHED}:80"),
        "shoal/demo:1.0",
    ]);
    let prober_port = format!("published={PROBER_PORT},target=80,mode=host");
    let prober = ["service", "create", "--name", "prober", "--constraint", "node.labels.role==edge", "-p"];
    cluster.shoal_ok(&[&prober[..], &[&prober_port, "shoal/demo:1.0"]].concat());
    let took = cluster.wait_until(STEP, "2 web tasks on the app node and the prober on the edge node", |c| {
        let web = c.running(SERVICE);
        web.len() == 2
            && web.iter().all(|t| t.node() == Some(&app))
            && endpoint(c, SERVICE)["backends"].as_array().map_or(0, Vec::len) == 2
            && c.running("prober").iter().any(|t| t.node() == Some(&edge))
    });
    eprintln!("services running: {took:.1?}");
    let web_tasks: BTreeSet<String> = cluster.running(SERVICE).iter().map(|t| t.id().to_string()).collect();

    let subnet = task_subnet(&cluster, &app).expect("the app node has a task subnet");
    let took = cluster.wait_until(STEP, "the app node's subnet routed over the overlay on the edge node", |_| {
        routed_over_overlay(&edge_ns, &subnet)
    });
    eprintln!("overlay route on the edge node: {took:.1?}");
    let link = ip_in(&edge_ns, &["-d", "link", "show", "shoal-vxlan"]).unwrap_or_default();
    assert!(
        link.contains(VXLAN_DETAILS) && link.contains("dstport 4789") && link.contains(&format!("local {edge_addr}")),
        "`ip -d link show shoal-vxlan` on {edge}: {link}"
    );
    assert!(ip_in(&app_ns, &["-d", "link", "show", "shoal-vxlan"]).is_some_and(|l| l.contains(VXLAN_DETAILS)));

    the_edge_nodes_published_port_is_answered_by_the_app_nodes_tasks(&cluster, &client, edge_addr, &app, &web_tasks);
    large_requests_cross_the_overlay_without_path_mtu_discovery(&client, &edge_ns, edge_addr, &app);
    a_task_on_the_edge_node_reaches_the_service_by_name_and_vip(&cluster, &client, edge_addr, &app);

    cluster.kill_agent(1);
    let took = cluster
        .wait_until(STEP, "the overlay gone from the edge node once the app node is down", |_| overlay_gone(&edge_ns));
    eprintln!("overlay removed after the app node's agent died: {took:.1?}");

    cluster.restart_agent(1);
    let took =
        cluster.wait_until(STEP, "the overlay back on the edge node", |_| routed_over_overlay(&edge_ns, &subnet));
    eprintln!("overlay rebuilt once the app node is back: {took:.1?}");
    let url: SocketAddr = (edge_addr, PUBLISHED).into();
    let took = cluster.wait_until(STEP, "the published port answered by the app node again", |_| {
        get(&client, url, "/").is_ok_and(|body| whoami(&body).0 == app)
    });
    eprintln!("published port answering again: {took:.1?}");

    cluster.stop_agent(0);
    assert!(overlay_gone(&edge_ns), "a cleanly stopped agent leaves no overlay device or route behind");
    let took =
        cluster.wait_until(STEP, "the app node's overlay gone once the edge node is down", |_| overlay_gone(&app_ns));
    eprintln!("overlay removed from the app node after the edge agent stopped: {took:.1?}");
}

/// A client on a third segment, fresh connections to the edge node's
/// published port: every answer comes from a `web` task on the app node,
/// and both replicas answer.
fn the_edge_nodes_published_port_is_answered_by_the_app_nodes_tasks(
    cluster: &Cluster,
    client: &str,
    edge: Ipv4Addr,
    app: &str,
    web_tasks: &BTreeSet<String>,
) {
    let url: SocketAddr = (edge, PUBLISHED).into();
    let took = cluster
        .wait_until(Duration::from_secs(30), "the edge node's published port", |_| get(client, url, "/").is_ok());
    eprintln!("published port answering on the edge node: {took:.1?}");
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let body = get(client, url, "/").unwrap_or_else(|e| panic!("GET http://{url}/ from {client}: {e}"));
        let (node, task) = whoami(&body);
        assert_eq!(node, app, "answered by the app node's tasks: {body}");
        assert!(web_tasks.contains(&task), "answered by a web task ({web_tasks:?}): {body}");
        seen.insert(task);
        if seen.len() == web_tasks.len() {
            break;
        }
    }
    assert_eq!(&seen, web_tasks, "both replicas answer through the edge node's published port");
}

/// A 6 kB request (full-size segments, larger than the overlay's MTU) to
/// the edge node's published port while the edge node drops the ICMP
/// "fragmentation needed" it would send back (as networks that filter ICMP
/// do): only the MSS clamp of the overlay keeps the segments small enough.
fn large_requests_cross_the_overlay_without_path_mtu_discovery(client: &str, edge_ns: &str, edge: Ipv4Addr, app: &str) {
    let url: SocketAddr = (edge, PUBLISHED).into();
    let clamp =
        Command::new("ip").args(["netns", "exec", edge_ns, "nft", "list", "table", "ip", "shoal-overlay"]).output();
    let clamp = clamp.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    assert!(clamp.contains("maxseg size set rt mtu"), "the edge node clamps the MSS into the overlay: {clamp}");
    let no_pmtu = "table ip overlay-test-no-pmtu {\nchain output {\ntype filter hook output priority 0;\n\
                   icmp type destination-unreachable icmp code frag-needed drop\n}\n}";
    let status = Command::new("ip").args(["netns", "exec", edge_ns, "nft", no_pmtu]).status().expect("running nft");
    assert!(status.success(), "dropping ICMP fragmentation-needed on the edge node");
    let answer = get_padded(client, url, "/", 6000);
    let _ = Command::new("ip")
        .args(["netns", "exec", edge_ns, "nft", "delete", "table", "ip", "overlay-test-no-pmtu"])
        .status();
    let body = answer.unwrap_or_else(|e| panic!("a 6 kB request to http://{url}/ without path-MTU discovery: {e}"));
    assert_eq!(whoami(&body).0, app, "a 6 kB request answered by the app node's tasks: {body}");
}

/// The prober task on the edge node fetches `http://web/` (the agent's DNS,
/// then the VIP) and the VIP itself: the app node's tasks answer.
fn a_task_on_the_edge_node_reaches_the_service_by_name_and_vip(
    cluster: &Cluster,
    client: &str,
    edge: Ipv4Addr,
    app: &str,
) {
    let prober: SocketAddr = (edge, PROBER_PORT).into();
    let vip = endpoint(cluster, SERVICE)["vip"].as_str().expect("the web service has a VIP").to_string();
    for target in [SERVICE, vip.as_str()] {
        let path = format!("/fetch?url=http://{target}/");
        let mut last = String::new();
        let took = cluster.wait_until(
            Duration::from_secs(30),
            &format!("the prober fetching http://{target}/"),
            |_| match get(client, prober, &path) {
                Ok(body) => {
                    last = body;
                    true
                }
                Err(err) => {
                    last = err;
                    false
                }
            },
        );
        let (node, task) = whoami(&last);
        assert_eq!(node, app, "the prober on the edge node reached a web task on the app node: {last}");
        eprintln!("edge task fetched http://{target}/ from {task} on {node}: {took:.1?}");
    }
}
