//! Thin, safe wrappers over the few system calls the process runtime needs:
//! signals, process identity from `/proc`, who we run as, entering a
//! network namespace.

use std::io;

/// Start time of `pid` in clock ticks since boot, `None` if there is no such process.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state …`: comm may hold spaces and parentheses, so split
    // after the last `)`. Field 22 (starttime) is the 20th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True when `pid` is still the process that started at `start_ticks`.
pub fn is_same_process(pid: u32, start_ticks: u64) -> bool {
    self::start_ticks(pid) == Some(start_ticks)
}

/// Sends `signal` to the process group led by `pid` (the task and whatever
/// it forked), falling back to the process alone.
pub fn signal_group(pid: u32, signal: i32) -> io::Result<()> {
    let pid = pid as libc::pid_t;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(-pid, signal) } == 0 {
        return Ok(());
    }
    if unsafe { libc::kill(pid, signal) } == 0 {
        return Ok(());
    }
    Err(io::Error::last_os_error())
}

/// True when the agent runs as root (and may switch users, set namespaces).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Starts a new session (`setsid`), detaching from the agent's terminal and
/// process group. Meant for `pre_exec`.
pub fn new_session() -> io::Result<()> {
    // SAFETY: setsid(2) is async-signal-safe and touches no memory.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread into the network namespace at `path`
/// (`/run/netns/<name>`). setns(2) changes only the calling thread: a
/// process spawned from this thread afterwards starts inside.
pub fn enter_netns(path: &std::path::Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    // SAFETY: setns(2) on a valid open descriptor has no memory-safety preconditions.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread into the mount namespace at `path`
/// (`/proc/<pid>/ns/mnt`). The thread first stops sharing its filesystem
/// attributes with the process's other threads, which setns(2) requires.
pub fn enter_mntns(path: &std::path::Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    // SAFETY: unshare(2) and setns(2) have no memory-safety preconditions;
    // both affect only the calling thread.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 || unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNS) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Parses a signal as Docker accepts it: `SIGTERM`, `TERM`, or `15`.
pub fn parse_signal(text: &str) -> Option<i32> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = text.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "WINCH" => libc::SIGWINCH,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_in_docker_spellings() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("int"), Some(libc::SIGINT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGBOGUS"), None);
        assert_eq!(parse_signal("0"), None);
    }

    #[test]
    fn this_process_is_itself_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let ticks = start_ticks(me).expect("own /proc/self/stat");
        assert!(is_same_process(me, ticks));
        assert!(!is_same_process(me, ticks + 1));
    }
}
