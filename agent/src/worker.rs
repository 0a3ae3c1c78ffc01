//! One task's driver: a tokio task per task assigned to this node that
//! advances it one [`Step`] at a time, writing each new state to its
//! observation, and re-reads the desired state whenever the Task changes.
//!
//! While a task with a healthcheck runs, its [`HealthMonitor`] probes it:
//! the worker writes each new health to the observation and stops a task
//! that turned unhealthy, reporting it failed ("task: unhealthy container").
//!
//! On start it recovers: what the runtime still holds (a running process is
//! re-adopted, never restarted) and the last observation decide where it
//! resumes. When the Task disappears (or, at agent start, a task directory
//! has no Task) it stops the process, removes the task's files and deletes
//! the observation. When the agent shuts down the worker just ends: the
//! task keeps running for the next agent.

use std::sync::Arc;
use std::time::Duration;

use shoal_crd::{HealthStatus, Task, TaskHealth, TaskState};
use shoal_store::client::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::files::{self, Content};
use crate::health::{self, HealthMonitor, Outcome, ProbeConfig};
use crate::image::ImageCatalog;
use crate::launch::{self, LaunchDefaults};
use crate::observation::{ObservationWriter, Report};
use crate::runtime::{Inspection, Runtime, RuntimeError, Started};
use crate::state::{exit_outcome, next_step, Step};
use crate::sys;
use crate::taskdir::{ExitRecord, Launch};

/// Stop settings for a task whose spec is unknown (an orphaned directory).
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// What every worker of one agent shares.
pub struct Context<R> {
    pub store: Store,
    pub node: String,
    pub runtime: R,
    pub catalog: ImageCatalog,
    pub launch: LaunchDefaults,
    /// This node's private key(s), which open the secrets sealed to it.
    pub node_keys: Vec<shoal_crd::sealing::PrivateKey>,
    /// The machine's hostname (`{{ .Node.Hostname }}` in config templates).
    pub hostname: String,
}

/// How long a task waits in `preparing` for its secrets' sealed copies.
const SEALED_COPY_WAIT: Duration = Duration::from_secs(30);

/// The latest Task a worker should act on; `None` once it is gone.
pub type TaskSlot = watch::Sender<Option<Arc<Task>>>;

