//! The worker protocol of the older FastAPI rendezvous service, so its
//! workers connect unchanged (`GET /ws/register/{worker_id}`).
//!
//! A thin translator onto the same core as the native protocol: connecting
//! registers the worker like a native `hello` would (hub, peer directory) and
//! creates its worker record (dialect `legacy`); the worker id from the path
//! is its peer id, so a legacy worker can be paired with a native one, is
//! listed by `GET /api/workers`. A second connection with the same id,
//! through either door and on any node, replaces it only with a token for the
//! id; without one it is refused while the first is connected (HTTP 409
//! `peer-id-taken` before the upgrade, or close 4009 if it lost a race).
//!
//! Messages in (JSON text frames; anything else is logged and ignored without
//! closing, as the older service did):
//! - `{"type":"register_public_ip","ip":"203.0.113.7"}`: records the public
//!   IP it reports (a missing or invalid `ip` is logged and ignored);
//! - `{"type":"echo_request","payload":X}`: answered with
//!   `{"type":"echo_response","original_payload":X,"processed_by_rendezvous":"..."}`,
//!   `X` being the JSON text the worker sent, byte for byte (it is never
//!   built into a value tree, so a queued answer holds about its size);
//! - `{"type":"update_udp_endpoint","udp_ip":"...","udp_port":N}`: records its
//!   UDP endpoint and, with `rendezvous.auto_pair`, queues it in pool `default`;
//! - `{"type":"chat_response","content":"...","admin_session_id":"..."}`: a
//!   reply to the operator console's chat, routed to the admin session
//!   (docs/ADMIN.md).
//!
//! Messages out: `paired` becomes
//! `{"type":"p2p_connection_offer","peer_worker_id","peer_udp_ip","peer_udp_port"}`
//! and `echo` becomes `echo_response`; the console's `chat_message` is a
//! frame of its own, passed through; every other core event has no
//! equivalent in this protocol and is not sent. A connection replaced by a
//! newer one closes with 1000 and the older service's reason text.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tracing::{debug, info};

use super::{ConnInfo, Dialect, Encoded, Encoder, Flow};
use crate::core::event::Event;
use crate::core::hub::{CloseReason, ConnHandle};
use crate::core::session::Session;
use crate::error::close;
use crate::metrics as m;
use crate::node::{Credentials, Node, Registration};
use crate::store::{Door, EndpointUpdate};
use crate::types::PeerId;
use crate::ws::{CloseFrame, Data};

/// The older service's close reason when a worker id connects again (its
/// code was a plain 1000); sent to legacy workers instead of 4002 `replaced`.
pub const REPLACED_REASON: &str = "New connection from same worker ID";

/// One legacy worker connection (reader half).
#[derive(Debug)]
pub struct LegacyWorker {
    /// The worker id from the path, already validated as a peer id.
    worker: PeerId,
    /// The door verified a token for this id: the connection may take the
    /// id over from a live one (without it, a held id is refused).
    token_for_id: bool,
}

impl LegacyWorker {
    /// A connection for `worker` without a token.
    pub fn new(worker: PeerId) -> Self {
        Self {
            worker,
            token_for_id: false,
        }
    }

    /// A connection for `worker` that presented a valid token for it.
    pub fn with_token(worker: PeerId) -> Self {
        Self {
            worker,
            token_for_id: true,
        }
    }
}

/// The legacy writer half.
#[derive(Debug)]
pub struct LegacyEncoder;

/// A message from a legacy worker: the fields this dialect reads. Small
/// fields are values (checked the way the older service did); `payload`
/// stays the worker's JSON text.
#[derive(Debug, Deserialize)]
struct LegacyMsg<'a> {
    #[serde(rename = "type")]
    ty: Option<Value>,
    ip: Option<Value>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    udp_ip: Option<Value>,
    udp_port: Option<Value>,
    /// `chat_response`: the admin session it answers (else the last one
    /// that wrote), and its text (`content`, or `message` / `text`).
    admin_session_id: Option<Value>,
    content: Option<Value>,
    message: Option<Value>,
    text: Option<Value>,
}

/// `echo_response`, its keys in the order the server always wrote them.
#[derive(Serialize)]
struct EchoResponse<'a> {
    original_payload: &'a RawValue,
    processed_by_rendezvous: &'a str,
    #[serde(rename = "type")]
    ty: &'static str,
}

/// The text of `echo_response.processed_by_rendezvous`.
pub fn echo_text(worker: &PeerId) -> String {
    format!("Echo processed by Switchboard rendezvous for worker {worker}")
}

