//! The coordinator's records on Redis ([`CoordStore`]): one hash per kind
//! (`coord:<kind>`, field key -> `"<version> <JSON>"`), ids and versions
//! from counters (`INCR`), and the two compare-and-set scripts
//! (`lua/coord_put.lua`, `lua/coord_delete.lua`) that follow
//! [`crate::store::coordinator::CoordState`].

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;

use super::{classify, RedisStore};
use crate::store::coordinator::{CoordKind, CoordStore, Versioned};
use crate::store::StoreError;

/// The coordinator scripts of one store.
#[derive(Debug)]
pub(super) struct CoordScripts {
    pub(super) put: Script,
    pub(super) delete: Script,
}

/// `"<version> <JSON>"` as a record.
fn parse(stored: &str) -> Result<Versioned, StoreError> {
    let bad = || StoreError::Rejected("a coordinator record without a version".into());
    let (v, json) = stored.split_once(' ').ok_or_else(bad)?;
    Ok(Versioned {
        version: v.parse().map_err(|_| bad())?,
        json: json.to_string(),
    })
}

#[async_trait]
impl CoordStore for RedisStore {
    async fn coord_next_id(&self, kind: CoordKind) -> Result<u64, StoreError> {
        let id: u64 = self
            .r
            .client()
            .incr(self.r.keys.coord_ids(kind.as_str()))
            .await
            .map_err(classify)?;
        Ok(id)
    }

    async fn coord_get(&self, kind: CoordKind, key: &str) -> Result<Option<Versioned>, StoreError> {
        let v: Option<String> = self
            .r
            .client()
            .hget(self.r.keys.coord_records(kind.as_str()), key)
            .await
            .map_err(classify)?;
        v.as_deref().map(parse).transpose()
    }

    async fn coord_list(&self, kind: CoordKind) -> Result<Vec<(String, Versioned)>, StoreError> {
        let all: std::collections::HashMap<String, String> = self
            .r
            .client()
            .hgetall(self.r.keys.coord_records(kind.as_str()))
            .await
            .map_err(classify)?;
        let mut out = all
            .into_iter()
            .map(|(k, v)| Ok((k, parse(&v)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn coord_put(
        &self,
        kind: CoordKind,
        key: &str,
        expected: u64,
        json: &str,
    ) -> Result<Option<u64>, StoreError> {
        let v: u64 = self
            .scripts
            .coord
            .put
            .evalsha_with_reload(
                self.r.client(),
                vec![self.r.keys.anchor()],
                vec![
                    kind.as_str().to_string(),
                    key.to_string(),
                    expected.to_string(),
                    json.to_string(),
                ],
            )
            .await
            .map_err(classify)?;
        Ok((v != 0).then_some(v))
    }

    async fn coord_delete(
        &self,
        kind: CoordKind,
        key: &str,
        expected: u64,
    ) -> Result<bool, StoreError> {
        let v: i64 = self
            .scripts
            .coord
            .delete
            .evalsha_with_reload(
                self.r.client(),
                vec![self.r.keys.anchor()],
                vec![
                    kind.as_str().to_string(),
                    key.to_string(),
                    expected.to_string(),
                ],
            )
            .await
            .map_err(classify)?;
        Ok(v == 1)
    }
}
