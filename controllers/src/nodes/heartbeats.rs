//! Which nodes have a heartbeat key (`{prefix}/heartbeats/<node>`, written
//! by each agent under its lease). Only the keys matter, not their values,
//! so this is a key-set watcher of its own rather than a typed reflector:
//! list the prefix (keys only) at revision R, watch from R+1, relist on
//! any break or compaction.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{Stream, StreamExt};
use shoal_crd::HEARTBEATS;
use shoal_store::client::keys::prefix_range_end;
use shoal_store::client::{Store, StoreError};
use shoal_store::proto::{watch_request::RequestUnion, EventType, RangeRequest, WatchCreateRequest, WatchRequest};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// The set of nodes with a live heartbeat; `None` until the first list.
#[derive(Clone)]
pub struct Heartbeats {
    alive: watch::Receiver<Option<BTreeSet<String>>>,
}

impl Heartbeats {
    /// Starts watching; the task runs until aborted.
    pub fn start(store: Store) -> (Self, JoinHandle<()>) {
        let (tx, alive) = watch::channel(None);
        (Self { alive }, tokio::spawn(watch_forever(store, tx)))
    }

    /// Whether `node` has a heartbeat (false before the first list).
    pub fn is_alive(&self, node: &str) -> bool {
        self.alive.borrow().as_ref().is_some_and(|set| set.contains(node))
    }

    /// Waits for the first complete list.
    pub async fn wait_until_ready(&self) {
        let mut alive = self.alive.clone();
        let _ = alive.wait_for(Option::is_some).await;
    }

    /// The nodes whose heartbeat appeared or vanished, as they change
    /// (all of them after the first list).
    pub fn changes(&self) -> impl Stream<Item = String> + Send + 'static {
        let alive = self.alive.clone();
        futures::stream::unfold((alive, BTreeSet::<String>::new()), |(mut alive, seen)| async move {
            if alive.changed().await.is_err() {
                return None;
            }
            let now = alive.borrow_and_update().clone().unwrap_or_default();
            let changed: Vec<String> = now.symmetric_difference(&seen).cloned().collect();
            Some((futures::stream::iter(changed), (alive, now)))
        })
        .flatten()
    }
}

async fn watch_forever(store: Store, tx: watch::Sender<Option<BTreeSet<String>>>) {
    let mut pause = Duration::from_millis(100);
    loop {
        match list_then_watch(&store, &tx).await {
            Ok(()) => pause = Duration::from_millis(100),
            Err(err) => {
                tracing::warn!(error = %err, "heartbeat watch failed; relisting");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Lists, then applies watch events until the watch ends.
async fn list_then_watch(store: &Store, tx: &watch::Sender<Option<BTreeSet<String>>>) -> Result<(), StoreError> {
    let prefix = format!("{}/{HEARTBEATS}/", store.prefix());
    let etcd = store.etcd();
    let range = RangeRequest {
        key: prefix.clone().into_bytes(),
        range_end: prefix_range_end(prefix.as_bytes()),
        keys_only: true,
        ..Default::default()
    };
    let listed = etcd.unary(etcd.kv().range(range)).await?;
    let revision = listed.header.map(|h| h.revision).unwrap_or_default();
    let node_of = |key: &[u8]| String::from_utf8_lossy(key).strip_prefix(&prefix).map(str::to_string);
    let set: BTreeSet<String> = listed.kvs.iter().filter_map(|kv| node_of(&kv.key)).collect();
    tx.send_replace(Some(set));

    let create = WatchCreateRequest {
        key: prefix.clone().into_bytes(),
        range_end: prefix_range_end(prefix.as_bytes()),
        start_revision: revision + 1,
        ..Default::default()
    };
    let (requests, rx) = mpsc::channel(1);
    let _ = requests.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await;
    let mut stream = etcd.watch().watch(ReceiverStream::new(rx)).await.map_err(|s| etcd.rpc_error(s))?.into_inner();
    while let Some(response) = stream.next().await {
        let response = response.map_err(|s| etcd.rpc_error(s))?;
        if response.canceled {
            return Ok(()); // compacted or cancelled: relist
        }
        if response.events.is_empty() {
            continue;
        }
        tx.send_modify(|set| {
            let set = set.get_or_insert_with(BTreeSet::new);
            for event in &response.events {
                let Some(node) = event.kv.as_ref().and_then(|kv| node_of(&kv.key)) else { continue };
                if event.r#type == EventType::Delete as i32 {
                    set.remove(&node);
                } else {
                    set.insert(node);
                }
            }
        });
    }
    drop(requests);
    Ok(())
}
