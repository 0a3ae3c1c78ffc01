//! `shoal agent dataplane-apply` and `shoal agent dataplane-conformance`
//! (hidden): a kernel data plane driven without a store or controllers,
//! for tests and for debugging a node by hand.
//!
//! - `dataplane-apply --dataplane ipvs --endpoints FILE [--node N]
//!   [--task-subnet CIDR]` programs the Endpoints objects in FILE (YAML
//!   documents or JSON, as `shoal get endpoints -o yaml` prints them) and
//!   exits; the kernel keeps the result. `--cleanup` removes it instead.
//! - `dataplane-conformance --dataplane MODE` runs the shared suite
//!   ([`shoal_agent::dataplane::conformance`]) with the current network
//!   namespace as the node: run it in one made for the purpose.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use shoal_agent::dataplane::conformance::{self, Capabilities};
use shoal_agent::dataplane::userspace::listen_addresses;
use shoal_agent::dataplane::{Cluster, DataPlane, IpvsDataPlane, NftablesDataPlane, UserspaceDataPlane};
use shoal_agent::network::Ipv4Net;
use shoal_crd::Endpoints;
use tokio::runtime::Handle;

/// The nftables table `dataplane-conformance` programs (not the agent's).
const CONFORMANCE_TABLE: &str = "shoal-conformance";

/// Flags of `shoal agent dataplane-apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The kernel data plane to program.
    #[arg(long, value_parser = ["ipvs", "nftables"])]
    pub dataplane: String,
    /// Endpoints objects (YAML documents or JSON); required unless --cleanup.
    #[arg(long, required_unless_present = "cleanup")]
    pub endpoints: Option<PathBuf>,
    /// This node's name: host-mode published ports serve its backends only.
    #[arg(long, default_value = "local")]
    pub node: String,
    /// This node's task subnet (masquerading between its own tasks).
    #[arg(long)]
    pub task_subnet: Option<Ipv4Net>,
    /// Remove everything the data plane programs instead.
    #[arg(long)]
    pub cleanup: bool,
}

/// Flags of `shoal agent dataplane-conformance`.
#[derive(Debug, clap::Args)]
pub struct ConformanceArgs {
    /// The data plane to check (`userspace`: published ports only, no VIPs).
    #[arg(long, value_parser = ["ipvs", "nftables", "userspace"])]
    pub dataplane: String,
}

fn dataplane(mode: &str, nftables_table: &str) -> Box<dyn DataPlane> {
    match mode {
        "ipvs" => Box::new(IpvsDataPlane::new()),
        _ => Box::new(NftablesDataPlane::new(nftables_table)),
    }
}

/// Every Endpoints object in `file`.
fn read_endpoints(file: &std::path::Path) -> anyhow::Result<Vec<Arc<Endpoints>>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let documents = shoal_crd::yaml::parse_documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    documents
        .iter()
        .map(|d| {
            shoal_crd::yaml::de::from_node::<Endpoints>(d)
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("{}: not an Endpoints object: {e}", file.display()))
        })
        .collect()
}

/// Programs (or removes) the data plane once.
pub fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let mut dataplane = dataplane(&args.dataplane, shoal_agent::dataplane::nftables::DEFAULT_TABLE);
    if args.cleanup {
        dataplane.cleanup().with_context(|| format!("removing the {} data plane", args.dataplane))?;
        println!("{} data plane removed", args.dataplane);
        return Ok(());
    }
    let file = args.endpoints.context("--endpoints FILE is required")?;
    let endpoints = read_endpoints(&file)?;
    let cluster = Cluster::new(&args.node, args.task_subnet, Vec::new());
    dataplane.apply(&endpoints, &cluster).with_context(|| format!("programming the {} data plane", args.dataplane))?;
    println!(
        "{} data plane programmed: {} Endpoints object(s) from {}",
        args.dataplane,
        endpoints.len(),
        file.display()
    );
    Ok(())
}

/// Runs the shared suite; fails when any check does.
pub fn conformance(args: ConformanceArgs) -> anyhow::Result<()> {
    let (mut dataplane, vips): (Box<dyn DataPlane>, bool) = match args.dataplane.as_str() {
        // Listens on every address: the suite asks the node's veth address.
        "userspace" => (Box::new(UserspaceDataPlane::new(Handle::current(), listen_addresses("0.0.0.0"))), false),
        mode => (dataplane(mode, CONFORMANCE_TABLE), true),
    };
    // IPVS balances declared ports only (a firewall-mark service per VIP would carry the rest).
    let any_port = args.dataplane == "nftables";
    let checks = conformance::run(dataplane.as_mut(), Capabilities { vips, any_port });
    let failed = checks.iter().filter(|c| c.result.is_err()).count();
    for check in &checks {
        match &check.result {
            Ok(()) => println!("conformance ok   {}", check.name),
            Err(why) => println!("conformance FAIL {}: {why}", check.name),
        }
    }
    println!(
        "conformance of the {} data plane: {} of {} checks passed",
        args.dataplane,
        checks.len() - failed,
        checks.len()
    );
    if failed > 0 {
        bail!("{failed} conformance check(s) failed for the {} data plane", args.dataplane);
    }
    Ok(())
}
