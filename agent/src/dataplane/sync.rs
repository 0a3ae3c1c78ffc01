//! The agent's data-plane loop: reflectors of Endpoints and Nodes; on any
//! change (debounced by [`DEBOUNCE`], so a burst of writes is one
//! transaction) the full desired state goes to the [`DataPlane`]; then the
//! Endpoints revision now programmed is recorded at
//! `{prefix}/dataplane/<node>` ([`programmed_key`]) as
//! `{"node", "programmedRevision"}` — what a stopping task's agent will
//! wait on (the draining handshake). On stop everything is removed and the
//! key deleted.
//!
//! The programmed revision is the highest `resourceVersion` among the
//! Endpoints objects applied: a removed backend is an Endpoints update at
//! revision R, and once a node records ≥ R its kernel no longer sends new
//! connections there. (Deleting a whole Endpoints object does not move it;
//! nothing waits on deletions.)
//!
//! The node's task subnet is `--task-subnet` when given, else its Node's
//! `status.taskSubnet` from the cache; it can appear later, which is just
//! another change.

use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::json;
use shoal_crd::{Endpoints, Node, Resource};
use shoal_store::client::reflector::reflector;
use shoal_store::client::Store;
use shoal_store::proto::{DeleteRangeRequest, PutRequest};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::nftables::DEFAULT_TABLE;
use super::{Cluster, DataPlane, DataPlaneError, DataPlaneMode, NftablesDataPlane};

/// Quiet time after a change before applying: bursts become one transaction.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// Wait before trying again after a failed apply (it then rewrites the whole table).
const RETRY: Duration = Duration::from_secs(1);

/// `{prefix}/dataplane/<node>`: the Endpoints revision the node has programmed.
pub fn programmed_key(prefix: &str, node: &str) -> String {
    format!("{}/dataplane/{node}", prefix.trim_end_matches('/'))
}

/// The highest resourceVersion among `endpoints` (0 for none).
pub fn programmed_revision(endpoints: &[Arc<Endpoints>]) -> i64 {
    endpoints.iter().map(|e| e.metadata.resource_version).max().unwrap_or(0)
}

/// The agent's data-plane loop per its config: none for `--dataplane none`.
pub fn start_for(store: &Store, config: &crate::config::AgentConfig) -> Option<DataPlaneLoop> {
    match config.dataplane {
        DataPlaneMode::None => {
            tracing::info!(node = %config.name, "no data plane (--dataplane none): service VIPs and published ports do not answer on this node");
            None
        }
        DataPlaneMode::Ipvs => {
            tracing::info!(node = %config.name, "IPVS data plane: virtual servers over netlink, VIPs on shoal-ipvs0; published ports on 127.0.0.1 by the userspace proxy");
            let loopback = vec![std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)];
            let dataplane = Box::new(super::layered::Layered::new(vec![
                Box::new(super::IpvsDataPlane::new()),
                Box::new(super::UserspaceDataPlane::new(tokio::runtime::Handle::current(), loopback)),
            ]));
            Some(DataPlaneLoop::start(store.clone(), config.name.clone(), config.task_subnet, dataplane))
        }
        DataPlaneMode::Userspace => {
            let listen = super::userspace::listen_addresses(&config.advertise_addr);
            tracing::info!(node = %config.name, ?listen, "userspace data plane: published ports are proxied by the agent (no service VIPs)");
            let dataplane = Box::new(super::UserspaceDataPlane::new(tokio::runtime::Handle::current(), listen));
            Some(DataPlaneLoop::start(store.clone(), config.name.clone(), config.task_subnet, dataplane))
        }
        DataPlaneMode::Nftables => {
            let dataplane = Box::new(NftablesDataPlane::new(DEFAULT_TABLE));
            Some(DataPlaneLoop::start(store.clone(), config.name.clone(), config.task_subnet, dataplane))
        }
    }
}

/// Drives one [`DataPlane`]: skips inputs already applied, runs the
/// (blocking) kernel calls off the async threads.
pub struct Syncer {
    dataplane: Option<Box<dyn DataPlane>>,
    /// Resource versions and local subnet of the last successful apply.
    applied: Option<Fingerprint>,
}

