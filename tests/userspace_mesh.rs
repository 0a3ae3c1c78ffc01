//! Published ports without root, checked as a new user would: `shoal up`
//! as a normal user (tasks on the host network, each given host ports of
//! its own; the agent's userspace proxy on the published ports), a stack
//! deployed with `shoal stack deploy`, and plain HTTP GETs to
//! 127.0.0.1:<published> answered by different tasks — also while the
//! service rolls to a new image and scales down. Once `shoal up` stops,
//! nothing listens on the published port any more.
//!
//! Run as root the test drops to `nobody` (`setpriv`) for `shoal up`, with
//! a copy of the binary it can execute; as a normal user it runs it as is.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use support::up::Up;
use support::{free_port, http_get, wait_until};

/// Time for each step to converge.
const STEP: Duration = Duration::from_secs(60);

/// GETs in a loop until stopped: (answers, failures).
struct Load {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(usize, Vec<String>)>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut answers, mut failures) = (0, Vec::new());
            while !flag.load(Ordering::SeqCst) {
                match http_get(addr) {
                    Some(body) if body.contains("\"version\"") => answers += 1,
                    Some(body) => failures.push(format!("unexpected answer: {body:?}")),
                    None => failures.push(format!("no answer at {:?}", std::time::SystemTime::now())),
                }
            }
            (answers, failures)
        });
        Load { stop, handle }
    }

    fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// The `task` field of the demo's answer.
fn task_of(body: &str) -> String {
    serde_json::from_str::<Value>(body).ok().and_then(|v| v["task"].as_str().map(str::to_string)).unwrap_or_default()
}

fn stack_file(dir: &Path, web: u16, metrics: u16) -> PathBuf {
    let file = dir.join("stack.yml");
    let yaml = format!(
        r#"version: "3.8"
services:
  web:
    image: shoal/demo:1.0
    ports:
      - "{web}:80"
    healthcheck:
      test: ["CMD", "shoal", "demo", "probe", "http://127.0.0.1:80/health"]
      interval: 1s
      timeout: 2s
      retries: 2
    deploy:
      replicas: 3
      update_config:
        parallelism: 1
        delay: 1s
        order: start-first
  metrics:
    image: shoal/demo:1.0
    command: ["--listen", "0.0.0.0:9100"]
    ports:
      - "{metrics}:9100"
    deploy:
      replicas: 2
"#
    );
    std::fs::write(&file, yaml).unwrap();
    file
}

#[test]
fn a_normal_users_shoal_up_answers_on_published_ports_from_every_replica() {
    let mut up = Up::builder().dir_prefix("shoal-userspace-").run_as_nobody().start();
    up.wait_ready_with_log(STEP, "userspace");
    let (web, metrics) = (free_port(), free_port());
    let file = stack_file(up.path(), web, metrics);
    up.shoal_ok(&["stack", "deploy", "-c", file.to_str().unwrap(), "us"]);

    let addr = SocketAddr::from(([127, 0, 0, 1], web));
    let serving = wait_until(STEP, || {
        up.running("us_web").len() == 3 && (0..6).all(|_| http_get(addr).is_some_and(|b| b.contains("\"1.0\"")))
    });
    assert!(serving, "the published port never answered:\n{}", up.log());

    // Every replica has a host port of its own, on the host network.
    let observed = up.running("us_web");
    let mut ports: Vec<u64> = observed.iter().map(|(_, o)| o["ports"][0]["host"].as_u64().unwrap_or(0)).collect();
    assert!(observed.iter().all(|(_, o)| o["network"] == "host" && o["ports"][0]["target"] == 80), "{observed:?}");
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3, "three replicas, three host ports: {observed:?}");

    let tasks: std::collections::BTreeSet<String> =
        (0..12).filter_map(|_| http_get(addr)).map(|b| task_of(&b)).collect();
    assert!(tasks.len() >= 2, "answers from at least two tasks, got {tasks:?}");

    // A task whose command says where it listens is moved to its host port too.
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], metrics));
    let metrics_answer = wait_until(STEP, || http_get(metrics_addr).is_some_and(|b| b.contains("us_metrics")));
    assert!(metrics_answer, "the metrics service never answered on {metrics}:\n{}", up.log());

    // A rolling update and a scale-down under load: every request answered.
    let load = Load::start(addr);
    up.shoal_ok(&["service", "update", "--image", "shoal/demo:1.1", "us_web"]);
    let rolled = wait_until(STEP, || {
        let running = up.running("us_web");
        running.len() == 3 && running.iter().all(|(image, _)| image == "shoal/demo:1.1")
    });
    assert!(rolled, "the update did not finish:\n{}", up.log());
    up.shoal_ok(&["service", "scale", "us_web=1"]);
    assert!(wait_until(STEP, || up.running("us_web").len() == 1), "the scale-down did not finish:\n{}", up.log());
    std::thread::sleep(Duration::from_secs(1));
    let (answers, failures) = load.stop();
    println!("under update and scale-down: {answers} answers, {} failures", failures.len());
    assert!(answers > 100, "too few requests to tell: {answers}");
    assert!(failures.is_empty(), "{} of {} requests failed: {failures:#?}", failures.len(), answers + failures.len());
    assert!(http_get(addr).is_some_and(|b| b.contains("\"1.1\"")));

    // Stopped: the published port is closed (the tasks themselves keep running).
    up.stop();
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.kind());
    assert_eq!(refused.err(), Some(std::io::ErrorKind::ConnectionRefused), "nothing listens on {web} any more");
    assert!(up.log().contains("published port closed"), "{}", up.log());
}
