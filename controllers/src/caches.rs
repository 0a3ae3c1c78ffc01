//! The caches every loop reads, started once per leadership term and
//! shared: one reflector per kind, many cheap readers.

use shoal_crd::{Node, Service, Task, TaskObservation};
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
        (Self { services, tasks, observations, nodes }, Reflectors(vec![a, b, c, d]))
    }

    /// Waits until every cache holds its first complete list.
    pub async fn wait_until_ready(&self) {
        let mut caches = self.clone();
        caches.services.wait_until_ready().await;
        caches.tasks.wait_until_ready().await;
        caches.observations.wait_until_ready().await;
        caches.nodes.wait_until_ready().await;
    }

    /// The service a task (or an observation of one) belongs to.
    pub fn service_of_task(&self, task: &str) -> Option<String> {
        self.tasks.get(task).map(|t| t.spec.service_name.clone())
    }
}