type Fingerprint = (Vec<(String, i64)>, Vec<(String, i64)>, Option<Ipv4Net>);

fn fingerprint(endpoints: &[Arc<Endpoints>], cluster: &Cluster) -> Fingerprint {
    let versions = |items: &mut dyn Iterator<Item = &shoal_crd::ObjectMeta>| {
        items.map(|m| (m.name.clone(), m.resource_version)).collect()
    };
    (
        versions(&mut endpoints.iter().map(|e| e.metadata())),
        versions(&mut cluster.nodes.iter().map(|n| n.metadata())),
        cluster.local.subnet,
    )
}

impl Syncer {
    pub fn new(dataplane: Box<dyn DataPlane>) -> Self {
        Self { dataplane: Some(dataplane), applied: None }
    }

    /// Applies unless this exact input was applied last; true when it applied.
    pub async fn sync(&mut self, endpoints: Vec<Arc<Endpoints>>, cluster: Cluster) -> Result<bool, DataPlaneError> {
        let print = fingerprint(&endpoints, &cluster);
        if self.applied.as_ref() == Some(&print) {
            return Ok(false);
        }
        self.applied = None;
        let result = self.blocking(move |dp| dp.apply(&endpoints, &cluster)).await;
        result.map(|()| {
            self.applied = Some(print);
            true
        })
    }

    /// Removes everything programmed.
    pub async fn cleanup(&mut self) -> Result<(), DataPlaneError> {
        self.applied = None;
        self.blocking(|dp| dp.cleanup()).await
    }

    async fn blocking(
        &mut self,
        call: impl FnOnce(&mut dyn DataPlane) -> Result<(), DataPlaneError> + Send + 'static,
    ) -> Result<(), DataPlaneError> {
        let mut dp = self.dataplane.take().expect("the data plane is back after every call");
        let (dp, result) = tokio::task::spawn_blocking(move || {
            let result = call(dp.as_mut());
            (dp, result)
        })
        .await
        .expect("the data plane panicked");
        self.dataplane = Some(dp);
        result
    }
}

/// The running loop; [`DataPlaneLoop::stop`] cleans up and waits for it.
pub struct DataPlaneLoop {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl DataPlaneLoop {
    /// Starts programming `dataplane` for node `node`.
    pub fn start(store: Store, node: String, task_subnet: Option<Ipv4Net>, dataplane: Box<dyn DataPlane>) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(store, node, task_subnet, Syncer::new(dataplane), stopped));
        Self { stop, task }
    }

    /// Stops the loop; the data plane is removed and the key deleted before this returns.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn run(
    store: Store,
    node: String,
    task_subnet: Option<Ipv4Net>,
    mut syncer: Syncer,
    mut stop: oneshot::Receiver<()>,
) {
    let (mut endpoints, endpoints_task) = reflector::<Endpoints>(store.clone());
    let (mut nodes, nodes_task) = reflector::<Node>(store.clone());
    let ready = async {
        endpoints.wait_until_ready().await;
        nodes.wait_until_ready().await;
    };
    let key = programmed_key(store.prefix(), &node);
    let mut recorded = None;
    let mut stopping = tokio::select! {
        _ = ready => false,
        _ = &mut stop => true,
    };
    while !stopping {
        let subnet = task_subnet.or_else(|| nodes.get(&node)?.status.as_ref()?.task_subnet.as_deref()?.parse().ok());
        let cluster = Cluster::new(&node, subnet, nodes.list());
        let desired = endpoints.list();
        let revision = programmed_revision(&desired);
        let services = desired.len();
        // Nothing to do until a change, unless the apply or the record failed.
        let mut wait = Duration::from_secs(3600);
        match syncer.sync(desired, cluster).await {
            Ok(applied) => {
                if applied {
                    tracing::info!(node = %node, services, revision, "data plane programmed");
                }
                if recorded != Some(revision) && record(&store, &key, &node, revision).await {
                    recorded = Some(revision);
                }
                if recorded != Some(revision) {
                    wait = RETRY;
                }
            }
            Err(err) => {
                tracing::error!(node = %node, error = %err, retry_in = ?RETRY, "cannot program the data plane");
                wait = RETRY;
            }
        }
        tokio::select! {
            _ = endpoints.changed() => {}
            _ = nodes.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => stopping = true,
        }
        if !stopping {
            tokio::select! {
                _ = tokio::time::sleep(DEBOUNCE) => {}
                _ = &mut stop => stopping = true,
            }
        }
    }
    endpoints_task.abort();
    nodes_task.abort();
    match syncer.cleanup().await {
        Ok(()) => tracing::info!(node = %node, "data plane removed"),
        Err(err) => tracing::warn!(node = %node, error = %err, "cannot remove the data plane"),
    }
    let etcd = store.etcd();
    let _ =
        etcd.unary(etcd.kv().delete_range(DeleteRangeRequest { key: key.into_bytes(), ..Default::default() })).await;
}

