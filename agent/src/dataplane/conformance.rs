//! The checks every data plane must pass, against the real kernel: two
//! backends in network namespaces of their own (veth pairs to this one,
//! each answering HTTP with its name from a listener thread inside its
//! namespace), a fixture Endpoints object with a VIP and a published port,
//! then connections through both, a backend removed, no backend at all,
//! and the cleanup. `shoal agent dataplane-conformance --dataplane MODE`
//! runs it; the nftables plane passes it on this host (in a throwaway
//! namespace, `tests/dataplane_conformance.rs`), the IPVS plane inside a
//! VM (`tests/ipvs_vm.rs`). A plane without VIPs (the userspace proxy)
//! runs it with [`Capabilities::vips`] off.
//!
//! The current network namespace plays the node: run it in one made for
//! the purpose. It needs root and `ip` (iproute2).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shoal_crd::{Backend, EndpointMode, EndpointPort, Endpoints, EndpointsSpec, PortProtocol, PublishMode};

use super::{Cluster, DataPlane};
use crate::network::ip;

/// The fixture's VIP, service port and published port.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 203, 1);
pub const PORT: u16 = 80;
/// A port the backends also answer on but the service does not declare.
pub const UNDECLARED_PORT: u16 = 8081;
pub const PUBLISHED: u16 = 31203;
/// The node's name in the fixture (both backends run on it).
pub const NODE: &str = "conformance-node";

/// What a data plane offers.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Service VIPs answer (not the userspace proxy).
    pub vips: bool,
    /// A VIP carries every port, declared or not, as Swarm's do (nftables).
    pub any_port: bool,
}

/// One check and how it went.
#[derive(Debug)]
pub struct Check {
    pub name: String,
    pub result: Result<(), String>,
}

/// One backend: a namespace, a veth pair, a listener thread.
struct LabBackend {
    name: String,
    netns: String,
    veth: String,
    node_side: Ipv4Addr,
    address: Ipv4Addr,
}

/// The backends and what it changed here; undone on drop.
struct Lab {
    backends: Vec<LabBackend>,
    stop: Arc<AtomicBool>,
    listeners: Vec<JoinHandle<()>>,
    default_route: Option<Ipv4Addr>,
}

impl Lab {
    fn start() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let mut lab = Lab {
            backends: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            listeners: Vec::new(),
            default_route: None,
        };
        ip(&["link", "set", "lo", "up"]).map_err(|e| e.to_string())?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| format!("ip_forward: {e}"))?;
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let subnet = 1 + i as u8;
            let backend = LabBackend {
                name: name.to_string(),
                netns: format!("shoal-cf{id}-{name}"),
                veth: format!("cf{id}{name}"),
                node_side: Ipv4Addr::new(10, 203, subnet, 1),
                address: Ipv4Addr::new(10, 203, subnet, 2),
            };
            let created = backend.create();
            lab.backends.push(backend);
            created?;
            let backend = lab.backends.last().expect("pushed above");
            for port in [PORT, UNDECLARED_PORT] {
                lab.listeners.push(listen(backend.netns.clone(), backend.name.clone(), port, lab.stop.clone())?);
            }
        }
        // A node has a default route; a fresh namespace does not, and
        // without one a VIP that is not a local address is unreachable.
        let has_default = std::process::Command::new("ip")
            .args(["-4", "route", "show", "default"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(true);
        if !has_default {
            let via = lab.backends[0].address;
            ip(&["route", "add", "default", "via", &via.to_string()]).map_err(|e| e.to_string())?;
            lab.default_route = Some(via);
        }
        Ok(lab)
    }

    fn endpoints(&self, names: &[&str]) -> Vec<Arc<Endpoints>> {
        let backends = self
            .backends
            .iter()
            .filter(|b| names.contains(&b.name.as_str()))
            .map(|b| Backend {
                task: b.name.clone(),
                node: NODE.into(),
                address: b.address.to_string(),
                ports: Default::default(),
            })
            .collect();
        let port = EndpointPort {
            protocol: PortProtocol::Tcp,
            target: PORT,
            published: Some(PUBLISHED),
            publish_mode: PublishMode::Ingress,
        };
        vec![Arc::new(Endpoints::new(
            "conformance",
            EndpointsSpec {
                service: "conformance".into(),
                endpoint_mode: EndpointMode::Vip,
                vip: Some(VIP.to_string()),
                ports: vec![port],
                backends,
                ..Default::default()
            },
        ))]
    }
}

impl LabBackend {
    fn create(&self) -> Result<(), String> {
        let (node_side, address) = (format!("{}/24", self.node_side), format!("{}/24", self.address));
        let steps: [&[&str]; 8] = [
            &["netns", "add", &self.netns],
            &["link", "add", &self.veth, "type", "veth", "peer", "name", "eth0", "netns", &self.netns],
            &["addr", "add", &node_side, "dev", &self.veth],
            &["link", "set", &self.veth, "up"],
            &["-n", &self.netns, "link", "set", "lo", "up"],
            &["-n", &self.netns, "addr", "add", &address, "dev", "eth0"],
            &["-n", &self.netns, "link", "set", "eth0", "up"],
            &["-n", &self.netns, "route", "add", "default", "via", &self.node_side.to_string()],
        ];
        steps.iter().try_for_each(|args| ip(args).map_err(|e| format!("backend {}: {e}", self.name)))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for listener in self.listeners.drain(..) {
            let _ = listener.join();
        }
        if let Some(via) = self.default_route {
            let _ = ip(&["route", "del", "default", "via", &via.to_string()]);
        }
        for b in &self.backends {
            let _ = ip(&["netns", "del", &b.netns]);
            let _ = ip(&["link", "del", &b.veth]);
        }
    }
}

