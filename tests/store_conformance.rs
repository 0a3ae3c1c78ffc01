//! One suite of etcd v3 API behaviours, written against the generated gRPC
//! clients and run unchanged against the embedded store (a real `shoal
//! store` process) and a real etcd: whatever passes on etcd must pass on
//! `shoal store`.

mod support;

use std::time::Duration;

use futures::StreamExt;
use shoal_store::proto::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    response_op::Response as OpResponse,
    watch_create_request::FilterType,
    watch_request::RequestUnion,
    CompactionRequest, DeleteRangeRequest, EventType, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, TxnRequest, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest,
};
use shoal_store::server::tonic::Code;
use support::grpc::{b, compare, connect, get_op, key_of, prefix_end, put_op, WAIT};
use support::StoreUnderTest;

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[tokio::test] async fn $name() { super::$name(&super::StoreUnderTest::embedded()).await } )*
        }
        mod etcd {
            $( #[tokio::test] async fn $name() { super::$name(&super::StoreUnderTest::etcd()).await } )*
        }
    };
}

conformance!(
    put_then_get_tracks_versions_and_revisions,
    prefix_read_with_limit_reports_more_and_full_count,
    read_at_a_past_revision_sees_the_old_value,
    keys_only_and_count_only_strip_the_answer,
    sort_and_revision_filters_apply_before_limit,
    delete_range_returns_prev_kvs_in_one_revision,
    no_op_writes_do_not_take_a_revision,
    txn_compare_on_mod_revision_picks_the_branch,
    create_if_absent_uses_create_revision_zero,
    txn_ops_share_one_revision_and_see_earlier_writes,
    same_key_twice_in_a_txn_is_rejected,
    compacted_and_future_revisions_are_out_of_range,
    put_with_unknown_lease_is_not_found,
    watch_from_a_past_revision_replays_history,
    watch_prefix_streams_live_events_in_order,
    watch_with_prev_kv_and_noput_filter,
    cancelled_watch_gets_no_more_events,
    watch_on_a_compacted_revision_is_cancelled,
    progress_request_reports_a_delivered_revision,
    slow_watcher_catches_up_without_gaps,
    lease_grant_keepalive_ttl_and_revoke_deletes_keys,
    expired_lease_deletes_its_keys,
);

// ---------------------------------------------------------------- KV

async fn put_then_get_tracks_versions_and_revisions(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let r1 = c.put("a", "1").await;
    let got = c.get("a").await;
    let header = got.header.unwrap();
    assert_eq!(header.revision, r1);
    assert!(header.cluster_id != 0 && header.member_id != 0 && header.raft_term >= 1, "{header:?}");
    let kv = &got.kvs[0];
    assert_eq!((kv.value.as_slice(), kv.create_revision, kv.mod_revision, kv.version), (&b"1"[..], r1, r1, 1));
    let r2 = c.put("a", "2").await;
    assert_eq!(r2, r1 + 1);
    let kv = c.get("a").await.kvs.remove(0);
    assert_eq!((kv.value, kv.create_revision, kv.mod_revision, kv.version), (b("2"), r1, r2, 2));
    // Delete and re-create: the version starts over, create_revision moves.
    c.kv.delete_range(DeleteRangeRequest { key: b("a"), ..Default::default() }).await.unwrap();
    let r4 = c.put("a", "3").await;
    let kv = c.get("a").await.kvs.remove(0);
    assert_eq!((kv.create_revision, kv.version), (r4, 1));
}

async fn prefix_read_with_limit_reports_more_and_full_count(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    for i in [3, 1, 5, 2, 4] {
        c.put(&format!("p/{i}"), &i.to_string()).await;
    }
    c.put("q", "outside").await;
    let resp =
        c.range(RangeRequest { key: b("p/"), range_end: prefix_end("p/"), limit: 2, ..Default::default() }).await;
    let keys: Vec<_> = resp.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b("p/1"), b("p/2")]);
    assert!(resp.more);
    assert_eq!(resp.count, 5);
    // "\0" as range_end: every key from `key` on.
    let all = c.range(RangeRequest { key: b("p/4"), range_end: vec![0], ..Default::default() }).await;
    assert_eq!(all.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), vec![b("p/4"), b("p/5"), b("q")]);
    assert!(!all.more);
}

