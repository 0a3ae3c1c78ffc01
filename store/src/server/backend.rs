//! Persistence in one redb file: the revision log, the leases and a few
//! meta values. The in-memory index is rebuilt from it on open.
//!
//! Tables:
//! - `events`: `(revision, sub) -> Event` (protobuf, without `prev_kv`):
//!   every version of every key still in history. Compaction removes the
//!   versions the index dropped, so the file holds what memory holds.
//! - `leases`: `id -> TTL` (deadlines are not persisted; see `leases.rs`).
//! - `meta`: `current_rev`, `compact_rev`, `cluster_id`, `member_id`.
//!
//! Every commit uses redb's immediate durability: when [`Backend::commit`]
//! returns, the batch survives `kill -9` and power loss.

use std::path::{Path, PathBuf};
use std::time::Instant;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::apply::State;
use crate::proto::{Event, EventType};

const EVENTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("events");
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The store file's name inside the data directory.
pub const FILE_NAME: &str = "shoal.redb";

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot create data directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("store file {path} holds an undecodable record at revision {rev}")]
    Corrupt { path: PathBuf, rev: u64 },
    #[error("committing to the store file")]
    Commit(#[source] redb::Error),
}

/// One change for the next commit.
#[derive(Debug, Clone)]
pub enum Record {
    Version { rev: i64, sub: u32, event: Event },
    Forget { rev: i64, sub: u32 },
    LeaseGrant { id: i64, ttl: i64 },
    LeaseRevoke { id: i64 },
    Compacted(i64),
}

pub struct Backend {
    db: Database,
    path: PathBuf,
}

/// Identity of this single-member "cluster", stable across restarts.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
}

impl Backend {
    /// Opens or creates `data_dir/shoal.redb` and loads everything into a
    /// fresh [`State`]; every lease's deadline starts at `now + TTL`.
    pub fn open(data_dir: &Path, now: Instant) -> Result<(Backend, State, Identity), BackendError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| BackendError::CreateDir { path: data_dir.to_path_buf(), source })?;
        let path = data_dir.join(FILE_NAME);
        let open_err = |source: redb::Error| BackendError::Open { path: path.clone(), source };
        let db = Database::create(&path).map_err(|e| open_err(e.into()))?;
        let identity = init_tables(&db).map_err(open_err)?;
        let backend = Backend { db, path };
        let state = backend.load(now)?;
        Ok((backend, state, identity))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self, now: Instant) -> Result<State, BackendError> {
        let open_err = |source: redb::Error| BackendError::Open { path: self.path.clone(), source };
        let mut st = State::default();
        let read = || -> Result<_, redb::Error> {
            let txn = self.db.begin_read()?;
            let meta = txn.open_table(META)?;
            let current = meta.get("current_rev")?.map_or(1, |v| v.value() as i64);
            let compacted = meta.get("compact_rev")?.map_or(0, |v| v.value() as i64);
            let mut versions = Vec::new();
            for row in txn.open_table(EVENTS)?.iter()? {
                let (k, v) = row?;
                versions.push((k.value(), v.value().to_vec()));
            }
            let mut leases = Vec::new();
            for row in txn.open_table(LEASES)?.iter()? {
                let (k, v) = row?;
                leases.push((k.value(), v.value()));
            }
            Ok((current, compacted, versions, leases))
        };
        let (current, compacted, versions, leases) = read().map_err(open_err)?;
        for (id, ttl) in leases {
            st.leases.grant(id, ttl, now);
        }
        for ((rev, sub), bytes) in versions {
            let event =
                Event::decode(bytes.as_slice()).map_err(|_| BackendError::Corrupt { path: self.path.clone(), rev })?;
            let kv = event.kv.unwrap_or_default();
            let key = kv.key.clone();
            let live = (event.r#type == EventType::Put as i32).then_some(kv);
            st.mvcc.write(rev as i64, sub, &key, live);
        }
        st.mvcc.set_current(current);
        st.mvcc.set_compacted(compacted);
        let attached: Vec<(i64, Vec<u8>)> =
            st.mvcc.latest_live().filter(|kv| kv.lease != 0).map(|kv| (kv.lease, kv.key.clone())).collect();
        for (lease, key) in attached {
            st.leases.attach(lease, &key);
        }
        st.committed = st.mvcc.current();
        Ok(st)
    }

    /// Writes a batch in one durable transaction.
    pub fn commit(&self, records: &[Record], current_rev: i64) -> Result<(), BackendError> {
        self.try_commit(records, current_rev).map_err(BackendError::Commit)
    }

    fn try_commit(&self, records: &[Record], current_rev: i64) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut events = txn.open_table(EVENTS)?;
            let mut leases = txn.open_table(LEASES)?;
            let mut meta = txn.open_table(META)?;
            for r in records {
                match r {
                    Record::Version { rev, sub, event } => {
                        events.insert((*rev as u64, *sub), event.encode_to_vec().as_slice())?;
                    }
                    Record::Forget { rev, sub } => {
                        events.remove((*rev as u64, *sub))?;
                    }
                    Record::LeaseGrant { id, ttl } => {
                        leases.insert(*id, *ttl)?;
                    }
                    Record::LeaseRevoke { id } => {
                        leases.remove(*id)?;
                    }
                    Record::Compacted(rev) => {
                        meta.insert("compact_rev", *rev as u64)?;
                    }
                }
            }
            meta.insert("current_rev", current_rev as u64)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Size of the store file in bytes.
    pub fn size(path: &Path) -> i64 {
        std::fs::metadata(path).map(|m| m.len() as i64).unwrap_or(0)
    }
}

/// Creates missing tables and the cluster identity on first open.
fn init_tables(db: &Database) -> Result<Identity, redb::Error> {
    let txn = db.begin_write()?;
    let identity;
    {
        txn.open_table(EVENTS)?;
        txn.open_table(LEASES)?;
        let mut meta = txn.open_table(META)?;
        let mut id = |name: &str| -> Result<u64, redb::Error> {
            if let Some(v) = meta.get(name)? {
                return Ok(v.value());
            }
            let fresh = rand::random::<u64>() >> 1 | 1;
            meta.insert(name, fresh)?;
            Ok(fresh)
        };
        identity = Identity { cluster_id: id("cluster_id")?, member_id: id("member_id")? };
    }
    txn.commit()?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::KeyValue;

    #[test]
    fn state_survives_reopen_with_identity_and_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let (b, st, id) = Backend::open(dir.path(), now).unwrap();
        assert_eq!(st.mvcc.current(), 1);
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            mod_revision: 2,
            create_revision: 2,
            version: 1,
            lease: 9,
        };
        let event = Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: None };
        let records = [Record::LeaseGrant { id: 9, ttl: 30 }, Record::Version { rev: 2, sub: 0, event }];
        b.commit(&records, 2).unwrap();
        drop(b);
        let (_b, st, id2) = Backend::open(dir.path(), now).unwrap();
        assert_eq!((id.cluster_id, id.member_id), (id2.cluster_id, id2.member_id));
        assert_eq!(st.mvcc.current(), 2);
        assert_eq!(st.mvcc.get(b"k", 2).unwrap().value, b"v");
        assert!(st.leases.get(9).unwrap().keys.contains(b"k".as_slice()));
    }
}
