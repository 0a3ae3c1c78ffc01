//! The endpoints loop in a real `shoal controller` process against a real
//! store (the embedded `shoal store` and Debian's etcd): services get a
//! VIP and published ports, a port is published by one service only,
//! backends follow tasks becoming ready and a task told to stop leaves
//! them at once, and a deleted service's Endpoints go (freeing its VIP).
//!
//! A fixture stands in for the agent: it writes a Node, keeps its
//! heartbeat key alive on a lease, and reports tasks running (with their
//! namespace addresses) as TaskObservations. No task runs.

mod support;

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shoal_controllers::endpoints::allocate::default_service_cidr;
use shoal_crd::{
    EndpointMode, Endpoints, Node, NodeSpec, NodeState, NodeStatus, PortConfig, PortProtocol, PublishMode, Service,
    ServiceSpec, Task, TaskNetwork, TaskObservation, TaskObservationSpec, TaskState, TaskStatus,
};
use shoal_store::client::lease::Lease;
use shoal_store::client::Store;
use shoal_store::proto::PutRequest;
use support::{connect, StoreUnderTest};
use tokio::time::Instant;

const TTL: i64 = 2;
const CONVERGE: Duration = Duration::from_secs(15);

/// A `shoal controller` process (killed on drop) and a client, with one
/// ready fixture node `n1` at 192.0.2.10.
struct Fixture {
    client: Store,
    controller: Child,
    log: tempfile::NamedTempFile,
    _heartbeat: Lease,
}