async fn read_at_a_past_revision_sees_the_old_value(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let r1 = c.put("k", "old").await;
    c.put("k", "new").await;
    c.put("other", "x").await;
    let past = c.range(RangeRequest { key: b("k"), revision: r1, ..Default::default() }).await;
    assert_eq!(past.kvs[0].value, b("old"));
    assert_eq!(past.header.unwrap().revision, r1 + 2, "the header carries the current revision");
    let before = c.range(RangeRequest { key: b("other"), revision: r1, ..Default::default() }).await;
    assert!(before.kvs.is_empty());
}

async fn keys_only_and_count_only_strip_the_answer(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    c.put("k/a", "va").await;
    c.put("k/b", "vb").await;
    let keys = c
        .range(RangeRequest { key: b("k/"), range_end: prefix_end("k/"), keys_only: true, ..Default::default() })
        .await;
    assert_eq!(keys.kvs.len(), 2);
    assert!(keys.kvs.iter().all(|kv| kv.value.is_empty() && kv.version == 1));
    let count = c
        .range(RangeRequest { key: b("k/"), range_end: prefix_end("k/"), count_only: true, ..Default::default() })
        .await;
    assert!(count.kvs.is_empty());
    assert_eq!(count.count, 2);
}

async fn sort_and_revision_filters_apply_before_limit(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let r1 = c.put("s/a", "3").await;
    c.put("s/b", "1").await;
    c.put("s/c", "2").await;
    let range = |sort_order: SortOrder, sort_target: SortTarget| RangeRequest {
        key: b("s/"),
        range_end: prefix_end("s/"),
        sort_order: sort_order as i32,
        sort_target: sort_target as i32,
        ..Default::default()
    };
    let desc = c.range(RangeRequest { limit: 2, ..range(SortOrder::Descend, SortTarget::Key) }).await;
    assert_eq!(desc.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), vec![b("s/c"), b("s/b")]);
    let by_value = c.range(range(SortOrder::Ascend, SortTarget::Value)).await;
    assert_eq!(by_value.kvs.iter().map(|kv| kv.value.clone()).collect::<Vec<_>>(), vec![b("1"), b("2"), b("3")]);
    let newer = c.range(RangeRequest { min_mod_revision: r1 + 1, ..range(SortOrder::None, SortTarget::Key) }).await;
    assert_eq!(newer.kvs.len(), 2);
    assert_eq!(newer.count, 3, "count ignores the revision filters");
}

async fn delete_range_returns_prev_kvs_in_one_revision(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    for k in ["d/1", "d/2", "d/3"] {
        c.put(k, k).await;
    }
    let before = c.revision().await;
    let resp =
        c.kv.delete_range(DeleteRangeRequest { key: b("d/"), range_end: prefix_end("d/"), prev_kv: true })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(resp.deleted, 3);
    assert_eq!(resp.prev_kvs.iter().map(|kv| kv.value.clone()).collect::<Vec<_>>(), vec![b("d/1"), b("d/2"), b("d/3")]);
    assert_eq!(resp.header.unwrap().revision, before + 1);
    assert_eq!(
        c.range(RangeRequest { key: b("d/"), range_end: prefix_end("d/"), ..Default::default() }).await.count,
        0
    );
}

