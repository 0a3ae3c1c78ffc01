//! The userspace data plane, for agents that are not root (`shoal up` as a
//! normal user): the agent itself listens on every published port and
//! proxies each TCP connection (and each UDP client's flow) to a backend,
//! round-robin — kube-proxy's original userspace mode, in Swarm's words.
//!
//! - [`routes`]: published port → backends' socket addresses (pure).
//! - [`Table`]: one published port's backends, swapped whole by `apply`,
//!   read once per new connection; [`rotation`] the order they are tried in.
//! - [`UserspaceDataPlane`]: opens a listener per published port (on every
//!   [`listen_addresses`]) as ports come, closes it as they go.
//!
//! # Guarantees
//! - When `apply` returns, a removed backend gets no new connection or UDP
//!   flow from this node (the draining handshake relies on it), and the
//!   listeners of ports no longer published are closed.
//! - Connections already proxied carry on when the backends change or the
//!   port is unpublished; they end when either side closes.
//! - A backend that refuses (a task that just stopped) is skipped: the
//!   connection goes to the next one, and fails only when all refuse.
//! - A port that cannot be bound (below 1024 without root, or in use) is
//!   logged with the port and why, and tried again every [`REBIND`]; the
//!   other ports work meanwhile, and `apply` does not fail for it.
//!
//! # Caveats
//! - Published ports only: service VIPs need addresses and NAT that a
//!   normal user cannot set up. Tasks reach each other through published ports.
//! - Backends see the proxy's address, not the client's (as Swarm's ingress).
//! - A UDP flow is one client address ↔ one backend, forgotten after
//!   [`UDP_IDLE`] without a datagram either way; a refused datagram ends it
//!   and the client's next one picks a backend again.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use shoal_crd::{Endpoints, PortProtocol, PublishMode};
use tokio::net::{TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::task::{JoinHandle, JoinSet};

use super::{Cluster, DataPlane, DataPlaneError};

/// How long a connect to one backend may take before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A UDP flow without a datagram for this long is forgotten (conntrack's UDP default).
pub const UDP_IDLE: Duration = Duration::from_secs(30);
/// How often a port that could not be bound is tried again.
pub const REBIND: Duration = Duration::from_secs(5);

/// A published port: protocol and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Published {
    pub udp: bool,
    pub port: u16,
}

impl std::fmt::Display for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, if self.udp { "udp" } else { "tcp" })
    }
}

/// Where one published port's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub service: String,
    pub backends: Vec<SocketAddr>,
}

/// Every published port of `endpoints` with its backends as seen from node
/// `local`: ingress ports go to every backend, host-mode ports only to this
/// node's (and are absent when it has none). A backend is reached at its
/// address and its host port for the target port; one on this node with
/// mapped ports (a host-network task) at 127.0.0.1, whatever address its
/// node advertises. The first service to claim a port keeps it.
pub fn routes(endpoints: &[Arc<Endpoints>], local: &str) -> BTreeMap<Published, Route> {
    let mut routes = BTreeMap::new();
    for e in endpoints {
        let spec = &e.spec;
        for port in &spec.ports {
            let Some(published) = port.published else { continue };
            let key = Published { udp: port.protocol == PortProtocol::Udp, port: published };
            let host_mode = port.publish_mode == PublishMode::Host;
            let backends: Vec<SocketAddr> = spec
                .backends
                .iter()
                .filter(|b| !host_mode || b.node == local)
                .filter_map(|b| {
                    let ip = match b.address.parse::<IpAddr>() {
                        Ok(_) if b.node == local && !b.ports.is_empty() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        Ok(ip) => ip,
                        Err(_) => {
                            tracing::warn!(service = %spec.service, task = %b.task, address = %b.address, "backend address is not an IP address: left out of the data plane");
                            return None;
                        }
                    };
                    Some(SocketAddr::new(ip, b.port(port.target)))
                })
                .collect();
            if host_mode && backends.is_empty() {
                continue;
            }
            if let Some(Route { service, .. }) = routes.get(&key) {
                tracing::warn!(port = %key, service = %spec.service, holder = %service, "published port claimed twice; the first service keeps it");
                continue;
            }
            routes.insert(key, Route { service: spec.service.clone(), backends });
        }
    }
    routes
}

/// Where published ports listen for an agent advertising `advertise`: that
/// address, plus 127.0.0.1 when it is another one (so `curl
/// 127.0.0.1:<published>` works on every node, as with the kernel data
/// planes); every address when it is unspecified (`0.0.0.0`).
pub fn listen_addresses(advertise: &str) -> Vec<IpAddr> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    match advertise.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() || ip.is_loopback() => vec![ip],
        Ok(ip) => vec![ip, loopback],
        Err(_) => vec![loopback],
    }
}

/// Indices `0..len` starting at `start % len` and wrapping: the order in
/// which a new connection tries the backends.
pub fn rotation(len: usize, start: usize) -> impl Iterator<Item = usize> {
    let first = if len == 0 { 0 } else { start % len };
    (0..len).map(move |i| (first + i) % len)
}

