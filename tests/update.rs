//! Rolling updates and rollbacks with real processes: a store, `shoal
//! controller` and `shoal agent`s running `shoal/demo` tasks, driven through
//! the CLI as an operator would ([`support::cluster`]). Durations are scaled
//! down (monitor 1 s, delay 1 s).
//!
//! - the reference chapter's walk-through: 10 replicas, stop-first,
//!   parallelism 2, delay 1 s: tasks replaced two at a time, the delay
//!   observed between batches, never fewer than replicas − 2 running, all on
//!   the new image; `service history`, `service rollback` and
//!   `--to-revision`;
//! - start-first: never fewer running than replicas;
//! - a release that cannot start with failure action rollback: rolled back
//!   on its own, `rollback_completed`;
//! - failure action pause: paused with a message; the next `service update`
//!   resumes;
//! - the controller killed mid-update: the update completes after restart,
//!   the same update (its start time is kept).
//!
//! "Running" is what an operator checks: desired running, observed running
//! by its agent, its pid alive.

mod support;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use support::cluster::{Cluster, TaskRow};
use support::Backend;

const V1: &str = "shoal/demo:1.0";
const V2: &str = "shoal/demo:2.0";
const CONVERGE: Duration = Duration::from_secs(40);

/// `service create` of `replicas` demo tasks on their own ports, monitor
/// and restart delay of 1 s, plus `flags`.
fn create(cluster: &Cluster, name: &str, replicas: u64, flags: &[&str]) {
    let replicas = replicas.to_string();
    let mut args = vec!["service", "create", "--name", name, "--replicas", &replicas, "-e", "DEMO_LISTEN=127.0.0.1:0"];
    args.extend(["--update-monitor", "1s", "--rollback-monitor", "1s", "--restart-delay", "1s"]);
    args.extend(flags);
    args.push(V1);
    cluster.shoal_ok(&args);
    cluster.wait_until(CONVERGE, &format!("{replicas} replicas of {name} running"), |c| c.running(name).len() == replicas.parse::<usize>().unwrap());
}

/// Running tasks per image.
fn images(rows: &[TaskRow]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for row in rows.iter().filter(|r| r.is_running()) {
        *counts.entry(row.task.spec.spec.image.clone()).or_default() += 1;
    }
    counts
}

fn all_on(cluster: &Cluster, name: &str, image: &str, n: usize) -> bool {
    images(&cluster.tasks(name)) == BTreeMap::from([(image.to_string(), n)])
}

/// `service inspect NAME`: the service as JSON.
fn inspect(cluster: &Cluster, name: &str) -> Value {
    let json: Value = serde_json::from_str(&cluster.shoal_ok(&["service", "inspect", name])).unwrap();
    json[0].clone()
}

fn update_state(cluster: &Cluster, name: &str) -> String {
    inspect(cluster, name)["status"]["updateStatus"]["state"].as_str().unwrap_or_default().to_string()
}

/// Runs `shoal ARGS` (a following update, blocking) while polling the
/// service's tasks every ~100 ms; its output and the fewest tasks seen running.
fn while_watching(cluster: &Cluster, name: &str, args: &[&str]) -> (Output, usize) {
    std::thread::scope(|s| {
        let cli = s.spawn(|| cluster.shoal(args));
        let mut fewest = usize::MAX;
        while !cli.is_finished() {
            fewest = fewest.min(cluster.tasks(name).iter().filter(|r| r.is_running()).count());
            std::thread::sleep(Duration::from_millis(100));
        }
        (cli.join().unwrap(), fewest)
    })
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Creation times of each slot's first task of `image`, grouped into
/// batches (tasks created within 500 ms of each other).
fn batches(rows: &[TaskRow], image: &str) -> Vec<Vec<DateTime<Utc>>> {
    let mut first: BTreeMap<u64, DateTime<Utc>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.task.spec.spec.image == image) {
        let (slot, created) = (row.task.spec.slot.unwrap(), row.task.metadata.created_at.unwrap());
        let entry = first.entry(slot).or_insert(created);
        *entry = (*entry).min(created);
    }
    let mut times: Vec<DateTime<Utc>> = first.into_values().collect();
    times.sort();
    let mut groups: Vec<Vec<DateTime<Utc>>> = Vec::new();
    for t in times {
        match groups.last_mut() {
            Some(group) if t - *group.last().unwrap() < chrono::Duration::milliseconds(500) => group.push(t),
            _ => groups.push(vec![t]),
        }
    }
    groups
}