impl Encoder for LegacyEncoder {
    fn encode(&self, event: &Event) -> Option<Encoded> {
        match event {
            Event::Paired(note) => {
                let udp: Option<SocketAddr> = note.peer.udp.as_deref().and_then(|u| u.parse().ok());
                let v = json!({
                    "type": "p2p_connection_offer",
                    "peer_worker_id": note.peer.peer_id,
                    "peer_udp_ip": udp.map(|a| a.ip().to_string()),
                    "peer_udp_port": udp.map(|a| a.port()),
                });
                Some(Encoded::Text(v.to_string()))
            }
            // `echo_response`, encoded by the door itself.
            Event::Frame(_) => super::passthrough(event),
            _ => None,
        }
    }

    fn close_frame(&self, why: CloseReason) -> CloseFrame {
        if why == CloseReason::REPLACED {
            CloseFrame {
                code: close::NORMAL,
                reason: REPLACED_REASON,
            }
        } else {
            CloseFrame {
                code: why.code,
                reason: why.reason,
            }
        }
    }
}

/// The message types this dialect knows (bounded metric labels).
fn type_label(ty: Option<&str>) -> &'static str {
    match ty {
        Some("register_public_ip") => "register_public_ip",
        Some("echo_request") => "echo_request",
        Some("update_udp_endpoint") => "update_udp_endpoint",
        Some("chat_response") => "chat_response",
        _ => "invalid",
    }
}

impl Dialect for LegacyWorker {
    type Encoder = LegacyEncoder;
    const NAME: &'static str = "legacy-worker";

    fn encoder(&self) -> LegacyEncoder {
        LegacyEncoder
    }

    async fn open(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        info: &ConnInfo,
    ) -> Result<Option<Session>, CloseReason> {
        // No `hello`: the worker id comes from the URL, and a token for it
        // was verified by the door before the upgrade (or there is none,
        // where the node admits anonymous peers). Nothing is owed before
        // registration, so the gate opens with no answer.
        let reg = Registration {
            door: Door::LegacyWorker,
            observed: info.observed,
            peer_id: Some(self.worker.clone()),
            meta: Value::Null,
            credentials: Credentials {
                token: None,
                token_verified: self.token_for_id,
                reconnect_secret: None,
            },
        };
        handle.close_gate();
        let registered = node.register(handle, reg).await;
        handle.open_gate(None, None);
        let s = match registered {
            Ok(r) => r.session,
            Err(refused) => {
                return Err(refused.close.unwrap_or(CloseReason::PEER_ID_TAKEN));
            }
        };
        // A legacy worker is a worker from the start: its record exists
        // before its first message.
        if let Err(e) = node
            .rdv
            .ensure_worker(&s.rdv, &EndpointUpdate::default())
            .await
        {
            tracing::warn!(worker = %s.peer, error = %e.message, "worker record not written; will reconcile");
            node.core.mark_dirty();
        }
        info!(worker = %s.peer, "legacy worker connected");
        Ok(Some(s))
    }

