//! The Service kind: everything a compose v3 service can say about running
//! on a swarm. Defaults are not written here but in [`crate::defaults`].
//!
//! Who writes what: the whole spec is written by the user (through
//! `shoal stack deploy`, `shoal apply` or `shoal service …`); the status by
//! the service and update controllers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::kind;
use crate::duration::Duration;

kind!(
    /// A long-running service: N replicas (or one per node) of one image.
    Service, ServiceSpec, "services", status: ServiceStatus
);

/// Desired state of a service. Written by the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// Image reference, e.g. `nginx:1.27`.
    pub image: String,
    /// `replicated` (a fixed number of tasks) or `global` (one task per eligible node).
    #[serde(default)]
    pub mode: ServiceMode,
    /// Number of tasks in replicated mode (1 by default); absent in global mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    /// Arguments replacing the image's CMD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Arguments replacing the image's ENTRYPOINT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Environment variables (ordered by name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// User (and group) the process runs as, `uid[:gid]` or a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Hostname of the containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Labels on each container (service labels live in `metadata.labels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_labels: BTreeMap<String, String>,
    /// Ports the service exposes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
    /// How an update rolls out.
    #[serde(default)]
    pub update_config: UpdateConfig,
    /// How a rollback rolls out.
    #[serde(default)]
    pub rollback_config: UpdateConfig,
    /// When a stopped task is restarted.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Where tasks may run.
    #[serde(default)]
    pub placement: Placement,
    /// CPU, memory and pids limits and reservations.
    #[serde(default)]
    pub resources: Resources,
    /// Health probe; absent means the image's own HEALTHCHECK applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheck>,
    /// Configs mounted as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileReference>,
    /// Secrets mounted as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileReference>,
    /// Time between the stop signal and SIGKILL.
    #[serde(default = "crate::defaults::stop_grace_period")]
    pub stop_grace_period: Duration,
    /// Signal sent to stop a task.
    #[serde(default = "crate::defaults::stop_signal")]
    pub stop_signal: String,
    /// `vip` (one virtual IP load-balanced over the tasks) or `dnsrr` (DNS round robin).
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// Docker's ForceUpdate: raising it redeploys every task even when
    /// nothing else changed (`shoal service update --force`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub force_update: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ServiceSpec {
    /// Whether tasks of `self` and of `other` are interchangeable: the specs
    /// differ at most in what does not reach a task (replicas, update and
    /// rollback settings). A change beyond these is a rolling update.
    pub fn same_template(&self, other: &ServiceSpec) -> bool {
        self.template() == other.template()
    }

    /// A stable fingerprint of the task template (FNV-1a over its JSON), as
    /// 16 hex digits: what a rolling update rolls out.
    pub fn template_hash(&self) -> String {
        let json = serde_json::to_vec(&self.template()).expect("specs serialize to JSON");
        let hash = json.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3));
        format!("{hash:016x}")
    }

    /// The spec a new task carries: each config and secret reference with
    /// the version `version(kind, name)` says the object has now.
    pub fn resolved(&self, version: impl Fn(FileKind, &str) -> Option<i64>) -> ServiceSpec {
        let mut spec = self.clone();
        for (kind, references) in [(FileKind::Config, &mut spec.configs), (FileKind::Secret, &mut spec.secrets)] {
            references.iter_mut().for_each(|r| r.version = version(kind, &r.source));
        }
        spec
    }

    /// The spec without resolved versions: what the service's own spec
    /// looks like (a task's spec compared with its service's).
    pub fn unresolved(&self) -> ServiceSpec {
        self.resolved(|_, _| None)
    }

    /// The references whose version differs between `self` (a task's spec)
    /// and `newer`, as `secret db-password v2` (`newer`'s version).
    pub fn changed_versions(&self, newer: &ServiceSpec) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, old, new) in
            [(FileKind::Config, &self.configs, &newer.configs), (FileKind::Secret, &self.secrets, &newer.secrets)]
        {
            for reference in new {
                let before = old.iter().find(|r| r.source == reference.source).map(|r| r.version);
                if let (Some(before), Some(now)) = (before, reference.version) {
                    if before != Some(now) {
                        out.push(format!("{} {} v{now}", kind.as_str(), reference.source));
                    }
                }
            }
        }
        out
    }

    /// The spec without what does not reach a task.
    fn template(&self) -> ServiceSpec {
        ServiceSpec {
            replicas: None,
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
            ..self.clone()
        }
    }
}

/// Replicated or global.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceMode {
    #[default]
    Replicated,
    Global,
}

/// How clients reach the tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointMode {
    #[default]
    Vip,
    Dnsrr,
}

/// One exposed port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortConfig {
    /// Port inside the container.
    pub target: u16,
    /// Port published on the nodes; absent means none is published (or one is allocated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<u16>,
    #[serde(default)]
    pub protocol: PortProtocol,
    /// `ingress`: published on every node through the routing mesh; `host`: only where a task runs.
    #[serde(default)]
    pub mode: PublishMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PublishMode {
    #[default]
    Ingress,
    Host,
}

/// Rolling update (or rollback) parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// Tasks updated at once (0 = all at once).
    pub parallelism: u64,
    /// Wait between batches.
    pub delay: Duration,
    /// What to do when an update fails.
    pub failure_action: FailureAction,
    /// How long to watch each updated task for failure.
    pub monitor: Duration,
    /// Fraction of tasks that may fail before the update counts as failed (0..=1).
    pub max_failure_ratio: f64,
    /// Stop the old task first, or start the new one first.
    pub order: UpdateOrder,
    /// A batch whose tasks are not all ready this long after it started
    /// fails the update (10m by default; Swarm would wait forever).
    pub progress_deadline: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

