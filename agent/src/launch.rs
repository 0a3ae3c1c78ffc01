//! What a task's process gets: the resolved image's argv and env, the
//! service's env on top, the task's identity (`SHOAL_TASK_ID`,
//! `SHOAL_SERVICE_NAME`, `SHOAL_NODE_NAME`, `SHOAL_IMAGE`, `SHOAL_TASK_SLOT`),
//! its working directory and the user it runs as.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shoal_crd::Task;

use crate::image::ResolvedImage;
use crate::sys;
use crate::taskdir::Launch;

/// `PATH` for tasks whose environment sets none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The complete environment of a process in the task's context (the task
/// itself, its probes): the launch's, with [`DEFAULT_PATH`] when it sets no `PATH`.
pub fn process_env(launch: &Launch) -> BTreeMap<String, String> {
    let mut env = launch.env.clone();
    env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
    env
}

/// Why a task's launch could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("unknown user {0:?}: not in /etc/passwd (use uid[:gid] or a local user name)")]
    UnknownUser(String),
    #[error("unknown group {0:?}: not in /etc/group")]
    UnknownGroup(String),
}

/// Per-node settings every launch shares.
#[derive(Debug, Clone)]
pub struct LaunchDefaults {
    pub node_name: String,
    /// Where tasks without a `workingDir` run: `{data_dir}/tasks/<id>/work`.
    pub data_dir: PathBuf,
    pub log_max_bytes: u64,
    pub log_keep: usize,
}

/// The launch record for `task`, whose image resolved to `image`.
pub fn build(task: &Task, image: ResolvedImage, defaults: &LaunchDefaults) -> Result<Launch, LaunchError> {
    let spec = &task.spec.spec;
    let id = &task.metadata.name;
    let mut env = image.env;
    env.insert("SHOAL_TASK_ID".into(), id.clone());
    env.insert("SHOAL_SERVICE_NAME".into(), task.spec.service_name.clone());
    env.insert("SHOAL_NODE_NAME".into(), defaults.node_name.clone());
    env.insert("SHOAL_IMAGE".into(), spec.image.clone());
    if let Some(slot) = task.spec.slot {
        env.insert("SHOAL_TASK_SLOT".into(), slot.to_string());
    }
    let cwd = match &spec.working_dir {
        Some(dir) => PathBuf::from(dir),
        None => crate::taskdir::TaskDir::new(&defaults.data_dir, id).file("work"),
    };
    let (uid, gid) = match &spec.user {
        Some(user) if sys::is_root() => resolve_user(user, Path::new("/etc/passwd"), Path::new("/etc/group"))?,
        Some(user) => {
            tracing::warn!(task = %id, user = %user, "not root: the task runs as the agent's user, not as requested");
            (None, None)
        }
        None => (None, None),
    };
    Ok(Launch {
        argv: image.argv,
        env,
        cwd,
        uid,
        gid,
        log_max_bytes: defaults.log_max_bytes,
        log_keep: defaults.log_keep,
        netns: None,
        files: Vec::new(),
        env_from_stdin: Vec::new(),
        resolv_conf: None,
    })
}

/// `uid[:gid]` or `name[:group]` → numeric ids, names looked up in the given files.
pub fn resolve_user(user: &str, passwd: &Path, group: &Path) -> Result<(Option<u32>, Option<u32>), LaunchError> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary_gid) = match user_part.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => {
            let fields = lookup(passwd, user_part).ok_or_else(|| LaunchError::UnknownUser(user_part.into()))?;
            let uid =
                fields.get(2).and_then(|f| f.parse().ok()).ok_or_else(|| LaunchError::UnknownUser(user_part.into()))?;
            (uid, fields.get(3).and_then(|f| f.parse().ok()))
        }
    };
    let gid = match group_part {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => Some(gid),
            Err(_) => {
                let fields = lookup(group, g).ok_or_else(|| LaunchError::UnknownGroup(g.into()))?;
                Some(fields.get(2).and_then(|f| f.parse().ok()).ok_or_else(|| LaunchError::UnknownGroup(g.into()))?)
            }
        },
        None => primary_gid,
    };
    Ok((Some(uid), gid))
}

/// The `:`-separated fields of the line of `file` whose first field is `name`.
fn lookup(file: &Path, name: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .map(|line| line.split(':').map(str::to_string).collect::<Vec<_>>())
        .find(|fields| fields.first().is_some_and(|f| f == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_by_number_or_by_name_with_their_primary_group() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        let group = dir.path().join("group");
        std::fs::write(&passwd, "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n").unwrap();
        std::fs::write(&group, "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user("1234", &passwd, &group).unwrap(), (Some(1234), None));
        assert_eq!(resolve_user("app", &passwd, &group).unwrap(), (Some(1000), Some(1001)));
        assert_eq!(resolve_user("app:staff", &passwd, &group).unwrap(), (Some(1000), Some(50)));
        assert_eq!(resolve_user("5:6", &passwd, &group).unwrap(), (Some(5), Some(6)));
        assert!(matches!(resolve_user("ghost", &passwd, &group), Err(LaunchError::UnknownUser(_))));
    }
}
