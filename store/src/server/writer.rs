//! The single writer and the state every service shares ([`Core`]).
//!
//! All writes go through one OS thread that drains whatever requests are
//! queued, applies them in order to the in-memory state, commits the whole
//! batch in ONE durable redb transaction, and only then publishes the new
//! revision to readers and watchers and answers the callers (group commit).
//! It is a plain thread, not a tokio task, because a commit blocks on fsync.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};
use std::time::Instant;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::apply::{ApplyError, State, Write};
use super::backend::{Backend, Identity, Record};
use super::leases::{MAX_TTL, MIN_TTL};
use super::StoreOptions;
use crate::proto::{
    DeleteRangeRequest, DeleteRangeResponse, Event, PutRequest, PutResponse, ResponseHeader, TxnRequest, TxnResponse,
};

/// Most requests one commit takes.
const MAX_BATCH: usize = 1024;

/// A request for the writer.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(i64),
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// `expired_only`: the expiry loop's revoke, skipped if a keep-alive
    /// arrived in the meantime.
    LeaseRevoke {
        id: i64,
        expired_only: bool,
    },
}

#[derive(Debug)]
pub enum WriteOutcome {
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Compacted,
    LeaseGranted { id: i64, ttl: i64 },
    LeaseRevoked,
}

/// A write's outcome and the store revision right after it.
#[derive(Debug)]
pub struct Written {
    pub outcome: WriteOutcome,
    pub revision: i64,
}

/// The events of one revision, as broadcast to watch streams.
#[derive(Debug)]
pub struct RevisionEvents {
    pub rev: i64,
    pub events: Vec<Event>,
}

struct Pending {
    op: WriteOp,
    reply: oneshot::Sender<Result<Written, ApplyError>>,
}

/// What every service holds: the state, the writer's queue, the watch feed.
pub struct Core {
    state: Arc<RwLock<State>>,
    writes: mpsc::Sender<Pending>,
    pub feed: broadcast::Sender<Arc<RevisionEvents>>,
    pub identity: Identity,
    pub db_path: PathBuf,
    pub options: StoreOptions,
    /// `http://host:port` once serving (for MemberList).
    pub client_url: OnceLock<String>,
}

impl Core {
    /// Starts the writer thread over `backend`.
    pub fn start(backend: Backend, state: State, identity: Identity, options: StoreOptions) -> Arc<Core> {
        let state = Arc::new(RwLock::new(state));
        let (writes, rx) = mpsc::channel(4 * MAX_BATCH);
        let (feed, _) = broadcast::channel(options.watch_feed_capacity.max(16));
        let db_path = backend.path().to_path_buf();
        let (st, tx) = (state.clone(), feed.clone());
        std::thread::Builder::new()
            .name("shoal-store-writer".into())
            .spawn(move || writer_loop(backend, st, tx, rx))
            .expect("spawning the store writer thread");
        Arc::new(Core { state, writes, feed, identity, db_path, options, client_url: OnceLock::new() })
    }

    /// Read access to the state; keep the guard short (no awaits while held).
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `f` to the state under the write lock (for keep-alives).
    pub fn with_state_mut<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision,
            raft_term: 1,
        }
    }

    /// Queues a write and waits until it is durable.
    pub async fn write(&self, op: WriteOp) -> Result<Written, tonic::Status> {
        let (reply, answer) = oneshot::channel();
        let gone = || tonic::Status::unavailable("etcdserver: the embedded store is shutting down");
        self.writes.send(Pending { op, reply }).await.map_err(|_| gone())?;
        Ok(answer.await.map_err(|_| gone())??)
    }
}

