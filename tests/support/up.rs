//! `shoal up` — store, controllers and an agent in one process — on a
//! throw-away directory, driven through the `shoal` CLI as a user would.
//! The single-machine tests (zero downtime, the userspace mesh, service
//! DNS) each need one; this module is that one harness, with the few ways
//! they differ as [`UpBuilder`] options: run as `nobody`, inside a network
//! namespace, on a fixed store port, with extra environment or another log
//! filter.
//!
//! Dropping an [`Up`] — also when a test panicked — runs the `shoal`
//! commands the test asked for ([`UpBuilder::on_drop`]) while `shoal up`
//! still runs, waits for its tasks' network namespaces to go (only then
//! does the agent remove its bridge on SIGTERM), SIGTERMs `shoal up`
//! (SIGKILL if it does not stop), kills every process left under the
//! directory and deletes the task namespaces left behind.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::cluster::{alive, kill_processes_under, TaskRow};
use super::{free_port, output_with_stdin, quiet, wait_until};

/// The user and group `shoal up` runs as with [`UpBuilder::run_as_nobody`] when the test is root.
const NOBODY: u32 = 65534;
/// How long [`Up::stop`] lets `shoal up` take to stop on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a drop lets `shoal up` take to stop on SIGTERM before SIGKILL.
const DROP_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a drop waits for the tasks' namespaces to go.
const DROP_TASKS_TIMEOUT: Duration = Duration::from_secs(20);

/// How to start `shoal up`; [`Up::builder`].
pub struct UpBuilder {
    dir_prefix: &'static str,
    as_nobody: bool,
    netns: Option<PathBuf>,
    store_port: Option<u16>,
    env: Vec<(String, String)>,
    log_filter: String,
    failure_log_lines: Option<usize>,
    on_drop: Vec<Vec<String>>,
}

impl UpBuilder {
    /// The temp dir's name prefix (`shoal-up-` unless set).
    pub fn dir_prefix(mut self, prefix: &'static str) -> Self {
        self.dir_prefix = prefix;
        self
    }

    /// As root, runs `shoal up` as `nobody` (`setpriv`) with a home of its
    /// own, its data dir in it and a copy of the binary it can execute; as
    /// a normal user, the copy as is.
    pub fn run_as_nobody(mut self) -> Self {
        self.as_nobody = true;
        self
    }

    /// Runs `shoal up` and every CLI command inside the network namespace
    /// at `path` (`nsenter --net`).
    pub fn in_netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }

    /// The store's port on 127.0.0.1 (a [`free_port`] unless set).
    pub fn store_port(mut self, port: u16) -> Self {
        self.store_port = Some(port);
        self
    }

    /// One more environment variable for `shoal up`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// `shoal up`'s `RUST_LOG` (`info` unless set).
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = filter.to_string();
        self
    }

    /// Failure messages show only the last `lines` of the log (the whole log unless set).
    pub fn failure_log_lines(mut self, lines: usize) -> Self {
        self.failure_log_lines = Some(lines);
        self
    }

    /// `shoal ARGS…` to run on drop while `shoal up` still runs (removing
    /// the test's services), its outcome ignored; in the order given.
    pub fn on_drop(mut self, args: &[&str]) -> Self {
        self.on_drop.push(args.iter().map(|a| a.to_string()).collect());
        self
    }

    /// Starts `shoal up`, its output in `up.log`; [`Up::wait_ready`] waits for it.
    pub fn start(self) -> Up {
        let dir = tempfile::Builder::new().prefix(self.dir_prefix).tempdir().expect("creating a temp dir");
        let port = self.store_port.unwrap_or_else(free_port);
        let (mut command, data_dir) = self.launcher(dir.path());
        let log = std::fs::File::create(dir.path().join("up.log")).expect("creating up.log");
        command
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(&data_dir)
            .env("RUST_LOG", &self.log_filter)
            .env("NO_COLOR", "1")
            .envs(self.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log);
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        Up {
            child: Some(child),
            dir,
            port,
            netns: self.netns,
            data_dir,
            failure_log_lines: self.failure_log_lines,
            on_drop: self.on_drop,
        }
    }

    /// The command that runs `shoal` as asked, before its arguments, and
    /// the data dir `shoal up` gets below `dir`.
    fn launcher(&self, dir: &Path) -> (Command, PathBuf) {
        let mut argv = netns_prefix(self.netns.as_deref());
        if !self.as_nobody {
            argv.push(env!("CARGO_BIN_EXE_shoal").into());
            return (command_of(&argv), dir.join("data"));
        }
        argv.extend(nobody_argv(dir));
        let mut command = command_of(&argv);
        command.env("HOME", dir.join("home")).env_remove("XDG_DATA_HOME");
        (command, dir.join("home/data"))
    }
}