async fn no_op_writes_do_not_take_a_revision(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let r = c.put("x", "1").await;
    let del =
        c.kv.delete_range(DeleteRangeRequest { key: b("missing"), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!((del.deleted, del.header.unwrap().revision), (0, r));
    let guard = compare("x", CompareTarget::Version, CompareResult::Greater, TargetUnion::Version(10));
    let txn = c.txn(TxnRequest { compare: vec![guard], success: vec![put_op("x", "2")], failure: vec![] }).await;
    assert!(!txn.succeeded);
    assert_eq!(txn.header.unwrap().revision, r);
    assert_eq!(c.revision().await, r);
}

async fn txn_compare_on_mod_revision_picks_the_branch(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let r = c.put("cas", "v1").await;
    let cas = |rev: i64, value: &str| TxnRequest {
        compare: vec![compare("cas", CompareTarget::Mod, CompareResult::Equal, TargetUnion::ModRevision(rev))],
        success: vec![put_op("cas", value)],
        failure: vec![get_op("cas")],
    };
    let ok = c.txn(cas(r, "v2")).await;
    assert!(ok.succeeded);
    let r2 = ok.header.unwrap().revision;
    assert_eq!(r2, r + 1);
    let stale = c.txn(cas(r, "v3")).await;
    assert!(!stale.succeeded);
    match &stale.responses[0].response {
        Some(OpResponse::ResponseRange(got)) => {
            assert_eq!((got.kvs[0].value.clone(), got.kvs[0].mod_revision), (b("v2"), r2))
        }
        other => panic!("expected a range response, got {other:?}"),
    }
    assert_eq!(c.get("cas").await.kvs[0].value, b("v2"));
}

async fn create_if_absent_uses_create_revision_zero(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let create = |value: &str| TxnRequest {
        compare: vec![compare("once", CompareTarget::Create, CompareResult::Equal, TargetUnion::CreateRevision(0))],
        success: vec![put_op("once", value)],
        failure: vec![],
    };
    assert!(c.txn(create("first")).await.succeeded);
    assert!(!c.txn(create("second")).await.succeeded);
    assert_eq!(c.get("once").await.kvs[0].value, b("first"));
    // A VALUE compare on a missing key fails even with NOT_EQUAL.
    let ne = compare("absent", CompareTarget::Value, CompareResult::NotEqual, TargetUnion::Value(b("x")));
    assert!(!c.txn(TxnRequest { compare: vec![ne], success: vec![], failure: vec![] }).await.succeeded);
}

async fn txn_ops_share_one_revision_and_see_earlier_writes(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let before = c.put("t/seed", "0").await;
    let resp = c
        .txn(TxnRequest {
            compare: vec![],
            success: vec![put_op("t/a", "1"), put_op("t/b", "2"), get_op("t/a")],
            failure: vec![],
        })
        .await;
    assert!(resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, before + 1);
    match &resp.responses[2].response {
        Some(OpResponse::ResponseRange(got)) => assert_eq!(got.kvs[0].value, b("1")),
        other => panic!("expected a range response, got {other:?}"),
    }
    let all = c.range(RangeRequest { key: b("t/"), range_end: prefix_end("t/"), ..Default::default() }).await;
    let mods: Vec<_> = all.kvs.iter().map(|kv| kv.mod_revision).collect();
    assert_eq!(mods, vec![before + 1, before + 1, before]);
}

async fn same_key_twice_in_a_txn_is_rejected(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let r = c.put("seed", "0").await;
    let err = c
        .kv
        .txn(TxnRequest { compare: vec![], success: vec![put_op("dup", "1"), put_op("dup", "2")], failure: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: duplicate key given in txn request");
    assert!(c.get("dup").await.kvs.is_empty());
    assert_eq!(c.revision().await, r);
}

async fn compacted_and_future_revisions_are_out_of_range(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let r1 = c.put("c", "1").await;
    let r2 = c.put("c", "2").await;
    c.put("c", "3").await;
    c.kv.compact(CompactionRequest { revision: r2, physical: true }).await.unwrap();
    let at = |revision| RangeRequest { key: b("c"), revision, ..Default::default() };
    let err = c.kv.range(at(r1)).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
    );
    assert_eq!(c.range(at(r2)).await.kvs[0].value, b("2"), "the compaction revision itself stays readable");
    let err = c.kv.range(at(r2 + 100)).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision")
    );
    let err = c.kv.compact(CompactionRequest { revision: r2, physical: false }).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(c.get("c").await.kvs[0].value, b("3"));
}

async fn put_with_unknown_lease_is_not_found(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let err =
        c.kv.put(PutRequest { key: b("l"), value: b("v"), lease: 0x1234_5678, ..Default::default() })
            .await
            .unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::NotFound, "etcdserver: requested lease not found"));
    assert!(c.get("l").await.kvs.is_empty());
}

