//! `shoal demo load URL`: an HTTP load generator that accounts for every
//! request, so "no request dropped during an update" can be checked with
//! one command (and is, by the routing-mesh tests).
//!
//! `--concurrency` workers send GETs back to back, each on a fresh
//! connection (`Connection: close`) or, with `--keepalive`, on one
//! persistent connection. It runs for `--duration` or until SIGTERM /
//! Ctrl-C, then prints one JSON summary: requests, failures (each with its
//! time, step and client port), answers per demo version and node, the
//! number of tasks that answered, and latency percentiles.
//!
//! # Keep-alive and retries
//! A server may close an idle persistent connection at any moment (the
//! demo app does when it is told to stop); a request sent on it at that
//! instant sees the close before any byte of an answer. Like browsers and
//! Go's HTTP client (RFC 9112 §9.3.1: a GET is idempotent), such a request
//! is sent once more on a new connection and counted under `retries`, not
//! as a failure. Anything else — a refused or reset new connection, a
//! timeout, a half answer, a non-2xx status — is a failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::duration_arg::parse_duration_arg;

/// Errors listed in the summary (the count is always complete).
const ERRORS_SHOWN: usize = 50;

/// Flags of `shoal demo load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// http://HOST:PORT/PATH to GET.
    pub url: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Reuse one connection per worker (HTTP/1.1 keep-alive) instead of one per request.
    #[arg(long)]
    pub keepalive: bool,
    /// Stop after this long (default: at SIGTERM or Ctrl-C).
    #[arg(long, value_parser = parse_duration_arg)]
    pub duration: Option<Duration>,
    /// A request taking longer than this fails.
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg)]
    pub timeout: Duration,
}

/// Where requests go, parsed once.
#[derive(Debug, Clone)]
struct Target {
    addr: String,
    request: Vec<u8>,
}

/// One worker's tally.
#[derive(Debug, Default)]
struct Tally {
    answers: u64,
    retries: u64,
    failures: u64,
    /// The first [`ERRORS_SHOWN`] failures.
    errors: Vec<String>,
    versions: BTreeMap<String, u64>,
    tasks: BTreeMap<String, u64>,
    nodes: BTreeMap<String, u64>,
    latencies_us: Vec<u32>,
}

/// Runs the load and prints the summary.
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let target = Arc::new(target(&args.url, args.keepalive)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(worker(target.clone(), args.keepalive, args.timeout, started, stop_rx.clone())))
        .collect();
    match args.duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => crate::commands::serve::shutdown_signal().await,
    }
    let _ = stop_tx.send(true);
    let mut total = Tally::default();
    for worker in workers {
        merge(&mut total, worker.await.context("a load worker panicked")?);
    }
    println!("{}", serde_json::to_string_pretty(&summary(total, started.elapsed(), &args))?);
    Ok(())
}

/// `http://host:port/path` → the address and the request bytes.
fn target(url: &str, keepalive: bool) -> anyhow::Result<Target> {
    let rest = url.strip_prefix("http://").with_context(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    if authority.is_empty() {
        bail!("{url}: no host");
    }
    let addr = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let connection = if keepalive { "" } else { "Connection: close\r\n" };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n{connection}\r\n").into_bytes();
    Ok(Target { addr, request })
}

/// Sends requests until told to stop.
async fn worker(
    target: Arc<Target>,
    keepalive: bool,
    timeout: Duration,
    started: Instant,
    stop: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut connection: Option<BufReader<TcpStream>> = None;
    while !*stop.borrow() {
        let begun = Instant::now();
        let reused = connection.is_some();
        let mut result = tokio::time::timeout(timeout, exchange(&target, &mut connection)).await;
        if reused && matches!(result, Ok(Err(Failure::BeforeAnswer(_)))) {
            tally.retries += 1;
            connection = None;
            result = tokio::time::timeout(timeout, exchange(&target, &mut connection)).await;
        }
        let at = started.elapsed().as_secs_f64();
        let failed = match result {
            Ok(Ok(answer)) => {
                record(&mut tally, &answer, begun.elapsed());
                false
            }
            Ok(Err(failure)) => tally.fail(format!("{at:.3}s: {failure}")),
            Err(_) => tally.fail(format!("{at:.3}s: no answer within {timeout:?}")),
        };
        if !keepalive || failed {
            connection = None;
        }
        // A failure can come back without waiting (no route, refused):
        // never hold a runtime thread, so the stop timer always fires.
        tokio::task::yield_now().await;
    }
    tally
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Nothing of an answer arrived (the only kind retried, on a reused connection).
    #[error("{0}")]
    BeforeAnswer(String),
    #[error("{0}")]
    Other(String),
}

/// One request on `connection` (opened when None; dropped when the server
/// answers `Connection: close`); the answer's body.
async fn exchange(target: &Target, connection: &mut Option<BufReader<TcpStream>>) -> Result<String, Failure> {
    if connection.is_none() {
        let stream = TcpStream::connect(&target.addr)
            .await
            .map_err(|e| Failure::Other(format!("connect to {}: {e}", target.addr)))?;
        *connection = Some(BufReader::new(stream));
    }
    let stream = connection.as_mut().expect("connected above");
    let port = stream.get_ref().local_addr().map(|a| a.port()).unwrap_or(0);
    let before = |step: &str, e: std::io::Error| Failure::BeforeAnswer(format!("{step} (client port {port}): {e}"));
    stream.get_mut().write_all(&target.request).await.map_err(|e| before("write", e))?;
    let mut status = String::new();
    match stream.read_line(&mut status).await {
        Ok(0) => return Err(Failure::BeforeAnswer(format!("closed before an answer (client port {port})"))),
        Ok(_) => {}
        Err(e) => return Err(before("read", e)),
    }
    let other = |what: String| Failure::Other(format!("{what} (client port {port})"));
    let code = status.split_whitespace().nth(1).unwrap_or_default().to_string();
    let (length, close) = read_headers(stream).await.map_err(|e| other(format!("reading headers: {e}")))?;
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.map_err(|e| other(format!("reading a {length}-byte body: {e}")))?;
    if close {
        *connection = None;
    }
    if !code.starts_with('2') {
        return Err(other(format!("HTTP {code}: {}", String::from_utf8_lossy(&body).trim())));
    }
    String::from_utf8(body).map_err(|_| other("a body that is not UTF-8".into()))
}

/// Reads header lines up to the blank one: the Content-Length, and
/// whether the server closes the connection after this answer.
async fn read_headers(stream: &mut BufReader<TcpStream>) -> std::io::Result<(usize, bool)> {
    let (mut length, mut close) = (None, false);
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed in the headers"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            return length.map(|l| (l, close)).ok_or_else(|| std::io::Error::other("no Content-Length"));
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok();
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.trim().eq_ignore_ascii_case("close");
            }
        }
    }
}

