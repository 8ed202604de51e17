//! `POST /api/publish`: a server-side message for the whole broker, from
//! a service that is not a peer (a game world pushing NPC state to a
//! zone's hosts every few seconds, an operator telling a session
//! something). docs/PROTOCOL.md has the request and every answer.
//!
//! Body: a JSON object with exactly one target, `room`, `zone`, `session`
//! or `channel` (a non-empty string), and `data` (any JSON). Delivered to
//! every member on every node:
//! - `room`: the members of that core room, as a `message` from
//!   [`SERVER_SENDER`] (the empty peer id, which no client can hold);
//! - `zone`: the zone's audience, the core room
//!   [`zone_room`] (coordinator sockets that gave `zone_id` or sent
//!   `join-zone`; native peers that joined `coordinator/zone/{id}`);
//! - `session`: the members of a coordinator signaling session (the core
//!   room [`signaling_room`]);
//! - `channel`: the dashboard door's subscribers of that channel, as
//!   `{"type":"publish","channel","data","timestamp"}`.
//!
//! Who may publish: an admin (the operator endpoints' guard:
//! `Authorization: Bearer <http.admin_token>`, or plain loopback when no
//! admin token is set), or a caller with `X-API-Key: <publish.api_key>`.
//! Refusals are the API's JSON errors: 401/403 as the guard answers, 400
//! `invalid-message` for a body that is not one of the above, 503 while
//! the cluster backend is unreachable.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use super::api::admin_check;
use super::error::ApiError;
use super::AppState;
use crate::dashboard::iso_now;
use crate::dialect::coordinator::{signaling_room, zone_room};
use crate::error::ErrorCode;
use crate::metrics as m;
use crate::rooms::SERVER_SENDER;
use crate::types::RoomName;

/// The route, on the main listener.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/publish", post(publish))
}

/// The header a publisher's key comes in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The four targets, in the order the body is read.
const TARGETS: [&str; 4] = ["room", "zone", "session", "channel"];

/// Admins, or the configured publish key.
fn authorize(st: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    let key = &st.node.core.cfg.publish.api_key;
    let given = headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok());
    if let Some(given) = given {
        if !key.is_empty() && constant_time_eq(given.as_bytes(), key.expose().as_bytes()) {
            return Ok(());
        }
    }
    admin_check(st, peer, headers).map_err(|(reason, e)| {
        metrics::counter!(m::ADMIN_REFUSED, "reason" => reason).increment(1);
        if given.is_some() {
            ApiError::new(
                ErrorCode::Unauthorized,
                "X-API-Key is not the configured publish.api_key",
            )
        } else {
            e
        }
    })
}

/// Compares without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn invalid(message: impl Into<String>) -> ApiError {
    metrics::counter!(m::PUBLISHES, "target" => "invalid").increment(1);
    ApiError::new(ErrorCode::InvalidMessage, message)
}

/// The target and `data` of a body, checked.
fn parse(body: &[u8]) -> Result<(&'static str, String, Value), ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| invalid("the body must be a JSON object"))?;
    let Value::Object(mut obj) = v else {
        return Err(invalid("the body must be a JSON object"));
    };
    let named: Vec<&'static str> = TARGETS
        .iter()
        .copied()
        .filter(|t| obj.contains_key(*t))
        .collect();
    let target = match named.as_slice() {
        [one] => *one,
        [] => {
            return Err(invalid(
                "name exactly one target: `room`, `zone`, `session` or `channel`",
            ))
        }
        _ => {
            return Err(invalid(format!(
                "name exactly one target, not {}",
                named.join(" and ")
            )))
        }
    };
    let name = match obj.remove(target) {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Err(invalid(format!("`{target}` must be a non-empty string"))),
    };
    let Some(data) = obj.remove("data") else {
        return Err(invalid("`data` is required (any JSON value)"));
    };
    Ok((target, name, data))
}

/// The answer: what was published where.
#[derive(Serialize)]
struct Published {
    published: bool,
    target: &'static str,
    name: String,
    /// The core room it went to (not for a channel).
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<String>,
    /// Members of that room in the store, cluster-wide, when it was sent
    /// (not for a channel: dashboard subscriptions are per node).
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<usize>,
}

/// `POST /api/publish`.
async fn publish(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&st, peer, &headers)?;
    let (target, name, data) = parse(&body)?;
    let node = &st.node;
    if target == "channel" {
        if !node.dashboard.enabled() {
            return Err(invalid(
                "`channel`: the dashboard door is not served here (doors.dashboard)",
            ));
        }
        if name.len() > node.core.cfg.limits.max_name_bytes {
            return Err(invalid(format!(
                "`channel` must be at most {} bytes",
                node.core.cfg.limits.max_name_bytes
            )));
        }
        let text = format!(
            r#"{{"type":"publish","channel":{},"data":{},"timestamp":{}}}"#,
            json(&Value::String(name.clone())),
            json(&data),
            json(&Value::String(iso_now()))
        );
        // From no socket: every subscriber gets it (epochs never reach this).
        node.dashboard
            .relay(u64::MAX, &name, &text, Instant::now())
            .await
            .map_err(|e| ApiError::new(e.code, e.message))?;
        metrics::counter!(m::PUBLISHES, "target" => "channel").increment(1);
        return Ok(Json(Published {
            published: true,
            target,
            name,
            room: None,
            members: None,
        })
        .into_response());
    }
    let room_text = match target {
        "zone" => zone_room(&name),
        "session" => signaling_room(&name),
        _ => name.clone(),
    };
    let room = RoomName::parse(&room_text, node.core.cfg.limits.max_name_bytes)
        .map_err(|e| invalid(format!("`{target}`: the room name `{room_text}` {e}")))?;
    let members = node
        .core
        .store
        .room_members(&room)
        .await
        .map_err(ApiError::store_unavailable)?
        .map_or(0, |m| m.len());
    node.rooms
        .publish(&room, data)
        .await
        .map_err(|e| ApiError::new(e.code, e.message))?;
    metrics::counter!(m::PUBLISHES, "target" => target).increment(1);
    debug_assert!(SERVER_SENDER.is_empty());
    Ok(Json(Published {
        published: true,
        target,
        name,
        room: Some(room_text),
        members: Some(members),
    })
    .into_response())
}

/// A value as compact JSON.
fn json(v: &Value) -> String {
    serde_json::to_string(v).expect("values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_names_exactly_one_target_and_data() {
        let ok = parse(br#"{"zone":"prontera","data":{"npcs":[1]}}"#).unwrap();
        assert_eq!(ok, ("zone", "prontera".to_string(), json!({"npcs": [1]})));
        let ok = parse(br#"{"channel":"c","data":null}"#).unwrap();
        assert_eq!(ok, ("channel", "c".to_string(), Value::Null));
        for bad in [
            &br#"not json"#[..],
            br#"[1]"#,
            br#"{"data":1}"#,
            br#"{"room":"a","zone":"b","data":1}"#,
            br#"{"room":"","data":1}"#,
            br#"{"room":5,"data":1}"#,
            br#"{"session":"s"}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
