//! Leases with a background keep-alive: the building block of node
//! heartbeats and leader election. Keys attached to a lease disappear when
//! its holder stops renewing it.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::connection::Etcd;
use super::error::StoreError;
use crate::proto::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};

/// A granted lease kept alive until dropped or revoked.
pub struct Lease {
    id: i64,
    ttl: i64,
    etcd: Etcd,
    keep_alive: JoinHandle<()>,
}

impl Lease {
    /// Grants a lease of `ttl` seconds and starts renewing it every ttl/3.
    pub async fn grant(etcd: &Etcd, ttl: i64) -> Result<Self, StoreError> {
        let response = etcd.unary(etcd.lease().lease_grant(LeaseGrantRequest { ttl, id: 0 })).await?;
        if !response.error.is_empty() {
            return Err(etcd.rpc_error(tonic::Status::unknown(response.error)));
        }
        let keep_alive = tokio::spawn(keep_alive(etcd.clone(), response.id, response.ttl));
        Ok(Self { id: response.id, ttl: response.ttl, etcd: etcd.clone(), keep_alive })
    }

    /// The lease id, for `PutRequest::lease`.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL granted by the server, in seconds.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// True while the keep-alive task runs (it stops when the lease is lost).
    pub fn is_alive(&self) -> bool {
        !self.keep_alive.is_finished()
    }

    /// Stops renewing and revokes the lease: attached keys are deleted now.
    pub async fn revoke(self) -> Result<(), StoreError> {
        self.keep_alive.abort();
        self.etcd.unary(self.etcd.lease().lease_revoke(LeaseRevokeRequest { id: self.id })).await?;
        Ok(())
    }
}

/// Grants a lease that nobody renews: keys attached to it live `ttl`
/// seconds (events, other self-expiring records). Returns its id.
pub async fn grant_detached(etcd: &Etcd, ttl: i64) -> Result<i64, StoreError> {
    let response = etcd.unary(etcd.lease().lease_grant(LeaseGrantRequest { ttl, id: 0 })).await?;
    if !response.error.is_empty() {
        return Err(etcd.rpc_error(tonic::Status::unknown(response.error)));
    }
    Ok(response.id)
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

/// Renews the lease every ttl/3 until the server says it is gone.
async fn keep_alive(etcd: Etcd, id: i64, ttl: i64) {
    let period = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
    loop {
        let (tx, rx) = mpsc::channel(1);
        // Queue the first request before awaiting the call: etcd (grpc-go)
        // sends response headers only with its first response message.
        let _ = tx.send(LeaseKeepAliveRequest { id }).await;
        let mut responses = match etcd.lease().lease_keep_alive(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::warn!(lease = id, error = %status, "lease keep-alive stream failed; retrying");
                tokio::time::sleep(period).await;
                continue;
            }
        };
        loop {
            match tokio::time::timeout(period, responses.next()).await {
                Ok(Some(Ok(response))) if response.ttl <= 0 => {
                    tracing::warn!(lease = id, "lease expired on the server");
                    return;
                }
                Ok(Some(Ok(_))) => tokio::time::sleep(period).await,
                _ => break,
            }
            if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                break;
            }
        }
    }
}
