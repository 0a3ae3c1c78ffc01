//! Read-your-writes over a cache, after Kubernetes' ReplicaSet
//! "expectations": a reconciler remembers what it wrote and, before it
//! plans again, waits until its cache shows those writes.
//!
//! Why: the cache lags the store. A service reconcile that created three
//! tasks and runs again before the watch delivers them would see the slots
//! empty and create three more (creates of fresh names never conflict).
//!
//! # Caveats
//! - Waiting is bounded ([`Expectations::wait`]'s timeout): an expectation
//!   that can no longer come true (the object was changed again or deleted
//!   by someone else) must not wedge the loop. After the timeout the
//!   reconciler plans on what it has; compare-and-swap still guards writes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use shoal_crd::Resource;
use shoal_store::client::reflector::Reader;
use tokio::time::Instant;

use crate::writes::Written;

/// Outstanding writes per reconcile key.
#[derive(Default)]
pub struct Expectations {
    // A std Mutex: never held across an await.
    pending: Mutex<HashMap<String, Vec<Written>>>,
}

impl Expectations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers that reconciling `key` wrote `written`.
    pub fn expect(&self, key: &str, written: Vec<Written>) {
        if written.is_empty() {
            return;
        }
        self.lock().entry(key.to_string()).or_default().extend(written);
    }

    /// Waits (polling every 10 ms, at most `timeout`) until `reader` shows
    /// every write remembered for `key`, then forgets them. True when they
    /// all arrived in time.
    pub async fn wait<R: Resource>(&self, key: &str, reader: &Reader<R>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let done = {
                let mut pending = self.lock();
                let Some(writes) = pending.get_mut(key) else { return true };
                writes.retain(|w| !seen(reader, w));
                if writes.is_empty() {
                    pending.remove(key);
                    true
                } else {
                    false
                }
            };
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                self.lock().remove(key);
                tracing::warn!(object = key, "cache did not show this controller's writes in time; planning anyway");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Forgets everything (e.g. when leadership ends).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Written>>> {
        self.pending.lock().expect("expectations lock")
    }
}

fn seen<R: Resource>(reader: &Reader<R>, write: &Written) -> bool {
    match reader.get(&write.name) {
        Some(object) => !write.deleted && object.metadata().resource_version >= write.revision,
        None => write.deleted,
    }
}
