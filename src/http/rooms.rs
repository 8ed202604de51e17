//! Rooms over HTTP: `POST /api/rooms` makes a room ahead of time (a name, a
//! lifetime, a member limit, metadata, a join token), `DELETE
//! /api/rooms/{room}` closes one, `GET /api/rooms` and `GET
//! /api/rooms/{room}` read them (docs/PROTOCOL.md, 14).
//!
//! The reads are operator endpoints, behind the admin guard like the rest
//! of the operator API (they name members). Creating and deleting follow
//! `rooms.create` instead, checked here: an admin (as the guard decides)
//! always may; with `signed_in` also a caller whose JWT the node's
//! `auth.jwt` keys verify, with `anyone` anybody. A caller other than an
//! admin deletes a room only by showing its token (`X-Room-Token`): the
//! token is the capability its creator was given, and a room without one
//! is deleted by an admin only.
//!
//! Rooms made by callers other than admins are capped cluster-wide
//! (`rooms.max_rooms_per_creator`, `rooms.max_rooms_by_others`): each takes
//! a slot of its creator and one of all of them together in the store
//! ([`crate::store::Rooms::take_slots`]) until its lifetime ends, which for
//! them is never more than `rooms.max_ttl_ms`. The room is made first (its
//! name may be taken) and removed again when a cap refuses it, so a refused
//! create leaves nothing and a taken name costs no slot.
//!
//! The token is made here (128 random bits), shown once in the answer to
//! `POST` and kept only as its SHA-256. Closing a room (delete, or the
//! sweeper when its lifetime runs out) tells its members `room-closed`
//! wherever they are ([`crate::rooms::Rooms::close_room`]).

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::api::{admin_check, check_admin};
use super::error::ApiError;
use super::upgrade::observed_addr;
use super::AppState;
use crate::config::RoomCreatePolicy;
use crate::error::ErrorCode;
use crate::metrics as m;
use crate::rooms::{new_token, token_hash};
use crate::store::{now_ms, RoomRecord, RoomSummary, StoreError};
use crate::stun::SourceLimit;
use crate::types::{RoomClosedReason, RoomName};

/// The reads, without the guard (the router puts the admin guard over them
/// with the rest of the operator API).
pub(super) fn read_routes() -> Router<AppState> {
    Router::new()
        .route("/api/rooms", get(list_rooms))
        .route("/api/rooms/{room}", get(get_room))
}

/// Creating and deleting, which check `rooms.create` themselves. Merged
/// into the router *before* the guarded reads of the same paths, so a
/// method neither serves gets the guarded 405 (the guard answers first).
pub(super) fn record_routes() -> Router<AppState> {
    Router::new()
        .route("/api/rooms", post(create_room))
        .route("/api/rooms/{room}", delete(delete_room))
}

/// The header in which a caller other than an admin shows a room's token
/// to delete it.
pub const ROOM_TOKEN_HEADER: &str = "x-room-token";

/// Most rooms one page of `GET /api/rooms?limit=` may ask for.
const MAX_PAGE: usize = 1_000;

/// Who is creating or deleting a room.
#[derive(Debug)]
enum Caller {
    /// Passed the operator endpoints' guard.
    Admin,
    /// A verified JWT (its `sub`, for the log and its cap).
    SignedIn(String),
    /// Anybody (`rooms.create = "anyone"`), from this client address (its
    /// cap's key: [`SourceLimit::source_key`], an IPv6 client's /64).
    Anyone(IpAddr),
}

impl Caller {
    fn is_admin(&self) -> bool {
        matches!(self, Self::Admin)
    }

    /// Who, for the log.
    fn name(&self) -> &str {
        match self {
            Self::Admin => "admin",
            Self::SignedIn(sub) => sub,
            Self::Anyone(_) => "anyone",
        }
    }

    /// The quota of its rooms (`rooms.max_rooms_per_creator`); none for an
    /// admin.
    fn quota(&self) -> Option<String> {
        match self {
            Self::Admin => None,
            Self::SignedIn(sub) => Some(format!("rooms:sub:{sub}")),
            Self::Anyone(ip) => Some(format!("rooms:ip:{}", SourceLimit::source_key(*ip))),
        }
    }
}

/// The quota of all rooms made by callers other than admins
/// (`rooms.max_rooms_by_others`).
const OTHERS_QUOTA: &str = "rooms:by-others";

