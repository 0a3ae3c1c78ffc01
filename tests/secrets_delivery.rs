//! Configs and secrets reach tasks, and only the nodes running them: a real
//! store, `shoal controller` with its key file, two `shoal agent`s (one with
//! a network namespace per task, as root) and the demo image.
//!
//! The secret's value is checked by size through the demo (`secret_bytes`)
//! and by reading the file through `/proc/<pid>/root`, which shows the
//! task's own mount namespace; the test never prints it.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::quiet;

use shoal_crd::{Base64Data, Config, ConfigSpec, SealedSecret, Task, TaskNetwork, TaskObservation, TaskState};
use support::{connect, etcdctl_ok, http_get, shoal_with_stdin, wait_until, StoreUnderTest};

const SECRET: &str = "passw0rD123-e2e\n";

/// A child process with its output in `log`, killed on drop.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(args: &[&str], log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start shoal");
        Process { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills what an agent's tasks left (shims and tasks outlive agents by
/// design) and the kernel objects of the namespace agent.
struct Cleanup {
    data_dirs: Vec<PathBuf>,
    bridge: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.data_dirs {
            for task in std::fs::read_dir(dir.join("tasks")).into_iter().flatten().flatten() {
                for file in ["pid.json", "shim.pid"] {
                    let text = std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
                    let pid = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v["pid"].as_i64())
                        .or_else(|| text.trim().parse().ok());
                    if let Some(pid) = pid {
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
                    }
                }
                let id = task.file_name().to_string_lossy().into_owned();
                quiet(&["ip", "netns", "del", &shoal_agent::network::task::netns_name(&id)]);
                quiet(&["ip", "link", "del", &shoal_agent::network::task::veth_name(&id)]);
            }
        }
        quiet(&["ip", "link", "del", &self.bridge]);
        quiet(&["nft", "delete", "table", "ip", &format!("shoal-agent-{}", self.bridge)]);
    }
}

