//! Configs and secrets delivered to a task: fetched and opened by the agent
//! while the task is `preparing`, handed to the task's shim in memory.
//!
//! - [`paths`]: where each file appears (pure rules).
//! - [`mount`]: as root, the task's own mount namespace — `/run/secrets`
//!   on a tmpfs, other targets on tmpfs-backed overlays or bind mounts.
//! - [`template`]: configs with `templateDriver`, rendered at task start.
//!
//! A secret is opened with this node's private key (`{data_dir}/node.key`,
//! mode 0600, generated on first start; its public half is the Node's
//! `status.sealingKey`) and the data key the secrets controller sealed to
//! it (`SealedSecret <secret>.<node>`), which exists only while this node
//! runs a task using the secret.
//!
//! # Guarantees
//! - Secret plaintext is only in memory, in the shim's stdin pipe, and on
//!   tmpfs inside the task's mount namespace (root); without root, in the
//!   task's `secrets/` directory (mode 0700), removed with the task.
//! - No error, log line or status message carries file content.

pub mod mount;
pub mod paths;
pub mod template;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_crd::sealing::{open_with_wrapped, PrivateKey, SealingError};
use shoal_crd::{Config, FileReference, SealedSecret, Secret, Task};
use shoal_store::client::{Store, StoreError};

use paths::PathError;

/// How often a missing sealed copy is looked for again.
const POLL: Duration = Duration::from_millis(250);

/// One file a task gets, as `launch.json` records it: never its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskFile {
    /// The Config or Secret it comes from.
    pub source: String,
    /// Absolute path in the task's view ([`paths::task_path`]).
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub secret: bool,
    /// Also exposed as this environment variable (its name only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// File content: never printed, zeroed when dropped.
pub struct Content(pub Vec<u8>);

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Drop for Content {
    fn drop(&mut self) {
        // Best effort: copies made by the allocator on growth are not reached.
        // SAFETY: each pointer comes from a live `&mut u8` of the vector.
        self.0.iter_mut().for_each(|b| unsafe { std::ptr::write_volatile(b, 0) });
    }
}

/// A file and its content.
#[derive(Debug)]
pub struct Delivered {
    pub file: TaskFile,
    pub content: Content,
}

/// Why a task's configs or secrets could not be delivered. Never carries content.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("secret not found: {0}")]
    SecretNotFound(String),
    #[error("config not found: {0}")]
    ConfigNotFound(String),
    #[error("secret {0} has no value")]
    NoValue(String),
    #[error("secret {secret} is not sealed to node {node} (waited {waited:?} for the secrets controller)")]
    NotSealed { secret: String, node: String, waited: Duration },
    #[error("cannot open secret {secret} on this node: {source}")]
    Open {
        secret: String,
        #[source]
        source: SealingError,
    },
    #[error("{source}")]
    Path {
        #[from]
        source: PathError,
    },
    #[error("{what} {name} holds a NUL byte, which environment variable {variable} cannot")]
    NotAVariable { what: &'static str, name: String, variable: String },
    #[error("{what} {name}: {field} {value:?} must be a number")]
    Owner { what: &'static str, name: String, field: &'static str, value: String },
    #[error("config {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: template::TemplateError,
    },
    #[error("reading {what} {name}: {source}")]
    Store {
        what: &'static str,
        name: String,
        #[source]
        source: StoreError,
    },
}

impl FilesError {
    /// True when waiting cannot help: the task is rejected, not failed.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, FilesError::NotSealed { .. } | FilesError::Store { .. })
    }
}

/// What delivering files needs from the agent.
pub struct Source<'a> {
    pub store: &'a Store,
    /// This node's name (the SealedSecret suffix).
    pub node: &'a str,
    pub hostname: &'a str,
    /// This node's private key(s).
    pub keys: &'a [PrivateKey],
    /// How long to wait for a secret's sealed copy.
    pub wait: Duration,
}

