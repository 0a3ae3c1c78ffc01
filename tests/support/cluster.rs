//! A multi-node test cluster of real processes: a store (the embedded
//! `shoal store` or Debian's etcd), one `shoal controller` and N
//! `shoal agent`s (node-1, node-2, …) running real task processes, driven
//! through the `shoal` CLI as an operator would.
//!
//! As root every agent runs in a network namespace of its own
//! (entered with `nsenter --net`), joined by a veth pair to a bridge in the root
//! namespace with a subnet of its own per cluster, so concurrent tests
//! never share one; the agent advertises its veth address. The store keeps
//! listening on loopback (that is what [`StoreUnderTest`] does) and a small
//! TCP relay on the bridge address forwards the agents' connections to it —
//! simpler than routing namespaces to the host's loopback. Without root the
//! agents share the loopback. Either way the agents' tasks use
//! `--network host`: they share their agent's network (the namespace when
//! root), which is all these scheduling tests need.
//!
//! [`Cluster::start_routed`] puts every namespace (agents' and clients')
//! on a network segment of its own instead, `10.204.<index>.0/24`, all
//! joined by a router namespace (`<bridge>-router`, IP forwarding on): no
//! two nodes share an L2 segment, so `ip route get` from one to another
//! names a gateway. The router reaches the store relay over the bridge and
//! masquerades what it forwards there, so the host needs no route to the
//! segments (which every routed cluster numbers alike).
//!
//! Dropping a [`Cluster`] — also when a test panicked — SIGKILLs the
//! controller, the agents, their shims and task processes (every process
//! whose command line or working directory is under the cluster's temp dir,
//! plus, as root, every process left in an agent's namespace), waits for
//! them to exit, then deletes the veths, namespaces and the bridge; the
//! store goes with its own Drop. Namespaces a killed run left behind are
//! deleted by the next cluster that claims the same bridge name.

use super::quiet;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use shoal_crd::{Node, NodeState, Task, TaskObservation, TaskState};

use super::{Backend, StoreUnderTest};

/// Heartbeat lease TTL of every agent: a dead agent's node is down after this.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(3);
/// Lease TTL of the controller's leader election.
const CONTROLLER_LEASE_TTL: u64 = 2;
/// Lines of each log shown in a state dump.
/// (`SHOAL_TEST_LOG_TAIL=N` shows more, to dig into a failure.)
const LOG_TAIL: usize = 40;

/// One row of `shoal service ps -o json`: a task and its agent's observation.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskRow {
    pub task: Task,
    #[serde(default)]
    pub observation: Option<TaskObservation>,
}

impl TaskRow {
    pub fn id(&self) -> &str {
        &self.task.metadata.name
    }

    pub fn node(&self) -> Option<&str> {
        self.task.spec.node_id.as_deref()
    }

    /// The agent's observation of this very task (not of an earlier one of the same name).
    fn current_observation(&self) -> Option<&TaskObservation> {
        self.observation.as_ref().filter(|o| o.spec.task_uid.is_empty() || o.spec.task_uid == self.task.metadata.uid)
    }

    /// What the agent last observed.
    pub fn observed_state(&self) -> Option<TaskState> {
        Some(self.current_observation()?.status.as_ref()?.state)
    }

    pub fn pid(&self) -> Option<u32> {
        self.current_observation()?.spec.pid
    }

    /// Desired running, observed running by its agent, and its process alive.
    pub fn is_running(&self) -> bool {
        self.task.spec.desired_state == TaskState::Running
            && self.observed_state() == Some(TaskState::Running)
            && self.pid().is_some_and(alive)
    }

    /// One line for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {} node={} desired={:?} observed={:?} pid={:?}",
            self.id(),
            self.task.display_name(),
            self.node().unwrap_or("-"),
            self.task.spec.desired_state,
            self.observed_state(),
            self.pid()
        )
    }
}

/// Whether `pid` is a live process (exists and is not a zombie): kill(pid, 0) by /proc.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

/// One `shoal agent` process (restartable) and its data dir.
struct Agent {
    name: String,
    labels: Vec<String>,
    dir: PathBuf,
    /// The agent's network namespace (root only).
    netns: Option<String>,
    advertise: Ipv4Addr,
    child: Option<Child>,
}

