//! `shoal agent`: the node agent — registers this node, heartbeats, and
//! runs the tasks the scheduler assigns to it (see the `shoal-agent` crate).
//! `shoal agent shim --dir DIR` (hidden) is the per-task supervisor the
//! agent starts; it needs no store.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use shoal_agent::config::parse_labels;
use shoal_agent::dataplane::DataPlaneMode;
use shoal_agent::logs::{DEFAULT_KEEP, DEFAULT_MAX_BYTES};
use shoal_agent::network::{Ipv4Net, NetworkMode, DEFAULT_BRIDGE};
use shoal_agent::{AgentConfig, ImageCatalog};
use shoal_store::client::Store;

use crate::store_flags::StoreFlags;

/// Flags of `shoal agent`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    /// Node name (unique in the cluster).
    #[arg(long, required = true)]
    pub name: Option<String>,
    /// Address other nodes reach this one at.
    #[arg(long, required = true)]
    pub advertise_addr: Option<IpAddr>,
    /// Node labels as key=value (comma-separated or repeated); applied when the node is first registered.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Task directories and logs (default: /var/lib/shoal/agents/NAME as root, else ~/.local/share/shoal/agents/NAME).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds without a heartbeat after which the node counts as down.
    #[arg(long, default_value_t = 3)]
    pub heartbeat_ttl: u64,
    /// YAML/JSON file mapping images (`name:tag` or `name`) to commands; `shoal/demo` is built in.
    #[arg(long)]
    pub image_catalog: Option<PathBuf>,
    /// Bytes per task log file before it is rotated.
    #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
    pub log_max_size: u64,
    /// Rotated log files kept per stream.
    #[arg(long, default_value_t = DEFAULT_KEEP)]
    pub log_max_files: usize,
    /// Task networking: `namespace` (a network namespace per task on the node's bridge; needs root) or `host` (tasks share the host's network). Default: namespace as root, else host.
    #[arg(long, value_parser = ["namespace", "host"])]
    pub network: Option<String>,
    /// The bridge task namespaces are attached to.
    #[arg(long, default_value = DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Subnet (CIDR) task addresses come from, standing in for the one the controllers assign to the node (status.taskSubnet); wins when both exist.
    #[arg(long)]
    pub task_subnet: Option<Ipv4Net>,
    /// How service VIPs and published ports are programmed: `ipvs` (needs root and a kernel with IPVS), `nftables` (the `shoal` table; needs root), `userspace` (a proxy in the agent for published ports; any user) or `none`. Default: ipvs when the kernel has it, else nftables as root; userspace otherwise.
    #[arg(long, value_parser = ["ipvs", "nftables", "userspace", "none"])]
    pub dataplane: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Supervise one task (started by the agent).
    #[command(hide = true)]
    Shim {
        /// The task's directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Program a kernel data plane from an Endpoints file and exit (tests, debugging).
    #[command(hide = true)]
    DataplaneApply(super::dataplane_apply::ApplyArgs),
    /// Run the data-plane conformance suite in this network namespace.
    #[command(hide = true)]
    DataplaneConformance(super::dataplane_apply::ConformanceArgs),
}

/// Runs the shim, or connects to the store and runs the agent.
pub async fn main(flags: &StoreFlags, args: AgentArgs) -> anyhow::Result<()> {
    match args.command {
        Some(AgentCommand::Shim { dir }) => {
            return tokio::task::spawn_blocking(move || shoal_agent::shim::run(dir)).await?.map_err(Into::into);
        }
        Some(AgentCommand::DataplaneApply(args)) => {
            return tokio::task::spawn_blocking(move || super::dataplane_apply::apply(args)).await?;
        }
        Some(AgentCommand::DataplaneConformance(args)) => {
            return tokio::task::spawn_blocking(move || super::dataplane_apply::conformance(args)).await?;
        }
        None => {}
    }
    run(super::connect(flags).await?, args).await
}

/// The agent `shoal up` runs for this machine: named after the host,
/// advertised on loopback, its data under `data_dir`.
pub(crate) fn local_args(data_dir: PathBuf) -> AgentArgs {
    AgentArgs {
        command: None,
        name: Some(crate::commands::controller::hostname()),
        advertise_addr: Some(IpAddr::from([127, 0, 0, 1])),
        labels: Vec::new(),
        data_dir: Some(data_dir),
        heartbeat_ttl: 3,
        image_catalog: None,
        log_max_size: DEFAULT_MAX_BYTES,
        log_max_files: DEFAULT_KEEP,
        network: None,
        bridge: DEFAULT_BRIDGE.to_string(),
        task_subnet: None,
        dataplane: None,
    }
}

/// Runs the agent against `store` until SIGTERM or Ctrl-C.
pub async fn run(store: Store, args: AgentArgs) -> anyhow::Result<()> {
    let config = config(args)?;
    shoal_agent::run(store, config, super::serve::shutdown_signal()).await?;
    Ok(())
}

pub(crate) fn config(args: AgentArgs) -> anyhow::Result<AgentConfig> {
    let name = args.name.context("--name is required")?;
    let advertise_addr = args.advertise_addr.context("--advertise-addr is required")?;
    let exe = std::env::current_exe().context("cannot find the running shoal binary")?;
    let mut catalog = ImageCatalog::builtin(exe.clone());
    if let Some(file) = &args.image_catalog {
        catalog = catalog.with_file(file)?;
    }
    let network = match args.network.as_deref() {
        Some("host") => NetworkMode::Host,
        Some(_) if !shoal_agent::sys::is_root() => {
            anyhow::bail!("--network namespace needs root; run as root or use --network host")
        }
        Some(_) => NetworkMode::Namespace,
        None if shoal_agent::sys::is_root() => NetworkMode::Namespace,
        None => NetworkMode::Host,
    };
    let dataplane = dataplane_mode(args.dataplane.as_deref())?;
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => default_data_dir()?.join("agents").join(&name),
    };
    Ok(AgentConfig {
        labels: parse_labels(&args.labels).map_err(anyhow::Error::msg)?,
        name,
        advertise_addr: advertise_addr.to_string(),
        data_dir,
        heartbeat_ttl: args.heartbeat_ttl.max(1) as i64,
        catalog,
        shim: vec![exe.display().to_string(), "agent".into(), "shim".into()],
        log_max_bytes: args.log_max_size,
        log_keep: args.log_max_files,
        network,
        bridge: args.bridge,
        task_subnet: args.task_subnet,
        dataplane,
    })
}

/// `--dataplane` as given (kernel modes need root), else the best this node has.
fn dataplane_mode(flag: Option<&str>) -> anyhow::Result<DataPlaneMode> {
    let root = shoal_agent::sys::is_root();
    Ok(match flag {
        Some("none") => DataPlaneMode::None,
        Some("userspace") => DataPlaneMode::Userspace,
        Some(kernel) if !root => {
            anyhow::bail!("--dataplane {kernel} needs root; run as root or use --dataplane userspace")
        }
        Some("ipvs") => DataPlaneMode::Ipvs,
        Some(_) => DataPlaneMode::Nftables,
        None if !root => DataPlaneMode::Userspace,
        None => shoal_agent::dataplane::detect_kernel_mode(),
    })
}

/// /var/lib/shoal as root, else $XDG_DATA_HOME/shoal or ~/.local/share/shoal.
pub(crate) fn default_data_dir() -> anyhow::Result<PathBuf> {
    if shoal_agent::sys::is_root() {
        return Ok(PathBuf::from("/var/lib/shoal"));
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("shoal"));
    }
    let home = std::env::var_os("HOME").context("neither --data-dir nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/shoal"))
}