/// When and how often tasks are restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// Wait between restart attempts.
    pub delay: Duration,
    /// Attempts before giving up (0 = unlimited).
    pub max_attempts: u64,
    /// Window used to evaluate `maxAttempts` (0s = unbounded).
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    None,
    OnFailure,
    #[default]
    Any,
}

/// Scheduling constraints and preferences.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Placement {
    /// Expressions such as `node.role==manager`, `node.labels.zone!=east`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Spread preferences, applied in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<PlacementPreference>,
    /// At most this many tasks of the service on one node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u64>,
}

/// Spread tasks evenly over the values of a node label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlacementPreference {
    /// e.g. `node.labels.zone`.
    pub spread: String,
}

/// Limits and reservations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservations: Option<ResourceReservations>,
}

/// Upper bounds for one task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ResourceLimits {
    /// CPUs (fractions allowed, `0.5`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Maximum number of processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// What the scheduler sets aside on a node for one task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ResourceReservations {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
}

/// A health probe. `test` is normalized: `["NONE"]` disables the image's
/// probe, `["CMD", args…]` runs a command, `["CMD-SHELL", "script"]` a shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HealthCheck {
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures before the task is unhealthy.
    pub retries: u64,
    /// Grace period during which failures do not count.
    pub start_period: Duration,
    /// Probe interval during the start period.
    pub start_interval: Duration,
}

/// A config or secret mounted into the containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileReference {
    /// Name of the Config or Secret object.
    pub source: String,
    /// Path in the container (configs: `/<source>`; secrets: `/run/secrets/<source>` by default).
    #[serde(default)]
    pub target: String,
    #[serde(default = "crate::defaults::file_owner")]
    pub uid: String,
    #[serde(default = "crate::defaults::file_owner")]
    pub gid: String,
    /// File mode (0o444 by default).
    #[serde(default = "crate::defaults::file_mode")]
    pub mode: u32,
    /// Also expose the value as this environment variable (for programs
    /// that read `DB_PASSWORD` and not a file). The value reaches the task
    /// the way file contents do — the shim's stdin — never `launch.json`.
    /// Stack files spell it `x-env` in the long syntax. The file is mounted
    /// as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// The object's `metadata.generation` (its version) this task was
    /// created with. Written only by the controllers, on a Task's copy of
    /// the spec ([`ServiceSpec::resolved`]); absent in a Service's spec.
    /// Part of the task template: a new version of a referenced object
    /// rolls the service's tasks like any other change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

impl FileReference {
    /// A reference to `source` with Docker's defaults (target filled in
    /// later by [`crate::defaults::apply_service_defaults`]).
    pub fn to(source: impl Into<String>) -> Self {
        FileReference {
            source: source.into(),
            target: String::new(),
            uid: crate::defaults::file_owner(),
            gid: crate::defaults::file_owner(),
            mode: crate::defaults::file_mode(),
            env: None,
            version: None,
        }
    }
}

/// Which kind a [`FileReference`] points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Config,
    Secret,
}

impl FileKind {
    /// `config` or `secret`, as messages say it.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Config => "config",
            FileKind::Secret => "secret",
        }
    }
}

/// Observed state of a service. Written by the service, update and endpoints
/// controllers (`updateStatus` by the update controller, and by `shoal
/// service update|rollback` when they resume or start an update, in the
/// same compare-and-swap write as the spec; `endpointError` by the
/// endpoints controller).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServiceStatus {
    /// Generation of the spec the controllers have acted on.
    pub observed_generation: i64,
    /// Tasks currently running.
    pub running_replicas: u64,
    /// Tasks wanted.
    pub desired_replicas: u64,
    /// The last (or current) rolling update or rollback; absent until the
    /// first change that replaces tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatus>,
    /// Why the endpoints controller could not give the service all it asks
    /// for (`port 8080/tcp is already published by service web`); empty
    /// when it could. Written only by the endpoints controller.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub endpoint_error: String,
}

/// Where a rolling update stands, Docker's `UpdateStatus` plus the update
/// controller's bookkeeping (kept in the store so a new leader continues
/// where the last one stopped).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct UpdateStatus {
    pub state: UpdateState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// Why it is in this state, in words.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The service generation last seen by this update.
    pub generation: i64,
    /// [`ServiceSpec::template_hash`] of the spec being rolled out.
    pub target: String,
    /// When the current batch started (absent between batches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_started_at: Option<DateTime<Utc>>,
    /// When the next batch may start (the delay after the last one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch_at: Option<DateTime<Utc>>,
    /// Batches started so far.
    pub batches: u64,
    /// New tasks seen ready, with when: their monitor window starts there.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ready: BTreeMap<String, DateTime<Utc>>,
    /// New tasks counted as failed (they failed before their monitor window ended).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

/// Docker's update states.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    #[default]
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    /// A rollback, in any state.
    pub fn is_rollback(self) -> bool {
        matches!(self, UpdateState::RollbackStarted | UpdateState::RollbackPaused | UpdateState::RollbackCompleted)
    }

    /// Tasks are being replaced.
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    /// As Docker spells it (`rollback_started`).
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
}