/// Fetches, opens and renders every config and secret `task` references.
pub async fn gather(source: &Source<'_>, task: &Task) -> Result<Vec<Delivered>, FilesError> {
    let spec = &task.spec.spec;
    let mut secrets = BTreeMap::new();
    let mut out = Vec::new();
    for reference in &spec.secrets {
        let value = open_secret(source, &reference.source).await?;
        out.push(Delivered { file: task_file(reference, true)?, content: Content(value.clone()) });
        secrets.insert(reference.source.clone(), Content(value));
    }
    let mut configs = Vec::new();
    for reference in &spec.configs {
        let config = source
            .store
            .get::<Config>(&reference.source)
            .await
            .map_err(|e| FilesError::Store { what: "config", name: reference.source.clone(), source: e })?
            .ok_or_else(|| FilesError::ConfigNotFound(reference.source.clone()))?;
        configs.push((reference, config));
    }
    let raw: BTreeMap<String, Vec<u8>> =
        configs.iter().map(|(r, c)| (r.source.clone(), c.spec.data.0.clone())).collect();
    for (reference, config) in &configs {
        let data = match config.spec.template_driver.as_deref() {
            None | Some("") => config.spec.data.0.clone(),
            Some(driver) => {
                let context = template::Context { task, hostname: source.hostname, secrets: &secrets, configs: &raw };
                template::render(driver, &config.spec.data.0, &context)
                    .map_err(|e| FilesError::Template { name: reference.source.clone(), source: e })?
            }
        };
        out.push(Delivered { file: task_file(reference, false)?, content: Content(data) });
    }
    Ok(out)
}

fn task_file(reference: &FileReference, secret: bool) -> Result<TaskFile, FilesError> {
    let what = if secret { "secret" } else { "config" };
    let number = |field: &'static str, value: &str| {
        value.trim().parse::<u32>().map_err(|_| FilesError::Owner {
            what,
            name: reference.source.clone(),
            field,
            value: value.into(),
        })
    };
    Ok(TaskFile {
        source: reference.source.clone(),
        path: paths::task_path(&reference.target, secret)?,
        uid: number("uid", &reference.uid)?,
        gid: number("gid", &reference.gid)?,
        mode: reference.mode & 0o7777,
        secret,
        env: reference.env.clone(),
    })
}

/// The variables set from delivered values (`env=VAR`): their names, and
/// their values for the shim's stdin. A value with a NUL byte cannot be a
/// variable's.
pub fn exposed_env(files: &[Delivered]) -> Result<(Vec<String>, Vec<Content>), FilesError> {
    let mut names = Vec::new();
    let mut values = Vec::new();
    for delivered in files {
        let Some(name) = &delivered.file.env else { continue };
        if delivered.content.0.contains(&0) {
            let what = if delivered.file.secret { "secret" } else { "config" };
            return Err(FilesError::NotAVariable { what, name: delivered.file.source.clone(), variable: name.clone() });
        }
        names.push(name.clone());
        values.push(Content(delivered.content.0.clone()));
    }
    Ok((names, values))
}

/// The plaintext of secret `name`, opened with this node's key; waits up to
/// `source.wait` for the controller to seal the current version to this node.
async fn open_secret(source: &Source<'_>, name: &str) -> Result<Vec<u8>, FilesError> {
    let store_error = |e| FilesError::Store { what: "secret", name: name.into(), source: e };
    let aad = source.store.key_of::<Secret>(name);
    let deadline = tokio::time::Instant::now() + source.wait;
    loop {
        let secret = source
            .store
            .get::<Secret>(name)
            .await
            .map_err(store_error)?
            .ok_or_else(|| FilesError::SecretNotFound(name.into()))?;
        let sealed = secret.spec.sealed.as_ref().ok_or_else(|| FilesError::NoValue(name.into()))?;
        let copy =
            source.store.get::<SealedSecret>(&SealedSecret::name_for(name, source.node)).await.map_err(store_error)?;
        if let Some(copy) = copy.filter(|c| c.spec.secret_generation == secret.metadata.generation) {
            return open_with_wrapped(source.keys, aad.as_bytes(), &copy.spec.data_key, sealed)
                .map_err(|e| FilesError::Open { secret: name.into(), source: e });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(FilesError::NotSealed { secret: name.into(), node: source.node.into(), waited: source.wait });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Without root: writes the files below `{task_dir}/secrets` (mode 0700)
/// and `{task_dir}/configs`; returns the variables that tell the task where.
pub fn write_plain(task_dir: &Path, files: &[Delivered]) -> std::io::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for delivered in files {
        let (dir, var) =
            if delivered.file.secret { ("secrets", "SHOAL_SECRETS_DIR") } else { ("configs", "SHOAL_CONFIGS_DIR") };
        let root = task_dir.join(dir);
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&root)?;
        let path = root.join(paths::below_dir(&delivered.file.path, delivered.file.secret));
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
        }
        write_file(&path, &delivered.content.0, delivered.file.mode)?;
        env.insert(var.to_string(), root.display().to_string());
    }
    Ok(env)
}

