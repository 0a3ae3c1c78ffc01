//! The agent's main loop: register the node, heartbeat, watch Tasks, and
//! keep one [`worker`](crate::worker) per task assigned to this node.
//!
//! Tasks are matched by `spec.nodeId` equal to the node's name (or its
//! uid). The Task cache holds every task of the cluster: etcd cannot filter
//! a watch by value, so the filter is applied here.
//!
//! With namespace networking the bridge comes up as soon as the task subnet
//! is known (`--task-subnet`, else the Node's `status.taskSubnet`, looked
//! for on every resync until it appears); tasks prepared before that use the
//! host network. The agent's DNS ([`crate::dns`]) listens on the bridge's
//! gateway from then on.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_crd::sealing::KeyFile;
use shoal_crd::{heartbeat_key, Node, Task};
use shoal_store::client::reflector::reflector;
use shoal_store::client::{Store, StoreError};
use tokio::task::JoinHandle;

use crate::config::AgentConfig;
use crate::heartbeat::{heartbeat_value, Heartbeat, HeartbeatConfig};
use crate::launch::LaunchDefaults;
use crate::network::{Bridge, NetworkMode};
use crate::node::{register, NodeFacts};
use crate::runtime::{ProcessRuntime, Runtime};
use crate::worker::{self, Context, TaskSlot};

/// The node's private key file in its data dir (mode 0600; never leaves the node).
pub const NODE_KEY_FILE: &str = "node.key";

/// How often finished workers are reaped even when no Task changes.
const RESYNC: Duration = Duration::from_secs(1);

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot create the agent's data dir {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read or create the node's key {path}: {source}")]
    NodeKey {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot register node {name}: {source}")]
    Register {
        name: String,
        #[source]
        source: StoreError,
    },
}

