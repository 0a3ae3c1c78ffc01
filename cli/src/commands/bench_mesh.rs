//! `shoal bench mesh`: what the routing mesh costs. A report, never
//! pass/fail; the goals are printed beside the figures.
//!
//! - Throughput and p99 latency of the same demo task reached directly,
//!   through its service VIP and its published port (nftables), and
//!   through its published port on the userspace proxy — each measured by
//!   a `shoal demo load` process (`--concurrency` requests in flight, fresh
//!   connections and keep-alive ones) for `--duration`, `--rounds` times in
//!   turns; each row shows its median. "Direct" is measured twice: with no
//!   NAT table in the namespace (nothing is tracked) and with the nftables
//!   plane loaded (every connection is tracked, as on any node running
//!   it); the nftables rows are compared with the second, the userspace
//!   proxy (which needs no NAT) with the first.
//! - Rule programming of the nftables data plane: 1,000 services × 10
//!   backends applied at once, then one backend change, at 100 and at
//!   1,000 services (it should not depend on the number).
//!
//! Root only. Everything happens inside a network namespace made for the
//! run (`shoal-bench-mesh`, the command re-executes itself there with
//! `nsenter`) with the
//! task in a namespace of its own behind a bridge, so the host's network
//! and tables are never touched; both namespaces are deleted at the end.
//! IPVS is not measured: this machine's kernel has none (the IPVS data
//! plane is checked inside a VM by the `ipvs_vm` test).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use shoal_agent::dataplane::userspace::UserspaceDataPlane;
use shoal_agent::dataplane::{Cluster, DataPlane, NftablesDataPlane};
use shoal_crd::{Backend, EndpointPort, Endpoints, EndpointsSpec, PortProtocol, PublishMode};

use crate::duration_arg::parse_duration_arg;

/// The namespace the bench runs in (the "node").
const NODE_NETNS: &str = "shoal-bench-mesh";
/// The task's namespace.
const TASK_NETNS: &str = "shoal-bench-mesh-task";
/// Set in the re-executed process, which is inside [`NODE_NETNS`].
const INSIDE: &str = "SHOAL_BENCH_MESH_INSIDE";
const BRIDGE: &str = "smesh0";
const GATEWAY: &str = "10.251.0.1";
const TASK_ADDRESS: &str = "10.251.0.10";
const VIP: &str = "10.96.250.1";
const PUBLISHED: u16 = 30080;
/// Straight to the task with no data plane loaded: no connection tracking.
const DIRECT_BARE: &str = "direct, no NAT table";
/// Straight to the task while the nftables plane is loaded: tracked.
const DIRECT_TRACKED: &str = "direct, nftables loaded";

/// Flags of `shoal bench mesh`.
#[derive(Debug, Clone, clap::Args)]
pub struct MeshBenchArgs {
    /// How long each load runs.
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg)]
    pub duration: Duration,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Times every row is measured (in turns, so drift hits all rows
    /// alike); the table shows each row's median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
}

/// Runs the bench (re-executing itself inside its own namespace).
pub async fn run(args: MeshBenchArgs) -> anyhow::Result<()> {
    if !shoal_agent::sys::is_root() {
        bail!("shoal bench mesh needs root: it makes network namespaces and programs nftables");
    }
    if std::env::var_os(INSIDE).is_some() {
        return inside(args).await;
    }
    delete_namespaces();
    ip(&["netns", "add", NODE_NETNS])?;
    let exe = std::env::current_exe().context("finding the shoal binary")?;
    // nsenter (not `ip netns exec`, which makes a mount namespace of its
    // own): the task's namespace made inside must be visible to `ip`.
    let status = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{NODE_NETNS}"))
        .arg("--")
        .arg(&exe)
        .args(["bench", "mesh", "--duration", &format!("{}ms", args.duration.as_millis())])
        .args(["--concurrency", &args.concurrency.to_string(), "--rounds", &args.rounds.to_string()])
        .env(INSIDE, "1")
        .status()
        .context("running the bench inside its namespace");
    delete_namespaces();
    match status? {
        s if s.success() => Ok(()),
        s => bail!("the bench failed inside {NODE_NETNS} ({s})"),
    }
}