/// Writes the programmed revision (this agent is the key's only writer); true when stored.
async fn record(store: &Store, key: &str, node: &str, revision: i64) -> bool {
    let value = json!({ "node": node, "programmedRevision": revision }).to_string().into_bytes();
    let etcd = store.etcd();
    match etcd.unary(etcd.kv().put(PutRequest { key: key.as_bytes().to_vec(), value, ..Default::default() })).await {
        Ok(_) => true,
        Err(err) => {
            tracing::warn!(node = %node, error = %err, "cannot record the programmed Endpoints revision");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::{Call, RecordingDataPlane};
    use shoal_crd::{Backend, EndpointsSpec};

    fn endpoints(service: &str, version: i64, addresses: &[&str]) -> Arc<Endpoints> {
        let backends = addresses
            .iter()
            .map(|a| Backend {
                task: format!("t-{a}"),
                node: "n1".into(),
                address: a.to_string(),
                ports: Default::default(),
            })
            .collect();
        let mut e = Endpoints::new(service, EndpointsSpec { service: service.into(), backends, ..Default::default() });
        e.metadata.resource_version = version;
        Arc::new(e)
    }

    #[tokio::test]
    async fn the_same_input_is_applied_once_and_a_change_again() {
        let fake = RecordingDataPlane::default();
        let mut syncer = Syncer::new(Box::new(fake.clone()));
        let cluster = || Cluster::new("n1", None, Vec::new());
        assert!(syncer.sync(vec![endpoints("web", 5, &["10.0.0.2"])], cluster()).await.unwrap());
        assert!(!syncer.sync(vec![endpoints("web", 5, &["10.0.0.2"])], cluster()).await.unwrap());
        assert!(syncer.sync(vec![endpoints("web", 6, &["10.0.0.3"])], cluster()).await.unwrap());
        // The subnet appearing later is a change too.
        assert!(syncer
            .sync(
                vec![endpoints("web", 6, &["10.0.0.3"])],
                Cluster::new("n1", Some("10.0.0.0/24".parse().unwrap()), Vec::new())
            )
            .await
            .unwrap());
        syncer.cleanup().await.unwrap();
        let web = |a: &str| vec![("web".to_string(), vec![a.to_string()])];
        assert_eq!(
            fake.calls(),
            vec![
                Call::Apply { services: web("10.0.0.2"), subnet: None },
                Call::Apply { services: web("10.0.0.3"), subnet: None },
                Call::Apply { services: web("10.0.0.3"), subnet: Some("10.0.0.0/24".into()) },
                Call::Cleanup,
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_apply_is_retried_with_the_same_input() {
        let fake = RecordingDataPlane::default();
        let mut syncer = Syncer::new(Box::new(fake.clone()));
        fake.fail_next();
        let input = || vec![endpoints("web", 5, &["10.0.0.2"])];
        assert!(syncer.sync(input(), Cluster::default()).await.is_err());
        assert!(syncer.sync(input(), Cluster::default()).await.unwrap(), "a failure must not count as applied");
        assert_eq!(fake.calls().len(), 2);
    }

    #[test]
    fn the_programmed_revision_is_the_newest_endpoints_version() {
        assert_eq!(programmed_revision(&[]), 0);
        assert_eq!(programmed_revision(&[endpoints("a", 7, &[]), endpoints("b", 12, &[]), endpoints("c", 3, &[])]), 12);
        assert_eq!(programmed_key("/shoal/", "n1"), "/shoal/dataplane/n1");
    }
}
