//! The task's own mount namespace (root only), set up by the shim on the
//! thread that then forks the task:
//!
//! 1. `unshare(CLONE_NEWNS)`, and `/` made recursively private, so nothing
//!    mounted here reaches the host (or the other way round);
//! 2. a tmpfs on `{task_dir}/mnt` (mode 0700) holds everything written;
//! 3. a file under `/run/secrets` goes onto a tmpfs mounted there;
//! 4. a file whose target exists on the host is written to the staging
//!    tmpfs and bind-mounted over the target;
//! 5. any other target needs a new file (and maybe directories): the
//!    deepest existing ancestor gets an overlay whose upper layer is on the
//!    staging tmpfs, so the new entries exist in this namespace only and
//!    the ancestor's other content stays visible.
//!
//! # Caveats
//! - An overlay hides mounts below its directory (e.g. `/run/netns/*` when
//!   `/run/secrets` is missing on the host) from the task.
//! - A target directly under `/` with no existing parent but `/` is refused:
//!   an overlay on `/` would hide `/proc`, `/dev` and the rest.
//! - Overlay options cannot hold `,` or `:`: such directories are refused.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use shoal_crd::defaults::SECRETS_DIR;

use super::{paths, write_file, Content, TaskFile};

/// Gives the calling thread a mount namespace of its own and places `files`
/// in it; a process forked from this thread afterwards sees them.
pub fn place(files: &[(TaskFile, Content)], staging: &Path) -> io::Result<()> {
    // SAFETY: unshare(2) has no memory-safety preconditions; it affects only this thread.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, "unshare the mount namespace")?;
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(staging)?;
    mount(Some("tmpfs"), staging, Some("tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, Some("mode=0700"))?;
    let mut writable: Vec<PathBuf> = Vec::new();
    for (n, (file, content)) in files.iter().enumerate() {
        let path = &file.path;
        let parent =
            path.parent().ok_or_else(|| io::Error::other(format!("{}: no parent directory", path.display())))?;
        if paths::in_secrets_dir(path) && !writable.iter().any(|w| w == Path::new(SECRETS_DIR)) {
            if !Path::new(SECRETS_DIR).is_dir() {
                make_dir(Path::new(SECRETS_DIR), staging, &mut writable)?;
            }
            mount(
                Some("tmpfs"),
                Path::new(SECRETS_DIR),
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some("mode=0755"),
            )?;
            writable.push(SECRETS_DIR.into());
        }
        let in_writable = writable.iter().any(|w| path.starts_with(w));
        if !in_writable && path.is_file() {
            let staged = staging.join(format!("file-{n}"));
            owned(write_file(&staged, &content.0, file.mode)?, file)?;
            mount(Some(&staged.to_string_lossy()), path, None, libc::MS_BIND, None)?;
            continue;
        }
        make_dir(parent, staging, &mut writable)?;
        owned(write_file(path, &content.0, file.mode)?, file)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// Makes directory `dir` exist and be writable here without touching the
/// host: inside a tmpfs or overlay of ours, or under a new overlay on its
/// deepest existing ancestor.
fn make_dir(dir: &Path, staging: &Path, writable: &mut Vec<PathBuf>) -> io::Result<()> {
    if !writable.iter().any(|w| dir.starts_with(w)) {
        let ancestor = if dir.is_dir() { dir.to_path_buf() } else { paths::nearest_existing(dir, Path::is_dir) };
        if ancestor == Path::new("/") {
            return Err(io::Error::other(format!(
                "{}: only `/` exists above it; create its parent on the node or choose another target",
                dir.display()
            )));
        }
        overlay(&ancestor, staging, writable.len())?;
        writable.push(ancestor);
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)
}

/// An overlay on `dir` with its upper layer on the staging tmpfs.
fn overlay(dir: &Path, staging: &Path, n: usize) -> io::Result<()> {
    let layer = staging.join(format!("overlay-{n}"));
    let (upper, work) = (layer.join("upper"), layer.join("work"));
    for d in [&upper, &work] {
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(d)?;
    }
    let text = |p: &Path| p.to_str().filter(|s| !s.contains([',', ':'])).map(str::to_string);
    let (Some(lower), Some(upper), Some(work)) = (text(dir), text(&upper), text(&work)) else {
        return Err(io::Error::other(format!("{}: cannot overlay a path with `,` or `:`", dir.display())));
    };
    let options = format!("lowerdir={lower},upperdir={upper},workdir={work}");
    mount(Some("overlay"), dir, Some("overlay"), 0, Some(&options))
}

/// Sets the file's owner (its mode is set when written).
fn owned(file: std::fs::File, task_file: &TaskFile) -> io::Result<()> {
    std::os::unix::fs::fchown(&file, Some(task_file.uid), Some(task_file.gid))
}

fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::other("NUL in a mount argument"));
    let source = source.map(c).transpose()?;
    let fstype = fstype.map(c).transpose()?;
    let data = data.map(c).transpose()?;
    let target_c = CString::new(target.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in a path"))?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a valid NUL-terminated string or null, alive for the call.
    let rc = unsafe { libc::mount(ptr(&source), target_c.as_ptr(), ptr(&fstype), flags, ptr(&data).cast()) };
    check(
        rc,
        &format!(
            "mount {} on {}",
            fstype.as_ref().or(source.as_ref()).map_or("-".into(), |s| s.to_string_lossy()),
            target.display()
        ),
    )
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    Err(io::Error::new(err.kind(), format!("{what}: {err}")))
}
