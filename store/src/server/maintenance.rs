//! The small services etcd clients call around the data path:
//! `Maintenance.Status` and `Cluster.MemberList` (so `etcdctl endpoint
//! status` and `member list` work) and `Auth.Authenticate`, which says
//! plainly that the embedded store has no authentication.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::backend::Backend;
use super::writer::Core;
use crate::proto::{
    auth_server::Auth, cluster_server::Cluster, maintenance_server::Maintenance, AuthenticateRequest,
    AuthenticateResponse, Member, MemberListRequest, MemberListResponse, StatusRequest, StatusResponse,
};

/// What `etcdctl endpoint status` shows in its VERSION column.
pub const VERSION: &str = "3.4.0-shoal";

pub struct MaintenanceService {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let revision = self.core.read().committed;
        let db_size = Backend::size(&self.core.db_path);
        Ok(Response::new(StatusResponse {
            header: Some(self.core.header(revision)),
            version: VERSION.to_string(),
            db_size,
            leader: self.core.identity.member_id,
            raft_index: revision as u64,
            raft_term: 1,
            raft_applied_index: revision as u64,
            errors: vec![],
            db_size_in_use: db_size,
            is_learner: false,
        }))
    }
}

#[tonic::async_trait]
impl Cluster for MaintenanceService {
    async fn member_list(&self, _request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        let revision = self.core.read().committed;
        let member = Member {
            id: self.core.identity.member_id,
            name: "shoal".to_string(),
            peer_ur_ls: vec![],
            client_ur_ls: self.core.client_url.get().cloned().into_iter().collect(),
            is_learner: false,
        };
        Ok(Response::new(MemberListResponse { header: Some(self.core.header(revision)), members: vec![member] }))
    }
}

#[tonic::async_trait]
impl Auth for MaintenanceService {
    async fn authenticate(
        &self,
        _request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        // etcd's exact text: clients map it to their "auth not enabled" error.
        Err(Status::failed_precondition("etcdserver: authentication is not enabled"))
    }
}
