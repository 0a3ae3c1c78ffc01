//! Periodic compaction of the store's history, as kube-apiserver does:
//! every `interval`, compact to the revision seen one interval earlier, so
//! at least one interval of history stays available to watchers while the
//! history (and the embedded store's file) stops growing without bound.
//!
//! Safe to run in several processes at once: compacting at a revision that
//! is already compacted is refused by the store and ignored here.

use std::future::Future;
use std::time::Duration;

use super::error::StoreError;
use super::resources::Store;
use crate::proto::CompactionRequest;

/// Compacts every `interval` until `shutdown` resolves.
pub async fn run_compactor(store: Store, interval: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut previous: Option<i64> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Some(revision) = previous {
            match compact(&store, revision).await {
                Ok(()) => tracing::debug!(revision, "compacted store history"),
                Err(err) => tracing::debug!(revision, error = %err, "compaction skipped"),
            }
        }
        previous = store.revision().await.ok();
    }
}

/// Compacts history before `revision`.
pub async fn compact(store: &Store, revision: i64) -> Result<(), StoreError> {
    let etcd = store.etcd();
    etcd.unary(etcd.kv().compact(CompactionRequest { revision, physical: false })).await?;
    Ok(())
}