impl Tally {
    /// Counts a failure, keeping its message if it is among the first; true.
    fn fail(&mut self, message: String) -> bool {
        self.failures += 1;
        if self.errors.len() < ERRORS_SHOWN {
            self.errors.push(message);
        }
        true
    }
}

/// Counts an answer under its demo version and task.
fn record(tally: &mut Tally, body: &str, latency: Duration) {
    tally.answers += 1;
    tally.latencies_us.push(latency.as_micros().min(u32::MAX as u128) as u32);
    let answer: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let field = |name: &str| answer.get(name).and_then(Value::as_str).unwrap_or("?").to_string();
    *tally.versions.entry(field("version")).or_default() += 1;
    *tally.tasks.entry(field("task")).or_default() += 1;
    *tally.nodes.entry(field("node")).or_default() += 1;
}

fn merge(total: &mut Tally, part: Tally) {
    total.answers += part.answers;
    total.retries += part.retries;
    total.failures += part.failures;
    total.errors.extend(part.errors);
    total.latencies_us.extend(part.latencies_us);
    for (version, n) in part.versions {
        *total.versions.entry(version).or_default() += n;
    }
    for (task, n) in part.tasks {
        *total.tasks.entry(task).or_default() += n;
    }
    for (node, n) in part.nodes {
        *total.nodes.entry(node).or_default() += n;
    }
}

/// The printed result.
fn summary(mut tally: Tally, elapsed: Duration, args: &LoadArgs) -> Value {
    tally.latencies_us.sort_unstable();
    let percentile = |p: f64| -> f64 {
        let n = tally.latencies_us.len();
        if n == 0 {
            return 0.0;
        }
        let index = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        f64::from(tally.latencies_us[index]) / 1000.0
    };
    let failures = tally.failures;
    let requests = tally.answers + failures;
    tally.errors.sort();
    json!({
        "url": args.url,
        "concurrency": args.concurrency,
        "keepalive": args.keepalive,
        "secs": elapsed.as_secs_f64(),
        "requests": requests,
        "answers": tally.answers,
        "failures": failures,
        "retries": tally.retries,
        "requestsPerSec": requests as f64 / elapsed.as_secs_f64().max(1e-9),
        "latencyMs": { "p50": percentile(0.50), "p99": percentile(0.99), "max": percentile(1.0) },
        "versions": tally.versions,
        "tasks": tally.tasks.len(),
        "nodes": tally.nodes,
        "errors": &tally.errors[..tally.errors.len().min(ERRORS_SHOWN)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_an_address_and_a_request() {
        let t = target("http://10.0.0.1:8080/health", false).unwrap();
        assert_eq!(t.addr, "10.0.0.1:8080");
        assert_eq!(t.request, b"GET /health HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nConnection: close\r\n\r\n");
        let t = target("http://web", true).unwrap();
        assert_eq!((t.addr.as_str(), t.request.as_slice()), ("web:80", &b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"[..]));
        assert!(target("https://x/", false).is_err() && target("http:///x", false).is_err());
    }

    #[tokio::test]
    async fn every_request_is_an_answer_or_a_failure() {
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/", get(|| async { axum::Json(json!({"version": "1.0", "task": "t1"})) }))
            .route("/sick", get(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "no") }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        for keepalive in [false, true] {
            let (stop_tx, stop_rx) = watch::channel(false);
            let target = Arc::new(target(&format!("http://127.0.0.1:{port}/"), keepalive).unwrap());
            let worker = tokio::spawn(worker(target, keepalive, Duration::from_secs(2), Instant::now(), stop_rx));
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop_tx.send(true).unwrap();
            let tally = worker.await.unwrap();
            assert!(tally.answers > 0 && tally.failures == 0, "keepalive {keepalive}: {tally:?}");
            assert_eq!(tally.versions["1.0"], tally.answers);
        }
        let mut connection = None;
        let sick = target(&format!("http://127.0.0.1:{port}/sick"), false).unwrap();
        let failure = exchange(&sick, &mut connection).await.unwrap_err();
        assert!(failure.to_string().contains("HTTP 503: no"), "{failure}");
    }
}
