//! `shoal demo serve`: the "whoami" of Shoal's docs and tests, and
//! `shoal demo probe URL`: its health probe, needing no host tools.
//!
//! A small HTTP server whose misbehaviour is chosen by flags (or `DEMO_*`
//! environment variables, so a service spec can set them): start slowly,
//! turn unhealthy, crash, refuse to start, read a secret file. Rolling
//! updates, health checks and rollbacks are shown and tested with it as a
//! real process. `/resolve?name=N` and `/fetch?url=U` show service
//! discovery and the routing mesh from inside a task.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::duration_arg::parse_duration_arg;

/// Flags of `shoal demo serve`.
#[derive(Debug, Clone, clap::Args)]
// `--version` is the demo's own (the version it reports), not shoal's.
#[command(disable_version_flag = true)]
pub struct DemoArgs {
    /// Address to serve HTTP on.
    #[arg(long, env = "DEMO_LISTEN", default_value = "0.0.0.0:80")]
    pub listen: SocketAddr,
    /// Version to report; defaults to the tag of $SHOAL_IMAGE (`shoal/demo:1.2` → `1.2`).
    #[arg(long, env = "DEMO_VERSION")]
    pub version: Option<String>,
    /// Wait this long before listening (a slow start).
    #[arg(long, env = "DEMO_START_DELAY", value_parser = parse_duration_arg)]
    pub start_delay: Option<Duration>,
    /// Answer /health with 503 after this long.
    #[arg(long, env = "DEMO_UNHEALTHY_AFTER", value_parser = parse_duration_arg)]
    pub unhealthy_after: Option<Duration>,
    /// Exit with status 1 after this long.
    #[arg(long, env = "DEMO_CRASH_AFTER", value_parser = parse_duration_arg)]
    pub crash_after: Option<Duration>,
    /// Exit with status 1 at once (a release that cannot start).
    #[arg(long, env = "DEMO_FAIL_START")]
    pub fail_start: bool,
    /// Read this file at start (e.g. /run/secrets/db-password); / reports its size, never its content.
    #[arg(long, env = "DEMO_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// After SIGTERM, keep serving this long, answering with `Connection:
    /// close`, so keep-alive clients leave on an answer instead of meeting a
    /// closed socket (new connections no longer arrive: the mesh drained
    /// the task before the signal).
    #[arg(long, env = "DEMO_CLOSE_DELAY", default_value = "500ms", value_parser = parse_duration_arg)]
    pub close_delay: Duration,
    /// Once listening, write the address to this file (relative: in the
    /// task's working dir): with port 0 a probe finds the port there,
    /// `shoal demo probe http://$(cat FILE)/health`.
    #[arg(long, env = "DEMO_ADDR_FILE")]
    pub addr_file: Option<PathBuf>,
}

/// Flags of `shoal demo probe`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// `http://host[:port][/path]` to GET.
    pub url: String,
    /// Give up (and fail) after this long.
    #[arg(long, default_value = "2s", value_parser = parse_duration_arg)]
    pub timeout: Duration,
}

/// GETs the URL over HTTP/1.0: exit 0 on a 2xx answer, 1 otherwise — a
/// healthcheck as `["CMD", "shoal", "demo", "probe", "http://127.0.0.1/health"]`.
/// A plain `TcpStream`: the probe needs no HTTP client dependency.
pub fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    let response = http_get(&args.url, args.timeout)?;
    let status_line = response.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
    println!("{status_line}");
    match code {
        Some(200..=299) => Ok(()),
        Some(code) => bail!("{} answered {code}", args.url),
        None => bail!("{} gave no HTTP answer", args.url),
    }
}

/// The whole HTTP/1.0 response (at most 64 KiB) to `GET url`; the host is
/// resolved by libc, as any program in the task would.
fn http_get(url: &str, timeout: Duration) -> anyhow::Result<String> {
    let (host, port, path) = parse_http_url(url)?;
    let port = if is_loopback(&host) { on_host_port(SocketAddr::from(([0, 0, 0, 0], port))).port() } else { port };
    let deadline = Instant::now() + timeout;
    let left = || deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).context("timed out");
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, left()?).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_write_timeout(Some(left()?))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: shoal-probe\r\n\r\n")
        .context("sending the request")?;
    stream.set_read_timeout(Some(left()?))?;
    let mut response = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut response).context("reading the answer")?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// `addr` with the host port the agent gave the task for its port, if any:
/// on the host network a task's target ports are mapped to free host ports,
/// `SHOAL_PORT_<target>=<host>` (see the agent's `network::ports`).
fn on_host_port(addr: SocketAddr) -> SocketAddr {
    let mapped = std::env::var(format!("SHOAL_PORT_{}", addr.port())).ok().and_then(|p| p.parse().ok());
    SocketAddr::new(addr.ip(), mapped.unwrap_or(addr.port()))
}

