//! Shoal's store layer.
//!
//! - [`proto`]: the etcd v3 API subset, generated from `proto/` by protox.
//! - [`client`]: typed resources, watcher, reflector and leases over that API.
//! - [`server`]: the embedded, single-node etcd-API server (`shoal store`).

pub mod client;
pub mod proto;
pub mod server;