impl Agent {
    fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The root-only network: a bridge, its subnet, the agents' namespaces and
/// the relay to the store. Dropping it deletes the veths, namespaces and
/// bridge (after the cluster has killed every process in them).
struct Network {
    bridge: String,
    /// Third octet of 10.203.X.0/24.
    subnet: u8,
    /// (namespace, host-side veth) per agent, recorded before they are created.
    /// Routed: the veth is the router's end, in the router's namespace.
    namespaces: Vec<(String, String)>,
    relay: Option<Relay>,
    /// The router's namespace, when every namespace has a segment of its own.
    router: Option<String>,
}

impl Network {
    /// Claims the first free bridge `shoale2e<N>` (creating it is the
    /// atomic claim, so concurrent test processes never share a subnet),
    /// addresses it 10.203.N.1/24 and relays its `store` port to the store.
    fn create(store: &StoreUnderTest, topology: Topology) -> Self {
        let subnet = (0..=250u8)
            .find(|n| quiet(&["ip", "link", "add", &format!("shoale2e{n}"), "type", "bridge"]))
            .expect("no free shoale2e<N> bridge name (leftovers from killed runs? `ip link del` them)");
        let bridge = format!("shoale2e{subnet}");
        let gateway = Ipv4Addr::new(10, 203, subnet, 1);
        // Owned (deleted on drop) from here on, even if the rest fails.
        let mut network = Network { relay: None, bridge, subnet, namespaces: Vec::new(), router: None };
        network.delete_leftovers();
        run(&["ip", "addr", "add", &format!("{gateway}/24"), "dev", &network.bridge]);
        run(&["ip", "link", "set", &network.bridge, "up"]);
        if topology == Topology::Routed {
            network.add_router();
        }
        let upstream: SocketAddr = store.endpoint().trim_start_matches("http://").parse().expect("the store's address");
        network.relay = Some(Relay::start(gateway.into(), upstream));
        network
    }

    /// Namespaces and veths named after our bridge belong to no live
    /// cluster (the bridge is the claim): a killed run's, or a namespace
    /// whose last process was still dying when its cluster deleted it.
    fn delete_leftovers(&self) {
        let links = Command::new("ip").args(["-o", "link", "show"]).output().map(|o| o.stdout).unwrap_or_default();
        let veth_prefix = format!("{}v", self.bridge);
        for link in String::from_utf8_lossy(&links).lines().filter_map(|l| l.split(": ").nth(1)) {
            let name = link.split('@').next().unwrap_or_default();
            if name.strip_prefix(&veth_prefix).is_some_and(|i| i.chars().all(|c| c.is_ascii_digit())) {
                quiet(&["ip", "link", "del", name]);
            }
        }
        quiet(&["ip", "link", "del", &self.uplink()]);
        let netns_prefix = format!("{}-", self.bridge);
        for entry in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.strip_prefix(&netns_prefix).is_some_and(|i| i == "router" || i.chars().all(|c| c.is_ascii_digit()))
            {
                quiet(&["ip", "netns", "del", &name]);
            }
        }
    }

    /// The router's veth on the bridge.
    fn uplink(&self) -> String {
        format!("{}r", self.bridge)
    }

