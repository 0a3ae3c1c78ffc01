//! Applies etcd KV requests (Range, Put, DeleteRange, Txn, lease revocation)
//! to the in-memory [`State`], with etcd's validation rules and error texts.
//!
//! Writes are checked completely *before* anything is written (etcd does
//! the same: the txn path is chosen and every put on it validated against
//! the pre-txn state), so applying never has to undo half a request.

use std::cmp::Ordering;
use std::collections::HashSet;

use super::leases::LeaseTable;
use super::mvcc::{in_range, Mvcc, MvccError};
use crate::proto::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    Compare, DeleteRangeRequest, DeleteRangeResponse, Event, EventType, KeyValue, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// Why a request was refused; the texts are etcd's, since clients print them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("etcdserver: key is not provided")]
    KeyNotProvided,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    TtlTooLarge,
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error("etcdserver: storage failure, the embedded store refuses writes: {0}")]
    Storage(String),
}

impl From<ApplyError> for tonic::Status {
    fn from(e: ApplyError) -> Self {
        use tonic::Code;
        let code = match e {
            ApplyError::LeaseNotFound => Code::NotFound,
            ApplyError::LeaseExists => Code::FailedPrecondition,
            ApplyError::TtlTooLarge | ApplyError::Mvcc(_) => Code::OutOfRange,
            ApplyError::Storage(_) => Code::Unavailable,
            _ => Code::InvalidArgument,
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// Everything the store knows, guarded by one lock (see `mod.rs`).
#[derive(Debug, Default)]
pub struct State {
    pub mvcc: Mvcc,
    pub leases: LeaseTable,
    /// Newest revision that is durable; readers see nothing newer.
    pub committed: i64,
}

/// Answers a Range at `visible` (the newest revision the caller may see).
pub fn range(mvcc: &Mvcc, req: &RangeRequest, visible: i64) -> Result<RangeResponse, ApplyError> {
    if req.key.is_empty() {
        return Err(ApplyError::KeyNotProvided);
    }
    let rev = mvcc.read_rev(req.revision, visible)?;
    let all: Vec<&KeyValue> = mvcc.range(&req.key, &req.range_end, rev).collect();
    let count = all.len() as i64;
    if req.count_only {
        return Ok(RangeResponse { header: None, kvs: vec![], more: false, count });
    }
    let mut kvs: Vec<&KeyValue> = all
        .into_iter()
        .filter(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        })
        .collect();
    sort_kvs(&mut kvs, req);
    let more = req.limit > 0 && kvs.len() as i64 > req.limit;
    if more {
        kvs.truncate(req.limit as usize);
    }
    let kvs = kvs
        .into_iter()
        .map(|kv| {
            let mut kv = kv.clone();
            if req.keys_only {
                kv.value.clear();
            }
            kv
        })
        .collect();
    Ok(RangeResponse { header: None, kvs, more, count })
}

fn sort_kvs(kvs: &mut [&KeyValue], req: &RangeRequest) {
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend; // etcd: a sort target implies ascending
    }
    if order == SortOrder::None || (order == SortOrder::Ascend && target == SortTarget::Key) {
        return; // already in key order
    }
    let by = |a: &&KeyValue, b: &&KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    if order == SortOrder::Descend {
        kvs.sort_by(|a, b| by(b, a));
    } else {
        kvs.sort_by(by);
    }
}

/// Whether a compare holds at `rev`, with etcd's rules for missing keys:
/// they compare as version/create/mod/lease 0, and any VALUE compare fails.
pub fn compare_holds(mvcc: &Mvcc, c: &Compare, rev: i64) -> bool {
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    let kvs: Vec<&KeyValue> = mvcc.range(&c.key, &c.range_end, rev).collect();
    if kvs.is_empty() {
        return target != CompareTarget::Value && compare_kv(c, target, &KeyValue::default());
    }
    kvs.into_iter().all(|kv| compare_kv(c, target, kv))
}

fn compare_kv(c: &Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    let int = |want: Option<i64>, have: i64| have.cmp(&want.unwrap_or(0));
    let ord = match (target, &c.target_union) {
        (CompareTarget::Value, Some(TargetUnion::Value(v))) => kv.value.as_slice().cmp(v.as_slice()),
        (CompareTarget::Value, _) => kv.value.as_slice().cmp(&[][..]),
        (CompareTarget::Version, Some(TargetUnion::Version(v))) => int(Some(*v), kv.version),
        (CompareTarget::Version, _) => int(None, kv.version),
        (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => int(Some(*v), kv.create_revision),
        (CompareTarget::Create, _) => int(None, kv.create_revision),
        (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => int(Some(*v), kv.mod_revision),
        (CompareTarget::Mod, _) => int(None, kv.mod_revision),
        (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => int(Some(*v), kv.lease),
        (CompareTarget::Lease, _) => int(None, kv.lease),
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
        CompareResult::NotEqual => ord != Ordering::Equal,
    }
}

/// Whether any op (in either branch, at any depth) writes.
pub fn txn_writes(req: &TxnRequest) -> bool {
    req.success.iter().chain(&req.failure).any(|op| match &op.request {
        Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => true,
        Some(Request::RequestTxn(t)) => txn_writes(t),
        _ => false,
    })
}

/// Shape checks that need no state: keys present, op counts, and no key
/// written twice (or put inside a deleted range) in one branch.
pub fn check_txn(req: &TxnRequest) -> Result<(), ApplyError> {
    if req.compare.len() > MAX_TXN_OPS || req.success.len() > MAX_TXN_OPS || req.failure.len() > MAX_TXN_OPS {
        return Err(ApplyError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ApplyError::KeyNotProvided);
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) if r.key.is_empty() => return Err(ApplyError::KeyNotProvided),
            Some(Request::RequestPut(r)) if r.key.is_empty() => return Err(ApplyError::KeyNotProvided),
            Some(Request::RequestDeleteRange(r)) if r.key.is_empty() => return Err(ApplyError::KeyNotProvided),
            Some(Request::RequestTxn(t)) => check_txn(t)?,
            _ => {}
        }
    }
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

type Intervals = (Vec<(Vec<u8>, Vec<u8>)>, HashSet<Vec<u8>>);

fn check_intervals(ops: &[RequestOp]) -> Result<Intervals, ApplyError> {
    let mut dels = Vec::new();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        match &op.request {
            Some(Request::RequestPut(p)) if !puts.insert(p.key.clone()) => return Err(ApplyError::DuplicateKey),
            Some(Request::RequestDeleteRange(d)) => dels.push((d.key.clone(), d.range_end.clone())),
            Some(Request::RequestTxn(t)) => {
                let (sd, sp) = check_intervals(&t.success)?;
                let (fd, fp) = check_intervals(&t.failure)?;
                if sp.union(&fp).any(|k| puts.contains(k)) {
                    return Err(ApplyError::DuplicateKey);
                }
                puts.extend(sp.into_iter().chain(fp));
                dels.extend(sd.into_iter().chain(fd));
            }
            _ => {}
        }
    }
    if puts.iter().any(|k| dels.iter().any(|(key, end)| in_range(k, key, end))) {
        return Err(ApplyError::DuplicateKey);
    }
    Ok((dels, puts))
}

/// Evaluates every compare on the path the txn will take (nested ones too)
/// against the state before the txn, in execution order.
fn txn_path(mvcc: &Mvcc, req: &TxnRequest, rev: i64, path: &mut Vec<bool>) {
    let ok = req.compare.iter().all(|c| compare_holds(mvcc, c, rev));
    path.push(ok);
    for op in if ok { &req.success } else { &req.failure } {
        if let Some(Request::RequestTxn(t)) = &op.request {
            txn_path(mvcc, t, rev, path);
        }
    }
}

/// Answers a txn that writes nothing, at `visible`.
pub fn read_txn(mvcc: &Mvcc, req: &TxnRequest, visible: i64) -> Result<TxnResponse, ApplyError> {
    check_txn(req)?;
    let succeeded = req.compare.iter().all(|c| compare_holds(mvcc, c, visible));
    let mut responses = Vec::new();
    for op in if succeeded { &req.success } else { &req.failure } {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => Some(Response::ResponseRange(range(mvcc, r, visible)?)),
            Some(Request::RequestTxn(t)) => Some(Response::ResponseTxn(read_txn(mvcc, t, visible)?)),
            _ => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse { header: None, succeeded, responses })
}

/// One write request being applied at revision `rev` (= current + 1); the
/// revision is taken only if at least one event is produced.
pub struct Write<'s> {
    st: &'s mut State,
    rev: i64,
    pub events: Vec<Event>,
}

impl<'s> Write<'s> {
    pub fn new(st: &'s mut State) -> Self {
        let rev = st.mvcc.current() + 1;
        Write { st, rev, events: Vec::new() }
    }

