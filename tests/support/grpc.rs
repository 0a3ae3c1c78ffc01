//! gRPC helpers for tests that speak the etcd v3 API directly: one
//! connection's KV/Watch/Lease clients, request builders, and a watch
//! session that waits with a timeout instead of hanging.

use std::time::Duration;

use futures::channel::mpsc;
use futures::StreamExt;
use shoal_store::proto::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    lease_client::LeaseClient,
    request_op::Request as Op,
    watch_client::WatchClient,
    watch_request::RequestUnion,
    Compare, Event, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use shoal_store::server::tonic::{transport::Channel, Streaming};

use super::StoreUnderTest;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Clients {
    pub kv: KvClient<Channel>,
    pub watch: WatchClient<Channel>,
    pub lease: LeaseClient<Channel>,
}

pub async fn connect(store: &StoreUnderTest) -> Clients {
    let channel = Channel::from_shared(store.endpoint()).unwrap().connect().await.expect("connecting");
    Clients {
        kv: KvClient::new(channel.clone()),
        // etcd batches a lagging watcher's events into responses of many MiB.
        watch: WatchClient::new(channel.clone()).max_decoding_message_size(64 << 20),
        lease: LeaseClient::new(channel),
    }
}

pub fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// The end of the range of every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = b(prefix);
    *end.last_mut().unwrap() += 1;
    end
}

impl Clients {
    pub async fn put(&mut self, key: &str, value: &str) -> i64 {
        let req = PutRequest { key: b(key), value: b(value), ..Default::default() };
        self.kv.put(req).await.expect("put").into_inner().header.unwrap().revision
    }

    pub async fn range(&mut self, req: RangeRequest) -> RangeResponse {
        self.kv.range(req).await.expect("range").into_inner()
    }

    pub async fn get(&mut self, key: &str) -> RangeResponse {
        self.range(RangeRequest { key: b(key), ..Default::default() }).await
    }

    pub async fn revision(&mut self) -> i64 {
        self.get("any").await.header.unwrap().revision
    }

    pub async fn txn(&mut self, req: TxnRequest) -> TxnResponse {
        self.kv.txn(req).await.expect("txn").into_inner()
    }

    pub fn watch(&mut self) -> WatchSession {
        let (tx, rx) = mpsc::unbounded();
        WatchSession { tx, pending: Some((self.watch.clone(), rx)), stream: None }
    }
}

pub fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp { request: Some(Op::RequestPut(PutRequest { key: b(key), value: b(value), ..Default::default() })) }
}

pub fn get_op(key: &str) -> RequestOp {
    RequestOp { request: Some(Op::RequestRange(RangeRequest { key: b(key), ..Default::default() })) }
}

pub fn compare(key: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
    Compare { key: b(key), target: target as i32, result: result as i32, target_union: Some(union), range_end: vec![] }
}

/// A watch stream. It is opened on first read, after the first request is
/// queued: etcd sends no response headers before it has something to say.
pub struct WatchSession {
    tx: mpsc::UnboundedSender<WatchRequest>,
    pending: Option<(WatchClient<Channel>, mpsc::UnboundedReceiver<WatchRequest>)>,
    stream: Option<Streaming<WatchResponse>>,
}

impl WatchSession {
    pub fn send(&self, request: RequestUnion) {
        self.tx.unbounded_send(WatchRequest { request_union: Some(request) }).expect("watch stream open");
    }

    /// Creates a watcher and returns its id from the `created` response.
    pub async fn create(&mut self, req: WatchCreateRequest) -> i64 {
        self.send(RequestUnion::CreateRequest(req));
        let resp = self.next().await;
        assert!(resp.created, "expected a created response, got {resp:?}");
        resp.watch_id
    }

    pub async fn stream(&mut self) -> &mut Streaming<WatchResponse> {
        if let Some((mut client, rx)) = self.pending.take() {
            let call = tokio::time::timeout(WAIT, client.watch(rx)).await.expect("watch call timed out");
            self.stream = Some(call.expect("watch").into_inner());
        }
        self.stream.as_mut().expect("watch stream opened")
    }

    pub async fn next(&mut self) -> WatchResponse {
        let stream = self.stream().await;
        tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("no watch response in time")
            .expect("watch stream ended")
            .expect("watch stream failed")
    }

    /// Collects responses until `n` events arrived (or fails after WAIT).
    pub async fn events(&mut self, n: usize) -> Vec<(i64, Event)> {
        let mut out = Vec::new();
        while out.len() < n {
            let resp = self.next().await;
            assert!(!resp.canceled, "watch cancelled: {resp:?}");
            for e in resp.events {
                out.push((resp.watch_id, e));
            }
        }
        out
    }

    /// Whether anything arrives within `d`.
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        let stream = self.stream().await;
        tokio::time::timeout(d, stream.next()).await.is_err()
    }
}

pub fn key_of(e: &Event) -> String {
    String::from_utf8_lossy(&e.kv.as_ref().unwrap().key).into_owned()
}
