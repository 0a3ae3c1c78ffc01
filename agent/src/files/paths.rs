//! Where a config or secret appears: the path rules, pure.
//!
//! - As root the task sees the file at its target: a relative secret target
//!   is under `/run/secrets`, a relative config target under `/` (the CLI
//!   and stack files already make them absolute; this is for raw objects).
//! - Without root there is no mount namespace: files go under the task's
//!   `secrets/` or `configs/` directory (`SHOAL_SECRETS_DIR`,
//!   `SHOAL_CONFIGS_DIR`). A secret target under `/run/secrets` keeps only
//!   the part below it (`/run/secrets/db` → `$SHOAL_SECRETS_DIR/db`); any
//!   other target keeps its whole path below the directory
//!   (`/etc/app/app.conf` → `$SHOAL_CONFIGS_DIR/etc/app/app.conf`).

use std::path::{Component, Path, PathBuf};

use shoal_crd::defaults::SECRETS_DIR;

/// Why a target cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("target {0:?} may not contain `..`")]
    Parent(String),
    #[error("target {0:?} names no file")]
    Empty(String),
}

/// The absolute path in the task's view of the filesystem.
pub fn task_path(target: &str, secret: bool) -> Result<PathBuf, PathError> {
    let path = Path::new(target);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(PathError::Parent(target.into()));
    }
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else if secret {
        Path::new(SECRETS_DIR).join(path)
    } else {
        Path::new("/").join(path)
    };
    let normal: PathBuf = absolute.components().filter(|c| !matches!(c, Component::CurDir)).collect();
    if normal.parent().is_none() {
        return Err(PathError::Empty(target.into()));
    }
    Ok(normal)
}

/// Where a file goes below the task's secrets or configs directory when
/// there is no mount namespace (see the module docs).
pub fn below_dir(task_path: &Path, secret: bool) -> PathBuf {
    let inside = if secret { task_path.strip_prefix(SECRETS_DIR).ok() } else { None };
    inside.unwrap_or_else(|| task_path.strip_prefix("/").unwrap_or(task_path)).to_path_buf()
}

/// Whether `path` is under the default secrets directory (`/run/secrets`),
/// which gets a tmpfs of its own in the task's mount namespace.
pub fn in_secrets_dir(path: &Path) -> bool {
    path.parent() == Some(Path::new(SECRETS_DIR))
}

/// The deepest ancestor of `path` that exists according to `exists`
/// (`/` at worst).
pub fn nearest_existing(path: &Path, exists: impl Fn(&Path) -> bool) -> PathBuf {
    path.ancestors().skip(1).find(|a| exists(a)).unwrap_or(Path::new("/")).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_targets_resolve_under_run_secrets_or_the_root() {
        assert_eq!(task_path("db", true).unwrap(), PathBuf::from("/run/secrets/db"));
        assert_eq!(task_path("app.properties", false).unwrap(), PathBuf::from("/app.properties"));
        assert_eq!(task_path("/etc/app/./x.conf", false).unwrap(), PathBuf::from("/etc/app/x.conf"));
        assert_eq!(task_path("../etc/shadow", true), Err(PathError::Parent("../etc/shadow".into())));
        assert_eq!(task_path("/", false), Err(PathError::Empty("/".into())));
    }

    #[test]
    fn without_a_namespace_files_go_below_the_task_directories() {
        assert_eq!(below_dir(Path::new("/run/secrets/db"), true), PathBuf::from("db"));
        assert_eq!(below_dir(Path::new("/run/my-secrets/db"), true), PathBuf::from("run/my-secrets/db"));
        assert_eq!(below_dir(Path::new("/etc/app/app.conf"), false), PathBuf::from("etc/app/app.conf"));
    }

    #[test]
    fn the_nearest_existing_ancestor_is_found_and_the_root_is_the_last_resort() {
        let exists = |p: &Path| p == Path::new("/etc") || p == Path::new("/");
        assert_eq!(nearest_existing(Path::new("/etc/myapp/conf/app.properties"), exists), PathBuf::from("/etc"));
        assert_eq!(nearest_existing(Path::new("/opt/x"), exists), PathBuf::from("/"));
        assert!(in_secrets_dir(Path::new("/run/secrets/db")));
        assert!(!in_secrets_dir(Path::new("/run/secrets/sub/db")));
    }
}
