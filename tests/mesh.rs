//! The routing mesh's proof, as the issue states it: three nodes (each a
//! real `shoal agent` in a network namespace of its own, every task in a
//! namespace of its own on its node's bridge), a 6-replica demo service
//! with a published port on the two `role=app` nodes, and a client in its
//! own namespace sending HTTP requests without pause — 8 at a time on
//! fresh connections and 4 on keep-alive ones — to the published port of
//! the third node, which runs none of the tasks. Meanwhile the service goes
//! through a rolling update, a rollback, a scale 6→3→6 and a node drain.
//!
//! Expected: not one failed request. Along the way, tasks reach the
//! service by name (the agent's DNS, then the VIP) on both nodes; at the
//! end a `mode: host` port answers on the node running its task and on no
//! other. The loads are `shoal demo load`
//! processes (see its module for what counts as a failure and the one
//! retry a keep-alive client makes); the test prints their summaries:
//! requests, failures, answers per version.
//!
//! Root only (fails, never skips, otherwise), as CI runs.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::cluster::Cluster;
use support::Backend;

const SERVICE: &str = "web";
const PUBLISHED: u16 = 8080;
/// Time for each step of the scenario to converge.
const STEP: Duration = Duration::from_secs(90);

/// A `shoal demo load` process in the client's namespace.
struct Load {
    child: Child,
}

impl Load {
    fn start(client: &str, url: &str, extra: &[&str]) -> Load {
        let child = Command::new("ip")
            .args(["netns", "exec", client, env!("CARGO_BIN_EXE_shoal"), "demo", "load", url])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting shoal demo load");
        Load { child }
    }

    /// SIGTERM, then its JSON summary.
    fn stop(self) -> Value {
        support::quiet(&["kill", &self.child.id().to_string()]);
        self.wait()
    }

