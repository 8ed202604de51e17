//! The dashboard registry on Redis ([`DashRegistry`]): one script per
//! operation (`lua/dash_*.lua`, helpers in `lua/dash.lua`, keys in
//! [`crate::cluster::Keys`]' `dash_*` templates), following
//! [`crate::store::dashboard::DashState`] step for step.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;

use super::{classify, RedisStore};
use crate::store::dashboard::{
    DashCount, DashJoin, DashLimits, DashList, DashParticipant, DashRefusal, DashRegistry,
    DashRoom, DashSwept,
};
use crate::store::{now_ms, StoreError};
use crate::types::NodeId;

/// The dashboard scripts of one store.
#[derive(Debug)]
pub(super) struct DashScripts {
    pub(super) create: Script,
    pub(super) join: Script,
    pub(super) leave: Script,
    pub(super) disconnect: Script,
    pub(super) count: Script,
    pub(super) list: Script,
    pub(super) sweep: Script,
    pub(super) restore: Script,
}

/// A reply that is not what the script returns (a bug, or another
/// release's script under the same name).
fn unexpected(what: &str) -> StoreError {
    StoreError::Rejected(format!("unexpected reply to the dashboard {what} script"))
}

fn int(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Integer(i) => u64::try_from(*i).ok(),
        other => other.as_string()?.parse().ok(),
    }
}

/// `{code, version, rooms, list, ...}` (see `lua/dash.lua`, `dash_reply`)
/// as a list, from position 1.
fn list_from(out: &[Value], what: &str) -> Result<DashList, StoreError> {
    let version = int(out.get(1)).ok_or_else(|| unexpected(what))?;
    let rooms = int(out.get(2)).ok_or_else(|| unexpected(what))? as usize;
    let json = out
        .get(3)
        .and_then(Value::as_string)
        .ok_or_else(|| unexpected(what))?;
    Ok(DashList {
        version,
        rooms,
        json,
    })
}

fn refusal(code: u64) -> Option<DashRefusal> {
    match code {
        2 => Some(DashRefusal::TooManyRooms),
        3 => Some(DashRefusal::RoomFull),
        4 => Some(DashRefusal::ListTooLarge),
        _ => None,
    }
}

impl RedisStore {
    async fn dash_call(
        &self,
        script: &Script,
        args: Vec<String>,
    ) -> Result<Vec<Value>, StoreError> {
        script
            .evalsha_with_reload(self.r.client(), vec![self.r.keys.anchor()], args)
            .await
            .map_err(classify)
    }
}

#[async_trait]
impl DashRegistry for RedisStore {
    async fn dash_create(
        &self,
        room: &DashRoom,
        limits: &DashLimits,
    ) -> Result<Result<DashList, DashRefusal>, StoreError> {
        let out = self
            .dash_call(
                &self.scripts.dash.create,
                vec![
                    room.id.clone(),
                    room.head.clone(),
                    now_ms().to_string(),
                    limits.max_rooms.to_string(),
                    limits.max_list_bytes.to_string(),
                ],
            )
            .await?;
        match int(out.first()) {
            Some(0) => Ok(Ok(list_from(&out, "create")?)),
            Some(c) => Ok(Err(refusal(c).ok_or_else(|| unexpected("create"))?)),
            None => Err(unexpected("create")),
        }
    }

    async fn dash_join(
        &self,
        node: &NodeId,
        p: &DashParticipant,
        limits: &DashLimits,
    ) -> Result<DashJoin, StoreError> {
        let out = self
            .dash_call(
                &self.scripts.dash.join,
                vec![
                    node.to_string(),
                    p.room.clone(),
                    p.user.clone(),
                    p.json.clone(),
                    p.pair(),
                    now_ms().to_string(),
                    limits.max_participants.to_string(),
                    limits.max_list_bytes.to_string(),
                ],
            )
            .await?;
        match int(out.first()) {
            Some(0) => Ok(DashJoin::Joined(list_from(&out, "join")?)),
            Some(1) => Ok(DashJoin::NoRoom),
            Some(c) => Ok(DashJoin::Refused(
                refusal(c).ok_or_else(|| unexpected("join"))?,
            )),
            None => Err(unexpected("join")),
        }
    }

    async fn dash_leave(
        &self,
        node: &NodeId,
        room: &str,
        user: &str,
    ) -> Result<DashList, StoreError> {
        let out = self
            .dash_call(
                &self.scripts.dash.leave,
                vec![
                    node.to_string(),
                    room.to_string(),
                    user.to_string(),
                    crate::store::dashboard::pair_key(room, user),
                    now_ms().to_string(),
                ],
            )
            .await?;
        list_from(&out, "leave")
    }

    async fn dash_disconnect(
        &self,
        node: &NodeId,
        joined: &[(String, String)],
        count: DashCount,
    ) -> Result<DashList, StoreError> {
        let mut args = vec![
            node.to_string(),
            count.gen.to_string(),
            count.count.to_string(),
            now_ms().to_string(),
        ];
        for (room, user) in joined {
            args.push(room.clone());
            args.push(user.clone());
            args.push(crate::store::dashboard::pair_key(room, user));
        }
        let out = self.dash_call(&self.scripts.dash.disconnect, args).await?;
        list_from(&out, "disconnect")
    }

    async fn dash_set_count(&self, node: &NodeId, count: DashCount) -> Result<u64, StoreError> {
        let total: i64 = self
            .scripts
            .dash
            .count
            .evalsha_with_reload(
                self.r.client(),
                vec![self.r.keys.anchor()],
                vec![
                    node.to_string(),
                    count.gen.to_string(),
                    count.count.to_string(),
                    now_ms().to_string(),
                ],
            )
            .await
            .map_err(classify)?;
        Ok(total.max(0) as u64)
    }

    async fn dash_list(&self) -> Result<DashList, StoreError> {
        let out = self
            .dash_call(&self.scripts.dash.list, vec![now_ms().to_string()])
            .await?;
        list_from(&out, "list")
    }

    async fn dash_clients(&self) -> Result<u64, StoreError> {
        let out = self
            .dash_call(&self.scripts.dash.list, vec![now_ms().to_string()])
            .await?;
        int(out.get(4)).ok_or_else(|| unexpected("list"))
    }

    async fn dash_sweep(&self, me: &NodeId, stale: Duration) -> Result<DashSwept, StoreError> {
        let out = self
            .dash_call(
                &self.scripts.dash.sweep,
                vec![
                    me.to_string(),
                    now_ms().to_string(),
                    stale.as_millis().to_string(),
                ],
            )
            .await?;
        let nodes = int(out.first()).ok_or_else(|| unexpected("sweep"))? as usize;
        if nodes == 0 {
            return Ok(DashSwept::default());
        }
        let changed = int(out.get(4)) == Some(1);
        Ok(DashSwept {
            nodes,
            list: if changed {
                Some(list_from(&out, "sweep")?)
            } else {
                None
            },
        })
    }

    async fn dash_restore(
        &self,
        node: &NodeId,
        count: DashCount,
        held: &[DashParticipant],
    ) -> Result<DashList, StoreError> {
        let mut args = vec![
            node.to_string(),
            count.gen.to_string(),
            count.count.to_string(),
            now_ms().to_string(),
        ];
        for p in held {
            args.push(p.room.clone());
            args.push(p.user.clone());
            args.push(p.json.clone());
            args.push(p.pair());
        }
        let out = self.dash_call(&self.scripts.dash.restore, args).await?;
        list_from(&out, "restore")
    }
}
