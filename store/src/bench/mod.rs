//! `shoal bench store`: the same workload against the embedded store (in
//! this process, on a temp dir) and a real etcd (spawned on temp dir and
//! ports when `etcd` is on PATH, or an endpoint given), printed side by
//! side with ratios. A report for people, never a pass/fail test.

mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::server::{EmbeddedStore, StoreOptions};
use workload::{run_workload, Figures, Workload};

/// What to run; the defaults finish in well under a minute for both stores.
#[derive(Debug, Clone)]
pub struct StoreBenchOptions {
    /// Single-key puts in the throughput phase.
    pub puts: usize,
    /// Concurrent clients (requests in flight) in every phase.
    pub concurrency: usize,
    /// Transactions of `txn_ops` puts each.
    pub txns: usize,
    pub txn_ops: usize,
    /// Puts observed by one watcher for delivery latency.
    pub watch_puts: usize,
    /// Compare with this etcd instead of spawning one.
    pub etcd_endpoint: Option<String>,
}

impl Default for StoreBenchOptions {
    fn default() -> Self {
        StoreBenchOptions {
            puts: 20_000,
            concurrency: 16,
            txns: 300,
            txn_ops: 128,
            watch_puts: 5000,
            etcd_endpoint: None,
        }
    }
}

/// Runs the benchmark and returns the printed comparison table.
pub async fn run_store_bench(opts: StoreBenchOptions) -> anyhow::Result<String> {
    anyhow::ensure!(opts.concurrency > 0 && opts.txn_ops > 0, "concurrency and txn ops must be positive");
    let workload = Workload::from(&opts);
    let embedded = {
        let dir = tempfile::tempdir().context("creating a temp dir for the embedded store")?;
        let store = EmbeddedStore::open_with(dir.path(), StoreOptions::default())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(store.serve(listener, async {
            let _ = stopped.await;
        }));
        let figures = run_workload(&endpoint, &workload).await.context("embedded store")?;
        let _ = stop.send(());
        let _ = server.await;
        figures
    };
    let etcd = match &opts.etcd_endpoint {
        Some(endpoint) => Some(run_workload(endpoint, &workload).await.context("etcd")?),
        None => match find_etcd() {
            Some(binary) => {
                let dir = tempfile::tempdir().context("creating a temp dir for etcd")?;
                let (mut child, endpoint) = spawn_etcd(&binary, dir.path()).await?;
                let figures = run_workload(&endpoint, &workload).await.context("etcd");
                let _ = child.kill().await;
                Some(figures?)
            }
            None => None,
        },
    };
    Ok(table(&opts, &embedded, etcd.as_ref()))
}

/// The `etcd` binary on PATH, if any.
pub fn find_etcd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("etcd")).find(|p| p.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A single-member etcd on free loopback ports, killed when dropped.
pub async fn spawn_etcd(binary: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<(Child, String)> {
    let (client, peer) = (format!("http://127.0.0.1:{}", free_port()?), format!("http://127.0.0.1:{}", free_port()?));
    let child = Command::new(binary)
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .arg("--initial-cluster")
        .arg(format!("bench={peer}"))
        .args(["--logger", "zap", "--log-level", "error"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !workload::answers(&client).await {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "etcd did not answer on {client} within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((child, client))
}

fn table(opts: &StoreBenchOptions, embedded: &Figures, etcd: Option<&Figures>) -> String {
    let mut out = format!(
        "store benchmark: {} puts from {} clients; {} txns of {} puts; watcher on {} puts\n",
        opts.puts, opts.concurrency, opts.txns, opts.txn_ops, opts.watch_puts
    );
    out += &format!("{:<30} {:>12} {:>12} {:>14}\n", "metric", "embedded", "etcd", "embedded/etcd");
    let rows = Figures::rows(embedded);
    let other = etcd.map(Figures::rows);
    for (i, (name, value)) in rows.iter().enumerate() {
        let (etcd_cell, ratio) = match &other {
            Some(o) if o[i].1 > 0.0 => (format!("{:.2}", o[i].1), format!("{:.2}x", value / o[i].1)),
            Some(o) => (format!("{:.2}", o[i].1), "-".to_string()),
            None => ("n/a".to_string(), "-".to_string()),
        };
        out += &format!("{name:<30} {value:>12.2} {etcd_cell:>12} {ratio:>14}\n");
    }
    if etcd.is_none() {
        out += "(no etcd on PATH and no endpoint given: embedded figures only)\n";
    }
    out += "throughput: higher is better; latency (ms): lower is better\n";
    out
}
