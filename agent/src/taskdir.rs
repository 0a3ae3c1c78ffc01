//! The on-disk record of one task under the agent's data dir — how a task
//! outlives the agent that started it.
//!
//! `{data_dir}/tasks/<task id>/`:
//! - `launch.json`: what to run ([`Launch`]), written by the agent before the shim starts;
//! - `shim.pid`: the per-task supervisor's pid, written by the shim;
//! - `network.json`: the task's namespace, veth and address
//!   ([`NetworkRecord`]), written by the agent when it allocates the address,
//!   deleted once the task ended and its namespace is gone;
//! - `pid.json`: the task process ([`PidRecord`]), written by the shim once it runs;
//! - `exit.json`: how it ended ([`ExitRecord`]), written by the shim;
//! - `stdout.log`, `stderr.log` (+ rotated `.1`, `.2`, …), `shim.log`.
//!
//! Records are written to a temporary file and renamed, so a reader sees a
//! whole record or none.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::network::NetworkRecord;

/// What the shim runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Launch {
    /// Program and arguments; `argv[0]` is looked up in the task's `PATH`.
    pub argv: Vec<String>,
    /// The complete environment of the process.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Switch to this uid/gid before exec (only when the agent is root).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Log rotation: bytes per file, rotated files kept.
    pub log_max_bytes: u64,
    pub log_keep: usize,
    /// The network namespace to run in (`/run/netns/<name>`); the host's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// Configs and secrets the shim places in the task's own mount
    /// namespace (root); their content comes on the shim's stdin, never here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::files::TaskFile>,
    /// Variables set from a config's or secret's value (`env=DB_PASSWORD`):
    /// only their names; the values come on the shim's stdin after the
    /// files' contents, never here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from_stdin: Vec<String>,
    /// A file the shim bind-mounts over `/etc/resolv.conf` in the task's own
    /// mount namespace (root, own network namespace): the agent's DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<PathBuf>,
}

impl Launch {
    /// How many contents the shim reads from its stdin.
    pub fn payload_len(&self) -> usize {
        self.files.len() + self.env_from_stdin.len()
    }
}

/// The running task process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PidRecord {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22):
    /// tells the process apart from a later one that reuses the pid.
    pub start_ticks: u64,
    pub started_at: DateTime<Utc>,
}

/// How the task process ended (or why it never ran).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The process could not be started or observed (`exec: No such file…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// One task's directory.
#[derive(Debug, Clone)]
pub struct TaskDir {
    path: PathBuf,
}

impl TaskDir {
    /// `{data_dir}/tasks/<id>` (not created).
    pub fn new(data_dir: &Path, id: &str) -> Self {
        Self { path: tasks_root(data_dir).join(id) }
    }

    /// A directory given directly (the shim's `--dir`).
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.path)
    }

    /// Deletes the directory and everything in it.
    pub fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn write_launch(&self, launch: &Launch) -> io::Result<()> {
        self.write_record("launch.json", launch)
    }
    pub fn read_launch(&self) -> io::Result<Option<Launch>> {
        self.read_record("launch.json")
    }
    pub fn write_network(&self, network: &NetworkRecord) -> io::Result<()> {
        self.write_record("network.json", network)
    }
    pub fn read_network(&self) -> io::Result<Option<NetworkRecord>> {
        self.read_record("network.json")
    }
    pub fn remove_network(&self) -> io::Result<()> {
        match std::fs::remove_file(self.file("network.json")) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
    pub fn write_pid(&self, pid: &PidRecord) -> io::Result<()> {
        self.write_record("pid.json", pid)
    }
    pub fn read_pid(&self) -> io::Result<Option<PidRecord>> {
        self.read_record("pid.json")
    }
    pub fn write_exit(&self, exit: &ExitRecord) -> io::Result<()> {
        self.write_record("exit.json", exit)
    }
    pub fn read_exit(&self) -> io::Result<Option<ExitRecord>> {
        self.read_record("exit.json")
    }

    fn write_record<T: Serialize>(&self, name: &str, value: &T) -> io::Result<()> {
        let tmp = self.file(&format!(".{name}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(value).map_err(io::Error::other)?)?;
        std::fs::rename(tmp, self.file(name))
    }

    fn read_record<T: DeserializeOwned>(&self, name: &str) -> io::Result<Option<T>> {
        match std::fs::read(self.file(name)) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `{data_dir}/tasks`.
pub fn tasks_root(data_dir: &Path) -> PathBuf {
    data_dir.join("tasks")
}

/// The ids of every task directory under `data_dir`.
pub fn list(data_dir: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(tasks_root(data_dir)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            ids.extend(entry.file_name().to_str().map(str::to_string));
        }
    }
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_absent_ones_read_as_none() {
        let data = tempfile::tempdir().unwrap();
        let dir = TaskDir::new(data.path(), "t1");
        dir.create().unwrap();
        assert_eq!(dir.read_exit().unwrap(), None);
        let exit = ExitRecord { code: Some(3), ..Default::default() };
        dir.write_exit(&exit).unwrap();
        assert_eq!(dir.read_exit().unwrap(), Some(exit));
        assert_eq!(list(data.path()).unwrap(), vec!["t1".to_string()]);
        dir.remove().unwrap();
        assert!(list(data.path()).unwrap().is_empty());
    }
}
