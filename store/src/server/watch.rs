//! The etcd `Watch` service: one task per client stream serves all of that
//! stream's watchers.
//!
//! # Guarantees
//! - A watcher sees every event from its start revision on, in revision
//!   order, with no gaps or duplicates; events of one revision arrive in one
//!   response.
//! - Writers never wait for watchers. Each stream task reads the writer's
//!   broadcast feed (bounded). A stream that falls behind (slow client, full
//!   gRPC buffer) lags the feed; it then catches up from the MVCC history,
//!   the way etcd moves slow watchers to its "unsynced" group. If history
//!   was compacted past a watcher meanwhile, that watcher is cancelled with
//!   `compact_revision` set, as etcd does.
//!
//! # Subscribe, then snapshot
//! The stream subscribes to the feed before any watcher exists. A new
//! watcher replays history up to the committed revision `C` it reads under
//! the state lock and then takes feed revisions `> C` only. The writer
//! publishes a revision after marking it committed, so every revision
//! `> C` is still ahead in this stream's feed.
//!
//! Progress (requested or periodic) reports the newest revision this stream
//! has fully delivered, never one whose events are still queued.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::mvcc::{in_range, RevEvent};
use super::writer::{Core, RevisionEvents};
use crate::proto::{
    watch_create_request::FilterType, watch_request::RequestUnion, watch_server::Watch, Event, EventType,
    WatchCreateRequest, WatchRequest, WatchResponse,
};

/// Responses buffered per stream before the stream task waits on the client.
const OUT_BUFFER: usize = 256;
/// Most events, and about the most bytes, in one replay response (a
/// revision is never split): well under tonic's default 4 MiB decode limit.
const MAX_EVENTS_PER_RESPONSE: usize = 1000;
const MAX_BYTES_PER_RESPONSE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watch client went away")]
    ClientGone,
}

