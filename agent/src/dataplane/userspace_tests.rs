//! The userspace proxy: route and backend choice as pure functions, then
//! real sockets on loopback.

use super::*;
use shoal_crd::{Backend, EndpointPort, EndpointsSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn backend(task: &str, node: &str, address: &str, ports: &[(u16, u16)]) -> Backend {
    Backend { task: task.into(), node: node.into(), address: address.into(), ports: ports.iter().copied().collect() }
}

fn endpoints(
    service: &str,
    ports: &[(u16, Option<u16>, PortProtocol, PublishMode)],
    backends: Vec<Backend>,
) -> Arc<Endpoints> {
    let ports = ports
        .iter()
        .map(|&(target, published, protocol, publish_mode)| EndpointPort { protocol, target, published, publish_mode })
        .collect();
    Arc::new(Endpoints::new(service, EndpointsSpec { service: service.into(), ports, backends, ..Default::default() }))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn rotation_starts_at_the_turn_and_wraps() {
    assert_eq!(rotation(3, 4).collect::<Vec<_>>(), [1, 2, 0]);
    assert_eq!(rotation(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(rotation(0, 7).count(), 0);
}

#[test]
fn each_new_connection_starts_at_the_next_backend_and_falls_back_to_the_others() {
    let table = Table::new(vec![addr("10.0.0.1:80"), addr("10.0.0.2:80"), addr("10.0.0.3:80")]);
    let firsts: Vec<SocketAddr> = (0..6).map(|_| table.pick()[0]).collect();
    assert_eq!(firsts[..3], firsts[3..], "round robin");
    assert_eq!(firsts[..3].iter().collect::<std::collections::BTreeSet<_>>().len(), 3);
    assert_eq!(table.pick().len(), 3, "the others follow, to skip one that refuses");
    table.set(vec![addr("10.0.0.2:80")]);
    assert!((0..3).all(|_| table.pick() == [addr("10.0.0.2:80")]), "a removed backend gets no new connection");
    table.set(Vec::new());
    assert!(table.pick().is_empty());
}

#[test]
fn published_ports_route_to_backends_at_their_mapped_ports_and_local_ones_over_loopback() {
    let (tcp, udp) = (PortProtocol::Tcp, PortProtocol::Udp);
    let web = endpoints(
        "web",
        &[
            (80, Some(8080), tcp, PublishMode::Ingress),
            (53, Some(5353), udp, PublishMode::Ingress),
            (9000, None, tcp, PublishMode::Ingress),
        ],
        vec![
            backend("a", "me", "192.0.2.1", &[(80, 41000), (53, 41001)]),
            backend("b", "other", "192.0.2.2", &[(80, 42000)]),
            backend("c", "other", "10.200.1.5", &[]),
            backend("d", "other", "not-an-ip", &[]),
        ],
    );
    let local_only = endpoints(
        "agent",
        &[(9100, Some(9100), tcp, PublishMode::Host)],
        vec![backend("e", "me", "192.0.2.1", &[(9100, 43000)]), backend("f", "other", "192.0.2.2", &[(9100, 43001)])],
    );
    let elsewhere =
        endpoints("far", &[(80, Some(8081), tcp, PublishMode::Host)], vec![backend("g", "other", "192.0.2.2", &[])]);
    let routes = routes(&[web, local_only, elsewhere], "me");
    let backends = |udp, port| routes[&Published { udp, port }].backends.clone();
    assert_eq!(
        backends(false, 8080),
        [addr("127.0.0.1:41000"), addr("192.0.2.2:42000"), addr("10.200.1.5:80")],
        "this node's host-network task over loopback, others at their node's address; a namespace at the target port"
    );
    assert_eq!(backends(true, 5353), [addr("127.0.0.1:41001"), addr("192.0.2.2:53"), addr("10.200.1.5:53")]);
    assert_eq!(backends(false, 9100), [addr("127.0.0.1:43000")], "host mode: this node's tasks only");
    assert_eq!(routes.len(), 3, "unpublished ports and host-mode ports without a local task have no listener");
    assert_eq!(routes[&Published { udp: false, port: 8080 }].service, "web");
}

#[test]
fn a_port_published_twice_stays_with_the_first_service() {
    let port = [(80, Some(8080), PortProtocol::Tcp, PublishMode::Ingress)];
    let one = endpoints("one", &port, vec![backend("a", "me", "10.0.0.1", &[])]);
    let two = endpoints("two", &port, vec![backend("b", "me", "10.0.0.2", &[])]);
    assert_eq!(routes(&[one, two], "me")[&Published { udp: false, port: 8080 }].service, "one");
}

#[test]
fn published_ports_listen_on_the_advertised_address_and_loopback() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(listen_addresses("127.0.0.1"), [ip("127.0.0.1")]);
    assert_eq!(listen_addresses("192.0.2.11"), [ip("192.0.2.11"), ip("127.0.0.1")]);
    assert_eq!(listen_addresses("0.0.0.0"), [ip("0.0.0.0")]);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A backend answering every connection with its `name`.
async fn named_backend(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(name.as_bytes()).await;
        }
    });
    addr
}

/// What the server at 127.0.0.1:`port` says, or the error.
async fn ask(port: u16) -> io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}