/// Registers the node, retrying while the store is unreachable or slow (an
/// agent may start before its store, or ride out a store restart), with
/// backoff up to 10 s. Other errors end the agent.
async fn register_with_retry(
    store: &Store,
    config: &AgentConfig,
    facts: &NodeFacts,
) -> Result<shoal_crd::Node, AgentError> {
    let mut delay = Duration::from_millis(250);
    loop {
        match register(store, &config.name, facts, &config.labels).await {
            Ok(node) => return Ok(node),
            Err(err @ (StoreError::Timeout { .. } | StoreError::Unreachable { .. })) => {
                tracing::warn!(node = %config.name, error = %err, retry_in = ?delay, "cannot register yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(source) => return Err(AgentError::Register { name: config.name.clone(), source }),
        }
    }
}

/// Runs the agent until `shutdown` resolves. Tasks keep running after it
/// returns; the heartbeat is revoked so the node shows down at once.
pub async fn run(store: Store, config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| AgentError::DataDir { path: config.data_dir.display().to_string(), source })?;
    let key_path = config.data_dir.join(NODE_KEY_FILE);
    let node_keys = KeyFile::load_or_create(&key_path)
        .map_err(|source| AgentError::NodeKey { path: key_path.display().to_string(), source })?;
    let facts = NodeFacts::gather(&config.advertise_addr).with_sealing_key(node_keys.current().public());
    tokio::pin!(shutdown);
    let node = tokio::select! {
        registered = register_with_retry(&store, &config, &facts) => registered?,
        _ = &mut shutdown => return Ok(()),
    };
    tracing::info!(node = %config.name, addr = %config.advertise_addr, data_dir = %config.data_dir.display(), "node registered");
    let mut heartbeat = Heartbeat::start(
        store.clone(),
        HeartbeatConfig {
            key: heartbeat_key(store.prefix(), &config.name),
            ttl: config.heartbeat_ttl,
            lease_file: config.data_dir.join("lease"),
            value: heartbeat_value(&config.name, &config.advertise_addr),
        },
    );
    heartbeat.wait_established().await;
    let dataplane = crate::dataplane::sync::start_for(&store, &config);
    let dns = crate::dns::start_for(&store, &config);

    let ctx = Arc::new(Context {
        store: store.clone(),
        node: config.name.clone(),
        runtime: ProcessRuntime::new(config.data_dir.clone(), config.shim.clone()),
        catalog: config.catalog.clone(),
        launch: LaunchDefaults {
            node_name: config.name.clone(),
            data_dir: config.data_dir.clone(),
            log_max_bytes: config.log_max_bytes,
            log_keep: config.log_keep,
        },
        node_keys: node_keys.keys,
        hostname: facts.hostname.clone(),
    });
    let (mut tasks, reflector_task) = reflector::<Task>(store.clone());
    tasks.wait_until_ready().await;
    let mut bridge_settled = config.network == NetworkMode::Host;
    if !bridge_settled {
        bridge_settled = attach_bridge(&store, &config, &ctx.runtime).await;
    }
    let mut workers = Workers { ctx: ctx.clone(), running: HashMap::new() };
    let held = ctx.runtime.list().unwrap_or_else(|err| {
        tracing::warn!(error = %err, "cannot list task directories");
        Vec::new()
    });
    let mine = |tasks: &[Arc<Task>]| -> BTreeMap<String, Arc<Task>> {
        tasks
            .iter()
            .filter(|t| t.spec.node_id.as_deref().is_some_and(|n| n == config.name || n == node.metadata.uid))
            .map(|t| (t.metadata.name.clone(), t.clone()))
            .collect()
    };
    let initial = mine(&tasks.list());
    for id in held.into_iter().filter(|id| !initial.contains_key(id)) {
        tracing::info!(task = %id, "task directory without a Task: stopping and removing it");
        workers.start(id, None);
    }
    loop {
        if !bridge_settled {
            bridge_settled = attach_bridge(&store, &config, &ctx.runtime).await;
        }
        if let (Some(dns), Some(bridge)) = (&dns, ctx.runtime.bridge()) {
            dns.listen_on(bridge.gateway());
        }
        workers.sync(mine(&tasks.list()));
        tokio::select! {
            _ = tasks.changed() => {}
            _ = tokio::time::sleep(RESYNC) => {}
            _ = &mut shutdown => break,
        }
    }
    reflector_task.abort();
    workers.abort();
    if let Some(dataplane) = dataplane {
        dataplane.stop().await;
    }
    if let Some(dns) = dns {
        dns.stop().await;
    }
    heartbeat.stop().await;
    if let Some(bridge) = ctx.runtime.bridge() {
        remove_bridge_if_unused(bridge, &ctx.runtime);
    }
    tracing::info!(node = %config.name, "agent stopped; tasks keep running");
    Ok(())
}

/// Brings the bridge up on the task subnet and hands it to the runtime.
/// True once settled: attached, or failed for good (tasks then use the host
/// network, and the log says why); false while the subnet is unknown.
async fn attach_bridge(store: &Store, config: &AgentConfig, runtime: &ProcessRuntime) -> bool {
    let subnet = match config.task_subnet {
        Some(subnet) => subnet,
        None => {
            let Ok(Some(node)) = store.get::<Node>(&config.name).await else { return false };
            let Some(text) = node.status.and_then(|s| s.task_subnet) else { return false };
            match text.parse() {
                Ok(subnet) => subnet,
                Err(err) => {
                    tracing::error!(subnet = %text, error = %err, "the Node's taskSubnet is not a CIDR; tasks use the host network");
                    return true;
                }
            }
        }
    };
    let bridge = match Bridge::new(&config.bridge, subnet) {
        Ok(bridge) => bridge,
        Err(err) => {
            tracing::error!(error = %err, "cannot use the task bridge; tasks use the host network");
            return true;
        }
    };
    let up = bridge.clone();
    match tokio::task::spawn_blocking(move || up.up()).await {
        Ok(Ok(())) => {
            tracing::info!(bridge = %bridge.name(), subnet = %subnet, gateway = %bridge.gateway(), "task bridge up: each task gets its own network namespace");
            runtime.use_bridge(bridge);
        }
        Ok(Err(err)) => {
            tracing::error!(bridge = %bridge.name(), error = %err, "cannot set up the task bridge; tasks use the host network")
        }
        Err(err) => tracing::error!(error = %err, "setting up the task bridge panicked; tasks use the host network"),
    }
    true
}

/// Tears the bridge and its nftables table down unless a task still has
/// its namespace on it (it keeps running for the next agent). A task whose
/// namespace is gone but whose release is still finishing does not count.
fn remove_bridge_if_unused(bridge: &Bridge, runtime: &ProcessRuntime) {
    let in_use = runtime.list().map(|ids| ids.iter().any(|id| runtime.holds_namespace(id))).unwrap_or(true);
    if in_use {
        tracing::info!(bridge = %bridge.name(), "tasks still have namespaces on it: the bridge stays up");
        return;
    }
    match bridge.down() {
        Ok(()) => tracing::info!(bridge = %bridge.name(), "task bridge removed"),
        Err(err) => tracing::warn!(bridge = %bridge.name(), error = %err, "cannot remove the task bridge"),
    }
}

/// The workers of one agent, by task id.
struct Workers<R> {
    ctx: Arc<Context<R>>,
    running: HashMap<String, (TaskSlot, JoinHandle<()>)>,
}

impl<R: Runtime> Workers<R> {
    fn start(&mut self, id: String, task: Option<Arc<Task>>) {
        let worker = worker::spawn(self.ctx.clone(), id.clone(), task);
        self.running.insert(id, worker);
    }

    /// Hands each worker its Task's latest version, starts workers for new
    /// tasks, tells those whose Task is gone, forgets finished ones.
    fn sync(&mut self, mine: BTreeMap<String, Arc<Task>>) {
        self.running.retain(|_, (_, handle)| !handle.is_finished());
        for (id, (slot, _)) in &self.running {
            let latest = mine.get(id).cloned();
            slot.send_if_modified(|current| {
                let version = |t: &Option<Arc<Task>>| t.as_ref().map(|t| t.metadata.resource_version);
                let changed = version(current) != version(&latest);
                if changed {
                    *current = latest;
                }
                changed
            });
        }
        for (id, task) in mine {
            if !self.running.contains_key(&id) {
                self.start(id, Some(task));
            }
        }
    }

    fn abort(self) {
        for (_, (_, handle)) in self.running {
            handle.abort();
        }
    }
}