/// Writes `content` to a new file with exactly `mode` (no umask).
pub(crate) fn write_file(path: &Path, content: &[u8], mode: u32) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(content)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(file)
}

/// The shim's stdin: each content as a little-endian u32 length and the bytes.
pub fn encode_payload(contents: &[Content]) -> Content {
    let mut out = Vec::with_capacity(contents.iter().map(|c| c.0.len() + 4).sum());
    for content in contents {
        out.extend_from_slice(&(content.0.len() as u32).to_le_bytes());
        out.extend_from_slice(&content.0);
    }
    Content(out)
}

/// Reads `count` contents framed by [`encode_payload`].
pub fn decode_payload(mut from: impl std::io::Read, count: usize) -> std::io::Result<Vec<Content>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut len = [0u8; 4];
        from.read_exact(&mut len)?;
        let mut content = Content(vec![0; u32::from_le_bytes(len) as usize]);
        from.read_exact(&mut content.0)?;
        out.push(content);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(path: &str, secret: bool, content: &[u8]) -> Delivered {
        let file = TaskFile { source: "s".into(), path: path.into(), uid: 0, gid: 0, mode: 0o440, secret, env: None };
        Delivered { file, content: Content(content.to_vec()) }
    }

    #[test]
    fn contents_round_trip_through_the_shim_payload_and_never_print() {
        let files = [delivered("/run/secrets/a", true, b"xyzzy"), delivered("/b", false, b"")];
        let contents: Vec<Content> = files.iter().map(|f| Content(f.content.0.clone())).collect();
        let decoded = decode_payload(&encode_payload(&contents).0[..], 2).unwrap();
        assert_eq!((decoded[0].0.as_slice(), decoded[1].0.as_slice()), (&b"xyzzy"[..], &b""[..]));
        assert_eq!(format!("{:?}", files[0]), format!("{:?}", files[0]).replace("xyzzy", "???"));
        assert!(decode_payload(&b"\x05\0\0\0ab"[..], 1).is_err(), "a short payload is an error");
    }

    #[test]
    fn exposed_values_keep_their_order_and_a_nul_byte_is_refused() {
        let mut files =
            [delivered("/run/secrets/a", true, b"pw"), delivered("/b", false, b"x"), delivered("/c", false, b"y")];
        files[0].file.env = Some("A".into());
        files[2].file.env = Some("C".into());
        let (names, values) = exposed_env(&files).unwrap();
        assert_eq!(names, ["A", "C"]);
        assert_eq!((values[0].0.as_slice(), values[1].0.as_slice()), (&b"pw"[..], &b"y"[..]));
        files[2].content = Content(b"y\0".to_vec());
        let err = exposed_env(&files).unwrap_err().to_string();
        assert!(err.contains("NUL") && err.ends_with("variable C cannot"), "{err}");
    }

    #[test]
    fn without_root_files_land_below_the_task_dirs_with_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let env = write_plain(
            dir.path(),
            &[delivered("/run/secrets/db", true, b"pw"), delivered("/etc/app/a.conf", false, b"x=1")],
        )
        .unwrap();
        let secrets = PathBuf::from(&env["SHOAL_SECRETS_DIR"]);
        assert_eq!(std::fs::read(secrets.join("db")).unwrap(), b"pw");
        assert_eq!(std::fs::metadata(secrets.join("db")).unwrap().permissions().mode() & 0o777, 0o440);
        assert_eq!(std::fs::metadata(&secrets).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read(PathBuf::from(&env["SHOAL_CONFIGS_DIR"]).join("etc/app/a.conf")).unwrap(), b"x=1");
    }
}
