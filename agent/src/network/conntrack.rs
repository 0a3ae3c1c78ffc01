//! The kernel's connection-tracking table as the agent needs it: which
//! tracked connections a task answers (the draining handshake waits for
//! them) and which of them would outlive the task (removed with it).
//!
//! The table is read from `/proc/net/nf_conntrack` — one read, no process
//! per question — and parsed here; deletions go through Debian's
//! `conntrack`, one precise tuple at a time, and only for entries a new
//! connection cannot replace by itself (see [`reopenable`]).

use std::process::{Command, Stdio};

/// Where the kernel lists tracked connections (`CONFIG_NF_CONNTRACK_PROCFS`).
pub const TABLE: &str = "/proc/net/nf_conntrack";

/// One tracked connection: protocol, TCP state, the original direction's
/// tuple and the address replies come from (after DNAT: the backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub protocol: String,
    /// TCP's state (`ESTABLISHED`, `TIME_WAIT`, …); `None` for UDP and others.
    pub state: Option<String>,
    pub src: String,
    pub dst: String,
    pub sport: String,
    pub dport: String,
    pub reply_src: String,
}

impl Entry {
    /// Parses one line of [`TABLE`]; `None` for a line of another shape.
    pub fn parse(line: &str) -> Option<Entry> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let protocol = fields.get(2)?.to_string();
        let state = fields.get(5).filter(|f| !f.contains('=')).filter(|_| protocol == "tcp").map(|s| s.to_string());
        let values = |key: &str| -> Vec<&str> { fields.iter().filter_map(|f| f.strip_prefix(key)).collect() };
        let (src, dst, sport, dport) = (values("src="), values("dst="), values("sport="), values("dport="));
        Some(Entry {
            protocol,
            state,
            src: src.first()?.to_string(),
            dst: dst.first()?.to_string(),
            sport: sport.first()?.to_string(),
            dport: dport.first()?.to_string(),
            reply_src: src.get(1)?.to_string(),
        })
    }

    /// Whether a client's new SYN on the same tuple replaces this entry by
    /// itself: the kernel kills a TIME_WAIT or CLOSE entry when one arrives
    /// and tracks (and DNATs) the new connection afresh. Every other state
    /// keeps its old DNAT for such a SYN.
    pub fn reopenable(&self) -> bool {
        matches!(self.state.as_deref(), Some("TIME_WAIT" | "CLOSE"))
    }

    fn is_established(&self) -> bool {
        self.state.as_deref() == Some("ESTABLISHED")
    }
}

/// Every entry of a table listing.
pub fn entries(table: &str) -> impl Iterator<Item = Entry> + '_ {
    table.lines().filter_map(Entry::parse)
}

/// How many established TCP connections `address` answers.
pub fn established_to(table: &str, address: &str) -> usize {
    entries(table).filter(|e| e.protocol == "tcp" && e.is_established() && e.reply_src == address).count()
}

/// The entries of connections `address` answered that would outlive it:
/// TCP in any state a new SYN cannot reopen, and UDP flows.
pub fn stale_after(table: &str, address: &str) -> Vec<Entry> {
    entries(table)
        .filter(|e| e.reply_src == address)
        .filter(|e| (e.protocol == "tcp" && !e.reopenable()) || e.protocol == "udp")
        .collect()
}

/// Deletes the entries of [`stale_after`] for `address`, a task that no
/// longer exists: a client that reuses a source port (Linux does on
/// loopback) would otherwise revive one and be DNATed to the vanished task
/// (the connection times out), and the address may go to a new task next.
///
/// Entries in TIME_WAIT are left alone on purpose: deleting them (as
/// `conntrack -D --reply-src` does) races with the kernel reopening one for
/// a new connection on the same tuple, and then removes the *new*
/// connection's entry — its next packet is DNATed afresh to a task that
/// resets it. Best effort, blocking (run it off the async threads): needs
/// the table in /proc and Debian's `conntrack`.
pub fn forget_connections_of(address: &str) {
    let table = match std::fs::read_to_string(TABLE) {
        Ok(table) => table,
        Err(err) => {
            tracing::debug!(address, error = %err, "no connection-tracking table to read; entries of a removed task are left to expire");
            return;
        }
    };
    for entry in stale_after(&table, address) {
        if let Err(err) = delete(&entry) {
            tracing::debug!(address, error = %err, "conntrack not available; entries of a removed task are left to expire");
            return;
        }
    }
}

