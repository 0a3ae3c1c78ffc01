//! A list-then-watch stream of one kind, after kube-runtime's watcher: list
//! at revision R, watch from R+1, and start over with a fresh list when the
//! store reports that R+1 was compacted or the watch broke.
//!
//! # Guarantees
//! - Every [`WatchEvent::Restarted`] carries the complete set of objects at
//!   one revision; events after it apply on top of that set, in order.
//! - No event is skipped silently: a gap (compaction, lost stream) always
//!   leads to a new `Restarted`.
//!
//! # Caveats
//! - Between a break and the relist, intermediate states may be missed:
//!   consumers must be level-triggered.

use std::time::Duration;

use futures::StreamExt;
use shoal_crd::Resource;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::StoreError;
use super::keys::{kind_prefix, prefix_range_end};
use super::resources::{decode, Store};
use crate::proto::{watch_request::RequestUnion, EventType, WatchCreateRequest, WatchRequest, WatchResponse};

/// One change seen by a watcher.
#[derive(Debug, Clone)]
pub enum WatchEvent<R> {
    /// A full, consistent list: replace everything known so far.
    Restarted(Vec<R>),
    /// An object was created or changed.
    Applied(R),
    /// An object was deleted (its last state).
    Deleted(R),
}

/// Watches every object of kind `R`; errors are reported on the stream and
/// the watcher retries with backoff until the stream is dropped.
pub fn watcher<R: Resource>(store: Store) -> ReceiverStream<Result<WatchEvent<R>, StoreError>> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            let result = list_then_watch::<R>(&store, &tx, &mut backoff).await;
            match result {
                Err(Stop) => return,
                Ok(Some(err)) => {
                    if tx.send(Err(err)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff.next()).await;
                }
                Ok(None) => {}
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The receiver went away: stop watching.
struct Stop;

/// Lists, then streams events until the watch ends. `Ok(Some(err))` asks
/// the caller to report and retry; `Ok(None)` to relist at once.
async fn list_then_watch<R: Resource>(
    store: &Store,
    tx: &mpsc::Sender<Result<WatchEvent<R>, StoreError>>,
    backoff: &mut Backoff,
) -> Result<Option<StoreError>, Stop> {
    let (objects, revision) = match store.list::<R>().await {
        Ok(listed) => listed,
        Err(err) => return Ok(Some(err)),
    };
    tx.send(Ok(WatchEvent::Restarted(objects))).await.map_err(|_| Stop)?;
    let prefix = kind_prefix::<R>(store.prefix()).into_bytes();
    let create = WatchCreateRequest {
        range_end: prefix_range_end(&prefix),
        key: prefix,
        start_revision: revision + 1,
        prev_kv: true,
        ..Default::default()
    };
    let (req_tx, req_rx) = mpsc::channel(1);
    let _ = req_tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await;
    let etcd = store.etcd();
    let mut responses = match etcd.watch().watch(ReceiverStream::new(req_rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Ok(Some(etcd.rpc_error(status))),
    };
    loop {
        let response = match responses.next().await {
            Some(Ok(response)) => response,
            Some(Err(status)) => return Ok(Some(etcd.rpc_error(status))),
            None => return Ok(None),
        };
        if response.canceled {
            if response.compact_revision > 0 {
                tracing::info!(
                    kind = R::KIND,
                    compact_revision = response.compact_revision,
                    "watch compacted; relisting"
                );
                return Ok(None);
            }
            return Ok(Some(StoreError::Rpc {
                endpoint: etcd.endpoint().to_string(),
                status: tonic::Status::aborted(format!("watch canceled: {}", response.cancel_reason)),
            }));
        }
        backoff.reset();
        for event in events_of::<R>(response) {
            tx.send(event).await.map_err(|_| Stop)?;
        }
    }
    // `req_tx` lives until here so the server keeps the watch open.
}

fn events_of<R: Resource>(response: WatchResponse) -> Vec<Result<WatchEvent<R>, StoreError>> {
    response
        .events
        .into_iter()
        .filter_map(|event| {
            let deleted = event.r#type == EventType::Delete as i32;
            if deleted {
                event.prev_kv.map(|kv| decode::<R>(&kv).map(WatchEvent::Deleted))
            } else {
                event.kv.map(|kv| decode::<R>(&kv).map(WatchEvent::Applied))
            }
        })
        .collect()
}

/// Exponential backoff from 100 ms to 10 s.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let delay = Duration::from_millis(100) * 2u32.saturating_pow(self.attempt.min(7));
        self.attempt += 1;
        delay.min(Duration::from_secs(10))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| b.next()).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(10));
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(100));
    }
}
