//! etcdctl against the embedded store (placeholder; filled in below).
mod support;