/// `conntrack -D` of exactly this entry's original tuple.
fn delete(entry: &Entry) -> std::io::Result<()> {
    Command::new("conntrack")
        .args(["-D", "-p", &entry.protocol, "-s", &entry.src, "-d", &entry.dst])
        .args(["--sport", &entry.sport, "--dport", &entry.dport])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE_TEXT: &str = "\
ipv4     2 tcp      6 431999 ESTABLISHED src=127.0.0.1 dst=127.0.0.1 sport=40000 dport=8080 src=10.200.0.4 dst=10.200.0.1 sport=80 dport=40000 [ASSURED] mark=0 use=1
ipv4     2 tcp      6 100 TIME_WAIT src=127.0.0.1 dst=127.0.0.1 sport=40001 dport=8080 src=10.200.0.4 dst=10.200.0.1 sport=80 dport=40001 [ASSURED] mark=0 use=1
ipv4     2 tcp      6 431999 ESTABLISHED src=10.200.0.4 dst=10.0.0.9 sport=5000 dport=443 src=10.0.0.9 dst=10.200.0.4 sport=443 dport=5000 [ASSURED] mark=0 use=1
ipv4     2 tcp      6 431999 ESTABLISHED src=127.0.0.1 dst=127.0.0.1 sport=40002 dport=8080 src=10.200.0.41 dst=10.200.0.1 sport=80 dport=40002 [ASSURED] mark=0 use=1
ipv4     2 tcp      6 55 SYN_SENT src=127.0.0.1 dst=127.0.0.1 sport=40003 dport=8080 [UNREPLIED] src=10.200.0.4 dst=10.200.0.1 sport=80 dport=40003 mark=0 use=1
ipv4     2 tcp      6 8 CLOSE src=127.0.0.1 dst=127.0.0.1 sport=40004 dport=8080 src=10.200.0.4 dst=10.200.0.1 sport=80 dport=40004 mark=0 use=1
ipv4     2 udp      17 29 src=10.200.0.9 dst=10.200.0.4 sport=5353 dport=53 src=10.200.0.4 dst=10.200.0.9 sport=53 dport=5353 mark=0 use=1
";

    #[test]
    fn a_line_gives_protocol_state_original_tuple_and_reply_source() {
        let entry = Entry::parse(TABLE_TEXT.lines().next().unwrap()).unwrap();
        assert_eq!(entry.protocol, "tcp");
        assert_eq!(entry.state.as_deref(), Some("ESTABLISHED"));
        assert_eq!((entry.src.as_str(), entry.dst.as_str()), ("127.0.0.1", "127.0.0.1"));
        assert_eq!((entry.sport.as_str(), entry.dport.as_str()), ("40000", "8080"));
        assert_eq!(entry.reply_src, "10.200.0.4");
        let udp = Entry::parse(TABLE_TEXT.lines().last().unwrap()).unwrap();
        assert_eq!((udp.protocol.as_str(), udp.state), ("udp", None));
        assert!(Entry::parse("garbage").is_none());
    }

    #[test]
    fn only_established_connections_answered_by_the_address_count() {
        assert_eq!(established_to(TABLE_TEXT, "10.200.0.4"), 1);
    }

    #[test]
    fn stale_entries_are_those_a_new_syn_cannot_reopen_and_udp_flows() {
        let ports: Vec<String> = stale_after(TABLE_TEXT, "10.200.0.4").into_iter().map(|e| e.sport).collect();
        // 40001 (TIME_WAIT) and 40004 (CLOSE) are the kernel's to replace;
        // 10.200.0.41 is another address; the outgoing connection answers from elsewhere.
        assert_eq!(ports, ["40000", "40003", "5353"]);
    }
}
