//! The whole system on a multi-node test cluster ([`support::cluster`]):
//! a store, `shoal controller` and several `shoal agent`s running real
//! `shoal/demo` processes, driven through the `shoal` CLI. Replicas spread
//! 4/3/3; a killed agent's replicas move within 5 s of its lease expiring
//! and its stale tasks stop when it returns; a drained node loses its tasks
//! and gets no new ones; a restarted agent restarts nothing; constraints
//! and max-replicas-per-node hold; a crashing app is restarted after the
//! delay until max attempts; a global service follows nodes joining and
//! leaving. Every scenario runs against the embedded store and real etcd.
//!
//! "Running" here means what an operator would check: the task is desired
//! running, its agent observes it running, and its pid is a live process.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use shoal_agent::taskdir::{ExitRecord, PidRecord};
use shoal_crd::{NodeState, TaskState};
use support::cluster::{alive, Cluster, TaskRow, HEARTBEAT_TTL};
use support::Backend;

/// How long a cluster may take to converge after a change.
const CONVERGE: Duration = Duration::from_secs(20);

/// `service create -d --name NAME FLAGS… shoal/demo:1.0` (`-d` as Docker
/// scripts write it); every replica listens on a port of its own (tasks
/// share their node's network).
fn create(cluster: &Cluster, name: &str, flags: &[&str]) {
    let mut args = vec!["service", "create", "-d", "--name", name, "-e", "DEMO_LISTEN=127.0.0.1:0"];
    args.extend(flags);
    args.push("shoal/demo:1.0");
    cluster.shoal_ok(&args);
}

