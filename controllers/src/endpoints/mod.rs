//! The endpoints loop: one Endpoints object per service
//! (`{prefix}/endpoints/<service>`) saying how to reach it — its virtual
//! IP, its ports with the published ones allocated, and its backends —
//! for the agents to program their data plane and answer DNS from.
//!
//! - [`allocate`]: VIPs from the service CIDR and published ports, pure.
//! - [`backends`]: which tasks take traffic, and why not, pure.
//!
//! Writes: Endpoints objects (create, update, delete; nobody else writes
//! them) and a Service's `status.endpointError`. Never a task.
//!
//! # Guarantees
//! - An Endpoints object is written only when it changes, compare-and-swap
//!   on the leader's fenced store, and deleted when its service is gone
//!   (which frees its VIP and ports).
//! - A task leaves the backends as soon as it is told to stop (its desired
//!   state moves past running), before its agent stops it; it joins only
//!   once ready.
//! - Reconciles run one at a time, each on a cache that shows the loop's
//!   own earlier writes, so two services never get the same VIP or port.
//!
//! # Caveats
//! - The Endpoints cache may be stale with respect to a new leader's
//!   predecessor; compare-and-swap makes such a write fail and retry.

pub mod allocate;
pub mod backends;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_crd::{Endpoints, EndpointsSpec, Service, Task, TaskObservation};
use shoal_store::client::reflector::{reflector, Reader};
use shoal_store::client::{Store, StoreError};
use tokio::task::JoinHandle;

use crate::caches::Caches;
use crate::expectations::Expectations;
use crate::runtime::{Action, Controller, Decision, Recorder};
use crate::tasks::TaskView;
use crate::writes::Batch;
use allocate::{allocate, Ipv4Net, Taken};
use backends::Candidate;

/// The controller's name in logs and events.
pub const NAME: &str = "endpoints";

/// Every write of this loop is expected under this one key: allocation
/// looks at all services' Endpoints, so every reconcile waits for all of it.
const ALL: &str = "*";

/// What the endpoints loop's reconciles share.
pub struct Context {
    pub store: Store,
    pub caches: Caches,
    pub endpoints: Reader<Endpoints>,
    /// Where VIPs come from.
    pub service_cidr: Ipv4Net,
    pub recorder: Recorder,
    expectations: Expectations,
}

impl Context {
    /// The context, with a reflector of Endpoints objects that runs until
    /// the returned task is aborted.
    pub fn start(store: Store, caches: Caches, service_cidr: Ipv4Net) -> (Self, JoinHandle<()>) {
        let (endpoints, task) = reflector::<Endpoints>(store.clone());
        let ctx = Self {
            store,
            caches,
            endpoints,
            service_cidr,
            recorder: Recorder::new(NAME),
            expectations: Expectations::new(),
        };
        (ctx, task)
    }
}

/// Runs the endpoints loop until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    let caches = ctx.caches.clone();
    let (by_task, by_node, refused) = (caches.clone(), caches.clone(), caches.services.clone());
    Controller::new(NAME, caches.services.clone())
        .watches(caches.tasks.clone(), |task: &Task| vec![task.spec.service_name.clone()])
        .watches(caches.observations.clone(), move |o: &TaskObservation| {
            by_task.service_of_task(&o.metadata.name).into_iter().collect()
        })
        .watches(caches.nodes.clone(), move |node| services_on(&by_node, &node.metadata.name))
        // A service's Endpoints changed or went: services refused a port
        // or a VIP may get it now.
        .watches(ctx.endpoints.clone(), move |e: &Endpoints| {
            let waiting =
                refused.list().into_iter().filter(|s| s.status.as_ref().is_some_and(|s| !s.endpoint_error.is_empty()));
            std::iter::once(e.metadata.name.clone()).chain(waiting.map(|s| s.metadata.name.clone())).collect()
        })
        .concurrency(1)
        .resync_every(Duration::from_secs(30))
        .run(reconcile, |_, _: &StoreError, _| Action::requeue(Duration::from_millis(200)), ctx, shutdown)
        .await;
}

/// The services with a task on `node`.
fn services_on(caches: &Caches, node: &str) -> Vec<String> {
    let tasks = caches.tasks.list();
    let services: BTreeSet<&str> = tasks
        .iter()
        .filter(|t| t.spec.node_id.as_deref() == Some(node))
        .map(|t| t.spec.service_name.as_str())
        .collect();
    services.into_iter().map(str::to_string).collect()
}