/// Who the request is, as far as `rooms.create` admits it.
fn caller(st: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if admin_check(st, peer, headers).is_ok() {
        return Ok(Caller::Admin);
    }
    match st.node.core.cfg.rooms.create {
        // Counted and answered as the guard would.
        RoomCreatePolicy::Admin => check_admin(st, peer, headers).map(|()| Caller::Admin),
        RoomCreatePolicy::SignedIn => {
            let bearer = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !st.node.verifies_tokens() {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    "rooms.create is `signed_in`, but this node has no auth.jwt key to verify a \
                     token with: only an admin may create or delete rooms",
                ));
            }
            match st.node.verify_token(bearer, None) {
                Ok(claims) => Ok(Caller::SignedIn(claims.sub)),
                Err(e) => Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    format!("a signed-in caller's token is required (`Authorization: Bearer <jwt>`): {e}"),
                )),
            }
        }
        RoomCreatePolicy::Anyone => Ok(Caller::Anyone(observed_addr(&st.node, peer, headers).ip())),
    }
}

/// Unix seconds of unix milliseconds (rounded down).
fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// `GET /api/rooms` item: name and size, and for a room made over HTTP its
/// record's lifetime and limit (so rooms made by a join look as before).
fn summary_view(r: &RoomSummary) -> Value {
    let mut v = json!({"room": r.room, "members": r.members});
    if r.explicit {
        v["explicit"] = json!(true);
        v["expires_at"] = json!(r.expires_at.map(secs));
        v["max_peers"] = json!(r.max_peers);
    }
    v
}

/// `GET /api/rooms` query.
#[derive(Debug, Deserialize)]
struct ListQuery {
    /// Start after this room name.
    after: Option<String>,
    /// At most this many rooms (then `next` says where to go on).
    limit: Option<usize>,
}

/// `GET /api/rooms`: every room in the cluster and its size; with `limit`
/// (and `after`, the `next` of the previous page), one page of them.
async fn list_rooms(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let store = st.node.core.store.as_ref();
    let Some(limit) = q.limit else {
        let rooms = crate::store::all_rooms(store)
            .await
            .map_err(ApiError::store_unavailable)?;
        let list: Vec<Value> = rooms.iter().map(summary_view).collect();
        return Ok(Json(json!({"rooms": list})).into_response());
    };
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidMessage,
            format!("`limit` must be from 1 to {MAX_PAGE}"),
        ));
    }
    let after = q
        .after
        .map(|a| {
            RoomName::parse(&a, st.node.core.cfg.limits.max_name_bytes)
                .map_err(|e| ApiError::new(ErrorCode::InvalidRoom, format!("`after` {e}")))
        })
        .transpose()?;
    let page = store
        .list_rooms(after.as_ref(), limit)
        .await
        .map_err(ApiError::store_unavailable)?;
    let list: Vec<Value> = page.rooms.iter().map(summary_view).collect();
    Ok(Json(json!({"rooms": list, "next": page.next})).into_response())
}

fn parse_room(st: &AppState, room: &str) -> Result<RoomName, ApiError> {
    RoomName::parse(room, st.node.core.cfg.limits.max_name_bytes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRoom, format!("room name {e}")))
}

fn not_found(room: &RoomName) -> ApiError {
    ApiError::new(ErrorCode::RoomNotFound, format!("no room `{room}`"))
}

/// `GET /api/rooms/{room}`: one room's members with their metadata, and for
/// a room made over HTTP its record (never its token, only whether it has
/// one).
async fn get_room(
    State(st): State<AppState>,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let room = parse_room(&st, &room)?;
    let store = &st.node.core.store;
    let record = store
        .get_room(&room)
        .await
        .map_err(ApiError::store_unavailable)?;
    let members = store
        .room_members(&room)
        .await
        .map_err(ApiError::store_unavailable)?;
    match (record, members) {
        (Some(rec), members) if rec.explicit => {
            if rec.expires_at.is_some_and(|x| x <= now_ms()) {
                return Err(ApiError::new(
                    ErrorCode::RoomExpired,
                    format!("room `{room}` has expired"),
                ));
            }
            Ok(Json(json!({
                "room": room,
                "members": members.unwrap_or_default(),
                "explicit": true,
                "created_at": secs(rec.created_at),
                "expires_at": rec.expires_at.map(secs),
                "max_peers": rec.max_peers,
                "metadata": rec.meta,
                "token_required": rec.token_hash.is_some(),
            }))
            .into_response())
        }
        (_, Some(members)) => Ok(Json(json!({"room": room, "members": members})).into_response()),
        _ => Err(not_found(&room)),
    }
}

/// A `POST /api/rooms` body, checked.
struct NewRoom {
    name: Option<RoomName>,
    ttl_secs: Option<u64>,
    max_peers: Option<usize>,
    metadata: Value,
    token: bool,
}

