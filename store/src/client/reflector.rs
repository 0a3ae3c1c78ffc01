//! An in-memory cache of one kind, fed by a [`watcher`](super::watcher).
//!
//! One writer (the task spawned by [`reflector`]) and many cheap readers.
//! A relist is swapped in whole. Readers should call
//! [`Reader::wait_until_ready`] before trusting the cache: until the first
//! list arrives it is empty, not "nothing exists".
//!
//! This is a cache and may be stale; writes must still go through the
//! store's compare-and-swap.
//!
//! A reflector started with [`reflector_grouped`] also keeps an index (as
//! client-go's informers do): objects grouped by a key computed from each
//! (tasks by service), updated under the same lock as the cache, so
//! [`Reader::group`] costs the size of the group, not of the cache.

use std::collections::{BTreeMap, HashMap};
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
    objects: Arc<RwLock<Cache<R>>>,
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
        self.objects.read().expect("reflector lock").objects.get(name).cloned()
    }

    /// Every cached object, sorted by name.
    pub fn list(&self) -> Vec<Arc<R>> {
        self.objects.read().expect("reflector lock").objects.values().cloned().collect()
    }

    /// Every cached object whose group key is `key`, sorted by name. Only
    /// a reader of [`reflector_grouped`] has groups; any other finds none.
    pub fn group(&self, key: &str) -> Vec<Arc<R>> {
        let cache = self.objects.read().expect("reflector lock");
        debug_assert!(cache.groups.is_some(), "Reader::group on a reflector started without a group key");
        cache
            .groups
            .as_ref()
            .and_then(|g| g.members.get(key))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Waits until the cache changes (any event).
    pub async fn changed(&mut self) {
        let _ = self.changes.changed().await;
    }
}

/// The cache behind a [`Reader`].
struct Cache<R> {
    objects: BTreeMap<String, Arc<R>>,
    groups: Option<Groups<R>>,
}

/// Objects by group key, then by name.
struct Groups<R> {
    key: fn(&R) -> String,
    members: HashMap<String, BTreeMap<String, Arc<R>>>,
}

impl<R: Resource> Cache<R> {
    fn insert(&mut self, object: Arc<R>) {
        let name = object.metadata().name.clone();
        if let Some(groups) = &mut self.groups {
            groups.add(object.clone());
        }
        if let Some(old) = self.objects.insert(name, object.clone()) {
            if let Some(groups) = &mut self.groups {
                if (groups.key)(&old) != (groups.key)(&object) {
                    groups.remove(&old);
                }
            }
        }
    }

    fn remove(&mut self, name: &str) {
        if let (Some(old), Some(groups)) = (self.objects.remove(name), &mut self.groups) {
            groups.remove(&old);
        }
    }
}

impl<R: Resource> Groups<R> {
    fn add(&mut self, object: Arc<R>) {
        let name = object.metadata().name.clone();
        self.members.entry((self.key)(&object)).or_default().insert(name, object);
    }

    fn remove(&mut self, object: &R) {
        let key = (self.key)(object);
        if let Some(members) = self.members.get_mut(&key) {
            members.remove(&object.metadata().name);
            if members.is_empty() {
                self.members.remove(&key);
            }
        }
    }
}

/// Starts caching kind `R`; the task runs until aborted.
pub fn reflector<R: Resource>(store: Store) -> (Reader<R>, JoinHandle<()>) {
    start(store, None)
}

/// Starts caching kind `R` with its objects also grouped by `key` (read
/// with [`Reader::group`]); the task runs until aborted.
pub fn reflector_grouped<R: Resource>(store: Store, key: fn(&R) -> String) -> (Reader<R>, JoinHandle<()>) {
    start(store, Some(key))
}

fn start<R: Resource>(store: Store, key: Option<fn(&R) -> String>) -> (Reader<R>, JoinHandle<()>) {
    let groups = key.map(|key| Groups { key, members: HashMap::new() });
    let objects = Arc::new(RwLock::new(Cache { objects: BTreeMap::new(), groups }));
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
fn apply_event<R: Resource>(cache: &RwLock<Cache<R>>, event: WatchEvent<R>) {
    // std Mutex/RwLock, not tokio's: nothing async happens while it is held.
    let mut cache = cache.write().expect("reflector lock");
    match event {
        WatchEvent::Restarted(objects) => {
            cache.objects.clear();
            if let Some(groups) = &mut cache.groups {
                groups.members.clear();
            }
            for object in objects {
                cache.insert(Arc::new(object));
            }
        }
        WatchEvent::Applied(object) => {
            let name = &object.metadata().name;
            let newer = cache
                .objects
                .get(name)
                .is_none_or(|old| old.metadata().resource_version <= object.metadata().resource_version);
            if newer {
                cache.insert(Arc::new(object));
            }
        }
        WatchEvent::Deleted(object) => cache.remove(&object.metadata().name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crd::{Node, NodeSpec};

    fn node(name: &str, zone: &str, revision: i64) -> Node {
        let mut node = Node::new(name, NodeSpec::default());
        node.spec.labels.insert("zone".into(), zone.into());
        node.metadata.resource_version = revision;
        node
    }

    fn names(cache: &RwLock<Cache<Node>>, zone: &str) -> Vec<String> {
        let cache = cache.read().unwrap();
        cache.groups.as_ref().unwrap().members.get(zone).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    #[test]
    fn groups_follow_every_kind_of_event() {
        let groups = Groups { key: |n: &Node| n.spec.labels["zone"].clone(), members: HashMap::new() };
        let cache = RwLock::new(Cache { objects: BTreeMap::new(), groups: Some(groups) });
        apply_event(&cache, WatchEvent::Restarted(vec![node("a", "x", 1), node("b", "x", 1), node("c", "y", 1)]));
        assert_eq!(names(&cache, "x"), ["a", "b"]);
        apply_event(&cache, WatchEvent::Applied(node("b", "y", 2)));
        assert_eq!(
            (names(&cache, "x"), names(&cache, "y")),
            (vec!["a".to_string()], vec!["b".to_string(), "c".to_string()])
        );
        apply_event(&cache, WatchEvent::Applied(node("b", "x", 1)));
        assert_eq!(names(&cache, "x"), ["a"], "a stale event changes nothing");
        apply_event(&cache, WatchEvent::Deleted(node("a", "x", 3)));
        assert!(names(&cache, "x").is_empty());
        assert!(!cache.read().unwrap().groups.as_ref().unwrap().members.contains_key("x"), "empty groups are dropped");
    }
}
