//! Typed access to stored objects: get, list, create, update and delete of
//! any [`Resource`] kind, every write a transaction that compares the key's
//! mod_revision so nothing is ever blindly overwritten.

use chrono::Utc;
use shoal_crd::Resource;

use super::config::StoreConfig;
use super::connection::Etcd;
use super::error::StoreError;
use super::keys::{kind_prefix, object_key, prefix_range_end};
use crate::proto::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request as Op,
    Compare, DeleteRangeRequest, KeyValue, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// Typed access to Shoal's objects under one key prefix.
#[derive(Clone)]
pub struct Store {
    etcd: Etcd,
    prefix: String,
    /// Extra compares every write carries (leader fencing), see [`Store::fenced`].
    fence: Vec<Compare>,
}

impl Store {
    /// Connects with `config` (endpoints, TLS, user, prefix).
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        Ok(Self::new(Etcd::connect(config).await?, &config.prefix))
    }

    /// Wraps an existing connection.
    pub fn new(etcd: Etcd, prefix: &str) -> Self {
        Self { etcd, prefix: prefix.trim_end_matches('/').to_string(), fence: Vec::new() }
    }

    /// A handle whose every write also requires `fence` to hold — e.g. "the
    /// election key still has the mod_revision I won it at" — so a deposed
    /// leader's writes fail in the transaction instead of overwriting.
    /// A fenced write that fails because of the fence reports
    /// [`StoreError::Conflict`]/[`StoreError::TxnConflict`].
    pub fn fenced(&self, fence: Compare) -> Store {
        let mut fenced = self.clone();
        fenced.fence.push(fence);
        fenced
    }

    /// The compares every write carries (empty unless [`Store::fenced`]).
    pub fn fence(&self) -> &[Compare] {
        &self.fence
    }

    /// The underlying connection.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The key prefix (`/shoal` by default).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of one object of kind `R`.
    pub fn key_of<R: Resource>(&self, name: &str) -> String {
        object_key::<R>(&self.prefix, name)
    }

    /// The store's current revision.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let request = RangeRequest { key: b"\0".to_vec(), count_only: true, limit: 1, ..Default::default() };
        let response = self.etcd.unary(self.etcd.kv().range(request)).await?;
        Ok(response.header.map(|h| h.revision).unwrap_or_default())
    }

    /// Reads one object; `None` when absent.
    pub async fn get<R: Resource>(&self, name: &str) -> Result<Option<R>, StoreError> {
        let key = self.key_of::<R>(name);
        let request = RangeRequest { key: key.into_bytes(), ..Default::default() };
        let response = self.etcd.unary(self.etcd.kv().range(request)).await?;
        response.kvs.first().map(decode::<R>).transpose()
    }

    /// Reads one object, failing with [`StoreError::NotFound`] when absent.
    pub async fn require<R: Resource>(&self, name: &str) -> Result<R, StoreError> {
        self.get::<R>(name).await?.ok_or_else(|| StoreError::NotFound { kind: R::KIND, name: name.to_string() })
    }

    /// Lists every object of kind `R`, sorted by name, with the revision of the read.
    pub async fn list<R: Resource>(&self) -> Result<(Vec<R>, i64), StoreError> {
        let prefix = kind_prefix::<R>(&self.prefix).into_bytes();
        let request = RangeRequest { range_end: prefix_range_end(&prefix), key: prefix, ..Default::default() };
        let response = self.etcd.unary(self.etcd.kv().range(request)).await?;
        let revision = response.header.map(|h| h.revision).unwrap_or_default();
        let objects = response.kvs.iter().map(decode::<R>).collect::<Result<Vec<R>, _>>()?;
        Ok((objects, revision))
    }

    /// Creates an object that must not exist yet; sets uid, generation 1 and
    /// timestamps. Returns the stored object with its resourceVersion.
    pub async fn create<R: Resource>(&self, mut object: R) -> Result<R, StoreError> {
        stamp_new(&mut object);
        let name = object.metadata().name.clone();
        let key = self.key_of::<R>(&name);
        let compare = compare_mod_revision(&key, 0);
        let Some(revision) = self.put_if(&key, &object, compare).await? else {
            if !self.fence.is_empty() && self.get::<R>(&name).await?.is_none() {
                return Err(StoreError::FenceLost);
            }
            return Err(StoreError::AlreadyExists { kind: R::KIND, name });
        };
        object.metadata_mut().resource_version = revision;
        Ok(object)
    }

    /// Writes a changed object read earlier: fails with
    /// [`StoreError::Conflict`] if it changed since (its resourceVersion no
    /// longer matches). `generation` moves only when the spec changed.
    pub async fn update<R: Resource>(&self, mut object: R) -> Result<R, StoreError> {
        let name = object.metadata().name.clone();
        let expected = object.metadata().resource_version;
        let current = self.require::<R>(&name).await?;
        if current.metadata().resource_version != expected {
            return Err(StoreError::Conflict { kind: R::KIND, name, expected });
        }
        stamp_update(&current, &mut object);
        let key = self.key_of::<R>(&name);
        let revision = self
            .put_if(&key, &object, compare_mod_revision(&key, expected))
            .await?
            .ok_or(StoreError::Conflict { kind: R::KIND, name, expected })?;
        object.metadata_mut().resource_version = revision;
        Ok(object)
    }

    /// Deletes an object; with `expected` set, only if it is still at that
    /// resourceVersion. Returns false when it did not exist.
    pub async fn delete<R: Resource>(&self, name: &str, expected: Option<i64>) -> Result<bool, StoreError> {
        let key = self.key_of::<R>(name);
        let delete = RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: key.clone().into_bytes(),
                ..Default::default()
            })),
        };
        let mut compare = self.fence.clone();
        if let Some(rev) = expected {
            compare.push(compare_mod_revision(&key, rev));
        }
        let txn = TxnRequest { compare, success: vec![delete], failure: vec![] };
        let response = self.etcd.unary(self.etcd.kv().txn(txn)).await?;
        if !response.succeeded {
            return Err(StoreError::Conflict {
                kind: R::KIND,
                name: name.to_string(),
                expected: expected.unwrap_or(0),
            });
        }
        let deleted = response.responses.first().and_then(|r| match &r.response {
            Some(crate::proto::response_op::Response::ResponseDeleteRange(d)) => Some(d.deleted),
            _ => None,
        });
        Ok(deleted.unwrap_or(0) > 0)
    }

    /// Puts `object` at `key` if `compare` holds; `Some(revision)` on success.
    async fn put_if<R: Resource>(&self, key: &str, object: &R, compare: Compare) -> Result<Option<i64>, StoreError> {
        let put = RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: encode(object),
                ..Default::default()
            })),
        };
        let mut compares = self.fence.clone();
        compares.push(compare);
        let txn = TxnRequest { compare: compares, success: vec![put], failure: vec![] };
        let response = self.etcd.unary(self.etcd.kv().txn(txn)).await?;
        Ok(response.succeeded.then(|| response.header.map(|h| h.revision).unwrap_or_default()))
    }
}