// ---------------------------------------------------------------- Watch

async fn watch_from_a_past_revision_replays_history(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let r1 = c.put("h/a", "1").await;
    c.put("h/b", "1").await;
    c.kv.delete_range(DeleteRangeRequest { key: b("h/a"), ..Default::default() }).await.unwrap();
    let mut w = c.watch();
    w.create(WatchCreateRequest {
        key: b("h/"),
        range_end: prefix_end("h/"),
        start_revision: r1,
        ..Default::default()
    })
    .await;
    let events = w.events(3).await;
    let seen: Vec<_> = events.iter().map(|(_, e)| (key_of(e), e.r#type, e.kv.as_ref().unwrap().mod_revision)).collect();
    let (put, del) = (EventType::Put as i32, EventType::Delete as i32);
    assert_eq!(seen, vec![("h/a".into(), put, r1), ("h/b".into(), put, r1 + 1), ("h/a".into(), del, r1 + 2)]);
    // History then live, with nothing lost or repeated in between.
    let r4 = c.put("h/c", "1").await;
    let live = w.events(1).await;
    assert_eq!((key_of(&live[0].1), live[0].1.kv.as_ref().unwrap().mod_revision), ("h/c".into(), r4));
}

async fn watch_prefix_streams_live_events_in_order(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let mut w = c.watch();
    let id =
        w.create(WatchCreateRequest { key: b("live/"), range_end: prefix_end("live/"), ..Default::default() }).await;
    let first = c.put("live/0", "v").await;
    c.put("elsewhere", "v").await;
    for i in 1..20 {
        c.put(&format!("live/{i}"), "v").await;
    }
    let txn = c
        .txn(TxnRequest {
            compare: vec![],
            success: vec![put_op("live/t1", "v"), put_op("live/t2", "v")],
            failure: vec![],
        })
        .await;
    let txn_rev = txn.header.unwrap().revision;
    let events = w.events(22).await;
    assert!(events.iter().all(|(wid, _)| *wid == id));
    let revs: Vec<i64> = events.iter().map(|(_, e)| e.kv.as_ref().unwrap().mod_revision).collect();
    let mut expected: Vec<i64> = std::iter::once(first).chain((first + 2)..(first + 21)).collect();
    expected.extend([txn_rev, txn_rev]);
    assert_eq!(revs, expected, "every event once, in revision order, the txn's two together");
    assert!(events.iter().all(|(_, e)| key_of(e).starts_with("live/")));
}

async fn watch_with_prev_kv_and_noput_filter(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let mut w = c.watch();
    let all = w.create(WatchCreateRequest { key: b("pk"), prev_kv: true, ..Default::default() }).await;
    let deletes = w
        .create(WatchCreateRequest {
            key: b("pk"),
            filters: vec![FilterType::Noput as i32],
            watch_id: 77,
            ..Default::default()
        })
        .await;
    assert_eq!(deletes, 77, "a client-chosen watch id is honoured");
    c.put("pk", "one").await;
    c.put("pk", "two").await;
    c.kv.delete_range(DeleteRangeRequest { key: b("pk"), ..Default::default() }).await.unwrap();
    let events = w.events(4).await;
    let mine: Vec<_> = events.iter().filter(|(id, _)| *id == all).map(|(_, e)| e.clone()).collect();
    assert_eq!(mine.len(), 3);
    assert!(mine[0].prev_kv.is_none());
    assert_eq!(mine[1].prev_kv.as_ref().unwrap().value, b("one"));
    assert_eq!(mine[2].prev_kv.as_ref().unwrap().value, b("two"));
    let filtered: Vec<_> = events.iter().filter(|(id, _)| *id == deletes).collect();
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].1.r#type, EventType::Delete as i32);
    assert!(filtered[0].1.prev_kv.is_none(), "prev_kv only when asked");
}

async fn cancelled_watch_gets_no_more_events(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let mut w = c.watch();
    let id = w.create(WatchCreateRequest { key: b("cw"), ..Default::default() }).await;
    c.put("cw", "1").await;
    assert_eq!(w.events(1).await.len(), 1);
    w.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: id }));
    let resp = w.next().await;
    assert!(resp.canceled);
    assert_eq!(resp.watch_id, id);
    c.put("cw", "2").await;
    assert!(w.quiet_for(Duration::from_millis(500)).await, "no events after cancel");
}

