//! The nftables data plane: the [`ruleset`](super::ruleset) it computes,
//! applied as one `nft -f -` transaction per change — the whole table on
//! the first call (and after any failure), only the differences after
//! that — plus the [`routes`](super::routes) to other nodes.
//!
//! # Caveats
//!
//! - One agent per network namespace: the table is the agent's alone and
//!   replaced whole when it starts.
//! - `net.ipv4.conf.all.route_localnet` is switched on (as kube-proxy does)
//!   so `127.0.0.1:<published>` can be DNATed to a task; the table's
//!   `input-guard` chain drops what that would otherwise let in.
//! - When a backend leaves, its connection-tracking entries in TIME_WAIT
//!   are deleted (`conntrack -D`, Debian's `conntrack`, when installed):
//!   otherwise a client that reuses a source port (Linux does on loopback)
//!   revives the old entry with its old DNAT target, a backend that may be
//!   gone, and the connection times out. Established connections are left
//!   alone so in-flight requests finish.
//! - Published-port traffic is always masqueraded (the backend may be on
//!   another node, and replies must come back through this one), so tasks
//!   see the node's address, not the client's — Swarm's ingress does the same.

use std::collections::BTreeSet;
use std::sync::Arc;

use shoal_crd::Endpoints;

use super::routes::{self, RouteTable};
use super::ruleset::Ruleset;
use super::{Cluster, DataPlane, DataPlaneError};
use crate::network::{already_gone, run};

/// The table's name when none is configured.
pub const DEFAULT_TABLE: &str = "shoal";

/// Programs the `shoal` table and the routes to other nodes.
#[derive(Debug)]
pub struct NftablesDataPlane {
    table: String,
    /// What the kernel holds, when known (None: rewrite it whole).
    programmed: Option<Ruleset>,
    routes: RouteTable,
    /// The last transaction sent, for logs and tests.
    last_script: String,
    /// Backend addresses programmed by the last apply.
    backends: BTreeSet<String>,
}

impl NftablesDataPlane {
    pub fn new(table: &str) -> Self {
        Self {
            table: table.into(),
            programmed: None,
            routes: RouteTable::new(),
            last_script: String::new(),
            backends: BTreeSet::new(),
        }
    }

    /// The last `nft -f` script sent (empty when the last apply changed nothing).
    pub fn last_script(&self) -> &str {
        &self.last_script
    }
}

impl DataPlane for NftablesDataPlane {
    fn apply(&mut self, endpoints: &[Arc<Endpoints>], cluster: &Cluster) -> Result<(), DataPlaneError> {
        let next = Ruleset::desired(endpoints, &cluster.local);
        let script = match self.programmed.take() {
            Some(current) => current.diff(&next, &self.table),
            None => {
                std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1").map_err(DataPlaneError::Sysctl)?;
                next.full(&self.table)
            }
        };
        if !script.is_empty() {
            run("nft", &["-f", "-"], Some(&script)).map_err(DataPlaneError::Nftables)?;
            tracing::debug!(table = %self.table, lines = script.lines().count(), "nftables transaction applied");
        }
        self.last_script = script;
        self.programmed = Some(next);
        let backends: BTreeSet<String> =
            endpoints.iter().flat_map(|e| e.spec.backends.iter().map(|b| b.address.clone())).collect();
        for gone in self.backends.difference(&backends) {
            forget_closed_connections(gone);
        }
        self.backends = backends;
        let wanted = routes::desired(&cluster.nodes, &cluster.local.name, cluster.local.subnet, routes::on_link);
        let (installed, result) = routes::apply(&self.routes, &wanted);
        self.routes = installed;
        result
    }

    fn cleanup(&mut self) -> Result<(), DataPlaneError> {
        let (installed, routed) = routes::apply(&self.routes, &RouteTable::new());
        self.routes = installed;
        self.programmed = None;
        run("nft", &["delete", "table", "ip", &self.table], None)
            .or_else(already_gone)
            .map_err(DataPlaneError::Nftables)?;
        routed
    }
}

/// Deletes the TIME_WAIT conntrack entries whose replies come from
/// `address` (a backend that just left), so reused source ports get a fresh
/// DNAT decision. Best effort: without the `conntrack` tool it only logs.
fn forget_closed_connections(address: &str) {
    let result = std::process::Command::new("conntrack")
        .args(["-D", "-p", "tcp", "--state", "TIME_WAIT", "--reply-src", address])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match result {
        // Exit 1 means "no entry matched": nothing to forget.
        Ok(_) => tracing::debug!(backend = address, "forgot closed connections of a removed backend"),
        Err(err) => {
            tracing::debug!(backend = address, error = %err, "conntrack not available; closed connections of a removed backend are not forgotten")
        }
    }
}
