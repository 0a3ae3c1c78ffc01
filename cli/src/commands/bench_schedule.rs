//! `shoal bench schedule`: how fast the real controllers turn services into
//! running tasks, against the embedded store and a real etcd in one run.
//!
//! Per backend: a fresh store (the embedded one in this process on a temp
//! dir; etcd spawned on a temp dir and free loopback ports, or the one
//! `--etcd-endpoints` names, under a throw-away key prefix), N simulated
//! nodes, the real controllers (`shoal_controllers::run_with`, leader
//! election included) in this process on a connection of their own, then
//! the services, created at once. Measured: tasks/s from just before the
//! services are created until every task is observed running, and each
//! task's latency from its `metadata.createdAt` to the arrival of the watch
//! event of its running observation. A report, never pass/fail.
//!
//! # What the simulated agents do
//! - Register N Node objects (platform, 64 CPUs, 256 GiB) and keep a
//!   heartbeat key per node alive on a lease, so the node loop marks them
//!   ready exactly as it does real agents.
//! - Watch Tasks with ONE process-wide watcher (the store client's typed
//!   watcher, the same code path agents use), dispatch each task assigned
//!   to a simulated node and desired running to that node's state, and
//!   acknowledge it once: a TaskObservation (spec: node, task uid; status:
//!   running) created with compare-and-swap, batched up to 100 per
//!   transaction with a few transactions in flight.
//!
//! # What they don't
//! - Run processes, walk through accepted/preparing/starting, probe health,
//!   stop tasks or delete observations: one write per task, straight to
//!   running.
//! - Renew one lease per node: every heartbeat key hangs on one shared
//!   lease, so N agents' renewal traffic is not part of the load.
//! - Open a connection per node: all simulated agents share one.
//!
//! The controllers' decision log goes to stderr as usual (`RUST_LOG=warn`
//! quiets it); Event objects are not stored (no event sink is installed).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use shoal_controllers::writes::Batch;
use shoal_controllers::Settings;
use shoal_crd::{
    heartbeat_key, Node, NodeSpec, NodeState, NodeStatus, Platform, Service, ServiceSpec, Task, TaskObservation,
    TaskObservationSpec, TaskState, TaskStatus,
};
use shoal_store::client::keys::prefix_range_end;
use shoal_store::client::lease::Lease;
use shoal_store::client::watcher::{watcher, WatchEvent};
use shoal_store::client::{Store, StoreConfig};
use shoal_store::proto::{request_op::Request as Op, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};
use shoal_store::server::EmbeddedStore;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::store_flags::StoreFlags;

/// Flags of `shoal bench schedule`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleBenchArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Tasks in total (e.g. --nodes 100 --tasks 3000 for a quick run).
    #[arg(long, default_value_t = 30_000)]
    pub tasks: usize,
    /// Services the tasks are split over (default: one per 300 tasks).
    #[arg(long)]
    pub services: Option<usize>,
    /// Only the embedded store; no etcd comparison.
    #[arg(long)]
    pub no_etcd: bool,
    /// Give up on a backend after this many seconds (reported as incomplete).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// What one run creates.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub nodes: usize,
    pub tasks: usize,
    pub services: usize,
}

impl Sizes {
    /// Replicas of service `i` (the remainder goes to the first services).
    fn replicas(&self, i: usize) -> u64 {
        (self.tasks / self.services + usize::from(i < self.tasks % self.services)) as u64
    }
}

/// Which etcd to compare with.
#[derive(Debug, Clone)]
pub enum EtcdChoice {
    /// Spawn `etcd` from PATH if there is one.
    Spawn,
    /// Use this cluster (under a throw-away prefix, removed afterwards).
    Existing(StoreConfig),
    Skip,
}

