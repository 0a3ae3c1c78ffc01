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

use shoal_crd::{
    Availability, Node, NodeSpec, NodeState, NodeStatus, Platform, RestartCondition, RestartPolicy, Service,
    ServiceMode, ServiceSpec, Task, TaskObservation, TaskObservationSpec, TaskState, TaskStatus,
};
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
            .args([
                "controller",
                "--etcd-endpoints",
                &self.store.endpoint(),
                "--identity",
                identity,
                "--lease-ttl",
                &TTL.to_string(),
            ])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
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

    /// Waits until the controller has marked `name` ready.
    async fn until_ready(&self, name: &str) {
        let deadline = Instant::now() + CONVERGE;
        while self.node_state(name).await != NodeState::Ready {
            assert!(Instant::now() < deadline, "{name} never became ready\n{}", self.logs());
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
    format!(
        "{} {} node={:?} desired={:?} state={:?} {}",
        t.metadata.name,
        t.display_name(),
        t.spec.node_id,
        t.spec.desired_state,
        status.state,
        status.message
    )
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
    for name in ["n1", "n2", "n3"] {
        cluster.until_ready(name).await;
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
    let tasks = cluster
        .until("web", "slots 5..10 told to stop", |t| {
            t.iter().filter(|t| t.spec.desired_state == TaskState::Running).count() == 4
        })
        .await;
    for task in &tasks {
        let running = task.spec.desired_state == TaskState::Running;
        assert_eq!(running, task.spec.slot.unwrap() <= 4, "{}", describe(task));
    }
    let deadline = Instant::now() + CONVERGE;
    loop {
        let status = cluster.client.require::<Service>("web").await.unwrap().status.unwrap_or_default();
        if status.desired_replicas == 4 && status.observed_generation == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "service status never caught up: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_drained_node_loses_its_tasks_to_the_others(store: StoreUnderTest) {
    let cluster = three_nodes(store).await;
    cluster.service("web", 6, &[]).await;
    cluster.until("web", "6 tasks assigned", |t| all_assigned(t, 6)).await;
    cluster.edit::<Node>("n1", |n| n.spec.availability = Availability::Drain).await;
    let tasks =
        cluster.until("web", "n1's tasks replaced", |t| all_assigned(t, 6) && !per_node(t).contains_key("n1")).await;
    assert_eq!(per_node(&tasks).values().sum::<usize>(), 6);
    let stopped = tasks.iter().filter(|t| t.spec.node_id.as_deref() == Some("n1")).count();
    assert_eq!(stopped, 2, "n1's two tasks are kept as history, told to stop");
}

async fn a_node_whose_heartbeat_goes_is_down_and_its_tasks_move_and_stay_stopped_when_it_returns(
    store: StoreUnderTest,
) {
    let mut cluster = three_nodes(store).await;
    cluster.service("web", 6, &[]).await;
    cluster.until("web", "6 tasks assigned", |t| all_assigned(t, 6)).await;
    let revoked = Instant::now();
    cluster.kill_heartbeat("n2").await;
    cluster.until("web", "n2's tasks replaced", |t| all_assigned(t, 6) && !per_node(t).contains_key("n2")).await;
    assert!(revoked.elapsed() < Duration::from_secs(5), "replaced within {:?}", revoked.elapsed());
    assert_eq!(cluster.node_state("n2").await, NodeState::Down, "{}", cluster.logs());

    cluster.heartbeat("n2").await;
    cluster.until_ready("n2").await;
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
            t.len() == 2
                && t.iter()
                    .all(|t| t.status.as_ref().is_some_and(|s| s.state == TaskState::Pending && s.message == expected))
        })
        .await;
    assert!(tasks.iter().all(|t| t.spec.node_id.is_none()));

    // A node that matches arrives: the pending tasks are placed on it.
    let mut cluster = cluster;
    cluster.node("n4", &[("zone", "c")]).await;
    cluster.until_ready("n4").await;
    let tasks = cluster.until("nowhere", "placed on n4", |t| all_assigned(t, 2)).await;
    assert_eq!(per_node(&tasks), BTreeMap::from([("n4".to_string(), 2)]));
}

async fn of_two_controllers_only_the_leader_acts_and_a_standby_takes_over(store: StoreUnderTest) {
    let mut cluster = Cluster::start(store).await;
    cluster.controller("c1");
    cluster.controller("c2");
    cluster.node("n1", &[]).await;
    cluster.until_ready("n1").await;
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

/// Fixture standing in for the agent of the task's node: reports `state`.
async fn observe(cluster: &Cluster, task: &Task, state: TaskState, exit_code: Option<i32>) {
    let spec = TaskObservationSpec {
        node_id: task.spec.node_id.clone().unwrap_or_default(),
        task_uid: task.metadata.uid.clone(),
        ..Default::default()
    };
    let mut observation = TaskObservation::new(task.metadata.name.clone(), spec);
    observation.status =
        Some(TaskStatus { state, exit_code, timestamp: Some(chrono::Utc::now()), ..Default::default() });
    match cluster.client.get::<TaskObservation>(&task.metadata.name).await.unwrap() {
        Some(current) => {
            observation.metadata = current.metadata;
            cluster.client.update(observation).await.expect("observation update");
        }
        None => {
            cluster.client.create(observation).await.expect("observation create");
        }
    }
}

async fn a_failed_task_is_restarted_after_the_delay_until_max_attempts(store: StoreUnderTest) {
    let cluster = three_nodes(store).await;
    let mut spec = ServiceSpec::from_image("demo");
    spec.replicas = Some(1);
    spec.restart_policy = RestartPolicy {
        condition: RestartCondition::OnFailure,
        delay: shoal_crd::Duration::from_secs(1),
        max_attempts: 1,
        window: shoal_crd::Duration::default(),
    };
    cluster.client.create(Service::new("crashy", spec)).await.unwrap();
    let first = cluster.until("crashy", "1 task assigned", |t| all_assigned(t, 1)).await.remove(0);
    observe(&cluster, &first, TaskState::Running, None).await;
    observe(&cluster, &first, TaskState::Failed, Some(1)).await;
    let failed_at = Instant::now();
    let tasks = cluster.until("crashy", "a successor for slot 1", |t| t.len() == 2 && all_assigned(t, 1)).await;
    let waited = failed_at.elapsed();
    assert!(waited >= Duration::from_millis(900), "restarted after {waited:?}, before the 1 s delay");
    let second = tasks.iter().find(|t| t.metadata.name != first.metadata.name).unwrap().clone();
    assert_eq!(second.spec.slot, Some(1));
    let old = tasks.iter().find(|t| t.metadata.name == first.metadata.name).unwrap();
    assert_eq!(old.spec.desired_state, TaskState::Shutdown, "the failed task is told to stop");

    // The successor fails too: max attempts (1) reached, no third task.
    observe(&cluster, &second, TaskState::Failed, Some(1)).await;
    cluster.until("crashy", "slot 1 given up", |t| t.iter().all(|t| t.spec.desired_state == TaskState::Shutdown)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(cluster.tasks("crashy").await.len(), 2, "no restart beyond max attempts\n{}", cluster.logs());
}

async fn a_global_service_follows_nodes_joining_and_leaving(store: StoreUnderTest) {
    let mut cluster = three_nodes(store).await;
    let mut spec = ServiceSpec::from_image("demo");
    spec.mode = ServiceMode::Global;
    cluster.client.create(Service::new("mon", spec)).await.unwrap();
    let one_each = |nodes: &[&str]| {
        let nodes: BTreeMap<String, usize> = nodes.iter().map(|n| (n.to_string(), 1)).collect();
        move |t: &[Task]| per_node(t) == nodes
    };
    cluster.until("mon", "one task per node", one_each(&["n1", "n2", "n3"])).await;
    cluster.node("n4", &[]).await;
    cluster.until("mon", "a task on the new node", one_each(&["n1", "n2", "n3", "n4"])).await;
    cluster.kill_heartbeat("n1").await;
    cluster.until("mon", "n1's task stopped", one_each(&["n2", "n3", "n4"])).await;
}

async fn a_removed_services_tasks_are_stopped_then_deleted(store: StoreUnderTest) {
    let cluster = three_nodes(store).await;
    cluster.service("web", 3, &[]).await;
    cluster.service("stuck", 1, &["node.labels.zone==nowhere"]).await;
    let tasks = cluster.until("web", "3 tasks assigned", |t| all_assigned(t, 3)).await;
    cluster.until("stuck", "a pending task", |t| t.len() == 1).await;
    cluster.client.delete::<Service>("web", None).await.unwrap();
    cluster.client.delete::<Service>("stuck", None).await.unwrap();
    cluster.until("stuck", "the never-placed task deleted at once", |t| t.is_empty()).await;
    cluster
        .until("web", "all told to stop", |t| {
            t.len() == 3 && t.iter().all(|t| t.spec.desired_state == TaskState::Shutdown)
        })
        .await;
    for task in &tasks {
        observe(&cluster, task, TaskState::Shutdown, None).await;
    }
    cluster.until("web", "all deleted once stopped", |t| t.is_empty()).await;
}

async fn a_new_leader_trusts_heartbeats_over_a_stale_down_state(store: StoreUnderTest) {
    let mut cluster = three_nodes(store).await;
    cluster.service("web", 3, &[]).await;
    let before = cluster.until("web", "3 tasks assigned", |t| all_assigned(t, 3)).await;
    cluster.kill_controller("c1");
    // While nobody leads, n1's stored state goes stale: down, though its
    // heartbeat is alive (say its agent came back in the meantime).
    cluster.edit::<Node>("n1", |n| n.status.as_mut().unwrap().state = NodeState::Down).await;
    cluster.controller("c2");
    cluster.until_ready("n1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = cluster.tasks("web").await;
    let names = |tasks: &[Task]| tasks.iter().map(|t| t.metadata.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before), "no task was replaced:\n{}", cluster.logs());
    assert!(after.iter().all(|t| t.spec.desired_state == TaskState::Running));
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
    a_failed_task_is_restarted_after_the_delay_until_max_attempts,
    a_global_service_follows_nodes_joining_and_leaving,
    a_removed_services_tasks_are_stopped_then_deleted,
    a_new_leader_trusts_heartbeats_over_a_stale_down_state,
);
