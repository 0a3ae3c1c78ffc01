//! The caches every loop reads, started once per leadership term and
//! shared: one reflector per kind, many cheap readers.

use shoal_crd::{Config, FileKind, Node, Resource, Secret, Service, Task, TaskObservation};
use shoal_store::client::reflector::{reflector, reflector_grouped, Reader};
use shoal_store::client::Store;
use tokio::task::JoinHandle;

/// Readers of every kind the loops look at.
#[derive(Clone)]
pub struct Caches {
    pub services: Reader<Service>,
    /// Grouped by service name (`tasks.group(service)`).
    pub tasks: Reader<Task>,
    pub observations: Reader<TaskObservation>,
    pub nodes: Reader<Node>,
    /// For their versions (`metadata.generation`), which new tasks record.
    pub configs: Reader<Config>,
    pub secrets: Reader<Secret>,
}

/// The reflectors behind [`Caches`]; dropping this stops them.
pub struct Reflectors(Vec<JoinHandle<()>>);

impl Drop for Reflectors {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Caches {
    /// Starts a reflector per kind on `store`.
    pub fn start(store: &Store) -> (Self, Reflectors) {
        let (services, a) = reflector::<Service>(store.clone());
        // Grouped by service: the loops read one service's tasks at a time.
        let (tasks, b) = reflector_grouped::<Task>(store.clone(), |t| t.spec.service_name.clone());
        let (observations, c) = reflector::<TaskObservation>(store.clone());
        let (nodes, d) = reflector::<Node>(store.clone());
        let (configs, e) = reflector::<Config>(store.clone());
        let (secrets, f) = reflector::<Secret>(store.clone());
        (Self { services, tasks, observations, nodes, configs, secrets }, Reflectors(vec![a, b, c, d, e, f]))
    }

    /// Waits until every cache holds its first complete list.
    pub async fn wait_until_ready(&self) {
        let mut caches = self.clone();
        caches.services.wait_until_ready().await;
        caches.tasks.wait_until_ready().await;
        caches.observations.wait_until_ready().await;
        caches.nodes.wait_until_ready().await;
        caches.configs.wait_until_ready().await;
        caches.secrets.wait_until_ready().await;
    }

    /// `service` as new tasks carry it: each config and secret reference
    /// with the object's current version (none for a missing object).
    pub fn resolved(&self, service: &Service) -> Service {
        let version = |kind: FileKind, name: &str| match kind {
            FileKind::Config => self.configs.get(name).map(|c| c.metadata().generation),
            FileKind::Secret => self.secrets.get(name).map(|s| s.metadata().generation),
        };
        Service { spec: service.spec.resolved(version), ..service.clone() }
    }

    /// The services that reference config or secret `name`.
    pub fn services_using(&self, kind: FileKind, name: &str) -> Vec<String> {
        let uses = |s: &Service| match kind {
            FileKind::Config => s.spec.configs.iter().any(|r| r.source == name),
            FileKind::Secret => s.spec.secrets.iter().any(|r| r.source == name),
        };
        self.services.list().iter().filter(|s| uses(s)).map(|s| s.metadata.name.clone()).collect()
    }

    /// The service a task (or an observation of one) belongs to.
    pub fn service_of_task(&self, task: &str) -> Option<String> {
        self.tasks.get(task).map(|t| t.spec.service_name.clone())
    }
}