pub struct WatchService {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let inbound = request.into_inner();
        let (out, rx) = mpsc::channel(OUT_BUFFER);
        let feed = self.core.feed.subscribe();
        let synced = self.core.read().committed;
        let task = StreamTask { core: self.core.clone(), out, watchers: BTreeMap::new(), next_id: 0, synced };
        tokio::spawn(task.run(inbound, feed));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Watcher {
    key: Vec<u8>,
    end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// First revision not yet delivered to this watcher.
    next_rev: i64,
}

impl Watcher {
    fn wanted(&self, e: &Event) -> Option<Event> {
        let key = e.kv.as_ref().map(|kv| kv.key.as_slice()).unwrap_or_default();
        let is_put = e.r#type == EventType::Put as i32;
        if !in_range(key, &self.key, &self.end) || (is_put && self.no_put) || (!is_put && self.no_delete) {
            return None;
        }
        let mut e = e.clone();
        if !self.prev_kv {
            e.prev_kv = None;
        }
        Some(e)
    }
}

struct StreamTask {
    core: Arc<Core>,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// Every feed revision up to here has been delivered.
    synced: i64,
}

impl StreamTask {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>, mut feed: broadcast::Receiver<Arc<RevisionEvents>>) {
        let period = self.core.options.progress_notify_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            let step = tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => self.handle(req, &mut feed).await,
                    _ => break,
                },
                revision = feed.recv() => match revision {
                    Ok(revision) => self.deliver(&revision).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = ticker.tick() => self.progress_notify().await,
            };
            if step.is_err() {
                break;
            }
        }
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), WatchError> {
        self.out.send(Ok(resp)).await.map_err(|_| WatchError::ClientGone)
    }

    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse { header: Some(self.core.header(revision)), watch_id, ..Default::default() }
    }

    async fn handle(
        &mut self,
        req: WatchRequest,
        feed: &mut broadcast::Receiver<Arc<RevisionEvents>>,
    ) -> Result<(), WatchError> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    let resp = WatchResponse { canceled: true, ..self.response(c.watch_id, self.synced) };
                    self.send(resp).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Deliver what is already published, then report it.
                loop {
                    match feed.try_recv() {
                        Ok(revision) => self.deliver(&revision).await?,
                        Err(broadcast::error::TryRecvError::Lagged(_)) => self.catch_up().await?,
                        Err(_) => break,
                    }
                }
                self.send(self.response(-1, self.synced)).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), WatchError> {
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        if self.watchers.contains_key(&id) {
            let resp = WatchResponse { created: true, canceled: true, ..self.response(-1, self.synced) };
            return self.send(resp).await;
        }
        let mut w = Watcher {
            key: if c.key.is_empty() { vec![0] } else { c.key },
            end: c.range_end,
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
            next_rev: 0,
        };
        let (visible, compacted, history) = {
            let st = self.core.read();
            let visible = st.committed;
            let start = if c.start_revision <= 0 { visible + 1 } else { c.start_revision };
            let compacted = st.mvcc.compacted();
            let history = if start < compacted { vec![] } else { st.mvcc.events(&w.key, &w.end, start, visible) };
            w.next_rev = start.max(visible + 1);
            (visible, (start < compacted).then_some(compacted), history)
        };
        self.send(WatchResponse { created: true, ..self.response(id, visible) }).await?;
        if let Some(compact_revision) = compacted {
            let resp = WatchResponse { canceled: true, compact_revision, ..self.response(id, visible) };
            return self.send(resp).await;
        }
        let responses = self.group(id, &w, history, visible);
        self.watchers.insert(id, w);
        for resp in responses {
            self.send(resp).await?;
        }
        Ok(())
    }

    /// History events for one watcher as responses: whole revisions, at
    /// most [`MAX_EVENTS_PER_RESPONSE`] events and about
    /// [`MAX_BYTES_PER_RESPONSE`] each (unless one revision alone has more).
    fn group(&self, id: i64, w: &Watcher, history: Vec<RevEvent>, revision: i64) -> Vec<WatchResponse> {
        let mut responses: Vec<WatchResponse> = Vec::new();
        let mut current: Vec<Event> = Vec::new();
        let (mut last_rev, mut bytes) = (0, 0);
        for (rev, _, e) in history {
            let Some(e) = w.wanted(&e) else { continue };
            let full = current.len() >= MAX_EVENTS_PER_RESPONSE || bytes >= MAX_BYTES_PER_RESPONSE;
            if rev != last_rev && full {
                responses.push(WatchResponse { events: std::mem::take(&mut current), ..self.response(id, revision) });
                bytes = 0;
            }
            last_rev = rev;
            bytes += prost::Message::encoded_len(&e);
            current.push(e);
        }
        if !current.is_empty() {
            responses.push(WatchResponse { events: current, ..self.response(id, revision) });
        }
        responses
    }

    async fn deliver(&mut self, revision: &RevisionEvents) -> Result<(), WatchError> {
        let mut responses = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            if revision.rev < w.next_rev {
                continue;
            }
            w.next_rev = revision.rev + 1;
            let events: Vec<Event> = revision.events.iter().filter_map(|e| w.wanted(e)).collect();
            if !events.is_empty() {
                responses.push((*id, events));
            }
        }
        self.synced = self.synced.max(revision.rev);
        for (id, events) in responses {
            self.send(WatchResponse { events, ..self.response(id, revision.rev) }).await?;
        }
        Ok(())
    }

    /// The feed overran this stream: replay every watcher from history.
    async fn catch_up(&mut self) -> Result<(), WatchError> {
        let mut responses = Vec::new();
        let mut cancelled = Vec::new();
        let visible = {
            let st = self.core.read();
            let visible = st.committed;
            let compacted = st.mvcc.compacted();
            for (id, w) in &self.watchers {
                if w.next_rev < compacted {
                    cancelled.push((*id, compacted));
                    continue;
                }
                let history = st.mvcc.events(&w.key, &w.end, w.next_rev, visible);
                responses.extend(self.group(*id, w, history, visible));
            }
            visible
        };
        for w in self.watchers.values_mut() {
            w.next_rev = w.next_rev.max(visible + 1);
        }
        self.synced = self.synced.max(visible);
        for (id, compact_revision) in cancelled {
            self.watchers.remove(&id);
            let resp = WatchResponse { canceled: true, compact_revision, ..self.response(id, visible) };
            self.send(resp).await?;
        }
        for resp in responses {
            self.send(resp).await?;
        }
        Ok(())
    }

    async fn progress_notify(&mut self) -> Result<(), WatchError> {
        let ids: Vec<i64> = self.watchers.iter().filter(|(_, w)| w.progress_notify).map(|(id, _)| *id).collect();
        for id in ids {
            self.send(self.response(id, self.synced)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::KeyValue;

    #[test]
    fn watcher_filters_by_range_and_type_and_strips_prev_kv() {
        let w = Watcher {
            key: b"a/".to_vec(),
            end: b"a0".to_vec(),
            prev_kv: false,
            no_put: false,
            no_delete: true,
            progress_notify: false,
            next_rev: 0,
        };
        let kv = |k: &str| Some(KeyValue { key: k.into(), ..Default::default() });
        let put = Event { r#type: EventType::Put as i32, kv: kv("a/x"), prev_kv: kv("a/x") };
        let del = Event { r#type: EventType::Delete as i32, kv: kv("a/x"), prev_kv: None };
        let other = Event { r#type: EventType::Put as i32, kv: kv("b"), prev_kv: None };
        assert!(w.wanted(&put).unwrap().prev_kv.is_none());
        assert!(w.wanted(&del).is_none());
        assert!(w.wanted(&other).is_none());
    }
}
