//! Connecting to the store with a deadline, and unary calls that time out
//! and name the endpoint instead of hanging.

use std::future::Future;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use super::config::StoreConfig;
use super::error::StoreError;
use crate::proto::{
    auth_client::AuthClient, kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    watch_client::WatchClient, AuthenticateRequest, StatusRequest,
};

/// Adds etcd's auth token (when a user is configured) to every request.
#[derive(Clone, Default)]
pub struct TokenInterceptor {
    token: Option<MetadataValue<Ascii>>,
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.token {
            request.metadata_mut().insert("token", token.clone());
        }
        Ok(request)
    }
}

/// The channel type every generated client is built on.
pub type AuthedChannel = InterceptedService<Channel, TokenInterceptor>;

/// A connection to one store endpoint.
#[derive(Clone)]
pub struct Etcd {
    channel: Channel,
    interceptor: TokenInterceptor,
    endpoint: String,
    request_timeout: Duration,
}

impl Etcd {
    /// Connects to the first endpoint that answers within `connect_timeout`,
    /// authenticating when a user is configured.
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        let mut failures = Vec::new();
        for url in &config.endpoints {
            match connect_one(config, url).await {
                Ok(channel) => {
                    let mut etcd = Etcd {
                        channel,
                        interceptor: TokenInterceptor::default(),
                        endpoint: url.clone(),
                        request_timeout: config.request_timeout,
                    };
                    if let Some(user) = &config.user {
                        etcd.authenticate(user).await?;
                    }
                    return Ok(etcd);
                }
                Err(ConnectFailure::Config(msg)) => return Err(StoreError::Config(msg)),
                Err(ConnectFailure::Unreachable(reason)) => {
                    failures.push(if config.endpoints.len() > 1 { format!("{url}: {reason}") } else { reason })
                }
            }
        }
        Err(StoreError::Unreachable {
            endpoints: config.endpoint_list(),
            reason: if failures.is_empty() { "no endpoint configured".into() } else { failures.join("; ") },
        })
    }

    async fn authenticate(&mut self, user: &str) -> Result<(), StoreError> {
        let (name, password) = match user.split_once(':') {
            Some((n, p)) => (n.to_string(), p.to_string()),
            None => (user.to_string(), String::new()),
        };
        let mut auth = AuthClient::new(self.channel.clone());
        let response = self
            .unary(auth.authenticate(AuthenticateRequest { name: name.clone(), password }))
            .await
            .map_err(|e| StoreError::Config(format!("authenticating as {name:?} failed: {e}")))?;
        let token = MetadataValue::try_from(response.token.as_str())
            .map_err(|_| StoreError::Config("the store returned an unusable auth token".into()))?;
        self.interceptor = TokenInterceptor { token: Some(token) };
        Ok(())
    }

    /// The endpoint this connection talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A KV client on this connection.
    pub fn kv(&self) -> KvClient<AuthedChannel> {
        KvClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// A Watch client on this connection.
    pub fn watch(&self) -> WatchClient<AuthedChannel> {
        WatchClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// A Lease client on this connection.
    pub fn lease(&self) -> LeaseClient<AuthedChannel> {
        LeaseClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// A Maintenance client on this connection.
    pub fn maintenance(&self) -> MaintenanceClient<AuthedChannel> {
        MaintenanceClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// Runs one unary call with the request timeout, mapping failures to
    /// errors that name the endpoint.
    pub async fn unary<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.request_timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.rpc_error(status)),
            Err(_) => Err(StoreError::Timeout { endpoint: self.endpoint.clone(), timeout: self.request_timeout }),
        }
    }

    /// Wraps a gRPC status as an error naming this endpoint.
    pub fn rpc_error(&self, status: Status) -> StoreError {
        if status.code() == tonic::Code::Unavailable {
            return StoreError::Unreachable { endpoints: self.endpoint.clone(), reason: status.message().to_string() };
        }
        StoreError::Rpc { endpoint: self.endpoint.clone(), status }
    }
}

/// Why one endpoint could not be used.
enum ConnectFailure {
    /// The configuration itself is wrong: trying other endpoints won't help.
    Config(String),
    /// The endpoint did not answer.
    Unreachable(String),
}

async fn connect_one(config: &StoreConfig, url: &str) -> Result<Channel, ConnectFailure> {
    let endpoint = build_endpoint(config, url).map_err(|e| ConnectFailure::Config(e.to_string()))?;
    let no_answer = || ConnectFailure::Unreachable(format!("no answer within {:?}", config.connect_timeout));
    let channel = match tokio::time::timeout(config.connect_timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(err)) => return Err(ConnectFailure::Unreachable(error_chain(&err))),
        Err(_) => return Err(no_answer()),
    };
    // A TCP connection is not an answer: ask for the server's status so a
    // listener that never speaks fails here, within the connect timeout.
    // Any gRPC reply (even an error) proves a live server.
    let mut maintenance = MaintenanceClient::new(channel.clone());
    match tokio::time::timeout(config.connect_timeout, maintenance.status(StatusRequest {})).await {
        Ok(Ok(_)) => Ok(channel),
        Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
            Err(ConnectFailure::Unreachable(status.message().to_string()))
        }
        Ok(Err(_)) => Ok(channel),
        Err(_) => Err(no_answer()),
    }
}

fn build_endpoint(config: &StoreConfig, url: &str) -> Result<Endpoint, StoreError> {
    let url = if url.contains("://") { url.to_string() } else { format!("http://{url}") };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| StoreError::Config(format!("bad endpoint {url:?}: {e}")))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    if config.cacert.is_some() || config.cert.is_some() || url.starts_with("https://") {
        endpoint =
            endpoint.tls_config(tls_config(config)?).map_err(|e| StoreError::Config(format!("TLS for {url}: {e}")))?;
    }
    Ok(endpoint)
}

fn tls_config(config: &StoreConfig) -> Result<ClientTlsConfig, StoreError> {
    let read = |path: &std::path::PathBuf, what: &str| {
        std::fs::read(path).map_err(|e| StoreError::Config(format!("cannot read {what} {}: {e}", path.display())))
    };
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &config.cacert {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca, "--etcd-cacert")?));
    }
    match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(read(cert, "--etcd-cert")?, read(key, "--etcd-key")?));
        }
        (None, None) => {}
        _ => return Err(StoreError::Config("--etcd-cert and --etcd-key must be given together".into())),
    }
    Ok(tls)
}

/// An error and its causes on one line, without repeating a cause that
/// merely restates its parent.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}
