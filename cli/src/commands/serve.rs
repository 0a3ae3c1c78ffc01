//! `shoal up` and `shoal store`: the server roles, in the foreground until
//! Ctrl-C or SIGTERM.
//!
//! `shoal up` is everything one machine needs in one process: the embedded
//! store, the controller manager and a local agent, all talking to the
//! store over the same etcd API a multi-node cluster uses. On shutdown the
//! agent and controllers stop first, then the store. Tasks keep running
//! (the agent re-adopts them when `shoal up` starts again), as they do when
//! a lone `shoal agent` restarts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use shoal_store::client::{Store, StoreConfig};
use shoal_store::server::EmbeddedStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::args::{ServeArgs, UpArgs};

/// `shoal up`: store + controllers + a local agent.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = data_dir(&args.serve)?;
    let (embedded, listener) = open_store(&data_dir, &args.serve).await?;
    let address = listener.local_addr().context("reading the store's listen address")?;
    let (stop_store, store_stopped) = stopper();
    let server = tokio::spawn(embedded.serve(listener, store_stopped));
    let client = local_client(address).await?;

    let (stop_members, members_stopped) = stopper();
    let controller_args = super::controller::ControllerArgs {
        encryption_key_file: Some(super::cluster_key::default_key_file(Some(&data_dir))?),
        ..Default::default()
    };
    let controllers =
        tokio::spawn(super::controller::run_until(client.clone(), controller_args, members_stopped.clone()));
    if let Some(dir) = &args.dev_secrets {
        let names = super::dev_secrets::load(&client, dir).await?;
        tracing::info!(dir = %dir.display(), secrets = ?names, "dev secrets loaded");
    }
    let agent = if args.no_agent {
        None
    } else {
        let config = super::agent::config(super::agent::local_args(data_dir.join("agent")))?;
        let node = config.name.clone();
        tracing::info!(%node, "local agent starting");
        Some(tokio::spawn(shoal_agent::run(client, config, members_stopped)))
    };
    tracing::info!(
        store = %address,
        data_dir = %data_dir.display(),
        "shoal is up: deploy with `shoal stack deploy -c FILE NAME`, watch with `shoal events -w`"
    );

    shutdown_signal().await;
    stop_members.send_replace(true);
    if let Some(agent) = agent {
        match tokio::time::timeout(Duration::from_secs(10), agent).await {
            Ok(Ok(Err(err))) => tracing::warn!(error = %err, "local agent stopped with an error"),
            Err(_) => tracing::warn!("local agent did not stop within 10s"),
            _ => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), controllers).await;
    stop_store.send_replace(true);
    server.await.context("the embedded store task failed")?.context("the embedded store stopped")?;
    tracing::info!("shoal stopped");
    Ok(())
}

/// `shoal store`: only the embedded etcd-API store.
pub async fn store(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir = data_dir(&args)?;
    let (store, listener) = open_store(&data_dir, &args).await?;
    tracing::info!(listen = %args.listen, data_dir = %data_dir.display(), "embedded store serving the etcd v3 API");
    store.serve(listener, shutdown_signal()).await.context("the embedded store stopped")?;
    Ok(())
}

async fn open_store(data_dir: &std::path::Path, args: &ServeArgs) -> anyhow::Result<(EmbeddedStore, TcpListener)> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let store =
        EmbeddedStore::open(data_dir).with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is another store or etcd running there?)", args.listen))?;
    Ok((store, listener))
}

/// A client of the in-process store, through its gRPC listener like any other.
async fn local_client(address: SocketAddr) -> anyhow::Result<Store> {
    let config = StoreConfig::for_endpoint(format!("http://{address}"));
    Ok(Store::connect(&config).await?)
}

/// A stop signal shared by several tasks: send `true` to stop them all.
fn stopper() -> (watch::Sender<bool>, impl std::future::Future<Output = ()> + Clone + Send + 'static) {
    let (tx, rx) = watch::channel(false);
    let stopped = async move {
        let mut rx = rx;
        let _ = rx.wait_for(|stop| *stop).await;
    };
    (tx, futures::FutureExt::shared(Box::pin(stopped)))
}

/// `--data-dir`, else the default data directory.
fn data_dir(args: &ServeArgs) -> anyhow::Result<PathBuf> {
    match &args.data_dir {
        Some(dir) => Ok(dir.clone()),
        None => super::agent::default_data_dir(),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
