//! The per-task supervisor (`shoal agent shim --dir DIR`): a small process
//! in its own session that owns the task process, so the task outlives the
//! agent (killed, upgraded, restarted) and the next agent can re-adopt it.
//!
//! It reads `launch.json` (and, when the task has configs or secrets, their
//! content from stdin — also the values of variables set from them), enters the task's network namespace if it has
//! one, gives it a mount namespace with those files
//! ([`crate::files::mount`]) and the agent's DNS in `/etc/resolv.conf`
//! ([`crate::dns::resolv_conf`]), starts the task in a process group of its own,
//! records `pid.json`, copies stdout/stderr into rotating log files and, when
//! the task exits, records `exit.json` and exits itself. It holds no state
//! that the files do not: an agent re-attaches by reading them.
//!
//! Why not the agent itself as the parent: a child dies with (or is
//! orphaned by) its parent, and an orphan's exit status is lost.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use chrono::Utc;

use crate::logs::{copy_into, RotatingFile};
use crate::sys;
use crate::taskdir::{ExitRecord, PidRecord, TaskDir};

/// Why the shim could not supervise its task.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("cannot read {dir}/launch.json: {source}")]
    ReadLaunch {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir}/launch.json is missing")]
    NoLaunch { dir: PathBuf },
    #[error("cannot record the task's state in {dir}: {source}")]
    Record {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the task described in `dir` to its end. Blocks.
pub fn run(dir: PathBuf) -> Result<(), ShimError> {
    let task = TaskDir::at(dir.clone());
    let record = |source| ShimError::Record { dir: dir.clone(), source };
    std::fs::write(task.file("shim.pid"), std::process::id().to_string()).map_err(record)?;
    let launch = task
        .read_launch()
        .map_err(|source| ShimError::ReadLaunch { dir: dir.clone(), source })?
        .ok_or_else(|| ShimError::NoLaunch { dir: dir.clone() })?;
    let Some((program, args)) = launch.argv.split_first() else {
        return task.write_exit(&failure("the task has no command".into())).map_err(record);
    };
    // Read before anything can fail: the agent is writing the pipe.
    let mut contents = if launch.payload_len() == 0 {
        Vec::new()
    } else {
        match crate::files::decode_payload(std::io::stdin().lock(), launch.payload_len()) {
            Ok(contents) => contents,
            Err(err) => {
                return task
                    .write_exit(&failure(format!("cannot read the task's configs and secrets from the agent: {err}")))
                    .map_err(record)
            }
        }
    };
    let exposed = contents.split_off(launch.files.len());
    if let Some(netns) = &launch.netns {
        // The task is forked from this thread, so it starts inside. Not in
        // `pre_exec`: std runs that after setuid, and setns needs root.
        if let Err(err) = sys::enter_netns(netns) {
            return task
                .write_exit(&failure(format!("cannot enter the network namespace {}: {err}", netns.display())))
                .map_err(record);
        }
    }
    if !launch.files.is_empty() {
        // Same thread as the spawn below: the task starts in this namespace.
        let files: Vec<_> = launch.files.iter().cloned().zip(contents).collect();
        if let Err(err) = crate::files::mount::place(&files, &task.file("mnt")) {
            return task
                .write_exit(&failure(format!("cannot mount the task's configs and secrets: {err}")))
                .map_err(record);
        }
    }
    if let Some(resolv_conf) = &launch.resolv_conf {
        // Not fatal: without it the task still runs, resolving as the host does.
        if let Err(err) = crate::dns::resolv_conf::mount_over_etc(resolv_conf, launch.files.is_empty()) {
            eprintln!("shim: the task keeps the host's resolv.conf (service names will not resolve): {err}");
        }
    }
    let env = crate::launch::process_env(&launch);
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(&env)
        .envs(
            launch
                .env_from_stdin
                .iter()
                .zip(&exposed)
                .map(|(name, value)| (name, std::ffi::OsStr::from_bytes(&value.0))),
        )
        .current_dir(&launch.cwd)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(gid) = launch.gid {
        command.gid(gid);
    }
    if let Some(uid) = launch.uid {
        command.uid(uid);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return task.write_exit(&failure(format!("cannot start {program:?}: {err}"))).map_err(record),
    };
    let pid = child.id();
    let start_ticks = sys::start_ticks(pid).unwrap_or_default();
    task.write_pid(&PidRecord { pid, start_ticks, started_at: Utc::now() }).map_err(record)?;
    let stdout = child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
    let stderr = child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
    let mut threads = Vec::new();
    for (name, stream) in [("stdout.log", stdout), ("stderr.log", stderr)] {
        let Some(stream) = stream else { continue };
        let path = task.file(name);
        let (max, keep) = (launch.log_max_bytes, launch.log_keep);
        threads.push(std::thread::spawn(move || match RotatingFile::open(&path, max, keep) {
            Ok(mut out) => {
                if let Err(err) = copy_into(stream, &mut out) {
                    eprintln!("shim: writing {}: {err}", path.display());
                }
            }
            Err(err) => eprintln!("shim: opening {}: {err}", path.display()),
        }));
    }
    let exit = match child.wait() {
        Ok(status) => {
            ExitRecord { code: status.code(), signal: status.signal(), error: None, finished_at: Some(Utc::now()) }
        }
        Err(err) => failure(format!("waiting for the task process failed: {err}")),
    };
    // Record the exit before draining the logs: a grandchild that keeps the
    // pipes open must not delay the agent learning that the task ended.
    task.write_exit(&exit).map_err(record)?;
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

fn failure(error: String) -> ExitRecord {
    ExitRecord { error: Some(error), finished_at: Some(Utc::now()), ..Default::default() }
}