/// Reads a `POST /api/rooms` body: a JSON object whose fields are all
/// optional (an empty body is `{}`); any other field is refused, so a
/// misspelt one is not silently ignored.
fn read_new_room(st: &AppState, body: &[u8]) -> Result<NewRoom, ApiError> {
    let lim = &st.node.core.cfg.limits;
    let bad = |m: String| ApiError::new(ErrorCode::InvalidMessage, m);
    let fields: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        // The body's own object is one level; `metadata` gets the limit.
        if !crate::payload::json_depth_within(body, lim.max_nesting_depth + 1) {
            return Err(ApiError::new(
                ErrorCode::NestingTooDeep,
                format!(
                    "`metadata` nests deeper than {} levels",
                    lim.max_nesting_depth
                ),
            ));
        }
        match serde_json::from_slice(body) {
            Ok(Value::Object(m)) => m,
            _ => return Err(bad("the body must be a JSON object".into())),
        }
    };
    let max_ttl = st.node.core.cfg.rooms.max_ttl.as_secs();
    let mut room = NewRoom {
        name: None,
        ttl_secs: None,
        max_peers: None,
        metadata: Value::Null,
        token: true,
    };
    for (k, v) in fields {
        match k.as_str() {
            "name" => {
                let s = v
                    .as_str()
                    .ok_or_else(|| bad("`name` must be a string".into()))?;
                room.name =
                    Some(RoomName::parse(s, lim.max_name_bytes).map_err(|e| {
                        ApiError::new(ErrorCode::InvalidRoom, format!("`name` {e}"))
                    })?);
            }
            "ttl_secs" if !v.is_null() => {
                room.ttl_secs = Some(v.as_u64().filter(|t| (1..=max_ttl).contains(t)).ok_or_else(
                    || bad(format!("`ttl_secs` must be a whole number of seconds from 1 to {max_ttl} (rooms.max_ttl_ms)")),
                )?);
            }
            "max_peers" if !v.is_null() => {
                let most = lim.max_peers_per_room;
                room.max_peers = Some(
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|n| (1..=most).contains(n))
                        .ok_or_else(|| {
                            bad(format!("`max_peers` must be a whole number from 1 to {most} (limits.max_peers_per_room)"))
                        })?,
                );
            }
            "metadata" => {
                let size = serde_json::to_vec(&v).map_or(usize::MAX, |b| b.len());
                if size > lim.max_meta_bytes {
                    return Err(ApiError::new(
                        ErrorCode::MetaTooLarge,
                        format!(
                            "`metadata` must be at most {} bytes as JSON",
                            lim.max_meta_bytes
                        ),
                    ));
                }
                room.metadata = v;
            }
            "token" => {
                room.token = v
                    .as_bool()
                    .ok_or_else(|| bad("`token` must be true or false".into()))?;
            }
            "ttl_secs" | "max_peers" => {}
            other => {
                let mut shown: String = other.chars().take(64).collect();
                if shown.len() < other.len() {
                    shown.push('…');
                }
                return Err(bad(format!(
                    "unknown field `{shown}` (known: name, ttl_secs, max_peers, metadata, token)"
                )));
            }
        }
    }
    Ok(room)
}

/// `POST /api/rooms`: makes a room ahead of time. 201 `{room_id, token,
/// expires_at}` (`token` null for a room made with `"token": false`,
/// `expires_at` unix seconds or null); 409 `room-exists` for a name in use.
async fn create_room(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = caller(&st, peer, &headers)?;
    let new = read_new_room(&st, &body)?;
    // A room made by anyone but an admin does not live for ever.
    let ttl = new
        .ttl_secs
        .or_else(|| (!who.is_admin()).then(|| st.node.core.cfg.rooms.max_ttl.as_secs()));
    let token = new.token.then(new_token);
    let now = now_ms();
    // Whole seconds, so `expires_at` in the answer is exact.
    let expires_at = ttl.map(|t| (now + t * 1000).div_ceil(1000) * 1000);
    let mut record = RoomRecord {
        name: new.name.clone().unwrap_or_else(random_name),
        created_at: now,
        expires_at,
        max_peers: new.max_peers,
        token_hash: token.as_deref().map(token_hash),
        meta: new.metadata,
        explicit: true,
    };
    // A random name that is taken (64 bits: practically never) is drawn again.
    let mut tries = 0;
    loop {
        match st.node.core.store.create_room(&record).await {
            Ok(()) => break,
            Err(StoreError::RoomExists) if new.name.is_none() && tries < 3 => {
                tries += 1;
                record.name = random_name();
            }
            Err(StoreError::RoomExists) => {
                return Err(ApiError::new(
                    ErrorCode::RoomExists,
                    format!("room `{}` exists", record.name),
                ))
            }
            Err(e) => return Err(ApiError::store_unavailable(e)),
        }
    }
    if let (Some(quota), Some(until)) = (who.quota(), expires_at) {
        if let Err(e) = take_slots(&st, &quota, &record.name, now, until).await {
            // Refused (or not known to be counted): the room goes again,
            // before anyone was told its name or token.
            match st.node.core.store.delete_room(&record.name).await {
                Ok(Some(removed)) if !removed.is_empty() => {
                    st.node
                        .rooms
                        .close_room(&record.name, RoomClosedReason::Deleted, removed)
                        .await;
                }
                Ok(_) => {}
                Err(d) => {
                    tracing::warn!(room = %record.name, error = %d, "a refused room was not removed; it expires with its lifetime")
                }
            }
            return Err(e);
        }
    }
    metrics::counter!(m::ROOMS_CREATED).increment(1);
    tracing::debug!(room = %record.name, by = who.name(), ttl_secs = ?ttl, "room created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "room_id": record.name,
            "token": token,
            "expires_at": expires_at.map(secs),
        })),
    )
        .into_response())
}