/// A compare that holds when `key`'s mod_revision equals `revision` (0 = absent).
pub fn compare_mod_revision(key: &str, revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(TargetUnion::ModRevision(revision)),
        range_end: vec![],
    }
}

/// Decodes a stored object and fills its resourceVersion from the key's mod_revision.
pub fn decode<R: Resource>(kv: &KeyValue) -> Result<R, StoreError> {
    let mut object: R = serde_json::from_slice(&kv.value)
        .map_err(|source| StoreError::Decode { key: String::from_utf8_lossy(&kv.key).into_owned(), source })?;
    object.metadata_mut().resource_version = kv.mod_revision;
    Ok(object)
}

/// Encodes an object for storage; resourceVersion is never stored.
pub fn encode<R: Resource>(object: &R) -> Vec<u8> {
    let mut object = object.clone();
    object.metadata_mut().resource_version = 0;
    serde_json::to_vec(&object).expect("resources serialize to JSON")
}

/// Metadata of an object about to be created.
pub fn stamp_new<R: Resource>(object: &mut R) {
    let now = Utc::now();
    let meta = object.metadata_mut();
    meta.uid = uuid::Uuid::new_v4().to_string();
    meta.generation = 1;
    meta.created_at = Some(now);
    meta.updated_at = Some(now);
}

/// Metadata of an update of `current`: identity kept, generation bumped
/// only when the spec changed.
pub fn stamp_update<R: Resource>(current: &R, object: &mut R) {
    let spec_changed = current.spec_value() != object.spec_value();
    let old = current.metadata().clone();
    let meta = object.metadata_mut();
    meta.uid = old.uid;
    meta.created_at = old.created_at;
    meta.generation = if spec_changed { old.generation + 1 } else { old.generation };
    meta.updated_at = Some(Utc::now());
}