#[test]
fn the_chapters_walk_through_replaces_ten_tasks_two_at_a_time_and_rolls_back_by_revision() {
    let cluster = Cluster::start(Backend::Embedded, &["", ""]);
    let flags = ["--update-parallelism", "2", "--update-delay", "1s", "--rollback-parallelism", "0"];
    create(&cluster, "web", 10, &flags);

    let (out, fewest) = while_watching(&cluster, "web", &["service", "update", "--image", V2, "web"]);
    assert!(out.status.success(), "service update failed\n{}\n{}", text(&out), cluster.dump());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("overall progress: 10 out of 10 tasks") && stdout.contains("verify: Service converged"), "{}", text(&out));
    assert!(fewest >= 8, "stop-first with parallelism 2 ran only {fewest} of 10 tasks at one point");
    cluster.wait_until(CONVERGE, "10 tasks on 2.0", |c| all_on(c, "web", V2, 10));
    assert_eq!(update_state(&cluster, "web"), "completed");

    let groups = batches(&cluster.tasks("web"), V2);
    let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2, 2, 2, 2], "two at a time: {groups:?}");
    for pair in groups.windows(2) {
        let gap = pair[1][0] - *pair[0].last().unwrap();
        assert!(gap >= chrono::Duration::seconds(2), "batches only {gap} apart; monitor 1s + delay 1s: {groups:?}");
    }

    let history = cluster.shoal_ok(&["service", "history", "web"]);
    assert!(history.contains("created") && history.contains("image shoal/demo:1.0 → shoal/demo:2.0"), "{history}");
    let back = cluster.shoal(&["service", "rollback", "web"]);
    assert!(back.status.success(), "service rollback failed\n{}", text(&back));
    assert!(all_on(&cluster, "web", V1, 10), "{}", cluster.dump());
    assert_eq!(update_state(&cluster, "web"), "rollback_completed");
    let history = cluster.shoal_ok(&["service", "history", "web"]);
    assert!(history.contains("rollback to revision 1"), "{history}");

    let forward = cluster.shoal(&["service", "rollback", "--to-revision", "2", "web"]);
    assert!(forward.status.success(), "rollback --to-revision 2 failed\n{}", text(&forward));
    assert!(all_on(&cluster, "web", V2, 10), "{}", cluster.dump());
}

#[test]
fn start_first_never_runs_fewer_tasks_than_replicas() {
    let cluster = Cluster::start(Backend::Embedded, &[""]);
    create(&cluster, "web", 4, &["--update-parallelism", "2", "--update-order", "start-first"]);
    let (out, fewest) = while_watching(&cluster, "web", &["service", "update", "--image", V2, "web"]);
    assert!(out.status.success(), "service update failed\n{}\n{}", text(&out), cluster.dump());
    assert!(fewest >= 4, "start-first ran only {fewest} of 4 tasks at one point");
    cluster.wait_until(CONVERGE, "4 tasks on 2.0", |c| all_on(c, "web", V2, 4));
}

#[test]
fn a_release_that_cannot_start_is_rolled_back_on_its_own() {
    let cluster = Cluster::start(Backend::Embedded, &[""]);
    create(&cluster, "web", 4, &["--update-failure-action", "rollback", "--rollback-parallelism", "0"]);
    let out = cluster.shoal(&["service", "update", "--image", V2, "--env-add", "DEMO_FAIL_START=1", "web"]);
    assert!(!out.status.success(), "a rolled back update must fail the command\n{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("update rolled back due to failure or early termination of task"), "{}", text(&out));
    cluster.wait_until(CONVERGE, "4 tasks back on 1.0", |c| all_on(c, "web", V1, 4));
    let service = inspect(&cluster, "web");
    assert_eq!(service["status"]["updateStatus"]["state"], "rollback_completed", "{service:#}");
    assert_eq!(service["spec"]["image"], V1);
    assert!(service["spec"]["env"].get("DEMO_FAIL_START").is_none(), "the whole spec is rolled back: {service:#}");
}

#[test]
fn a_failed_update_pauses_with_a_message_and_the_next_update_resumes() {
    let cluster = Cluster::start(Backend::Embedded, &[""]);
    create(&cluster, "web", 3, &[]);
    let out = cluster.shoal(&["service", "update", "--image", V2, "--env-add", "DEMO_FAIL_START=1", "web"]);
    assert!(!out.status.success(), "a paused update must fail the command\n{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("update paused due to failure or early termination of task"), "{}", text(&out));
    let service = inspect(&cluster, "web");
    assert_eq!(service["status"]["updateStatus"]["state"], "paused", "{service:#}");
    let ls = cluster.shoal_ok(&["service", "ls"]);
    assert!(ls.contains("(paused)"), "{ls}");
    assert!(images(&cluster.tasks("web")).get(V1).copied().unwrap_or(0) >= 2, "parallelism 1: the other tasks stay\n{}", cluster.dump());

    let fixed = cluster.shoal(&["service", "update", "--env-rm", "DEMO_FAIL_START", "web"]);
    assert!(fixed.status.success(), "the next update resumes\n{}\n{}", text(&fixed), cluster.dump());
    cluster.wait_until(CONVERGE, "3 tasks on 2.0", |c| all_on(c, "web", V2, 3));
    assert_eq!(update_state(&cluster, "web"), "completed");
}

#[test]
fn an_update_survives_the_controller_being_killed_midway() {
    let mut cluster = Cluster::start(Backend::Embedded, &[""]);
    create(&cluster, "web", 4, &["--update-delay", "1s"]);
    cluster.shoal_ok(&["service", "update", "--detach", "--image", V2, "web"]);
    cluster.wait_until(CONVERGE, "the first task on 2.0", |c| images(&c.tasks("web")).get(V2).is_some_and(|n| *n >= 1));
    let started = inspect(&cluster, "web")["status"]["updateStatus"]["startedAt"].clone();
    assert!(images(&cluster.tasks("web")).get(V1).is_some_and(|n| *n >= 2), "not midway any more\n{}", cluster.dump());
    cluster.restart_controller();
    cluster.wait_until(CONVERGE, "4 tasks on 2.0 after the restart", |c| all_on(c, "web", V2, 4) && update_state(c, "web") == "completed");
    assert_eq!(inspect(&cluster, "web")["status"]["updateStatus"]["startedAt"], started, "the same update continued");
}
