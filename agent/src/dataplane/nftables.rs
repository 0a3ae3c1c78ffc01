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
//! - When a backend leaves, connection tracking is left alone. A client
//!   that reuses a source port while the old entry is in TIME_WAIT gets a
//!   fresh DNAT decision anyway (the kernel drops a closed entry when a new
//!   SYN arrives on it). This plane used to delete the leaving backend's
//!   entries (`conntrack -D --state TIME_WAIT --reply-src`), and that came
//!   with resets: a captured one was a new backend answering the middle of
//!   a connection it never accepted, i.e. an open connection that had lost
//!   its entry and been DNATed afresh. Without the deletion the mesh test's
//!   fresh-connection failures (1–3 in about 55,000 in most runs) are gone.
//! - Published-port traffic is always masqueraded (the backend may be on
//!   another node, and replies must come back through this one), so tasks
//!   see the node's address, not the client's — Swarm's ingress does the same.

use std::sync::Arc;

use shoal_crd::Endpoints;

use super::routes::Routes;
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
    routes: Routes,
    /// The last transaction sent, for logs and tests.
    last_script: String,
}

impl NftablesDataPlane {
    pub fn new(table: &str) -> Self {
        Self { table: table.into(), programmed: None, routes: Routes::new(), last_script: String::new() }
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
        self.routes.apply(cluster)
    }

    fn cleanup(&mut self) -> Result<(), DataPlaneError> {
        let routed = self.routes.cleanup();
        self.programmed = None;
        run("nft", &["delete", "table", "ip", &self.table], None)
            .or_else(already_gone)
            .map_err(DataPlaneError::Nftables)?;
        routed
    }
}
