//! All-or-nothing writes of many objects: a stack deploy or `shoal apply`
//! becomes one transaction that either writes every change or none.
//!
//! Planning is pure ([`ApplyPlan::add`] compares desired with current);
//! committing is one etcd Txn whose compares pin every touched key to the
//! revision it was planned against. Unchanged objects are not written at
//! all, so re-applying the same file moves neither generation nor revision.

use serde_json::Value;
use shoal_crd::Resource;

use super::error::StoreError;
use super::resources::{compare_mod_revision, encode, stamp_new, stamp_update, Store};
use crate::proto::{request_op::Request as Op, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};

/// What applying one object does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The object is new.
    Created,
    /// The spec changed: the generation moves.
    Updated,
    /// Only labels changed: written, generation kept.
    Relabeled,
    /// Identical to what is stored: nothing written.
    Unchanged,
    /// The object is removed.
    Deleted,
}

/// One planned write.
#[derive(Debug, Clone)]
pub struct PlannedChange {
    /// Kind of the object (`Service`).
    pub kind: &'static str,
    /// Name of the object.
    pub name: String,
    /// What happens to it.
    pub change: Change,
    /// Its key.
    key: String,
    /// The value to write (empty for deletes and unchanged objects).
    value: Vec<u8>,
    /// The mod_revision the key must still have (0 = must not exist).
    expected_revision: i64,
}

/// A set of changes to commit together.
#[derive(Debug, Clone, Default)]
pub struct ApplyPlan {
    changes: Vec<PlannedChange>,
}

/// The result of a committed plan.
#[derive(Debug, Clone)]
pub struct ApplyOutcome {
    /// Every object and what happened to it, in plan order.
    pub changes: Vec<PlannedChange>,
    /// The store revision after the commit (unchanged if nothing was written).
    pub revision: i64,
}

impl ApplyPlan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Plans writing `desired` over `current` (as read from `store`). Status
    /// and identity of an existing object are kept; the user owns spec and labels.
    pub fn add<R: Resource>(&mut self, store: &Store, current: Option<&R>, mut desired: R) {
        let name = desired.metadata().name.clone();
        let key = store.key_of::<R>(&name);
        let (change, expected_revision) = match current {
            None => {
                stamp_new(&mut desired);
                (Change::Created, 0)
            }
            Some(current) => {
                let spec_changed = current.spec_value() != desired.spec_value();
                let labels_changed = current.metadata().labels != desired.metadata().labels;
                if !spec_changed && !labels_changed {
                    (Change::Unchanged, current.metadata().resource_version)
                } else {
                    stamp_update(current, &mut desired);
                    desired = keep_status(current, desired);
                    let change = if spec_changed { Change::Updated } else { Change::Relabeled };
                    (change, current.metadata().resource_version)
                }
            }
        };
        let value = if change == Change::Unchanged { Vec::new() } else { encode(&desired) };
        self.changes.push(PlannedChange { kind: R::KIND, name, change, key, value, expected_revision });
    }

    /// Plans deleting `current`.
    pub fn delete<R: Resource>(&mut self, store: &Store, current: &R) {
        let name = current.metadata().name.clone();
        self.changes.push(PlannedChange {
            kind: R::KIND,
            key: store.key_of::<R>(&name),
            name,
            change: Change::Deleted,
            value: Vec::new(),
            expected_revision: current.metadata().resource_version,
        });
    }

    /// The planned changes.
    pub fn changes(&self) -> &[PlannedChange] {
        &self.changes
    }

    /// True when committing would write nothing.
    pub fn is_noop(&self) -> bool {
        self.changes.iter().all(|c| c.change == Change::Unchanged)
    }

    /// The transaction: compares pin every key (unchanged ones too, so the
    /// whole plan reflects one consistent read), then the writes.
    fn to_txn(&self, fence: &[crate::proto::Compare]) -> TxnRequest {
        let mut compare = fence.to_vec();
        compare.extend(self.changes.iter().map(|c| compare_mod_revision(&c.key, c.expected_revision)));
        let success = self
            .changes
            .iter()
            .filter_map(|c| match c.change {
                Change::Unchanged => None,
                Change::Deleted => Some(Op::RequestDeleteRange(DeleteRangeRequest {
                    key: c.key.clone().into_bytes(),
                    ..Default::default()
                })),
                _ => Some(Op::RequestPut(PutRequest {
                    key: c.key.clone().into_bytes(),
                    value: c.value.clone(),
                    ..Default::default()
                })),
            })
            .map(|request| RequestOp { request: Some(request) })
            .collect();
        TxnRequest { compare, success, failure: vec![] }
    }
}

impl Store {
    /// Commits `plan` in one transaction. Fails with
    /// [`StoreError::TxnConflict`] (and writes nothing) when any key moved
    /// since the plan was made; the caller re-reads and re-plans.
    pub async fn commit(&self, plan: ApplyPlan, what: &str) -> Result<ApplyOutcome, StoreError> {
        if plan.is_noop() {
            let revision = self.revision().await?;
            return Ok(ApplyOutcome { changes: plan.changes, revision });
        }
        let response = self.etcd().unary(self.etcd().kv().txn(plan.to_txn(self.fence()))).await?;
        if !response.succeeded {
            return Err(StoreError::TxnConflict { what: what.to_string() });
        }
        let revision = response.header.map(|h| h.revision).unwrap_or_default();
        Ok(ApplyOutcome { changes: plan.changes, revision })
    }
}

/// `desired` with `current`'s status: users write spec, controllers status.
fn keep_status<R: Resource>(current: &R, desired: R) -> R {
    let status = serde_json::to_value(current).ok().and_then(|v| v.get("status").cloned());
    let Some(status) = status else { return desired };
    let Ok(mut value) = serde_json::to_value(&desired) else { return desired };
    if let Value::Object(map) = &mut value {
        map.insert("status".into(), status);
    }
    let resource_version = desired.metadata().resource_version;
    match serde_json::from_value::<R>(value) {
        Ok(mut merged) => {
            merged.metadata_mut().resource_version = resource_version;
            merged
        }
        Err(_) => desired,
    }
}