    async fn frame(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        _info: &ConnInfo,
        session: &mut Option<Session>,
        frame: Data<'_>,
        _received: Instant,
    ) -> Flow {
        let Some(s) = session.as_ref() else {
            return Flow::Continue;
        };
        let text = match frame {
            Data::Text(t) => t,
            Data::Binary(_) => {
                metrics::counter!(m::MESSAGES_IN, "type" => "invalid").increment(1);
                info!(worker = %s.peer, "ignoring a binary frame");
                return Flow::Continue;
            }
        };
        // Only an object has fields (serde would also read a JSON array
        // positionally into the struct).
        let parsed = if text.trim_start().starts_with('{') {
            serde_json::from_str::<LegacyMsg<'_>>(text).ok()
        } else {
            None
        };
        let msg = match parsed {
            Some(msg) => msg,
            None => {
                metrics::counter!(m::MESSAGES_IN, "type" => "invalid").increment(1);
                if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                    info!(worker = %s.peer, "ignoring a message without `type`");
                } else {
                    info!(worker = %s.peer, "ignoring a frame that is not JSON");
                }
                return Flow::Continue;
            }
        };
        let ty = msg.ty.as_ref().and_then(Value::as_str);
        m::count(m::MESSAGES_IN, "type", type_label(ty), 1);
        match ty {
            Some("register_public_ip") => {
                let ip = msg
                    .ip
                    .as_ref()
                    .and_then(Value::as_str)
                    .and_then(|s| s.trim().parse::<IpAddr>().ok());
                match ip {
                    Some(ip) => {
                        if let Err(e) = node.rdv.endpoint(s, Some(ip), None).await {
                            info!(worker = %s.peer, error = %e.message, "public IP not recorded");
                        } else {
                            debug!(worker = %s.peer, %ip, "public IP registered");
                        }
                    }
                    None => {
                        info!(worker = %s.peer, "register_public_ip without a valid `ip`; ignored")
                    }
                }
            }
            Some("echo_request") => {
                // A reply only this dialect has: encoded here, queued as a
                // frame (bounded by the queue like any message).
                let null = RawValue::NULL;
                let r = EchoResponse {
                    original_payload: msg.payload.unwrap_or(null),
                    processed_by_rendezvous: &echo_text(&s.peer),
                    ty: "echo_response",
                };
                // Our own keys, and JSON text that was checked when read.
                let text = serde_json::to_string(&r).expect("echo_response is JSON");
                handle.send(Event::Frame(Encoded::Text(text)));
            }
            Some("update_udp_endpoint") => {
                let ip = msg
                    .udp_ip
                    .as_ref()
                    .and_then(Value::as_str)
                    .and_then(|s| s.trim().parse::<IpAddr>().ok());
                let port = match &msg.udp_port {
                    Some(Value::Number(n)) => n.as_u64(),
                    Some(Value::String(s)) => s.trim().parse().ok(),
                    _ => None,
                }
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
                let (Some(ip), Some(port)) = (ip, port) else {
                    info!(worker = %s.peer, "update_udp_endpoint without a valid `udp_ip` and `udp_port`; ignored");
                    return Flow::Continue;
                };
                let udp = SocketAddr::new(ip, port);
                if let Err(e) = node.rdv.endpoint(s, None, Some(udp)).await {
                    info!(worker = %s.peer, error = %e.message, "UDP endpoint not recorded");
                    return Flow::Continue;
                }
                debug!(worker = %s.peer, %udp, "UDP endpoint updated");
                if node.core.cfg.rendezvous.auto_pair {
                    node.rdv.auto_pair(s).await;
                }
            }
            Some("chat_response") => {
                // The operator console's chat (docs/ADMIN.md): to the admin
                // session that wrote, on whatever node it sits.
                let text = [&msg.content, &msg.message, &msg.text]
                    .into_iter()
                    .find_map(|v| v.as_ref().and_then(Value::as_str))
                    .map(|t| {
                        t.chars()
                            .take(crate::console::MAX_CHAT_BYTES)
                            .collect::<String>()
                    });
                let session = msg.admin_session_id.as_ref().and_then(Value::as_str);
                match text {
                    Some(t) => node.console.chat_reply(&s.peer, session, t).await,
                    None => {
                        info!(worker = %s.peer, "chat_response without a text `content`; ignored")
                    }
                }
            }
            Some(other) => {
                let shown: String = other.chars().take(64).collect();
                info!(worker = %s.peer, r#type = %shown, "ignoring a message of unknown type");
            }
            None => info!(worker = %s.peer, "ignoring a message without `type`"),
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{PairPeer, PairedNote, Role};

    fn text(m: Option<Encoded>) -> Value {
        match m {
            Some(Encoded::Text(t)) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[test]
    fn encodes_offers_and_echoes_and_nothing_else() {
        let note = PairedNote {
            pairing_id: "p".into(),
            role: Role::Initiator,
            peer: PairPeer {
                peer_id: PeerId::from_trusted("w2"),
                observed_addr: "198.51.100.1:5000".into(),
                public_ip: None,
                udp: Some("[2001:db8::1]:4000".into()),
            },
        };
        assert_eq!(
            text(LegacyEncoder.encode(&Event::Paired(note))),
            json!({"type":"p2p_connection_offer","peer_worker_id":"w2","peer_udp_ip":"2001:db8::1","peer_udp_port":4000})
        );
        // A door's own frame passes through as it is.
        let echo = Event::Frame(Encoded::Text(r#"{"type":"echo_response"}"#.into()));
        assert_eq!(
            LegacyEncoder.encode(&echo),
            Some(Encoded::Text(r#"{"type":"echo_response"}"#.into()))
        );
        assert!(LegacyEncoder.encode(&Event::Pong { id: None }).is_none());
        let f = LegacyEncoder.close_frame(CloseReason::REPLACED);
        assert_eq!(
            (f.code, f.reason),
            (1000, "New connection from same worker ID")
        );
    }
}
