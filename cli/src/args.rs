//! The command line, in Docker's words: `stack`, `service`, `apply`, `get`
//! … plus the server roles `up` and `store`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::logging::LogFormat;
use crate::output::OutputFormat;
use crate::store_flags::StoreFlags;

/// Shoal: Swarm's stack files and service verbs on a Kubernetes-style control plane.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalFlags,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalFlags {
    /// Log line format (filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub store: StoreFlags,
}

#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run Shoal on this machine: the embedded store and the control plane, in the foreground.
    Up(UpArgs),
    /// Run only the embedded etcd-API store.
    Store(ServeArgs),
    /// Run the node agent: register this node, heartbeat, run its tasks.
    Agent(crate::commands::agent::AgentArgs),
    /// Run the controller manager: every reconcile loop, leader-elected.
    Controller(crate::commands::controller::ControllerArgs),
    /// Deploy and manage stacks (compose files).
    #[command(subcommand)]
    Stack(StackCommand),
    /// Inspect and remove services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// List and update nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage configs: non-secret files mounted into tasks.
    #[command(subcommand)]
    Config(FileObjectCommand),
    /// Manage secrets: values stored only encrypted, mounted into tasks.
    #[command(subcommand)]
    Secret(FileObjectCommand),
    /// The cluster's secret encryption key: `rotate` it (on a controller's machine).
    #[command(subcommand)]
    ClusterKey(crate::commands::key_rotation::ClusterKeyCommand),
    /// Show the controllers' decisions, one line each.
    Events {
        /// Keep printing new events.
        #[arg(short = 'w', long)]
        watch: bool,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Create or update objects from native manifests (multi-document YAML).
    Apply {
        /// Manifest file.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// List objects of a kind, or show one.
    Get {
        /// services, configs, secrets, nodes, tasks, events (singular works too).
        kind: String,
        /// Show only this object.
        name: Option<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Delete one object.
    Delete {
        /// services, configs, secrets, …
        kind: String,
        /// Object name.
        name: String,
    },
    /// Print the JSON schema of a kind.
    Schema {
        /// Service, Task, Node, Config, Secret or Event.
        kind: String,
    },
    /// The demo workload used in docs and tests.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Benchmarks that print a comparison.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `shoal up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Run the store and controllers only (agents join separately with `shoal agent`).
    #[arg(long)]
    pub no_agent: bool,
    /// Development: every file in DIR becomes a secret of the same name (sealed, never logged).
    #[arg(long, value_name = "DIR")]
    pub dev_secrets: Option<PathBuf>,
}

/// Where a server keeps its data and listens.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory for the store's database file (default: /var/lib/shoal as root, else ~/.local/share/shoal).
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address for the etcd v3 API (loopback by default; expose deliberately).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub listen: SocketAddr,
}

#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Create or update a stack from a compose file.
    Deploy {
        /// Compose file.
        #[arg(short = 'c', long = "compose-file")]
        compose_file: PathBuf,
        /// Stack name.
        name: String,
        /// Remove services of the stack that are no longer in the file.
        #[arg(long)]
        prune: bool,
    },
    /// List stacks.
    Ls {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// List the services of a stack.
    Services {
        /// Stack name.
        name: String,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// List the tasks of a stack.
    Ps {
        /// Stack name.
        name: String,
        /// Do not truncate ids and errors.
        #[arg(long)]
        no_trunc: bool,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Remove a stack: its services, configs and secrets.
    Rm {
        /// Stack names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service.
    Create(ServiceCreateArgs),
    /// Set the number of replicas: SERVICE=N…
    Scale {
        #[arg(required = true, value_name = "SERVICE=REPLICAS")]
        targets: Vec<String>,
    },
    /// Show the logs of a service's tasks (those on this machine).
    Logs {
        /// Service name.
        name: String,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines of each log.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// List the tasks of services.
    Ps {
        /// Service names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Do not truncate ids and errors.
        #[arg(long)]
        no_trunc: bool,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// List services.
    Ls {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Show services in full.
    Inspect {
        /// Service names.
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Json)]
        output: OutputFormat,
    },
    /// Remove services.
    Rm {
        /// Service names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Change a service; its tasks are replaced by a rolling update.
    Update(Box<crate::commands::service_update::ServiceUpdateArgs>),
    /// Go back to the previous spec (or an earlier revision).
    Rollback {
        /// Revision to go back to (`service history` lists them).
        #[arg(long)]
        to_revision: Option<i64>,
        /// Return at once instead of following the rollback.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Service name.
        name: String,
    },
    /// List a service's revisions.
    History {
        /// Service name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The same workload against the embedded store and a real etcd.
    Store(crate::commands::bench::StoreBenchArgs),
    /// Services to running tasks with the real controllers and simulated agents, embedded store vs etcd.
    Schedule(crate::commands::bench_schedule::ScheduleBenchArgs),
    /// Rolling update time vs the ideal, and the reaction to a failing health check, with the real controllers and agent.
    Update(crate::commands::bench_update::UpdateBenchArgs),
    /// Requests/s and p99 through the mesh (nftables, userspace) vs straight to a task, and nftables rule programming times (root).
    Mesh(crate::commands::bench_mesh::MeshBenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Serve the demo HTTP app (/ tells who answered, /health for probes).
    Serve(crate::commands::demo::DemoArgs),
    /// GET an http:// URL: exit 0 on 2xx, 1 otherwise (a healthcheck needing no host tools).
    Probe(crate::commands::demo::ProbeArgs),
    /// Send HTTP GETs with N at a time until stopped; print requests, failures and answers per version as JSON.
    Load(crate::commands::demo_load::LoadArgs),
}

/// `shoal service create`.
#[derive(Debug, Args)]
pub struct ServiceCreateArgs {
    /// Service name (default: the image's name plus a random suffix).
    #[arg(long)]
    pub name: Option<String>,
    /// replicated or global.
    #[arg(long, default_value = "replicated")]
    pub mode: String,
    /// Service labels (KEY=VALUE).
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub flags: crate::commands::spec_flags::SpecFlags,
    /// Docker's `-d`, accepted so scripts run unchanged: `service create`
    /// always returns once the service is written (`shoal service ps` follows it).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Image, e.g. shoal/demo:1.0.
    pub image: String,
    /// Command and arguments (replace the image's command).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    Ls {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Show nodes in full.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Json)]
        output: OutputFormat,
    },
    /// Change a node's availability or labels.
    Update(NodeUpdateArgs),
}

/// `shoal node update`.
#[derive(Debug, Args)]
pub struct NodeUpdateArgs {
    /// active, pause or drain.
    #[arg(long)]
    pub availability: Option<String>,
    /// Add or change a label (KEY=VALUE).
    #[arg(long)]
    pub label_add: Vec<String>,
    /// Remove a label.
    #[arg(long)]
    pub label_rm: Vec<String>,
    /// Node name.
    pub name: String,
}

/// `shoal config …` and `shoal secret …`: the same verbs for both kinds.
#[derive(Debug, Subcommand)]
pub enum FileObjectCommand {
    /// Create from a file or standard input (`-`); prints the new ID.
    Create(FileObjectCreateArgs),
    /// List them: ID, NAME, CREATED, UPDATED.
    Ls {
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Show them as Docker does (a config's data in base64 under Spec.Data; a secret's value never).
    Inspect {
        /// Names or IDs.
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Json)]
        output: OutputFormat,
    },
    /// Remove them; refused while a service uses one.
    Rm {
        /// Names or IDs.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Store a new version; every service using it rolls onto it with its
    /// own update config (same target path, new content). Prints `NAME vN`.
    Rotate {
        /// Name or ID.
        name: String,
        /// File with the new value, or `-` for standard input.
        file: String,
    },
}

/// `config create` / `secret create`.
#[derive(Debug, Args)]
pub struct FileObjectCreateArgs {
    /// Labels (KEY=VALUE).
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    /// Configs only: render the content as a template at task start (`golang`).
    #[arg(long, value_parser = ["golang"])]
    pub template_driver: Option<String>,
    /// Name.
    pub name: String,
    /// File with the value, or `-` for standard input.
    pub file: String,
}
