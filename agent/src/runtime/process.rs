//! The process runtime: a task is a host process supervised by a per-task
//! shim (`shoal agent shim`, see [`crate::shim`]) in its own session; all
//! state is in the task's directory ([`crate::taskdir`]), so another agent
//! process can inspect, wait for and stop a task it did not start.
//!
//! Networking: once the agent hands it the node's [`Bridge`]
//! ([`ProcessRuntime::use_bridge`]), `prepare` takes the task's address
//! (the next free one in turn, recorded in `network.json`), `start` creates its
//! namespace and veth before the shim enters it, and `release` (once the
//! task ended) or `remove` tears them down and frees the address. Without a bridge tasks share the host's network.
//!
//! The agent is never the task's parent, so it learns of an exit by polling
//! `exit.json` and `/proc` (every 100 ms) rather than by `waitpid`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use shoal_crd::{PortMapping, TaskNetwork};
use tokio::time::{sleep, timeout, Instant};

use super::{exec, ExecOutput, Inspection, NetworkInfo, Runtime, RuntimeError, Started};
use crate::files::{encode_payload, Content};
use crate::network::ports::{self, PortTarget, PortsRecord};
use crate::network::{task::next_free, Bridge, NetworkError, NetworkRecord};
use crate::sys;
use crate::taskdir::{self, ExitRecord, Launch, PidRecord, TaskDir};

/// How often the agent looks at a task's files and process.
const POLL: Duration = Duration::from_millis(100);
/// How long a shim may take to start its task.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGKILLed task may take to be reaped.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs tasks as supervised host processes.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    data_dir: PathBuf,
    /// The shim command: program and leading args; `--dir DIR` is appended.
    shim: Vec<String>,
    /// The node's bridge, once the task subnet is known.
    bridge: Arc<OnceLock<Bridge>>,
    /// Held while an address is chosen and recorded, so two tasks prepared
    /// at once never take the same one; it holds the address handed out
    /// last (the next one comes after it). A `std` mutex: nothing awaits under it.
    allocating: Arc<Mutex<Option<Ipv4Addr>>>,
    /// Prepared tasks' config and secret contents, framed for the shim's
    /// stdin, until they start. Memory only: never on disk.
    payloads: Arc<Mutex<HashMap<String, Content>>>,
}

impl ProcessRuntime {
    /// Tasks under `{data_dir}/tasks`, supervised by `shim` (e.g.
    /// `["/usr/bin/shoal", "agent", "shim"]`).
    pub fn new(data_dir: PathBuf, shim: Vec<String>) -> Self {
        Self { data_dir, shim, bridge: Arc::default(), allocating: Arc::default(), payloads: Arc::default() }
    }

    /// From now on, tasks prepared get a namespace on `bridge` (already up).
    /// The first bridge stays: returns false if one was set before.
    pub fn use_bridge(&self, bridge: Bridge) -> bool {
        self.bridge.set(bridge).is_ok()
    }

    /// The bridge new tasks are attached to, if any.
    pub fn bridge(&self) -> Option<&Bridge> {
        self.bridge.get()
    }

    /// Whether task `id` still has its network namespace, and so a veth on
    /// the bridge. (Its record outlives the namespace for a moment while
    /// the task's network is released.)
    pub fn holds_namespace(&self, id: &str) -> bool {
        matches!(self.dir(id).read_network(), Ok(Some(record)) if record.netns_path().exists())
    }

    /// The task's network record: the one it has, or a new one at the next
    /// address (after the last handed out, or after the highest recorded
    /// when the agent has just started) no other task directory records.
    fn allocate(&self, id: &str, dir: &TaskDir, bridge: &Bridge) -> Result<NetworkRecord, RuntimeError> {
        let prepare = |source| RuntimeError::Prepare { id: id.into(), source };
        let mut last = self.allocating.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(record) = dir.read_network().map_err(prepare)? {
            return Ok(record);
        }
        let mut taken = Vec::new();
        for other in self.list()? {
            if let Some(record) = self.dir(&other).read_network().map_err(prepare)? {
                taken.push(record.address.addr());
            }
        }
        let after = last.or_else(|| taken.iter().max().copied());
        let address = next_free(bridge, &taken, after)
            .ok_or_else(|| network_error(id, NetworkError::Exhausted(bridge.subnet())))?;
        let record = NetworkRecord::new(id, bridge, address);
        dir.write_network(&record).map_err(prepare)?;
        *last = Some(address);
        Ok(record)
    }

