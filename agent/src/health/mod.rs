//! Health probes with compose/Dockerfile semantics: a task's
//! `healthcheck` runs in the task's context (its network namespace, env,
//! working dir and user — [`crate::runtime::Runtime::exec`]); its health
//! is written to the task's observation (`status.health`); an unhealthy
//! task is stopped and reported failed ("task: unhealthy container"), so
//! the controllers replace it per its restart policy.
//!
//! - [`config`]: the probe a healthcheck asks for, Docker's defaults filled in.
//! - [`tracker`]: the state machine (starting → healthy / unhealthy), pure.
//! - [`monitor`]: the per-task prober that runs it on schedule.

pub mod config;
pub mod monitor;
pub mod tracker;

pub use config::ProbeConfig;
pub use monitor::{HealthMonitor, Outcome};
pub use tracker::Tracker;

/// The failure message of a task stopped for failing its probe (Docker's).
pub const UNHEALTHY_MESSAGE: &str = "task: unhealthy container";
