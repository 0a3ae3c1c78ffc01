//! The flags that say where the store is, shared by every client command.

use std::path::PathBuf;
use std::time::Duration;

use shoal_store::client::StoreConfig;

/// `--etcd-*` and `--prefix`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreFlags {
    /// Store endpoints (a real etcd cluster or `shoal store`), comma-separated.
    #[arg(
        long,
        env = "SHOAL_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    pub etcd_endpoints: Vec<String>,
    /// CA certificate to verify the store's TLS certificate.
    #[arg(long, env = "SHOAL_ETCD_CACERT", global = true)]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    #[arg(long, env = "SHOAL_ETCD_CERT", global = true)]
    pub etcd_cert: Option<PathBuf>,
    /// Client key for mutual TLS.
    #[arg(long, env = "SHOAL_ETCD_KEY", global = true)]
    pub etcd_key: Option<PathBuf>,
    /// etcd user as `name` or `name:password`.
    #[arg(long, env = "SHOAL_ETCD_USER", global = true, hide_env_values = true)]
    pub etcd_user: Option<String>,
    /// Key prefix under which Shoal keeps its objects.
    #[arg(long, env = "SHOAL_PREFIX", default_value = "/shoal", global = true)]
    pub prefix: String,
    /// Seconds to wait for the store before giving up.
    #[arg(long, env = "SHOAL_CONNECT_TIMEOUT", default_value_t = 3, global = true)]
    pub connect_timeout: u64,
}

impl StoreFlags {
    /// The client configuration these flags describe.
    pub fn config(&self) -> StoreConfig {
        let mut config = StoreConfig::for_endpoint("");
        config.endpoints = self.etcd_endpoints.clone();
        config.cacert = self.etcd_cacert.clone();
        config.cert = self.etcd_cert.clone();
        config.key = self.etcd_key.clone();
        config.user = self.etcd_user.clone();
        config.prefix = self.prefix.clone();
        config.connect_timeout = Duration::from_secs(self.connect_timeout.max(1));
        config.request_timeout = Duration::from_secs(self.connect_timeout.max(1) + 2);
        config
    }
}
