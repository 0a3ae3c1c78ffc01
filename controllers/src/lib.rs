//! Shoal's controller manager: the reconcile loops.
//!
//! - [`runtime`]: the controller runtime every loop is built on (work
//!   queue, controller runner, decision log), after kube-runtime.
//! - [`service`]: replicated and global services, scaling, restart policy,
//!   moving tasks off down or drained nodes, task history.
//! - [`scheduler`]: assigns nodes to tasks (filters, then spread).
//! - [`update`]: rolling updates and rollbacks; service revisions.
//! - [`nodes`]: node readiness from agent heartbeats.
//! - [`endpoints`]: each service's VIP, published ports and backends.
//! - [`secrets`]: secrets' data keys sealed to the nodes that run tasks
//!   using them (SealedSecret objects, which only it writes).
//! - [`manager`]: leader election around all loops ([`manager::run_all`]).
//! - Shared by the loops: [`caches`] (one reflector per kind), [`tasks`]
//!   (effective task state, node conditions), [`writes`] (batched
//!   compare-and-swap writes), [`expectations`] (read-your-writes).
//!
//! Who writes what: Task objects (spec, `desiredState`, controller status)
//! only here — the service loop creates, stops and deletes them, the
//! scheduler sets `nodeId` and the `pending`/`assigned` status; the
//! Service's status; a Node's `status.state`. Never TaskObservations or
//! heartbeats (agents), nor any spec a user writes.
//!
//! The update loop also writes a replaced task's `desiredState`, its
//! start-first replacements, a Service's `status.updateStatus` (and its
//! spec for an automatic rollback) and ServiceRevision objects.
//!
//! The endpoints loop writes Endpoints objects (nobody else does) and a
//! Service's `status.endpointError`.
//!
//! Next, in the same shape: health and secret rotation.

pub mod caches;
pub mod endpoints;
pub mod expectations;
pub mod ipam;
pub mod manager;
pub mod nodes;
pub mod runtime;
pub mod scheduler;
pub mod secrets;
pub mod service;
pub mod tasks;
pub mod update;
pub mod writes;

pub use manager::{run_all, run_with, Settings};
