//! Shoal's store layer.
//!
//! - [`proto`]: the etcd v3 API subset, generated from `proto/` by protox.
//! - [`client`]: typed resources, watcher, reflector and leases over that API.
//! - [`bench`]: `shoal bench store`, the embedded store against etcd.
//! - [`server`]: the embedded, single-node etcd-API server (`shoal store`).

pub mod bench;
pub mod client;
pub mod proto;
pub mod server;
