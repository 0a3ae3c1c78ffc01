//! The cluster's secret-sealing key: the private half in the
//! `--encryption-key-file` of `shoal up` / `shoal controller`, the public
//! half in the store at `{prefix}/keys/secrets` so any CLI can seal a value
//! without holding a private key.
//!
//! Who writes what: only a process holding the key file writes the public
//! key (compare-and-swap, so two controllers with different files cannot
//! silently replace each other's key) — the controllers as they start, and
//! `shoal cluster-key rotate` ([`super::key_rotation`]); clients only read
//! it, and write what they sealed to it through [`SealingKey::guard`], so a
//! value sealed to a key that a rotation has just replaced is refused rather
//! than stored after the rotation has looked for what to re-wrap.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use shoal_crd::sealing::{KeyFile, PublicKey};
use shoal_store::client::resources::compare_mod_revision;
use shoal_store::client::Store;
use shoal_store::proto::{request_op::Request as Op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};

/// The key-file name under a data directory.
pub const KEY_FILE_NAME: &str = "secrets.key";

/// `{data dir}/secrets.key`, the default `--encryption-key-file`.
pub fn default_key_file(data_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match data_dir {
        Some(dir) => dir.to_path_buf(),
        None => super::agent::default_data_dir()?,
    };
    Ok(dir.join(KEY_FILE_NAME))
}

fn key_path(store: &Store) -> String {
    format!("{}/keys/secrets", store.prefix())
}

/// The public key stored now and the mod_revision of its key (0 when absent).
async fn read_raw(store: &Store) -> anyhow::Result<(Option<PublicKey>, i64)> {
    let request = RangeRequest { key: key_path(store).into_bytes(), ..Default::default() };
    let response = store.etcd().unary(store.etcd().kv().range(request)).await?;
    let Some(kv) = response.kvs.first() else { return Ok((None, 0)) };
    let key = serde_json::from_slice(&kv.value).with_context(|| format!("{} is not a public key", key_path(store)))?;
    Ok((Some(key), kv.mod_revision))
}

/// The public key stored now, if any.
pub async fn published_key(store: &Store) -> anyhow::Result<Option<PublicKey>> {
    Ok(read_raw(store).await?.0)
}

/// The public key new secret values are sealed to, as read at one revision.
pub struct SealingKey {
    pub key: PublicKey,
    /// "The cluster key is still the one read".
    fence: Compare,
}

impl SealingKey {
    /// The cluster's public key now.
    pub async fn read(store: &Store) -> anyhow::Result<SealingKey> {
        let (key, revision) = read_raw(store).await?;
        let key = key.ok_or_else(|| {
            anyhow::anyhow!("the cluster has no encryption key yet: start `shoal up` or `shoal controller` once (it creates and publishes one)")
        })?;
        Ok(SealingKey { key, fence: compare_mod_revision(&key_path(store), revision) })
    }

    /// `store`, whose writes land only while this is still the cluster's
    /// key; otherwise they fail as a conflict (`FenceLost` for a create):
    /// read the key again and seal again.
    pub fn guard(&self, store: &Store) -> Store {
        store.fenced(self.fence.clone())
    }
}

/// Loads (or creates, mode 0600) the key file and publishes its current
/// public key.
pub async fn load_and_publish(store: &Store, path: &Path) -> anyhow::Result<KeyFile> {
    let file = KeyFile::load_or_create(path).with_context(|| format!("encryption key file {}", path.display()))?;
    publish(store, &file, path).await?;
    Ok(file)
}

/// Publishes the current public key of `file` (read from `path`). A stored
/// key that the file holds only as an older key is replaced (a rotation);
/// one the file does not hold at all is an error: this process could not
/// open the cluster's secrets. Returns whether it wrote.
pub async fn publish(store: &Store, file: &KeyFile, path: &Path) -> anyhow::Result<bool> {
    let current = file.current().public();
    for _ in 0..5 {
        let (stored, revision) = read_raw(store).await?;
        match stored {
            Some(key) if key == current => return Ok(false),
            Some(key) if !file.keys.iter().any(|k| k.key_id == key.key_id) => bail!(
                "the cluster's secrets are sealed to key {}, which {} does not hold: pass the cluster's --encryption-key-file",
                key.key_id,
                path.display()
            ),
            _ => {}
        }
        let key = key_path(store);
        let put =
            PutRequest { key: key.clone().into_bytes(), value: serde_json::to_vec(&current)?, ..Default::default() };
        let txn = TxnRequest {
            compare: vec![compare_mod_revision(&key, revision)],
            success: vec![RequestOp { request: Some(Op::RequestPut(put)) }],
            failure: vec![],
        };
        if store.etcd().unary(store.etcd().kv().txn(txn)).await?.succeeded {
            tracing::info!(key_id = %current.key_id, file = %path.display(), "published the cluster's secret encryption key");
            return Ok(true);
        }
    }
    bail!("{} kept changing while publishing the encryption key; try again", key_path(store))
}
