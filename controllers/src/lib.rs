//! Shoal's controller manager: the reconcile loops.
//!
//! What exists: [`runtime`], the controller runtime every loop is built on
//! (work queue, controller runner, decision log), after kube-runtime. Leader
//! election and write fencing live in the store client
//! (`shoal_store::client::election`).
//!
//! What comes next, one module per loop in the same shape: service
//! (replicas, global mode, restart policy), scheduler, update (rolling
//! update and rollback), health, secret rotation and endpoints.

pub mod runtime;
