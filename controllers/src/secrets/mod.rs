//! The secrets loop: a node can open a secret only while it runs a task
//! that uses it. For every node with a task (desired running) referencing a
//! secret, it keeps a SealedSecret `<secret>.<node>` holding the secret's
//! data key re-wrapped to the node's public key (`status.sealingKey`, which
//! the node's agent generated); once no such task is left on the node, the
//! copy is deleted. Swarm's dispatcher hands secrets only to assigned
//! nodes; this is the same rule, kept in the store.
//!
//! Needs the cluster's private key (`--encryption-key-file`): without it
//! the loop does not run, and tasks using secrets wait in `preparing`. The
//! file is read again when it changes ([`keys`]): a cluster-key rotation
//! re-wraps secrets to a new key while this loop runs.
//!
//! # Guarantees
//! - Only this loop writes SealedSecrets, with compare-and-swap.
//! - A copy is always for the secret's current version (`generation`): a
//!   new value gets new copies, and a node's new key gets a new copy.
//! - No secret value or data key is ever logged or put in an event.
//! - A cluster-key rotation (only `sealed.dataKey` changes, not the
//!   version) writes no copy: a copy is wrapped to the node's key.

pub mod keys;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_crd::sealing::{rewrap, PublicKey, SealingError};
use shoal_crd::{Node, SealedSecret, SealedSecretSpec, Secret, Task, TaskState};
use shoal_store::client::reflector::{reflector, Reader};
use shoal_store::client::{Store, StoreError};
use tokio::task::JoinHandle;

use self::keys::KeyRing;
use crate::caches::Caches;
use crate::runtime::{Action, Controller, Decision, Recorder};

/// The controller's name in logs and events.
pub const NAME: &str = "secrets";

/// How often every secret is looked at again even without a change.
const RESYNC: Duration = Duration::from_secs(30);

/// Why a secret's copies could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot re-seal secret {secret} for node {node}: {source}")]
    Reseal {
        secret: String,
        node: String,
        #[source]
        source: SealingError,
    },
}

/// What the secrets loop's reconciles share.
pub struct Context {
    pub store: Store,
    pub caches: Caches,
    pub secrets: Reader<Secret>,
    pub sealed: Reader<SealedSecret>,
    /// The cluster's private keys (the current one first).
    keys: KeyRing,
    pub recorder: Recorder,
}

/// The SealedSecret reflector of one term; dropping this stops it.
pub struct Reflectors(Vec<JoinHandle<()>>);

impl Drop for Reflectors {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

impl Context {
    /// The loop's context, with a reflector over SealedSecrets (Secrets
    /// come from the shared caches).
    pub fn start(store: Store, caches: Caches, keys: KeyRing) -> (Arc<Self>, Reflectors) {
        let secrets = caches.secrets.clone();
        let (sealed, task) = reflector::<SealedSecret>(store.clone());
        (Arc::new(Self { store, caches, secrets, sealed, keys, recorder: Recorder::new(NAME) }), Reflectors(vec![task]))
    }
}

/// Runs the secrets loop until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    if !ctx.keys.is_configured() {
        tracing::warn!(
            controller = NAME,
            "no --encryption-key-file: secrets are not sealed to nodes, tasks using secrets cannot start"
        );
        shutdown.await;
        return;
    }
    let tasks = ctx.caches.tasks.clone();
    Controller::new(NAME, ctx.secrets.clone())
        .watches(ctx.caches.tasks.clone(), |task: &Task| {
            task.spec.spec.secrets.iter().map(|s| s.source.clone()).collect()
        })
        .watches(ctx.caches.nodes.clone(), move |node: &Node| secrets_on_node(&tasks.list(), node))
        .watches(ctx.sealed.clone(), |copy: &SealedSecret| vec![copy.spec.secret.clone()])
        .resync_every(RESYNC)
        .run(reconcile, |_, _: &SecretsError, _| Action::requeue(Duration::from_secs(1)), ctx, shutdown)
        .await;
}

/// Whether a task on a node needs its secrets there: it is, or is to be, running.
fn needs_secrets(task: &Task) -> bool {
    task.spec.node_id.is_some() && task.spec.desired_state <= TaskState::Running
}

