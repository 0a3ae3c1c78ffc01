//! `shoal cluster-key rotate`: replaces the cluster's secret encryption key
//! without a new version of any secret and without restarting any task.
//!
//! It runs where the controllers' `--encryption-key-file` is, with that
//! file: only a holder of the private key can re-wrap a data key, and the
//! controllers on that machine read the file again when it changes (see
//! `shoal_controllers::secrets::keys`), so nothing has to carry a private
//! key through the store.
//!
//! Steps, each safe to repeat:
//! 1. a new key becomes the file's current key; the old ones stay in the
//!    file, decrypt-only ([`KeyFile::begin_rotation`]);
//! 2. its public half is published at `keys/secrets`: values sealed from
//!    now on use it, and a client still holding the old key fails to write
//!    ([`super::cluster_key::SealingKey::guard`]);
//! 3. every secret whose data key is wrapped to another key is re-wrapped
//!    to the new one (`spec.sealed.dataKey` only: ciphertext, version and
//!    the nodes' copies stay, so no service rolls);
//! 4. once a fresh listing finds no secret on an old key, the old keys are
//!    removed from the file ([`KeyFile::retire_old`]).
//!
//! # Crash safety
//! A file holding more than one key is an unfinished rotation: running the
//! command again resumes it at step 2 instead of making another key. Until
//! step 4 both keys open every secret.
//!
//! Nothing secret is printed: key ids, secret names and counts only.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use shoal_crd::sealing::{rewrap, KeyFile, PrivateKey};
use shoal_crd::Secret;
use shoal_store::client::Store;

use super::cluster_key::{default_key_file, publish, published_key};

/// `shoal cluster-key …`.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterKeyCommand {
    /// Replace the key that seals secrets: a new key, every secret re-wrapped
    /// to it, the old key retired. No secret changes version; no task
    /// restarts. Run it on a controller's machine, with its key file; if it
    /// stops halfway, run it again to finish.
    Rotate(RotateArgs),
}

/// `shoal cluster-key rotate` flags.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// The controllers' key file (default: secrets.key in the data directory).
    #[arg(long, env = "SHOAL_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// Testing: stop after re-wrapping this many secrets, as an interrupted
    /// rotation would.
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

/// Runs `shoal cluster-key …`.
pub async fn run(store: &Store, command: ClusterKeyCommand) -> anyhow::Result<()> {
    match command {
        ClusterKeyCommand::Rotate(args) => rotate(store, args).await,
    }
}

/// What a pass of re-wrapping did.
#[derive(Debug, Default)]
struct Tally {
    rewrapped: usize,
    already: usize,
    without_value: usize,
}

async fn rotate(store: &Store, args: RotateArgs) -> anyhow::Result<()> {
    let path = match args.encryption_key_file {
        Some(path) => path,
        None => default_key_file(None)?,
    };
    let _lock = lock(&path)?;
    let mut file = match KeyFile::load(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
            "no key file at {}: run this where the controllers run, with their --encryption-key-file",
            path.display()
        ),
        Err(err) => return Err(err).with_context(|| format!("encryption key file {}", path.display())),
    };
    if let Some(stored) = published_key(store).await? {
        if !file.keys.iter().any(|k| k.key_id == stored.key_id) {
            bail!(
                "the cluster's secrets are sealed to key {}, which {} does not hold: pass the controllers' --encryption-key-file",
                stored.key_id,
                path.display()
            );
        }
    }
    if file.is_rotating() {
        println!(
            "Resuming the unfinished rotation to key {} (decrypt-only until it finishes: {})",
            file.current().key_id,
            old_ids(&file).join(", ")
        );
    } else {
        let old = file.current().key_id.clone();
        let new = file.begin_rotation().key_id.clone();
        file.save(&path).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "Generated key {new} in {}; key {old} is decrypt-only until every secret is re-wrapped",
            path.display()
        );
    }
    let current = file.current().clone();
    if publish(store, &file, &path).await? {
        println!("Published key {}: new secret values are sealed to it", current.key_id);
    }

    let tally = rewrap_all(store, &file.keys, &current, args.stop_after).await?;
    let retired = file.retire_old();
    file.save(&path).with_context(|| format!("writing {}", path.display()))?;
    if !retired.is_empty() {
        println!("Retired key {}: removed from {}", retired.join(", "), path.display());
    }
    println!(
        "Cluster key rotated to {}: {} secret{} re-wrapped, {} already on it, {} without a value; no secret changed version, no task restarted",
        current.key_id,
        tally.rewrapped,
        if tally.rewrapped == 1 { "" } else { "s" },
        tally.already,
        tally.without_value,
    );
    Ok(())
}

