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
//!   the same update (its start time is kept);
//! - with health checks (`shoal demo probe` every 300 ms): a release that
//!   never turns healthy is rolled back on its own; failure action continue
//!   finishes despite failed tasks; `max_failure_ratio` 0.5 lets an update
//!   with half its tasks failed complete and pauses one with more; a probe
//!   failing briefly (fewer than `retries` times) replaces nothing, one
//!   failing for good gets its task replaced; a task stuck in starting
//!   fails the update at its progress deadline.
//!
//! "Running" is what an operator checks: desired running, observed running
//! by its agent, its pid alive.

mod support;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use shoal_crd::{HealthStatus, TaskState, TaskStatus};
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
    cluster.wait_until(CONVERGE, &format!("{replicas} replicas of {name} running"), |c| {
        c.running(name).len() == replicas.parse::<usize>().unwrap()
    });
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
    assert!(
        stdout.contains("overall progress: 10 out of 10 tasks") && stdout.contains("verify: Service converged"),
        "{}",
        text(&out)
    );
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
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("update paused due to failure or early termination of task"),
        "{}",
        text(&out)
    );
    let service = inspect(&cluster, "web");
    assert_eq!(service["status"]["updateStatus"]["state"], "paused", "{service:#}");
    let ls = cluster.shoal_ok(&["service", "ls"]);
    assert!(ls.contains("(paused)"), "{ls}");
    assert!(
        images(&cluster.tasks("web")).get(V1).copied().unwrap_or(0) >= 2,
        "parallelism 1: the other tasks stay\n{}",
        cluster.dump()
    );

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
    cluster.wait_until(CONVERGE, "4 tasks on 2.0 after the restart", |c| {
        all_on(c, "web", V2, 4) && update_state(c, "web") == "completed"
    });
    assert_eq!(inspect(&cluster, "web")["status"]["updateStatus"]["startedAt"], started, "the same update continued");
}

/// Health check flags: every task writes the address it listens on (port
/// 0) to `demo.addr` in its working dir, and `shoal demo probe` asks that
/// address every 300 ms once `guard` (a shell test, may be empty) holds;
/// `retries` failures in a row make the task unhealthy.
fn health(guard: &str, retries: u64) -> Vec<String> {
    let probe = format!("{guard}shoal demo probe --timeout 1s http://$(cat demo.addr)/health");
    let flags = [
        "-e",
        "DEMO_ADDR_FILE=demo.addr",
        "--health-cmd",
        &probe,
        "--health-interval",
        "300ms",
        "--health-timeout",
        "2s",
    ];
    flags.iter().map(|f| f.to_string()).chain(["--health-retries".into(), retries.to_string()]).collect()
}

