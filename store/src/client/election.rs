//! Leader election through an etcd lease: one leader per election name, and
//! a fence that makes a deposed leader's writes fail instead of landing.
//!
//! The election key `{prefix}/election/{name}` holds the leader's identity
//! and is attached to the leader's lease. Whoever creates it (compare
//! `create_revision == 0`) leads until the lease ends (expiry or resign);
//! the others watch the key and try again when it is deleted.
//!
//! # Guarantees
//! - At most one campaigner holds the key at a time (etcd's transaction).
//! - Writes through [`Leadership::store`] carry the fence "the election key
//!   still has the mod_revision it was won at": after the key is deleted or
//!   taken by someone else, every such write fails in the store
//!   ([`StoreError::FenceLost`] or a conflict) and changes nothing.
//!
//! # Caveats
//! - [`Leadership::lost`] is a prompt signal, not the safety mechanism: it
//!   fires when the key is seen deleted or changed, or when the store could
//!   not confirm the key for a whole TTL. Between the loss and the signal a
//!   leader may still *try* to write; the fence is what refuses it.
//! - Identities are for humans (`shoal controller` prints them); two
//!   campaigners with the same identity are still two campaigners.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::connection::Etcd;
use super::error::StoreError;
use super::lease::Lease;
use super::resources::{compare_mod_revision, Store};
use crate::proto::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request as Op,
    response_op::Response as OpResponse,
    watch_request::RequestUnion,
    Compare, EventType, KeyValue, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
    WatchResponse,
};

/// Pause before campaigning again after a broken watch, so a store that is
/// going away is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// One campaigner in one election.
pub struct Election {
    store: Store,
    key: String,
    identity: String,
    ttl_secs: i64,
}

impl Election {
    /// A campaigner named `identity` in election `name`; its leadership
    /// lasts `ttl_secs` after its last lease renewal.
    pub fn new(store: Store, name: &str, identity: &str, ttl_secs: i64) -> Self {
        let key = election_key(&store, name);
        Self { store, key, identity: identity.to_string(), ttl_secs }
    }

    /// The election key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Waits until this campaigner is the leader. Fails only when the store
    /// does; a held key is waited out, however long that takes.
    pub async fn campaign(&self) -> Result<Leadership, StoreError> {
        let etcd = self.store.etcd();
        loop {
            // A fresh lease per attempt: waiting may outlast any lease we
            // held, and a lease that expired in the meantime cannot be put.
            let lease = Lease::grant(etcd, self.ttl_secs).await?;
            match self.try_acquire(lease.id()).await? {
                Attempt::Won { revision } => {
                    tracing::info!(election = %self.key, identity = %self.identity, revision, "became leader");
                    return Ok(Leadership::start(self, lease, revision));
                }
                Attempt::Held { holder, revision } => {
                    tracing::info!(election = %self.key, leader = %holder, "another campaigner leads; waiting");
                    // Best effort: an unused lease expires on its own anyway.
                    let _ = lease.revoke().await;
                    wait_for_vacancy(etcd, &self.key, revision).await;
                }
            }
        }
    }

    /// One transaction: create the key with our lease if nobody holds it.
    async fn try_acquire(&self, lease: i64) -> Result<Attempt, StoreError> {
        let etcd = self.store.etcd();
        let vacant = Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: self.key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            range_end: vec![],
        };
        let put = PutRequest {
            key: self.key.as_bytes().to_vec(),
            value: self.identity.as_bytes().to_vec(),
            lease,
            ..Default::default()
        };
        let read = RangeRequest { key: self.key.as_bytes().to_vec(), ..Default::default() };
        let txn = TxnRequest {
            compare: vec![vacant],
            success: vec![RequestOp { request: Some(Op::RequestPut(put)) }],
            failure: vec![RequestOp { request: Some(Op::RequestRange(read)) }],
        };
        let response = etcd.unary(etcd.kv().txn(txn)).await?;
        let revision = response.header.map(|h| h.revision).unwrap_or_default();
        if response.succeeded {
            return Ok(Attempt::Won { revision });
        }
        let holder = response
            .responses
            .into_iter()
            .find_map(|r| match r.response {
                Some(OpResponse::ResponseRange(range)) => range.kvs.into_iter().next(),
                _ => None,
            })
            .map(|kv| identity_of(&kv))
            .unwrap_or_default();
        Ok(Attempt::Held { holder, revision })
    }
}

enum Attempt {
    /// We created the key at `revision`.
    Won { revision: i64 },
    /// `holder` leads, as of store revision `revision`.
    Held { holder: String, revision: i64 },
}

/// The identity of the current leader of election `name`, if any.
pub async fn leader(store: &Store, name: &str) -> Result<Option<String>, StoreError> {
    Ok(read_key(store.etcd(), &election_key(store, name)).await?.0.map(|kv| identity_of(&kv)))
}

/// `{prefix}/election/{name}`.
fn election_key(store: &Store, name: &str) -> String {
    format!("{}/election/{}", store.prefix(), name)
}

fn identity_of(kv: &KeyValue) -> String {
    String::from_utf8_lossy(&kv.value).into_owned()
}

/// Being the leader: a fence for writes and a signal for when it ends.
pub struct Leadership {
    store: Store,
    key: String,
    identity: String,
    revision: i64,
    /// Taken by [`Leadership::resign`].
    lease: Option<Lease>,
    lost: watch::Receiver<bool>,
    guard: JoinHandle<()>,
}