/// Runs `apply` as the sync loop does: off the async threads.
async fn apply(dp: UserspaceDataPlane, endpoints: Vec<Arc<Endpoints>>) -> UserspaceDataPlane {
    tokio::task::spawn_blocking(move || {
        let mut dp = dp;
        dp.apply(&endpoints, &Cluster::new("me", None, Vec::new())).unwrap();
        dp
    })
    .await
    .unwrap()
}

fn web(published: u16, backends: &[SocketAddr]) -> Arc<Endpoints> {
    let backends = backends
        .iter()
        .enumerate()
        .map(|(i, b)| backend(&format!("t{i}"), "me", "127.0.0.1", &[(80, b.port())]))
        .collect();
    endpoints("web", &[(80, Some(published), PortProtocol::Tcp, PublishMode::Ingress)], backends)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_alternate_skip_a_stopped_backend_and_end_with_the_listener() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let stopped = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let published = free_port();
    let dp = UserspaceDataPlane::new(Handle::current(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let dp = apply(dp, vec![web(published, &[a, stopped, b])]).await;
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(ask(published).await.expect("every request is answered, the stopped backend skipped"));
    }
    assert!(answers.contains(&"a".to_string()) && answers.contains(&"b".to_string()), "{answers:?}");

    let dp = apply(dp, vec![web(published, &[b])]).await;
    for _ in 0..3 {
        assert_eq!(ask(published).await.unwrap(), "b", "a removed backend gets no new connection");
    }
    let dp = apply(dp, Vec::new()).await;
    assert_eq!(ask(published).await.unwrap_err().kind(), io::ErrorKind::ConnectionRefused, "unpublished: closed");

    let dp = apply(dp, vec![web(published, &[a])]).await;
    assert_eq!(ask(published).await.unwrap(), "a");
    tokio::task::spawn_blocking(move || {
        let mut dp = dp;
        dp.cleanup().unwrap();
    })
    .await
    .unwrap();
    assert_eq!(ask(published).await.unwrap_err().kind(), io::ErrorKind::ConnectionRefused, "cleanup closes it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_carries_on_when_its_backend_leaves_the_table() {
    // A backend that echoes until the client closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let published = free_port();
    let dp = UserspaceDataPlane::new(Handle::current(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let dp = apply(dp, vec![web(published, &[echo])]).await;
    let mut stream = TcpStream::connect(("127.0.0.1", published)).await.unwrap();
    // Proxied end to end first: connect() returns once the kernel has
    // queued the connection, before the proxy has picked a backend for it.
    stream.write_all(b"hello").await.unwrap();
    let mut hello = [0u8; 5];
    stream.read_exact(&mut hello).await.unwrap();
    let _dp = apply(dp, vec![web(published, &[])]).await;
    stream.write_all(b"still there").await.unwrap();
    let mut buf = [0u8; 11];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_cannot_be_bound_does_not_keep_the_others_from_working() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let a = named_backend("a").await;
    let free = free_port();
    let dp = UserspaceDataPlane::new(Handle::current(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let other = endpoints(
        "other",
        &[(80, Some(busy), PortProtocol::Tcp, PublishMode::Ingress)],
        vec![backend("x", "me", "127.0.0.1", &[(80, a.port())])],
    );
    let _dp = apply(dp, vec![other, web(free, &[a])]).await;
    assert_eq!(ask(free).await.unwrap(), "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_reach_a_backend_and_its_replies_come_back() {
    let backend_socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = backend_socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = backend_socket.recv_from(&mut buf).await {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = backend_socket.send_to(&reply, from).await;
        }
    });
    let published = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dns = endpoints(
        "dns",
        &[(53, Some(published), PortProtocol::Udp, PublishMode::Ingress)],
        vec![backend("t", "me", "127.0.0.1", &[(53, target.port())])],
    );
    let dp = UserspaceDataPlane::new(Handle::current(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let _dp = apply(dp, vec![dns]).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(("127.0.0.1", published)).await.unwrap();
    let mut buf = [0u8; 1500];
    for word in ["one", "two"] {
        client.send(word.as_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], format!("echo:{word}").as_bytes());
    }
}