    /// The router: a namespace on the bridge at 10.203.N.254 forwarding
    /// between the segments and masquerading towards the bridge (the relay).
    fn add_router(&mut self) {
        let router = format!("{}-router", self.bridge);
        let uplink = self.uplink();
        self.router = Some(router.clone());
        run(&["ip", "netns", "add", &router]);
        run(&["ip", "link", "add", &uplink, "type", "veth", "peer", "name", "up0", "netns", &router]);
        run(&["ip", "link", "set", &uplink, "master", &self.bridge, "up"]);
        run(&["ip", "-n", &router, "link", "set", "lo", "up"]);
        run(&["ip", "-n", &router, "addr", "add", &format!("10.203.{}.254/24", self.subnet), "dev", "up0"]);
        run(&["ip", "-n", &router, "link", "set", "up0", "up"]);
        run(&["ip", "netns", "exec", &router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        let nft = |command: &str| run(&["ip", "netns", "exec", &router, "nft", command]);
        nft("add table ip router");
        nft("add chain ip router postrouting { type nat hook postrouting priority srcnat; policy accept; }");
        nft("add rule ip router postrouting oifname \"up0\" masquerade");
    }

    /// A namespace for agent `index` with `eth0` at 10.203.N.(10+index) on
    /// the bridge, or at 10.204.(index).10 on a segment of its own when routed.
    fn add_namespace(&mut self, index: usize) -> (String, Ipv4Addr) {
        if let Some(router) = self.router.clone() {
            return self.add_routed_namespace(index, &router);
        }
        let netns = format!("{}-{index}", self.bridge);
        let veth = format!("{}v{index}", self.bridge);
        let address = Ipv4Addr::new(10, 203, self.subnet, 10 + index as u8);
        self.namespaces.push((netns.clone(), veth.clone()));
        run(&["ip", "netns", "add", &netns]);
        run(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns]);
        run(&["ip", "link", "set", &veth, "master", &self.bridge, "up"]);
        run(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        run(&["ip", "-n", &netns, "addr", "add", &format!("{address}/24"), "dev", "eth0"]);
        run(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
        (netns, address)
    }

    /// A namespace for `index` on segment 10.204.(index).0/24, whose only
    /// other end is the router (at .1, the namespace's default route).
    fn add_routed_namespace(&mut self, index: usize, router: &str) -> (String, Ipv4Addr) {
        let segment = u8::try_from(index).expect("fewer than 256 namespaces on a routed network");
        let netns = format!("{}-{index}", self.bridge);
        let veth = format!("s{index}");
        let (gateway, address) = (Ipv4Addr::new(10, 204, segment, 1), Ipv4Addr::new(10, 204, segment, 10));
        self.namespaces.push((netns.clone(), veth.clone()));
        run(&["ip", "netns", "add", &netns]);
        run(&["ip", "-n", router, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns]);
        run(&["ip", "-n", router, "addr", "add", &format!("{gateway}/24"), "dev", &veth]);
        run(&["ip", "-n", router, "link", "set", &veth, "up"]);
        run(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        run(&["ip", "-n", &netns, "addr", "add", &format!("{address}/24"), "dev", "eth0"]);
        run(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", &netns, "route", "add", "default", "via", &gateway.to_string()]);
        (netns, address)
    }

    fn store_endpoint(&self) -> String {
        format!("http://{}", self.relay.as_ref().expect("the relay runs once the network is up").addr)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for (netns, veth) in &self.namespaces {
            // Deleting one end of a veth pair deletes both at once; deleting
            // the namespace alone would leave them until its last process exits.
            match &self.router {
                Some(router) => quiet(&["ip", "-n", router, "link", "del", veth]),
                None => quiet(&["ip", "link", "del", veth]),
            };
            quiet(&["ip", "netns", "del", netns]);
        }
        if let Some(router) = &self.router {
            quiet(&["ip", "link", "del", &self.uplink()]);
            quiet(&["ip", "netns", "del", router]);
        }
        quiet(&["ip", "link", "del", &self.bridge]);
    }
}

/// Forwards TCP connections from `addr` to the store, byte for byte.
struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(ip: IpAddr, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind((ip, 0)).expect("binding the store relay");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for downstream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let (Ok(down), Ok(up)) = (downstream, TcpStream::connect(upstream)) else { continue };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                pipe(down.try_clone().unwrap(), up.try_clone().unwrap());
                pipe(up, down);
            }
        });
        Relay { addr, stop }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        // wakes accept()
    }
}

/// Copies `from` to `to` on a thread until EOF, then half-closes `to`.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// How the root-only network joins the namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// All on one bridge: one L2 segment.
    Bridged,
    /// Each on a segment of its own behind one router.
    Routed,
}

/// A store, a controller and agents; all torn down on drop.
pub struct Cluster {
    /// Killed by its own Drop, after [`Cluster`]'s has ended every other process.
    store: StoreUnderTest,
    dir: tempfile::TempDir,
    controller: Option<Child>,
    agents: Vec<Agent>,
    network: Option<Network>,
    /// The agents' `--network`: `host` (tasks share their agent's namespace) or `namespace`.
    task_network: &'static str,
}

