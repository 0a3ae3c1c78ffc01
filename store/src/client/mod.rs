//! Shoal's client side of the etcd v3 API.
//!
//! One code path for every backend: the same client talks to a real etcd
//! cluster and to the embedded `shoal store`.
//!
//! - [`config`]: how to reach the store (endpoints, TLS, user, prefix, timeouts).
//! - [`connection`]: connecting with a deadline and naming the endpoint on failure.
//! - [`resources`]: typed get/list/create/update/delete with mod_revision compare-and-swap.
//! - [`apply`]: all-or-nothing writes of many objects (a whole stack) in one transaction.
//! - [`watcher`]: list-then-watch of one kind, relisting after compaction.
//! - [`reflector`]: an in-memory cache fed by a watcher, with a readiness gate.
//! - [`lease`]: leases with a background keep-alive.
//! - [`election`]: leader election with fenced writes.
//! - [`compactor`]: periodic compaction of the history.

pub mod apply;
pub mod compactor;
pub mod config;
pub mod connection;
pub mod election;
pub mod error;
pub mod keys;
pub mod lease;
pub mod reflector;
pub mod resources;
pub mod watcher;

pub use apply::{ApplyOutcome, ApplyPlan, Change};
pub use config::StoreConfig;
pub use connection::Etcd;
pub use error::StoreError;
pub use resources::Store;
