//! Generated etcd v3 API types, clients and servers (see `proto/`).
//!
//! The same generated code serves both sides: the client half talks to a
//! real etcd or to `shoal store`; the server half is implemented by
//! [`crate::server`].

#![allow(clippy::all, missing_docs)]

/// etcd's `mvccpb` package: key-values and watch events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's `etcdserverpb` package: the KV, Watch, Lease, Cluster,
/// Maintenance and Auth services.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub use etcdserverpb::*;
pub use mvccpb::{event::EventType, Event, KeyValue};
