//! Service discovery as a task sees it: `shoal up` (store, controllers and
//! an agent giving each task a network namespace) runs a stack `shop` —
//! `web` (3 replicas, published on 8080), `api` (2, vip) and `db` (2,
//! dnsrr) — and a plain service `cache`; the demo's `/resolve` and `/fetch`
//! are called through the published port, so the lookups and connections
//! are made by a `web` task's own libc resolver through its own
//! `/etc/resolv.conf`.
//!
//! Checked: `<service>`, `<stack>_<service>` and a plain service's name →
//! the VIP `service inspect` shows; `tasks.<service>` → exactly the running
//! tasks' addresses; a dnsrr service → its tasks' addresses; a fetch of
//! `http://api/` reaches both `api` tasks through the VIP; a name that is
//! not a service is forwarded to the upstream server (a fake one in the
//! test, at `SHOAL_DNS_UPSTREAM`) and its answer comes back; queries over
//! UDP and TCP straight to the agent (case-insensitive, AAAA empty,
//! NXDOMAIN passed through); the task's `/etc/resolv.conf` names the agent
//! while the host's is unchanged.
//!
//! Everything runs inside a network namespace the test creates (`shoal up`
//! entered with `nsenter --net`): its bridge, nftables tables, DNS on port
//! 53 and the fake upstream never meet the host's or another test's. Needs
//! root (fails, never skips, otherwise). No traffic leaves the namespace.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;
use support::up::Up;
use support::{quiet, wait_until};

/// The store's port inside the test's namespace (nothing else listens there).
const STORE_PORT: u16 = 2379;
/// The port `web` is published on.
const PUBLISHED: u16 = 8080;
/// The fake upstream DNS server, on the namespace's loopback.
const UPSTREAM: &str = "127.0.0.1:5353";
/// A name only the fake upstream knows, and its address.
const UPSTREAM_NAME: &str = "upstream-only.test";
const UPSTREAM_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);

const STACK: &str = "version: \"3.8\"
services:
  web:
    image: shoal/demo:1.0
    ports: [\"8080:80\"]
    deploy:
      replicas: 3
  api:
    image: shoal/demo:1.0
    # A VIP carries the service's declared ports only (unlike Swarm's,
    # which balances every port): 80 is declared, published on a free port.
    ports: [\"80\"]
    deploy:
      replicas: 2
  db:
    image: shoal/demo:1.0
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
";

/// A network namespace of the test's; deleted on drop after every process in it is gone.
struct Netns(String);

impl Netns {
    fn create() -> Self {
        let name = format!("shoal-dns-test-{}", std::process::id());
        quiet(&["ip", "netns", "del", &name]);
        assert!(quiet(&["ip", "netns", "add", &name]), "ip netns add {name}");
        assert!(quiet(&["ip", "-n", &name, "link", "set", "lo", "up"]), "lo up in {name}");
        Netns(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                shoal_agent::sys::enter_netns(&self.path()).expect("entering the test's namespace");
                f()
            })
            .join()
            .expect("a thread in the test's namespace panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let pids = Command::new("ip").args(["netns", "pids", &self.0]).output().map(|o| o.stdout).unwrap_or_default();
        for pid in String::from_utf8_lossy(&pids).split_whitespace() {
            quiet(&["kill", "-9", pid]);
        }
        std::thread::sleep(Duration::from_millis(200));
        quiet(&["ip", "netns", "del", &self.0]);
    }
}

/// `shoal up` inside `netns`, with the fake upstream; the stack and the
/// plain service removed on drop.
fn start_up(netns: &Netns) -> Up {
    Up::builder()
        .dir_prefix("shoal-dns-test-")
        .in_netns(netns.path())
        .store_port(STORE_PORT)
        .log_filter("info,shoal_agent::dns=debug")
        .env("SHOAL_DNS_UPSTREAM", UPSTREAM)
        .failure_log_lines(80)
        .on_drop(&["stack", "rm", "shop"])
        .on_drop(&["service", "rm", "cache"])
        .start()
}

/// The addresses of the running tasks of `service`.
fn task_addresses(up: &Up, service: &str) -> BTreeSet<String> {
    up.running_tasks(service)
        .iter()
        .filter_map(|row| row.observation.as_ref()?.spec.addresses.first()?.split('/').next().map(str::to_string))
        .collect()
}

/// `service inspect`'s Endpoints part.
fn service_endpoint(up: &Up, service: &str) -> Value {
    let json: Value = serde_json::from_str(&up.shoal_ok(&["service", "inspect", service, "-o", "json"])).unwrap();
    json[0]["endpoint"].clone()
}

fn vip(up: &Up, service: &str) -> String {
    let endpoint = service_endpoint(up, service);
    endpoint["vip"].as_str().unwrap_or_else(|| panic!("{service} has no VIP: {endpoint}")).to_string()
}

/// `GET path` on the published port, from inside the namespace: (status, body).
fn get(netns: &Netns, path: &str) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    netns.run(move || {
        let addr = SocketAddr::from(([127, 0, 0, 1], PUBLISHED));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    })
}

/// What a `web` task's resolver gives for `name` (sorted), or its error.
fn resolve(netns: &Netns, name: &str) -> Result<Vec<String>, String> {
    let (status, body) = get(netns, &format!("/resolve?name={name}")).ok_or("no answer on the published port")?;
    let answer: Value = serde_json::from_str(&body).map_err(|e| format!("{status} {body}: {e}"))?;
    if status != 200 {
        return Err(format!("{status}: {answer}"));
    }
    let mut addresses: Vec<String> =
        answer["addresses"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(str::to_string)).collect();
    addresses.sort();
    Ok(addresses)
}

/// A fake upstream DNS server on `UPSTREAM` (UDP and TCP) inside the
/// namespace, answering with [`fake_answer`]. Runs until the test ends.
fn start_fake_upstream(netns: &Netns) {
    let (udp, tcp) = netns.run(|| {
        (UdpSocket::bind(UPSTREAM).expect("binding the fake upstream"), TcpListener::bind(UPSTREAM).expect("binding"))
    });
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buffer) {
            if let Some(answer) = fake_answer(&buffer[..n]) {
                let _ = udp.send_to(&answer, from);
            }
        }
    });
    std::thread::spawn(move || {
        for mut stream in tcp.incoming().flatten() {
            let mut length = [0; 2];
            if stream.read_exact(&mut length).is_err() {
                continue;
            }
            let mut query = vec![0; u16::from_be_bytes(length) as usize];
            if stream.read_exact(&mut query).is_err() {
                continue;
            }
            if let Some(answer) = fake_answer(&query) {
                let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&answer);
                let _ = stream.write_all(&framed);
            }
        }
    });
}