fn old_ids(file: &KeyFile) -> Vec<String> {
    file.keys[1..].iter().map(|k| k.key_id.clone()).collect()
}

/// Re-wraps every secret not wrapped to `current`, listing again until a
/// listing finds none (values written meanwhile by a client that read the
/// old key are caught by a later pass, or refused by its guard).
async fn rewrap_all(
    store: &Store,
    keys: &[PrivateKey],
    current: &PrivateKey,
    stop_after: Option<usize>,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    for pass in 1..=5 {
        let (secrets, _) = store.list::<Secret>().await?;
        let on_old: Vec<&Secret> = secrets.iter().filter(|s| wrapped_to_other(s, current)).collect();
        if pass == 1 {
            tally.without_value = secrets.iter().filter(|s| s.spec.sealed.is_none()).count();
            tally.already = secrets.len() - tally.without_value - on_old.len();
        }
        if on_old.is_empty() {
            return Ok(tally);
        }
        for (n, secret) in on_old.iter().enumerate() {
            if stop_after.is_some_and(|limit| tally.rewrapped >= limit) {
                bail!(
                    "stopped after re-wrapping {} secrets (--stop-after); run the command again to finish",
                    tally.rewrapped
                );
            }
            let name = &secret.metadata.name;
            match rewrap_one(store, keys, current, name).await? {
                Some((from, version)) => {
                    tally.rewrapped += 1;
                    println!(
                        "[{}/{}] secret {name}: re-wrapped from key {from} to {} (still version {version})",
                        n + 1,
                        on_old.len(),
                        current.key_id
                    );
                }
                None => println!(
                    "[{}/{}] secret {name}: already on key {} (or removed)",
                    n + 1,
                    on_old.len(),
                    current.key_id
                ),
            }
        }
    }
    bail!("secrets kept arriving sealed to an old key; run the command again")
}

fn wrapped_to_other(secret: &Secret, current: &PrivateKey) -> bool {
    secret.spec.sealed.as_ref().is_some_and(|s| s.data_key.key_id != current.key_id)
}

/// Re-wraps one secret (compare-and-swap, re-read on a conflict); the key it
/// was wrapped to and its version, or None if nothing was left to do.
async fn rewrap_one(
    store: &Store,
    keys: &[PrivateKey],
    current: &PrivateKey,
    name: &str,
) -> anyhow::Result<Option<(String, i64)>> {
    let aad = store.key_of::<Secret>(name);
    for _ in 0..5 {
        let Some(mut secret) = store.get::<Secret>(name).await? else { return Ok(None) };
        if !wrapped_to_other(&secret, current) {
            return Ok(None);
        }
        let sealed = secret.spec.sealed.as_mut().expect("checked: it has a value");
        let from = sealed.data_key.key_id.clone();
        sealed.data_key = rewrap(keys, aad.as_bytes(), &sealed.data_key, &current.public())
            .with_context(|| format!("secret {name}: not re-wrapped, no key retired"))?;
        let version = secret.metadata.generation;
        match store.update(secret).await {
            Ok(written) if written.metadata.generation == version => return Ok(Some((from, version))),
            Ok(_) => bail!("secret {name}: re-wrapping moved its version; this is a bug, no key retired"),
            Err(err) if err.is_conflict() => continue,
            Err(err) => return Err(err.into()),
        }
    }
    bail!("secret {name} kept changing while re-wrapping it; run the command again")
}

/// One rotation per key file at a time: an exclusive lock on `FILE.lock`,
/// released when the process ends, however it ends.
fn lock(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", Path::new(&lock_path).display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!("another rotation of {} is running", path.display()),
        Err(std::fs::TryLockError::Error(err)) => Err(err).context("locking the key file"),
    }
}