    fn dir(&self, id: &str) -> TaskDir {
        TaskDir::new(&self.data_dir, id)
    }

    fn spawn_shim(&self, id: &str, dir: &TaskDir) -> Result<(), RuntimeError> {
        let start_error = |message: String| RuntimeError::Start { id: id.into(), message };
        let (program, args) =
            self.shim.split_first().ok_or_else(|| start_error("no shim command configured".into()))?;
        let has_files = dir
            .read_launch()
            .map_err(|e| start_error(format!("reading launch.json: {e}")))?
            .is_some_and(|l| !l.files.is_empty());
        let payload = if has_files {
            let taken = self.payloads.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
            Some(taken.ok_or_else(|| {
                start_error(
                    "its configs and secrets are no longer in memory (the agent restarted after preparing it)".into(),
                )
            })?)
        } else {
            None
        };
        let log =
            std::fs::File::create(dir.file("shim.log")).map_err(|e| start_error(format!("creating shim.log: {e}")))?;
        let log_err = log.try_clone().map_err(|e| start_error(e.to_string()))?;
        let mut command = tokio::process::Command::new(program);
        let stdin = if payload.is_some() { Stdio::piped() } else { Stdio::null() };
        command.args(args).arg("--dir").arg(dir.path()).stdin(stdin).stdout(log).stderr(log_err);
        // SAFETY: the closure only calls setsid(2), which is async-signal-safe.
        unsafe {
            command.pre_exec(sys::new_session);
        }
        let mut child = command.spawn().map_err(|e| start_error(format!("cannot run the shim {program}: {e}")))?;
        if let (Some(payload), Some(mut stdin)) = (payload, child.stdin.take()) {
            // More than a pipe's buffer may be waiting: written while the shim reads.
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = stdin.write_all(&payload.0).await;
            });
        }
        // Reap the shim if it exits while this agent lives; after an agent
        // restart init reaps it.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }
}

