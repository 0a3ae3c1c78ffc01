//! The real `shoal controller` process against a real store (the embedded
//! `shoal store` and Debian's etcd): services get tasks, the scheduler
//! spreads them, drained and dead nodes lose their tasks, constraints hold,
//! unplaceable tasks say why, and of two controllers only the leader acts.
//!
//! Nodes here are a test fixture standing in for agents: the test writes
//! the Node object and keeps a heartbeat key alive on a lease, as
//! `shoal agent` does. No task runs; these tests are about the control
//! plane's decisions.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shoal_crd::{Availability, Node, NodeSpec, NodeState, NodeStatus, Platform, Service, ServiceSpec, Task, TaskState};
use shoal_store::client::election::leader;
use shoal_store::client::lease::Lease;
use shoal_store::client::{Store, StoreConfig};
use shoal_store::proto::PutRequest;
use support::StoreUnderTest;
use tokio::time::Instant;

/// Lease TTL of the fixture's heartbeats and of the controllers' election.
const TTL: i64 = 2;
const CONVERGE: Duration = Duration::from_secs(15);

/// A store, a client, fixture nodes and controller processes; everything
/// is killed on drop, also when the test fails.
struct Cluster {
    store: StoreUnderTest,
    client: Store,
    controllers: Vec<(String, Child, PathBuf)>,
    heartbeats: BTreeMap<String, Lease>,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(store: StoreUnderTest) -> Self {
        let client = Store::connect(&StoreConfig::for_endpoint(store.endpoint())).await.expect("connect");
        let dir = tempfile::Builder::new().prefix("shoal-orchestration-").tempdir().unwrap();
        Self { store, client, controllers: Vec::new(), heartbeats: BTreeMap::new(), dir }
    }