/// `{node: count}` from pairs.
fn spread(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

/// Task id → pid of the running tasks.
fn pids(rows: &[TaskRow]) -> BTreeMap<String, u32> {
    rows.iter().map(|r| (r.id().to_string(), r.pid().expect("a running task has a pid"))).collect()
}

fn ids(rows: &[TaskRow]) -> BTreeSet<String> {
    rows.iter().map(|r| r.id().to_string()).collect()
}

/// Waits until `service` has exactly `n` running tasks, all on nodes other than `excluded`.
fn until_running(cluster: &Cluster, service: &str, n: usize, excluded: &[&str], what: &str) -> Duration {
    cluster.wait_until(CONVERGE, what, |c| {
        let by_node = c.tasks_by_node(service);
        by_node.values().sum::<usize>() == n && excluded.iter().all(|e| !by_node.contains_key(*e))
    })
}

fn ten_replicas_run_as_real_processes_spread_four_three_three(backend: Backend) {
    let cluster = Cluster::start(backend, &["", "", ""]);
    create(&cluster, "web", &["--replicas", "10"]);
    until_running(&cluster, "web", 10, &[], "10 replicas running");
    let running = cluster.running("web");
    let mut counts: Vec<usize> = cluster.tasks_by_node("web").into_values().collect();
    counts.sort();
    assert_eq!(counts, [3, 3, 4], "{:?}\n{}", cluster.tasks_by_node("web"), cluster.dump());
    for row in &running {
        let pid = row.pid().unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(String::from_utf8_lossy(&cmdline).contains("demo"), "{} is not the demo: {cmdline:?}", row.describe());
    }
    let slots: BTreeSet<u64> = running.iter().filter_map(|r| r.task.spec.slot).collect();
    assert_eq!(slots, (1..=10).collect(), "one task per slot");
}

fn a_killed_agents_replicas_move_within_five_seconds_of_its_lease_expiring(backend: Backend) {
    let mut cluster = Cluster::start(backend, &["", "", ""]);
    create(&cluster, "web", &["--replicas", "6"]);
    until_running(&cluster, "web", 6, &[], "6 replicas running");
    let before = cluster.running("web");
    let victim = cluster.agent_name(0).to_string();
    let stale: Vec<u32> =
        before.iter().filter(|r| r.node() == Some(victim.as_str())).map(|r| r.pid().unwrap()).collect();
    assert_eq!(stale.len(), 2, "{}", cluster.dump());

    cluster.kill_agent(0);
    let down = cluster
        .wait_until(CONVERGE, "the killed agent's node to be down", |c| c.node_state(&victim) == NodeState::Down);
    let moved = cluster.wait_until(CONVERGE, "its replicas to run elsewhere", |c| {
        let by_node = c.tasks_by_node("web");
        by_node.values().sum::<usize>() == 6 && !by_node.contains_key(&victim)
    });
    println!("{backend:?}: node down {down:?} after the kill (heartbeat TTL {HEARTBEAT_TTL:?}), replicas running elsewhere {moved:?} later ({:?} after the kill)", down + moved);
    assert!(
        down <= HEARTBEAT_TTL + Duration::from_secs(2),
        "node marked down {down:?} after the kill\n{}",
        cluster.dump()
    );
    assert!(
        moved <= Duration::from_secs(5),
        "replicas running elsewhere {moved:?} after the node went down\n{}",
        cluster.dump()
    );
    assert!(stale.iter().all(|p| alive(*p)), "tasks outlive their agent until it says otherwise");

    // The agent returns: its stale tasks are stopped, no slot runs twice.
    cluster.restart_agent(0);
    cluster.wait_until(CONVERGE, "the node ready again and its stale tasks stopped", |c| {
        c.node_state(&victim) == NodeState::Ready && stale.iter().all(|p| !alive(*p))
    });
    assert_eq!(cluster.tasks_by_node("web").values().sum::<usize>(), 6, "{}", cluster.dump());
    let slots: BTreeSet<u64> = cluster.running("web").iter().filter_map(|r| r.task.spec.slot).collect();
    assert_eq!(slots.len(), 6, "one running task per slot\n{}", cluster.dump());
}

fn a_drained_node_loses_its_tasks_and_gets_no_new_ones(backend: Backend) {
    let cluster = Cluster::start(backend, &["", "", ""]);
    create(&cluster, "web", &["--replicas", "6"]);
    until_running(&cluster, "web", 6, &[], "6 replicas running");
    let drained = cluster.agent_name(1).to_string();
    let before: BTreeSet<String> = cluster
        .tasks("web")
        .iter()
        .filter(|r| r.node() == Some(drained.as_str()))
        .map(|r| r.id().to_string())
        .collect();
    let old_pids: Vec<u32> = cluster
        .running("web")
        .iter()
        .filter(|r| r.node() == Some(drained.as_str()))
        .map(|r| r.pid().unwrap())
        .collect();
    assert_eq!(old_pids.len(), 2, "{}", cluster.dump());

    cluster.shoal_ok(&["node", "update", "--availability", "drain", &drained]);
    until_running(&cluster, "web", 6, &[&drained], "the drained node's replicas running elsewhere");
    cluster.wait_until(CONVERGE, "the drained node's processes stopped", |_| old_pids.iter().all(|p| !alive(*p)));

    cluster.shoal_ok(&["service", "scale", "web=9"]);
    until_running(&cluster, "web", 9, &[&drained], "9 replicas, none on the drained node");
    let after: BTreeSet<String> = cluster
        .tasks("web")
        .iter()
        .filter(|r| r.node() == Some(drained.as_str()))
        .map(|r| r.id().to_string())
        .collect();
    assert_eq!(after, before, "no task was placed on the drained node\n{}", cluster.dump());
}

fn a_restarted_agent_restarts_no_task(backend: Backend) {
    let mut cluster = Cluster::start(backend, &["", "", ""]);
    create(&cluster, "web", &["--replicas", "4"]);
    until_running(&cluster, "web", 4, &[], "4 replicas running");
    let before = cluster.running("web");
    let agent = cluster.agent_name(0).to_string();
    assert!(before.iter().any(|r| r.node() == Some(agent.as_str())), "{}", cluster.dump());

    cluster.kill_agent(0);
    cluster.restart_agent(0);
    // Past the old lease's lifetime: a missed heartbeat would show by now.
    std::thread::sleep(HEARTBEAT_TTL + Duration::from_secs(1));
    cluster.wait_until(CONVERGE, "the restarted agent ready with every task still running", |c| {
        c.node_state(&agent) == NodeState::Ready && c.running("web").len() == 4
    });
    let after = cluster.running("web");
    assert_eq!(pids(&after), pids(&before), "the same processes run\n{}", cluster.dump());
    assert_eq!(ids(&cluster.tasks("web")), ids(&before), "no new task\n{}", cluster.dump());
}

fn constraints_and_max_replicas_per_node_hold(backend: Backend) {
    let cluster = Cluster::start(backend, &["zone=a", "zone=b", "zone=b"]);
    create(&cluster, "zoned", &["--replicas", "3", "--constraint", "node.labels.zone==a"]);
    create(
        &cluster,
        "capped",
        &["--replicas", "3", "--constraint", "node.labels.zone==b", "--replicas-max-per-node", "1"],
    );
    until_running(&cluster, "zoned", 3, &[], "3 zoned replicas running");
    assert_eq!(cluster.tasks_by_node("zoned"), spread(&[("node-1", 3)]), "{}", cluster.dump());

    cluster.wait_until(CONVERGE, "2 capped replicas running and the third pending with a reason", |c| {
        let tasks = c.tasks("capped");
        let pending = tasks.iter().filter(|r| {
            r.node().is_none()
                && r.task
                    .status
                    .as_ref()
                    .is_some_and(|s| s.state == TaskState::Pending && s.message.starts_with("no suitable node"))
        });
        c.tasks_by_node("capped") == spread(&[("node-2", 1), ("node-3", 1)]) && pending.count() == 1
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cluster.tasks_by_node("capped"), spread(&[("node-2", 1), ("node-3", 1)]), "{}", cluster.dump());
}

/// When the task's process started and ended, from its agent's records.
fn run_times(cluster: &Cluster, row: &TaskRow) -> (DateTime<Utc>, ExitRecord) {
    let dir = cluster.task_dir(row.node().expect("a placed task"), row.id());
    let read = |file: &str| {
        std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{}/{file}: {e}\n{}", dir.display(), cluster.dump()))
    };
    let started: PidRecord = serde_json::from_slice(&read("pid.json")).unwrap();
    let exit: ExitRecord = serde_json::from_slice(&read("exit.json")).unwrap();
    (started.started_at, exit)
}

fn a_crashing_app_is_restarted_after_the_delay_until_max_attempts(backend: Backend) {
    let cluster = Cluster::start(backend, &[""]);
    let policy = ["--restart-condition", "on-failure", "--restart-delay", "1s", "--restart-max-attempts", "2"];
    create(&cluster, "crashy", &[&["--replicas", "1", "-e", "DEMO_CRASH_AFTER=1s"][..], &policy].concat());
    // The first run and two restarts, each crashing: then it gives up.
    cluster.wait_until(CONVERGE, "three failed attempts, none desired running", |c| {
        let tasks = c.tasks("crashy");
        tasks.len() == 3
            && tasks.iter().all(|r| {
                r.observed_state() == Some(TaskState::Failed) && r.task.spec.desired_state != TaskState::Running
            })
    });
    std::thread::sleep(Duration::from_secs(2));
    let tasks = cluster.tasks("crashy");
    assert_eq!(tasks.len(), 3, "no attempt beyond max attempts\n{}", cluster.dump());

    let mut runs: Vec<(DateTime<Utc>, ExitRecord)> = tasks.iter().map(|r| run_times(&cluster, r)).collect();
    runs.sort_by_key(|(started, _)| *started);
    for (started, exit) in &runs {
        assert_eq!(exit.code, Some(1), "the demo crashed with status 1: {exit:?}");
        let ran = (exit.finished_at.unwrap() - *started).to_std().unwrap();
        assert!(ran >= Duration::from_millis(900), "crashed after {ran:?}, before DEMO_CRASH_AFTER");
    }
    for pair in runs.windows(2) {
        let delay = (pair[1].0 - pair[0].1.finished_at.unwrap()).to_std().unwrap_or_default();
        println!("{backend:?}: restarted {delay:?} after the crash");
        assert!(
            delay >= Duration::from_millis(900),
            "restarted {delay:?} after the crash, before the 1 s delay\n{}",
            cluster.dump()
        );
        assert!(delay < Duration::from_secs(5), "restarted only {delay:?} after the crash\n{}", cluster.dump());
    }
}

fn a_global_service_follows_nodes_joining_and_leaving(backend: Backend) {
    let mut cluster = Cluster::start(backend, &["", "", ""]);
    create(&cluster, "mon", &["--mode", "global"]);
    let one_each = |nodes: &[&str]| spread(&nodes.iter().map(|n| (*n, 1)).collect::<Vec<_>>());
    cluster.wait_until(CONVERGE, "one task per node", |c| {
        c.tasks_by_node("mon") == one_each(&["node-1", "node-2", "node-3"])
    });

    let joined = cluster.add_agent("");
    assert_eq!(cluster.agent_name(joined), "node-4");
    cluster.wait_until(CONVERGE, "a task on the node that joined", |c| {
        c.tasks_by_node("mon") == one_each(&["node-1", "node-2", "node-3", "node-4"])
    });

    let drained = cluster.running("mon").into_iter().find(|r| r.node() == Some("node-2")).unwrap().pid().unwrap();
    cluster.shoal_ok(&["node", "update", "--availability", "drain", "node-2"]);
    cluster.wait_until(CONVERGE, "the drained node's task stopped", |c| {
        c.tasks_by_node("mon") == one_each(&["node-1", "node-3", "node-4"]) && !alive(drained)
    });

    cluster.kill_agent(2);
    cluster.wait_until(CONVERGE, "the killed node's task stopped being counted", |c| {
        c.node_state("node-3") == NodeState::Down
            && c.tasks("mon")
                .iter()
                .filter(|r| r.task.spec.desired_state == TaskState::Running)
                .all(|r| r.node() != Some("node-3"))
    });
    assert_eq!(cluster.tasks_by_node("mon"), one_each(&["node-1", "node-4"]), "{}", cluster.dump());
}

/// Runs each scenario against the embedded store and against etcd.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $name() { super::$name(super::Backend::Embedded) } )*
        }
        mod etcd {
            $( #[test] fn $name() { super::$name(super::Backend::Etcd) } )*
        }
    };
}

on_both_backends!(
    ten_replicas_run_as_real_processes_spread_four_three_three,
    a_killed_agents_replicas_move_within_five_seconds_of_its_lease_expiring,
    a_drained_node_loses_its_tasks_and_gets_no_new_ones,
    a_restarted_agent_restarts_no_task,
    constraints_and_max_replicas_per_node_hold,
    a_crashing_app_is_restarted_after_the_delay_until_max_attempts,
    a_global_service_follows_nodes_joining_and_leaving,
);
