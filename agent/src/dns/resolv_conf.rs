//! Pointing a task at the agent's DNS: a `resolv.conf` in the task's
//! directory (written when its address is allocated), bind-mounted over
//! `/etc/resolv.conf` in the task's own mount namespace by the shim. The
//! host's file is never written; other processes never see the mount.
//!
//! The content is Docker's for a container on a user-defined network:
//! the embedded server (here the bridge's gateway, which every task
//! reaches), `options ndots:0` (a bare service name is asked as it is
//! first, before any search domain) and the host's search domains.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The file's name in the task directory.
pub const FILE: &str = "resolv.conf";
/// What it is mounted over, in the task's view.
pub const TARGET: &str = "/etc/resolv.conf";

/// The resolv.conf of a task whose DNS server is `nameserver`.
pub fn content(nameserver: Ipv4Addr, search: &[String]) -> String {
    let mut text = format!("# written by shoal: the node agent answers for service names\nnameserver {nameserver}\n");
    if !search.is_empty() {
        text += &format!("search {}\n", search.join(" "));
    }
    text + "options ndots:0\n"
}

/// Writes the resolv.conf of a task in `dir` whose DNS server is the
/// bridge's `gateway`, with the host's search domains; its path.
pub fn write_for_task(dir: &Path, gateway: Ipv4Addr) -> io::Result<std::path::PathBuf> {
    let host = super::upstream::HostResolver::parse(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    write(dir, &content(gateway, &host.search))
}

/// Writes `content` to `dir/resolv.conf` (mode 0644) unless it holds it
/// already; in place, so a running task's mount sees a change.
pub fn write(dir: &Path, content: &str) -> io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(FILE);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(content) {
        std::fs::write(&path, content)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(path)
}

/// In the shim, on the thread that then forks the task: bind-mounts `file`
/// over `/etc/resolv.conf` — first giving the thread a private mount
/// namespace of its own when `unshare` (it has none yet: the task has no
/// configs or secrets). A symlinked `/etc/resolv.conf` (systemd-resolved's)
/// is followed, so its target is covered, in this namespace only.
pub fn mount_over_etc(file: &Path, unshare: bool) -> io::Result<()> {
    let check = |rc: libc::c_int, what: &str| {
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        Err(io::Error::new(err.kind(), format!("{what}: {err}")))
    };
    if unshare {
        // SAFETY: unshare(2) has no memory-safety preconditions; it affects only this thread.
        check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, "unshare the mount namespace")?;
        let root = CString::new("/").expect("no NUL");
        // SAFETY: valid NUL-terminated strings or null, alive for the call.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        check(rc, "make / private")?;
    }
    let source = CString::new(file.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in a path"))?;
    let target = CString::new(TARGET).expect("no NUL");
    // SAFETY: valid NUL-terminated strings or null, alive for the call.
    let rc =
        unsafe { libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
    check(rc, &format!("bind {} over {TARGET}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_asks_the_gateway_first_with_the_hosts_search_domains() {
        let text = content(Ipv4Addr::new(10, 200, 3, 1), &["corp.example".into(), "lab.example".into()]);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, ["nameserver 10.200.3.1", "search corp.example lab.example", "options ndots:0"]);
        assert!(!content(Ipv4Addr::new(10, 0, 0, 1), &[]).contains("search"));
    }

    #[test]
    fn the_file_is_rewritten_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "nameserver 10.0.0.1\n").unwrap();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let before = (inode(&path), std::fs::metadata(&path).unwrap().modified().unwrap());
        write(dir.path(), "nameserver 10.0.0.1\n").unwrap();
        assert_eq!((inode(&path), std::fs::metadata(&path).unwrap().modified().unwrap()), before);
        write(dir.path(), "nameserver 10.0.0.9\n").unwrap();
        assert_eq!(inode(&path), before.0, "written in place: a bind mount of it sees the change");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "nameserver 10.0.0.9\n");
    }
}