/// Runs `f` on a thread moved into network namespace `netns` (None: this one).
fn in_netns<T: Send + 'static>(netns: Option<String>, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    std::thread::spawn(move || {
        if let Some(netns) = netns {
            let file = std::fs::File::open(format!("/run/netns/{netns}")).map_err(|e| format!("netns {netns}: {e}"))?;
            // SAFETY: setns on a valid namespace fd; it moves only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns {netns}: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(f())
    })
    .join()
    .map_err(|_| "the namespace thread panicked".to_string())?
}

/// A thread in `netns` answering every HTTP request on `port` with `name`.
fn listen(netns: String, name: String, port: u16, stop: Arc<AtomicBool>) -> Result<JoinHandle<()>, String> {
    let listener = in_netns(Some(netns.clone()), move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
        .map_err(|e| format!("listening in {netns}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut request = [0u8; 1024];
                    let _ = stream.read(&mut request);
                    let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{name}\n");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }))
}

/// `GET /` on `to` (from namespace `netns`): the answering backend's name.
fn ask(to: SocketAddrV4, netns: Option<&str>) -> Result<String, String> {
    in_netns(netns.map(str::to_string), move || {
        let mut stream =
            TcpStream::connect_timeout(&to.into(), Duration::from_secs(1)).map_err(|e| format!("{to}: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| format!("{to}: {e}"))?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).map_err(|e| format!("{to}: {e}"))?;
        let body = answer.split("\r\n\r\n").nth(1).ok_or_else(|| format!("{to}: no HTTP answer"))?;
        Ok(body.trim().to_string())
    })?
}

/// The backends answering `count` requests to `to`; any failed request fails.
fn answering(to: SocketAddrV4, netns: Option<&str>, count: usize) -> Result<BTreeSet<String>, String> {
    (0..count).map(|_| ask(to, netns)).collect()
}

fn expect(seen: Result<BTreeSet<String>, String>, wanted: &[&str]) -> Result<(), String> {
    let seen = seen?;
    let wanted: BTreeSet<String> = wanted.iter().map(|s| s.to_string()).collect();
    if seen == wanted {
        Ok(())
    } else {
        Err(format!("answered by {seen:?}, expected {wanted:?}"))
    }
}

/// A connection to `to` must fail (refused or unreachable), not reach a backend.
fn unanswered(to: SocketAddrV4) -> Result<(), String> {
    match ask(to, None) {
        Ok(name) => Err(format!("backend {name} answered")),
        Err(_) => Ok(()),
    }
}

/// Runs every check on `dataplane` with this namespace as the node; the
/// data plane is cleaned up and the backends removed before it returns.
pub fn run(dataplane: &mut dyn DataPlane, capabilities: Capabilities) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check = |name: &str, result: Result<(), String>| {
        checks.push(Check { name: name.to_string(), result });
    };
    let lab = match Lab::start() {
        Ok(lab) => lab,
        Err(err) => {
            check("set up two backends in network namespaces", Err(err));
            return checks;
        }
    };
    let cluster = Cluster::new(NODE, None, Vec::new());
    let vip = SocketAddrV4::new(VIP, PORT);
    let published = SocketAddrV4::new(lab.backends[0].node_side, PUBLISHED);
    let hairpin = lab.backends[0].netns.clone();
    let apply =
        |dp: &mut dyn DataPlane, names: &[&str]| dp.apply(&lab.endpoints(names), &cluster).map_err(|e| e.to_string());

    check("the fixture is programmed", apply(dataplane, &["a", "b"]));
    if capabilities.vips {
        check("the VIP balances over both backends", expect(answering(vip, None, 20), &["a", "b"]));
        check(
            "the VIP answers from inside a backend's namespace (hairpin included)",
            expect(answering(vip, Some(&hairpin), 20), &["a", "b"]),
        );
    }
    if capabilities.any_port {
        let undeclared = SocketAddrV4::new(VIP, UNDECLARED_PORT);
        check(
            "the VIP carries a port the service does not declare, to the same port of both backends",
            expect(answering(undeclared, None, 20), &["a", "b"]),
        );
    }
    check(
        "the published port on the node's address balances over both backends",
        expect(answering(published, None, 20), &["a", "b"]),
    );
    check("applying the same state again succeeds", apply(dataplane, &["a", "b"]));
    check("a backend is removed", apply(dataplane, &["b"]));
    if capabilities.vips {
        check("a removed backend gets no new connections through the VIP", expect(answering(vip, None, 10), &["b"]));
    }
    check(
        "a removed backend gets no new connections through the published port",
        expect(answering(published, None, 10), &["b"]),
    );
    check("the last backend is removed", apply(dataplane, &[]));
    let target = if capabilities.vips { vip } else { published };
    let asked = Instant::now();
    let refused = unanswered(target).and_then(|()| match asked.elapsed() {
        quick if quick < Duration::from_millis(900) => Ok(()),
        slow => Err(format!("failed only after {slow:?}: a client waits instead of being refused")),
    });
    check("a service without backends refuses connections at once", refused);
    check("cleanup succeeds", dataplane.cleanup().map_err(|e| e.to_string()));
    if capabilities.vips {
        check("after cleanup the VIP is gone", unanswered(vip));
    }
    check("after cleanup the published port is gone", unanswered(published));
    drop(lab);
    checks
}