/// One published port's backends. A `std` lock, not tokio's: nothing
/// awaits while holding it, and `apply` runs off the async threads.
#[derive(Debug, Default)]
pub struct Table {
    backends: RwLock<Arc<[SocketAddr]>>,
    next: AtomicUsize,
}

impl Table {
    pub fn new(backends: Vec<SocketAddr>) -> Self {
        Self { backends: RwLock::new(backends.into()), next: AtomicUsize::new(0) }
    }

    /// Replaces the backends; connections picked from now on see only these.
    pub fn set(&self, backends: Vec<SocketAddr>) {
        *self.backends.write().unwrap_or_else(|p| p.into_inner()) = backends.into();
    }

    /// The backends a new connection tries, in order: round-robin's turn first.
    pub fn pick(&self) -> Vec<SocketAddr> {
        let backends = self.backends.read().unwrap_or_else(|p| p.into_inner()).clone();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        rotation(backends.len(), start).map(|i| backends[i]).collect()
    }
}

/// One published port being served.
struct Listener {
    service: String,
    table: Arc<Table>,
    /// One per listen address: binding (and retrying) then accepting.
    tasks: Vec<JoinHandle<()>>,
}

/// Published ports proxied by the agent process. `apply` and `cleanup`
/// block (`Handle::block_on`) until closed listeners are gone: call them
/// off the async threads, as the sync loop does (`spawn_blocking`).
pub struct UserspaceDataPlane {
    runtime: Handle,
    listen: Vec<IpAddr>,
    listeners: BTreeMap<Published, Listener>,
}

impl UserspaceDataPlane {
    /// Listeners run on `runtime`; published ports listen on `listen`.
    pub fn new(runtime: Handle, listen: Vec<IpAddr>) -> Self {
        Self { runtime, listen, listeners: BTreeMap::new() }
    }

    fn open(&self, key: Published, route: Route) -> Listener {
        let table = Arc::new(Table::new(route.backends));
        let tasks = self
            .listen
            .iter()
            .map(|ip| {
                let addr = SocketAddr::new(*ip, key.port);
                // Bound here, not in the task: a failure is logged before apply returns.
                let bound = bind(key, addr).map_err(|err| {
                    tracing::error!(service = %route.service, port = %key, %addr, error = %err, hint = hint(&err, key.port), retry_in = ?REBIND, "cannot listen on the published port; the others still work");
                });
                self.runtime.spawn(serve(key, addr, bound.ok(), table.clone()))
            })
            .collect();
        tracing::info!(service = %route.service, port = %key, listen = ?self.listen, "published port proxied");
        Listener { service: route.service, table, tasks }
    }

    /// Stops accepting on `listener`'s port and waits until its sockets are closed.
    fn close(&self, key: Published, listener: Listener) {
        for task in &listener.tasks {
            task.abort();
        }
        self.runtime.block_on(async {
            for task in listener.tasks {
                let _ = task.await;
            }
        });
        tracing::info!(service = %listener.service, port = %key, "published port closed");
    }
}

impl DataPlane for UserspaceDataPlane {
    fn apply(&mut self, endpoints: &[Arc<Endpoints>], cluster: &Cluster) -> Result<(), DataPlaneError> {
        let mut desired = routes(endpoints, &cluster.local.name);
        let gone: Vec<Published> = self.listeners.keys().filter(|k| !desired.contains_key(k)).copied().collect();
        for key in gone {
            let listener = self.listeners.remove(&key).expect("listed above");
            self.close(key, listener);
        }
        for (key, route) in std::mem::take(&mut desired) {
            match self.listeners.get_mut(&key) {
                Some(listener) => {
                    listener.table.set(route.backends);
                    listener.service = route.service;
                }
                None => {
                    let listener = self.open(key, route);
                    self.listeners.insert(key, listener);
                }
            }
        }
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), DataPlaneError> {
        for (key, listener) in std::mem::take(&mut self.listeners) {
            self.close(key, listener);
        }
        Ok(())
    }
}

/// A bound, non-blocking socket for `key` on `addr`.
enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

fn bind(key: Published, addr: SocketAddr) -> io::Result<Bound> {
    let bound = if key.udp {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        Bound::Udp(socket)
    } else {
        // std sets SO_REUSEADDR: a restarted agent rebinds despite TIME_WAIT.
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Bound::Tcp(listener)
    };
    Ok(bound)
}

/// What an operator can do about a bind error.
fn hint(err: &io::Error, port: u16) -> &'static str {
    match err.kind() {
        io::ErrorKind::PermissionDenied if port < 1024 => {
            "ports below 1024 need root (or CAP_NET_BIND_SERVICE, or a lower net.ipv4.ip_unprivileged_port_start); publish a port ≥ 1024"
        }
        io::ErrorKind::AddrInUse => "another process listens on this port; stop it or publish another port",
        io::ErrorKind::AddrNotAvailable => "the address is not on this machine; check --advertise-addr",
        _ => "",
    }
}

