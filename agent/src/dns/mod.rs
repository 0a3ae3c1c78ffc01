//! Service discovery: the agent answers DNS for the tasks of its node, as
//! Docker's embedded DNS server (127.0.0.11) does for containers.
//!
//! - [`names`]: service names → addresses, as data (pure).
//! - [`answer`]: one query → our answer or "forward it" (pure, wire format
//!   by `hickory-proto`).
//! - [`upstream`]: the host's resolvers and forwarding to them.
//! - [`server`]: UDP and TCP on one address.
//! - [`resolv_conf`]: the task's `/etc/resolv.conf`, in its own mount namespace.
//!
//! Names come from reflectors of Services and Endpoints (two watches of
//! the agent's own beside the data plane's: the DNS cache must not wait on
//! kernel programming, and Services carry the stack label Endpoints lack);
//! the [`Directory`] is rebuilt whole on every change and swapped in.
//!
//! Where it listens: port 53 of the node bridge's gateway (the `.1` of the
//! node's task subnet), the address every task in a namespace of its own
//! already routes through, in the host's network namespace (so forwarding
//! reaches a loopback resolver such as systemd-resolved). The bridge may
//! come up only once the node loop assigns the subnet:
//! [`Dns::listen_on`] is called then, and the server binds once its
//! caches are ready (a query before that would be forwarded as unknown).
//!
//! # Caveats
//! - Without network namespaces (`--network host`, the non-root default)
//!   there is no DNS: tasks use the host's `/etc/resolv.conf`, which the
//!   agent never changes, and a non-root agent could not bind port 53
//!   anyway. Service names do not resolve there; VIPs and published ports
//!   still work.
//! - A task that is not (yet) a backend of its service — starting, or
//!   unhealthy — asks as a task of no stack: short names that several
//!   stacks share are not answered for it until it is ready.
//! - The host's resolvers are read once, at start.
//! - While the agent is down (restarted, upgraded) its tasks keep running
//!   but their lookups time out, as Docker's containers' do while dockerd
//!   is down.

pub mod answer;
pub mod names;
pub mod resolv_conf;
pub mod server;
pub mod upstream;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use shoal_crd::{Endpoints, Service};
use shoal_store::client::reflector::reflector;
use shoal_store::client::Store;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use names::{Directory, Lookup};
use server::Server;
use upstream::HostResolver;

use crate::config::AgentConfig;
use crate::network::NetworkMode;

/// The DNS port.
pub const PORT: u16 = 53;
/// Wait before binding again when the address is taken (or not there yet).
const REBIND: Duration = Duration::from_secs(2);

/// The running DNS service of an agent; [`Dns::stop`] ends it.
pub struct Dns {
    address: watch::Sender<Option<Ipv4Addr>>,
    task: JoinHandle<()>,
}

/// The agent's DNS per its config: none on the host network (see the caveats).
pub fn start_for(store: &Store, config: &AgentConfig) -> Option<Dns> {
    if config.network == NetworkMode::Host {
        tracing::info!(node = %config.name, "no DNS for tasks on the host network: service names do not resolve in them");
        return None;
    }
    Some(Dns::start(store.clone(), HostResolver::from_host(), PORT))
}

impl Dns {
    /// Starts the caches; nothing listens until [`listen_on`](Self::listen_on).
    pub fn start(store: Store, resolver: HostResolver, port: u16) -> Self {
        let (address, addresses) = watch::channel(None);
        if resolver.servers.is_empty() {
            tracing::warn!("no upstream DNS server (resolv.conf has none): names other than services fail");
        }
        let task = tokio::spawn(run(store, resolver.servers, port, addresses));
        Self { address, task }
    }

    /// Serves on `address` from now on (once the caches are ready); the same
    /// address again changes nothing.
    pub fn listen_on(&self, address: Ipv4Addr) {
        self.address.send_if_modified(|current| {
            let changed = *current != Some(address);
            *current = Some(address);
            changed
        });
    }

    /// Stops serving (the sockets close with their tasks).
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Keeps the directory current and the listeners on the wanted address.
async fn run(store: Store, upstream: Vec<SocketAddr>, port: u16, mut addresses: watch::Receiver<Option<Ipv4Addr>>) {
    let (mut services, services_task) = reflector::<Service>(store.clone());
    let (mut endpoints, endpoints_task) = reflector::<Endpoints>(store);
    let _reflectors = AbortOnDrop(vec![services_task, endpoints_task]);
    services.wait_until_ready().await;
    endpoints.wait_until_ready().await;
    let directory = Arc::new(RwLock::new(Arc::new(Directory::from_objects(&services.list(), &endpoints.list()))));
    let mut listening: Option<(Ipv4Addr, AbortOnDrop)> = None;
    loop {
        let wanted = *addresses.borrow_and_update();
        if let Some(address) = wanted.filter(|a| listening.as_ref().map(|l| l.0) != Some(*a)) {
            listening = None;
            let own = SocketAddr::from((address, port));
            match bind(own).await {
                Ok((udp, tcp)) => {
                    tracing::info!(address = %own, upstream = ?upstream, "DNS for tasks listening");
                    let server = Arc::new(Server::new(directory.clone(), upstream.clone(), own));
                    let tasks = vec![tokio::spawn(server.clone().serve_udp(udp)), tokio::spawn(server.serve_tcp(tcp))];
                    listening = Some((address, AbortOnDrop(tasks)));
                }
                Err(err) => {
                    tracing::error!(address = %own, error = %err, retry_in = ?REBIND, "cannot listen for DNS: service names do not resolve in tasks")
                }
            }
        }
        let retry = wanted.is_some() && listening.is_none();
        tokio::select! {
            _ = services.changed() => {}
            _ = endpoints.changed() => {}
            changed = addresses.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(REBIND), if retry => {}
        }
        let next = Directory::from_objects(&services.list(), &endpoints.list());
        tracing::debug!(services = next.len(), "DNS names updated");
        *directory.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    }
}

async fn bind(address: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    Ok((UdpSocket::bind(address).await?, TcpListener::bind(address).await?))
}

/// Aborts its tasks when dropped (the listeners of an old address, the reflectors).
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
