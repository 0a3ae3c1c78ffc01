//! Node liveness: the agent keeps `{prefix}/heartbeats/<node>` attached to a
//! lease it renews (TTL 3 s by default). When the agent dies, renewals stop
//! and the store deletes the key within the TTL: that is "node down".
//!
//! The key is created only when absent (compare mod_revision = 0). If it
//! exists, it is either this node's previous agent's (its lease id is kept
//! in `{data_dir}/lease`: the key is moved onto a new lease in one
//! transaction, so it is never absent, and the old lease revoked) or
//! another live agent using the same name (this one waits for it to go and
//! says so). A lost lease (store unreachable longer than the TTL)
//! is re-granted and the key re-created.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use shoal_store::client::lease::Lease;
use shoal_store::client::resources::compare_mod_revision;
use shoal_store::client::{Store, StoreError};
use shoal_store::proto::{
    request_op::Request as Op, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use tokio::task::JoinHandle;

/// How often the keep-alive's health is checked.
const CHECK: Duration = Duration::from_millis(500);

/// The running heartbeat; dropping it stops renewing (the key expires).
pub struct Heartbeat {
    task: JoinHandle<()>,
    lease: tokio::sync::watch::Receiver<Option<i64>>,
    store: Store,
}

/// Where and how to heartbeat.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub key: String,
    pub ttl: i64,
    /// Holds the current lease id across agent restarts.
    pub lease_file: PathBuf,
    /// The key's value (JSON: node, addr, agent version).
    pub value: serde_json::Value,
}

impl Heartbeat {
    /// Starts heartbeating in the background; [`Heartbeat::wait_established`]
    /// waits for the key to exist.
    pub fn start(store: Store, config: HeartbeatConfig) -> Self {
        let (tx, lease) = tokio::sync::watch::channel(None);
        let task = tokio::spawn(run(store.clone(), config, tx));
        Self { task, lease, store }
    }

    /// Waits until the heartbeat key has been written once.
    pub async fn wait_established(&mut self) {
        let _ = self.lease.wait_for(|l| l.is_some()).await;
    }

    /// Stops and revokes the lease: the key disappears now, not after the TTL.
    pub async fn stop(self) {
        self.task.abort();
        let lease = *self.lease.borrow();
        if let Some(id) = lease {
            let etcd = self.store.etcd();
            let _ = etcd.unary(etcd.lease().lease_revoke(LeaseRevokeRequest { id })).await;
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(store: Store, config: HeartbeatConfig, established: tokio::sync::watch::Sender<Option<i64>>) {
    let retry = Duration::from_secs(config.ttl.max(1) as u64) / 3;
    loop {
        match establish(&store, &config).await {
            Ok(Some(lease)) => {
                established.send_replace(Some(lease.id()));
                tracing::info!(key = %config.key, lease = lease.id(), ttl = lease.ttl(), "heartbeat established");
                while lease.is_alive() {
                    tokio::time::sleep(CHECK).await;
                }
                tracing::warn!(key = %config.key, "heartbeat lease lost; re-establishing");
            }
            Ok(None) => {
                tracing::warn!(key = %config.key, "another live agent heartbeats under this node name; waiting for it to go");
                tokio::time::sleep(retry).await;
            }
            Err(err) => {
                tracing::warn!(key = %config.key, error = %err, "heartbeat failed; retrying");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// Grants a lease and creates the key on it; `None` when another agent holds the key.
async fn establish(store: &Store, config: &HeartbeatConfig) -> Result<Option<Lease>, StoreError> {
    let etcd = store.etcd();
    let key = config.key.as_bytes().to_vec();
    let existing = etcd.unary(etcd.kv().range(RangeRequest { key: key.clone(), ..Default::default() })).await?;
    // The key as we found it: absent (mod_revision 0) or our previous incarnation's.
    let mut found = 0;
    let mut previous_lease = None;
    if let Some(kv) = existing.kvs.first() {
        let ours = std::fs::read_to_string(&config.lease_file).ok().and_then(|s| s.trim().parse::<i64>().ok());
        if ours != Some(kv.lease) {
            return Ok(None);
        }
        found = kv.mod_revision;
        previous_lease = Some(kv.lease);
    }
    let lease = Lease::grant(etcd, config.ttl).await?;
    let put = PutRequest { key, value: config.value.to_string().into_bytes(), lease: lease.id(), ..Default::default() };
    // Taking over moves the key onto the new lease in one transaction: the
    // key never disappears, so a restarting agent's node is never seen down
    // (revoking first would delete the key and get the node's tasks moved).
    let txn = TxnRequest {
        compare: vec![compare_mod_revision(&config.key, found)],
        success: vec![RequestOp { request: Some(Op::RequestPut(put)) }],
        failure: vec![],
    };
    if !etcd.unary(etcd.kv().txn(txn)).await?.succeeded {
        let _ = lease.revoke().await;
        return Ok(None);
    }
    if let Some(id) = previous_lease {
        // No key is attached to it any more; it would expire on its own.
        let _ = etcd.unary(etcd.lease().lease_revoke(LeaseRevokeRequest { id })).await;
    }
    if let Err(err) = std::fs::write(&config.lease_file, lease.id().to_string()) {
        tracing::warn!(file = %config.lease_file.display(), error = %err, "cannot record the heartbeat lease id");
    }
    Ok(Some(lease))
}

/// The heartbeat key's value.
pub fn heartbeat_value(node: &str, addr: &str) -> serde_json::Value {
    json!({ "node": node, "addr": addr, "agentVersion": env!("CARGO_PKG_VERSION"), "since": chrono::Utc::now() })
}
