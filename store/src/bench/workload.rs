//! The benchmark workload, run over gRPC against any etcd-API endpoint:
//! concurrent single-key puts, 128-put transactions, and a watcher that
//! timestamps every event to measure put-ack-to-delivery latency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use tonic::transport::Channel;

use super::StoreBenchOptions;
use crate::proto::{
    kv_client::KvClient, request_op::Request, watch_client::WatchClient, watch_request::RequestUnion, PutRequest,
    RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};

const VALUE_BYTES: usize = 256;

#[derive(Debug, Clone)]
pub struct Workload {
    puts: usize,
    concurrency: usize,
    txns: usize,
    txn_ops: usize,
    watch_puts: usize,
    /// Distinguishes runs sharing an external endpoint.
    run: u32,
}

impl From<&StoreBenchOptions> for Workload {
    fn from(o: &StoreBenchOptions) -> Self {
        Workload {
            puts: o.puts,
            concurrency: o.concurrency,
            txns: o.txns,
            txn_ops: o.txn_ops,
            watch_puts: o.watch_puts,
            run: rand::random(),
        }
    }
}

/// What one store scored.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    put_rate: f64,
    put_p50: Duration,
    put_p99: Duration,
    txn_rate: f64,
    txn_put_rate: f64,
    watch_events: usize,
    watch_p50: Duration,
    watch_p99: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Figures {
    pub fn rows(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("put throughput (ops/s)", self.put_rate),
            ("put latency p50 (ms)", ms(self.put_p50)),
            ("put latency p99 (ms)", ms(self.put_p99)),
            ("txn throughput (txn/s)", self.txn_rate),
            ("txn put throughput (ops/s)", self.txn_put_rate),
            ("watch events received", self.watch_events as f64),
            ("watch delivery p50 (ms)", ms(self.watch_p50)),
            ("watch delivery p99 (ms)", ms(self.watch_p99)),
        ]
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    let channel = Channel::from_shared(endpoint.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    Ok(channel)
}

/// Whether the endpoint answers a Range.
pub async fn answers(endpoint: &str) -> bool {
    let Ok(channel) = connect(endpoint).await else { return false };
    let req = RangeRequest { key: b"bench-probe".to_vec(), ..Default::default() };
    KvClient::new(channel).range(req).await.is_ok()
}

fn put(key: String) -> PutRequest {
    PutRequest { key: key.into_bytes(), value: vec![b'x'; VALUE_BYTES], ..Default::default() }
}

/// Runs `n` requests from `concurrency` clients; returns ops/s and the
/// sorted latencies.
async fn timed<F, Fut>(n: usize, concurrency: usize, op: F) -> anyhow::Result<(f64, Vec<Duration>)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    let mut latencies: Vec<Duration> = futures::stream::iter(0..n)
        .map(|i| {
            let fut = op(i);
            async move {
                let t = Instant::now();
                fut.await.map(|_| t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    Ok((rate, latencies))
}

pub async fn run_workload(endpoint: &str, w: &Workload) -> anyhow::Result<Figures> {
    let channel = connect(endpoint).await?;
    let kv = KvClient::new(channel.clone());
    let mut figures = Figures::default();

    let (rate, lat) = timed(w.puts, w.concurrency, |i| {
        let mut kv = kv.clone();
        async move {
            kv.put(put(format!("bench/{}/put/{i:08}", w.run))).await?;
            Ok(())
        }
    })
    .await
    .context("put phase")?;
    (figures.put_rate, figures.put_p50, figures.put_p99) = (rate, percentile(&lat, 0.5), percentile(&lat, 0.99));

    let (rate, _) = timed(w.txns, w.concurrency, |t| {
        let mut kv = kv.clone();
        let success = (0..w.txn_ops)
            .map(|j| RequestOp {
                request: Some(Request::RequestPut(put(format!("bench/{}/txn/{t:06}/{j:04}", w.run)))),
            })
            .collect();
        async move {
            kv.txn(TxnRequest { compare: vec![], success, failure: vec![] }).await?;
            Ok(())
        }
    })
    .await
    .context("txn phase")?;
    (figures.txn_rate, figures.txn_put_rate) = (rate, rate * w.txn_ops as f64);

    let (events, lat) = watch_phase(channel, &kv, w).await.context("watch phase")?;
    (figures.watch_events, figures.watch_p50, figures.watch_p99) =
        (events, percentile(&lat, 0.5), percentile(&lat, 0.99));
    Ok(figures)
}

/// A watcher on the phase's prefix timestamps every event; writers record
/// when each put was acknowledged. Latency = receipt - ack (0 if the event
/// beat the acknowledgement).
async fn watch_phase(channel: Channel, kv: &KvClient<Channel>, w: &Workload) -> anyhow::Result<(usize, Vec<Duration>)> {
    let prefix = format!("bench/{}/watch/", w.run);
    let mut end = prefix.clone().into_bytes();
    *end.last_mut().expect("non-empty prefix") += 1;
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let create = WatchCreateRequest { key: prefix.clone().into_bytes(), range_end: end, ..Default::default() };
    tx.unbounded_send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) })?;
    let mut stream = WatchClient::new(channel).watch(rx).await?.into_inner();
    let created = stream.message().await?.context("watch stream ended before created")?;
    anyhow::ensure!(created.created, "first watch response was not 'created'");

    let received: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let expected = w.watch_puts;
    let counter = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while n < expected {
                match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                    Ok(Ok(Some(resp))) => {
                        let now = Instant::now();
                        let mut map = received.lock().unwrap_or_else(|p| p.into_inner());
                        for e in resp.events {
                            map.insert(e.kv.map_or(0, |kv| kv.mod_revision), now);
                            n += 1;
                        }
                    }
                    _ => break,
                }
            }
            drop(tx);
            n
        })
    };
    let acked: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    timed(w.watch_puts, w.concurrency, |i| {
        let (mut kv, acked, key) = (kv.clone(), acked.clone(), format!("{prefix}{i:08}"));
        async move {
            let resp = kv.put(put(key)).await?.into_inner();
            let rev = resp.header.map_or(0, |h| h.revision);
            acked.lock().unwrap_or_else(|p| p.into_inner()).insert(rev, Instant::now());
            Ok(())
        }
    })
    .await?;
    let events = counter.await?;
    let received = received.lock().unwrap_or_else(|p| p.into_inner());
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner());
    let mut latencies: Vec<Duration> = acked
        .iter()
        .filter_map(|(rev, ack)| received.get(rev).map(|got| got.saturating_duration_since(*ack)))
        .collect();
    latencies.sort();
    Ok((events, latencies))
}
