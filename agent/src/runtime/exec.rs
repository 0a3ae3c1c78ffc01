//! Running a command in a task's context — a health probe — for the process
//! runtime: the task's network namespace (so `localhost` is the task), its
//! environment (with the default `PATH`), working directory and user, in a
//! process group of its own that is SIGKILLed when the time is up.
//!
//! Why a short-lived thread for the namespace and not `pre_exec`: setns(2)
//! needs root, and std runs `pre_exec` after dropping to the task's user;
//! a thread that enters the namespace forks a child that starts inside, and
//! the namespace leaves with the thread (the agent's own threads stay put).

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::launch::process_env;
use crate::sys;
use crate::taskdir::Launch;

/// Output kept from a command (stdout and stderr interleaved): what a
/// probe's log keeps; the rest is read and dropped.
pub const MAX_OUTPUT: usize = shoal_crd::ProbeResult::MAX_OUTPUT;
/// How long output is still read after the command exited (a background
/// child may hold the pipe open).
const DRAIN: Duration = Duration::from_millis(200);

/// How a command run in a task's context ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit status; 128 + N when killed by signal N, as shells report it.
    pub exit_code: i32,
    /// Up to [`MAX_OUTPUT`] bytes of stdout and stderr (lossy UTF-8).
    pub output: String,
}

/// Runs `argv` as `launch` describes the task, in the mount namespace at
/// `mnt` when given (`/proc/<pid>/ns/mnt` of the task); `Ok(None)` when it
/// ran longer than `limit` and was killed.
pub async fn run(
    launch: &Launch,
    mnt: Option<PathBuf>,
    argv: &[String],
    limit: Duration,
) -> io::Result<Option<ExecOutput>> {
    let (program, args) =
        argv.split_first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let (reader, writer) = io::pipe()?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(process_env(launch))
        .current_dir(&launch.cwd)
        .process_group(0)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer);
    if let Some(gid) = launch.gid {
        command.gid(gid);
    }
    if let Some(uid) = launch.uid {
        command.uid(uid);
    }
    // `spawn_in` consumes the command, closing this process's write ends:
    // the reader sees EOF once the command (and its children) exit.
    let mut child = spawn_in(command, launch.netns.clone(), mnt).await?;
    let reading = tokio::spawn(read_bounded(pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?));
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            if let Some(pid) = child.id() {
                let _ = sys::signal_group(pid, libc::SIGKILL);
            }
            let _ = child.kill().await;
            reading.abort();
            return Ok(None);
        }
    };
    let output = match tokio::time::timeout(DRAIN, reading).await {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    };
    use std::os::unix::process::ExitStatusExt;
    let exit_code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1);
    Ok(Some(ExecOutput { exit_code, output: shoal_crd::ProbeResult::truncate_output(&output) }))
}

/// Spawns `command`, inside the network and mount namespaces at `netns`
/// and `mnt` when given.
async fn spawn_in(mut command: Command, netns: Option<PathBuf>, mnt: Option<PathBuf>) -> io::Result<Child> {
    if netns.is_none() && mnt.is_none() {
        return command.spawn();
    }
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        // The child is registered with this runtime's process driver.
        let _entered = runtime.enter();
        let entered = |path: &Option<PathBuf>, enter: fn(&std::path::Path) -> io::Result<()>, what: &str| match path {
            Some(path) => enter(path).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot enter the task's {what} namespace {}: {e}", path.display()))
            }),
            None => Ok(()),
        };
        let spawned = entered(&netns, sys::enter_netns, "network")
            .and_then(|()| entered(&mnt, sys::enter_mntns, "mount"))
            .and_then(|()| command.spawn());
        let _ = tx.send(spawned);
    });
    rx.await.map_err(|_| io::Error::other("the thread spawning the command in the task's namespace died"))?
}

/// Reads to EOF, keeping the first [`MAX_OUTPUT`] bytes.
async fn read_bounded(mut from: pipe::Receiver) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = from.read(&mut chunk).await {
        let room = MAX_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(dir: &std::path::Path) -> Launch {
        Launch {
            argv: vec![],
            env: [("GREETING".to_string(), "hello".to_string())].into(),
            cwd: dir.into(),
            uid: None,
            gid: None,
            log_max_bytes: 0,
            log_keep: 0,
            netns: None,
            files: Vec::new(),
            env_from_stdin: Vec::new(),
            resolv_conf: None,
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn a_command_sees_the_tasks_env_and_working_dir_and_its_output_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out =
            run(&launch(dir.path()), None, &sh("echo $GREETING; pwd; echo oops >&2; exit 3"), Duration::from_secs(5))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(out.exit_code, 3);
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(out.output, format!("hello\n{}\noops\n", cwd.display()));
    }

    #[tokio::test]
    async fn path_lookup_uses_the_default_path_and_a_missing_program_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            run(&launch(dir.path()), None, &["true".into()], Duration::from_secs(5)).await.unwrap().unwrap().exit_code,
            0
        );
        assert!(run(&launch(dir.path()), None, &["no-such-probe-program".into()], Duration::from_secs(5))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-pid");
        let script = format!("sleep 30 & echo $! > {}; wait", marker.display());
        let started = std::time::Instant::now();
        let out = run(&launch(dir.path()), None, &sh(&script), Duration::from_millis(300)).await.unwrap();
        assert_eq!(out, None);
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: u32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z"), "the probe's child survived: {state}");
    }

    #[tokio::test]
    async fn output_beyond_4_kib_is_read_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(&launch(dir.path()), None, &sh("head -c 100000 /dev/zero | tr '\\0' x"), Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((out.exit_code, out.output.len()), (0, MAX_OUTPUT));
    }
}
