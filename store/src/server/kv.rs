//! The etcd `KV` service: reads are answered from memory at the newest
//! committed revision; writes (and txns that write) go to the writer.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::apply::{self, fill_txn_headers, txn_writes};
use super::writer::{Core, WriteOp, WriteOutcome};
use crate::proto::{
    kv_server::Kv, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};

pub struct KvService {
    pub core: Arc<Core>,
}

fn unexpected(outcome: WriteOutcome) -> Status {
    Status::internal(format!("embedded store: unexpected writer outcome {outcome:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        let (mut resp, visible) = {
            let st = self.core.read();
            (apply::range(&st.mvcc, &req, st.committed)?, st.committed)
        };
        resp.header = Some(self.core.header(visible));
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let written = self.core.write(WriteOp::Put(request.into_inner())).await?;
        match written.outcome {
            WriteOutcome::Put(mut resp) => {
                resp.header = Some(self.core.header(written.revision));
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let written = self.core.write(WriteOp::Delete(request.into_inner())).await?;
        match written.outcome {
            WriteOutcome::Delete(mut resp) => {
                resp.header = Some(self.core.header(written.revision));
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        let (mut resp, revision) = if txn_writes(&req) {
            let written = self.core.write(WriteOp::Txn(req)).await?;
            match written.outcome {
                WriteOutcome::Txn(resp) => (resp, written.revision),
                other => return Err(unexpected(other)),
            }
        } else {
            let st = self.core.read();
            (apply::read_txn(&st.mvcc, &req, st.committed)?, st.committed)
        };
        fill_txn_headers(&mut resp, &self.core.header(revision));
        Ok(Response::new(resp))
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let written = self.core.write(WriteOp::Compact(request.into_inner().revision)).await?;
        Ok(Response::new(CompactionResponse { header: Some(self.core.header(written.revision)) }))
    }
}