impl Leadership {
    fn start(election: &Election, lease: Lease, revision: i64) -> Self {
        let (lost_tx, lost) = watch::channel(false);
        let ttl = Duration::from_secs(lease.ttl().max(1) as u64);
        let guard = tokio::spawn(guard(election.store.etcd().clone(), election.key.clone(), revision, ttl, lost_tx));
        Self {
            store: election.store.clone(),
            key: election.key.clone(),
            identity: election.identity.clone(),
            revision,
            lease: Some(lease),
            lost,
            guard,
        }
    }

    /// The store revision at which leadership was won.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// This leader's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// "The election key still has the mod_revision it was won at": holds
    /// exactly while this leadership does. Pass it to [`Store::fenced`].
    pub fn fence(&self) -> Compare {
        compare_mod_revision(&self.key, self.revision)
    }

    /// A store handle whose every write carries [`Leadership::fence`].
    pub fn store(&self) -> Store {
        self.store.fenced(self.fence())
    }

    /// False once loss of leadership has been noticed.
    pub fn is_leader(&self) -> bool {
        !*self.lost.borrow() && self.lease.as_ref().is_some_and(Lease::is_alive)
    }

    /// Resolves when leadership is lost (key deleted or changed, or not
    /// confirmed for a whole TTL), or when this `Leadership` is dropped.
    /// Independent of `self`'s lifetime, so it can be handed to a runner as
    /// its shutdown signal.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            // An error means the guard ended (we were dropped): lost too.
            let _ = lost.wait_for(|lost| *lost).await;
        }
    }

    /// Steps down: revokes the lease, which deletes the key at once so
    /// the next campaigner need not wait for expiry.
    pub async fn resign(mut self) -> Result<(), StoreError> {
        tracing::info!(election = %self.key, identity = %self.identity, "resigning");
        self.guard.abort();
        match self.lease.take() {
            Some(lease) => lease.revoke().await,
            None => Ok(()),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.guard.abort();
    }
}

/// Watches the election key and reads it every third of a TTL; sets `lost`
/// when the key changed or vanished, or nothing confirmed it for a TTL.
async fn guard(etcd: Etcd, key: String, revision: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let reason = watch_over(&etcd, &key, revision, ttl).await;
    tracing::warn!(election = %key, reason, "leadership lost");
    lost.send_replace(true);
}

async fn watch_over(etcd: &Etcd, key: &str, revision: i64, ttl: Duration) -> &'static str {
    let mut confirmed = Instant::now();
    let mut check = tokio::time::interval(ttl / 3);
    let mut from = revision + 1;
    loop {
        // `_requests` keeps the watch open while the stream is read.
        let (_requests, mut stream) = match watch_key(etcd, key, from).await {
            Ok((requests, stream)) => (Some(requests), Some(stream)),
            Err(_) => (None, None),
        };
        loop {
            tokio::select! {
                response = next_response(&mut stream) => match response {
                    Some(r) if !r.canceled && r.events.is_empty() => continue, // created, progress
                    Some(r) if !r.canceled => return CHANGED,
                    _ => stream = None, // broken: confirm by reading, then watch again
                },
                _ = check.tick() => {}
            }
            match read_key(etcd, key).await {
                Ok((Some(kv), current)) if kv.mod_revision == revision => {
                    confirmed = Instant::now();
                    if stream.is_none() {
                        from = current + 1;
                        break;
                    }
                }
                Ok(_) => return CHANGED,
                Err(_) if confirmed.elapsed() >= ttl => return "the store did not confirm leadership for a whole TTL",
                Err(_) => {}
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

const CHANGED: &str = "the election key changed or was deleted";

/// The next watch response; pending forever when there is no stream.
async fn next_response(stream: &mut Option<Streaming<WatchResponse>>) -> Option<WatchResponse> {
    match stream {
        Some(stream) => stream.next().await.and_then(Result::ok),
        None => std::future::pending().await,
    }
}

/// Waits until the key is deleted after `revision`, or the watch breaks
/// (then the caller simply tries again).
async fn wait_for_vacancy(etcd: &Etcd, key: &str, revision: i64) {
    if let Ok((_requests, mut stream)) = watch_key(etcd, key, revision + 1).await {
        while let Some(Ok(response)) = stream.next().await {
            if response.canceled {
                break;
            }
            if response.events.iter().any(|e| e.r#type == EventType::Delete as i32) {
                return;
            }
        }
    }
    tokio::time::sleep(RETRY_PAUSE).await;
}

/// A watch of one key from `start_revision`; keep the sender alive while
/// reading the stream.
async fn watch_key(
    etcd: &Etcd,
    key: &str,
    start_revision: i64,
) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>), StoreError> {
    let create = WatchCreateRequest { key: key.as_bytes().to_vec(), start_revision, ..Default::default() };
    let (requests, rx) = mpsc::channel(1);
    let _ = requests.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await;
    let stream = etcd.watch().watch(ReceiverStream::new(rx)).await.map_err(|s| etcd.rpc_error(s))?.into_inner();
    Ok((requests, stream))
}

/// The key's current value (if any) and the store revision of the read.
async fn read_key(etcd: &Etcd, key: &str) -> Result<(Option<KeyValue>, i64), StoreError> {
    let request = RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() };
    let response = etcd.unary(etcd.kv().range(request)).await?;
    let revision = response.header.map(|h| h.revision).unwrap_or_default();
    Ok((response.kvs.into_iter().next(), revision))
}