/// `health(guard, retries)` followed by `flags`, as `create` takes them.
fn with_health<'a>(health: &'a [String], flags: &[&'a str]) -> Vec<&'a str> {
    health.iter().map(String::as_str).chain(flags.iter().copied()).collect()
}

/// What the task's own agent last reported about it.
fn status(row: &TaskRow) -> Option<&TaskStatus> {
    row.observation.as_ref().filter(|o| o.spec.task_uid == row.task.metadata.uid).and_then(|o| o.status.as_ref())
}

/// Running and healthy, as an update counts a task.
fn is_ready(row: &TaskRow) -> bool {
    row.is_running() && status(row).is_some_and(TaskStatus::is_ready)
}

/// Ready tasks of `name` on `image`.
fn ready_on(cluster: &Cluster, name: &str, image: &str) -> usize {
    cluster.tasks(name).iter().filter(|r| is_ready(r) && r.task.spec.spec.image == image).count()
}

#[test]
fn a_release_that_never_turns_healthy_is_rolled_back_on_its_own() {
    let cluster = Cluster::start(Backend::Embedded, &[""]);
    let probe = health("", 3);
    create(
        &cluster,
        "web",
        4,
        &with_health(
            &probe,
            &["--update-parallelism", "2", "--update-failure-action", "rollback", "--rollback-parallelism", "0"],
        ),
    );
    cluster.wait_until(CONVERGE, "4 healthy tasks on 1.0", |c| ready_on(c, "web", V1) == 4);

    let out = cluster.shoal(&["service", "update", "--image", V2, "--env-add", "DEMO_UNHEALTHY_AFTER=0s", "web"]);
    assert!(!out.status.success(), "a rolled back update must fail the command\n{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("update rolled back due to failure or early termination of task"),
        "{}",
        text(&out)
    );
    cluster.wait_until(CONVERGE, "4 healthy tasks back on 1.0", |c| {
        ready_on(c, "web", V1) == 4 && all_on(c, "web", V1, 4)
    });
    let service = inspect(&cluster, "web");
    assert_eq!(service["status"]["updateStatus"]["state"], "rollback_completed", "{service:#}");
    assert_eq!(service["spec"]["image"], V1);
    assert!(service["spec"]["env"].get("DEMO_UNHEALTHY_AFTER").is_none(), "the whole spec is rolled back: {service:#}");
    let rows = cluster.tasks("web");
    let sick =
        rows.iter().filter(|r| r.task.spec.spec.image == V2).filter_map(status).find(|s| s.state == TaskState::Failed);
    let sick = sick.unwrap_or_else(|| panic!("no task of 2.0 failed\n{}", cluster.dump()));
    assert_eq!(sick.message, "task: unhealthy container", "{sick:?}");
    assert_eq!(sick.health.as_ref().map(|h| h.status), Some(HealthStatus::Unhealthy), "{sick:?}");
}

#[test]
fn continue_finishes_despite_failures_and_max_failure_ratio_decides_when_to_pause() {
    let cluster = Cluster::start(Backend::Embedded, &[""]);
    // The new release's probe fails in slots above 1 or 2; failed tasks stay failed.
    let (above_1, above_2) =
        (health(r#"[ "$SHOAL_TASK_SLOT" -le 1 ] && "#, 2), health(r#"[ "$SHOAL_TASK_SLOT" -le 2 ] && "#, 2));
    let common = ["--update-parallelism", "0", "--restart-condition", "none"];
    let plain = health("", 2);
    create(
        &cluster,
        "cont",
        2,
        &with_health(&plain, &[&common[..], &["--update-failure-action", "continue"]].concat()),
    );
    create(&cluster, "below", 4, &with_health(&plain, &[&common[..], &["--update-max-failure-ratio", "0.5"]].concat()));
    create(&cluster, "above", 3, &with_health(&plain, &[&common[..], &["--update-max-failure-ratio", "0.5"]].concat()));
    for (name, replicas) in [("cont", 2), ("below", 4), ("above", 3)] {
        cluster.wait_until(CONVERGE, &format!("{replicas} healthy tasks of {name}"), |c| {
            ready_on(c, name, V1) == replicas
        });
    }

    let releases = [("cont", &above_1, "1 of 2"), ("below", &above_2, "2 of 4"), ("above", &above_1, "2 of 3")];
    for (name, probe, _) in releases {
        let probe_cmd = &probe[probe.iter().position(|f| f == "--health-cmd").unwrap() + 1];
        cluster.shoal_ok(&["service", "update", "--detach", "--image", V2, "--health-cmd", probe_cmd, name]);
    }
    let settled = |c: &Cluster, name: &str| ["completed", "paused"].contains(&update_state(c, name).as_str());
    cluster.wait_until(CONVERGE, "every update completed or paused", |c| {
        releases.iter().all(|(name, ..)| settled(c, name))
    });
    for (name, _, failing) in releases {
        let update = inspect(&cluster, name)["status"]["updateStatus"].clone();
        let failed = update["failed"].as_array().map_or(0, Vec::len);
        match name {
            "above" => {
                assert_eq!(update["state"], "paused", "{failing} failed is above 0.5: {update:#}");
                assert!(
                    update["message"]
                        .as_str()
                        .unwrap()
                        .contains("update paused due to failure or early termination of task"),
                    "{update:#}"
                );
            }
            _ => {
                assert_eq!(update["state"], "completed", "{name}: {failing} failed is within its limit: {update:#}");
                assert_eq!(update["message"], format!("update completed with {failed} failed task(s)"), "{update:#}");
                assert_eq!(failed, if name == "cont" { 1 } else { 2 }, "{update:#}");
            }
        }
    }
    assert_eq!(ready_on(&cluster, "cont", V2), 1, "the healthy slot of cont runs the new release\n{}", cluster.dump());
    // Following a service whose completed update left a task failed ends, and says so.
    let followed = cluster.shoal(&["service", "update", "--image", V2, "cont"]);
    assert!(!followed.status.success(), "a service with a failed task is not converged");
    let stderr = String::from_utf8_lossy(&followed.stderr);
    assert!(stderr.contains("the update completed, but only 1 of 2 tasks run the new spec"), "{stderr}");
    assert_eq!(
        ready_on(&cluster, "below", V2),
        2,
        "the healthy slots of below run the new release\n{}",
        cluster.dump()
    );
}

#[test]
fn a_probe_failing_briefly_replaces_nothing_and_one_failing_for_good_replaces_its_task() {
    let cluster = Cluster::start(Backend::Embedded, &[""]);
    // Unhealthy after 5 failures (1.5 s); a file `sick` in a task's working dir fails its probe.
    let probe = health("test ! -e sick && ", 5);
    create(&cluster, "web", 2, &with_health(&probe, &[]));
    cluster.wait_until(CONVERGE, "2 healthy tasks", |c| ready_on(c, "web", V1) == 2);
    let rows: Vec<TaskRow> = cluster.tasks("web").into_iter().filter(is_ready).collect();
    let sick_file = |row: &TaskRow| cluster.task_dir(row.node().unwrap(), row.id()).join("work/sick");
    let (brief, lasting) = (&rows[0], &rows[1]);

    std::fs::write(sick_file(brief), "").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(sick_file(brief)).unwrap();
    let now = cluster.tasks("web");
    let seen = now.iter().find(|r| r.id() == brief.id()).and_then(status).and_then(|s| s.health.clone()).unwrap();
    assert!(seen.log.iter().any(|p| p.exit_code != 0), "no probe failed while `sick` was there: {seen:?}");
    std::thread::sleep(Duration::from_secs(2));
    let after = cluster.tasks("web");
    let same = after
        .iter()
        .find(|r| r.id() == brief.id())
        .unwrap_or_else(|| panic!("task {} is gone\n{}", brief.id(), cluster.dump()));
    assert!(
        is_ready(same) && same.pid() == brief.pid(),
        "a transient failure must leave the task alone\n{}",
        cluster.dump()
    );
    assert_eq!(status(same).and_then(|s| s.health.as_ref()).map(|h| h.failing_streak), Some(0));
    assert_eq!(after.len(), 2, "no task was replaced\n{}", cluster.dump());

    std::fs::write(sick_file(lasting), "").unwrap();
    cluster.wait_until(CONVERGE, "the sick task replaced by a healthy one", |c| {
        let rows = c.tasks("web");
        let failed =
            rows.iter().find(|r| r.id() == lasting.id()).and_then(status).is_some_and(|s| s.state == TaskState::Failed);
        failed && rows.iter().filter(|r| is_ready(r)).count() == 2
    });
    let rows = cluster.tasks("web");
    let ended = rows.iter().find(|r| r.id() == lasting.id()).and_then(status).unwrap();
    assert_eq!(ended.message, "task: unhealthy container", "{ended:?}");
    assert!(
        rows.iter().any(|r| r.id() == brief.id() && is_ready(r)),
        "the other task was left alone\n{}",
        cluster.dump()
    );
}

#[test]
fn a_task_stuck_in_starting_fails_the_update_at_its_progress_deadline() {
    let cluster = Cluster::start(Backend::Embedded, &[""]);
    let probe = health("", 3);
    create(&cluster, "web", 2, &with_health(&probe, &[]));
    cluster.wait_until(CONVERGE, "2 healthy tasks", |c| ready_on(c, "web", V1) == 2);

    // Listens only after a minute; its failing probes do not count in the start period.
    let slow = ["--env-add", "DEMO_START_DELAY=1m", "--health-start-period", "1m", "--update-progress-deadline", "5s"];
    let started = std::time::Instant::now();
    let out = cluster.shoal(&[&["service", "update", "--image", V2][..], &slow[..], &["web"]].concat());
    let took = started.elapsed();
    assert!(!out.status.success(), "a paused update must fail the command\n{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("update paused due to progress deadline 5s exceeded"), "{}", text(&out));
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(15), "paused after {took:?}, deadline 5s");
    let update = inspect(&cluster, "web")["status"]["updateStatus"].clone();
    assert_eq!(update["state"], "paused", "{update:#}");
    let rows = cluster.tasks("web");
    let stuck = rows
        .iter()
        .find(|r| r.task.spec.spec.image == V2 && r.is_running())
        .unwrap_or_else(|| panic!("no task of 2.0 runs\n{}", cluster.dump()));
    assert_eq!(
        status(stuck).and_then(|s| s.health.as_ref()).map(|h| h.status),
        Some(HealthStatus::Starting),
        "{}",
        cluster.dump()
    );
    assert_eq!(ready_on(&cluster, "web", V1), 1, "parallelism 1: the other task stays\n{}", cluster.dump());
}