/// One backend's figures.
#[derive(Debug, Clone)]
pub struct Row {
    pub backend: &'static str,
    pub tasks: usize,
    /// Tasks observed running by the end.
    pub running: usize,
    pub seconds: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl Row {
    pub fn rate(&self) -> f64 {
        self.running as f64 / self.seconds.max(1e-9)
    }
}

/// Both rows; `etcd` is `Err(why not)` when it was not measured.
#[derive(Debug)]
pub struct Report {
    pub sizes: Sizes,
    pub embedded: Row,
    pub etcd: Result<Row, String>,
}

/// Runs the benchmark and prints the comparison.
pub async fn run(flags: &StoreFlags, args: ScheduleBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes > 0 && args.tasks > 0, "--nodes and --tasks must be positive");
    let services = args.services.unwrap_or(args.tasks.div_ceil(300)).clamp(1, args.tasks);
    let sizes = Sizes { nodes: args.nodes, tasks: args.tasks, services };
    // The global --etcd-endpoints has a default; only an explicit one means "use it".
    let explicit = std::env::args().any(|a| a.starts_with("--etcd-endpoints"))
        || std::env::var_os("SHOAL_ETCD_ENDPOINTS").is_some();
    let etcd = match (args.no_etcd, explicit) {
        (true, _) => EtcdChoice::Skip,
        (false, true) => EtcdChoice::Existing(flags.config()),
        (false, false) => EtcdChoice::Spawn,
    };
    let report = bench(sizes, etcd, Duration::from_secs(args.timeout)).await?;
    print!("{}", report.table());
    Ok(())
}

/// Runs `sizes` against the embedded store, then against etcd.
pub async fn bench(sizes: Sizes, etcd: EtcdChoice, timeout: Duration) -> anyhow::Result<Report> {
    let embedded = {
        let dir = Scratch::new("embedded")?;
        let store = EmbeddedStore::open(dir.path())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let config = StoreConfig::for_endpoint(format!("http://{}", listener.local_addr()?));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(store.serve(listener, stopped.map(|_| ())));
        let row = run_backend("embedded", &config, sizes, timeout).await.context("embedded store");
        // Graceful shutdown waits for every connection to close; a watcher
        // task still parked on its stream would hold one open forever.
        let _ = stop.send(());
        let abort = server.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), server).await.is_err() {
            abort.abort();
        }
        row?
    };
    let etcd = match etcd {
        EtcdChoice::Skip => Err("skipped (--no-etcd)".to_string()),
        EtcdChoice::Existing(mut config) => {
            config.prefix = format!("/shoal-bench-{}-{}", std::process::id(), Utc::now().timestamp_millis());
            let row = run_backend("etcd", &config, sizes, timeout).await.context("etcd");
            remove_prefix(&config).await;
            Ok(row?)
        }
        EtcdChoice::Spawn => match shoal_store::bench::find_etcd() {
            None => Err("no etcd on PATH".to_string()),
            Some(binary) => {
                let dir = Scratch::new("etcd")?;
                let (mut child, endpoint) = shoal_store::bench::spawn_etcd(&binary, dir.path()).await?;
                let row =
                    run_backend("etcd", &StoreConfig::for_endpoint(endpoint), sizes, timeout).await.context("etcd");
                let _ = child.kill().await;
                Ok(row?)
            }
        },
    };
    Ok(Report { sizes, embedded, etcd })
}