/// Takes the slots of a room made by a caller other than an admin: one of
/// the caller's `quota` and one of [`OTHERS_QUOTA`], until the room's
/// lifetime ends; 429 `rate-limited` naming the cap that is full.
async fn take_slots(
    st: &AppState,
    quota: &str,
    room: &RoomName,
    now: u64,
    until: u64,
) -> Result<(), ApiError> {
    let cfg = &st.node.core.cfg.rooms;
    let quotas = [
        (quota.to_string(), cfg.max_rooms_per_creator),
        (OTHERS_QUOTA.to_string(), cfg.max_rooms_by_others),
    ];
    let full = st
        .node
        .core
        .store
        .take_slots(&quotas, room.as_str(), now, until)
        .await
        .map_err(ApiError::store_unavailable)?;
    match full {
        None => Ok(()),
        Some(0) => {
            metrics::counter!(m::ROOMS_REFUSED, "cap" => "per-creator").increment(1);
            Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "this caller holds {} rooms, its most (rooms.max_rooms_per_creator): a room's slot comes back when its lifetime ends",
                    cfg.max_rooms_per_creator
                ),
            ))
        }
        Some(_) => {
            metrics::counter!(m::ROOMS_REFUSED, "cap" => "by-others").increment(1);
            Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "callers other than admins hold {} rooms, their most together (rooms.max_rooms_by_others): a room's slot comes back when its lifetime ends",
                    cfg.max_rooms_by_others
                ),
            ))
        }
    }
}

/// A room name for a `POST /api/rooms` without one: 64 random bits, hex.
fn random_name() -> RoomName {
    RoomName::from_trusted(format!("{:016x}", rand::random::<u64>()))
}

/// `DELETE /api/rooms/{room}`: removes a room, whatever made it, and tells
/// its members `room-closed` (reason `deleted`) on every node. 204; 404
/// for no such room. A caller other than an admin shows the room's token in
/// `X-Room-Token`.
async fn delete_room(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&st, peer, &headers)?;
    let room = parse_room(&st, &room)?;
    let store = &st.node.core.store;
    if !who.is_admin() {
        let record = store
            .get_room(&room)
            .await
            .map_err(ApiError::store_unavailable)?
            .ok_or_else(|| not_found(&room))?;
        let Some(want) = record.token_hash else {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("room `{room}` has no token: only an admin may delete it"),
            ));
        };
        let given = headers
            .get(ROOM_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty());
        match given {
            None => {
                return Err(ApiError::new(
                    ErrorCode::RoomTokenRequired,
                    format!("deleting room `{room}` takes its token, in `X-Room-Token`"),
                ))
            }
            Some(t) if token_hash(t) != want => {
                return Err(ApiError::new(
                    ErrorCode::RoomTokenInvalid,
                    format!("`X-Room-Token` is not the token of room `{room}`"),
                ))
            }
            Some(_) => {}
        }
    }
    let removed = store
        .delete_room(&room)
        .await
        .map_err(ApiError::store_unavailable)?
        .ok_or_else(|| not_found(&room))?;
    metrics::counter!(m::ROOMS_DELETED).increment(1);
    tracing::debug!(room = %room, by = who.name(), members = removed.len(), "room deleted");
    st.node
        .rooms
        .close_room(&room, RoomClosedReason::Deleted, removed)
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
