//! The etcd `Lease` service and the expiry loop that revokes leases whose
//! deadline passed (deleting their keys in one revision, like a Revoke).
//!
//! Grants and revocations are persisted through the writer; keep-alives
//! only move the in-memory deadline, as in etcd.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::writer::{Core, WriteOp, WriteOutcome};
use crate::proto::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};

pub struct LeaseService {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let req = request.into_inner();
        let written = self.core.write(WriteOp::LeaseGrant { id: req.id, ttl: req.ttl }).await?;
        match written.outcome {
            WriteOutcome::LeaseGranted { id, ttl } => Ok(Response::new(LeaseGrantResponse {
                header: Some(self.core.header(written.revision)),
                id,
                ttl,
                error: String::new(),
            })),
            other => Err(Status::internal(format!("embedded store: unexpected outcome {other:?}"))),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let written = self.core.write(WriteOp::LeaseRevoke { id, expired_only: false }).await?;
        Ok(Response::new(LeaseRevokeResponse { header: Some(self.core.header(written.revision)) }))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (out, rx) = mpsc::channel(16);
        let core = self.core.clone();
        tokio::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                let ttl = core.with_state_mut(|st| st.leases.refresh(req.id, Instant::now()));
                let revision = core.read().committed;
                // etcd answers an unknown or expired lease with TTL 0.
                let resp =
                    LeaseKeepAliveResponse { header: Some(core.header(revision)), id: req.id, ttl: ttl.unwrap_or(0) };
                if out.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        let st = self.core.read();
        let header = Some(self.core.header(st.committed));
        // etcd answers an unknown lease with TTL -1 rather than an error.
        let resp = match (st.leases.get(req.id), st.leases.remaining(req.id, Instant::now())) {
            (Some(lease), Some(left)) => LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: left,
                granted_ttl: lease.ttl,
                keys: if req.keys { lease.keys.iter().cloned().collect() } else { vec![] },
            },
            _ => LeaseTimeToLiveResponse { header, id: req.id, ttl: -1, granted_ttl: 0, keys: vec![] },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let st = self.core.read();
        let leases = st.leases.ids().into_iter().map(|id| LeaseStatus { id }).collect();
        Ok(Response::new(LeaseLeasesResponse { header: Some(self.core.header(st.committed)), leases }))
    }
}

/// Revokes expired leases every `interval` until the store goes away.
pub async fn expire_leases(core: std::sync::Weak<Core>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(core) = core.upgrade() else { return };
        let expired = core.read().leases.expired(Instant::now());
        for id in expired {
            if let Err(status) = core.write(WriteOp::LeaseRevoke { id, expired_only: true }).await {
                tracing::warn!(lease = id, %status, "revoking an expired lease failed");
            }
        }
    }
}
