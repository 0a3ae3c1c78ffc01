//! The one error type of the store client, with variants named for what
//! went wrong so callers can retry conflicts and users can act on the rest.

use std::time::Duration;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No endpoint answered within the connect timeout.
    #[error("cannot reach the store at {endpoints}: {reason}")]
    Unreachable { endpoints: String, reason: String },
    /// A request got no answer in time.
    #[error("the store at {endpoint} did not answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    /// The endpoint URL or TLS files are unusable.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// The object changed since it was read (compare-and-swap failed): re-read and retry.
    #[error("{kind} {name:?} was modified concurrently (expected revision {expected}); retry")]
    Conflict { kind: &'static str, name: String, expected: i64 },
    /// A multi-object write lost a race with another writer.
    #[error("the store changed while applying {what}; retry")]
    TxnConflict { what: String },
    /// A fenced write failed because the fence no longer holds (e.g. this
    /// process is no longer the leader).
    #[error("write refused: this writer's fence no longer holds (leadership lost?)")]
    FenceLost,
    /// The object does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// Creating an object whose name is taken.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    /// A stored value is not a valid object of its kind.
    #[error("cannot decode {key}: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// The watched history was compacted past the requested revision.
    #[error("revision {requested} has been compacted (oldest available: {compact_revision})")]
    Compacted { requested: i64, compact_revision: i64 },
    /// Any other answer from the store.
    #[error("store request to {endpoint} failed: {status}")]
    Rpc {
        endpoint: String,
        #[source]
        status: tonic::Status,
    },
}

impl StoreError {
    /// True for errors a caller should retry after re-reading.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. } | StoreError::TxnConflict { .. } | StoreError::FenceLost)
    }
}