/// Brings one service's Endpoints (and its `endpointError`) in line with
/// the service and its tasks; deletes them once the service is gone.
pub async fn reconcile(key: String, service: Option<Arc<Service>>, ctx: Arc<Context>) -> Result<Action, StoreError> {
    ctx.expectations.wait(ALL, &ctx.endpoints, Duration::from_secs(3)).await;
    let current = ctx.endpoints.get(&key);
    let Some(service) = service else {
        if let Some(current) = current {
            write(&ctx, |batch| batch.delete(&ctx.store, &*current)).await?;
            let freed = current.spec.vip.as_deref().map_or(String::new(), |vip| format!("; VIP {vip} released"));
            ctx.recorder.record(&Decision::about_name(&key, "deleted endpoints", format!("service removed{freed}")));
        }
        return Ok(Action::await_change());
    };

    let all = ctx.endpoints.list();
    let taken = Taken::by_others(all.iter().map(|e| &**e), &key);
    let allocation = allocate(&service, current.as_ref().map(|c| &c.spec), &taken, ctx.service_cidr);
    let views: Vec<(TaskView, Option<Arc<TaskObservation>>)> = ctx
        .caches
        .tasks
        .list()
        .into_iter()
        .filter(|t| t.spec.service_name == key)
        .map(|t| {
            let observation = ctx.caches.observations.get(&t.metadata.name);
            (TaskView::new(t, observation.as_deref()), observation)
        })
        .collect();
    let nodes: Vec<_> = views.iter().map(|(v, _)| v.node().and_then(|n| ctx.caches.nodes.get(n))).collect();
    let candidates: Vec<Candidate> = views
        .iter()
        .zip(&nodes)
        .map(|((view, observation), node)| Candidate {
            view,
            observation: observation.as_deref(),
            node: node.as_deref(),
        })
        .collect();
    let spec = EndpointsSpec {
        service: key.clone(),
        service_uid: service.metadata.uid.clone(),
        endpoint_mode: service.spec.endpoint_mode,
        vip: allocation.vip.map(|vip| vip.to_string()),
        ports: allocation.ports,
        backends: backends::select(&candidates),
    };

    let old = current.as_ref().map(|c| c.spec.clone()).unwrap_or_default();
    if current.as_ref().is_none_or(|c| c.spec != spec) {
        let next = Endpoints::new(key.clone(), spec.clone());
        match &current {
            Some(current) => write(&ctx, |batch| batch.update(&ctx.store, &**current, next)).await?,
            None => write(&ctx, |batch| batch.create(&ctx.store, next)).await?,
        }
        for (action, reason) in decisions(&old, &spec, &candidates, ctx.service_cidr) {
            ctx.recorder.record(&Decision::about(&*service, action, reason));
        }
    }
    write_error(&ctx, &service, allocation.refused.join("; ")).await?;
    Ok(Action::await_change())
}

/// Commits the one write `plan` adds, and expects it in the cache.
async fn write(ctx: &Context, plan: impl FnOnce(&mut Batch)) -> Result<(), StoreError> {
    let mut batch = Batch::new();
    plan(&mut batch);
    let written = batch.commit(&ctx.store, "endpoints").await?;
    ctx.expectations.expect(ALL, written);
    Ok(())
}

/// What changed from `old` to `new`, as decision lines (action, reason).
fn decisions(
    old: &EndpointsSpec,
    new: &EndpointsSpec,
    candidates: &[Candidate],
    cidr: Ipv4Net,
) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    if old.vip != new.vip {
        let reason = match (&old.vip, &new.vip) {
            (_, Some(_)) if old.service_uid != new.service_uid => {
                format!("new service: allocated from service CIDR {cidr}")
            }
            (Some(was), Some(_)) => format!("{was} is no longer valid or is held by another service"),
            (Some(_), None) => "endpoint mode dnsrr has no virtual IP".to_string(),
            _ => format!("allocated from service CIDR {cidr}"),
        };
        lines.push((format!("vip {}", new.vip.as_deref().unwrap_or("none")), reason));
    }
    if old.ports != new.ports {
        let ports: Vec<String> = new
            .ports
            .iter()
            .map(|p| {
                let published = p.published.map_or("-".to_string(), |p| p.to_string());
                format!("{published}→{}/{} ({:?})", p.target, allocate::protocol(p.protocol), p.publish_mode)
                    .to_lowercase()
            })
            .collect();
        let ports = if ports.is_empty() { "none".to_string() } else { ports.join(", ") };
        lines.push((
            format!("ports {ports}"),
            "published as the spec asks; ports it leaves open come from 30000-32767".to_string(),
        ));
    }
    lines.extend(backends::change(&old.backends, &new.backends, candidates));
    lines
}

/// Writes the service's `status.endpointError` when it changed, with a
/// decision line saying what was refused (or that nothing is any more).
async fn write_error(ctx: &Context, service: &Service, error: String) -> Result<(), StoreError> {
    let status = service.status.clone().unwrap_or_default();
    if status.endpoint_error == error {
        return Ok(());
    }
    let mut next = service.clone();
    next.status = Some(shoal_crd::ServiceStatus { endpoint_error: error.clone(), ..status });
    match ctx.store.update(next).await {
        // The service changed meanwhile: that change queues another reconcile.
        Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => return Ok(()),
        other => other?,
    };
    let decision = if error.is_empty() {
        Decision::about(service, "endpoints complete", "everything the service asks for is allocated now")
    } else {
        Decision::about(service, "refused", error)
    };
    ctx.recorder.record(&decision);
    Ok(())
}
