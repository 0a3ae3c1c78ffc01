//! The controller manager: campaigns for leadership and, while leading,
//! runs every loop on the leader's fenced store; when leadership is lost,
//! stops them all and campaigns again.
//!
//! # Guarantees
//! - Loops run only while this process leads, and every write they make
//!   carries the leadership fence: a deposed leader's writes fail in the
//!   store even before it notices.
//! - Each term starts from fresh caches (nothing from a previous term is
//!   trusted), and with node states settled against the heartbeats before
//!   any loop that moves tasks starts.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use shoal_crd::ServiceRevision;
use shoal_store::client::election::Election;
use shoal_store::client::reflector::reflector;
use shoal_store::client::Store;

use crate::caches::Caches;
use crate::endpoints::allocate::{default_service_cidr, Ipv4Net};
use crate::nodes::heartbeats::Heartbeats;
use crate::{endpoints, nodes, scheduler, secrets, service, update};

/// The election every controller manager campaigns in.
pub const ELECTION: &str = "controllers";

/// How a controller manager runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Who this is, in the election key and logs.
    pub identity: String,
    /// Leadership lasts this long after the last lease renewal.
    pub lease_ttl_secs: i64,
    /// Finished tasks kept per slot.
    pub task_history_limit: usize,
    /// Spec revisions kept per service (for rollback).
    pub revision_history_limit: usize,
    /// The cluster's private keys (`--encryption-key-file`, re-read when it
    /// changes), with which the secrets loop re-seals secrets to nodes;
    /// none: that loop idles.
    pub sealing_keys: secrets::keys::KeyRing,
    /// Where services' virtual IPs come from.
    pub service_cidr: Ipv4Net,
}

impl Settings {
    /// Defaults for `identity`: a 5 s lease, Docker's history limit of 5, 10 revisions.
    pub fn new(identity: &str) -> Self {
        Self {
            identity: identity.to_string(),
            lease_ttl_secs: 5,
            task_history_limit: service::DEFAULT_HISTORY_LIMIT,
            revision_history_limit: update::revisions::DEFAULT_LIMIT,
            sealing_keys: secrets::keys::KeyRing::none(),
            service_cidr: default_service_cidr(),
        }
    }
}

/// Runs every loop under leader election with default settings until
/// `shutdown` resolves.
pub async fn run_all(store: Store, identity: &str, shutdown: impl Future<Output = ()> + Send) {
    run_with(store, Settings::new(identity), shutdown).await
}

/// Runs every loop under leader election until `shutdown` resolves;
/// resigns on the way out so a standby takes over at once.
pub async fn run_with(store: Store, settings: Settings, shutdown: impl Future<Output = ()> + Send) {
    let election = Election::new(store, ELECTION, &settings.identity, settings.lease_ttl_secs);
    let shutdown = shutdown.shared();
    loop {
        let leadership = tokio::select! {
            won = election.campaign() => won,
            _ = shutdown.clone() => return,
        };
        let leadership = match leadership {
            Ok(leadership) => leadership,
            Err(err) => {
                tracing::warn!(error = %err, "campaign failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.clone() => return,
                }
            }
        };
        tracing::info!(identity = %settings.identity, "leading: starting controllers");
        // An async block rather than `select(..).map(..)`: the closure form
        // is not `Send` for every lifetime, so callers could not spawn us.
        let (lost, stop) = (leadership.lost(), shutdown.clone());
        let term_over = async move {
            tokio::select! {
                _ = lost => {}
                _ = stop => {}
            }
        };
        lead(leadership.store(), &settings, term_over).await;
        if shutdown.clone().now_or_never().is_some() {
            if let Err(err) = leadership.resign().await {
                tracing::warn!(error = %err, "resigning failed; the lease will expire on its own");
            }
            return;
        }
        tracing::warn!(identity = %settings.identity, "leadership lost: controllers stopped; campaigning again");
    }
}

/// Runs every loop on `store` (fenced) until `term_over` resolves.
pub async fn lead(store: Store, settings: &Settings, term_over: impl Future<Output = ()> + Send) {
    let (caches, _reflectors) = Caches::start(&store);
    let (revisions, revisions_task) = reflector::<ServiceRevision>(store.clone());
    let _revisions_task = AbortOnDrop(revisions_task);
    let (heartbeats, heartbeat_task) = Heartbeats::start(store.clone());
    let _heartbeat_task = AbortOnDrop(heartbeat_task);
    let term_over = term_over.shared();
    let service = Arc::new(service::Context::new(store.clone(), caches.clone(), settings.task_history_limit));
    let scheduler = Arc::new(scheduler::Context::new(store.clone(), caches.clone()));
    let update =
        Arc::new(update::Context::new(store.clone(), caches.clone(), revisions, settings.revision_history_limit));
    let (secrets, _secret_reflectors) =
        secrets::Context::start(store.clone(), caches.clone(), settings.sealing_keys.clone());
    let (endpoints, endpoints_task) = endpoints::Context::start(store.clone(), caches.clone(), settings.service_cidr);
    let (endpoints, _endpoints_task) = (Arc::new(endpoints), AbortOnDrop(endpoints_task));
    let nodes = Arc::new(nodes::Context::new(store, caches.nodes.clone(), heartbeats));
    let settled = async {
        nodes::settle(&nodes).await;
        caches.wait_until_ready().await;
    };
    tokio::select! {
        _ = settled => {}
        _ = term_over.clone() => return,
    }
    tokio::join!(
        service::run(service, term_over.clone()),
        scheduler::run(scheduler, term_over.clone()),
        update::run(update, term_over.clone()),
        nodes::run(nodes, term_over.clone()),
        secrets::run(secrets, term_over.clone()),
        endpoints::run(endpoints, term_over.clone()),
    );
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