/// One backend: nodes, controllers, simulated agents, then the services.
async fn run_backend(
    backend: &'static str,
    config: &StoreConfig,
    sizes: Sizes,
    timeout: Duration,
) -> anyhow::Result<Row> {
    // Separate connections, as separate processes would have.
    let client = Store::connect(config).await?;
    let agents = Store::connect(config).await?;
    let names: Vec<String> = (0..sizes.nodes).map(|i| format!("sim-{i:05}")).collect();
    let _lease = register_nodes(&agents, &names).await?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shutdown = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let mut background = JoinSet::new();
    let controllers = spawn_controllers(config.clone(), format!("bench-{backend}"), shutdown())?;
    background.spawn(simulate_agents(agents, names.iter().cloned().collect(), shutdown()));
    let outcome = async {
        until_nodes_ready(&client, sizes.nodes).await.context("waiting for the simulated nodes to be ready")?;
        measure(backend, &client, sizes, timeout).await
    }
    .await;
    let _ = stop.send(true);
    if tokio::time::timeout(Duration::from_secs(10), async { while background.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        background.abort_all();
    }
    let _ = tokio::task::spawn_blocking(move || controllers.join()).await;
    outcome
}

/// The controller manager on a runtime (and thread) of its own, as if it
/// were the separate `shoal controller` process.
fn spawn_controllers(
    config: StoreConfig,
    identity: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("controllers").build()?;
    let settings = Settings { identity, ..Settings::new("bench") };
    Ok(std::thread::spawn(move || {
        runtime.block_on(async move {
            match Store::connect(&config).await {
                Ok(store) => shoal_controllers::run_with(store, settings, shutdown).await,
                Err(err) => tracing::error!(error = %err, "benchmark controllers cannot connect"),
            }
        })
    }))
}

/// Creates the Node objects and their heartbeat keys (on one lease).
async fn register_nodes(store: &Store, names: &[String]) -> anyhow::Result<Lease> {
    let mut batch = Batch::new();
    for name in names {
        let mut node = Node::new(name.clone(), NodeSpec::default());
        node.status = Some(NodeStatus {
            hostname: name.clone(),
            platform: Platform { os: "linux".into(), architecture: "x86_64".into() },
            cpus: 64,
            memory: 256 << 30,
            addr: "127.0.0.1".into(),
            agent_version: "bench".into(),
            ..Default::default()
        });
        batch.create(store, node);
    }
    batch.commit(store, "simulated nodes").await?;
    let lease = Lease::grant(store.etcd(), 10).await?;
    for chunk in names.chunks(100) {
        let success = chunk
            .iter()
            .map(|name| {
                let key = heartbeat_key(store.prefix(), name).into_bytes();
                RequestOp {
                    request: Some(Op::RequestPut(PutRequest {
                        key,
                        value: b"{}".to_vec(),
                        lease: lease.id(),
                        ..Default::default()
                    })),
                }
            })
            .collect();
        let txn = TxnRequest { compare: vec![], success, failure: vec![] };
        store.etcd().unary(store.etcd().kv().txn(txn)).await?;
    }
    Ok(lease)
}

async fn until_nodes_ready(client: &Store, nodes: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (listed, _) = client.list::<Node>().await?;
        let ready = listed.iter().filter(|n| n.status.as_ref().is_some_and(|s| s.state == NodeState::Ready)).count();
        if ready == nodes {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {ready} of {nodes} nodes ready after 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The simulated agents of `nodes`: one task watcher dispatching to each
/// node's state, acknowledgements written in batches.
async fn simulate_agents(store: Store, nodes: HashSet<String>, shutdown: impl Future<Output = ()>) {
    // Node → uids of the tasks its agent has acknowledged.
    let mut acknowledged: HashMap<String, HashSet<String>> = nodes.into_iter().map(|n| (n, HashSet::new())).collect();
    let (acks, pending) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_observations(store.clone(), pending));
    let mut events = watcher::<Task>(store);
    let mut consider = |task: Task| {
        let Some(seen) = task.spec.node_id.as_ref().and_then(|n| acknowledged.get_mut(n)) else { return };
        if task.spec.desired_state == TaskState::Running && seen.insert(task.metadata.uid.clone()) {
            let _ = acks.send(running(&task));
        }
    };
    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => break,
            event = events.next() => event,
        };
        match event {
            Some(Ok(WatchEvent::Restarted(tasks))) => tasks.into_iter().for_each(&mut consider),
            Some(Ok(WatchEvent::Applied(task))) => consider(task),
            Some(Ok(WatchEvent::Deleted(_)) | Err(_)) => {}
            None => break,
        }
    }
    writer.abort();
}

