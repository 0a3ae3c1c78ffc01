//! The DNS server: UDP and TCP on one address, each query answered from
//! the current [`Directory`] or forwarded upstream ([`super::upstream`]).
//!
//! Every query runs on a task of its own (a forwarded one may wait for
//! upstream), at most [`MAX_IN_FLIGHT`] at once: past that a UDP query is
//! dropped (the client asks again) rather than queued without bound. A TCP
//! connection carries any number of queries, one after the other, and is
//! closed after [`TCP_IDLE`] without one.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::answer::{reply, server_failure, Reply, Transport};
use super::names::Directory;
use super::upstream::{forward, read_framed};

/// Queries being answered at once, over both transports.
pub const MAX_IN_FLIGHT: usize = 512;
/// A TCP connection without a query this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What every query needs: the names, the upstream servers, our address.
pub struct Server {
    pub directory: Arc<RwLock<Arc<Directory>>>,
    pub upstream: Vec<SocketAddr>,
    /// Where we listen (never forwarded to).
    pub own: SocketAddr,
    rotation: AtomicUsize,
    in_flight: Arc<Semaphore>,
}

impl Server {
    pub fn new(directory: Arc<RwLock<Arc<Directory>>>, upstream: Vec<SocketAddr>, own: SocketAddr) -> Self {
        Self {
            directory,
            upstream,
            own,
            rotation: AtomicUsize::new(0),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// The answer to `query` from `client`: ours, the upstream's, or
    /// SERVFAIL when no upstream answered; `None` to stay silent.
    pub async fn handle(&self, query: &[u8], client: IpAddr, transport: Transport) -> Option<Vec<u8>> {
        let directory = self.directory.read().unwrap_or_else(|p| p.into_inner()).clone();
        let client = match client {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        let rotate = self.rotation.fetch_add(1, Ordering::Relaxed);
        match reply(query, &directory, client, transport, rotate) {
            Reply::Answer(answer) => Some(answer),
            Reply::Drop => None,
            Reply::Forward => {
                let forwarded = forward(query, &self.upstream, Some(self.own), transport == Transport::Tcp).await;
                forwarded.or_else(|| server_failure(query))
            }
        }
    }

    /// Answers datagrams on `socket` until the task is aborted.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket) {
        let socket = Arc::new(socket);
        let mut buffer = vec![0u8; 4096];
        loop {
            let (n, from) = match socket.recv_from(&mut buffer).await {
                Ok(received) => received,
                Err(err) => {
                    // ICMP errors of earlier answers surface here; keep going.
                    tracing::debug!(error = %err, "DNS: receiving a datagram failed");
                    continue;
                }
            };
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else { continue };
            let (server, socket, query) = (self.clone(), socket.clone(), buffer[..n].to_vec());
            tokio::spawn(async move {
                if let Some(answer) = server.handle(&query, from.ip(), Transport::Udp).await {
                    let _ = socket.send_to(&answer, from).await;
                }
                drop(permit);
            });
        }
    }

    /// Accepts connections on `listener` until the task is aborted.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::debug!(error = %err, "DNS: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(self.clone().connection(stream, from.ip()));
        }
    }

    async fn connection(self: Arc<Self>, mut stream: TcpStream, client: IpAddr) {
        loop {
            let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await else { return };
            let Ok(_permit) = self.in_flight.acquire().await else { return };
            let Some(answer) = self.handle(&query, client, Transport::Tcp).await else { continue };
            let Ok(length) = u16::try_from(answer.len()) else { return };
            let mut framed = length.to_be_bytes().to_vec();
            framed.extend_from_slice(&answer);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }
}