impl Runtime for ProcessRuntime {
    fn prepare(&self, id: &str, launch: &Launch, contents: Vec<Content>) -> Result<(), RuntimeError> {
        let dir = self.dir(id);
        let prepare = |source| RuntimeError::Prepare { id: id.into(), source };
        dir.create().map_err(prepare)?;
        std::fs::create_dir_all(&launch.cwd).map_err(prepare)?;
        let mut launch = launch.clone();
        if let Some(bridge) = self.bridge.get() {
            launch.netns = Some(self.allocate(id, &dir, bridge)?.netns_path());
            // Its DNS is the agent's, on the bridge's gateway (see `crate::dns`),
            // unless the service mounts a resolv.conf of its own (that one wins, as in Docker).
            let own = launch.files.iter().any(|f| f.path == std::path::Path::new(crate::dns::resolv_conf::TARGET));
            if !own {
                launch.resolv_conf =
                    Some(crate::dns::resolv_conf::write_for_task(dir.path(), bridge.gateway()).map_err(prepare)?);
            }
            // The bridge came up after `host_ports`: the task listens on its target ports after all.
            if let Some(record) = PortsRecord::load(&dir).map_err(prepare)? {
                for name in ports::env(&record.ports).keys() {
                    launch.env.remove(name);
                }
                PortsRecord::remove(&dir).map_err(prepare)?;
            }
        }
        if launch.payload_len() > 0 {
            self.payloads.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), encode_payload(&contents));
        }
        dir.write_launch(&launch).map_err(prepare)
    }

    async fn start(&self, id: &str) -> Result<Started, RuntimeError> {
        let dir = self.dir(id);
        let inspect = |source| RuntimeError::Inspect { id: id.into(), source };
        if let Some(record) = dir.read_network().map_err(inspect)? {
            // A handful of short `ip` commands: off the async threads.
            tokio::task::spawn_blocking(move || record.plumb())
                .await
                .map_err(|e| RuntimeError::Start { id: id.into(), message: e.to_string() })?
                .map_err(|source| network_error(id, source))?;
        }
        self.spawn_shim(id, &dir)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.inspect(id)? {
                Inspection::Running(pid) => return Ok(Started::Running(pid)),
                Inspection::Exited(exit) => return Ok(Started::Exited(exit)),
                _ if Instant::now() > deadline => {
                    let shim_log = std::fs::read_to_string(dir.file("shim.log")).unwrap_or_default();
                    return Err(RuntimeError::Start {
                        id: id.into(),
                        message: format!(
                            "the shim did not start the task within {START_TIMEOUT:?}: {}",
                            shim_log.trim()
                        ),
                    });
                }
                _ => sleep(POLL / 5).await,
            }
        }
    }

    fn inspect(&self, id: &str) -> Result<Inspection, RuntimeError> {
        let dir = self.dir(id);
        let inspect = |source| RuntimeError::Inspect { id: id.into(), source };
        if !dir.exists() {
            return Ok(Inspection::Absent);
        }
        if let Some(exit) = dir.read_exit().map_err(inspect)? {
            return Ok(Inspection::Exited(exit));
        }
        match dir.read_pid().map_err(inspect)? {
            // A live shim that has not yet recorded the exit still owns the task.
            Some(pid) if sys::is_same_process(pid.pid, pid.start_ticks) || shim_alive(&dir) => {
                Ok(Inspection::Running(pid))
            }
            // Exited between the two reads, or died with its shim.
            Some(_) => Ok(Inspection::Exited(dir.read_exit().map_err(inspect)?.unwrap_or_else(lost))),
            None => Ok(Inspection::Prepared),
        }
    }

    async fn wait(&self, id: &str) -> Result<ExitRecord, RuntimeError> {
        loop {
            match self.inspect(id)? {
                Inspection::Exited(exit) => return Ok(exit),
                Inspection::Running(_) => sleep(POLL).await,
                Inspection::Absent | Inspection::Prepared => return Ok(lost()),
            }
        }
    }

    async fn stop(&self, id: &str, signal: i32, grace: Duration) -> Result<ExitRecord, RuntimeError> {
        let pid = match self.inspect(id)? {
            Inspection::Running(pid) => pid,
            Inspection::Exited(exit) => return Ok(exit),
            Inspection::Absent | Inspection::Prepared => return Ok(lost()),
        };
        let send = |signal| signal_if_same(&pid, signal).map_err(|source| RuntimeError::Stop { id: id.into(), source });
        send(signal)?;
        if let Ok(exit) = timeout(grace, self.wait(id)).await {
            return exit;
        }
        tracing::info!(task = id, grace = ?grace, "task ignored its stop signal; sending SIGKILL");
        send(libc::SIGKILL)?;
        match timeout(KILL_TIMEOUT, self.wait(id)).await {
            Ok(exit) => exit,
            Err(_) => {
                Err(RuntimeError::Stop { id: id.into(), source: std::io::Error::other("still running after SIGKILL") })
            }
        }
    }

    fn release(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.dir(id);
        let remove = |source| RuntimeError::Remove { id: id.into(), source };
        // The record goes last: it keeps the address taken until the namespace is gone.
        if let Some(record) = dir.read_network().map_err(remove)? {
            record.unplumb().map_err(|source| network_error(id, source))?;
            dir.remove_network().map_err(remove)?;
        }
        PortsRecord::remove(&dir).map_err(remove)
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.release(id)?;
        self.payloads.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.dir(id).remove().map_err(|source| RuntimeError::Remove { id: id.into(), source })
    }

    fn list(&self) -> Result<Vec<String>, RuntimeError> {
        taskdir::list(&self.data_dir).map_err(|source| RuntimeError::Inspect { id: "*".into(), source })
    }

    fn network(&self, id: &str) -> NetworkInfo {
        match self.dir(id).read_network() {
            Ok(Some(record)) => NetworkInfo {
                network: TaskNetwork::Namespace,
                addresses: vec![record.address.to_string()],
                ports: Vec::new(),
            },
            _ => NetworkInfo {
                ports: PortsRecord::load(&self.dir(id)).ok().flatten().map(|r| r.ports).unwrap_or_default(),
                ..NetworkInfo::default()
            },
        }
    }

    fn host_ports(&self, id: &str, targets: &[PortTarget]) -> Result<Vec<PortMapping>, RuntimeError> {
        if self.bridge.get().is_some() || targets.is_empty() {
            return Ok(Vec::new());
        }
        let dir = self.dir(id);
        let prepare = |source| RuntimeError::Prepare { id: id.into(), source };
        let _guard = self.allocating.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(record) = PortsRecord::load(&dir).map_err(prepare)?.filter(|r| r.covers(targets)) {
            return Ok(record.ports);
        }
        let mut taken = Vec::new();
        for other in self.list()?.iter().filter(|other| *other != id) {
            if let Some(record) = PortsRecord::load(&self.dir(other)).map_err(prepare)? {
                taken.extend(record.ports.iter().map(|m| m.host));
            }
        }
        let ports = ports::allocate(targets, &taken).map_err(prepare)?;
        dir.create().map_err(prepare)?;
        PortsRecord { ports: ports.clone() }.save(&dir).map_err(prepare)?;
        Ok(ports)
    }

    async fn exec(&self, id: &str, argv: &[String], limit: Duration) -> Result<ExecOutput, RuntimeError> {
        let command = argv.join(" ");
        let failed = |source| RuntimeError::Exec { id: id.into(), command: command.clone(), source };
        let launch = self
            .dir(id)
            .read_launch()
            .map_err(failed)?
            .ok_or_else(|| failed(std::io::Error::other("the task has no launch record")))?;
        // A task with configs, secrets or a resolv.conf has a mount namespace of its own: probes join it.
        let own_mounts = !launch.files.is_empty() || launch.resolv_conf.is_some();
        let mnt = match self.dir(id).read_pid() {
            Ok(Some(pid)) if own_mounts => Some(PathBuf::from(format!("/proc/{}/ns/mnt", pid.pid))),
            _ => None,
        };
        match exec::run(&launch, mnt, argv, limit).await.map_err(failed)? {
            Some(output) => Ok(output),
            None => Err(RuntimeError::ExecTimeout { id: id.into(), command, timeout: limit }),
        }
    }
}

