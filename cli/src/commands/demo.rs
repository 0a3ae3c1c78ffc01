//! `shoal demo serve`: the "whoami" of Shoal's docs and tests, and
//! `shoal demo probe URL`: its health probe, needing no host tools.
//!
//! A small HTTP server whose misbehaviour is chosen by flags (or `DEMO_*`
//! environment variables, so a service spec can set them): start slowly,
//! turn unhealthy, crash, refuse to start, read a secret file. Rolling
//! updates, health checks and rollbacks are shown and tested with it as a
//! real process.

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
    let (host, port, path) = parse_http_url(&args.url)?;
    let deadline = Instant::now() + args.timeout;
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
    let response = String::from_utf8_lossy(&response);
    let status_line = response.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
    println!("{status_line}");
    match code {
        Some(200..=299) => Ok(()),
        Some(code) => bail!("{} answered {code}", args.url),
        None => bail!("{} gave no HTTP answer", args.url),
    }
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
}

/// Runs the demo server until SIGTERM/Ctrl-C (graceful: in-flight requests finish).
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
    });
    let app = Router::new().route("/", get(whoami)).route("/health", get(health)).with_state(demo.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    if let Some(file) = &args.addr_file {
        write_addr_file(file, listener.local_addr()?)?;
    }
    tracing::info!(listen = %args.listen, version = %demo.version, "demo serving");
    axum::serve(listener, app).with_graceful_shutdown(crate::commands::serve::shutdown_signal()).await?;
    Ok(())
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