impl Fixture {
    async fn start(store: &StoreUnderTest) -> Self {
        let client = connect(store).await;
        let log = tempfile::NamedTempFile::new().unwrap();
        let controller = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["controller", "--etcd-endpoints", &store.endpoint(), "--lease-ttl", &TTL.to_string()])
            .args(["--service-cidr", "10.96.0.0/16"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("starting shoal controller");
        let mut node = Node::new("n1", NodeSpec::default());
        node.status = Some(NodeStatus { addr: "192.0.2.10".into(), cpus: 4, memory: 8 << 30, ..Default::default() });
        client.create(node).await.expect("registering n1");
        let lease = Lease::grant(client.etcd(), TTL).await.expect("lease");
        let key = shoal_crd::heartbeat_key(client.prefix(), "n1").into_bytes();
        let put = PutRequest { key, value: b"{}".to_vec(), lease: lease.id(), ..Default::default() };
        client.etcd().unary(client.etcd().kv().put(put)).await.expect("heartbeat");
        let fixture = Self { client, controller, log, _heartbeat: lease };
        let f = &fixture;
        f.until("n1 ready", || async move {
            f.client.require::<Node>("n1").await.ok()?.status?.state.eq(&NodeState::Ready).then_some(())
        })
        .await;
        fixture
    }

    /// Polls `check` until it yields something; panics with the controller's log after [`CONVERGE`].
    async fn until<T, F: std::future::Future<Output = Option<T>>>(&self, what: &str, check: impl Fn() -> F) -> T {
        let deadline = Instant::now() + CONVERGE;
        loop {
            if let Some(found) = check().await {
                return found;
            }
            let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            assert!(Instant::now() < deadline, "{what}: not reached within {CONVERGE:?}\n{log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn service(&self, name: &str, replicas: u64, mode: EndpointMode, ports: &[(u16, Option<u16>)]) {
        let mut spec = ServiceSpec::from_image("demo");
        spec.replicas = Some(replicas);
        spec.endpoint_mode = mode;
        spec.ports = ports
            .iter()
            .map(|&(target, published)| PortConfig {
                target,
                published,
                protocol: PortProtocol::Tcp,
                mode: PublishMode::Ingress,
            })
            .collect();
        self.client.create(Service::new(name, spec)).await.expect("creating the service");
    }

    /// The Endpoints of `service` once `check` holds of them.
    async fn endpoints(&self, service: &str, what: &str, check: impl Fn(&Endpoints) -> bool) -> Endpoints {
        let check = &check;
        self.until(what, || async move { self.client.get::<Endpoints>(service).await.ok()?.filter(|e| check(e)) }).await
    }

    /// `service`'s `status.endpointError` once `check` holds of it.
    async fn endpoint_error(&self, service: &str, check: impl Fn(&str) -> bool) -> String {
        let what = format!("{service}'s endpoint error");
        let check = &check;
        let error = || async move {
            Some(self.client.require::<Service>(service).await.ok()?.status?.endpoint_error).filter(|e| check(e))
        };
        self.until(&what, error).await
    }

    async fn tasks(&self, service: &str) -> Vec<Task> {
        let (tasks, _) = self.client.list::<Task>().await.unwrap();
        tasks.into_iter().filter(|t| t.spec.service_name == service && t.spec.node_id.is_some()).collect()
    }

    /// Reports `task` running at `address` (or on the host network), as its agent would.
    async fn running(&self, task: &Task, address: Option<&str>) {
        let spec = TaskObservationSpec {
            node_id: "n1".into(),
            task_uid: task.metadata.uid.clone(),
            network: if address.is_some() { TaskNetwork::Namespace } else { TaskNetwork::Host },
            addresses: address.map(|a| vec![format!("{a}/24")]).unwrap_or_default(),
            ..Default::default()
        };
        let mut observation = TaskObservation::new(task.metadata.name.clone(), spec);
        observation.status =
            Some(TaskStatus { state: TaskState::Running, timestamp: Some(chrono::Utc::now()), ..Default::default() });
        self.client.create(observation).await.expect("observation");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.controller.kill();
        let _ = self.controller.wait();
    }
}

fn vip(endpoints: &Endpoints) -> Option<Ipv4Addr> {
    endpoints.spec.vip.as_deref().map(|v| v.parse().expect("a VIP is an IPv4 address"))
}

fn published(endpoints: &Endpoints) -> Vec<Option<u16>> {
    endpoints.spec.ports.iter().map(|p| p.published).collect()
}

async fn vips_and_ports_are_allocated_once_and_freed_with_the_service(store: &StoreUnderTest) {
    let f = Fixture::start(store).await;
    f.service("web", 0, EndpointMode::Vip, &[(80, None), (81, Some(8080))]).await;
    let web = f.endpoints("web", "web's VIP and ports", |e| e.spec.vip.is_some() && e.spec.ports.len() == 2).await;
    let web_vip = vip(&web).unwrap();
    assert!(default_service_cidr().contains(&web_vip) && web_vip != Ipv4Addr::new(10, 96, 0, 1), "{web_vip}");
    let auto = web.spec.ports[0].published.unwrap();
    assert!((30000..=32767).contains(&auto), "auto-published port {auto}");
    assert_eq!(web.spec.ports[1].published, Some(8080));

    f.service("api", 0, EndpointMode::Vip, &[(90, Some(8080)), (91, Some(9090))]).await;
    let error = f.endpoint_error("api", |e| !e.is_empty()).await;
    assert_eq!(error, "port 8080/tcp is already published by service web");
    let api = f.endpoints("api", "api's Endpoints", |_| true).await;
    assert_eq!(published(&api), [Some(9090)], "no Endpoints port for the one it could not get");
    assert_ne!(vip(&api), Some(web_vip));

    f.service("db", 0, EndpointMode::Dnsrr, &[(5432, Some(5432))]).await;
    let error = f.endpoint_error("db", |e| !e.is_empty()).await;
    assert!(error.contains("ingress-published ports need endpoint mode vip"), "{error}");
    let db = f.endpoints("db", "db's Endpoints", |_| true).await;
    assert_eq!((db.spec.vip, db.spec.ports.len()), (None, 0));

    f.client.delete::<Service>("web", None).await.unwrap();
    f.until("web's Endpoints deleted", || async {
        f.client.get::<Endpoints>("web").await.ok()?.is_none().then_some(())
    })
    .await;
    f.endpoint_error("api", str::is_empty).await;
    f.endpoints("api", "8080 handed to api once web is gone", |e| published(e) == [Some(8080), Some(9090)]).await;
    f.service("fresh", 0, EndpointMode::Vip, &[]).await;
    let fresh = f.endpoints("fresh", "fresh's VIP", |e| e.spec.vip.is_some()).await;
    assert_eq!(vip(&fresh), Some(web_vip), "the deleted service's VIP is free again");
}

async fn backends_follow_readiness_and_a_stopping_task_leaves_first(store: &StoreUnderTest) {
    let f = Fixture::start(store).await;
    f.service("web", 3, EndpointMode::Vip, &[(80, None)]).await;
    let tasks = f.until("3 tasks placed", || async { Some(f.tasks("web").await).filter(|t| t.len() == 3) }).await;
    let empty = f.endpoints("web", "web's Endpoints", |_| true).await;
    assert!(empty.spec.backends.is_empty(), "no task is ready yet: {:?}", empty.spec.backends);

    f.running(&tasks[0], Some("10.200.0.2")).await;
    f.running(&tasks[1], Some("10.200.0.3")).await;
    f.running(&tasks[2], None).await;
    let ready = f.endpoints("web", "3 backends", |e| e.spec.backends.len() == 3).await;
    let mut addresses: Vec<&str> = ready.spec.backends.iter().map(|b| b.address.as_str()).collect();
    addresses.sort();
    assert_eq!(addresses, ["10.200.0.2", "10.200.0.3", "192.0.2.10"], "host network: the node's address");

    // Scale down: slot 3 is told to stop. It leaves the backends while its
    // agent still reports it running — nothing else has happened to it yet.
    f.until("scaled to 2", || async {
        let mut service = f.client.require::<Service>("web").await.ok()?;
        service.spec.replicas = Some(2);
        f.client.update(service).await.ok()
    })
    .await;
    let stopping = tasks.iter().find(|t| t.spec.slot == Some(3)).unwrap();
    let left = f.endpoints("web", "2 backends", |e| e.spec.backends.len() == 2).await;
    assert!(left.spec.backends.iter().all(|b| b.task != stopping.metadata.name), "{:?}", left.spec.backends);
    let task = f.client.require::<Task>(&stopping.metadata.name).await.unwrap();
    assert_eq!(task.spec.desired_state, TaskState::Shutdown);
    let observed = f.client.require::<TaskObservation>(&stopping.metadata.name).await.unwrap();
    assert_eq!(observed.status.unwrap().state, TaskState::Running, "still running when it left the backends");
    let log = std::fs::read_to_string(f.log.path()).unwrap();
    assert!(log.contains("backends 3 → 2") && log.contains("stopping"), "one decision line says why:\n{log}");
}

async_on_both_backends!(
    vips_and_ports_are_allocated_once_and_freed_with_the_service,
    backends_follow_readiness_and_a_stopping_task_leaves_first
);
