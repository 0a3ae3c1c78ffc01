//! The node agent with real processes against a real store (the embedded
//! `shoal store` and Debian's etcd): it registers its node and heartbeats,
//! runs a `shoal/demo` task through Swarm's states to a process that
//! answers HTTP, stops it on `desiredState: shutdown`, survives `kill -9`
//! (the heartbeat expires, the task keeps running) and re-adopts the same
//! process when restarted; failing and unknown images end failed and
//! rejected.
//!
//! As root (CI runs as root; these tests fail rather than skip otherwise),
//! with real kernel networking: two replicas on one agent each listen on
//! port 80 in a network namespace of their own, reachable from the host at
//! their own addresses on the agent's bridge; a restarted agent keeps their
//! namespaces, addresses and processes; a removed task's namespace and veth
//! are gone. Each such test uses its own bridge and subnet, so tests run
//! concurrently.
//!
//! Health checks with real probes (`shoal demo probe`, found on the demo
//! image's PATH): a task turns healthy; one whose /health starts failing is
//! stopped and failed as "task: unhealthy container"; failures during the
//! start period do not count; as root, a probe of 127.0.0.1:80 reaches the
//! task's own namespace and probing resumes after an agent restart.
//!
//! Every spawned process (agents, shims, tasks) is SIGKILLed by a Drop
//! guard, also when a test fails; namespaces, links and nftables tables by
//! another ([`NetworkGuard`]).

mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::quiet;

use shoal_agent::network::task::{netns_name, veth_name};
use shoal_crd::{
    heartbeat_key, HealthCheck, HealthStatus, Node, ServiceSpec, Task, TaskNetwork, TaskObservation, TaskSpec,
    TaskState, TaskStatus,
};
use shoal_store::client::{Store, StoreConfig};
use shoal_store::proto::RangeRequest;
use support::{free_port, http_get, Backend, StoreUnderTest};

const TTL: u64 = 3;

/// One `shoal agent` process and everything it started.
struct AgentUnderTest {
    name: String,
    endpoint: String,
    /// Flags beyond name, address, labels, data dir, TTL and store.
    flags: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl AgentUnderTest {
    /// An agent whose tasks share the host network.
    fn start(store: &StoreUnderTest, name: &str) -> Self {
        Self::start_with(store, name, &["--network", "host"])
    }

    fn start_with(store: &StoreUnderTest, name: &str, flags: &[&str]) -> Self {
        let dir = tempfile::Builder::new().prefix("shoal-agent-test-").tempdir().unwrap();
        let flags = flags.iter().map(|f| f.to_string()).collect();
        let mut agent = AgentUnderTest { name: name.into(), endpoint: store.endpoint(), flags, dir, child: None };
        agent.spawn();
        agent
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args([
                "agent",
                "--name",
                &self.name,
                "--advertise-addr",
                "127.0.0.1",
                "--labels",
                "zone=test",
                "--dataplane",
                "none",
            ])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--heartbeat-ttl", &TTL.to_string(), "--etcd-endpoints", &self.endpoint])
            .args(&self.flags)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting shoal agent");
        self.child = Some(child);
    }

    /// SIGTERM and wait: a graceful shutdown.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(child.id() as i32, "-TERM");
            let _ = child.wait();
        }
    }

    /// SIGKILL: no shutdown, no lease revoke.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for AgentUnderTest {
    fn drop(&mut self) {
        self.kill();
        // Shims and tasks outlive the agent by design: kill them by their records.
        for task in std::fs::read_dir(self.data_dir().join("tasks")).into_iter().flatten().flatten() {
            for pid in [
                pid_in(&task.path().join("pid.json")),
                std::fs::read_to_string(task.path().join("shim.pid")).ok().and_then(|p| p.trim().parse().ok()),
            ]
            .into_iter()
            .flatten()
            {
                kill(pid, "-9");
            }
        }
    }
}

fn pid_in(path: &Path) -> Option<i32> {
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    record["pid"].as_i64().map(|p| p as i32)
}

