//! How to reach the store: the `--etcd-*` flags and `--prefix`, shared by
//! every subcommand.

use std::path::PathBuf;
use std::time::Duration;

/// Connection settings for a real etcd cluster or the embedded store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `http(s)://host:port` URLs; tried in order.
    pub endpoints: Vec<String>,
    /// CA bundle to verify the server (enables TLS).
    pub cacert: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Client key for mutual TLS.
    pub key: Option<PathBuf>,
    /// `user` or `user:password` for etcd's authentication.
    pub user: Option<String>,
    /// Key prefix under which all of Shoal's objects live (default `/shoal`).
    pub prefix: String,
    /// How long to wait for a connection before giving up.
    pub connect_timeout: Duration,
    /// How long to wait for any single unary request.
    pub request_timeout: Duration,
}

impl StoreConfig {
    /// The defaults: the local store on 127.0.0.1:2379 under `/shoal`.
    pub fn local() -> Self {
        Self::for_endpoint("http://127.0.0.1:2379")
    }

    /// Defaults with one endpoint.
    pub fn for_endpoint(endpoint: impl Into<String>) -> Self {
        Self {
            endpoints: vec![endpoint.into()],
            cacert: None,
            cert: None,
            key: None,
            user: None,
            prefix: "/shoal".into(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// The endpoints joined for messages.
    pub fn endpoint_list(&self) -> String {
        self.endpoints.join(",")
    }
}
