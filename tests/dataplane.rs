//! The nftables data plane with real kernel networking and real HTTP,
//! without the endpoints controller: a hand-written Endpoints fixture (see
//! [`fixture_endpoints`]) in a real store points a VIP and a published port
//! at two demo tasks a real `shoal agent` runs, each in a network namespace
//! of its own on the agent's bridge.
//!
//! Checked: the VIP balances over both tasks from the host and from inside
//! a task's namespace; the published port answers on 127.0.0.1 and on the
//! node's address; a backend removed from the Endpoints stops getting
//! requests within a second, and one with none refuses connections at
//! once; `nft list table ip shoal` shows the
//! per-service chains and backend maps; the agent records the revision it programmed; a
//! graceful agent stop removes the table.
//!
//! As root only (fails, never skips, otherwise). The agent's processes, its
//! tasks, their namespaces, the bridge and the `shoal` table are removed by
//! Drop guards, also when the test fails.

mod support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::quiet;

use shoal_agent::dataplane::sync::programmed_key;
use shoal_agent::network::task::{netns_name, veth_name};
use shoal_crd::{
    Backend, EndpointMode, EndpointPort, Endpoints, EndpointsSpec, PortProtocol, PublishMode, ServiceSpec, Task,
    TaskObservation, TaskSpec, TaskState,
};
use shoal_store::client::{Store, StoreConfig};
use shoal_store::proto::RangeRequest;
use support::StoreUnderTest;

const BRIDGE: &str = "shdp1";
const SUBNET: &str = "10.201.41.0/24";
const VIP: &str = "10.96.200.1";
const PUBLISHED: u16 = 31080;
const NODE: &str = "node-dp";

/// Deletes what the test created in the kernel: task namespaces and veths,
/// the bridge, its masquerade table and the `shoal` table.
struct NetworkGuard {
    tasks: Vec<String>,
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        for id in &self.tasks {
            // Whatever still runs in the namespace (the task) goes first.
            let pids = Command::new("ip")
                .args(["netns", "pids", &netns_name(id)])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids.split_whitespace() {
                quiet(&["kill", "-9", pid]);
            }
            quiet(&["ip", "netns", "del", &netns_name(id)]);
            quiet(&["ip", "link", "del", &veth_name(id)]);
        }
        quiet(&["ip", "link", "del", BRIDGE]);
        quiet(&["nft", "delete", "table", "ip", &format!("shoal-agent-{BRIDGE}")]);
        quiet(&["nft", "delete", "table", "ip", "shoal"]);
    }
}

/// A `shoal agent` process; SIGKILLed with its shims on drop.
struct Agent {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start(store: &StoreUnderTest, advertise: Ipv4Addr) -> Self {
        let dir = tempfile::Builder::new().prefix("shoal-dataplane-test-").tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args([
                "agent",
                "--name",
                NODE,
                "--advertise-addr",
                &advertise.to_string(),
                "--etcd-endpoints",
                &store.endpoint(),
            ])
            .args(["--network", "namespace", "--bridge", BRIDGE, "--task-subnet", SUBNET, "--dataplane", "nftables"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting shoal agent");
        Self { child: Some(child), dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// SIGTERM and wait: the graceful shutdown that removes the data plane.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            quiet(&["kill", "-TERM", &child.id().to_string()]);
            let _ = child.wait();
        }
    }

    fn shim_pids(&self) -> Vec<String> {
        let tasks: PathBuf = self.dir.path().join("data/tasks");
        std::fs::read_dir(tasks)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("shim.pid")).ok())
            .map(|p| p.trim().to_string())
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.shim_pids() {
            quiet(&["kill", "-9", &pid]);
        }
    }
}

