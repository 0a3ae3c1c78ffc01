//! Shoal's store layer.
//!
//! - [`proto`]: the etcd v3 API subset, generated from `proto/` by protox.
//! - [`server`]: the embedded, single-node etcd-API server (`shoal store`).

pub mod proto;
pub mod server;
