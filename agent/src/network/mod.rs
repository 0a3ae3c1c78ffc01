//! Task networking: as root, every task gets a network namespace of its
//! own on a per-node bridge, so several replicas on one node can all listen
//! on port 80; otherwise tasks share the host's network and their
//! observation says `network: host`.
//!
//! - [`bridge`]: the node's bridge (`shoal0` by default) on the `.1` of the
//!   node's task subnet, IP forwarding, and a masquerade rule for traffic
//!   leaving the subnet, in an nftables table of its own.
//! - [`task`]: one task's namespace (`shoal-<task id>`), veth pair (host end
//!   on the bridge, `eth0` inside), address (the next free one, in turn, of the
//!   subnet, recorded in the task's `network.json` so a re-adopted task keeps
//!   it) and default route via the bridge.
//! - [`conntrack`]: the connections a task answers, read from the kernel's
//!   tracking table; those that would outlive it are deleted with it.
//! - [`ports`]: on the host network instead, a free host port per target
//!   port of the task's service (`SHOAL_PORT_<target>`, `PORT`).
//!
//! The subnet is the Node's `status.taskSubnet` (allocated by the
//! controllers' node loop) or, standing in until one is assigned or for an
//! agent run on its own, `--task-subnet CIDR`, which wins when given. Until
//! either is known, new tasks use the host network.
//!
//! Why the `ip` and `nft` commands, not netlink (the `rtnetlink` crate):
//! a named namespace is a bind mount of `/proc/<pid>/ns/net` under
//! `/run/netns` that `ip netns add` makes exactly as every other tool
//! expects, and configuring links inside a namespace over netlink means a
//! socket opened from a thread moved into it. `ip -n NS …` does both in a
//! handful of short commands per task, with errors an operator can rerun by
//! hand; the netlink stack would add four crates and a thread dance for
//! nothing the agent needs. Both tools are in every distribution's base.
//!
//! # Caveats
//!
//! - Routes between nodes' subnets are not set up here (the routing mesh's
//!   job): a task reaches other nodes' tasks only through published ports.
//! - IP forwarding is switched on and left on: other software on the host
//!   may rely on it too.
//! - The bridge and the nftables table are removed on shutdown only when no
//!   task holds an address any more: running tasks outlive the agent.

pub mod bridge;
pub mod conntrack;
pub mod ports;
pub mod task;

use std::io::Write;
use std::process::{Command, Stdio};

pub use bridge::Bridge;
pub use ipnet::Ipv4Net;
pub use task::NetworkRecord;

/// The bridge name when none is configured.
pub const DEFAULT_BRIDGE: &str = "shoal0";

/// How the agent networks its tasks (`shoal agent --network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// Tasks share the host's network namespace.
    Host,
    /// Each task in a namespace of its own on the node's bridge (root only).
    Namespace,
}

/// Why setting up or tearing down task networking failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("invalid bridge name {0:?}: use 1 to 15 letters, digits, '-' or '_', starting with a letter")]
    BridgeName(String),
    #[error("task subnet {0} is too small: use a prefix of /30 or wider")]
    SubnetTooSmall(ipnet::Ipv4Net),
    #[error("no free address left in the task subnet {0}")]
    Exhausted(ipnet::Ipv4Net),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `program args…` (feeding `stdin` when given); its stderr becomes the error.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), NetworkError> {
    let command = format!("{program} {}", args.join(" "));
    let failed = |message: String| NetworkError::Command { command: command.clone(), message };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run {program}: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| failed(e.to_string()))?;
    }
    let output = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(failed(format!("{} ({})", String::from_utf8_lossy(&output.stderr).trim(), output.status)))
}

/// `ip args…`.
pub(crate) fn ip(args: &[&str]) -> Result<(), NetworkError> {
    run("ip", args, None)
}

/// Treats "it is already gone" (a link, namespace or nftables table) as done.
pub(crate) fn already_gone(err: NetworkError) -> Result<(), NetworkError> {
    match &err {
        NetworkError::Command { message, .. }
            if message.contains("Cannot find device") || message.contains("No such file or directory") =>
        {
            Ok(())
        }
        _ => Err(err),
    }
}

/// True when a link named `name` exists in the agent's network namespace.
fn link_exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else { return false };
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}
