//! The runtime trait: how the agent makes a task's process exist, roughly
//! SwarmKit's exec `Controller` (prepare, start, wait, shutdown, remove) plus
//! `inspect` for re-adopting what an earlier agent started. The process
//! runtime ([`process`]) is the first; an OCI runtime (runc/crun bundles)
//! comes later behind the same trait.

pub mod exec;
pub mod process;

use std::future::Future;
use std::time::Duration;

use shoal_crd::{PortMapping, TaskNetwork};

use crate::files::Content;
use crate::network::ports::PortTarget;
use crate::network::NetworkError;
use crate::taskdir::{ExitRecord, Launch, PidRecord};

pub use exec::ExecOutput;
pub use process::ProcessRuntime;

/// Why a runtime operation failed; the message goes into the task's status.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("preparing task {id}: {source}")]
    Prepare {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting task {id}: {message}")]
    Start { id: String, message: String },
    #[error("task {id}'s network: {source}")]
    Network {
        id: String,
        #[source]
        source: NetworkError,
    },
    #[error("reading the state of task {id}: {source}")]
    Inspect {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stopping task {id}: {source}")]
    Stop {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("removing task {id}: {source}")]
    Remove {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("running {command:?} in task {id}: {source}")]
    Exec {
        id: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command:?} in task {id} ran longer than {timeout:?} and was killed")]
    ExecTimeout { id: String, command: String, timeout: Duration },
}

/// What a runtime knows about a task, e.g. after an agent restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// Nothing on this node.
    Absent,
    /// Prepared, not started (or the start was interrupted).
    Prepared,
    /// The process runs.
    Running(PidRecord),
    /// The process ended (or never could start).
    Exited(ExitRecord),
}

/// The outcome of a start: the process runs, or it ended at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    Running(PidRecord),
    Exited(ExitRecord),
}

/// The network a task's process is in, as its observation reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkInfo {
    pub network: TaskNetwork,
    /// CIDR addresses (`10.200.3.5/24`); empty on the host network.
    pub addresses: Vec<String>,
    /// On the host network: the host port given for each target port.
    pub ports: Vec<PortMapping>,
}

/// Makes tasks' processes exist. Every method is idempotent and keyed by
/// the task id, so a restarted agent can pick up where the last one stopped.
pub trait Runtime: Send + Sync + 'static {
    /// Records what to run (and, with networking, takes the task's
    /// address); nothing runs yet. `contents` are those of `launch.files`,
    /// in order: kept in memory only, handed to the task at start.
    fn prepare(&self, id: &str, launch: &Launch, contents: Vec<Content>) -> Result<(), RuntimeError>;
    /// Starts the prepared task and waits until its process runs or fails.
    fn start(&self, id: &str) -> impl Future<Output = Result<Started, RuntimeError>> + Send;
    /// What is there for `id` now.
    fn inspect(&self, id: &str) -> Result<Inspection, RuntimeError>;
    /// Waits for the running process to end.
    fn wait(&self, id: &str) -> impl Future<Output = Result<ExitRecord, RuntimeError>> + Send;
    /// Sends `signal`, waits up to `grace`, then SIGKILL; returns the exit.
    fn stop(
        &self,
        id: &str,
        signal: i32,
        grace: Duration,
    ) -> impl Future<Output = Result<ExitRecord, RuntimeError>> + Send;
    /// Frees what an ended task holds beyond its files — its network
    /// namespace and address — so finished tasks kept for history hold none.
    fn release(&self, id: &str) -> Result<(), RuntimeError>;
    /// Deletes everything kept for the task (it must not be running).
    fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Ids of every task the runtime holds something for.
    fn list(&self) -> Result<Vec<String>, RuntimeError>;
    /// The task's network (the host's when nothing else was set up).
    fn network(&self, id: &str) -> NetworkInfo;
    /// Before `prepare`: when the task will share the host's network, a
    /// free host port for each of `targets` (kept for it until `release`,
    /// the same ones when asked again); empty when it gets a network of its own.
    fn host_ports(&self, id: &str, targets: &[PortTarget]) -> Result<Vec<PortMapping>, RuntimeError>;
    /// Runs `argv` in the running task's context — its network namespace,
    /// environment, working directory and user — as a health probe does;
    /// killed (an `ExecTimeout`) after `timeout`.
    fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput, RuntimeError>> + Send;
}