/// The bench proper, inside [`NODE_NETNS`], off the async threads (data
/// planes block; the userspace one runs its proxies on this runtime).
async fn inside(args: MeshBenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || measure(args, runtime)).await?
}

fn measure(args: MeshBenchArgs, runtime: tokio::runtime::Handle) -> anyhow::Result<()> {
    node_network()?;
    let endpoints = vec![fixture(0, 1, Some(PUBLISHED))];
    let node = Cluster::new("bench", Some(format!("{GATEWAY}/24").parse()?), Vec::new());
    let direct = format!("http://{TASK_ADDRESS}:80/");
    let vip = format!("http://{VIP}:80/");
    let published = format!("http://127.0.0.1:{PUBLISHED}/");

    // Every row from a clean slate: a fresh task (the server's TIME_WAIT
    // sockets of one row would slow the next row's new connections: same
    // client address and ports, other sequence numbers and timestamps) and
    // an empty conntrack table (one row's closed NATed connections would
    // leave the next row's masquerade hunting for a free port).
    let row = |path: &'static str, url: &str, keepalive: bool| -> anyhow::Result<_> {
        let _ = Command::new("conntrack").arg("-F").stderr(Stdio::null()).status();
        let _task = TaskUnderTest::start()?;
        Ok((path, keepalive, load(url, &args, keepalive)?))
    };
    let mut rows = Vec::new();
    for (keepalive, _round) in [false, true].into_iter().flat_map(|k| (0..args.rounds).map(move |r| (k, r))) {
        // Without a NAT table the namespace tracks no connection at all;
        // with one (as on every node running the nftables plane) even
        // direct traffic pays for conntrack. Each mesh row is compared
        // with the direct row of the same node state.
        rows.push(row(DIRECT_BARE, &direct, keepalive)?);
        let mut nftables = NftablesDataPlane::new("shoal-bench");
        nftables.apply(&endpoints, &node)?;
        rows.push(row(DIRECT_TRACKED, &direct, keepalive)?);
        rows.push(row("nftables: service VIP", &vip, keepalive)?);
        rows.push(row("nftables: published port", &published, keepalive)?);
        nftables.cleanup()?;
        let mut userspace = UserspaceDataPlane::new(runtime.clone(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        userspace.apply(&endpoints, &node)?;
        wait_for(&format!("127.0.0.1:{PUBLISHED}"))?;
        rows.push(row("userspace: published port", &published, keepalive)?);
        userspace.cleanup()?;
    }
    print_throughput(&rows, &args);
    print_programming(&programming()?);
    Ok(())
}

/// The node's side: loopback, the bridge tasks attach to, a default route
/// (without one a VIP is "unreachable" before any DNAT is consulted).
fn node_network() -> anyhow::Result<()> {
    ip(&["link", "set", "lo", "up"])?;
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    ip(&["route", "add", "default", "dev", BRIDGE])
}

/// The demo task in its own namespace on the bench's bridge; stopped and
/// its namespace deleted on drop.
struct TaskUnderTest {
    child: Child,
}

impl TaskUnderTest {
    fn start() -> anyhow::Result<Self> {
        ip(&["netns", "add", TASK_NETNS])?;
        ip(&["link", "add", "smeshv0", "type", "veth", "peer", "name", "eth0", "netns", TASK_NETNS])?;
        ip(&["link", "set", "smeshv0", "master", BRIDGE, "up"])?;
        ip(&["-n", TASK_NETNS, "link", "set", "lo", "up"])?;
        ip(&["-n", TASK_NETNS, "addr", "add", &format!("{TASK_ADDRESS}/24"), "dev", "eth0"])?;
        ip(&["-n", TASK_NETNS, "link", "set", "eth0", "up"])?;
        ip(&["-n", TASK_NETNS, "route", "add", "default", "via", GATEWAY])?;
        let child = Command::new("ip")
            .args(["netns", "exec", TASK_NETNS])
            .arg(std::env::current_exe()?)
            .args(["demo", "serve", "--listen", "0.0.0.0:80", "--version", "bench"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the demo task")?;
        let task = TaskUnderTest { child };
        wait_for(&format!("{TASK_ADDRESS}:80"))?;
        Ok(task)
    }
}

impl Drop for TaskUnderTest {
    fn drop(&mut self) {
        // `ip netns exec` execs the demo: the child is the task itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The veth first: a deleted namespace frees its links only later.
        let _ = Command::new("ip").args(["link", "del", "smeshv0"]).status();
        let _ = Command::new("ip").args(["netns", "del", TASK_NETNS]).status();
    }
}

/// Until `addr` accepts connections (5 s at most).
fn wait_for(addr: &str) -> anyhow::Result<()> {
    let target: std::net::SocketAddr = addr.parse().with_context(|| format!("{addr} is not an address"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect_timeout(&target, Duration::from_millis(500)).is_err() {
        if Instant::now() > deadline {
            bail!("{addr} did not accept connections within 5 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One `shoal demo load` run; its JSON summary.
fn load(url: &str, args: &MeshBenchArgs, keepalive: bool) -> anyhow::Result<Value> {
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["demo", "load", url, "--concurrency", &args.concurrency.to_string()]);
    command.args(["--duration", &format!("{}ms", args.duration.as_millis())]);
    if keepalive {
        command.arg("--keepalive");
    }
    let out = command.stderr(Stdio::inherit()).output().context("running shoal demo load")?;
    if !out.status.success() {
        bail!("shoal demo load {url} failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("the summary of shoal demo load {url}"))
}

/// An Endpoints object: service `s{i}` with VIP 10.97.x.y (the bench
/// service gets [`VIP`]) and `backends` backends, the first at the task.
fn fixture(i: u32, backends: u32, published: Option<u16>) -> Arc<Endpoints> {
    let address = |n: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 252, 0, 0)) + n).to_string();
    let backends = (0..backends)
        .map(|b| Backend {
            task: format!("s{i}-{b}"),
            // The bench service's task runs here; the others' elsewhere, as in a cluster.
            node: if published.is_some() { "bench" } else { "elsewhere" }.into(),
            address: if published.is_some() { TASK_ADDRESS.into() } else { address(i * 16 + b + 2) },
            ports: BTreeMap::new(),
        })
        .collect();
    let vip = if published.is_some() {
        VIP.to_string()
    } else {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i).to_string()
    };
    let port = EndpointPort { protocol: PortProtocol::Tcp, target: 80, published, publish_mode: PublishMode::Ingress };
    let spec =
        EndpointsSpec { service: format!("s{i}"), vip: Some(vip), ports: vec![port], backends, ..Default::default() };
    Arc::new(Endpoints::new(format!("s{i}"), spec))
}

/// Rule-programming times of the nftables data plane.
struct Programming {
    full_1000: Duration,
    /// (services, median time of one backend change)
    one_change: Vec<(u32, Duration)>,
}

fn programming() -> anyhow::Result<Programming> {
    let node = Cluster::new("bench", None, Vec::new());
    let mut full_1000 = Duration::ZERO;
    let mut one_change = Vec::new();
    for services in [100, 1000] {
        let mut endpoints: Vec<_> = (0..services).map(|i| fixture(i, 10, None)).collect();
        let mut dataplane = NftablesDataPlane::new("shoal-bench-scale");
        let started = Instant::now();
        dataplane.apply(&endpoints, &node)?;
        if services == 1000 {
            full_1000 = started.elapsed();
        }
        let mut changes = Vec::new();
        for round in 0..7 {
            // Alternately 9 and 10 backends for one service in the middle.
            endpoints[services as usize / 2] = fixture(services / 2, 9 + round % 2, None);
            let started = Instant::now();
            dataplane.apply(&endpoints, &node)?;
            changes.push(started.elapsed());
        }
        dataplane.cleanup()?;
        changes.sort();
        one_change.push((services, changes[changes.len() / 2]));
    }
    Ok(Programming { full_1000, one_change })
}

/// The median (by requests per second) of the samples of one row.
fn median<'a>(rows: &'a [(&str, bool, Value)], path: &str, keepalive: bool) -> Option<&'a Value> {
    let mut samples: Vec<&Value> =
        rows.iter().filter(|(p, k, _)| *p == path && *k == keepalive).map(|(_, _, v)| v).collect();
    samples.sort_by(|a, b| requests_per_sec(a).total_cmp(&requests_per_sec(b)));
    samples.get(samples.len() / 2).copied()
}

fn requests_per_sec(summary: &Value) -> f64 {
    summary["requestsPerSec"].as_f64().unwrap_or(0.0)
}

fn print_throughput(rows: &[(&str, bool, Value)], args: &MeshBenchArgs) {
    println!(
        "Mesh throughput: one demo task, {} requests in flight, {:?} per sample, median of {} (goals: nftables ≥ 90% of direct, userspace ≥ 50%)",
        args.concurrency, args.duration, args.rounds
    );
    println!("{:<28} {:<10} {:>10} {:>9} {:>9} {:>10}", "PATH", "KEEPALIVE", "REQ/S", "P99 MS", "FAILED", "VS DIRECT");
    let mut paths: Vec<&str> = Vec::new();
    for (path, _, _) in rows {
        if !paths.contains(path) {
            paths.push(path);
        }
    }
    for keepalive in [false, true] {
        let direct = |name: &str| median(rows, name, keepalive).map(requests_per_sec);
        for path in &paths {
            let Some(summary) = median(rows, path, keepalive) else { continue };
            let baseline = match *path {
                p if p.starts_with("nftables") => direct(DIRECT_TRACKED),
                p if p.starts_with("userspace") => direct(DIRECT_BARE),
                _ => None,
            };
            let ratio = baseline.filter(|d| *d > 0.0).map(|d| format!("{:.0}%", 100.0 * requests_per_sec(summary) / d));
            let failed: u64 = rows
                .iter()
                .filter(|(p, k, _)| p == path && *k == keepalive)
                .map(|r| r.2["failures"].as_u64().unwrap_or(0))
                .sum();
            println!(
                "{:<28} {:<10} {:>10.0} {:>9.2} {:>9} {:>10}",
                path,
                if keepalive { "yes" } else { "no" },
                requests_per_sec(summary),
                summary["latencyMs"]["p99"].as_f64().unwrap_or(0.0),
                failed,
                ratio.unwrap_or_default()
            );
        }
    }
    println!(
        "(nftables rows are compared with `{DIRECT_TRACKED}`, userspace with `{DIRECT_BARE}`: the same node state; FAILED counts every sample)"
    );
}

fn print_programming(p: &Programming) {
    println!();
    println!("nftables rule programming (goals: 1,000 × 10 < 1 s; one backend change < 50 ms at any scale)");
    println!("  1,000 services × 10 backends, first apply: {:.1} ms", p.full_1000.as_secs_f64() * 1000.0);
    for (services, took) in &p.one_change {
        println!("  one backend change among {services} services (median of 7): {:.1} ms", took.as_secs_f64() * 1000.0);
    }
}

/// Runs `ip ARGS…`; its stderr in the error.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Removes the bench's namespaces (and with them its links), if any.
fn delete_namespaces() {
    for netns in [TASK_NETNS, NODE_NETNS] {
        let _ = Command::new("ip").args(["netns", "del", netns]).stderr(Stdio::null()).status();
    }
}
