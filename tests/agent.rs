//! The node agent with real processes against a real store (the embedded
//! `shoal store` and Debian's etcd): it registers its node and heartbeats,
//! runs a `shoal/demo` task through Swarm's states to a process that
//! answers HTTP, stops it on `desiredState: shutdown`, survives `kill -9`
//! (the heartbeat expires, the task keeps running) and re-adopts the same
//! process when restarted; failing and unknown images end failed and
//! rejected.
//!
//! Every spawned process (agents, shims, tasks) is SIGKILLed by a Drop
//! guard, also when a test fails.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_crd::{heartbeat_key, Node, ServiceSpec, Task, TaskObservation, TaskSpec, TaskState};
use shoal_store::client::{Store, StoreConfig};
use shoal_store::proto::RangeRequest;
use support::{free_port, Backend, StoreUnderTest};

const TTL: u64 = 3;

/// One `shoal agent` process and everything it started.
struct AgentUnderTest {
    name: String,
    endpoint: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl AgentUnderTest {
    fn start(store: &StoreUnderTest, name: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("shoal-agent-test-").tempdir().unwrap();
        let mut agent = AgentUnderTest { name: name.into(), endpoint: store.endpoint(), dir, child: None };
        agent.spawn();
        agent
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["agent", "--name", &self.name, "--advertise-addr", "127.0.0.1", "--labels", "zone=test"])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--heartbeat-ttl", &TTL.to_string(), "--etcd-endpoints", &self.endpoint])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting shoal agent");
        self.child = Some(child);
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
            for pid in [pid_in(&task.path().join("pid.json")), std::fs::read_to_string(task.path().join("shim.pid")).ok().and_then(|p| p.trim().parse().ok())].into_iter().flatten() {
                kill9(pid);
            }
        }
    }
}

fn pid_in(path: &Path) -> Option<i32> {
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    record["pid"].as_i64().map(|p| p as i32)
}

fn kill9(pid: i32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
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
async fn eventually<T>(agent: &AgentUnderTest, timeout: Duration, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
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

/// `GET /` over plain HTTP/1.0; the body.
fn http_get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

async fn task_runs_stops_survives_an_agent_kill_and_is_readopted(backend: Backend) {
    let server = StoreUnderTest::of(backend);
    let store = client(&server).await;
    let mut agent = AgentUnderTest::start(&server, "node-1");

    // Registration: the Node with its facts, and a heartbeat key.
    let node = eventually(&agent, Duration::from_secs(10), "the Node", async || store.get::<Node>("node-1").await.ok().flatten()).await;
    let facts = node.status.expect("node facts");
    assert_eq!((facts.addr.as_str(), facts.platform.os.as_str()), ("127.0.0.1", "linux"));
    assert!(facts.cpus >= 1 && facts.memory > 0 && !facts.agent_version.is_empty(), "{facts:?}");
    assert_eq!(node.spec.labels["zone"], "test");
    eventually(&agent, Duration::from_secs(5), "the heartbeat key", async || heartbeat_exists(&store, "node-1").await.then_some(())).await;

    // A task as a controller writes it: runs and answers HTTP with its version.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    store.create(demo_task("t-web-1", "node-1", "shoal/demo:1.0", &[("DEMO_LISTEN", &listen)])).await.unwrap();
    let running = observation_in(&store, &agent, "t-web-1", TaskState::Running).await;
    let pid = running.spec.pid.expect("a running task has a pid");
    assert_eq!(running.spec.network, shoal_crd::TaskNetwork::Host);
    let body = eventually(&agent, Duration::from_secs(10), "the demo to answer", async || http_get(port)).await;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!((answer["version"].as_str(), answer["task"].as_str(), answer["node"].as_str()), (Some("1.0"), Some("t-web-1"), Some("node-1")));
    let task = store.require::<Task>("t-web-1").await.unwrap();
    assert_eq!(task.status, None, "the agent never writes the Task's key");

    // kill -9 the agent: the heartbeat expires, the task keeps running.
    agent.kill();
    let killed = Instant::now();
    eventually(&agent, Duration::from_secs(TTL + 2), "the heartbeat key to expire", async || (!heartbeat_exists(&store, "node-1").await).then_some(())).await;
    assert!(killed.elapsed() <= Duration::from_secs(TTL + 1), "heartbeat outlived the agent by {:?}", killed.elapsed());
    assert!(alive(pid), "the task died with its agent");

    // Restart: the same process is re-adopted, not restarted.
    agent.spawn();
    eventually(&agent, Duration::from_secs(10), "a new heartbeat", async || heartbeat_exists(&store, "node-1").await.then_some(())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let readopted = observation_in(&store, &agent, "t-web-1", TaskState::Running).await;
    assert_eq!(readopted.spec.pid, Some(pid));
    assert!(alive(pid));
    assert!(http_get(port).is_some_and(|b| b.contains("\"1.0\"")));

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
    store.create(demo_task("t-bad-1", "node-2", "shoal/demo:2.0", &[("DEMO_FAIL_START", "true"), ("DEMO_LISTEN", &listen)])).await.unwrap();
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
