//! The cluster's private keys as the secrets loop holds them: those of the
//! `--encryption-key-file`, read again whenever the file changes. `shoal
//! cluster-key rotate` adds a key to the file and later retires the old one
//! while the controllers run; the loop must open values wrapped to the new
//! key from the first one re-wrapped, and forget a retired key.
//!
//! # Caveats
//! - A change is noticed by the file's identity, size and modification
//!   time, checked each time the keys are asked for (once per reconcile):
//!   the key file is replaced by a rename, so every save is a new inode.
//! - A file that cannot be read keeps the keys read last (one warning per
//!   change of the file): a half-copied file must not stop the loop.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use shoal_crd::sealing::{KeyFile, PrivateKey};

/// Private keys, current first; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    path: Option<Arc<PathBuf>>,
    loaded: Arc<Mutex<Loaded>>,
}

#[derive(Debug, Default)]
struct Loaded {
    stamp: Option<Stamp>,
    keys: Arc<[PrivateKey]>,
}

/// What tells one version of the file from the next.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_nanos: i128,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        let mtime_nanos = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        Some(Stamp { dev: meta.dev(), ino: meta.ino(), len: meta.len(), mtime_nanos })
    }
}

impl KeyRing {
    /// No keys: the secrets loop idles.
    pub fn none() -> Self {
        Self::default()
    }

    /// Keys that never change (tests).
    pub fn fixed(keys: Vec<PrivateKey>) -> Self {
        Self { path: None, loaded: Arc::new(Mutex::new(Loaded { stamp: None, keys: keys.into() })) }
    }

    /// The keys of `path` (read already: `keys`), read again when it changes.
    pub fn from_file(path: PathBuf, keys: Vec<PrivateKey>) -> Self {
        // No stamp yet: the first `keys()` reads the file again, so a change
        // between the caller's read and now is not missed.
        Self { path: Some(Arc::new(path)), loaded: Arc::new(Mutex::new(Loaded { stamp: None, keys: keys.into() })) }
    }

    /// Whether there are keys to use at all.
    pub fn is_configured(&self) -> bool {
        self.path.is_some() || !self.keys().is_empty()
    }

    /// The keys now, current first.
    pub fn keys(&self) -> Arc<[PrivateKey]> {
        // A std Mutex, not tokio's: nothing is awaited while it is held, and
        // reading a file of a few hundred bytes is as short as a lock wait.
        let mut loaded = self.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(path) = &self.path else { return loaded.keys.clone() };
        let stamp = Stamp::of(path);
        if stamp.is_some() && stamp != loaded.stamp {
            loaded.stamp = stamp;
            match KeyFile::load(path) {
                Ok(file) => {
                    let ids: Vec<&str> = file.keys.iter().map(|k| k.key_id.as_str()).collect();
                    if loaded.keys.iter().map(|k| k.key_id.as_str()).ne(ids.iter().copied()) {
                        tracing::info!(file = %path.display(), keys = ?ids, "encryption key file changed; using its keys");
                    }
                    loaded.keys = file.keys.into();
                }
                Err(err) => tracing::warn!(
                    file = %path.display(),
                    error = %err,
                    "cannot read the encryption key file; keeping the keys read before"
                ),
            }
        }
        loaded.keys.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_key_file_is_picked_up_and_a_retired_key_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let mut file = KeyFile::load_or_create(&path).unwrap();
        let ring = KeyRing::from_file(path.clone(), file.keys.clone());
        let ids = || ring.keys().iter().map(|k| k.key_id.clone()).collect::<Vec<_>>();
        let old = file.current().key_id.clone();
        assert_eq!(ids(), std::slice::from_ref(&old));

        let new = file.begin_rotation().key_id.clone();
        file.save(&path).unwrap();
        assert_eq!(ids(), [new.clone(), old]);

        file.retire_old();
        file.save(&path).unwrap();
        assert_eq!(ids(), std::slice::from_ref(&new));

        std::fs::write(&path, b"not json").unwrap();
        assert_eq!(ring.keys().len(), 1, "a broken file keeps the keys read before");
        assert_eq!(ring.keys()[0].key_id, new);
    }
}