/// The task itself: a probe of `127.0.0.1:80` means its own port 80.
fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `http://host[:port][/path]` → (host, port, path).
fn parse_http_url(url: &str) -> anyhow::Result<(String, u16, String)> {
    let rest = url.strip_prefix("http://").with_context(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            (host, port.parse().with_context(|| format!("{url:?}: invalid port {port:?}"))?)
        }
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{url:?}: no host");
    }
    Ok((host.to_string(), port, path.to_string()))
}

struct Demo {
    version: String,
    started: Instant,
    unhealthy_after: Option<Duration>,
    secret_bytes: Option<usize>,
    requests: AtomicU64,
    /// SIGTERM arrived: answers close their connections.
    stopping: std::sync::atomic::AtomicBool,
}

/// Runs the demo server until SIGTERM/Ctrl-C (graceful: for `--close-delay`
/// it still answers, closing each connection, then in-flight requests finish).
pub async fn serve(args: DemoArgs) -> anyhow::Result<()> {
    if args.fail_start {
        bail!("refusing to start (--fail-start)");
    }
    let secret_bytes = match &args.secret_file {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("cannot read secret file {}", path.display()))?.len())
        }
        None => None,
    };
    if let Some(delay) = args.start_delay {
        tracing::info!(?delay, "starting slowly");
        tokio::time::sleep(delay).await;
    }
    if let Some(after) = args.crash_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!("demo: crashing as asked (--crash-after {after:?})");
            std::process::exit(1);
        });
    }
    let demo = Arc::new(Demo {
        version: args.version.clone().unwrap_or_else(version_from_image),
        started: Instant::now(),
        unhealthy_after: args.unhealthy_after,
        secret_bytes,
        requests: AtomicU64::new(0),
        stopping: std::sync::atomic::AtomicBool::new(false),
    });
    let app = Router::new()
        .route("/", get(whoami))
        .route("/health", get(health))
        .route("/resolve", get(resolve))
        .route("/fetch", get(fetch))
        .layer(axum::middleware::map_response_with_state(demo.clone(), close_when_stopping))
        .with_state(demo.clone());
    let listen = on_host_port(args.listen);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    if let Some(file) = &args.addr_file {
        write_addr_file(file, listener.local_addr()?)?;
    }
    tracing::info!(%listen, version = %demo.version, "demo serving");
    let close_delay = args.close_delay;
    let stopping = demo.clone();
    let shutdown = async move {
        crate::commands::serve::shutdown_signal().await;
        stopping.stopping.store(true, Ordering::Relaxed);
        tokio::time::sleep(close_delay).await;
    };
    serve_http(listener, app, shutdown).await;
    Ok(())
}

/// Serves `app` on `listener` until `shutdown`, then lets in-flight
/// requests finish (idle keep-alive connections close at once).
///
/// Not `axum::serve`: hyper's default drops a request whose client has
/// already half-closed its side (`printf 'GET / …' | nc host port`, and a
/// proxy relaying such a client) with no answer; half-close is allowed here.
async fn serve_http(listener: tokio::net::TcpListener, app: Router, shutdown: impl std::future::Future<Output = ()>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// Once stopping, every answer closes its connection.
async fn close_when_stopping(
    State(demo): State<Arc<Demo>>,
    mut response: axum::response::Response,
) -> axum::response::Response {
    if demo.stopping.load(Ordering::Relaxed) {
        response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    response
}

/// Writes `addr` to `file` whole (a rename), so a probe never reads half of it.
fn write_addr_file(file: &std::path::Path, addr: SocketAddr) -> anyhow::Result<()> {
    let partial = file.with_extension("partial");
    std::fs::write(&partial, addr.to_string())
        .and_then(|()| std::fs::rename(&partial, file))
        .with_context(|| format!("cannot write {}", file.display()))
}

/// The tag of `$SHOAL_IMAGE`, or "dev".
fn version_from_image() -> String {
    std::env::var("SHOAL_IMAGE")
        .ok()
        .and_then(|image| image.rsplit_once(':').map(|(_, tag)| tag.to_string()))
        .filter(|tag| !tag.contains('/'))
        .unwrap_or_else(|| "dev".into())
}

async fn whoami(State(demo): State<Arc<Demo>>) -> Json<Value> {
    let n = demo.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    Json(json!({
        "version": demo.version,
        "task": env("SHOAL_TASK_ID"),
        "service": env("SHOAL_SERVICE_NAME"),
        "node": env("SHOAL_NODE_NAME"),
        "hostname": hostname(),
        "pid": std::process::id(),
        "uptime_secs": demo.started.elapsed().as_secs(),
        "requests": n,
        "secret_bytes": demo.secret_bytes,
    }))
}

async fn health(State(demo): State<Arc<Demo>>) -> (StatusCode, &'static str) {
    match demo.unhealthy_after {
        Some(after) if demo.started.elapsed() >= after => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n"),
        _ => (StatusCode::OK, "ok\n"),
    }
}

/// `GET /resolve?name=NAME`: the addresses the task's own resolver (libc,
/// through its /etc/resolv.conf) gives for NAME — service discovery as the
/// task sees it.
async fn resolve(uri: axum::http::Uri) -> (StatusCode, Json<Value>) {
    let Some(name) = query_param(&uri, "name") else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "give ?name=NAME"})));
    };
    match tokio::net::lookup_host(format!("{name}:0")).await {
        Ok(found) => {
            let mut addresses: Vec<String> = Vec::new();
            for address in found.map(|a| a.ip().to_string()) {
                if !addresses.contains(&address) {
                    addresses.push(address);
                }
            }
            (StatusCode::OK, Json(json!({"name": name, "addresses": addresses})))
        }
        Err(err) => (StatusCode::NOT_FOUND, Json(json!({"name": name, "error": err.to_string()}))),
    }
}