/// Serves one listen address of a published port: binds until it can
/// (unless bound already), then proxies until aborted.
async fn serve(key: Published, addr: SocketAddr, mut bound: Option<Bound>, table: Arc<Table>) {
    let bound = loop {
        if let Some(bound) = bound.take() {
            break bound;
        }
        tokio::time::sleep(REBIND).await;
        match bind(key, addr) {
            Ok(b) => {
                tracing::info!(port = %key, %addr, "published port listening now");
                bound = Some(b);
            }
            Err(err) => tracing::debug!(port = %key, %addr, error = %err, "still cannot listen on the published port"),
        }
    };
    let failed = |err: io::Error| tracing::error!(port = %key, %addr, error = %err, "cannot serve the published port");
    match bound {
        Bound::Tcp(listener) => match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => serve_tcp(listener, table).await,
            Err(err) => failed(err),
        },
        Bound::Udp(socket) => match UdpSocket::from_std(socket) {
            Ok(socket) => serve_udp(Arc::new(socket), table).await,
            Err(err) => failed(err),
        },
    }
}

async fn serve_tcp(listener: tokio::net::TcpListener, table: Arc<Table>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(proxy_tcp(client, table.pick()));
            }
            Err(err) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %err, "accepting a connection on a published port");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Proxies `client` to the first of `backends` that accepts.
async fn proxy_tcp(mut client: TcpStream, backends: Vec<SocketAddr>) {
    let Some(mut upstream) = connect_first(&backends).await else {
        tracing::warn!(backends = backends.len(), "no backend accepted the connection; closing it");
        return;
    };
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// A connection to the first backend of `backends` that accepts one in time.
pub async fn connect_first(backends: &[SocketAddr]) -> Option<TcpStream> {
    for backend in backends {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(err)) => tracing::debug!(%backend, error = %err, "backend refused; trying the next"),
            Err(_) => tracing::debug!(%backend, timeout = ?CONNECT_TIMEOUT, "backend did not answer; trying the next"),
        }
    }
    None
}

/// One UDP client's flow to its backend.
struct Flow {
    id: u64,
    upstream: Arc<UdpSocket>,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: Arc<AtomicU64>,
}

async fn serve_udp(socket: Arc<UdpSocket>, table: Arc<Table>) {
    let epoch = Instant::now();
    let mut flows: BTreeMap<SocketAddr, Flow> = BTreeMap::new();
    // Owned here: aborting this task ends every flow's reply task too.
    let mut replies: JoinSet<(SocketAddr, u64)> = JoinSet::new();
    let mut ids = 0u64;
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, client) = match received {
                    Ok(r) => r,
                    Err(err) => {
                        tracing::debug!(error = %err, "receiving on a published UDP port");
                        continue;
                    }
                };
                let flow = match flows.entry(client) {
                    Entry::Occupied(flow) => flow.into_mut(),
                    Entry::Vacant(slot) => {
                        let Some(upstream) = open_flow(&table.pick()).await else {
                            tracing::debug!(%client, "no backend for the UDP datagram; dropped");
                            continue;
                        };
                        ids += 1;
                        let flow = Flow { id: ids, upstream: Arc::new(upstream), last: Arc::default() };
                        let reply = relay_replies(socket.clone(), flow.upstream.clone(), client, flow.last.clone(), epoch);
                        let id = flow.id;
                        replies.spawn(async move { reply.await; (client, id) });
                        slot.insert(flow)
                    }
                };
                flow.last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                if let Err(err) = flow.upstream.send(&buf[..n]).await {
                    tracing::debug!(%client, error = %err, "forwarding a UDP datagram failed; the flow ends");
                    flows.remove(&client);
                }
            }
            Some(Ok((client, id))) = replies.join_next(), if !replies.is_empty() => {
                if flows.get(&client).is_some_and(|f| f.id == id) {
                    flows.remove(&client);
                }
            }
        }
    }
}

/// A socket connected to the first of `backends` (UDP connects never fail
/// for a closed port; a refusal shows on the flow's first reply).
async fn open_flow(backends: &[SocketAddr]) -> Option<UdpSocket> {
    for backend in backends {
        let local: SocketAddr = match backend.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        match UdpSocket::bind(local).await {
            Ok(socket) if socket.connect(backend).await.is_ok() => return Some(socket),
            Ok(_) => tracing::debug!(%backend, "cannot reach the backend over UDP; trying the next"),
            Err(err) => {
                tracing::warn!(error = %err, "cannot open a UDP socket for a flow");
                return None;
            }
        }
    }
    None
}

/// Sends the backend's datagrams back to `client` until the flow is idle
/// for [`UDP_IDLE`] or the backend refuses.
async fn relay_replies(
    listener: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    last: Arc<AtomicU64>,
    epoch: Instant,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let idle_for =
            Duration::from_millis((epoch.elapsed().as_millis() as u64).saturating_sub(last.load(Ordering::Relaxed)));
        let Some(wait) = UDP_IDLE.checked_sub(idle_for).filter(|w| !w.is_zero()) else { return };
        match tokio::time::timeout(wait, upstream.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                let _ = listener.send_to(&buf[..n], client).await;
            }
            Ok(Err(err)) => {
                tracing::debug!(%client, error = %err, "the UDP backend refused; the flow ends");
                return;
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
#[path = "userspace_tests.rs"]
mod tests;
