//! The servers a query that is not ours goes to: the host's resolvers,
//! read from `/etc/resolv.conf` when the agent starts (or
//! `SHOAL_DNS_UPSTREAM=ip[:port],…`, which wins — for tests and for hosts
//! whose resolv.conf names a resolver only reachable from elsewhere).
//!
//! A query is forwarded byte for byte (the client's id, flags and EDNS
//! options intact) to each server in turn until one answers within
//! [`TIMEOUT`]; the answer goes back byte for byte too. The agent asks
//! from the host's network namespace, so a loopback resolver
//! (systemd-resolved's 127.0.0.53) works, which a task could not reach.
//! A server at the agent's own listening address is skipped: asking
//! ourselves would loop.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

/// How long one upstream server gets to answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The environment variable that replaces resolv.conf's servers.
pub const UPSTREAM_ENV: &str = "SHOAL_DNS_UPSTREAM";
/// The largest UDP answer accepted from upstream.
const MAX_UDP: usize = 4096;

/// What the host's resolv.conf says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostResolver {
    /// `nameserver` lines, port 53.
    pub servers: Vec<SocketAddr>,
    /// The `search` (or `domain`) line's domains.
    pub search: Vec<String>,
}

impl HostResolver {
    /// Parses resolv.conf text: `nameserver`, `search` and `domain` lines
    /// (the last `search`/`domain` wins, as in glibc); the rest is ignored.
    pub fn parse(text: &str) -> Self {
        let mut resolver = Self::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // `fe80::1%eth0`: the zone is dropped (link-local upstreams are rare).
                    let address = words.next().and_then(|a| a.split('%').next()?.parse::<IpAddr>().ok());
                    if let Some(address) = address {
                        resolver.servers.push(SocketAddr::new(address, 53));
                    }
                }
                Some("search" | "domain") => resolver.search = words.map(str::to_string).collect(),
                _ => {}
            }
        }
        resolver
    }

    /// `/etc/resolv.conf` (empty when unreadable), its servers replaced by
    /// `$SHOAL_DNS_UPSTREAM` when set.
    pub fn from_host() -> Self {
        let mut resolver = Self::parse(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
        if let Ok(list) = std::env::var(UPSTREAM_ENV) {
            resolver.servers = parse_servers(&list);
        }
        resolver
    }
}

/// `ip[:port]` (IPv6 as `[ip]:port`), comma-separated; bad entries are dropped.
pub fn parse_servers(list: &str) -> Vec<SocketAddr> {
    list.split(',')
        .map(str::trim)
        .filter_map(|s| s.parse::<SocketAddr>().ok().or_else(|| Some(SocketAddr::new(s.parse().ok()?, 53))))
        .collect()
}

/// Forwards `query` to `servers` (but never to `own`) until one answers;
/// `None` when none did.
pub async fn forward(query: &[u8], servers: &[SocketAddr], own: Option<SocketAddr>, tcp: bool) -> Option<Vec<u8>> {
    for server in servers.iter().filter(|s| Some(**s) != own && !s.ip().is_unspecified()) {
        let answer = if tcp { over_tcp(query, *server).await } else { over_udp(query, *server).await };
        match answer {
            Ok(answer) => return Some(answer),
            Err(err) => tracing::debug!(%server, error = %err, "upstream DNS server did not answer"),
        }
    }
    None
}

async fn over_udp(query: &[u8], server: SocketAddr) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buffer = vec![0; MAX_UDP];
    let within = async {
        loop {
            let n = socket.recv(&mut buffer).await?;
            // A stray datagram (another query's late answer) is not ours.
            if n >= 2 && buffer[..2] == query[..2] {
                return Ok::<_, std::io::Error>(n);
            }
        }
    };
    let n = timeout(TIMEOUT, within).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
    buffer.truncate(n);
    Ok(buffer)
}

async fn over_tcp(query: &[u8], server: SocketAddr) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        let length = u16::try_from(query.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let mut framed = length.to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        read_framed(&mut stream).await
    };
    timeout(TIMEOUT, exchange).await.map_err(|_| std::io::ErrorKind::TimedOut)?
}

/// One length-prefixed DNS message from a TCP stream.
pub async fn read_framed(stream: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut length = [0; 2];
    stream.read_exact(&mut length).await?;
    let mut message = vec![0; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_gives_servers_and_search_domains() {
        let text = "# generated\nnameserver 10.255.255.53\nnameserver ::1\nnameserver fe80::1%eth0\n\
                    nameserver bogus\noptions ndots:2 ; trailing\ndomain old.example\nsearch corp.example lab.example\n";
        let resolver = HostResolver::parse(text);
        assert_eq!(
            resolver.servers,
            vec!["10.255.255.53:53".parse().unwrap(), "[::1]:53".parse().unwrap(), "[fe80::1]:53".parse().unwrap()]
        );
        assert_eq!(resolver.search, vec!["corp.example", "lab.example"]);
        assert_eq!(HostResolver::parse(""), HostResolver::default());
    }

    #[test]
    fn upstreams_from_the_environment_take_ports() {
        assert_eq!(
            parse_servers("127.0.0.1:5353, 10.0.0.1,[::1]:54,nonsense"),
            vec!["127.0.0.1:5353".parse().unwrap(), "10.0.0.1:53".parse().unwrap(), "[::1]:54".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn a_query_goes_to_the_first_server_that_answers_but_never_to_ourselves() {
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buffer = [0; 512];
            loop {
                let (n, from) = upstream.recv_from(&mut buffer).await.unwrap();
                let mut answer = buffer[..n].to_vec();
                answer.extend_from_slice(b"-answered");
                upstream.send_to(&answer, from).await.unwrap();
            }
        });
        // A closed port first: its ICMP error moves on at once.
        let closed = UdpSocket::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let answer = forward(b"\x01\x02query", &[closed, address], None, false).await;
        assert_eq!(answer.as_deref(), Some(&b"\x01\x02query-answered"[..]));
        let own = Some(address);
        assert_eq!(forward(b"\x01\x02query", &[address], own, false).await, None, "asked itself");
    }
}