/// The secrets the tasks on `node` use (a node's key changed: re-seal them).
fn secrets_on_node(tasks: &[Arc<Task>], node: &Node) -> Vec<String> {
    let on_node =
        |t: &&Arc<Task>| t.spec.node_id.as_deref().is_some_and(|n| n == node.metadata.name || n == node.metadata.uid);
    tasks
        .iter()
        .filter(on_node)
        .flat_map(|t| t.spec.spec.secrets.iter().map(|s| s.source.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The nodes that need `secret`, by node name, with why (a task's name).
/// `task.spec.nodeId` may be a node's name or its uid.
pub fn nodes_needing(secret: &str, tasks: &[Arc<Task>], nodes: &[Arc<Node>]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for task in tasks.iter().filter(|t| needs_secrets(t) && t.spec.spec.secrets.iter().any(|s| s.source == secret)) {
        let id = task.spec.node_id.as_deref().unwrap_or_default();
        if let Some(node) = nodes.iter().find(|n| n.metadata.name == id || n.metadata.uid == id) {
            out.entry(node.metadata.name.clone()).or_insert_with(|| task.display_name());
        }
    }
    out
}

/// Brings the sealed copies of secret `name` in line with the nodes that need it.
pub async fn reconcile(name: String, secret: Option<Arc<Secret>>, ctx: Arc<Context>) -> Result<Action, SecretsError> {
    let nodes = ctx.caches.nodes.list();
    let needing = match secret.as_deref() {
        Some(secret) if secret.spec.sealed.is_some() => nodes_needing(&name, &ctx.caches.tasks.list(), &nodes),
        _ => BTreeMap::new(),
    };
    let copies: Vec<Arc<SealedSecret>> = ctx.sealed.list().into_iter().filter(|c| c.spec.secret == name).collect();
    for copy in copies.iter().filter(|c| !needing.contains_key(&c.spec.node)) {
        ctx.store.delete::<SealedSecret>(&copy.metadata.name, Some(copy.metadata.resource_version)).await?;
        let reason =
            if secret.is_some() { "no task on the node uses the secret any more" } else { "the secret was removed" };
        ctx.recorder.record(&Decision::about_name(
            &name,
            format!("removed the copy sealed to node {}", copy.spec.node),
            reason,
        ));
    }
    let (Some(secret), false) = (secret, needing.is_empty()) else { return Ok(Action::await_change()) };
    let sealed = secret.spec.sealed.as_ref().expect("needing is empty without a value");
    let mut missing_keys = Vec::new();
    for (node_name, task) in &needing {
        let Some(key) =
            nodes.iter().find(|n| &n.metadata.name == node_name).and_then(|n| n.status.as_ref()?.sealing_key.clone())
        else {
            missing_keys.push(node_name.clone());
            continue;
        };
        let current = copies.iter().find(|c| &c.spec.node == node_name);
        if current.is_some_and(|c| {
            c.spec.secret_generation == secret.metadata.generation && c.spec.data_key.key_id == key.key_id
        }) {
            continue;
        }
        let spec = seal_for(&ctx, &secret, node_name, &key, &sealed.data_key)?;
        match current {
            Some(copy) => {
                let mut next = (**copy).clone();
                next.spec = spec;
                ctx.store.update(next).await?;
            }
            None => {
                ctx.store.create(SealedSecret::new(SealedSecret::name_for(&name, node_name), spec)).await?;
            }
        }
        let reason = format!("task {task} there uses it (version {})", secret.metadata.generation);
        ctx.recorder.record(&Decision::about(&*secret, format!("sealed to node {node_name}"), reason));
    }
    if !missing_keys.is_empty() {
        let reason = "the node's agent has not published a sealing key yet (an older agent?)";
        ctx.recorder.record(&Decision::about(&*secret, format!("cannot seal to {}", missing_keys.join(", ")), reason));
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    Ok(Action::await_change())
}

fn seal_for(
    ctx: &Context,
    secret: &Secret,
    node: &str,
    key: &PublicKey,
    data_key: &shoal_crd::sealing::WrappedKey,
) -> Result<SealedSecretSpec, SecretsError> {
    let aad = ctx.store.key_of::<Secret>(&secret.metadata.name);
    let wrapped = rewrap(&ctx.keys.keys(), aad.as_bytes(), data_key, key).map_err(|source| SecretsError::Reseal {
        secret: secret.metadata.name.clone(),
        node: node.into(),
        source,
    })?;
    Ok(SealedSecretSpec {
        secret: secret.metadata.name.clone(),
        node: node.into(),
        secret_generation: secret.metadata.generation,
        data_key: wrapped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crd::{FileReference, NodeSpec, ServiceSpec, TaskSpec};

    fn task(name: &str, node: Option<&str>, desired: TaskState, secrets: &[&str]) -> Arc<Task> {
        let mut spec = ServiceSpec::from_image("demo");
        spec.secrets = secrets
            .iter()
            .map(|s| FileReference { target: format!("/run/secrets/{s}"), ..FileReference::to(*s) })
            .collect();
        let spec = TaskSpec {
            service_name: "web".into(),
            slot: Some(1),
            node_id: node.map(str::to_string),
            desired_state: desired,
            service_generation: 1,
            spec,
        };
        Arc::new(Task::new(name, spec))
    }

    fn node(name: &str, uid: &str) -> Arc<Node> {
        let mut node = Node::new(name, NodeSpec::default());
        node.metadata.uid = uid.into();
        Arc::new(node)
    }

    #[test]
    fn only_nodes_with_a_task_to_run_that_uses_the_secret_need_it() {
        let nodes = [node("n1", "u1"), node("n2", "u2"), node("n3", "u3")];
        let tasks = [
            task("a", Some("n1"), TaskState::Running, &["db"]),
            task("b", Some("u2"), TaskState::Running, &["db", "api"]),
            task("c", Some("n3"), TaskState::Shutdown, &["db"]),
            task("d", None, TaskState::Running, &["db"]),
            task("e", Some("n3"), TaskState::Running, &["api"]),
        ];
        let needing = nodes_needing("db", &tasks, &nodes);
        assert_eq!(
            needing.keys().collect::<Vec<_>>(),
            ["n1", "n2"],
            "by name, also when the task names the node's uid"
        );
        assert_eq!(secrets_on_node(&tasks, &nodes[1]), ["api", "db"]);
    }
}
