//! `shoal up` and `shoal store`: the server roles, in the foreground until
//! Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use shoal_store::server::EmbeddedStore;
use tokio::net::TcpListener;

use crate::args::ServeArgs;

/// `shoal up`: the embedded store plus the control plane that exists so far.
pub async fn up(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir = data_dir(&args)?;
    let (store, listener) = open_store(&data_dir, &args).await?;
    tracing::info!(
        store = %args.listen,
        data_dir = %data_dir.display(),
        "shoal is up; deploy with `shoal stack deploy -c FILE NAME` (no controllers or agents run yet: services are stored, not started)"
    );
    store.serve(listener, shutdown_signal()).await.context("the embedded store stopped")?;
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
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let store = EmbeddedStore::open(data_dir).with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is another store or etcd running there?)", args.listen))?;
    Ok((store, listener))
}

/// `--data-dir`, else /var/lib/shoal as root, else $XDG_DATA_HOME/shoal or ~/.local/share/shoal.
fn data_dir(args: &ServeArgs) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &args.data_dir {
        return Ok(dir.clone());
    }
    if is_root() {
        return Ok(PathBuf::from("/var/lib/shoal"));
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("shoal"));
    }
    let home = std::env::var_os("HOME").context("neither --data-dir nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/shoal"))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
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
