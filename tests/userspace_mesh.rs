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
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use support::{free_port, http_get, wait_until};

/// The user and group `shoal up` runs as when the test is root.
const NOBODY: u32 = 65534;
/// Time for each step to converge.
const STEP: Duration = Duration::from_secs(60);

/// True when this test runs as root (`/proc/self` belongs to the effective user).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(1) == 0
}

/// `shoal up` as a normal user on a throw-away directory; stopped, and
/// every process started below the directory killed, on drop.
struct Up {
    child: Option<Child>,
    dir: tempfile::TempDir,
    endpoint: String,
}

impl Up {
    fn start() -> Up {
        let dir = tempfile::Builder::new().prefix("shoal-userspace-").tempdir().unwrap();
        let (bin, home) = (dir.path().join("bin"), dir.path().join("home"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        // The build's target dir may not be traversable by the other user.
        let shoal = bin.join("shoal");
        std::fs::copy(env!("CARGO_BIN_EXE_shoal"), &shoal).unwrap();
        for (path, mode) in [(dir.path(), 0o755), (bin.as_path(), 0o755), (shoal.as_path(), 0o755)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let port = free_port();
        let mut command = if is_root() {
            std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
            let mut c = Command::new("setpriv");
            let id = NOBODY.to_string();
            c.args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"]).arg(&shoal);
            c
        } else {
            Command::new(&shoal)
        };
        let log = std::fs::File::create(dir.path().join("up.log")).unwrap();
        let child = command
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(home.join("data"))
            .env("HOME", &home)
            .env_remove("XDG_DATA_HOME")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting shoal up");
        let up = Up { child: Some(child), dir, endpoint: format!("http://127.0.0.1:{port}") };
        let ready = wait_until(STEP, || up.shoal(&["node", "ls"]).status.success() && up.log().contains("userspace"));
        assert!(ready, "shoal up did not come up with the userspace data plane:\n{}", up.log());
        up
    }

    fn shoal(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["--etcd-endpoints", &self.endpoint])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn shoal_ok(&self, args: &[&str]) -> String {
        let out = self.shoal(args);
        assert!(out.status.success(), "shoal {args:?}: {}\n{}", String::from_utf8_lossy(&out.stderr), self.log());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The service's tasks desired and observed running: (image, observation spec).
    fn running(&self, service: &str) -> Vec<(String, Value)> {
        let Ok(rows) = serde_json::from_str::<Value>(&self.shoal_ok(&["service", "ps", service, "-o", "json"])) else {
            return Vec::new();
        };
        rows.as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["task"]["spec"]["desiredState"] == "running" && r["observation"]["status"]["state"] == "running"
            })
            .map(|r| {
                let image = r["task"]["spec"]["spec"]["image"].as_str().unwrap_or_default().to_string();
                (image, r["observation"]["spec"].clone())
            })
            .collect()
    }

    /// SIGTERM, and waits for `shoal up` to end (its tasks keep running).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        if !wait_until(Duration::from_secs(20), || matches!(child.try_wait(), Ok(Some(_)))) {
            let _ = child.kill();
            panic!("shoal up did not stop on SIGTERM:\n{}", self.log());
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        support::cluster::kill_processes_under(self.dir.path());
    }
}

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
    let mut up = Up::start();
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
