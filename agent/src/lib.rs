//! Shoal's node agent: registers its node, heartbeats, and runs the tasks
//! assigned to it through Swarm's states.
//!
//! - [`agent`]: the main loop (register, heartbeat, watch Tasks, one worker per task).
//! - [`config`]: the agent's settings.
//! - [`node`]: the Node object and the facts the agent reports.
//! - [`heartbeat`]: liveness through a lease-attached key.
//! - [`worker`]: one task's driver, step by step, with re-adoption.
//! - [`state`]: the task state machine as pure functions.
//! - [`observation`]: the TaskObservation the agent writes (never the Task).
//! - [`health`]: health probes in the task's context, starting → healthy / unhealthy.
//! - [`image`]: image → command, the local image catalog.
//! - [`launch`]: env, working dir and user of a task's process.
//! - [`runtime`]: the runtime trait and the process runtime.
//! - [`network`]: per-task network namespaces on the node's bridge (root).
//! - [`dataplane`]: service VIPs and published ports (nftables; a userspace proxy without root), routes between nodes.
//! - [`dns`]: service discovery — the DNS server tasks are pointed at.
//! - [`shim`]: the per-task supervisor that outlives the agent.
//! - [`taskdir`]: the per-task files the shim and the agent share.
//! - [`files`]: configs and secrets: opened with the node's key, mounted into the task.
//! - [`logs`]: rotating log files.
//! - [`sys`]: signals and `/proc`.
//!
//! Key ownership: the agent writes `{prefix}/nodes/<name>` (creation and
//! status facts only), `{prefix}/heartbeats/<name>` (lease-attached),
//! `{prefix}/taskobservations/<task id>` and `{prefix}/dataplane/<name>`; it only reads `{prefix}/tasks/`,
//! configs, secrets and its own `{prefix}/sealedsecrets/<secret>.<node>`.
//!
//! Not yet: the IPVS data plane.

pub mod agent;
pub mod config;
pub mod dataplane;
pub mod dns;
pub mod files;
pub mod health;
pub mod heartbeat;
pub mod image;
pub mod launch;
pub mod logs;
pub mod network;
pub mod node;
pub mod observation;
pub mod runtime;
pub mod shim;
pub mod state;
pub mod sys;
pub mod taskdir;
pub mod worker;

pub use agent::{run, AgentError};
pub use config::AgentConfig;
pub use image::ImageCatalog;