async fn watch_on_a_compacted_revision_is_cancelled(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let r1 = c.put("cmp", "1").await;
    let r2 = c.put("cmp", "2").await;
    c.put("cmp", "3").await;
    c.kv.compact(CompactionRequest { revision: r2, physical: true }).await.unwrap();
    let mut w = c.watch();
    w.send(RequestUnion::CreateRequest(WatchCreateRequest { key: b("cmp"), start_revision: r1, ..Default::default() }));
    let mut resp = w.next().await;
    if resp.created && !resp.canceled {
        resp = w.next().await;
    }
    assert!(resp.canceled, "expected a cancel, got {resp:?}");
    assert_eq!(resp.compact_revision, r2);
    assert!(resp.events.is_empty());
}

async fn progress_request_reports_a_delivered_revision(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let mut w = c.watch();
    w.create(WatchCreateRequest { key: b("pr"), ..Default::default() }).await;
    c.put("pr", "1").await;
    let r = c.put("other", "1").await;
    assert_eq!(w.events(1).await.len(), 1);
    w.send(RequestUnion::ProgressRequest(WatchProgressRequest {}));
    let resp = w.next().await;
    assert!(resp.events.is_empty() && !resp.created && !resp.canceled, "got {resp:?}");
    assert_eq!(resp.header.unwrap().revision, r);
}