    /// Its JSON summary once it ends (`--duration`).
    fn wait(self) -> Value {
        let out = self.child.wait_with_output().expect("waiting for shoal demo load");
        assert!(out.status.success(), "shoal demo load failed: {}", out.status);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("demo load summary: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

/// Backends the Endpoints of `service` lists (ready tasks), from `service inspect`.
fn backends(cluster: &Cluster, service: &str) -> usize {
    let inspected: Value = serde_json::from_str(&cluster.shoal_ok(&["service", "inspect", service])).unwrap();
    inspected[0]["endpoint"]["backends"].as_array().map_or(0, Vec::len)
}

/// Waits until exactly `replicas` tasks run `image`, on `nodes` only, and all are backends.
fn converged(cluster: &Cluster, what: &str, replicas: usize, image: &str, nodes: &[&str]) {
    let took = cluster.wait_until(STEP, what, |c| {
        let running = c.running(SERVICE);
        running.len() == replicas
            && running.iter().all(|t| t.task.spec.spec.image == image && nodes.contains(&t.node().unwrap_or("")))
            && backends(c, SERVICE) == replicas
    });
    eprintln!("{what}: {took:.1?}");
}

#[test]
fn no_request_fails_through_an_update_a_rollback_a_scale_and_a_drain() {
    let mut cluster = Cluster::start_mesh(Backend::Embedded, &["role=app", "role=app", "role=edge"]);
    let (app1, app2) = (cluster.agent_name(0).to_string(), cluster.agent_name(1).to_string());
    let (client, _) = cluster.add_client();
    let url = format!("http://{}:{PUBLISHED}/", cluster.agent_address(2));

    cluster.shoal_ok(&[
        "service",
        "create",
        "--name",
        SERVICE,
        "--replicas",
        "6",
        "--constraint",
        "node.labels.role==app",
        "-p",
        &format!("{PUBLISHED}:80"),
        "--health-cmd",
        "shoal demo probe http://127.0.0.1:80/health",
        "--health-interval",
        "500ms",
        "--health-retries",
        "2",
        "--update-parallelism",
        "2",
        "--update-delay",
        "500ms",
        "--update-monitor",
        "1s",
        "--update-order",
        "start-first",
        "--rollback-parallelism",
        "2",
        "--rollback-monitor",
        "1s",
        "shoal/demo:1.0",
    ]);
    converged(&cluster, "6 tasks of 1.0", 6, "shoal/demo:1.0", &[&app1, &app2]);
    let reachable = cluster.wait_until(Duration::from_secs(20), "the edge node's published port", |_| {
        support::quiet(&["ip", "netns", "exec", &client, env!("CARGO_BIN_EXE_shoal"), "demo", "probe", &url])
    });
    eprintln!("published port answering on the edge node: {reachable:.1?}");

    let fresh = Load::start(&client, &url, &["--concurrency", "8"]);
    let keepalive = Load::start(&client, &url, &["--concurrency", "4", "--keepalive"]);
    std::thread::sleep(Duration::from_secs(1));
    cluster.shoal_ok(&["service", "update", "--detach", "--image", "shoal/demo:2.0", SERVICE]);
    converged(&cluster, "rolling update to 2.0", 6, "shoal/demo:2.0", &[&app1, &app2]);
    cluster.shoal_ok(&["service", "rollback", "--detach", SERVICE]);
    converged(&cluster, "rollback to 1.0", 6, "shoal/demo:1.0", &[&app1, &app2]);
    cluster.shoal_ok(&["service", "scale", &format!("{SERVICE}=3")]);
    converged(&cluster, "scale to 3", 3, "shoal/demo:1.0", &[&app1, &app2]);
    cluster.shoal_ok(&["service", "scale", &format!("{SERVICE}=6")]);
    converged(&cluster, "scale to 6", 6, "shoal/demo:1.0", &[&app1, &app2]);
    tasks_reach_the_service_by_name_on_every_node(&client, &url, &[&app1, &app2]);
    cluster.shoal_ok(&["node", "update", "--availability", "drain", &app2]);
    converged(&cluster, "drain of node-2", 6, "shoal/demo:1.0", &[&app1]);
    std::thread::sleep(Duration::from_secs(1));

    let summaries = [fresh.stop(), keepalive.stop()];
    let mut total = 0;
    for summary in &summaries {
        eprintln!(
            "keepalive={} requests={} failures={} retries={} versions={} p99={}ms errors={}",
            summary["keepalive"],
            summary["requests"],
            summary["failures"],
            summary["retries"],
            summary["versions"],
            summary["latencyMs"]["p99"],
            summary["errors"]
        );
        total += summary["requests"].as_u64().unwrap();
    }
    if summaries.iter().any(|s| s["failures"] != 0) {
        eprintln!("failed requests: the state and logs to look into\n{}", cluster.dump());
    }
    for summary in &summaries {
        let (failures, requests) = (summary["failures"].as_u64().unwrap(), summary["requests"].as_u64().unwrap());
        assert_eq!(failures, 0, "{failures} of {requests} requests failed: {summary:#}");
        assert!(
            summary["versions"]["1.0"].as_u64() > Some(0) && summary["versions"]["2.0"].as_u64() > Some(0),
            "the load saw both versions: {summary:#}"
        );
    }
    assert!(total >= 20_000, "only {total} requests were sent (the issue asks for at least 20,000)");

    host_mode_publishes_only_where_the_task_runs(&cluster, &client);
}

/// From inside a task (the demo's `/fetch`, reached through the published
/// port): `http://web/` resolves by the agent's DNS to the VIP, which
/// balances over the service's tasks on every node.
fn tasks_reach_the_service_by_name_on_every_node(client: &str, url: &str, nodes: &[&str]) {
    let fetch = format!("{url}fetch?url=http://{SERVICE}/");
    let summary = Load::start(client, &fetch, &["--concurrency", "2", "--duration", "2s"]).wait();
    assert_eq!(summary["failures"], 0, "fetching http://{SERVICE}/ from inside tasks: {summary:#}");
    let reached: Vec<&str> =
        summary["nodes"].as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
    assert_eq!(reached, nodes, "tasks fetching http://{SERVICE}/ reached tasks on every node: {summary:#}");
}

/// `mode: host`: the port answers on the node running the task, and on no other.
fn host_mode_publishes_only_where_the_task_runs(cluster: &Cluster, client: &str) {
    cluster.shoal_ok(&[
        "service",
        "create",
        "--name",
        "direct",
        "--constraint",
        "node.labels.role==app",
        "-p",
        "published=9090,target=80,mode=host",
        "shoal/demo:1.0",
    ]);
    cluster.wait_until(STEP, "the host-mode task running", |c| c.running("direct").len() == 1);
    let node = cluster.running("direct")[0].node().unwrap_or_default().to_string();
    let answers = |index: usize| {
        let url = format!("http://{}:9090/", cluster.agent_address(index));
        support::quiet(&["ip", "netns", "exec", client, env!("CARGO_BIN_EXE_shoal"), "demo", "probe", &url])
    };
    let running_on = (0..3).find(|i| cluster.agent_name(*i) == node).expect("the task's node is one of the three");
    cluster.wait_until(Duration::from_secs(20), "the host-mode port on the task's node", |_| answers(running_on));
    for other in (0..3).filter(|i| *i != running_on) {
        assert!(!answers(other), "host-mode port 9090 answered on {}, which runs no task", cluster.agent_name(other));
    }
}