/// The observation an agent writes once `task` runs.
fn running(task: &Task) -> TaskObservation {
    let spec = TaskObservationSpec {
        node_id: task.spec.node_id.clone().unwrap_or_default(),
        task_uid: task.metadata.uid.clone(),
        ..Default::default()
    };
    let now = Utc::now();
    let mut observation = TaskObservation::new(task.metadata.name.clone(), spec);
    observation.status = Some(TaskStatus {
        state: TaskState::Running,
        timestamp: Some(now),
        started_at: Some(now),
        ..Default::default()
    });
    observation
}

/// Writes queued observations, up to 100 per transaction and a few
/// transactions in flight.
async fn write_observations(store: Store, mut pending: mpsc::UnboundedReceiver<TaskObservation>) {
    const PER_TXN: usize = 100;
    const IN_FLIGHT: usize = 4;
    let mut writing = JoinSet::new();
    while let Some(first) = pending.recv().await {
        let mut batch = Batch::new();
        batch.create(&store, first);
        while batch.len() < PER_TXN {
            let Ok(next) = pending.try_recv() else { break };
            batch.create(&store, next);
        }
        if writing.len() >= IN_FLIGHT {
            writing.join_next().await;
        }
        let store = store.clone();
        writing.spawn(async move {
            if let Err(err) = batch.commit(&store, "simulated task observations").await {
                tracing::warn!(error = %err, "simulated agents: observations not written");
            }
        });
    }
}