fn network_error(id: &str, source: NetworkError) -> RuntimeError {
    RuntimeError::Network { id: id.into(), source }
}

/// Signals the task's process group unless the pid now belongs to another process.
fn signal_if_same(pid: &PidRecord, signal: i32) -> std::io::Result<()> {
    if !sys::is_same_process(pid.pid, pid.start_ticks) {
        return Ok(());
    }
    sys::signal_group(pid.pid, signal)
}

/// True while the task's shim process exists.
fn shim_alive(dir: &TaskDir) -> bool {
    std::fs::read_to_string(dir.file("shim.pid"))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| sys::start_ticks(pid).is_some())
}

/// The exit of a process that vanished without its shim recording it.
fn lost() -> ExitRecord {
    ExitRecord {
        error: Some("task process lost: it ended while its shim was gone, exit status unknown".into()),
        finished_at: Some(chrono::Utc::now()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(dir: &std::path::Path) -> Launch {
        Launch {
            argv: vec!["true".into()],
            env: Default::default(),
            cwd: dir.join("work"),
            uid: None,
            gid: None,
            log_max_bytes: 1024,
            log_keep: 1,
            netns: None,
            files: Vec::new(),
            env_from_stdin: Vec::new(),
            resolv_conf: None,
        }
    }

    #[test]
    fn each_task_keeps_its_address_and_a_released_one_waits_its_turn() {
        let data = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::new(data.path().into(), vec![]);
        assert!(runtime.use_bridge(Bridge::new("shoal0", "10.200.3.0/24".parse().unwrap()).unwrap()));
        let address = |id| runtime.network(id).addresses;
        for id in ["a", "b"] {
            runtime.prepare(id, &launch(data.path()), vec![]).unwrap();
        }
        assert_eq!(
            (address("a"), address("b")),
            (vec!["10.200.3.2/24".to_string()], vec!["10.200.3.3/24".to_string()])
        );
        assert_eq!(runtime.network("a").network, TaskNetwork::Namespace);
        let netns = runtime.dir("a").read_launch().unwrap().unwrap().netns;
        assert_eq!(netns, Some(PathBuf::from("/run/netns/shoal-a")), "the shim is told which namespace to enter");
        let resolv_conf = runtime.dir("a").read_launch().unwrap().unwrap().resolv_conf.expect("a resolv.conf");
        assert!(std::fs::read_to_string(resolv_conf).unwrap().contains("nameserver 10.200.3.1\n"), "the agent's DNS");

        // Preparing again (an agent restart) keeps the address.
        runtime.prepare("b", &launch(data.path()), vec![]).unwrap();
        assert_eq!(address("b"), vec!["10.200.3.3/24".to_string()]);

        // Nothing was plumbed, so releasing runs no command; it frees the
        // address, which is handed out again only once the turn comes back.
        runtime.release("a").unwrap();
        assert_eq!(runtime.network("a"), NetworkInfo::default());
        runtime.prepare("c", &launch(data.path()), vec![]).unwrap();
        assert_eq!(address("c"), vec!["10.200.3.4/24".to_string()], "not the just-released .2");
        let restarted = ProcessRuntime::new(data.path().into(), vec![]);
        assert!(restarted.use_bridge(Bridge::new("shoal0", "10.200.3.0/24".parse().unwrap()).unwrap()));
        restarted.prepare("d", &launch(data.path()), vec![]).unwrap();
        assert_eq!(restarted.network("d").addresses, vec!["10.200.3.5/24".to_string()], "after the highest recorded");
    }

    #[test]
    fn without_a_bridge_tasks_use_the_host_network() {
        let data = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::new(data.path().into(), vec![]);
        runtime.prepare("a", &launch(data.path()), vec![]).unwrap();
        assert_eq!(runtime.network("a"), NetworkInfo { network: TaskNetwork::Host, ..Default::default() });
        let launch = runtime.dir("a").read_launch().unwrap().unwrap();
        assert_eq!((launch.netns, launch.resolv_conf), (None, None));
    }

    #[test]
    fn host_network_tasks_get_distinct_host_ports_kept_until_released() {
        let data = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::new(data.path().into(), vec![]);
        let web = [PortTarget { target: 80, tcp: true, udp: false }];
        let (a, b) = (runtime.host_ports("a", &web).unwrap(), runtime.host_ports("b", &web).unwrap());
        assert_eq!((a[0].target, b[0].target), (80, 80));
        assert_ne!(a[0].host, b[0].host, "two replicas on one node cannot share a port");
        assert_eq!(runtime.host_ports("a", &web).unwrap(), a, "asked again (an agent restart): the same");
        runtime.prepare("a", &launch(data.path()), vec![]).unwrap();
        assert_eq!(runtime.network("a").ports, a, "reported with the task's network");
        runtime.release("a").unwrap();
        assert_eq!(runtime.network("a"), NetworkInfo::default());
        assert_eq!(runtime.host_ports("c", &[]).unwrap(), [], "no ports, nothing mapped");
    }
}