/// The fake upstream's answer: `A` for [`UPSTREAM_NAME`] is
/// [`UPSTREAM_ADDRESS`], any other type of it an empty answer, every other
/// name NXDOMAIN.
fn fake_answer(query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let question = query.queries.first()?;
    let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.add_queries(query.queries.clone());
    if question.name.to_ascii().trim_end_matches('.') == UPSTREAM_NAME {
        if question.query_type == RecordType::A {
            answer.add_answer(Record::from_rdata(question.name.clone(), 30, RData::A(UPSTREAM_ADDRESS.into())));
        }
    } else {
        answer.metadata.response_code = ResponseCode::NXDomain;
    }
    answer.to_vec().ok()
}

/// One query straight to the agent's DNS at `server`, over UDP or TCP.
fn ask(netns: &Netns, server: SocketAddr, name: &str, kind: RecordType, tcp: bool) -> Message {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    let bytes = query.to_vec().unwrap();
    let answer = netns.run(move || -> std::io::Result<Vec<u8>> {
        if tcp {
            let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(3))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            stream.write_all(&framed)?;
            let mut length = [0; 2];
            stream.read_exact(&mut length)?;
            let mut answer = vec![0; u16::from_be_bytes(length) as usize];
            stream.read_exact(&mut answer)?;
            Ok(answer)
        } else {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(Duration::from_secs(5)))?;
            socket.send_to(&bytes, server)?;
            let mut buffer = vec![0; 4096];
            let n = socket.recv(&mut buffer)?;
            buffer.truncate(n);
            Ok(buffer)
        }
    });
    let answer = answer.unwrap_or_else(|e| panic!("asking {server} for {name} {kind} (tcp: {tcp}): {e}"));
    let answer = Message::from_vec(&answer).unwrap();
    assert_eq!(answer.metadata.id, query.metadata.id);
    answer
}

fn a_records(message: &Message) -> Vec<String> {
    let mut addresses: Vec<String> = message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    addresses.sort();
    addresses
}

fn sorted(set: &BTreeSet<String>) -> Vec<String> {
    set.iter().cloned().collect()
}