/// `nsenter --net=PATH --` when there is a namespace to enter (nsenter
/// execs the command: the child's pid is its pid).
fn netns_prefix(netns: Option<&Path>) -> Vec<OsString> {
    match netns {
        Some(path) => vec!["nsenter".into(), format!("--net={}", path.display()).into(), "--".into()],
        None => Vec::new(),
    }
}

/// The start of a command line running a copy of `shoal` under `dir/bin`
/// — as `nobody` when root — and the home it gets, `dir/home`, made.
fn nobody_argv(dir: &Path) -> Vec<OsString> {
    let (bin, home) = (dir.join("bin"), dir.join("home"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    // The build's target dir may not be traversable by the other user.
    let shoal = bin.join("shoal");
    std::fs::copy(env!("CARGO_BIN_EXE_shoal"), &shoal).unwrap();
    for path in [dir, bin.as_path(), shoal.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    if !shoal_agent::sys::is_root() {
        return vec![shoal.into()];
    }
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    let id = NOBODY.to_string();
    let setpriv = ["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups", "--"];
    setpriv.into_iter().map(OsString::from).chain([shoal.into()]).collect()
}

fn command_of(argv: &[OsString]) -> Command {
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    command
}

/// `shoal up` on a throw-away directory; see the module doc for what its drop does.
pub struct Up {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    netns: Option<PathBuf>,
    data_dir: PathBuf,
    failure_log_lines: Option<usize>,
    on_drop: Vec<Vec<String>>,
}

impl Up {
    /// Plain `shoal up` as the test's user, on a free port, `RUST_LOG=info`.
    pub fn builder() -> UpBuilder {
        UpBuilder {
            dir_prefix: "shoal-up-",
            as_nobody: false,
            netns: None,
            store_port: None,
            env: Vec::new(),
            log_filter: "info".to_string(),
            failure_log_lines: None,
            on_drop: Vec::new(),
        }
    }

    /// The store: `http://127.0.0.1:PORT` (inside the namespace, with one).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The throw-away directory, for the test's own files.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Waits for the store to answer `node ls`; panics with the log after `timeout`.
    pub fn wait_ready(&self, timeout: Duration) {
        let ready = wait_until(timeout, || self.answers());
        assert!(ready, "shoal up did not come up:\n{}", self.log_excerpt());
    }

    /// [`wait_ready`](Self::wait_ready), and `text` in the log too, within the same `timeout`.
    pub fn wait_ready_with_log(&self, timeout: Duration, text: &str) {
        let ready = wait_until(timeout, || self.answers() && self.log().contains(text));
        assert!(ready, "shoal up did not come up with {text:?} in its log:\n{}", self.log_excerpt());
    }

    fn answers(&self) -> bool {
        self.shoal(&["node", "ls"]).status.success()
    }

    /// `shoal --etcd-endpoints STORE ARGS…` (in the namespace, with one); quiet logs.
    fn cli(&self, args: &[&str]) -> Command {
        let mut argv = netns_prefix(self.netns.as_deref());
        argv.push(env!("CARGO_BIN_EXE_shoal").into());
        let mut command = command_of(&argv);
        command.args(["--etcd-endpoints", &self.endpoint()]).args(args).env("RUST_LOG", "warn").env("NO_COLOR", "1");
        command
    }

    /// Runs `shoal ARGS…`, whatever its outcome.
    pub fn shoal(&self, args: &[&str]) -> Output {
        self.cli(args).stdin(Stdio::null()).output().expect("running shoal")
    }

    /// Stdout of `shoal ARGS…`; panics with its stderr and the log when it fails.
    pub fn shoal_ok(&self, args: &[&str]) -> String {
        self.stdout_of(args, self.shoal(args))
    }

    /// Stdout of `shoal ARGS…` with `input` on its standard input; panics
    /// with its stderr and the log when it fails.
    pub fn shoal_stdin(&self, args: &[&str], input: &[u8]) -> String {
        self.stdout_of(args, output_with_stdin(&mut self.cli(args), input))
    }

    fn stdout_of(&self, args: &[&str], out: Output) -> String {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "shoal {args:?}: {stderr}\n{}", self.log_excerpt());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Everything `shoal up` logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    /// The log as failure messages show it: whole, or its last lines
    /// ([`UpBuilder::failure_log_lines`]).
    pub fn log_excerpt(&self) -> String {
        let log = self.log();
        let Some(n) = self.failure_log_lines else { return log };
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `service ps SERVICE -o json`.
    fn service_ps(&self, service: &str) -> String {
        self.shoal_ok(&["service", "ps", service, "-o", "json"])
    }

    /// The service's tasks desired and observed running: (image, observation spec).
    pub fn running(&self, service: &str) -> Vec<(String, Value)> {
        let json = self.service_ps(service);
        let rows: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("service ps -o json: {e}: {json}"));
        rows.as_array()
            .into_iter()
            .flatten()
            .filter(|row| desired_and_observed_running(row))
            .map(image_and_observation)
            .collect()
    }

    /// Images of the service's tasks desired and observed running.
    pub fn running_images(&self, service: &str) -> Vec<String> {
        self.running(service).into_iter().map(|(image, _)| image).collect()
    }

    /// The service's tasks that really run ([`TaskRow::is_running`]: their process alive too).
    pub fn running_tasks(&self, service: &str) -> Vec<TaskRow> {
        let json = self.service_ps(service);
        let rows: Vec<TaskRow> =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("service ps -o json: {e}: {json}"));
        rows.into_iter().filter(TaskRow::is_running).collect()
    }

    /// SIGTERM, and waits for `shoal up` to end (its tasks keep running);
    /// panics with the log if it does not.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        sigterm(&child);
        if !wait_until(STOP_TIMEOUT, || exited(&mut child)) {
            let _ = child.kill();
            panic!("shoal up did not stop on SIGTERM:\n{}", self.log_excerpt());
        }
    }

    /// The network namespaces of this `shoal up`'s tasks that still exist.
    fn task_namespaces(&self) -> Vec<String> {
        std::fs::read_dir(self.data_dir.join("agent/tasks"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| format!("shoal-{}", entry.file_name().to_string_lossy()))
            .filter(|name| Path::new("/run/netns").join(name).exists())
            .collect()
    }

    /// The test's [`UpBuilder::on_drop`] commands, then up to
    /// [`DROP_TASKS_TIMEOUT`] for the tasks' namespaces to go.
    fn remove_tasks(&self) {
        for args in &self.on_drop {
            let _ = self.shoal(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        wait_until(DROP_TASKS_TIMEOUT, || self.task_namespaces().is_empty());
    }

    /// SIGTERM (the agent and the data plane clean up after themselves);
    /// SIGKILL after [`DROP_STOP_TIMEOUT`].
    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        sigterm(&child);
        if !wait_until(DROP_STOP_TIMEOUT, || exited(&mut child)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.remove_tasks();
        }
        self.terminate();
        // Tasks (and their shims) outlive `shoal up` by design.
        let killed = kill_processes_under(self.dir.path());
        wait_until(Duration::from_secs(3), || !killed.iter().any(|pid| alive(*pid)));
        for name in self.task_namespaces() {
            quiet(&["ip", "netns", "del", &name]);
        }
    }
}

fn desired_and_observed_running(row: &Value) -> bool {
    row["task"]["spec"]["desiredState"] == "running" && row["observation"]["status"]["state"] == "running"
}

fn image_and_observation(row: &Value) -> (String, Value) {
    let image = row["task"]["spec"]["spec"]["image"].as_str().unwrap_or_default().to_string();
    (image, row["observation"]["spec"].clone())
}

fn sigterm(child: &Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
}

fn exited(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}