/// `GET /fetch?url=http://HOST[:PORT]/PATH`: the body this task gets from
/// that URL (the host resolved by its own resolver) — a task-to-service
/// connection, as the task makes it; 502 with the error when it fails.
async fn fetch(uri: axum::http::Uri) -> (StatusCode, String) {
    let Some(url) = query_param(&uri, "url") else { return (StatusCode::BAD_REQUEST, "give ?url=URL\n".into()) };
    let got = tokio::task::spawn_blocking(move || http_get(&url, Duration::from_secs(3))).await;
    match got.map_err(anyhow::Error::from).and_then(|r| r) {
        Ok(response) => match response.split_once("\r\n\r\n") {
            Some((_, body)) => (StatusCode::OK, body.to_string()),
            None => (StatusCode::BAD_GATEWAY, format!("no HTTP answer: {response:?}\n")),
        },
        Err(err) => (StatusCode::BAD_GATEWAY, format!("{err:#}\n")),
    }
}

/// The percent-decoded value of `key` in the URI's query string.
fn query_param(uri: &axum::http::Uri, key: &str) -> Option<String> {
    let value = uri.query()?.split('&').find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == key))?.1;
    let bytes = value.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(bytes.len()), 0);
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (byte, _) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_urls_split_into_host_port_and_path() {
        let split = |url| parse_http_url(url).unwrap();
        assert_eq!(split("http://127.0.0.1/health"), ("127.0.0.1".into(), 80, "/health".into()));
        assert_eq!(split("http://localhost:8080"), ("localhost".into(), 8080, "/".into()));
        assert_eq!(split("http://[::1]:81/x?y"), ("::1".into(), 81, "/x?y".into()));
        assert!(parse_http_url("https://x/").is_err() && parse_http_url("http://:80/").is_err());
    }

    #[tokio::test]
    async fn the_probe_passes_on_2xx_and_fails_otherwise() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/sick", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "no") }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let probe_of =
            |path: &str| ProbeArgs { url: format!("http://127.0.0.1:{port}{path}"), timeout: Duration::from_secs(2) };
        let run = |args| tokio::task::spawn_blocking(move || probe(args));
        assert!(run(probe_of("/health")).await.unwrap().is_ok());
        let sick = run(probe_of("/sick")).await.unwrap().unwrap_err();
        assert!(sick.to_string().contains("answered 503"), "{sick}");
        let closed = ProbeArgs { url: "http://127.0.0.1:1/".into(), timeout: Duration::from_millis(500) };
        assert!(run(closed).await.unwrap().is_err());
    }

    #[test]
    fn query_parameters_are_percent_decoded() {
        let uri: axum::http::Uri = "/fetch?x=1&url=http%3A%2F%2Fweb%3A80%2F&name=a+b".parse().unwrap();
        assert_eq!(query_param(&uri, "url").as_deref(), Some("http://web:80/"));
        assert_eq!(query_param(&uri, "name").as_deref(), Some("a b"));
        assert_eq!(query_param(&uri, "nothing"), None);
        let raw: axum::http::Uri = "/fetch?url=http://web:80/".parse().unwrap();
        assert_eq!(query_param(&raw, "url").as_deref(), Some("http://web:80/"));
    }

    #[test]
    fn version_comes_from_the_image_tag() {
        // Only reads the env var: set and check in one test to avoid races.
        std::env::set_var("SHOAL_IMAGE", "registry:5000/shoal/demo:2.1");
        assert_eq!(version_from_image(), "2.1");
        std::env::set_var("SHOAL_IMAGE", "registry:5000/shoal/demo");
        assert_eq!(version_from_image(), "dev");
        std::env::remove_var("SHOAL_IMAGE");
        assert_eq!(version_from_image(), "dev");
    }
}
