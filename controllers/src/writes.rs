//! Many controller writes in few transactions: a [`Batch`] of creates,
//! updates and deletes, each pinned to the revision it was planned
//! against, committed in chunks that fit etcd's per-transaction op limit.
//!
//! Why not the store client's `ApplyPlan`? It is built for users' writes:
//! it keeps the stored status and skips status-only changes. Controllers
//! write status (the scheduler's "no suitable node (…)"), so a batch writes
//! each object exactly as given, still with compare-and-swap and the
//! leader's fence on every chunk.
//!
//! # Guarantees
//! - Each chunk is all-or-nothing; a chunk whose keys moved since the plan
//!   (or whose fence no longer holds) writes nothing and fails the commit.
//!
//! # Caveats
//! - Chunks after a failed one are not tried, chunks before it stay
//!   written: a batch is a set of independent writes, not one atomic unit.
//!   Reconcilers are level-triggered and finish the job on the next pass.

use shoal_crd::Resource;
use shoal_store::client::resources::{compare_mod_revision, encode, stamp_new, stamp_update};
use shoal_store::client::{Store, StoreError};
use shoal_store::proto::{request_op::Request as Op, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};

/// Writes per transaction: etcd refuses more than 128 operations, and the
/// fence takes a compare of its own.
const CHUNK: usize = 100;

/// One planned write.
struct Write {
    name: String,
    key: String,
    /// `None` deletes.
    value: Option<Vec<u8>>,
    /// The mod_revision the key must still have (0 = must not exist).
    expected: i64,
}

/// A written object and the store revision it now has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub name: String,
    pub revision: i64,
    pub deleted: bool,
}

/// Planned writes, committed by [`Batch::commit`].
#[derive(Default)]
pub struct Batch {
    writes: Vec<Write>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates `object` (its name must be free): uid, generation 1, timestamps.
    pub fn create<R: Resource>(&mut self, store: &Store, mut object: R) {
        stamp_new(&mut object);
        self.push(store, &object, Some(encode(&object)), 0);
    }

    /// Replaces `current` with `object` (spec and status as given); the
    /// generation moves when the spec changed.
    pub fn update<R: Resource>(&mut self, store: &Store, current: &R, mut object: R) {
        stamp_update(current, &mut object);
        self.push(store, &object, Some(encode(&object)), current.metadata().resource_version);
    }

    /// Deletes `current` unless it changed since it was read.
    pub fn delete<R: Resource>(&mut self, store: &Store, current: &R) {
        self.push(store, current, None, current.metadata().resource_version);
    }

    fn push<R: Resource>(&mut self, store: &Store, object: &R, value: Option<Vec<u8>>, expected: i64) {
        let name = object.metadata().name.clone();
        self.writes.push(Write { key: store.key_of::<R>(&name), name, value, expected });
    }

    /// Number of planned writes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Commits in chunks; `what` names the batch in errors.
    pub async fn commit(self, store: &Store, what: &str) -> Result<Vec<Written>, StoreError> {
        let mut written = Vec::with_capacity(self.writes.len());
        for chunk in self.writes.chunks(CHUNK) {
            let mut compare = store.fence().to_vec();
            compare.extend(chunk.iter().map(|w| compare_mod_revision(&w.key, w.expected)));
            let success = chunk.iter().map(|w| RequestOp { request: Some(operation(w)) }).collect();
            let txn = TxnRequest { compare, success, failure: vec![] };
            let response = store.etcd().unary(store.etcd().kv().txn(txn)).await?;
            if !response.succeeded {
                return Err(StoreError::TxnConflict { what: what.to_string() });
            }
            let revision = response.header.map(|h| h.revision).unwrap_or_default();
            written.extend(chunk.iter().map(|w| Written {
                name: w.name.clone(),
                revision,
                deleted: w.value.is_none(),
            }));
        }
        Ok(written)
    }
}

fn operation(write: &Write) -> Op {
    let key = write.key.clone().into_bytes();
    match &write.value {
        Some(value) => Op::RequestPut(PutRequest { key, value: value.clone(), ..Default::default() }),
        None => Op::RequestDeleteRange(DeleteRangeRequest { key, ..Default::default() }),
    }
}