    /// The revision the request ended at (new if it changed anything).
    pub fn revision(&self) -> i64 {
        self.st.mvcc.current()
    }

    pub fn state(&mut self) -> &mut State {
        self.st
    }

    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, ApplyError> {
        self.check_put(req)?;
        Ok(self.do_put(req))
    }

    fn check_put(&self, req: &PutRequest) -> Result<(), ApplyError> {
        if req.key.is_empty() {
            return Err(ApplyError::KeyNotProvided);
        }
        if req.ignore_value && !req.value.is_empty() {
            return Err(ApplyError::ValueProvided);
        }
        if req.ignore_lease && req.lease != 0 {
            return Err(ApplyError::LeaseProvided);
        }
        if (req.ignore_value || req.ignore_lease) && self.st.mvcc.get(&req.key, self.rev).is_none() {
            return Err(ApplyError::KeyNotFound);
        }
        if !req.ignore_lease && req.lease != 0 && !self.st.leases.contains(req.lease) {
            return Err(ApplyError::LeaseNotFound);
        }
        Ok(())
    }

    fn do_put(&mut self, req: &PutRequest) -> PutResponse {
        let prev = self.st.mvcc.get(&req.key, self.rev).cloned();
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(self.rev, |p| p.create_revision),
            mod_revision: self.rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        if let Some(p) = prev.as_ref().filter(|p| p.lease != 0) {
            self.st.leases.detach(p.lease, &req.key);
        }
        if lease != 0 {
            self.st.leases.attach(lease, &req.key);
        }
        self.st.mvcc.write(self.rev, self.events.len() as u32, &req.key, Some(kv.clone()));
        self.events.push(Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: prev.clone() });
        PutResponse { header: None, prev_kv: prev.filter(|_| req.prev_kv) }
    }

