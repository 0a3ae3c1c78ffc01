//! Crash safety of the embedded store: whatever `shoal store` acknowledged
//! is there after `kill -9` and a restart, revisions continue where they
//! stopped, and leases (with their keys) survive.

mod support;

use futures::StreamExt;
use shoal_store::proto::{
    kv_client::KvClient, lease_client::LeaseClient, LeaseGrantRequest, LeaseTimeToLiveRequest, PutRequest,
    RangeRequest, TxnRequest,
};
use shoal_store::server::tonic::transport::Channel;
use support::StoreUnderTest;

async fn channel(store: &StoreUnderTest) -> Channel {
    Channel::from_shared(store.endpoint()).unwrap().connect().await.expect("connecting")
}

fn put(key: String, value: &str, lease: i64) -> PutRequest {
    PutRequest { key: key.into_bytes(), value: value.as_bytes().to_vec(), lease, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_revisions_continue() {
    let mut store = StoreUnderTest::embedded();
    let kv = KvClient::new(channel(&store).await);
    // Concurrent writers, so acknowledgements come from shared group commits.
    let writes = futures::stream::iter(0..200)
        .map(|i| {
            let mut kv = kv.clone();
            async move { kv.put(put(format!("d/{i:03}"), &format!("v{i}"), 0)).await.expect("put").into_inner() }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let last = writes.iter().map(|w| w.header.as_ref().unwrap().revision).max().unwrap();
    assert_eq!(last, 201, "200 puts on an empty store end at revision 201");
    let mut txn_kv = kv.clone();
    let txn = TxnRequest {
        compare: vec![],
        success: vec![shoal_store::proto::RequestOp {
            request: Some(shoal_store::proto::request_op::Request::RequestPut(put("d/txn".into(), "t", 0))),
        }],
        failure: vec![],
    };
    let txn_rev = txn_kv.txn(txn).await.unwrap().into_inner().header.unwrap().revision;
    assert_eq!(txn_rev, last + 1);

    store.kill();
    store.restart();

    let mut kv = KvClient::new(channel(&store).await);
    let all = kv
        .range(RangeRequest { key: b"d/".to_vec(), range_end: b"d0".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.count, 201);
    assert_eq!(all.header.unwrap().revision, txn_rev);
    let v17 = all.kvs.iter().find(|kv| kv.key == b"d/017").unwrap();
    assert_eq!(v17.value, b"v17");
    let next = kv.put(put("after".into(), "restart", 0)).await.unwrap().into_inner();
    assert_eq!(next.header.unwrap().revision, txn_rev + 1, "the next write takes the next revision");
}

#[tokio::test]
async fn leases_and_their_keys_survive_a_restart() {
    let mut store = StoreUnderTest::embedded();
    let ch = channel(&store).await;
    let mut lease = LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch);
    let id = lease.lease_grant(LeaseGrantRequest { ttl: 120, id: 0 }).await.unwrap().into_inner().id;
    kv.put(put("held".into(), "v", id)).await.unwrap();

    store.kill();
    store.restart();

    let ch = channel(&store).await;
    let mut lease = LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch);
    let ttl = lease.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true }).await.unwrap().into_inner();
    assert_eq!(ttl.granted_ttl, 120);
    assert!(ttl.ttl > 100, "deadline restarts at now + TTL, got {}", ttl.ttl);
    assert_eq!(ttl.keys, vec![b"held".to_vec()]);
    let held = kv.range(RangeRequest { key: b"held".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(held.kvs[0].lease, id);
    // The lease still works after the restart: revoking it removes the key.
    lease.lease_revoke(shoal_store::proto::LeaseRevokeRequest { id }).await.unwrap();
    let gone = kv.range(RangeRequest { key: b"held".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    assert!(gone.kvs.is_empty());
}
