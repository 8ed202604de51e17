//! The game P2P coordinator's records (docs/DOORS.md, "Coordinator"):
//! hosts, zones and sessions, shared by every node.
//!
//! The store keeps each record as text (its JSON, which only
//! [`crate::coordinator`] reads or writes) with a *version*, and offers
//! three things over them:
//!
//! - [`CoordStore::coord_next_id`]: integer ids, unique across the cluster
//!   (a counter per kind: `INCR` on Redis), which the old service's API
//!   returns as its database keys;
//! - reads: one record, or every record of a kind;
//! - [`CoordStore::coord_put`] and [`CoordStore::coord_delete`]: a
//!   compare-and-set on the version. A change is read, computed and written
//!   back only if nobody wrote the record in between; otherwise the caller
//!   reads again and retries. So an upsert, a player joining a session
//!   with its capacity checked, or a session marked failed by the health
//!   check is atomic whichever node does it, without a script per
//!   operation: the logic lives once, in Rust, and both backends only
//!   compare versions.
//!
//! Guarantees every backend keeps:
//! - versions are unique across every record and kind and only grow (one
//!   counter), so a record deleted and created again never matches a
//!   version read before the delete;
//! - `coord_put` and `coord_delete` are atomic, and write nothing when the
//!   version does not match;
//! - ids of one kind are never handed out twice (gaps are allowed).
//!
//! [`CoordState`] is the reference implementation (the memory store runs
//! it as it is); `redis/lua/coord_*.lua` follow it.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use super::StoreError;

/// The three kinds of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CoordKind {
    /// Game hosts, by their `host_id`.
    Host,
    /// Zones, by their `zone_id`.
    Zone,
    /// Sessions, by their integer id (as decimal text).
    Session,
}

impl CoordKind {
    /// The name in store keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Zone => "zone",
            Self::Session => "session",
        }
    }
}

/// A record as stored: its version and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Changes with every write (never 0).
    pub version: u64,
    /// The record's JSON.
    pub json: String,
}

/// The coordinator's records; see the module docs.
#[async_trait]
pub trait CoordStore: Send + Sync + 'static {
    /// A new integer id for `kind`, never returned before for that kind.
    async fn coord_next_id(&self, kind: CoordKind) -> Result<u64, StoreError>;
    /// One record.
    async fn coord_get(&self, kind: CoordKind, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// Every record of `kind`, as `(key, record)`, in key order.
    async fn coord_list(&self, kind: CoordKind) -> Result<Vec<(String, Versioned)>, StoreError>;
    /// Writes `json` as record `key` if its version is `expected` (0: the
    /// record must not exist). Returns the new version, or `None` when the
    /// version did not match (nothing written).
    async fn coord_put(
        &self,
        kind: CoordKind,
        key: &str,
        expected: u64,
        json: &str,
    ) -> Result<Option<u64>, StoreError>;
    /// Removes record `key` if its version is `expected`. True when it was
    /// removed; false when it did not exist or had another version.
    async fn coord_delete(
        &self,
        kind: CoordKind,
        key: &str,
        expected: u64,
    ) -> Result<bool, StoreError>;
}

/// The reference implementation, held by the memory store under a lock.
#[derive(Debug, Default)]
pub struct CoordState {
    records: HashMap<CoordKind, BTreeMap<String, Versioned>>,
    ids: HashMap<CoordKind, u64>,
    version: u64,
}

impl CoordState {
    /// See [`CoordStore::coord_next_id`].
    pub fn next_id(&mut self, kind: CoordKind) -> u64 {
        let id = self.ids.entry(kind).or_insert(0);
        *id += 1;
        *id
    }

    /// See [`CoordStore::coord_get`].
    pub fn get(&self, kind: CoordKind, key: &str) -> Option<Versioned> {
        self.records.get(&kind)?.get(key).cloned()
    }

    /// See [`CoordStore::coord_list`].
    pub fn list(&self, kind: CoordKind) -> Vec<(String, Versioned)> {
        self.records
            .get(&kind)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// See [`CoordStore::coord_put`].
    pub fn put(&mut self, kind: CoordKind, key: &str, expected: u64, json: &str) -> Option<u64> {
        let current = self.get(kind, key).map_or(0, |v| v.version);
        if current != expected {
            return None;
        }
        self.version += 1;
        let version = self.version;
        self.records.entry(kind).or_default().insert(
            key.to_string(),
            Versioned {
                version,
                json: json.to_string(),
            },
        );
        Some(version)
    }

    /// See [`CoordStore::coord_delete`].
    pub fn delete(&mut self, kind: CoordKind, key: &str, expected: u64) -> bool {
        let Some(m) = self.records.get_mut(&kind) else {
            return false;
        };
        if m.get(key).map(|v| v.version) != Some(expected) {
            return false;
        }
        m.remove(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_with_a_stale_version_writes_nothing() {
        let mut s = CoordState::default();
        let v1 = s.put(CoordKind::Host, "h", 0, "a").unwrap();
        assert_eq!(s.put(CoordKind::Host, "h", 0, "b"), None);
        let v2 = s.put(CoordKind::Host, "h", v1, "c").unwrap();
        assert!(v2 > v1);
        assert_eq!(s.put(CoordKind::Host, "h", v1, "d"), None);
        assert_eq!(s.get(CoordKind::Host, "h").unwrap().json, "c");
        assert!(!s.delete(CoordKind::Host, "h", v1));
        assert!(s.delete(CoordKind::Host, "h", v2));
        // Created again: a version read before the delete never matches.
        let v3 = s.put(CoordKind::Host, "h", 0, "e").unwrap();
        assert!(v3 > v2);
        assert_eq!(s.list(CoordKind::Host).len(), 1);
        assert!(s.list(CoordKind::Zone).is_empty());
    }

    #[test]
    fn ids_count_per_kind() {
        let mut s = CoordState::default();
        assert_eq!(s.next_id(CoordKind::Host), 1);
        assert_eq!(s.next_id(CoordKind::Host), 2);
        assert_eq!(s.next_id(CoordKind::Session), 1);
    }
}
