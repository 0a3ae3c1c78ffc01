//! Embedded etcd v3 API server (work in progress).