fn kill(pid: i32, signal: &str) {
    let _ = Command::new("kill").args([signal, &pid.to_string()]).stderr(Stdio::null()).status();
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

async fn client(store: &StoreUnderTest) -> Store {
    Store::connect(&StoreConfig::for_endpoint(store.endpoint())).await.expect("connecting to the store")
}

fn demo_task(id: &str, node: &str, image: &str, env: &[(&str, &str)]) -> Task {
    let mut spec = ServiceSpec::from_image(image);
    spec.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Task::new(
        id,
        TaskSpec {
            service_name: "web".into(),
            slot: Some(1),
            node_id: Some(node.into()),
            desired_state: TaskState::Running,
            service_generation: 1,
            spec,
        },
    )
}

/// Polls `probe` every 100 ms until it returns Some, or panics with the agent's log.
async fn eventually<T>(
    agent: &AgentUnderTest,
    timeout: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; agent log:\n{}", agent.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn observation_in(store: &Store, agent: &AgentUnderTest, id: &str, state: TaskState) -> TaskObservation {
    eventually(agent, Duration::from_secs(15), &format!("task {id} to be {state:?}"), async || {
        let o = store.get::<TaskObservation>(id).await.ok().flatten()?;
        (o.status.as_ref()?.state == state).then_some(o)
    })
    .await
}

async fn heartbeat_exists(store: &Store, node: &str) -> bool {
    let key = heartbeat_key(store.prefix(), node).into_bytes();
    let etcd = store.etcd();
    let response = etcd.unary(etcd.kv().range(RangeRequest { key, ..Default::default() })).await.unwrap();
    !response.kvs.is_empty()
}

async fn task_runs_stops_survives_an_agent_kill_and_is_readopted(backend: Backend) {
    let server = StoreUnderTest::of(backend);
    let store = client(&server).await;
    let mut agent = AgentUnderTest::start(&server, "node-1");

    // Registration: the Node with its facts, and a heartbeat key.
    let node = eventually(&agent, Duration::from_secs(10), "the Node", async || {
        store.get::<Node>("node-1").await.ok().flatten()
    })
    .await;
    let facts = node.status.expect("node facts");
    assert_eq!((facts.addr.as_str(), facts.platform.os.as_str()), ("127.0.0.1", "linux"));
    assert!(facts.cpus >= 1 && facts.memory > 0 && !facts.agent_version.is_empty(), "{facts:?}");
    assert_eq!(node.spec.labels["zone"], "test");
    eventually(&agent, Duration::from_secs(5), "the heartbeat key", async || {
        heartbeat_exists(&store, "node-1").await.then_some(())
    })
    .await;

    // A task as a controller writes it: runs and answers HTTP with its version.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    store.create(demo_task("t-web-1", "node-1", "shoal/demo:1.0", &[("DEMO_LISTEN", &listen)])).await.unwrap();
    let running = observation_in(&store, &agent, "t-web-1", TaskState::Running).await;
    let pid = running.spec.pid.expect("a running task has a pid");
    assert_eq!((running.spec.network, running.spec.addresses.len()), (TaskNetwork::Host, 0));
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let body = eventually(&agent, Duration::from_secs(10), "the demo to answer", async || http_get(local)).await;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(
        (answer["version"].as_str(), answer["task"].as_str(), answer["node"].as_str()),
        (Some("1.0"), Some("t-web-1"), Some("node-1"))
    );
    let task = store.require::<Task>("t-web-1").await.unwrap();
    assert_eq!(task.status, None, "the agent never writes the Task's key");

    // kill -9 the agent: the heartbeat expires, the task keeps running.
    agent.kill();
    let killed = Instant::now();
    eventually(&agent, Duration::from_secs(TTL + 2), "the heartbeat key to expire", async || {
        (!heartbeat_exists(&store, "node-1").await).then_some(())
    })
    .await;
    assert!(killed.elapsed() <= Duration::from_secs(TTL + 1), "heartbeat outlived the agent by {:?}", killed.elapsed());
    assert!(alive(pid), "the task died with its agent");

    // Restart: the same process is re-adopted, not restarted.
    agent.spawn();
    eventually(&agent, Duration::from_secs(10), "a new heartbeat", async || {
        heartbeat_exists(&store, "node-1").await.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let readopted = observation_in(&store, &agent, "t-web-1", TaskState::Running).await;
    assert_eq!(readopted.spec.pid, Some(pid));
    assert!(alive(pid));
    assert!(http_get(local).is_some_and(|b| b.contains("\"1.0\"")));

    // desiredState shutdown: SIGTERM, the demo exits cleanly, observed shutdown.
    let mut task = store.require::<Task>("t-web-1").await.unwrap();
    task.spec.desired_state = TaskState::Shutdown;
    store.update(task).await.unwrap();
    let stopped = observation_in(&store, &agent, "t-web-1", TaskState::Shutdown).await;
    let status = stopped.status.unwrap();
    assert_eq!(status.message, "shutdown (exit code 0)", "SIGTERM should end the demo gracefully");
    assert!(!alive(pid));

    // The Task deleted: its observation and files go too.
    store.delete::<Task>("t-web-1", None).await.unwrap();
    eventually(&agent, Duration::from_secs(10), "the observation to be deleted", async || {
        store.get::<TaskObservation>("t-web-1").await.ok().flatten().is_none().then_some(())
    })
    .await;
    assert!(!agent.data_dir().join("tasks/t-web-1").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_lifecycle_and_readoption_on_the_embedded_store() {
    task_runs_stops_survives_an_agent_kill_and_is_readopted(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_lifecycle_and_readoption_on_etcd() {
    task_runs_stops_survives_an_agent_kill_and_is_readopted(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_cannot_start_fails_and_an_unknown_image_is_rejected() {
    let server = StoreUnderTest::embedded();
    let store = client(&server).await;
    let agent = AgentUnderTest::start(&server, "node-2");
    let listen = format!("127.0.0.1:{}", free_port());
    store
        .create(demo_task(
            "t-bad-1",
            "node-2",
            "shoal/demo:2.0",
            &[("DEMO_FAIL_START", "true"), ("DEMO_LISTEN", &listen)],
        ))
        .await
        .unwrap();
    store.create(demo_task("t-ghost-1", "node-2", "ghost:1", &[])).await.unwrap();
    store.create(demo_task("t-elsewhere", "node-9", "shoal/demo:1.0", &[])).await.unwrap();

    let failed = observation_in(&store, &agent, "t-bad-1", TaskState::Failed).await.status.unwrap();
    assert_eq!((failed.exit_code, failed.message.as_str()), (Some(1), "task: non-zero exit (1)"));
    let stderr = std::fs::read_to_string(agent.data_dir().join("tasks/t-bad-1/stderr.log")).unwrap();
    assert!(stderr.contains("refusing to start"), "the task's stderr is logged: {stderr:?}");

    let rejected = observation_in(&store, &agent, "t-ghost-1", TaskState::Rejected).await.status.unwrap();
    assert_eq!(rejected.message, "image not found in the local catalog: ghost:1");
    assert!(store.get::<TaskObservation>("t-elsewhere").await.unwrap().is_none(), "another node's task is not ours");
}

/// Fails (never skips) unless root: namespaces, veths and nftables need it.
fn assert_root() {
    assert!(shoal_agent::sys::is_root(), "these tests need root (CI runs as root)");
}

/// The kernel objects of one namespace test: its bridge, nftables table,
/// and the namespace and veth of each task id; all deleted on drop, also
/// when the test failed. Declare it before the agent, so the agent (and its
/// tasks) are killed first.
struct NetworkGuard {
    bridge: String,
    subnet: String,
    tasks: Vec<String>,
}

impl NetworkGuard {
    fn new(bridge: &str, subnet: &str, tasks: &[&str]) -> Self {
        Self { bridge: bridge.into(), subnet: subnet.into(), tasks: tasks.iter().map(|t| t.to_string()).collect() }
    }

    /// `--network namespace --bridge B` and, when given, `--task-subnet S`.
    fn flags(&self, with_subnet: bool) -> Vec<&str> {
        let mut flags = vec!["--network", "namespace", "--bridge", &self.bridge];
        if with_subnet {
            flags.extend(["--task-subnet", &self.subnet]);
        }
        flags
    }
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        for id in &self.tasks {
            quiet(&["ip", "netns", "del", &netns_name(id)]);
            quiet(&["ip", "link", "del", &veth_name(id)]);
        }
        quiet(&["ip", "link", "del", &self.bridge]);
        quiet(&["nft", "delete", "table", "ip", &format!("shoal-agent-{}", self.bridge)]);
    }
}

fn link_exists(name: &str) -> bool {
    quiet(&["ip", "link", "show", "dev", name])
}

fn netns_exists(id: &str) -> bool {
    Path::new("/run/netns").join(netns_name(id)).exists()
}

/// Task ids unique to this test process, so concurrent runs never share a namespace.
fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// The address of a task observed in its own namespace.
fn namespace_address(observation: &TaskObservation) -> Ipv4Addr {
    assert_eq!(observation.spec.network, TaskNetwork::Namespace, "{observation:?}");
    let [address] = observation.spec.addresses.as_slice() else { panic!("one address expected: {observation:?}") };
    address
        .split_once('/')
        .and_then(|(ip, _)| ip.parse().ok())
        .unwrap_or_else(|| panic!("not a CIDR address: {address}"))
}

/// The demo's JSON answer on port 80 of `address`.
async fn answer_on_port_80(agent: &AgentUnderTest, address: Ipv4Addr) -> serde_json::Value {
    let body = eventually(agent, Duration::from_secs(10), &format!("{address}:80 to answer"), async || {
        http_get(SocketAddr::from((address, 80)))
    })
    .await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_node_each_listen_on_port_80_in_a_namespace_of_their_own() {
    assert_root();
    let ids = [unique("ns-a"), unique("ns-b")];
    let network = NetworkGuard::new("shtest1", "10.201.1.0/24", &[&ids[0], &ids[1]]);
    let server = StoreUnderTest::embedded();
    let store = client(&server).await;
    let mut agent = AgentUnderTest::start_with(&server, "node-ns", &network.flags(true));

    for id in &ids {
        store.create(demo_task(id, "node-ns", "shoal/demo:1.0", &[("DEMO_LISTEN", "0.0.0.0:80")])).await.unwrap();
    }
    let mut running = Vec::new();
    for id in &ids {
        let observation = observation_in(&store, &agent, id, TaskState::Running).await;
        running.push((namespace_address(&observation), observation.spec.pid.expect("a pid")));
    }
    let mut addresses: Vec<Ipv4Addr> = running.iter().map(|(a, _)| *a).collect();
    addresses.sort();
    assert_eq!(
        addresses,
        [Ipv4Addr::new(10, 201, 1, 2), Ipv4Addr::new(10, 201, 1, 3)],
        "the lowest free addresses after the gateway"
    );
    for (id, (address, _)) in ids.iter().zip(&running) {
        assert_eq!(
            answer_on_port_80(&agent, *address).await["task"].as_str(),
            Some(id.as_str()),
            "{address} answers as its own task"
        );
        assert!(netns_exists(id) && link_exists(&veth_name(id)));
    }
    assert!(link_exists("shtest1"));

    // kill -9 and restart: nothing recreated or renumbered, nothing restarted.
    agent.kill();
    agent.spawn();
    eventually(&agent, Duration::from_secs(10), "a new heartbeat", async || {
        heartbeat_exists(&store, "node-ns").await.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (id, (address, pid)) in ids.iter().zip(&running) {
        let readopted = observation_in(&store, &agent, id, TaskState::Running).await;
        assert_eq!(
            (namespace_address(&readopted), readopted.spec.pid),
            (*address, Some(*pid)),
            "task {id} after the restart"
        );
        assert!(alive(*pid));
        assert_eq!(answer_on_port_80(&agent, *address).await["task"].as_str(), Some(id.as_str()));
    }

    // Shut the first task down: its namespace, veth and address are freed at
    // once (a finished task kept for history holds none); the other keeps answering.
    let mut task = store.require::<Task>(&ids[0]).await.unwrap();
    task.spec.desired_state = TaskState::Shutdown;
    store.update(task).await.unwrap();
    let stopped = observation_in(&store, &agent, &ids[0], TaskState::Shutdown).await;
    assert_eq!((stopped.spec.network, stopped.spec.addresses.len()), (TaskNetwork::Namespace, 0), "{stopped:?}");
    assert!(!netns_exists(&ids[0]), "the namespace outlived its task");
    eventually(&agent, Duration::from_secs(5), "the first task's veth to be gone", async || {
        (!link_exists(&veth_name(&ids[0]))).then_some(())
    })
    .await;
    assert!(!agent.data_dir().join("tasks").join(&ids[0]).join("network.json").exists());
    assert_eq!(answer_on_port_80(&agent, running[1].0).await["task"].as_str(), Some(ids[1].as_str()));

    // A graceful stop keeps the bridge while a task holds an address on it…
    agent.stop();
    assert!(link_exists("shtest1"), "the bridge went while a task still runs on it");
    assert!(alive(running[1].1));
    // …and removes it, with the nftables table, once none does.
    agent.spawn();
    store.delete::<Task>(&ids[1], None).await.unwrap();
    eventually(&agent, Duration::from_secs(15), "the second task to be removed", async || {
        let removed = store.get::<TaskObservation>(&ids[1]).await.ok()?.is_none()
            && !agent.data_dir().join("tasks").join(&ids[1]).exists();
        (removed && !netns_exists(&ids[1])).then_some(())
    })
    .await;
    agent.stop();
    assert!(!link_exists("shtest1"), "the bridge outlived the last task and the agent:\n{}", agent.log());
    assert!(!quiet(&["nft", "list", "table", "ip", "shoal-agent-shtest1"]), "the nftables table outlived the agent");
    assert!(!agent.log().contains("WARN"), "teardown warned:\n{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_takes_task_addresses_from_the_subnet_the_controllers_give_its_node() {
    assert_root();
    let id = unique("ns-c");
    let network = NetworkGuard::new("shtest2", "10.201.2.0/24", &[&id]);
    let server = StoreUnderTest::embedded();
    let store = client(&server).await;
    let agent = AgentUnderTest::start_with(&server, "node-subnet", &network.flags(false));

    // What the controllers' node loop does: write status.taskSubnet.
    let mut node = eventually(&agent, Duration::from_secs(10), "the Node", async || {
        store.get::<Node>("node-subnet").await.ok().flatten()
    })
    .await;
    loop {
        node.status.get_or_insert_with(Default::default).task_subnet = Some(network.subnet.clone());
        match store.update(node.clone()).await {
            Ok(_) => break,
            Err(err) if err.is_conflict() => node = store.require::<Node>("node-subnet").await.unwrap(),
            Err(err) => panic!("writing the node's taskSubnet: {err}"),
        }
    }
    eventually(&agent, Duration::from_secs(10), "the bridge", async || link_exists("shtest2").then_some(())).await;

    store.create(demo_task(&id, "node-subnet", "shoal/demo:1.0", &[("DEMO_LISTEN", "0.0.0.0:80")])).await.unwrap();
    let observation = observation_in(&store, &agent, &id, TaskState::Running).await;
    let address = namespace_address(&observation);
    assert_eq!(address, Ipv4Addr::new(10, 201, 2, 2));
    assert_eq!(answer_on_port_80(&agent, address).await["task"].as_str(), Some(id.as_str()));
}

/// `task` with a `shoal demo probe URL` healthcheck: every 500 ms, `retries`
/// failures, a `start_period` probed every 200 ms.
fn with_probe(mut task: Task, url: &str, retries: u64, start_period: Duration) -> Task {
    task.spec.spec.healthcheck = Some(HealthCheck {
        test: ["CMD", "shoal", "demo", "probe", url].map(String::from).to_vec(),
        interval: shoal_crd::Duration::from_millis(500),
        timeout: shoal_crd::Duration::from_secs(2),
        retries,
        start_period: shoal_crd::Duration(start_period),
        start_interval: shoal_crd::Duration::from_millis(200),
    });
    task
}

/// The task's observed status once `done` holds for it.
async fn status_when(
    store: &Store,
    agent: &AgentUnderTest,
    id: &str,
    what: &str,
    done: impl Fn(&TaskStatus) -> bool,
) -> TaskStatus {
    eventually(agent, Duration::from_secs(15), &format!("task {id} to be {what}"), async || {
        let status = store.get::<TaskObservation>(id).await.ok().flatten()?.status?;
        done(&status).then_some(status)
    })
    .await
}

fn health_is(status: &TaskStatus, wanted: HealthStatus) -> bool {
    status.health.as_ref().is_some_and(|h| h.status == wanted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_mark_tasks_healthy_and_fail_unhealthy_ones_but_not_during_the_start_period() {
    let server = StoreUnderTest::embedded();
    let store = client(&server).await;
    let agent = AgentUnderTest::start(&server, "node-health");
    let [fine, sick, slow] = [free_port(), free_port(), free_port()];
    let listen = |port: u16| format!("127.0.0.1:{port}");
    let health = |port: u16| format!("http://127.0.0.1:{port}/health");
    let tasks = [
        with_probe(
            demo_task("t-fine", "node-health", "shoal/demo:1.0", &[("DEMO_LISTEN", &listen(fine))]),
            &health(fine),
            2,
            Duration::ZERO,
        ),
        with_probe(
            demo_task(
                "t-sick",
                "node-health",
                "shoal/demo:1.0",
                &[("DEMO_LISTEN", &listen(sick)), ("DEMO_UNHEALTHY_AFTER", "2s")],
            ),
            &health(sick),
            2,
            Duration::ZERO,
        ),
        // Listens only after 1.5 s: the probes before fail, inside a 3 s start period.
        with_probe(
            demo_task(
                "t-slow",
                "node-health",
                "shoal/demo:1.0",
                &[("DEMO_LISTEN", &listen(slow)), ("DEMO_START_DELAY", "1500ms")],
            ),
            &health(slow),
            1,
            Duration::from_secs(3),
        ),
    ];
    for task in tasks {
        store.create(task).await.unwrap();
    }

    // Running but not ready until a probe passed.
    let starting = observation_in(&store, &agent, "t-fine", TaskState::Running).await.status.unwrap();
    assert!(starting.health.is_some(), "a task with a probe has a health from the start: {starting:?}");
    assert!(
        !health_is(&starting, HealthStatus::Starting) || !starting.is_ready(),
        "starting is not ready: {starting:?}"
    );
    let healthy = status_when(&store, &agent, "t-fine", "healthy", |s| health_is(s, HealthStatus::Healthy)).await;
    assert!(healthy.is_ready() && healthy.state == TaskState::Running);
    let last = healthy.health.as_ref().unwrap().log.last().cloned().expect("a logged probe");
    assert_eq!(last.exit_code, 0, "{last:?}");
    assert!(last.output.contains("200"), "the probe's output is logged: {last:?}");

    // Healthy, then 503: two failures later stopped and failed, Docker's wording.
    let pid = observation_in(&store, &agent, "t-sick", TaskState::Running).await.spec.pid.unwrap();
    status_when(&store, &agent, "t-sick", "healthy", |s| health_is(s, HealthStatus::Healthy)).await;
    let failed = observation_in(&store, &agent, "t-sick", TaskState::Failed).await.status.unwrap();
    assert_eq!(
        (failed.message.as_str(), failed.exit_code),
        ("task: unhealthy container", Some(0)),
        "stopped with SIGTERM: {failed:?}"
    );
    let health = failed.health.as_ref().unwrap();
    assert_eq!((health.status, health.failing_streak), (HealthStatus::Unhealthy, 2));
    assert!(
        health.log.len() <= 5 && health.log.iter().rev().take(2).all(|r| r.exit_code == 1 && r.output.contains("503")),
        "{health:?}"
    );
    assert!(!alive(pid), "the unhealthy task's process still runs");

    // Refused connections in the start period did not count (retries 1).
    let slow_status = status_when(&store, &agent, "t-slow", "healthy", |s| {
        health_is(s, HealthStatus::Healthy) || s.state.is_terminal()
    })
    .await;
    assert_eq!(slow_status.state, TaskState::Running, "{slow_status:?}");
    let log = &slow_status.health.as_ref().unwrap().log;
    assert!(log.iter().any(|r| r.exit_code != 0), "no failure during the start period was logged: {log:?}");
    let fine_now = store.require::<TaskObservation>("t-fine").await.unwrap().status.unwrap();
    assert!(fine_now.is_ready(), "the healthy task was left alone: {fine_now:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_of_127_0_0_1_port_80_reaches_the_tasks_own_namespace_and_resumes_after_an_agent_restart() {
    assert_root();
    assert!(
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], 80)), Duration::from_secs(1)).is_err(),
        "the host must have nothing on port 80"
    );
    let id = unique("ns-probe");
    let network = NetworkGuard::new("shtest3", "10.201.3.0/24", &[&id]);
    let server = StoreUnderTest::embedded();
    let store = client(&server).await;
    let mut agent = AgentUnderTest::start_with(&server, "node-probe", &network.flags(true));
    let task = demo_task(&id, "node-probe", "shoal/demo:1.0", &[("DEMO_LISTEN", "0.0.0.0:80")]);
    store.create(with_probe(task, "http://127.0.0.1:80/health", 2, Duration::ZERO)).await.unwrap();
    let healthy =
        status_when(&store, &agent, &id, "healthy", |s| health_is(s, HealthStatus::Healthy) || s.state.is_terminal())
            .await;
    assert!(healthy.is_ready(), "{healthy:?}");
    let pid = store.require::<TaskObservation>(&id).await.unwrap().spec.pid;

    // A restarted agent re-adopts the task and keeps probing it.
    agent.kill();
    let restarted = chrono::Utc::now();
    agent.spawn();
    let resumed = status_when(&store, &agent, &id, "probed after the restart", |s| {
        s.health.as_ref().and_then(|h| h.log.last()).is_some_and(|r| r.start > restarted)
    })
    .await;
    assert!(health_is(&resumed, HealthStatus::Healthy) && resumed.state == TaskState::Running, "{resumed:?}");
    assert_eq!(store.require::<TaskObservation>(&id).await.unwrap().spec.pid, pid, "re-adopted, not restarted");
}