/// The address this host reaches the world from (its "node address"), else the bridge's.
fn node_address() -> Ipv4Addr {
    let out = Command::new("ip")
        .args(["-o", "-4", "route", "get", "192.0.2.123"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut words = out.split_whitespace();
    words
        .find(|w| *w == "src")
        .and_then(|_| words.next())
        .and_then(|a| a.parse().ok())
        .filter(|a: &Ipv4Addr| !a.is_loopback())
        .unwrap_or(Ipv4Addr::new(10, 201, 41, 1))
}

/// `GET /` with curl (in network namespace `netns` when given); the demo's `task` field.
fn task_behind(url: &str, netns: Option<&str>) -> Option<String> {
    let mut argv: Vec<&str> = netns.map(|ns| vec!["ip", "netns", "exec", ns]).unwrap_or_default();
    argv.extend(["curl", "-s", "--max-time", "2", url]);
    let output = Command::new(argv[0]).args(&argv[1..]).output().expect("running curl (apt-get install curl)");
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    answer["task"].as_str().map(str::to_string)
}

/// The task ids answering `count` requests to `url`; a failed request is a panic.
fn tasks_seen(url: &str, netns: Option<&str>, count: usize, agent: &Agent) -> BTreeSet<String> {
    (0..count)
        .map(|_| {
            task_behind(url, netns)
                .unwrap_or_else(|| panic!("no answer from {url} (netns {netns:?}); agent log:\n{}", agent.log()))
        })
        .collect()
}

fn demo_task(id: &str) -> Task {
    let mut spec = ServiceSpec::from_image("shoal/demo:1.0");
    spec.env = [("DEMO_LISTEN".to_string(), "0.0.0.0:80".to_string())].into();
    Task::new(
        id,
        TaskSpec {
            service_name: "web".into(),
            slot: Some(1),
            node_id: Some(NODE.into()),
            desired_state: TaskState::Running,
            service_generation: 1,
            spec,
        },
    )
}

/// FIXTURE: the Endpoints object the endpoints controller would write for
/// service `web` — VIP 10.96.200.1, port 80 published in ingress mode on
/// 31080 — with `backends` (task id, address) on this node.
fn fixture_endpoints(backends: &[(String, Ipv4Addr)]) -> Endpoints {
    let backends = backends
        .iter()
        .map(|(task, address)| Backend {
            task: task.clone(),
            node: NODE.into(),
            address: address.to_string(),
            ports: Default::default(),
        })
        .collect();
    let port = EndpointPort {
        protocol: PortProtocol::Tcp,
        target: 80,
        published: Some(PUBLISHED),
        publish_mode: PublishMode::Ingress,
    };
    Endpoints::new(
        "web",
        EndpointsSpec {
            service: "web".into(),
            endpoint_mode: EndpointMode::Vip,
            vip: Some(VIP.into()),
            ports: vec![port],
            backends,
            ..Default::default()
        },
    )
}

/// Polls `probe` every 50 ms until it returns Some, or panics with the agent's log.
async fn eventually<T>(agent: &Agent, timeout: Duration, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn programmed_revision(store: &Store) -> i64 {
    let etcd = store.etcd();
    let key = programmed_key(store.prefix(), NODE).into_bytes();
    let response = etcd.unary(etcd.kv().range(RangeRequest { key, ..Default::default() })).await.unwrap();
    let Some(kv) = response.kvs.first() else { return 0 };
    serde_json::from_slice::<serde_json::Value>(&kv.value).unwrap()["programmedRevision"].as_i64().unwrap_or(0)
}

fn nft_table() -> Option<String> {
    let output = Command::new("nft").args(["list", "table", "ip", "shoal"]).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vip_and_a_published_port_balance_over_tasks_and_follow_the_endpoints() {
    assert!(
        shoal_agent::sys::is_root(),
        "this test needs root: it creates namespaces, a bridge and nftables rules (CI runs as root)"
    );
    let ids = [format!("dp-a-{}", std::process::id()), format!("dp-b-{}", std::process::id())];
    let _network = NetworkGuard { tasks: ids.to_vec() };
    let server = StoreUnderTest::embedded();
    let store = Store::connect(&StoreConfig::for_endpoint(server.endpoint())).await.expect("connecting to the store");
    let node_addr = node_address();
    let mut agent = Agent::start(&server, node_addr);

    for id in &ids {
        store.create(demo_task(id)).await.unwrap();
    }
    let mut backends = Vec::new();
    for id in &ids {
        let address = eventually(&agent, Duration::from_secs(15), &format!("task {id} running"), async || {
            let o = store.get::<TaskObservation>(id).await.ok().flatten()?;
            (o.status.as_ref()?.state == TaskState::Running).then_some(())?;
            o.spec.addresses.first()?.split_once('/')?.0.parse::<Ipv4Addr>().ok()
        })
        .await;
        eventually(&agent, Duration::from_secs(10), &format!("{address}:80 to answer"), async || {
            task_behind(&format!("http://{address}/"), None)
        })
        .await;
        backends.push((id.clone(), address));
    }
    let written = store.create(fixture_endpoints(&backends)).await.unwrap();
    let revision = written.metadata.resource_version;
    eventually(&agent, Duration::from_secs(5), "the agent to record the Endpoints revision", async || {
        (programmed_revision(&store).await >= revision).then_some(())
    })
    .await;

    // The VIP balances over both tasks, from the host and from a task.
    let vip = format!("http://{VIP}/");
    let both: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(tasks_seen(&vip, None, 40, &agent), both, "VIP from the host");
    assert_eq!(
        tasks_seen(&vip, Some(&netns_name(&ids[0])), 40, &agent),
        both,
        "VIP from inside task {} (hairpin included)",
        ids[0]
    );
    // The published port answers on loopback and on the node's address.
    assert_eq!(tasks_seen(&format!("http://127.0.0.1:{PUBLISHED}/"), None, 40, &agent), both, "127.0.0.1:{PUBLISHED}");
    assert_eq!(
        tasks_seen(&format!("http://{node_addr}:{PUBLISHED}/"), None, 40, &agent),
        both,
        "{node_addr}:{PUBLISHED}"
    );

    let table = nft_table().expect("the shoal table exists");
    for chain in [
        "chain services",
        "chain nodeports",
        "chain svc-web-tcp-80",
        "chain np-web-tcp-31080",
        "chain svc-web-any",
        &format!("{} . 80", backends[0].1),
    ] {
        assert!(table.contains(chain), "{chain} missing in:\n{table}");
    }

    // One backend leaves the Endpoints: within a second no request reaches it.
    let mut endpoints = store.require::<Endpoints>("web").await.unwrap();
    endpoints.spec = fixture_endpoints(&backends[1..]).spec;
    let removed_at = Instant::now();
    let revision = store.update(endpoints).await.unwrap().metadata.resource_version;
    eventually(&agent, Duration::from_secs(1), "the removal to be programmed", async || {
        (programmed_revision(&store).await >= revision).then_some(())
    })
    .await;
    assert!(removed_at.elapsed() < Duration::from_secs(1), "programming took {:?}", removed_at.elapsed());
    let only_b: BTreeSet<String> = [ids[1].clone()].into();
    assert_eq!(tasks_seen(&vip, None, 20, &agent), only_b, "VIP after the removal");
    assert_eq!(
        tasks_seen(&format!("http://127.0.0.1:{PUBLISHED}/"), None, 20, &agent),
        only_b,
        "published port after the removal"
    );
    let table = nft_table().unwrap();
    assert!(
        !table.contains(&format!("{} . 80", backends[0].1)) && table.contains(&format!("{} . 80", backends[1].1)),
        "the removed backend is gone from the service's map:\n{table}"
    );

    // No backends left: a connection is refused at once, not left to time out.
    let mut endpoints = store.require::<Endpoints>("web").await.unwrap();
    endpoints.spec.backends.clear();
    let revision = store.update(endpoints).await.unwrap().metadata.resource_version;
    eventually(&agent, Duration::from_secs(1), "the empty service to be programmed", async || {
        (programmed_revision(&store).await >= revision).then_some(())
    })
    .await;
    let asked = Instant::now();
    assert_eq!(task_behind(&vip, None), None, "a service without backends answered");
    assert!(asked.elapsed() < Duration::from_secs(1), "refused only after {:?}", asked.elapsed());

    // A graceful stop removes the table.
    agent.stop();
    assert!(nft_table().is_none(), "the shoal table outlived the agent; log:\n{}", agent.log());
    assert_eq!(programmed_revision(&store).await, 0, "the programmed-revision key outlived the agent");
}

/// 1,000 services × 10 backends through the library (no agent), in a table
/// of its own: the first apply writes it whole, a one-backend change is a
/// transaction of that service's lines only. Times are printed, bounds loose.
#[test]
fn a_thousand_services_program_at_once_and_one_backend_change_touches_one_service() {
    use shoal_agent::dataplane::{Cluster, DataPlane, NftablesDataPlane};
    use std::sync::Arc;
    assert!(shoal_agent::sys::is_root(), "this test needs root: it programs nftables (CI runs as root)");
    struct TableGuard;
    impl Drop for TableGuard {
        fn drop(&mut self) {
            quiet(&["nft", "delete", "table", "ip", "shoal-scale-test"]);
        }
    }
    let _guard = TableGuard;
    let service = |i: u32, backends: u32| {
        let ip = |n: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 202, 0, 0)) + n).to_string();
        let port = EndpointPort {
            protocol: PortProtocol::Tcp,
            target: 80,
            published: None,
            publish_mode: PublishMode::Ingress,
        };
        let backends = (0..backends)
            .map(|b| Backend {
                task: format!("s{i}-{b}"),
                node: "elsewhere".into(),
                address: ip(i * 16 + b + 2),
                ports: Default::default(),
            })
            .collect();
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i).to_string();
        Arc::new(Endpoints::new(
            format!("s{i}"),
            EndpointsSpec {
                service: format!("s{i}"),
                vip: Some(vip),
                ports: vec![port],
                backends,
                ..Default::default()
            },
        ))
    };
    let mut services: Vec<Arc<Endpoints>> = (0..1000).map(|i| service(i, 10)).collect();
    let cluster = Cluster::new("scale-node", None, Vec::new());
    let mut dataplane = NftablesDataPlane::new("shoal-scale-test");
    let started = Instant::now();
    dataplane.apply(&services, &cluster).unwrap();
    let full = started.elapsed();
    services[500] = service(500, 9);
    let started = Instant::now();
    dataplane.apply(&services, &cluster).unwrap();
    let one = started.elapsed();
    println!(
        "1,000 services × 10 backends: full apply {full:?}; one backend removed: {one:?} ({} lines)",
        dataplane.last_script().lines().count()
    );
    assert!(
        dataplane.last_script().lines().all(|l| l.contains("s500-")),
        "the change touched other services:\n{}",
        dataplane.last_script()
    );
    assert!(full < Duration::from_secs(10) && one < Duration::from_secs(1), "full {full:?}, one change {one:?}");
    dataplane.cleanup().unwrap();
    assert!(!quiet(&["nft", "list", "table", "ip", "shoal-scale-test"]), "cleanup left the table");
}