    pub fn delete(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, ApplyError> {
        if req.key.is_empty() {
            return Err(ApplyError::KeyNotProvided);
        }
        Ok(self.do_delete(req))
    }

    fn do_delete(&mut self, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let victims: Vec<KeyValue> = self.st.mvcc.range(&req.key, &req.range_end, self.rev).cloned().collect();
        for kv in &victims {
            self.delete_key(kv.clone());
        }
        DeleteRangeResponse {
            header: None,
            deleted: victims.len() as i64,
            prev_kvs: if req.prev_kv { victims } else { vec![] },
        }
    }

    fn delete_key(&mut self, prev: KeyValue) {
        if prev.lease != 0 {
            self.st.leases.detach(prev.lease, &prev.key);
        }
        self.st.mvcc.write(self.rev, self.events.len() as u32, &prev.key, None);
        let kv = KeyValue { key: prev.key.clone(), mod_revision: self.rev, ..Default::default() };
        self.events.push(Event { r#type: EventType::Delete as i32, kv: Some(kv), prev_kv: Some(prev) });
    }

    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, ApplyError> {
        check_txn(req)?;
        let mut path = Vec::new();
        txn_path(&self.st.mvcc, req, self.rev, &mut path);
        self.check_path(req, &mut path.iter().copied())?;
        Ok(self.do_txn(req, &mut path.into_iter()))
    }

    fn check_path(&self, req: &TxnRequest, path: &mut impl Iterator<Item = bool>) -> Result<(), ApplyError> {
        let ok = path.next().unwrap_or(false);
        for op in if ok { &req.success } else { &req.failure } {
            match &op.request {
                Some(Request::RequestPut(p)) => self.check_put(p)?,
                Some(Request::RequestRange(r)) => {
                    self.st.mvcc.read_rev(r.revision, self.rev)?;
                }
                Some(Request::RequestTxn(t)) => self.check_path(t, path)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn do_txn(&mut self, req: &TxnRequest, path: &mut impl Iterator<Item = bool>) -> TxnResponse {
        let succeeded = path.next().unwrap_or(false);
        let mut responses = Vec::new();
        for op in if succeeded { &req.success } else { &req.failure } {
            let response = match &op.request {
                Some(Request::RequestRange(r)) => {
                    // Checked in check_path; reads see this txn's earlier writes.
                    range(&self.st.mvcc, r, self.rev).ok().map(Response::ResponseRange)
                }
                Some(Request::RequestPut(p)) => Some(Response::ResponsePut(self.do_put(p))),
                Some(Request::RequestDeleteRange(d)) => Some(Response::ResponseDeleteRange(self.do_delete(d))),
                Some(Request::RequestTxn(t)) => Some(Response::ResponseTxn(self.do_txn(t, path))),
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        TxnResponse { header: None, succeeded, responses }
    }

    /// Revokes a lease, deleting its keys in one revision. Returns whether
    /// the lease existed.
    pub fn revoke(&mut self, id: i64) -> bool {
        let Some(lease) = self.st.leases.remove(id) else { return false };
        for key in lease.keys {
            if let Some(kv) = self.st.mvcc.get(&key, self.rev).filter(|kv| kv.lease == id).cloned() {
                self.delete_key(kv);
            }
        }
        true
    }
}

/// Sets `header` on a txn response and every response nested in it.
pub fn fill_txn_headers(resp: &mut TxnResponse, header: &ResponseHeader) {
    resp.header = Some(*header);
    for op in &mut resp.responses {
        match &mut op.response {
            Some(Response::ResponseRange(r)) => r.header = Some(*header),
            Some(Response::ResponsePut(r)) => r.header = Some(*header),
            Some(Response::ResponseDeleteRange(r)) => r.header = Some(*header),
            Some(Response::ResponseTxn(t)) => fill_txn_headers(t, header),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            })),
        }
    }

    fn cmp(key: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
        Compare {
            key: key.into(),
            target: target as i32,
            result: result as i32,
            target_union: Some(union),
            range_end: vec![],
        }
    }

    #[test]
    fn missing_keys_compare_as_zero_but_value_compares_fail() {
        let st = State::default();
        let create0 = cmp("k", CompareTarget::Create, CompareResult::Equal, TargetUnion::CreateRevision(0));
        assert!(compare_holds(&st.mvcc, &create0, 1));
        let value = cmp("k", CompareTarget::Value, CompareResult::NotEqual, TargetUnion::Value(b"x".to_vec()));
        assert!(!compare_holds(&st.mvcc, &value, 1));
    }

    #[test]
    fn txn_takes_one_revision_and_failing_empty_branch_takes_none() {
        let mut st = State::default();
        let req = TxnRequest { compare: vec![], success: vec![put("a", "1"), put("b", "2")], failure: vec![] };
        let mut w = Write::new(&mut st);
        let resp = w.txn(&req).unwrap();
        assert!(resp.succeeded);
        assert_eq!((w.revision(), w.events.len()), (2, 2));
        let guard = cmp("a", CompareTarget::Version, CompareResult::Greater, TargetUnion::Version(5));
        let req = TxnRequest { compare: vec![guard], success: vec![put("a", "3")], failure: vec![] };
        let mut w = Write::new(&mut st);
        assert!(!w.txn(&req).unwrap().succeeded);
        assert_eq!(w.revision(), 2);
        assert!(w.events.is_empty());
    }

    #[test]
    fn same_key_twice_in_a_branch_is_rejected() {
        let req = TxnRequest { compare: vec![], success: vec![put("a", "1"), put("a", "2")], failure: vec![] };
        assert_eq!(check_txn(&req), Err(ApplyError::DuplicateKey));
        let ok = TxnRequest { compare: vec![], success: vec![put("a", "1")], failure: vec![put("a", "2")] };
        assert_eq!(check_txn(&ok), Ok(()));
    }

    #[test]
    fn put_with_unknown_lease_writes_nothing() {
        let mut st = State::default();
        let mut w = Write::new(&mut st);
        let req = PutRequest { key: b"k".to_vec(), lease: 42, ..Default::default() };
        assert_eq!(w.put(&req), Err(ApplyError::LeaseNotFound));
        assert!(w.events.is_empty());
        assert_eq!(w.revision(), 1);
    }
}