impl Cluster {
    /// A store of `backend`, a controller, and one agent per entry of
    /// `labels` (each `k=v,k=v` or empty), all nodes ready.
    ///
    /// Setting up the test network occasionally leaves one agent's
    /// namespace unable to reach the store relay (seen about once in 100
    /// cluster starts; the cause is in this harness's veth/relay setup and
    /// still open). Such a start is reported on stderr with its state dump,
    /// torn down and made once more from scratch; a second failure panics.
    /// Nothing a test asserts runs before this point.
    pub fn start(backend: Backend, labels: &[&str]) -> Self {
        Self::start_with(backend, labels, "host", Topology::Bridged)
    }

    /// [`Cluster::start`] with the routing mesh as users get it (root
    /// only): every task in a namespace of its own on its agent's bridge,
    /// and each agent's data plane and routes to the other nodes' tasks.
    pub fn start_mesh(backend: Backend, labels: &[&str]) -> Self {
        assert!(shoal_agent::sys::is_root(), "the mesh cluster needs root (CI runs as root)");
        Self::start_with(backend, labels, "namespace", Topology::Bridged)
    }

    /// [`Cluster::start_mesh`] with no two nodes on one L2 segment (root
    /// only): every agent, and every client of [`Cluster::add_client`], on
    /// a segment of its own behind one router, as nodes in different racks
    /// or subnets are.
    pub fn start_routed(backend: Backend, labels: &[&str]) -> Self {
        assert!(shoal_agent::sys::is_root(), "the routed cluster needs root (CI runs as root)");
        Self::start_with(backend, labels, "namespace", Topology::Routed)
    }

    fn start_with(backend: Backend, labels: &[&str], task_network: &'static str, topology: Topology) -> Self {
        match Self::try_start(backend, labels, task_network, topology) {
            Ok(cluster) => cluster,
            Err(dump) => {
                eprintln!("cluster start failed (nodes not ready in 20s); starting a fresh cluster once more:\n{dump}");
                Self::try_start(backend, labels, task_network, topology)
                    .unwrap_or_else(|dump| panic!("timed out waiting for every node ready (twice)\n{dump}"))
            }
        }
    }