fn shoal(store: &StoreUnderTest, args: &[&str], stdin: &[u8]) -> Output {
    let output = shoal_with_stdin(store, args, stdin);
    assert!(output.status.success(), "shoal {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

async fn eventually<T>(
    timeout: Duration,
    what: &str,
    logs: &[&Process],
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n-----\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_only_the_node_running_its_task_on_a_tmpfs_in_the_tasks_mount_namespace() {
    assert!(shoal_agent::sys::is_root(), "this test needs root (CI runs as root)");
    let store = StoreUnderTest::embedded();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = store.endpoint();
    let pid = std::process::id();
    let (web, other) = (format!("sd-web-{pid}"), format!("sd-other-{pid}"));
    let bridge = format!("shsd{}", pid % 100_000);
    let (web_data, other_data) = (dir.path().join("web"), dir.path().join("other"));
    let _cleanup = Cleanup { data_dirs: vec![web_data.clone(), other_data.clone()], bridge: bridge.clone() };

    let key_file = dir.path().join("secrets.key");
    let controller = Process::spawn(
        &["--etcd-endpoints", &endpoint, "controller", "--encryption-key-file", key_file.to_str().unwrap()],
        dir.path().join("controller.log"),
    );
    let agent = |name: &str, data: &Path, role: &str, network: &[&str], log: &str| {
        let mut args = vec![
            "agent",
            "--name",
            name,
            "--advertise-addr",
            "127.0.0.1",
            "--labels",
            role,
            "--heartbeat-ttl",
            "3",
            "--dataplane",
            "none",
        ];
        args.extend(["--etcd-endpoints", &endpoint, "--data-dir", data.to_str().unwrap()]);
        args.extend(network);
        Process::spawn(&args, dir.path().join(log))
    };
    let web_agent = agent(
        &web,
        &web_data,
        "role=web",
        &["--network", "namespace", "--bridge", &bridge, "--task-subnet", "10.201.41.0/24"],
        "web.log",
    );
    let other_agent = agent(&other, &other_data, "role=other", &["--network", "host"], "other.log");
    let published = wait_until(Duration::from_secs(20), || {
        etcdctl_ok(&endpoint, &["get", "/shoal/keys/secrets", "--print-value-only"]).contains("keyId")
    });
    assert!(published, "the controller did not publish the cluster key");

    // The chapter's secret and config, and a legacy app's templated config.
    shoal(&store, &["secret", "create", "db_password", "-"], SECRET.as_bytes());
    shoal(&store, &["config", "create", "app.properties", "-"], b"username=pguser\nport=5432\n");
    let client = connect(&store).await;
    let template = b"database:\n  db_password: \"{{ secret \"db_password\" }}\"\n  service: {{ .Service.Name }}\n";
    let spec = ConfigSpec { data: Base64Data(template.to_vec()), template_driver: Some("golang".into()) };
    client.create(Config::new("whoami.conf", spec)).await.unwrap();
    shoal(
        &store,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--constraint",
            "node.labels.role==web",
            "--secret",
            "db_password",
            "--config",
            "source=app.properties,target=/etc/myapp/conf/app.properties,mode=0440",
            "--config",
            "source=whoami.conf,target=/etc/whoami/whoami.conf,mode=0400",
            "-e",
            "DEMO_SECRET_FILE=/run/secrets/db_password",
            "-e",
            "DEMO_LISTEN=0.0.0.0:80",
            // A probe runs in the task's mount namespace too: it sees the file.
            "--health-cmd",
            "test -s /run/secrets/db_password",
            "--health-interval",
            "300ms",
            "shoal/demo:1.0",
        ],
        b"",
    );

    let logs = [&controller, &web_agent, &other_agent];
    let observation = eventually(Duration::from_secs(60), "the web task to run", &logs, async || {
        let (observations, _) = client.list::<TaskObservation>().await.ok()?;
        observations.into_iter().find(|o| {
            o.status.as_ref().is_some_and(|s| s.state == TaskState::Running) && o.spec.network == TaskNetwork::Namespace
        })
    })
    .await;
    let address: Ipv4Addr = observation.spec.addresses[0].split_once('/').unwrap().0.parse().unwrap();
    let task_pid = observation.spec.pid.expect("a running task has a pid");

    // The demo read the file at /run/secrets/db_password: it reports the size.
    let body = eventually(Duration::from_secs(10), "the demo to answer", &logs, async || {
        http_get(SocketAddr::from((address, 80)))
    })
    .await;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["secret_bytes"], SECRET.len(), "{answer}");
    let task_id = observation.metadata.name.clone();
    eventually(Duration::from_secs(20), "the probe to find the secret (healthy)", &logs, async || {
        let observation = client.get::<TaskObservation>(&task_id).await.ok()??;
        let health = observation.status?.health?;
        (health.status == shoal_crd::HealthStatus::Healthy).then_some(())
    })
    .await;

    // In the task's mount namespace: a tmpfs on /run/secrets; configs at their targets with their modes.
    let mounts = std::fs::read_to_string(format!("/proc/{task_pid}/mounts")).unwrap();
    assert!(mounts.lines().any(|l| l.starts_with("tmpfs /run/secrets tmpfs")), "no tmpfs on /run/secrets:\n{mounts}");
    let root = PathBuf::from(format!("/proc/{task_pid}/root"));
    assert_eq!(std::fs::read(root.join("run/secrets/db_password")).unwrap(), SECRET.as_bytes());
    assert_eq!(mode_of(&root.join("run/secrets/db_password")), 0o444);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/myapp/conf/app.properties")).unwrap(),
        "username=pguser\nport=5432\n"
    );
    assert_eq!(mode_of(&root.join("etc/myapp/conf/app.properties")), 0o440);
    let rendered = std::fs::read_to_string(root.join("etc/whoami/whoami.conf")).unwrap();
    assert!(
        rendered == format!("database:\n  db_password: \"{SECRET}\"\n  service: web\n"),
        "the template did not render as expected"
    );
    assert_eq!(mode_of(&root.join("etc/whoami/whoami.conf")), 0o400);
    // … and none of it on the host.
    for path in ["/run/secrets/db_password", "/etc/myapp", "/etc/whoami"] {
        assert!(!Path::new(path).exists(), "{path} leaked onto the host");
    }

    // Only the node running the task holds a sealed copy.
    let sealed = |node: &str| {
        etcdctl_ok(
            &endpoint,
            &["get", &format!("/shoal/sealedsecrets/{}", SealedSecret::name_for("db_password", node)), "--keys-only"],
        )
    };
    assert!(!sealed(&web).trim().is_empty(), "the web node has no sealed copy");
    assert!(sealed(&other).trim().is_empty(), "a node without the task holds a sealed copy");

    // No plaintext anywhere in the store, nor in any log.
    let everything = etcdctl_ok(&endpoint, &["get", "--prefix", "/shoal"]);
    let value = SECRET.trim_end();
    assert!(!everything.contains(value), "the secret is in the store in plaintext");
    assert!(
        !everything.contains(&shoal_crd::sealing::base64(SECRET.as_bytes())),
        "the secret is in the store in base64"
    );
    for process in logs {
        assert!(!process.log().contains(value), "a log holds the secret: {}", process.log.display());
    }

    // The service goes: so do its task and the sealed copy.
    shoal(&store, &["service", "rm", "web"], b"");
    eventually(Duration::from_secs(30), "the sealed copy to be deleted", &logs, async || {
        sealed(&web).trim().is_empty().then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "the task to be gone", &logs, async || {
        let (tasks, _) = client.list::<Task>().await.ok()?;
        tasks.is_empty().then_some(())
    })
    .await;
}

/// The tasks desired running that their agent reports running: (pid, address).
async fn running_tasks(client: &shoal_store::client::Store) -> Option<Vec<(u32, Ipv4Addr)>> {
    let (tasks, _) = client.list::<Task>().await.ok()?;
    let mut out = Vec::new();
    for task in tasks.iter().filter(|t| t.spec.desired_state == TaskState::Running) {
        let Some(o) = client.get::<TaskObservation>(&task.metadata.name).await.ok()? else { continue };
        if o.spec.task_uid != task.metadata.uid || o.status.as_ref().is_none_or(|s| s.state != TaskState::Running) {
            continue;
        }
        let address = o.spec.addresses.first()?.split_once('/')?.0.parse().ok()?;
        out.push((o.spec.pid?, address));
    }
    Some(out)
}

/// Whether `replicas` tasks run and each sees `value` at /run/secrets/db-password
/// (through its mount namespace, and the demo's byte count at `/`).
async fn every_task_sees(client: &shoal_store::client::Store, replicas: usize, value: &str) -> Option<Vec<u32>> {
    let tasks = running_tasks(client).await?;
    if tasks.len() != replicas {
        return None;
    }
    for (pid, address) in &tasks {
        let file = std::fs::read(format!("/proc/{pid}/root/run/secrets/db-password")).ok()?;
        let answer: serde_json::Value = serde_json::from_str(&http_get(SocketAddr::from((*address, 80)))?).ok()?;
        if file != value.as_bytes() || answer["secret_bytes"] != value.len() {
            return None;
        }
    }
    Some(tasks.into_iter().map(|(pid, _)| pid).collect())
}

/// `NAME=VALUE` entries of a process's environment.
fn environ(pid: u32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    bytes.split(|b| *b == 0).map(|e| String::from_utf8_lossy(e).into_owned()).collect()
}

/// A controller with its key file and one agent that gives each task its
/// own network namespace (bridge `shTAG<pid>`, tasks in `subnet`); processes
/// killed, then their leftovers cleaned up, on drop.
struct OneNode {
    node: String,
    controller: Process,
    agent: Process,
    key_file: PathBuf,
    data: PathBuf,
    _cleanup: Cleanup,
}

impl OneNode {
    fn start(store: &StoreUnderTest, dir: &Path, tag: &str, subnet: &str) -> Self {
        let endpoint = store.endpoint();
        let pid = std::process::id();
        let node = format!("{tag}-{pid}");
        let bridge = format!("sh{tag}{}", pid % 100_000);
        let data = dir.join("node");
        let cleanup = Cleanup { data_dirs: vec![data.clone()], bridge: bridge.clone() };
        let key_file = dir.join("secrets.key");
        let controller = Process::spawn(
            &["--etcd-endpoints", &endpoint, "controller", "--encryption-key-file", key_file.to_str().unwrap()],
            dir.join("controller.log"),
        );
        let agent = Process::spawn(
            &[
                "agent",
                "--name",
                &node,
                "--advertise-addr",
                "127.0.0.1",
                "--heartbeat-ttl",
                "3",
                "--dataplane",
                "none",
                "--etcd-endpoints",
                &endpoint,
                "--data-dir",
                data.to_str().unwrap(),
                "--network",
                "namespace",
                "--bridge",
                &bridge,
                "--task-subnet",
                subnet,
            ],
            dir.join("agent.log"),
        );
        let published = wait_until(Duration::from_secs(20), || {
            etcdctl_ok(&endpoint, &["get", "/shoal/keys/secrets", "--print-value-only"]).contains("keyId")
        });
        assert!(published, "the controller did not publish the cluster key");
        OneNode { node, controller, agent, key_file, data, _cleanup: cleanup }
    }

    fn logs(&self) -> [&Process; 2] {
        [&self.controller, &self.agent]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_rolls_every_replica_onto_the_new_value_and_env_vars_carry_values_outside_launch_json() {
    assert!(shoal_agent::sys::is_root(), "this test needs root (CI runs as root)");
    let (v1, v2, v3) = ("rotate-one", "rotated-value-number-two", "third");
    let store = StoreUnderTest::embedded();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = store.endpoint();
    let cluster = OneNode::start(&store, dir.path(), "sr", "10.201.42.0/24");
    let (data, logs) = (&cluster.data, cluster.logs());

    shoal(&store, &["secret", "create", "db-password", "-"], v1.as_bytes());
    shoal(&store, &["config", "create", "app", "-"], b"mode=fast");
    shoal(
        &store,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "4",
            "--secret",
            "source=db-password,env=DB_PASSWORD",
            "--config",
            "source=app,target=/etc/shoal-app.conf,env=APP_CONF",
            "-e",
            "DEMO_SECRET_FILE=/run/secrets/db-password",
            "-e",
            "DEMO_LISTEN=0.0.0.0:80",
            "--update-parallelism",
            "2",
            "--update-monitor",
            "500ms",
            "--update-delay",
            "0s",
            "shoal/demo:1.0",
        ],
        b"",
    );
    let client = connect(&store).await;
    let pids =
        eventually(Duration::from_secs(60), "4 tasks seeing v1", &logs, async || every_task_sees(&client, 4, v1).await)
            .await;

    // The env-var form: in the task's environment, not in launch.json nor the agent's log.
    let env = environ(pids[0]);
    assert!(env.iter().any(|e| e == &format!("DB_PASSWORD={v1}")), "DB_PASSWORD not in the task's environment");
    assert!(env.iter().any(|e| e == "APP_CONF=mode=fast"), "APP_CONF not in the task's environment");
    for launch in std::fs::read_dir(data.join("tasks")).unwrap().flatten().map(|t| t.path().join("launch.json")) {
        let text = std::fs::read_to_string(&launch).unwrap_or_default();
        assert!(!text.contains(v1), "{} holds the secret", launch.display());
        assert!(text.is_empty() || text.contains("DB_PASSWORD"), "launch.json names the variable");
    }

    // Rotation: a new version, the same name and path; every replica rolls onto it.
    let rotated = shoal(&store, &["secret", "rotate", "db-password", "-"], v2.as_bytes());
    assert_eq!(String::from_utf8_lossy(&rotated.stdout).trim(), "db-password v2");
    let pids =
        eventually(Duration::from_secs(60), "4 tasks seeing v2", &logs, async || every_task_sees(&client, 4, v2).await)
            .await;
    assert!(environ(pids[0]).iter().any(|e| e == &format!("DB_PASSWORD={v2}")));
    let events = String::from_utf8_lossy(&shoal(&store, &["events"], b"").stdout).into_owned();
    assert!(events.contains("secret db-password v2: rolling web (4 tasks)"), "no rotation event:\n{events}");

    // The chapter's manual method, in one update: never a task without the file.
    shoal(&store, &["secret", "create", "db-password-v2", "-"], v3.as_bytes());
    shoal(
        &store,
        &[
            "service",
            "update",
            "--update-order",
            "start-first",
            "--secret-rm",
            "db-password",
            "--secret-add",
            "source=db-password-v2,target=db-password",
            "web",
        ],
        b"",
    );
    eventually(Duration::from_secs(60), "4 tasks seeing the new secret", &logs, async || {
        every_task_sees(&client, 4, v3).await
    })
    .await;
    let removed = shoal_with_stdin(&store, &["secret", "rm", "db-password"], b"");
    assert!(
        removed.status.success(),
        "the old secret is no longer in use: {}",
        String::from_utf8_lossy(&removed.stderr)
    );

    let everything = etcdctl_ok(&endpoint, &["get", "--prefix", "/shoal"]);
    for value in [v1, v2, v3] {
        assert!(!everything.contains(value), "a secret is in the store in plaintext");
        assert!(logs.iter().all(|p| !p.log().contains(value)), "a log holds a secret");
    }
}

/// Names of the tasks desired running.
async fn running_task_names(client: &shoal_store::client::Store) -> Vec<String> {
    let (tasks, _) = client.list::<Task>().await.unwrap();
    let mut names: Vec<String> =
        tasks.into_iter().filter(|t| t.spec.desired_state == TaskState::Running).map(|t| t.metadata.name).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_key_rotation_restarts_no_task_and_a_new_task_still_gets_the_secret() {
    assert!(shoal_agent::sys::is_root(), "this test needs root (CI runs as root)");
    let value = "key-rotation-proof-value";
    let store = StoreUnderTest::embedded();
    let dir = tempfile::tempdir().unwrap();
    let cluster = OneNode::start(&store, dir.path(), "kr", "10.201.43.0/24");
    let logs = cluster.logs();
    shoal(&store, &["secret", "create", "db-password", "-"], value.as_bytes());
    let create = "service create --name web --replicas 2 --secret db-password \
        -e DEMO_SECRET_FILE=/run/secrets/db-password -e DEMO_LISTEN=0.0.0.0:80 shoal/demo:1.0";
    shoal(&store, &create.split_whitespace().collect::<Vec<_>>(), b"");
    let client = connect(&store).await;
    let mut pids = eventually(Duration::from_secs(60), "2 tasks seeing the secret", &logs, async || {
        every_task_sees(&client, 2, value).await
    })
    .await;
    pids.sort();
    let tasks = running_task_names(&client).await;

    let key_file = cluster.key_file.to_str().unwrap();
    let rotated = shoal(&store, &["cluster-key", "rotate", "--encryption-key-file", key_file], b"");
    let out = String::from_utf8_lossy(&rotated.stdout).into_owned();
    assert!(out.contains("1 secret re-wrapped") && out.contains("Retired key"), "{out}");
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&cluster.key_file).unwrap()).unwrap();
    let new = file["keys"][0]["keyId"].as_str().unwrap().to_string();
    assert_eq!(file["keys"].as_array().unwrap().len(), 1, "the old key is retired");
    let raw = etcdctl_ok(&store.endpoint(), &["get", "/shoal/secrets/db-password", "--print-value-only"]);
    let stored: serde_json::Value = serde_json::from_str(raw.trim()).unwrap();
    assert_eq!(stored["spec"]["sealed"]["dataKey"]["keyId"], new.as_str());
    assert_eq!(stored["metadata"]["generation"], 1);

    // The controllers see the re-wrapped secret (and would roll now, were it a new version).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut still = every_task_sees(&client, 2, value).await.expect("the same 2 tasks still run and see the secret");
    still.sort();
    assert_eq!(still, pids, "no task restarted");
    assert_eq!(running_task_names(&client).await, tasks, "no task replaced");

    // A task started after the rotation gets the secret: sealed to its node from the new wrap.
    shoal(&store, &["service", "scale", "web=3"], b"");
    let after = eventually(Duration::from_secs(60), "3 tasks seeing the secret", &logs, async || {
        every_task_sees(&client, 3, value).await
    })
    .await;
    assert!(pids.iter().all(|p| after.contains(p)), "the first two tasks kept running");

    // The node's copy above was made before the rotation; one made after it
    // must be re-wrapped from the new key, which the controller read from the
    // changed key file.
    shoal(&store, &["service", "scale", "web=0"], b"");
    let copy = format!("/shoal/sealedsecrets/{}", SealedSecret::name_for("db-password", &cluster.node));
    eventually(Duration::from_secs(30), "the node's copy to be deleted", &logs, async || {
        etcdctl_ok(&store.endpoint(), &["get", &copy, "--keys-only"]).trim().is_empty().then_some(())
    })
    .await;
    shoal(&store, &["service", "scale", "web=1"], b"");
    eventually(Duration::from_secs(60), "a task started after the rotation to see the secret", &logs, async || {
        every_task_sees(&client, 1, value).await
    })
    .await;
    for process in logs {
        assert!(!process.log().contains(value), "a log holds the secret: {}", process.log.display());
    }
}
