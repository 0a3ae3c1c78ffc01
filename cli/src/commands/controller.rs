//! `shoal controller`: the controller manager — every reconcile loop,
//! leader-elected so several replicas can run (one acts, the others wait).

use shoal_controllers::endpoints::allocate::{default_service_cidr, parse_service_cidr, Ipv4Net};
use shoal_controllers::manager::{run_with, Settings};
use shoal_controllers::runtime::events::EventSink;
use shoal_controllers::secrets::keys::KeyRing;
use shoal_store::client::compactor::run_compactor;
use shoal_store::client::Store;

/// How much history the store keeps (kube-apiserver compacts every 5 minutes too).
pub const COMPACTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

use super::serve::shutdown_signal;

/// `shoal controller` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Name in the leader election and logs (default: hostname and process id).
    #[arg(long, env = "SHOAL_CONTROLLER_IDENTITY")]
    pub identity: Option<String>,
    /// Seconds a leader keeps leading after its last lease renewal; a
    /// standby takes over at most this long after the leader dies.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..=600))]
    pub lease_ttl: i64,
    /// Finished tasks kept per replica slot (Docker's task-history-limit).
    #[arg(long, default_value_t = shoal_controllers::service::DEFAULT_HISTORY_LIMIT)]
    pub task_history_limit: usize,
    /// Spec revisions kept per service for `service rollback --to-revision`.
    #[arg(long, default_value_t = shoal_controllers::update::revisions::DEFAULT_LIMIT)]
    pub revision_history_limit: usize,
    /// Private keys that open the cluster's secrets (created, mode 0600, if
    /// absent; default: secrets.key in the data directory).
    #[arg(long, env = "SHOAL_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<std::path::PathBuf>,
    /// Where services' virtual IPs come from (`.1` is never handed out).
    #[arg(long, default_value = "10.96.0.0/16", value_parser = parse_service_cidr)]
    pub service_cidr: Ipv4Net,
}

/// Runs the controller manager until Ctrl-C or SIGTERM.
pub async fn run(store: Store, args: ControllerArgs) -> anyhow::Result<()> {
    run_until(store, args, shutdown_signal()).await;
    Ok(())
}

/// Runs the controller manager — every loop, the event sink and the
/// compactor — until `shutdown`.
pub async fn run_until(store: Store, args: ControllerArgs, shutdown: impl std::future::Future<Output = ()> + Send) {
    let identity = args.identity.unwrap_or_else(default_identity);
    tracing::info!(%identity, lease_ttl = args.lease_ttl, "controller manager starting");
    let mut settings = Settings {
        identity,
        lease_ttl_secs: args.lease_ttl,
        task_history_limit: args.task_history_limit,
        revision_history_limit: args.revision_history_limit,
        sealing_keys: Default::default(),
        service_cidr: args.service_cidr,
    };
    match super::cluster_key::default_key_file(None).map(|default| args.encryption_key_file.unwrap_or(default)) {
        Ok(path) => match super::cluster_key::load_and_publish(&store, &path).await {
            // The secrets loop re-seals secrets to the nodes that need them.
            Ok(file) => settings.sealing_keys = KeyRing::from_file(path, file.keys),
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "secrets cannot be created until the encryption key is published")
            }
        },
        Err(err) => tracing::error!(error = %format!("{err:#}"), "no --encryption-key-file and no data directory"),
    }
    EventSink::install(store.clone());
    let compactor = tokio::spawn(run_compactor(store.clone(), COMPACTION_INTERVAL, std::future::pending()));
    run_with(store, settings, shutdown).await;
    compactor.abort();
}

impl Default for ControllerArgs {
    fn default() -> Self {
        Self {
            identity: None,
            lease_ttl: 5,
            task_history_limit: shoal_controllers::service::DEFAULT_HISTORY_LIMIT,
            revision_history_limit: shoal_controllers::update::revisions::DEFAULT_LIMIT,
            encryption_key_file: None,
            service_cidr: default_service_cidr(),
        }
    }
}

/// `hostname-pid`.
fn default_identity() -> String {
    format!("{}-{}", hostname(), std::process::id())
}

/// This machine's hostname ("shoal" if it has none).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "shoal".to_string())
}
