//! The in-memory MVCC index: every key's history of versions, keyed by
//! revision, so reads at any uncompacted revision and watch replays are
//! answered from memory.
//!
//! There is no separate event log: a watch replay walks the histories of
//! the watched keys and rebuilds each event (and its `prev_kv`) from two
//! neighbouring versions. Each version carries `(rev, sub)`, its position
//! inside its revision, so events of one revision come back in the order
//! they were written.
//!
//! # Visibility
//! The writer appends versions before they are durable; readers pass the
//! newest *committed* revision as `visible` and never see past it.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::proto::{Event, EventType, KeyValue};

/// Why a read at a given revision cannot be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
}

/// One version of a key; `kv` is `None` for a deletion (tombstone).
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub rev: i64,
    pub sub: u32,
    pub kv: Option<KeyValue>,
}

/// An event as stored: revision, position inside it, and the event itself.
pub type RevEvent = (i64, u32, Event);

/// The whole keyspace with history.
#[derive(Debug)]
pub struct Mvcc {
    keys: BTreeMap<Vec<u8>, Vec<Version>>,
    current: i64,
    compacted: i64,
}

impl Default for Mvcc {
    fn default() -> Self {
        Mvcc { keys: BTreeMap::new(), current: 1, compacted: 0 }
    }
}

/// Bounds for `BTreeMap::range` over keys.
pub type KeyBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The keys `[key, end)` as etcd spells a range: an empty `end` is the single
/// key, `"\0"` is every key from `key` on.
pub fn key_bounds(key: &[u8], end: &[u8]) -> Option<KeyBounds> {
    if end.is_empty() {
        return Some((Bound::Included(key.to_vec()), Bound::Included(key.to_vec())));
    }
    if end == [0] {
        return Some((Bound::Included(key.to_vec()), Bound::Unbounded));
    }
    if end <= key {
        return None;
    }
    Some((Bound::Included(key.to_vec()), Bound::Excluded(end.to_vec())))
}

/// Whether `k` falls in the range `(key, end)` (same spelling as [`key_bounds`]).
pub fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        k >= key && k < end
    }
}

fn visible_in(history: &[Version], rev: i64) -> Option<&KeyValue> {
    history.iter().rev().find(|v| v.rev <= rev).and_then(|v| v.kv.as_ref())
}

impl Mvcc {
    /// Newest revision written (possibly not yet committed).
    pub fn current(&self) -> i64 {
        self.current
    }

    pub fn compacted(&self) -> i64 {
        self.compacted
    }

    pub fn set_current(&mut self, rev: i64) {
        self.current = self.current.max(rev);
    }

    pub fn set_compacted(&mut self, rev: i64) {
        self.compacted = rev;
    }

    /// Resolves a requested read revision (0 = newest visible) against what
    /// is still in history.
    pub fn read_rev(&self, requested: i64, visible: i64) -> Result<i64, MvccError> {
        match requested {
            r if r <= 0 => Ok(visible),
            r if r > visible => Err(MvccError::FutureRevision),
            r if r < self.compacted => Err(MvccError::Compacted),
            r => Ok(r),
        }
    }

    /// The live value of `key` at `rev`.
    pub fn get(&self, key: &[u8], rev: i64) -> Option<&KeyValue> {
        self.keys.get(key).and_then(|h| visible_in(h, rev))
    }