#[test]
fn tasks_find_services_by_name_and_everything_else_is_forwarded() {
    assert!(shoal_agent::sys::is_root(), "this test needs root for network namespaces and nftables (CI runs as root)");
    let host_resolv_conf = std::fs::read("/etc/resolv.conf").ok();
    let netns = Netns::create();
    start_fake_upstream(&netns);
    let up = start_up(&netns);
    up.wait_ready(Duration::from_secs(20));
    let stack_file = up.path().join("shop.yml");
    std::fs::write(&stack_file, STACK).unwrap();
    up.shoal_ok(&["stack", "deploy", "-c", stack_file.to_str().unwrap(), "shop"]);
    up.shoal_ok(&["service", "create", "--name", "cache", "shoal/demo:1.0"]);

    // Every task running and in its service's backends, and the published port answering.
    let want = [("shop_web", 3), ("shop_api", 2), ("shop_db", 2), ("cache", 1)];
    let settled = wait_until(Duration::from_secs(90), || {
        want.iter().all(|(service, n)| {
            task_addresses(&up, service).len() == *n
                && service_endpoint(&up, service)["backends"].as_array().is_some_and(|b| b.len() == *n)
        }) && get(&netns, "/").is_some_and(|(status, _)| status == 200)
    });
    assert!(settled, "the services did not settle:\n{}\n{}", up.shoal_ok(&["service", "ls"]), up.log_excerpt());

    let (web_vip, api_vip, cache_vip) = (vip(&up, "shop_web"), vip(&up, "shop_api"), vip(&up, "cache"));
    let resolved = |name: &str| {
        resolve(&netns, name).unwrap_or_else(|e| panic!("resolving {name} in a task: {e}\n{}", up.log_excerpt()))
    };

    // <service> and <stack>_<service> → the VIP (any case, trailing dot or not).
    assert_eq!(resolved("api"), vec![api_vip.clone()], "api");
    assert_eq!(resolved("shop_api"), vec![api_vip.clone()], "shop_api");
    assert_eq!(resolved("Shop_API."), vec![api_vip.clone()], "Shop_API.");
    assert_eq!(resolved("web"), vec![web_vip.clone()], "web (the asking task's own service)");
    assert_eq!(resolved("cache"), vec![cache_vip], "cache (a service of no stack)");
    // tasks.<service> → exactly the running tasks; dnsrr → the tasks too.
    assert_eq!(resolved("tasks.api"), sorted(&task_addresses(&up, "shop_api")), "tasks.api");
    assert_eq!(resolved("tasks.shop_web"), sorted(&task_addresses(&up, "shop_web")), "tasks.shop_web");
    let db_tasks = sorted(&task_addresses(&up, "shop_db"));
    assert_eq!(resolved("db"), db_tasks, "db (dnsrr)");
    assert_eq!(resolved("tasks.db"), db_tasks, "tasks.db");
    // Not a service: forwarded to the upstream, whose answer comes back.
    assert_eq!(resolved(UPSTREAM_NAME), vec![UPSTREAM_ADDRESS.to_string()], "{UPSTREAM_NAME} via the upstream");
    assert!(resolve(&netns, "nothing-here.test").is_err(), "a name nobody knows resolved");

    // A connection from a task to a service VIP balances over that service's tasks.
    let api_tasks: BTreeSet<String> = up.running_tasks("shop_api").iter().map(|r| r.id().to_string()).collect();
    let mut reached = BTreeSet::new();
    for _ in 0..30 {
        let (status, body) = get(&netns, "/fetch?url=http://api/").expect("no answer to /fetch");
        assert_eq!(status, 200, "fetching http://api/ from a web task: {body}");
        let whoami: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        reached.insert(whoami["task"].as_str().unwrap_or_default().to_string());
        if reached.len() == api_tasks.len() {
            break;
        }
    }
    assert_eq!(reached, api_tasks, "the api tasks reached through http://api/");

    // Straight to the agent: UDP and TCP, AAAA empty, NXDOMAIN passed through.
    // The gateway: the first address of the task's subnet.
    let cidr = up.running_tasks("shop_web")[0].observation.as_ref().unwrap().spec.addresses[0].clone();
    let (address, prefix) = cidr.split_once('/').unwrap();
    let mask = u32::MAX << (32 - prefix.parse::<u32>().unwrap());
    let gateway = Ipv4Addr::from(u32::from(address.parse::<Ipv4Addr>().unwrap()) & mask | 1);
    let server = SocketAddr::from((gateway, 53));
    let web_tasks = sorted(&task_addresses(&up, "shop_web"));
    assert_eq!(a_records(&ask(&netns, server, "tasks.shop_web.", RecordType::A, true)), web_tasks, "over TCP");
    let udp = ask(&netns, server, "SHOP_API", RecordType::A, false);
    assert!(udp.metadata.authoritative && udp.answers.iter().all(|r| r.ttl <= 5), "{udp:?}");
    assert_eq!(a_records(&udp), vec![api_vip], "over UDP");
    let aaaa = ask(&netns, server, "api", RecordType::AAAA, false);
    assert_eq!((aaaa.metadata.response_code, aaaa.answers.len()), (ResponseCode::NoError, 0), "AAAA: {aaaa:?}");
    let forwarded = ask(&netns, server, UPSTREAM_NAME, RecordType::A, false);
    assert_eq!(a_records(&forwarded), vec![UPSTREAM_ADDRESS.to_string()], "forwarded over UDP");
    let forwarded = ask(&netns, server, UPSTREAM_NAME, RecordType::A, true);
    assert_eq!(a_records(&forwarded), vec![UPSTREAM_ADDRESS.to_string()], "forwarded over TCP");
    let unknown = ask(&netns, server, "tasks.nothing", RecordType::A, false);
    assert_eq!(unknown.metadata.response_code, ResponseCode::NXDomain, "the upstream's NXDOMAIN: {unknown:?}");

    // The task's resolv.conf names the agent; the host's is untouched.
    let web = &up.running_tasks("shop_web")[0];
    let path = format!("/proc/{}/root/etc/resolv.conf", web.pid().unwrap());
    let in_task = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(in_task.contains(&format!("nameserver {gateway}\n")), "{path}:\n{in_task}");
    assert!(in_task.contains("options ndots:0"), "{path}:\n{in_task}");
    assert_eq!(in_task.matches("nameserver").count(), 1, "{path}:\n{in_task}");
    assert_eq!(std::fs::read("/etc/resolv.conf").ok(), host_resolv_conf, "the host's /etc/resolv.conf changed");
}
