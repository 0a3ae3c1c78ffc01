//! The embedded, single-node etcd v3 API server behind `shoal store`.
//!
//! # Design
//! - **Memory answers reads.** [`mvcc`] keeps every key's versions by
//!   revision; Range, read-only Txn, watch replay and lease queries read it
//!   under a short `RwLock` read guard at the newest *committed* revision.
//! - **One writer commits in groups.** Every write (Put, DeleteRange, a Txn
//!   that writes, Compact, lease grant/revoke/expiry) is queued to one
//!   thread ([`writer`]) that drains the queue, applies the requests in
//!   order to memory ([`apply`]), writes the batch to redb in ONE durable
//!   transaction ([`backend`]), then marks it committed, publishes its
//!   events to watchers and answers. An acknowledged write survives
//!   `kill -9`; many concurrent clients share one fsync.
//! - **Watchers never slow writers.** Events go out on a bounded broadcast;
//!   a watch stream that falls behind catches up from history ([`watch`]).
//! - **One file.** `DATA_DIR/shoal.redb` holds the revision log, leases and
//!   the store's identity; opening replays it into memory.
//!
//! # Caveats
//! - Lease bookkeeping (attached keys, new grants) is visible to lease
//!   queries a moment before its batch is durable; KV data never is.
//! - If a commit fails (disk full, I/O error) the store refuses all later
//!   writes with `Unavailable` instead of serving state the file lacks;
//!   restart it once the disk is fixed.
//! - History is kept until a client compacts, as in etcd without
//!   auto-compaction.
//! - A lagging watch stream is caught up from history, never cancelled for
//!   slowness (only when compaction overtook it); the replay is built in
//!   memory, so a huge backlog costs memory for a moment.
//! - `etcdctl --endpoints http://H:P endpoint status` fails with
//!   `RST_STREAM ... PROTOCOL_ERROR`: for that verb etcdctl dials the URL
//!   verbatim and sends `http://H:P` as the HTTP/2 `:authority`, which the
//!   `h2` server rejects as malformed (grpc-go tolerates it). Use
//!   `--endpoints H:P` there; every other verb works with either form.
//!
//! # Configuration
//! [`StoreOptions`]; `EmbeddedStore::open` reads them from the environment:
//! `SHOAL_STORE_PROGRESS_NOTIFY_INTERVAL` (e.g. `500ms`, `30s`, `10m`;
//! default `10m`, etcd's) is how often watchers that asked for
//! `progress_notify` get an empty progress response.

mod apply;
mod backend;
mod kv;
mod lease;
mod leases;
mod maintenance;
mod mvcc;
mod watch;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

pub use backend::{BackendError, FILE_NAME};
pub use maintenance::VERSION;
/// The gRPC crate the generated [`crate::proto`] clients are built on, so
/// tests and tools can name `Channel`, `Status` and `Code` without a
/// version-matched dependency of their own.
pub use tonic;

use crate::proto::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use writer::Core;

/// Env var overriding [`StoreOptions::progress_notify_interval`].
pub const PROGRESS_NOTIFY_ENV: &str = "SHOAL_STORE_PROGRESS_NOTIFY_INTERVAL";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("opening the store")]
    Open(#[from] BackendError),
    #[error("invalid {PROGRESS_NOTIFY_ENV}={value:?}: expected a duration such as 500ms, 30s or 10m")]
    BadInterval { value: String },
    #[error("reading the listen address")]
    Listener(#[source] std::io::Error),
    #[error("serving the etcd API")]
    Serve(#[source] tonic::transport::Error),
}

/// Tunables of the embedded store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How often a watcher created with `progress_notify` hears the current
    /// revision (etcd: 10 minutes).
    pub progress_notify_interval: Duration,
    /// How often expired leases are looked for.
    pub lease_check_interval: Duration,
    /// Revisions buffered for watch streams before a slow one must catch up
    /// from history.
    pub watch_feed_capacity: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            progress_notify_interval: Duration::from_secs(600),
            lease_check_interval: Duration::from_millis(250),
            watch_feed_capacity: 1024,
        }
    }
}

impl StoreOptions {
    /// Defaults, overridden by `SHOAL_STORE_PROGRESS_NOTIFY_INTERVAL`.
    pub fn from_env() -> Result<Self, ServerError> {
        let mut options = StoreOptions::default();
        if let Ok(value) = std::env::var(PROGRESS_NOTIFY_ENV) {
            options.progress_notify_interval = shoal_crd::parse_duration(&value)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or(ServerError::BadInterval { value })?;
        }
        Ok(options)
    }
}

/// How long a stopping server lets open streams (watches, keep-alives) finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// An opened store, ready to serve.
pub struct EmbeddedStore {
    core: Arc<Core>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in data_dir (one redb file inside,
    /// `DIR/shoal.redb`), with options from the environment.
    pub fn open(data_dir: &Path) -> Result<Self, ServerError> {
        Self::open_with(data_dir, StoreOptions::from_env()?)
    }

    pub fn open_with(data_dir: &Path, options: StoreOptions) -> Result<Self, ServerError> {
        let (backend, state, identity) = backend::Backend::open(data_dir, Instant::now())?;
        tracing::info!(path = %backend.path().display(), revision = state.committed, "store opened");
        Ok(EmbeddedStore { core: Core::start(backend, state, identity, options) })
    }

    /// Serves the etcd v3 gRPC API on `listener` until `shutdown` resolves, then returns.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let addr = listener.local_addr().map_err(ServerError::Listener)?;
        let _ = self.core.client_url.set(format!("http://{addr}"));
        let expiry =
            tokio::spawn(lease::expire_leases(Arc::downgrade(&self.core), self.core.options.lease_check_interval));
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            conn.inspect(|stream| {
                let _ = stream.set_nodelay(true);
            })
        });
        let core = self.core;
        let maintenance = || maintenance::MaintenanceService { core: core.clone() };
        let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
        let server = tonic::transport::Server::builder()
            .add_service(KvServer::new(kv::KvService { core: core.clone() }))
            .add_service(WatchServer::new(watch::WatchService { core: core.clone() }))
            .add_service(LeaseServer::new(lease::LeaseService { core: core.clone() }))
            .add_service(MaintenanceServer::new(maintenance()))
            .add_service(ClusterServer::new(maintenance()))
            .add_service(AuthServer::new(maintenance()))
            .serve_with_incoming_shutdown(incoming, shutdown.clone());
        // A graceful shutdown waits for open streams, and watches never end
        // by themselves: after a short grace the remaining ones are cut.
        let grace_over = async {
            shutdown.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let result = tokio::select! {
            served = server => served.map_err(ServerError::Serve),
            _ = grace_over => {
                tracing::info!(grace = ?SHUTDOWN_GRACE, "closing the streams still open");
                Ok(())
            }
        };
        expiry.abort();
        result
    }
}
