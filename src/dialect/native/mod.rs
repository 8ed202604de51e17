//! The native protocol (`/ws`): JSON text or MessagePack binary frames,
//! every message documented in docs/PROTOCOL.md.
//!
//! [`decode`] turns a frame into a [`Command`]; [`encode`] turns a core
//! [`Event`] into a frame (an event's serde form is this protocol's wire
//! form). [`Native`] is the dialect on one connection: `hello` registers it
//! through [`Node::register`], every later command goes to
//! [`Node::dispatch`].

mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub use decode::*;
pub use encode::*;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use super::{ConnInfo, Dialect, Encoded, Encoder, Flow};
use crate::core::command::Command;
use crate::core::event::Event;
use crate::core::hub::{CloseReason, ConnHandle};
use crate::core::session::Session;
use crate::error::{ClientError, ErrorCode};
use crate::metrics as m;
use crate::node::{Credentials, Node, Registration};
use crate::store::Door;
use crate::ws::Data;

const CODEC_UNSET: u8 = 0;
const CODEC_JSON: u8 = 1;
const CODEC_MSGPACK: u8 = 2;

fn codec_code(c: Codec) -> u8 {
    match c {
        Codec::Json => CODEC_JSON,
        Codec::MsgPack => CODEC_MSGPACK,
    }
}

/// The native protocol on one connection.
#[derive(Debug)]
pub struct Native {
    /// The answer encoding: fixed by the subprotocol, or by the first data frame.
    /// (The decoder's limits are read from the node's configuration for each
    /// frame rather than kept here: an idle connection costs what it holds.)
    codec: Arc<AtomicU8>,
}

impl Native {
    /// A native connection; `codec` is the one its subprotocol selected, if any.
    pub fn new(codec: Option<Codec>) -> Self {
        Self {
            codec: Arc::new(AtomicU8::new(codec.map_or(CODEC_UNSET, codec_code))),
        }
    }
}

/// The native writer half: encodes in the connection's codec.
#[derive(Debug)]
pub struct NativeEncoder {
    codec: Arc<AtomicU8>,
}

impl Encoder for NativeEncoder {
    fn encode(&self, event: &Event) -> Option<Encoded> {
        if let Event::Frame(_) = event {
            return super::passthrough(event);
        }
        let codec = if self.codec.load(Ordering::Relaxed) == CODEC_MSGPACK {
            Codec::MsgPack
        } else {
            Codec::Json
        };
        Some(encode(event, codec))
    }

    fn encode_seq(&self, event: &Event, seq: u64) -> Option<Encoded> {
        let frame = self.encode(event)?;
        Some(if seq == 0 {
            frame
        } else {
            with_seq(frame, seq)
        })
    }
}

impl Dialect for Native {
    type Encoder = NativeEncoder;
    const NAME: &'static str = "native";
    const RESUMABLE: bool = true;

    fn encoder(&self) -> NativeEncoder {
        NativeEncoder {
            codec: self.codec.clone(),
        }
    }

    async fn open(
        &mut self,
        _node: &Arc<Node>,
        _handle: &ConnHandle,
        _info: &ConnInfo,
    ) -> Result<Option<Session>, CloseReason> {
        Ok(None)
    }

    async fn frame(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        info: &ConnInfo,
        session: &mut Option<Session>,
        frame: Data<'_>,
        received: Instant,
    ) -> Flow {
        let limits = NameLimits::from_config(&node.core.cfg.limits);
        let (frame_codec, decoded) = match frame {
            Data::Text(t) => (Codec::Json, decode_text(t, limits)),
            Data::Binary(b) => (Codec::MsgPack, decode(b, Codec::MsgPack, limits)),
        };
        // Without a subprotocol, the first data frame fixes the answer
        // encoding (before any error about this frame is encoded).
        let _ = self.codec.compare_exchange(
            CODEC_UNSET,
            codec_code(frame_codec),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let inbound = match decoded {
            Ok(i) => i,
            Err(e) => {
                m::count(m::MESSAGES_IN, "type", "invalid", 1);
                handle.send_error(e.id, e.error);
                return Flow::Continue;
            }
        };
        m::count(m::MESSAGES_IN, "type", inbound.cmd.type_name(), 1);
        match (session, inbound.cmd) {
            (Some(s), cmd) => {
                node.dispatch(s, inbound.id, cmd, received).await;
                Flow::Continue
            }
            (
                slot @ None,
                Command::Hello {
                    peer_id,
                    meta,
                    token,
                    reconnect_secret,
                    resume,
                    resumable,
                },
            ) => {
                let resumable = node.core.cfg.resume.enabled && (resumable || resume.is_some());
                // `welcome` goes out only once the peer is reachable
                // cluster-wide (so a signal sent to it right after cannot
                // miss), and before anything that reached it meanwhile:
                // the gate holds those until it is queued.
                handle.close_gate();
                let mut failed = None;
                if let Some((resume_token, last_seq)) = resume {
                    // Boxed: taken once per connection, and large.
                    match Box::pin(node.resume(handle, &resume_token, last_seq, info.observed))
                        .await
                    {
                        Ok(r) => {
                            tracing::Span::current()
                                .record("peer", tracing::field::display(&r.session.peer));
                            debug!("hello (resumed)");
                            handle.open_gate_resumed(
                                r.welcome.into_event(inbound.id),
                                r.replay,
                                &r.seen,
                                r.next_seq,
                            );
                            *slot = Some(r.session);
                            return Flow::Registered;
                        }
                        Err(f) => failed = Some(f.into_event()),
                    }
                }
                let reg = Registration {
                    door: Door::Native,
                    observed: info.observed,
                    peer_id,
                    meta,
                    credentials: Credentials {
                        token,
                        token_verified: false,
                        reconnect_secret,
                    },
                };
                // Boxed: taken once per connection, and large.
                match Box::pin(node.register(handle, reg)).await {
                    Ok(mut r) => {
                        tracing::Span::current()
                            .record("peer", tracing::field::display(&r.session.peer));
                        debug!("hello");
                        if resumable {
                            r.welcome.resume_token = crate::node::resume::token(
                                &r.welcome.reconnect_secret,
                                &r.session.peer,
                            );
                            r.session.resumable = true;
                            handle.start_seq(1);
                        }
                        if let Some(f) = failed {
                            handle.send_first(f);
                        }
                        handle.open_gate(Some(r.welcome.into_event(inbound.id)), None);
                        *slot = Some(r.session);
                        Flow::Registered
                    }
                    Err(refused) => {
                        handle.open_gate(None, None);
                        if let Some(f) = failed {
                            handle.send(f);
                        }
                        handle.send_error(inbound.id, refused.error);
                        match refused.close {
                            Some(c) => Flow::Close(c),
                            None => Flow::Continue,
                        }
                    }
                }
            }
            (None, Command::Ping) => {
                handle.send(Event::Pong { id: inbound.id });
                Flow::Continue
            }
            (None, _) => {
                handle.send_error(
                    inbound.id,
                    ClientError::new(ErrorCode::HelloRequired, "send `hello` first"),
                );
                Flow::Continue
            }
        }
    }
}
