//! Writing a task's [`TaskObservation`] — the only key about a task the
//! agent writes. Every write is a compare-and-swap on the last version this
//! writer saw; as the key's only writer it re-reads and retries on conflict
//! (e.g. after an agent restart) and retries transient store errors.

use std::time::Duration;

use chrono::Utc;
use shoal_crd::{Resource, TaskHealth, TaskObservation, TaskObservationSpec, TaskState, TaskStatus};
use shoal_store::client::{Store, StoreError};

use crate::runtime::NetworkInfo;

/// Wait between retries of a failed write.
const RETRY: Duration = Duration::from_millis(500);

/// One new observed state.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub state: TaskState,
    pub message: String,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
}

/// The observation of one task, as this agent last wrote (or read) it.
pub struct ObservationWriter {
    store: Store,
    name: String,
    node: String,
    /// The task's network, reported with every state from now on.
    network: NetworkInfo,
    /// Where the task's logs are, reported with every state.
    log_dir: Option<String>,
    /// The task's health, reported with every state (`None`: no probe).
    health: Option<TaskHealth>,
    current: Option<TaskObservation>,
}

impl ObservationWriter {
    /// Reads the task's current observation, if any.
    pub async fn load(store: Store, task_id: &str, node: &str) -> Result<Self, StoreError> {
        let current = store.get::<TaskObservation>(task_id).await?;
        Ok(Self {
            store,
            name: task_id.into(),
            node: node.into(),
            network: NetworkInfo::default(),
            log_dir: None,
            health: None,
            current,
        })
    }

    /// Sets the network the next writes report (the runtime's facts).
    pub fn attach(&mut self, network: NetworkInfo) {
        self.network = network;
    }

    /// Sets the directory of the task's log files.
    pub fn set_log_dir(&mut self, dir: &std::path::Path) {
        self.log_dir = Some(dir.display().to_string());
    }

    /// The task ended and its addresses (and host ports) were freed; the
    /// kind of network it had stays on the record.
    pub fn release_addresses(&mut self) {
        self.network.addresses.clear();
        self.network.ports.clear();
    }

    /// Sets the health the next writes report.
    pub fn set_health(&mut self, health: Option<TaskHealth>) {
        self.health = health;
    }

    /// The last written observation, if it is about the task with `task_uid`.
    pub fn current_for(&self, task_uid: &str) -> Option<&TaskObservation> {
        self.current.as_ref().filter(|o| o.spec.task_uid == task_uid || o.spec.task_uid.is_empty())
    }

    /// Writes `report` for the task with `task_uid`, retrying until it lands.
    pub async fn write(&mut self, task_uid: &str, report: Report) {
        let previous = self.current_for(task_uid).and_then(|o| o.status.clone()).unwrap_or_default();
        let now = Utc::now();
        let status = TaskStatus {
            state: report.state,
            message: report.message,
            timestamp: Some(now),
            started_at: match report.state {
                TaskState::Running if previous.state != TaskState::Running => Some(now),
                _ => previous.started_at,
            },
            exit_code: report.exit_code,
            health: self.health.clone(),
        };
        let spec = TaskObservationSpec {
            node_id: self.node.clone(),
            task_uid: task_uid.into(),
            pid: report.pid,
            network: self.network.network,
            addresses: self.network.addresses.clone(),
            ports: self.network.ports.clone(),
            log_dir: self.log_dir.clone(),
        };
        self.put(spec, status).await;
    }

    /// Rewrites the last observation of the task with `task_uid` with the
    /// current health, if that differs; state, message and timestamp stay.
    pub async fn write_health(&mut self, task_uid: &str) {
        let Some(current) = self.current_for(task_uid) else { return };
        let mut status = current.status.clone().unwrap_or_default();
        if status.health == self.health {
            return;
        }
        status.health = self.health.clone();
        let spec = current.spec.clone();
        self.put(spec, status).await;
    }

    /// Writes `spec` and `status` as the observation, retrying until it lands.
    async fn put(&mut self, spec: TaskObservationSpec, status: TaskStatus) {
        let mut attempt = 0u32;
        loop {
            let mut object = TaskObservation::new(self.name.clone(), spec.clone());
            object.status = Some(status.clone());
            let result = match &self.current {
                None => self.store.create(object).await,
                Some(current) => {
                    object.metadata = current.metadata().clone();
                    self.store.update(object).await
                }
            };
            match result {
                Ok(written) => {
                    self.current = Some(written);
                    return;
                }
                Err(err) => {
                    attempt += 1;
                    if attempt % 10 == 1 {
                        tracing::warn!(task = %self.name, error = %err, "writing the task observation failed; retrying");
                    }
                    if !err.is_conflict()
                        && !matches!(err, StoreError::AlreadyExists { .. } | StoreError::NotFound { .. })
                    {
                        tokio::time::sleep(RETRY).await;
                    }
                    if let Ok(current) = self.store.get::<TaskObservation>(&self.name).await {
                        self.current = current;
                    }
                }
            }
        }
    }

    /// Deletes the observation (its task is gone), retrying transient errors a few times.
    pub async fn delete(&mut self) {
        for _ in 0..10 {
            match self.store.delete::<TaskObservation>(&self.name, None).await {
                Ok(_) => {
                    self.current = None;
                    return;
                }
                Err(err) => {
                    tracing::warn!(task = %self.name, error = %err, "deleting the task observation failed; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}
