//! The lease table: which leases exist, when each expires, and which keys
//! are attached to it. Pure bookkeeping; the writer decides when to revoke.
//!
//! Deadlines live only in memory, like etcd's: after a restart every lease
//! gets a fresh `now + TTL`.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// etcd's smallest TTL with default election settings (1.5 s rounded up).
pub const MIN_TTL: i64 = 2;
/// etcd's largest TTL.
pub const MAX_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone)]
pub struct Lease {
    pub ttl: i64,
    pub deadline: Instant,
    pub keys: BTreeSet<Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: HashMap<i64, Lease>,
}

impl LeaseTable {
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn grant(&mut self, id: i64, ttl: i64, now: Instant) {
        let deadline = now + Duration::from_secs(ttl as u64);
        self.leases.insert(id, Lease { ttl, deadline, keys: BTreeSet::new() });
    }

    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        self.leases.remove(&id)
    }

    /// Pushes the deadline to `now + TTL`; returns the TTL, or `None` if the
    /// lease does not exist (or has expired and awaits revocation).
    pub fn refresh(&mut self, id: i64, now: Instant) -> Option<i64> {
        let lease = self.leases.get_mut(&id)?;
        if lease.deadline <= now {
            return None;
        }
        lease.deadline = now + Duration::from_secs(lease.ttl as u64);
        Some(lease.ttl)
    }

    /// Whole seconds left, as etcd reports them (`-1` once expired).
    pub fn remaining(&self, id: i64, now: Instant) -> Option<i64> {
        let lease = self.leases.get(&id)?;
        Some(match lease.deadline.checked_duration_since(now) {
            Some(left) if !left.is_zero() => left.as_secs() as i64,
            _ => -1,
        })
    }

    pub fn expired(&self, now: Instant) -> Vec<i64> {
        self.leases.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| *id).collect()
    }

    pub fn attach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.insert(key.to_vec());
        }
    }

    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.remove(key);
        }
    }

    /// A positive id not in use, for grants that leave the id to the server.
    pub fn fresh_id(&self) -> i64 {
        loop {
            let id = rand::random::<i64>() & i64::MAX;
            if id != 0 && !self.contains(id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_moves_the_deadline_and_expired_leases_cannot_be_refreshed() {
        let mut t = LeaseTable::default();
        let now = Instant::now();
        t.grant(7, 5, now);
        assert_eq!(t.remaining(7, now + Duration::from_millis(1500)), Some(3));
        assert_eq!(t.refresh(7, now + Duration::from_secs(4)), Some(5));
        assert!(t.expired(now + Duration::from_secs(8)).is_empty());
        assert_eq!(t.expired(now + Duration::from_secs(9)), vec![7]);
        assert_eq!(t.refresh(7, now + Duration::from_secs(9)), None);
        assert_eq!(t.remaining(7, now + Duration::from_secs(9)), Some(-1));
    }

    #[test]
    fn attached_keys_follow_attach_and_detach() {
        let mut t = LeaseTable::default();
        t.grant(1, 10, Instant::now());
        t.attach(1, b"a");
        t.attach(1, b"b");
        t.detach(1, b"a");
        assert_eq!(t.get(1).unwrap().keys.iter().collect::<Vec<_>>(), vec![&b"b".to_vec()]);
        assert!(t.fresh_id() > 0);
    }
}