/// Starts the worker of task `id`.
pub fn spawn<R: Runtime>(ctx: Arc<Context<R>>, id: String, task: Option<Arc<Task>>) -> (TaskSlot, JoinHandle<()>) {
    let (tx, rx) = watch::channel(task);
    let handle = tokio::spawn(async move {
        let mut observation = loop {
            match ObservationWriter::load(ctx.store.clone(), &id, &ctx.node).await {
                Ok(o) => break o,
                Err(err) => {
                    tracing::warn!(task = %id, error = %err, "reading the task observation failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        observation.set_log_dir(crate::taskdir::TaskDir::new(&ctx.launch.data_dir, &id).path());
        Worker { ctx, id, rx, observation, state: TaskState::Assigned, last: None, health: None }.run().await;
    });
    (tx, handle)
}

struct Worker<R> {
    ctx: Arc<Context<R>>,
    id: String,
    rx: watch::Receiver<Option<Arc<Task>>>,
    observation: ObservationWriter,
    state: TaskState,
    /// The last Task seen, for its stop settings once it is gone.
    last: Option<Arc<Task>>,
    /// The prober of the running task, if it has a healthcheck.
    health: Option<HealthMonitor>,
}

impl<R: Runtime> Worker<R> {
    async fn run(mut self) {
        let first = self.rx.borrow_and_update().clone();
        if let Some(task) = first {
            self.recover(&task).await;
        }
        loop {
            let Some(task) = self.rx.borrow_and_update().clone() else {
                self.retire().await;
                return;
            };
            self.last = Some(task.clone());
            let desired = task.spec.desired_state;
            match next_step(self.state, desired) {
                Step::Accept => match self.ctx.catalog.resolve(&task.spec.spec) {
                    Ok(_) => {
                        self.report(
                            &task,
                            Report { state: TaskState::Accepted, message: "accepted".into(), ..Default::default() },
                        )
                        .await
                    }
                    Err(err) => {
                        self.report(
                            &task,
                            Report { state: TaskState::Rejected, message: err.to_string(), ..Default::default() },
                        )
                        .await
                    }
                },
                Step::Prepare => self.prepare(&task).await,
                Step::Start => self.start(&task).await,
                Step::Wait => {
                    self.watch_health(&task);
                    tokio::select! {
                        exit = self.ctx.runtime.wait(&self.id) => self.exited(&task, exit.unwrap_or_else(|e| error_exit(e.to_string())), false).await,
                        changed = self.rx.changed() => if changed.is_err() { return },
                        health = health::monitor::next(&mut self.health) => self.health_changed(&task, health).await,
                    }
                }
                Step::Stop => {
                    self.drain(&task).await;
                    let exit = self.stop(Some(&task)).await;
                    self.exited(&task, exit, true).await;
                }
                Step::Cancel => {
                    self.report(
                        &task,
                        Report {
                            state: TaskState::Shutdown,
                            message: "shutdown before it started".into(),
                            ..Default::default()
                        },
                    )
                    .await
                }
                Step::Idle => {
                    if desired == TaskState::Remove {
                        self.remove_files().await;
                    }
                    if self.rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Picks up after an earlier agent: runtime facts first, then the last observation.
    async fn recover(&mut self, task: &Task) {
        self.observation.attach(self.ctx.runtime.network(&self.id));
        let observed_health =
            self.observation.current_for(&task.metadata.uid).and_then(|o| o.status.as_ref()?.health.clone());
        self.observation.set_health(observed_health);
        let observed = self
            .observation
            .current_for(&task.metadata.uid)
            .and_then(|o| o.status.as_ref().map(|s| (s.state, o.spec.pid)));
        let inspection = self.ctx.runtime.inspect(&self.id).unwrap_or(Inspection::Absent);
        self.state = match (observed, inspection) {
            (Some((state, _)), _) if state.is_terminal() => state,
            (observed, Inspection::Running(pid)) => {
                self.state = TaskState::Running;
                if observed != Some((TaskState::Running, Some(pid.pid))) {
                    let report = Report {
                        state: TaskState::Running,
                        message: "running (re-adopted)".into(),
                        pid: Some(pid.pid),
                        ..Default::default()
                    };
                    self.report(task, report).await;
                } else {
                    tracing::info!(task = %self.id, pid = pid.pid, "re-adopted running task");
                }
                TaskState::Running
            }
            (_, Inspection::Exited(exit)) => {
                self.exited(task, exit, task.spec.desired_state > TaskState::Running).await;
                self.state
            }
            // Prepared by an earlier agent: its configs and secrets were in
            // that agent's memory only, so prepare again.
            (_, Inspection::Prepared) => TaskState::Accepted,
            (Some((TaskState::Starting | TaskState::Running, _)), Inspection::Absent) => {
                let message = "task process lost: its files are gone".to_string();
                self.report(task, Report { state: TaskState::Failed, message, ..Default::default() }).await;
                TaskState::Failed
            }
            _ => TaskState::Assigned,
        };
    }

    async fn prepare(&mut self, task: &Task) {
        let launch =
            self.ctx.catalog.resolve(&task.spec.spec).map_err(|e| (TaskState::Rejected, e.to_string())).and_then(
                |image| launch::build(task, image, &self.ctx.launch).map_err(|e| (TaskState::Rejected, e.to_string())),
            );
        let launch = launch.and_then(|launch| self.with_host_ports(task, launch));
        let result = match launch {
            Ok(launch) => match self.deliver_files(task, launch).await {
                Ok((launch, contents)) => self
                    .ctx
                    .runtime
                    .prepare(&self.id, &launch, contents)
                    .map_err(|e| (TaskState::Failed, e.to_string())),
                Err(failure) => Err(failure),
            },
            Err(failure) => Err(failure),
        };
        let (state, message) = match result {
            Ok(()) => {
                self.observation.attach(self.ctx.runtime.network(&self.id));
                (TaskState::Preparing, "preparing".to_string())
            }
            Err(failure) => failure,
        };
        self.report(task, Report { state, message, ..Default::default() }).await;
    }

    /// On the host network the task gets a host port per target port of
    /// its service, in its environment (see [`crate::network::ports`]).
    fn with_host_ports(&self, task: &Task, mut launch: Launch) -> Result<Launch, (TaskState, String)> {
        let targets = crate::network::ports::targets(&task.spec.spec);
        let mappings =
            self.ctx.runtime.host_ports(&self.id, &targets).map_err(|e| (TaskState::Failed, e.to_string()))?;
        launch.env.extend(crate::network::ports::env(&mappings));
        Ok(launch)
    }

    /// Fetches and opens the task's configs and secrets: as root their
    /// targets go into `launch.files` (content kept for the shim, in
    /// memory); otherwise they are written below the task's directory.
    async fn deliver_files(
        &self,
        task: &Task,
        mut launch: Launch,
    ) -> Result<(Launch, Vec<Content>), (TaskState, String)> {
        let spec = &task.spec.spec;
        if spec.configs.is_empty() && spec.secrets.is_empty() {
            return Ok((launch, Vec::new()));
        }
        let source = files::Source {
            store: &self.ctx.store,
            node: &self.ctx.node,
            hostname: &self.ctx.hostname,
            keys: &self.ctx.node_keys,
            wait: SEALED_COPY_WAIT,
        };
        let delivered = files::gather(&source, task).await.map_err(|e| {
            let state = if e.is_permanent() { TaskState::Rejected } else { TaskState::Failed };
            (state, e.to_string())
        })?;
        // Values exposed as variables go to the shim after the files' contents.
        let (names, values) = files::exposed_env(&delivered).map_err(|e| (TaskState::Rejected, e.to_string()))?;
        launch.env_from_stdin = names;
        if sys::is_root() {
            let (targets, mut contents): (_, Vec<Content>) = delivered.into_iter().map(|d| (d.file, d.content)).unzip();
            launch.files = targets;
            contents.extend(values);
            return Ok((launch, contents));
        }
        let dir = crate::taskdir::TaskDir::new(&self.ctx.launch.data_dir, &self.id);
        let env = dir
            .create()
            .and_then(|()| files::write_plain(dir.path(), &delivered))
            .map_err(|e| (TaskState::Failed, format!("writing the task's configs and secrets: {e}")))?;
        launch.env.extend(env);
        Ok((launch, values))
    }

    async fn start(&mut self, task: &Task) {
        self.report(task, Report { state: TaskState::Starting, message: "starting".into(), ..Default::default() })
            .await;
        match self.ctx.runtime.start(&self.id).await {
            Ok(Started::Running(pid)) => {
                // A task with a probe is `starting` from the moment it runs.
                self.observation.set_health(
                    ProbeConfig::from_spec(task.spec.spec.healthcheck.as_ref()).map(|_| TaskHealth::default()),
                );
                let report = Report {
                    state: TaskState::Running,
                    message: "running".into(),
                    pid: Some(pid.pid),
                    ..Default::default()
                };
                self.report(task, report).await;
            }
            Ok(Started::Exited(exit)) => self.exited(task, exit, false).await,
            Err(err) => {
                self.report(task, Report { state: TaskState::Failed, message: err.to_string(), ..Default::default() })
                    .await
            }
        }
    }

    /// Starts probing the running task unless it has no healthcheck or is
    /// probed already; a re-adopted task resumes from its observed health.
    fn watch_health(&mut self, task: &Task) {
        if self.health.is_some() {
            return;
        }
        let Some(probe) = ProbeConfig::from_spec(task.spec.spec.healthcheck.as_ref()) else { return };
        let observed = self.observation.current_for(&task.metadata.uid).and_then(|o| o.status.as_ref()?.health.clone());
        let started = match self.ctx.runtime.inspect(&self.id) {
            Ok(Inspection::Running(pid)) => {
                let ago = (chrono::Utc::now() - pid.started_at).to_std().unwrap_or_default();
                tokio::time::Instant::now().checked_sub(ago).unwrap_or_else(tokio::time::Instant::now)
            }
            _ => tokio::time::Instant::now(),
        };
        let (ctx, id) = (self.ctx.clone(), self.id.clone());
        let run = move |argv: Vec<String>, timeout: Duration| {
            let (ctx, id) = (ctx.clone(), id.clone());
            async move { probe_outcome(ctx.runtime.exec(&id, &argv, timeout).await) }
        };
        self.health = Some(HealthMonitor::spawn(probe, observed.unwrap_or_default(), started, run));
    }

    /// A probe ran: the new health goes into the observation; an unhealthy
    /// task is stopped and failed, for the controllers to replace.
    async fn health_changed(&mut self, task: &Task, health: TaskHealth) {
        let status = health.status;
        let previous = self
            .observation
            .current_for(&task.metadata.uid)
            .and_then(|o| o.status.as_ref()?.health.as_ref().map(|h| h.status));
        if previous != Some(status) {
            let output = health.log.last().map(|r| r.output.trim().to_string()).unwrap_or_default();
            tracing::info!(task = %self.id, service = %task.spec.service_name, ?status, failing_streak = health.failing_streak, last_output = %output, "task health");
        }
        self.observation.set_health(Some(health));
        self.observation.write_health(&task.metadata.uid).await;
        if status == HealthStatus::Unhealthy {
            let exit = self.stop(Some(task)).await;
            self.finish(task, exit, (TaskState::Failed, health::UNHEALTHY_MESSAGE.into())).await;
        }
    }

    /// The draining handshake: out of every node's backends before the stop signal.
    async fn drain(&self, task: &Task) {
        use crate::dataplane::drain::{
            wait_for_open_connections, wait_until_drained, Drained, DEFAULT_DRAIN_TIMEOUT, DEFAULT_SETTLE_TIMEOUT,
        };
        let started = tokio::time::Instant::now();
        match wait_until_drained(&self.ctx.store, &task.spec.service_name, &self.id, DEFAULT_DRAIN_TIMEOUT).await {
            Drained::NoEndpoints => {}
            Drained::Everywhere { revision } => {
                tracing::info!(task = %self.id, revision, waited = ?started.elapsed(), "drained: no node routes new connections to the task")
            }
            Drained::TimedOut { lagging } => {
                tracing::warn!(task = %self.id, ?lagging, timeout = ?DEFAULT_DRAIN_TIMEOUT, "drain wait expired; stopping anyway")
            }
        }
        // Let the connections it already has finish before the signal.
        for address in self.ctx.runtime.network(&self.id).addresses {
            let address = address.split('/').next().unwrap_or_default().to_string();
            let open = wait_for_open_connections(&address, DEFAULT_SETTLE_TIMEOUT).await;
            if open > 0 {
                tracing::info!(task = %self.id, open, "connections still open after the settle time; they get the grace period");
            }
        }
    }

    /// Stops the process with the task's stop signal and grace period.
    async fn stop(&mut self, task: Option<&Task>) -> ExitRecord {
        self.health = None;
        let (signal, grace) = match task {
            Some(task) => {
                let spec = &task.spec.spec;
                (sys::parse_signal(&spec.stop_signal).unwrap_or(libc::SIGTERM), spec.stop_grace_period.0)
            }
            None => (libc::SIGTERM, DEFAULT_GRACE),
        };
        tracing::info!(task = %self.id, signal, grace = ?grace, "stopping task");
        self.ctx.runtime.stop(&self.id, signal, grace).await.unwrap_or_else(|e| error_exit(e.to_string()))
    }

    /// The process ended: free its network, then report the final state.
    async fn exited(&mut self, task: &Task, exit: ExitRecord, stopping: bool) {
        let outcome = exit_outcome(&exit, stopping);
        self.finish(task, exit, outcome).await;
    }

    /// The process ended with `outcome`: stop probing, free its network, report.
    async fn finish(&mut self, task: &Task, exit: ExitRecord, (state, message): (TaskState, String)) {
        self.health = None;
        if let Err(err) = self.blocking(|runtime, id| runtime.release(id)).await {
            tracing::warn!(task = %self.id, error = %err, "cannot release the task's network");
        }
        self.observation.release_addresses();
        self.report(task, Report { state, message, pid: None, exit_code: exit.code }).await;
    }

    /// The Task is gone: nothing of it may remain on this node.
    async fn retire(&mut self) {
        if matches!(self.ctx.runtime.inspect(&self.id), Ok(Inspection::Running(_))) {
            let last = self.last.clone();
            self.stop(last.as_deref()).await;
        }
        self.remove_files().await;
        self.observation.delete().await;
        tracing::info!(task = %self.id, "task removed from this node");
    }

    async fn remove_files(&mut self) {
        if let Err(err) = self.blocking(|runtime, id| runtime.remove(id)).await {
            tracing::warn!(task = %self.id, error = %err, "cannot remove the task's files");
        }
    }

    /// Runs a runtime call that blocks (namespace teardown, `ip` and
    /// `conntrack` processes, file removal) on tokio's blocking pool, so
    /// it never stalls the async threads `shoal up` shares with its store.
    async fn blocking(
        &self,
        call: impl FnOnce(&R, &str) -> Result<(), RuntimeError> + Send + 'static,
    ) -> Result<(), RuntimeError> {
        let (ctx, id) = (self.ctx.clone(), self.id.clone());
        tokio::task::spawn_blocking(move || call(&ctx.runtime, &id)).await.unwrap_or_else(|join| {
            Err(RuntimeError::Remove { id: self.id.clone(), source: std::io::Error::other(join.to_string()) })
        })
    }

    /// Enters a new state: one log line, one observation write.
    async fn report(&mut self, task: &Task, report: Report) {
        tracing::info!(
            task = %self.id,
            service = %task.spec.service_name,
            from = ?self.state,
            to = ?report.state,
            message = %report.message,
            "task state"
        );
        self.state = report.state;
        self.observation.write(&task.metadata.uid, report).await;
    }
}

/// A probe run as its health log records it: Docker's exit code -1 and
/// wording when it could not run or timed out.
fn probe_outcome(result: Result<crate::runtime::ExecOutput, RuntimeError>) -> Outcome {
    match result {
        Ok(output) => Outcome { exit_code: output.exit_code, output: output.output },
        Err(RuntimeError::ExecTimeout { timeout, .. }) => {
            Outcome { exit_code: -1, output: format!("Health check exceeded timeout ({timeout:?})") }
        }
        Err(err) => Outcome { exit_code: -1, output: err.to_string() },
    }
}

fn error_exit(error: String) -> ExitRecord {
    ExitRecord { error: Some(error), finished_at: Some(chrono::Utc::now()), ..Default::default() }
}
