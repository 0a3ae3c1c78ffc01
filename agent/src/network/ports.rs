//! Host ports for tasks on the host network: replicas sharing the node's
//! network cannot all listen on their service's target port, so each gets
//! a free host port per target port, told to it through its environment —
//! `SHOAL_PORT_<target>=<host>` for every target port and `PORT=<host>` for
//! the first (the convention of Heroku and Cloud Run, for apps that read
//! one variable). The mapping is reported in the task's observation and
//! becomes its backend's `ports`, so the data plane connects to the right
//! port.
//!
//! What was given is recorded in the task's `ports.json` before the task
//! starts: a re-adopted task keeps its ports, and the record keeps them
//! taken from other tasks of this node until the task ends.
//!
//! # Caveats
//! - A port is free when allocated (the kernel picks it for a socket bound
//!   to `0.0.0.0:0`, which is then closed); another process may bind it
//!   before the task does. The task then fails to start and is replaced.
//! - The ports are the kernel's ephemeral ones (32768–60999 on Linux),
//!   apart from the 30000–32767 range published ports are allocated from.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};

use serde::{Deserialize, Serialize};
use shoal_crd::{PortMapping, PortProtocol, ServiceSpec};

use crate::taskdir::TaskDir;

/// The file in the task's directory.
const FILE: &str = "ports.json";
/// Tries before giving up on finding a port free for both TCP and UDP.
const ATTEMPTS: usize = 32;

/// One target port of a service and the protocols it is used with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortTarget {
    pub target: u16,
    pub tcp: bool,
    pub udp: bool,
}

/// The service's target ports, in the spec's order, each once.
pub fn targets(spec: &ServiceSpec) -> Vec<PortTarget> {
    let mut targets: Vec<PortTarget> = Vec::new();
    for port in &spec.ports {
        let i = match targets.iter().position(|t| t.target == port.target) {
            Some(i) => i,
            None => {
                targets.push(PortTarget { target: port.target, tcp: false, udp: false });
                targets.len() - 1
            }
        };
        match port.protocol {
            PortProtocol::Tcp => targets[i].tcp = true,
            PortProtocol::Udp => targets[i].udp = true,
        }
    }
    targets
}

/// What a task is told: `SHOAL_PORT_<target>` per mapping, `PORT` for the first.
pub fn env(mappings: &[PortMapping]) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> =
        mappings.iter().map(|m| (format!("SHOAL_PORT_{}", m.target), m.host.to_string())).collect();
    if let Some(first) = mappings.first() {
        env.insert("PORT".into(), first.host.to_string());
    }
    env
}

/// A task's `ports.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortsRecord {
    pub ports: Vec<PortMapping>,
}

impl PortsRecord {
    /// The task's record, if it has one.
    pub fn load(dir: &TaskDir) -> io::Result<Option<Self>> {
        match std::fs::read(dir.file(FILE)) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the record whole (a rename).
    pub fn save(&self, dir: &TaskDir) -> io::Result<()> {
        let tmp = dir.file(&format!(".{FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).map_err(io::Error::other)?)?;
        std::fs::rename(tmp, dir.file(FILE))
    }

    /// Frees the task's ports.
    pub fn remove(dir: &TaskDir) -> io::Result<()> {
        match std::fs::remove_file(dir.file(FILE)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// True when it maps exactly `targets` (the service's ports did not change).
    pub fn covers(&self, targets: &[PortTarget]) -> bool {
        self.ports.len() == targets.len() && self.ports.iter().zip(targets).all(|(m, t)| m.target == t.target)
    }
}

/// A free host port for each of `targets`, none of them in `taken`.
pub fn allocate(targets: &[PortTarget], taken: &[u16]) -> io::Result<Vec<PortMapping>> {
    let mut mappings: Vec<PortMapping> = Vec::new();
    for target in targets {
        let host = (0..ATTEMPTS)
            .find_map(|_| {
                free_port(target.udp && !target.tcp, target.udp && target.tcp)
                    .filter(|p| !taken.contains(p) && !mappings.iter().any(|m| m.host == *p))
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    format!("no free host port for target {}", target.target),
                )
            })?;
        mappings.push(PortMapping { target: target.target, host });
    }
    Ok(mappings)
}

/// A port the kernel says is free: for UDP alone, or for TCP (and UDP too
/// when `both`).
fn free_port(udp_only: bool, both: bool) -> Option<u16> {
    let any = (Ipv4Addr::UNSPECIFIED, 0);
    if udp_only {
        return UdpSocket::bind(any).and_then(|s| s.local_addr()).ok().map(|a| a.port());
    }
    let tcp = TcpListener::bind(any).ok()?;
    let port = tcp.local_addr().ok()?.port();
    if both {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).ok()?;
    }
    Some(port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crd::PortConfig;

    fn spec(ports: &[(u16, PortProtocol)]) -> ServiceSpec {
        let mut spec = ServiceSpec::from_image("demo");
        spec.ports = ports
            .iter()
            .map(|&(target, protocol)| PortConfig { target, published: None, protocol, mode: Default::default() })
            .collect();
        spec
    }

    #[test]
    fn each_target_port_is_mapped_once_whatever_its_protocols() {
        let targets = targets(&spec(&[(80, PortProtocol::Tcp), (53, PortProtocol::Udp), (53, PortProtocol::Tcp)]));
        assert_eq!(
            targets,
            [PortTarget { target: 80, tcp: true, udp: false }, PortTarget { target: 53, tcp: true, udp: true }]
        );
        let mappings = allocate(&targets, &[]).unwrap();
        assert_eq!(mappings.iter().map(|m| m.target).collect::<Vec<_>>(), [80, 53]);
        assert_ne!(mappings[0].host, mappings[1].host);
        assert!(mappings.iter().all(|m| m.host >= 1024));
    }

    #[test]
    fn the_task_is_told_every_port_and_the_first_as_port() {
        let env = env(&[PortMapping { target: 80, host: 41000 }, PortMapping { target: 9100, host: 41001 }]);
        let expected: BTreeMap<String, String> =
            [("PORT", "41000"), ("SHOAL_PORT_80", "41000"), ("SHOAL_PORT_9100", "41001")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into();
        assert_eq!(env, expected);
        assert!(super::env(&[]).is_empty());
    }

    #[test]
    fn the_record_survives_a_restart_and_is_removed_with_the_task() {
        let data = tempfile::tempdir().unwrap();
        let dir = TaskDir::new(data.path(), "t1");
        dir.create().unwrap();
        assert_eq!(PortsRecord::load(&dir).unwrap(), None);
        let record = PortsRecord { ports: vec![PortMapping { target: 80, host: 41000 }] };
        record.save(&dir).unwrap();
        assert_eq!(PortsRecord::load(&dir).unwrap(), Some(record.clone()));
        assert!(record.covers(&[PortTarget { target: 80, tcp: true, udp: false }]));
        assert!(!record.covers(&[PortTarget { target: 8080, tcp: true, udp: false }]));
        PortsRecord::remove(&dir).unwrap();
        PortsRecord::remove(&dir).unwrap();
        assert_eq!(PortsRecord::load(&dir).unwrap(), None);
    }
}