    fn try_start(
        backend: Backend,
        labels: &[&str],
        task_network: &'static str,
        topology: Topology,
    ) -> Result<Self, String> {
        let store = StoreUnderTest::of(backend);
        let network = shoal_agent::sys::is_root().then(|| Network::create(&store, topology));
        let dir = tempfile::Builder::new().prefix("shoal-cluster-").tempdir().expect("creating a temp dir");
        let mut cluster = Cluster { store, dir, controller: None, agents: Vec::new(), network, task_network };
        cluster.start_controller();
        for l in labels {
            cluster.add_agent(l);
        }
        let ready = |c: &Cluster| {
            c.nodes().iter().filter(|n| n.status.as_ref().is_some_and(|s| s.state == NodeState::Ready)).count()
                == labels.len()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready(&cluster) {
            if Instant::now() > deadline {
                return Err(cluster.dump());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(cluster)
    }

    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    fn start_controller(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("controller.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["--etcd-endpoints", &self.store.endpoint(), "controller", "--identity", "c1"])
            .args(["--lease-ttl", &CONTROLLER_LEASE_TTL.to_string()])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting shoal controller");
        self.controller = Some(child);
    }

    /// SIGKILLs the controller (no resignation: its lease must expire) and
    /// starts it again; its log continues.
    pub fn restart_controller(&mut self) {
        if let Some(mut controller) = self.controller.take() {
            let _ = controller.kill();
            let _ = controller.wait();
        }
        self.start_controller();
    }

    /// Starts one more agent, `node-<n>`, with `labels` (`k=v,k=v`); its index.
    pub fn add_agent(&mut self, labels: &str) -> usize {
        let index = self.agents.len();
        let name = format!("node-{}", index + 1);
        let dir = self.dir.path().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let (netns, advertise) = match &mut self.network {
            Some(network) => {
                let (netns, address) = network.add_namespace(index);
                (Some(netns), address)
            }
            None => (None, Ipv4Addr::LOCALHOST),
        };
        let labels = labels.split(',').filter(|l| !l.is_empty()).map(String::from).collect();
        self.agents.push(Agent { name, labels, dir, netns, advertise, child: None });
        self.spawn_agent(index);
        index
    }

    fn spawn_agent(&mut self, index: usize) {
        let endpoint = match &self.network {
            Some(network) => network.store_endpoint(),
            None => self.store.endpoint(),
        };
        let agent = &mut self.agents[index];
        let mut command = match &agent.netns {
            // nsenter execs the agent (the child's pid is the agent's) and,
            // unlike `ip netns exec`, makes no mount namespace holding copies
            // of every namespace mount, which would keep them from being deleted.
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{netns}")).args(["--", env!("CARGO_BIN_EXE_shoal")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_shoal")),
        };
        command
            .args(["--etcd-endpoints", &endpoint, "agent", "--name", &agent.name])
            .args(["--advertise-addr", &agent.advertise.to_string(), "--network", self.task_network])
            .args(["--heartbeat-ttl", &HEARTBEAT_TTL.as_secs().to_string()])
            .arg("--data-dir")
            .arg(agent.dir.join("data"));
        for label in &agent.labels {
            command.args(["--labels", label]);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(agent.log_path()).unwrap();
        let child = command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting shoal agent");
        agent.child = Some(child);
    }

    pub fn agent_name(&self, index: usize) -> &str {
        &self.agents[index].name
    }

    /// The address agent `index` advertises (its namespace's, as root).
    pub fn agent_address(&self, index: usize) -> Ipv4Addr {
        self.agents[index].advertise
    }

    /// The network namespace agent `index` runs in (root only).
    pub fn agent_netns(&self, index: usize) -> Option<&str> {
        self.agents[index].netns.as_deref()
    }

    /// A namespace on the cluster's network with no agent in it — a client
    /// outside the cluster, as root (on a segment of its own when routed);
    /// its name and address.
    pub fn add_client(&mut self) -> (String, Ipv4Addr) {
        let network = self.network.as_mut().expect("client namespaces need root");
        let index = 200 + network.namespaces.len();
        network.add_namespace(index)
    }

    /// SIGKILL agent `index`: no shutdown, no lease revoke; its tasks keep running.
    pub fn kill_agent(&mut self, index: usize) {
        self.agents[index].kill();
    }

    /// SIGTERM agent `index` and wait for it to exit (up to 20 s, then
    /// SIGKILL): a clean shutdown, its data plane removed; tasks keep running.
    pub fn stop_agent(&mut self, index: usize) {
        let Some(mut child) = self.agents[index].child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agent {} did not stop within 20s of SIGTERM\n{}", self.agents[index].name, self.dump());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts agent `index` again on its data dir (killing it first if it runs).
    pub fn restart_agent(&mut self, index: usize) {
        self.agents[index].kill();
        self.spawn_agent(index);
    }

    /// The directory agent `node` keeps task `id`'s records in.
    pub fn task_dir(&self, node: &str, id: &str) -> PathBuf {
        let agent = self.agents.iter().find(|a| a.name == node).unwrap_or_else(|| panic!("no agent {node}"));
        agent.dir.join("data/tasks").join(id)
    }

    /// Runs `shoal --etcd-endpoints STORE ARGS…`.
    pub fn shoal(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["--etcd-endpoints", &self.store.endpoint()])
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("running shoal")
    }

    /// Stdout of `shoal ARGS…`; panics with its stderr and a state dump when it fails.
    pub fn shoal_ok(&self, args: &[&str]) -> String {
        let out = self.shoal(args);
        if !out.status.success() {
            panic!("shoal {args:?} failed ({}): {}\n{}", out.status, String::from_utf8_lossy(&out.stderr), self.dump());
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `service ps SERVICE -o json`: every task of the service, history included.
    pub fn tasks(&self, service: &str) -> Vec<TaskRow> {
        let json = self.shoal_ok(&["service", "ps", service, "-o", "json"]);
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("service ps -o json: {e}: {json}"))
    }

    /// The tasks of `service` that really run ([`TaskRow::is_running`]).
    pub fn running(&self, service: &str) -> Vec<TaskRow> {
        self.tasks(service).into_iter().filter(TaskRow::is_running).collect()
    }

    /// Running tasks of `service` per node.
    pub fn tasks_by_node(&self, service: &str) -> BTreeMap<String, usize> {
        count_by_node(&self.running(service))
    }

    /// `node ls -o json`.
    pub fn nodes(&self) -> Vec<Node> {
        let json = self.shoal_ok(&["node", "ls", "-o", "json"]);
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("node ls -o json: {e}: {json}"))
    }

    pub fn node_state(&self, name: &str) -> NodeState {
        let nodes = self.nodes();
        let node =
            nodes.iter().find(|n| n.metadata.name == name).unwrap_or_else(|| panic!("no node {name}\n{}", self.dump()));
        node.status.as_ref().map(|s| s.state).unwrap_or_default()
    }

    /// Polls `cond` every 200 ms; panics with `what`, the time waited and a state dump after `timeout`.
    pub fn wait_until(&self, timeout: Duration, what: &str, mut cond: impl FnMut(&Cluster) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if cond(self) {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}\n{}", self.dump());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `node ls`, `service ls`, `service ps` of every service, and the tails of every log.
    pub fn dump(&self) -> String {
        let text = |args: &[&str]| {
            let out = self.shoal(args);
            format!(
                "$ shoal {}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let mut dump = format!("===== state dump ({:?} store) =====\n", self.backend());
        dump += &text(&["node", "ls"]);
        dump += &text(&["service", "ls"]);
        let services = self.shoal(&["service", "ls", "-o", "json"]);
        let services: Vec<serde_json::Value> = serde_json::from_slice(&services.stdout).unwrap_or_default();
        for name in services.iter().filter_map(|s| s["metadata"]["name"].as_str()) {
            dump += &text(&["service", "ps", "--no-trunc", name]);
        }
        dump += &format!("----- controller log (tail) -----\n{}", tail(&self.dir.path().join("controller.log")));
        for agent in &self.agents {
            dump += &format!("----- {} log (tail) -----\n{}", agent.name, tail(&agent.log_path()));
        }
        dump + &format!("----- store log (tail) -----\n{}", tail_of(&self.store.log()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut controller) = self.controller.take() {
            let _ = controller.kill();
            let _ = controller.wait();
        }
        for agent in &mut self.agents {
            agent.kill();
        }
        // Shims and tasks outlive their agent by design.
        let mut killed = kill_processes_under(self.dir.path());
        for (netns, _) in self.network.iter().flat_map(|n| &n.namespaces) {
            let pids = Command::new("ip").args(["netns", "pids", netns]).output().map(|o| o.stdout).unwrap_or_default();
            for pid in String::from_utf8_lossy(&pids).split_whitespace().filter_map(|p| p.parse().ok()) {
                sigkill(pid);
                killed.push(pid);
            }
        }
        // SIGKILL is asynchronous: let them go before their namespaces (Network's Drop).
        let deadline = Instant::now() + Duration::from_secs(3);
        while killed.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Tasks' own namespaces (`--network namespace`) are named after the task.
        for agent in &self.agents {
            for task in std::fs::read_dir(agent.dir.join("data/tasks")).into_iter().flatten().flatten() {
                quiet(&["ip", "netns", "del", &format!("shoal-{}", task.file_name().to_string_lossy())]);
            }
        }
    }
}

/// Running tasks per node.
pub fn count_by_node(rows: &[TaskRow]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for row in rows {
        *counts.entry(row.node().unwrap_or_default().to_string()).or_default() += 1;
    }
    counts
}

/// SIGKILLs every process whose command line or working directory is under `dir`; their pids.
pub fn kill_processes_under(dir: &Path) -> Vec<u32> {
    let mut killed = Vec::new();
    let needle = format!("{}/", dir.display());
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let in_cmdline = String::from_utf8_lossy(&cmdline).contains(&needle);
        let in_cwd = std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir));
        if (in_cmdline || in_cwd) && pid != std::process::id() {
            sigkill(pid);
            killed.push(pid);
        }
    }
    killed
}

fn sigkill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
}

/// The last [`LOG_TAIL`] lines of a file.
fn tail(path: &Path) -> String {
    tail_of(&std::fs::read_to_string(path).unwrap_or_default())
}

/// The last [`LOG_TAIL`] lines of `text`.
fn tail_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tail = std::env::var("SHOAL_TEST_LOG_TAIL").ok().and_then(|n| n.parse().ok()).unwrap_or(LOG_TAIL);
    lines[lines.len().saturating_sub(tail)..].join("\n") + "\n"
}

/// Runs a command that must succeed.
fn run(argv: &[&str]) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(out.status.success(), "{argv:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}