fn writer_loop(
    backend: Backend,
    state: Arc<RwLock<State>>,
    feed: broadcast::Sender<Arc<RevisionEvents>>,
    mut rx: mpsc::Receiver<Pending>,
) {
    let mut failed: Option<String> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if let Some(reason) = &failed {
            for p in batch {
                let _ = p.reply.send(Err(ApplyError::Storage(reason.clone())));
            }
            continue;
        }
        let mut records = Vec::new();
        let mut published = Vec::new();
        let now = Instant::now();
        let (results, current) = {
            let mut st = state.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            let results: Vec<_> =
                batch.iter().map(|p| apply_op(&mut st, &p.op, now, &mut records, &mut published)).collect();
            (results, st.mvcc.current())
        };
        if !records.is_empty() {
            if let Err(e) = backend.commit(&records, current) {
                // The in-memory state is now ahead of the file; refuse every
                // further write rather than serve what may not survive.
                let reason =
                    format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default());
                tracing::error!(%reason, "store commit failed; refusing further writes");
                for p in batch {
                    let _ = p.reply.send(Err(ApplyError::Storage(reason.clone())));
                }
                failed = Some(reason);
                continue;
            }
        }
        state.write().unwrap_or_else(|poisoned| poisoned.into_inner()).committed = current;
        for revision in published {
            let _ = feed.send(revision);
        }
        for (p, r) in batch.into_iter().zip(results) {
            let _ = p.reply.send(r);
        }
    }
}

fn apply_op(
    st: &mut State,
    op: &WriteOp,
    now: Instant,
    records: &mut Vec<Record>,
    published: &mut Vec<Arc<RevisionEvents>>,
) -> Result<Written, ApplyError> {
    let mut w = Write::new(st);
    let outcome = match op {
        WriteOp::Put(r) => WriteOutcome::Put(w.put(r)?),
        WriteOp::Delete(r) => WriteOutcome::Delete(w.delete(r)?),
        WriteOp::Txn(r) => WriteOutcome::Txn(w.txn(r)?),
        WriteOp::Compact(rev) => {
            let mvcc = &mut w.state().mvcc;
            if *rev <= mvcc.compacted() {
                return Err(super::mvcc::MvccError::Compacted.into());
            }
            if *rev > mvcc.current() {
                return Err(super::mvcc::MvccError::FutureRevision.into());
            }
            let dropped = mvcc.compact(*rev);
            records.extend(dropped.into_iter().map(|(rev, sub)| Record::Forget { rev, sub }));
            records.push(Record::Compacted(*rev));
            WriteOutcome::Compacted
        }
        WriteOp::LeaseGrant { id, ttl } => {
            if *ttl > MAX_TTL {
                return Err(ApplyError::TtlTooLarge);
            }
            let leases = &mut w.state().leases;
            if *id != 0 && leases.contains(*id) {
                return Err(ApplyError::LeaseExists);
            }
            let id = if *id == 0 { leases.fresh_id() } else { *id };
            let ttl = (*ttl).max(MIN_TTL);
            leases.grant(id, ttl, now);
            records.push(Record::LeaseGrant { id, ttl });
            WriteOutcome::LeaseGranted { id, ttl }
        }
        WriteOp::LeaseRevoke { id, expired_only } => {
            let due = w.state().leases.get(*id).is_some_and(|l| l.deadline <= now);
            if *expired_only && !due {
                WriteOutcome::LeaseRevoked
            } else if w.revoke(*id) {
                records.push(Record::LeaseRevoke { id: *id });
                WriteOutcome::LeaseRevoked
            } else if *expired_only {
                WriteOutcome::LeaseRevoked
            } else {
                return Err(ApplyError::LeaseNotFound);
            }
        }
    };
    let rev = w.revision();
    let events = std::mem::take(&mut w.events);
    for (sub, e) in events.iter().enumerate() {
        let event = Event { prev_kv: None, ..e.clone() };
        records.push(Record::Version { rev, sub: sub as u32, event });
    }
    if !events.is_empty() {
        published.push(Arc::new(RevisionEvents { rev, events }));
    }
    Ok(Written { outcome, revision: rev })
}