async fn slow_watcher_catches_up_without_gaps(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let mut w = c.watch();
    w.create(WatchCreateRequest { key: b("slow/"), range_end: prefix_end("slow/"), ..Default::default() }).await;
    // The watcher reads nothing while 2000 puts of 8 KiB go by: far more than
    // any buffer between the writer and this client holds, so the embedded
    // store's stream overruns its feed and replays from history.
    let n = 2000;
    let value = "v".repeat(8192);
    let revs: Vec<i64> = futures::stream::iter(0..n)
        .map(|i| {
            let (mut kv, value) = (c.kv.clone(), value.clone());
            async move {
                let req = PutRequest { key: b(&format!("slow/{i:05}")), value: b(&value), ..Default::default() };
                kv.put(req).await.expect("put while a watcher lags").into_inner().header.unwrap().revision
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let (first, last) = (*revs.iter().min().unwrap(), *revs.iter().max().unwrap());
    assert_eq!(last - first + 1, n as i64, "writers were not held up into gaps");
    let events = w.events(n).await;
    let seen: Vec<i64> = events.iter().map(|(_, e)| e.kv.as_ref().unwrap().mod_revision).collect();
    assert_eq!(seen, (first..=last).collect::<Vec<_>>(), "every revision once, in order");
}

/// Embedded only: etcd's interval is a server flag; ours comes from the
/// environment (`SHOAL_STORE_PROGRESS_NOTIFY_INTERVAL`).
#[tokio::test]
async fn progress_notify_arrives_at_the_configured_interval() {
    let store = StoreUnderTest::embedded_with_env(&[("SHOAL_STORE_PROGRESS_NOTIFY_INTERVAL", "300ms")]);
    let mut c = connect(&store).await;
    let r = c.put("pn", "1").await;
    let mut w = c.watch();
    let id = w.create(WatchCreateRequest { key: b("pn"), progress_notify: true, ..Default::default() }).await;
    let started = tokio::time::Instant::now();
    let notify = w.next().await;
    assert!(started.elapsed() < Duration::from_secs(3), "progress notify took {:?}", started.elapsed());
    assert_eq!(notify.watch_id, id);
    assert!(notify.events.is_empty() && !notify.canceled);
    assert_eq!(notify.header.unwrap().revision, r);
}

// ---------------------------------------------------------------- Lease

async fn lease_grant_keepalive_ttl_and_revoke_deletes_keys(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let grant = c.lease.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await.unwrap().into_inner();
    assert!(grant.id > 0);
    assert_eq!(grant.ttl, 60);
    let id = grant.id;
    for k in ["ls/a", "ls/b"] {
        c.kv.put(PutRequest { key: b(k), value: b("v"), lease: id, ..Default::default() }).await.unwrap();
    }
    assert_eq!(c.get("ls/a").await.kvs[0].lease, id);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(LeaseKeepAliveRequest { id }).unwrap(); // before the call: etcd answers headers with data
    let mut keepalive = c.lease.lease_keep_alive(rx).await.unwrap().into_inner();
    let ka = tokio::time::timeout(WAIT, keepalive.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((ka.id, ka.ttl), (id, 60));
    let ttl = c.lease.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true }).await.unwrap().into_inner();
    assert_eq!(ttl.granted_ttl, 60);
    assert!(ttl.ttl > 50 && ttl.ttl <= 60, "remaining {}", ttl.ttl);
    let mut keys = ttl.keys.clone();
    keys.sort(); // etcd lists them in no particular order
    assert_eq!(keys, vec![b("ls/a"), b("ls/b")]);
    let before = c.revision().await;
    let revoked = c.lease.lease_revoke(LeaseRevokeRequest { id }).await.unwrap().into_inner();
    assert_eq!(revoked.header.unwrap().revision, before + 1, "both keys go in one revision");
    assert_eq!(
        c.range(RangeRequest { key: b("ls/"), range_end: prefix_end("ls/"), ..Default::default() }).await.count,
        0
    );
    let gone = c.lease.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false }).await.unwrap().into_inner();
    assert_eq!(gone.ttl, -1);
    let err = c.lease.lease_revoke(LeaseRevokeRequest { id }).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::NotFound, "etcdserver: requested lease not found"));
    // A client-chosen id is honoured, and granting it twice is refused.
    let mine = c.lease.lease_grant(LeaseGrantRequest { ttl: 30, id: 4242 }).await.unwrap().into_inner();
    assert_eq!(mine.id, 4242);
    assert!(c.lease.lease_grant(LeaseGrantRequest { ttl: 30, id: 4242 }).await.is_err());
}

async fn expired_lease_deletes_its_keys(store: &StoreUnderTest) {
    let mut c = connect(store).await;
    let id = c.lease.lease_grant(LeaseGrantRequest { ttl: 2, id: 0 }).await.unwrap().into_inner().id;
    c.kv.put(PutRequest { key: b("ex/a"), value: b("v"), lease: id, ..Default::default() }).await.unwrap();
    c.kv.put(PutRequest { key: b("ex/b"), value: b("v"), lease: id, ..Default::default() }).await.unwrap();
    let r = c.put("ex/stays", "v").await;
    let mut w = c.watch();
    w.create(WatchCreateRequest { key: b("ex/"), range_end: prefix_end("ex/"), ..Default::default() }).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while c.range(RangeRequest { key: b("ex/"), range_end: prefix_end("ex/"), ..Default::default() }).await.count > 1 {
        assert!(tokio::time::Instant::now() < deadline, "lease keys still there after 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.get("ex/stays").await.kvs.len(), 1);
    let events = w.events(2).await;
    assert!(events.iter().all(|(_, e)| e.r#type == EventType::Delete as i32));
    let revs: Vec<i64> = events.iter().map(|(_, e)| e.kv.as_ref().unwrap().mod_revision).collect();
    assert_eq!(revs, vec![r + 1, r + 1], "expiry deletes the lease's keys in one revision");
}