    /// Live key-values in the range at `rev`, in key order.
    pub fn range<'a>(&'a self, key: &[u8], end: &[u8], rev: i64) -> Box<dyn Iterator<Item = &'a KeyValue> + 'a> {
        match key_bounds(key, end) {
            None => Box::new(std::iter::empty()),
            Some(bounds) => {
                Box::new(self.keys.range::<Vec<u8>, _>(bounds).filter_map(move |(_, h)| visible_in(h, rev)))
            }
        }
    }

    /// Appends a version; `rev` must not be older than the key's last one.
    pub fn write(&mut self, rev: i64, sub: u32, key: &[u8], kv: Option<KeyValue>) {
        let history = self.keys.entry(key.to_vec()).or_default();
        history.push(Version { rev, sub, kv });
        self.current = self.current.max(rev);
    }

    /// Drops history older than `rev`, keeping for each key the newest
    /// version at or below `rev` if it is live (and a tombstone written at
    /// exactly `rev`, so a watch from `rev` still sees it). Returns the
    /// `(rev, sub)` of every dropped version, for the backend to forget.
    pub fn compact(&mut self, rev: i64) -> Vec<(i64, u32)> {
        let mut dropped = Vec::new();
        self.keys.retain(|_, history| {
            let keep_from = history.iter().rposition(|v| v.rev <= rev).map(|i| {
                let v = &history[i];
                if v.kv.is_some() || v.rev == rev {
                    i
                } else {
                    i + 1
                }
            });
            if let Some(from) = keep_from {
                dropped.extend(history.drain(..from).map(|v| (v.rev, v.sub)));
            }
            !history.is_empty()
        });
        self.compacted = self.compacted.max(rev);
        dropped
    }

    /// Every event on keys in `(key, end)` with `from <= rev <= to`, in
    /// revision order, each with its `prev_kv` when history still has it.
    pub fn events(&self, key: &[u8], end: &[u8], from: i64, to: i64) -> Vec<RevEvent> {
        let mut out = Vec::new();
        let Some(bounds) = key_bounds(key, end) else { return out };
        for (k, history) in self.keys.range::<Vec<u8>, _>(bounds) {
            let start = history.partition_point(|v| v.rev < from);
            for i in start..history.len() {
                let v = &history[i];
                if v.rev > to {
                    break;
                }
                let prev = if i > 0 { history[i - 1].kv.clone() } else { None };
                out.push((v.rev, v.sub, event_of(k, v, prev)));
            }
        }
        out.sort_by_key(|(rev, sub, _)| (*rev, *sub));
        out
    }

    /// Every live key-value at the newest revision (used to rebuild lease
    /// attachments after a restart).
    pub fn latest_live(&self) -> impl Iterator<Item = &KeyValue> {
        self.keys.values().filter_map(|h| h.last().and_then(|v| v.kv.as_ref()))
    }
}

/// The event a version stands for.
pub fn event_of(key: &[u8], v: &Version, prev_kv: Option<KeyValue>) -> Event {
    match &v.kv {
        Some(kv) => Event { r#type: EventType::Put as i32, kv: Some(kv.clone()), prev_kv },
        None => Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue { key: key.to_vec(), mod_revision: v.rev, ..Default::default() }),
            prev_kv,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64, create: i64, version: i64) -> KeyValue {
        KeyValue { key: key.into(), value: value.into(), mod_revision: rev, create_revision: create, version, lease: 0 }
    }

    fn sample() -> Mvcc {
        let mut m = Mvcc::default();
        m.write(2, 0, b"a", Some(kv("a", "1", 2, 2, 1)));
        m.write(3, 0, b"b", Some(kv("b", "1", 3, 3, 1)));
        m.write(4, 0, b"a", Some(kv("a", "2", 4, 2, 2)));
        m.write(5, 0, b"a", None);
        m
    }

    #[test]
    fn reads_see_the_version_current_at_their_revision() {
        let m = sample();
        assert_eq!(m.get(b"a", 3).unwrap().value, b"1");
        assert_eq!(m.get(b"a", 4).unwrap().value, b"2");
        assert!(m.get(b"a", 5).is_none());
        assert!(m.get(b"a", 1).is_none());
        let keys: Vec<_> = m.range(b"a", b"\0", 4).map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn range_with_end_before_key_is_empty_not_a_panic() {
        let m = sample();
        assert_eq!(m.range(b"b", b"a", 5).count(), 0);
        assert_eq!(m.range(b"b", b"b", 5).count(), 0);
    }

    #[test]
    fn read_rev_rejects_compacted_and_future_revisions() {
        let mut m = sample();
        m.compact(4);
        assert_eq!(m.read_rev(3, 5), Err(MvccError::Compacted));
        assert_eq!(m.read_rev(4, 5), Ok(4));
        assert_eq!(m.read_rev(6, 5), Err(MvccError::FutureRevision));
        assert_eq!(m.read_rev(0, 5), Ok(5));
    }

    #[test]
    fn compaction_keeps_the_newest_live_version_and_forgets_the_rest() {
        let mut m = sample();
        let dropped = m.compact(4);
        assert_eq!(dropped, vec![(2, 0)]);
        assert_eq!(m.get(b"a", 4).unwrap().value, b"2");
        assert_eq!(m.get(b"b", 4).unwrap().value, b"1");
        let dropped = m.compact(6);
        assert_eq!(dropped, vec![(4, 0), (5, 0)]);
        assert!(m.get(b"a", 6).is_none());
    }

    #[test]
    fn events_come_in_revision_order_with_prev_kv() {
        let m = sample();
        let evs = m.events(b"a", b"c", 3, 5);
        let revs: Vec<_> = evs.iter().map(|(r, _, _)| *r).collect();
        assert_eq!(revs, vec![3, 4, 5]);
        let delete = &evs[2].2;
        assert_eq!(delete.r#type, EventType::Delete as i32);
        assert_eq!(delete.prev_kv.as_ref().unwrap().value, b"2");
        assert_eq!(delete.kv.as_ref().unwrap().mod_revision, 5);
    }
}