/// Creates the services and waits until every task is observed running.
async fn measure(backend: &'static str, client: &Store, sizes: Sizes, timeout: Duration) -> anyhow::Result<Row> {
    let mut events = futures::stream::select(
        watcher::<Task>(client.clone()).map(|e| e.map(Seen::Task)),
        watcher::<TaskObservation>(client.clone()).map(|e| e.map(Seen::Observation)),
    );
    // Both watchers have listed (an empty store) before the clock starts.
    for _ in 0..2 {
        events.next().await.context("watch ended")??;
    }
    let started = Instant::now();
    let mut batch = Batch::new();
    for i in 0..sizes.services {
        let mut spec = ServiceSpec::from_image("shoal/demo:bench");
        spec.replicas = Some(sizes.replicas(i));
        batch.create(client, Service::new(format!("bench-{i:04}"), spec));
    }
    batch.commit(client, "benchmark services").await?;

    let mut created: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut running: HashMap<String, (DateTime<Utc>, Instant)> = HashMap::new();
    let deadline = started + timeout;
    while running.len() < sizes.tasks {
        let event = match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => break,
            Ok(event) => event.context("watch ended")?,
        };
        match event {
            Ok(Seen::Task(WatchEvent::Applied(task))) => {
                let at = task.metadata.created_at.unwrap_or_else(Utc::now);
                created.entry(task.metadata.name).or_insert(at);
            }
            Ok(Seen::Observation(WatchEvent::Applied(o))) => {
                if o.status.is_some_and(|s| s.state == TaskState::Running) {
                    running.entry(o.metadata.name).or_insert((Utc::now(), Instant::now()));
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "benchmark watch failed; retrying"),
        }
    }
    let last = running.values().map(|(_, at)| *at).max().unwrap_or_else(Instant::now);
    let mut latencies: Vec<Duration> = running
        .iter()
        .filter_map(|(name, (at, _))| Some((*at - *created.get(name)?).to_std().unwrap_or_default()))
        .collect();
    latencies.sort();
    let seconds = last.duration_since(started).as_secs_f64();
    Ok(Row {
        backend,
        tasks: sizes.tasks,
        running: running.len(),
        seconds,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}

#[allow(clippy::large_enum_variant)] // short-lived watch events, moved once each
enum Seen {
    Task(WatchEvent<Task>),
    Observation(WatchEvent<TaskObservation>),
}

/// A directory under the system temp dir, removed when dropped (the CLI
/// does not depend on `tempfile` outside its tests).
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(what: &str) -> anyhow::Result<Self> {
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let path = std::env::temp_dir().join(format!("shoal-bench-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    match sorted.len() {
        0 => Duration::ZERO,
        n => sorted[((n - 1) as f64 * p).round() as usize],
    }
}

/// Deletes everything under a throw-away prefix (best effort).
async fn remove_prefix(config: &StoreConfig) {
    let Ok(store) = Store::connect(config).await else { return };
    let key = format!("{}/", config.prefix).into_bytes();
    let delete = DeleteRangeRequest { range_end: prefix_range_end(&key), key, ..Default::default() };
    if let Err(err) = store.etcd().unary(store.etcd().kv().delete_range(delete)).await {
        tracing::warn!(prefix = %config.prefix, error = %err, "could not remove the benchmark's keys");
    }
}

impl Report {
    /// The comparison table.
    pub fn table(&self) -> String {
        let s = self.sizes;
        let mut out = format!(
            "scheduling benchmark: {} nodes, {} tasks in {} services (create → all running)\n",
            s.nodes, s.tasks, s.services
        );
        out += &format!(
            "{:<14} {:>8} {:>8} {:>9} {:>9} {:>10} {:>10}\n",
            "backend", "tasks", "running", "seconds", "tasks/s", "p50 ms", "p99 ms"
        );
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        for row in [Ok(&self.embedded), self.etcd.as_ref()] {
            match row {
                Ok(r) => {
                    out += &format!(
                        "{:<14} {:>8} {:>8} {:>9.2} {:>9.0} {:>10.1} {:>10.1}{}\n",
                        r.backend,
                        r.tasks,
                        r.running,
                        r.seconds,
                        r.rate(),
                        ms(r.p50),
                        ms(r.p99),
                        if r.running < r.tasks { "  (incomplete: timed out)" } else { "" }
                    );
                }
                Err(why) => out += &format!("{:<14} n/a: {why}\n", "etcd"),
            }
        }
        if let Ok(etcd) = &self.etcd {
            let e = &self.embedded;
            let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}x", a / b) } else { "-".to_string() };
            out += &format!(
                "{:<14} {:>8} {:>8} {:>9} {:>9} {:>10} {:>10}\n",
                "embedded/etcd",
                "",
                "",
                ratio(e.seconds, etcd.seconds),
                ratio(e.rate(), etcd.rate()),
                ratio(ms(e.p50), ms(etcd.p50)),
                ratio(ms(e.p99), ms(etcd.p99))
            );
        }
        out += "goal on 2 cores: >= 2000 tasks/s, p99 <= 1000 ms (reported, not asserted)\n";
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_task_of_a_tiny_run_reaches_running_on_each_backend() {
        let sizes = Sizes { nodes: 5, tasks: 50, services: 3 };
        let report = bench(sizes, EtcdChoice::Spawn, Duration::from_secs(60)).await.expect("benchmark");
        assert_eq!(report.embedded.running, 50, "{}", report.table());
        match &report.etcd {
            Ok(etcd) => assert_eq!(etcd.running, 50, "{}", report.table()),
            Err(why) => assert!(shoal_store::bench::find_etcd().is_none(), "etcd present but not measured: {why}"),
        }
        let table = report.table();
        assert!(
            table.lines().any(|l| l.starts_with("embedded ")) && table.lines().any(|l| l.starts_with("etcd ")),
            "{table}"
        );
    }

    #[test]
    fn replicas_split_the_tasks_with_the_remainder_first() {
        let sizes = Sizes { nodes: 1, tasks: 10, services: 3 };
        assert_eq!((0..3).map(|i| sizes.replicas(i)).collect::<Vec<_>>(), [4, 3, 3]);
    }
}