    /// Starts a `shoal controller` named `identity`.
    fn controller(&mut self, identity: &str) {
        let log = self.dir.path().join(format!("{identity}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["controller", "--etcd-endpoints", &self.store.endpoint(), "--identity", identity, "--lease-ttl", &TTL.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("starting shoal controller");
        self.controllers.push((identity.to_string(), child, log));
    }

    fn kill_controller(&mut self, identity: &str) {
        let (_, child, _) = self.controllers.iter_mut().find(|(id, _, _)| id == identity).unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log_of(&self, identity: &str) -> String {
        let (_, _, log) = self.controllers.iter().find(|(id, _, _)| id == identity).unwrap();
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// Every controller's log, for failure messages.
    fn logs(&self) -> String {
        self.controllers.iter().map(|(id, _, _)| format!("--- {id} ---\n{}", self.log_of(id))).collect()
    }

    /// Fixture standing in for an agent: registers node `name` with
    /// `labels` and keeps its heartbeat key alive on a lease.
    async fn node(&mut self, name: &str, labels: &[(&str, &str)]) {
        let mut node = Node::new(name, NodeSpec::default());
        node.spec.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        node.status = Some(NodeStatus {
            hostname: format!("host-{name}"),
            platform: Platform { os: "linux".into(), architecture: "x86_64".into() },
            cpus: 4,
            memory: 8 << 30,
            addr: "127.0.0.1".into(),
            ..Default::default()
        });
        self.client.create(node).await.expect("registering the fixture node");
        self.heartbeat(name).await;
    }

    /// Writes `name`'s heartbeat key on a fresh lease.
    async fn heartbeat(&mut self, name: &str) {
        let etcd = self.client.etcd();
        let lease = Lease::grant(etcd, TTL).await.expect("lease");
        let key = shoal_crd::heartbeat_key(self.client.prefix(), name);
        let put = PutRequest { key: key.into_bytes(), value: b"{}".to_vec(), lease: lease.id(), ..Default::default() };
        etcd.unary(etcd.kv().put(put)).await.expect("heartbeat put");
        self.heartbeats.insert(name.to_string(), lease);
    }

    /// The agent of `name` dies: its lease is revoked, the key goes now.
    async fn kill_heartbeat(&mut self, name: &str) {
        self.heartbeats.remove(name).unwrap().revoke().await.expect("revoke");
    }

    async fn service(&self, name: &str, replicas: u64, constraints: &[&str]) {
        let mut spec = ServiceSpec::from_image("demo");
        spec.replicas = Some(replicas);
        spec.placement.constraints = constraints.iter().map(|c| c.to_string()).collect();
        self.client.create(Service::new(name, spec)).await.expect("creating the service");
    }

    async fn edit<R: shoal_crd::Resource>(&self, name: &str, change: impl Fn(&mut R)) {
        for _ in 0..10 {
            let mut object = self.client.require::<R>(name).await.unwrap();
            change(&mut object);
            if self.client.update(object).await.is_ok() {
                return;
            }
        }
        panic!("could not update {name}");
    }

    async fn tasks(&self, service: &str) -> Vec<Task> {
        let (tasks, _) = self.client.list::<Task>().await.unwrap();
        tasks.into_iter().filter(|t| t.spec.service_name == service).collect()
    }

    /// The tasks of `service` desired running.
    async fn live(&self, service: &str) -> Vec<Task> {
        self.tasks(service).await.into_iter().filter(|t| t.spec.desired_state == TaskState::Running).collect()
    }

    /// Waits until `check` holds of `service`'s tasks; panics with them and the logs otherwise.
    async fn until(&self, service: &str, what: &str, check: impl Fn(&[Task]) -> bool) -> Vec<Task> {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let tasks = self.tasks(service).await;
            if check(&tasks) {
                return tasks;
            }
            if Instant::now() > deadline {
                let dump: Vec<String> = tasks.iter().map(describe).collect();
                panic!("{what}: not reached within {CONVERGE:?}\ntasks:\n{}\n{}", dump.join("\n"), self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn node_state(&self, name: &str) -> NodeState {
        self.client.require::<Node>(name).await.unwrap().status.unwrap_or_default().state
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.controllers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn describe(t: &Task) -> String {
    let status = t.status.clone().unwrap_or_default();
    format!("{} {} node={:?} desired={:?} state={:?} {}", t.metadata.name, t.display_name(), t.spec.node_id, t.spec.desired_state, status.state, status.message)
}

/// Desired-running tasks per node (unassigned ones under "").
fn per_node(tasks: &[Task]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.spec.desired_state == TaskState::Running) {
        *counts.entry(t.spec.node_id.clone().unwrap_or_default()).or_default() += 1;
    }
    counts
}

fn all_assigned(tasks: &[Task], n: usize) -> bool {
    let live: Vec<&Task> = tasks.iter().filter(|t| t.spec.desired_state == TaskState::Running).collect();
    live.len() == n && live.iter().all(|t| t.spec.node_id.is_some())
}

/// A cluster with a controller and three ready fixture nodes n1..n3
/// (zones a, b, b).
async fn three_nodes(store: StoreUnderTest) -> Cluster {
    let mut cluster = Cluster::start(store).await;
    cluster.controller("c1");
    for (name, zone) in [("n1", "a"), ("n2", "b"), ("n3", "b")] {
        cluster.node(name, &[("zone", zone)]).await;
    }
    cluster
}

async fn ten_replicas_spread_four_three_three_and_scaling_down_stops_the_highest_slots(store: StoreUnderTest) {
    let cluster = three_nodes(store).await;
    cluster.service("web", 10, &[]).await;
    let tasks = cluster.until("web", "10 tasks assigned", |t| all_assigned(t, 10)).await;
    let mut spread: Vec<usize> = per_node(&tasks).into_values().collect();
    spread.sort();
    assert_eq!(spread, [3, 3, 4], "{:?}", per_node(&tasks));
    let mut slots: Vec<u64> = tasks.iter().filter_map(|t| t.spec.slot).collect();
    slots.sort();
    assert_eq!(slots, (1..=10).collect::<Vec<_>>(), "one task per slot");
    assert!(tasks.iter().any(|t| t.display_name() == "web.3"));

    cluster.edit::<Service>("web", |s| s.spec.replicas = Some(4)).await;
    let tasks = cluster.until("web", "slots 5..10 told to stop", |t| t.iter().filter(|t| t.spec.desired_state == TaskState::Running).count() == 4).await;
    for task in &tasks {
        let running = task.spec.desired_state == TaskState::Running;
        assert_eq!(running, task.spec.slot.unwrap() <= 4, "{}", describe(task));
    }
    let service = cluster.client.require::<Service>("web").await.unwrap();
    assert_eq!(service.status.unwrap_or_default().desired_replicas, 4);
}

async fn a_drained_node_loses_its_tasks_to_the_others(store: StoreUnderTest) {
    let cluster = three_nodes(store).await;
    cluster.service("web", 6, &[]).await;
    cluster.until("web", "6 tasks assigned", |t| all_assigned(t, 6)).await;
    cluster.edit::<Node>("n1", |n| n.spec.availability = Availability::Drain).await;
    let tasks = cluster.until("web", "n1's tasks replaced", |t| all_assigned(t, 6) && !per_node(t).contains_key("n1")).await;
    assert_eq!(per_node(&tasks).values().sum::<usize>(), 6);
    let stopped = tasks.iter().filter(|t| t.spec.node_id.as_deref() == Some("n1")).count();
    assert_eq!(stopped, 2, "n1's two tasks are kept as history, told to stop");
}

async fn a_node_whose_heartbeat_goes_is_down_and_its_tasks_move_and_stay_stopped_when_it_returns(store: StoreUnderTest) {
    let mut cluster = three_nodes(store).await;
    cluster.service("web", 6, &[]).await;
    cluster.until("web", "6 tasks assigned", |t| all_assigned(t, 6)).await;
    let revoked = Instant::now();
    cluster.kill_heartbeat("n2").await;
    cluster.until("web", "n2's tasks replaced", |t| all_assigned(t, 6) && !per_node(t).contains_key("n2")).await;
    assert!(revoked.elapsed() < Duration::from_secs(5), "replaced within {:?}", revoked.elapsed());
    assert_eq!(cluster.node_state("n2").await, NodeState::Down);

    cluster.heartbeat("n2").await;
    let deadline = Instant::now() + CONVERGE;
    while cluster.node_state("n2").await != NodeState::Ready {
        assert!(Instant::now() < deadline, "n2 never ready again\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live = cluster.live("web").await;
    assert_eq!(live.len(), 6, "no slot got a second task: {:?}", live.iter().map(describe).collect::<Vec<_>>());
    assert!(!per_node(&live).contains_key("n2"), "the stale tasks stay stopped");
}

async fn constraints_hold_and_unplaceable_tasks_say_why(store: StoreUnderTest) {
    let cluster = three_nodes(store).await;
    cluster.service("zoned", 3, &["node.labels.zone==a"]).await;
    let tasks = cluster.until("zoned", "3 tasks on zone a", |t| all_assigned(t, 3)).await;
    assert_eq!(per_node(&tasks), BTreeMap::from([("n1".to_string(), 3)]));

    cluster.service("nowhere", 2, &["node.labels.zone==c"]).await;
    let expected = "no suitable node (3 nodes had constraint mismatch)";
    let tasks = cluster
        .until("nowhere", "pending with a reason", |t| {
            t.len() == 2 && t.iter().all(|t| t.status.as_ref().is_some_and(|s| s.state == TaskState::Pending && s.message == expected))
        })
        .await;
    assert!(tasks.iter().all(|t| t.spec.node_id.is_none()));

    // A node that matches arrives: the pending tasks are placed on it.
    let mut cluster = cluster;
    cluster.node("n4", &[("zone", "c")]).await;
    let tasks = cluster.until("nowhere", "placed on n4", |t| all_assigned(t, 2)).await;
    assert_eq!(per_node(&tasks), BTreeMap::from([("n4".to_string(), 2)]));
}

async fn of_two_controllers_only_the_leader_acts_and_a_standby_takes_over(store: StoreUnderTest) {
    let mut cluster = Cluster::start(store).await;
    cluster.controller("c1");
    cluster.controller("c2");
    cluster.node("n1", &[]).await;
    cluster.service("web", 3, &[]).await;
    cluster.until("web", "3 tasks assigned", |t| all_assigned(t, 3)).await;
    let first = leader(&cluster.client, "controllers").await.unwrap().expect("a leader");
    let standby = if first == "c1" { "c2" } else { "c1" };
    assert!(cluster.log_of(&first).contains("decision"), "{}", cluster.logs());
    assert!(!cluster.log_of(standby).contains("decision"), "the standby decided something:\n{}", cluster.logs());

    cluster.kill_controller(&first);
    cluster.edit::<Service>("web", |s| s.spec.replicas = Some(5)).await;
    cluster.until("web", "the standby scales up", |t| all_assigned(t, 5)).await;
    assert_eq!(leader(&cluster.client, "controllers").await.unwrap().as_deref(), Some(standby));
}

/// Runs each scenario against the embedded store and against etcd.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::StoreUnderTest::embedded()).await } )*
        }
        mod etcd {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::StoreUnderTest::etcd()).await } )*
        }
    };
}

on_both_backends!(
    ten_replicas_spread_four_three_three_and_scaling_down_stops_the_highest_slots,
    a_drained_node_loses_its_tasks_to_the_others,
    a_node_whose_heartbeat_goes_is_down_and_its_tasks_move_and_stay_stopped_when_it_returns,
    constraints_hold_and_unplaceable_tasks_say_why,
    of_two_controllers_only_the_leader_acts_and_a_standby_takes_over,
);
