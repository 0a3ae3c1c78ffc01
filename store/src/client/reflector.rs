//! An in-memory cache of one kind, fed by a [`watcher`](super::watcher).
//!
//! One writer (the task spawned by [`reflector`]) and many cheap readers.
//! A relist is swapped in whole. Readers should call
//! [`Reader::wait_until_ready`] before trusting the cache: until the first
//! list arrives it is empty, not "nothing exists".
//!
//! This is a cache and may be stale; writes must still go through the
//! store's compare-and-swap.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use shoal_crd::Resource;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::resources::Store;
use super::watcher::{watcher, WatchEvent};

/// Read access to a reflector's cache.
#[derive(Clone)]
pub struct Reader<R> {
    objects: Arc<RwLock<BTreeMap<String, Arc<R>>>>,
    ready: watch::Receiver<bool>,
    changes: watch::Receiver<u64>,
}

impl<R: Resource> Reader<R> {
    /// Waits until the first complete list has been loaded.
    pub async fn wait_until_ready(&mut self) {
        let _ = self.ready.wait_for(|ready| *ready).await;
    }

    /// One cached object.
    pub fn get(&self, name: &str) -> Option<Arc<R>> {
        self.objects.read().expect("reflector lock").get(name).cloned()
    }

    /// Every cached object, sorted by name.
    pub fn list(&self) -> Vec<Arc<R>> {
        self.objects.read().expect("reflector lock").values().cloned().collect()
    }

    /// Waits until the cache changes (any event).
    pub async fn changed(&mut self) {
        let _ = self.changes.changed().await;
    }
}

/// Starts caching kind `R`; the task runs until aborted.
pub fn reflector<R: Resource>(store: Store) -> (Reader<R>, JoinHandle<()>) {
    let objects: Arc<RwLock<BTreeMap<String, Arc<R>>>> = Arc::default();
    let (ready_tx, ready) = watch::channel(false);
    let (changes_tx, changes) = watch::channel(0u64);
    let cache = objects.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher::<R>(store);
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    apply_event(&cache, event);
                    ready_tx.send_replace(true);
                    changes_tx.send_modify(|n| *n += 1);
                }
                Err(err) => tracing::warn!(kind = R::KIND, error = %err, "watch failed; retrying"),
            }
        }
    });
    (Reader { objects, ready, changes }, task)
}

/// Applies one watch event to the cache. Stale events (older
/// resourceVersion than what is cached) are ignored.
fn apply_event<R: Resource>(cache: &RwLock<BTreeMap<String, Arc<R>>>, event: WatchEvent<R>) {
    // std Mutex/RwLock, not tokio's: nothing async happens while it is held.
    let mut map = cache.write().expect("reflector lock");
    match event {
        WatchEvent::Restarted(objects) => {
            *map = objects.into_iter().map(|o| (o.metadata().name.clone(), Arc::new(o))).collect();
        }
        WatchEvent::Applied(object) => {
            let name = object.metadata().name.clone();
            let newer = map.get(&name).is_none_or(|old| old.metadata().resource_version <= object.metadata().resource_version);
            if newer {
                map.insert(name, Arc::new(object));
            }
        }
        WatchEvent::Deleted(object) => {
            map.remove(&object.metadata().name);
        }
    }
}
