//! One WebSocket connection: a reader (this task) and a writer task.
//!
//! The reader decodes frames, enforces the `hello` deadline and the heartbeat
//! timeout, and hands commands to the [`Node`]. The writer is the only code
//! that writes to the socket: it drains the connection's bounded queue,
//! batching what is ready into one flush, and sends the server's pings. When
//! either side ends, the connection's cancellation token stops the other; the
//! writer then sends one close frame with the first reason given.
//!
//! The wire format is a [`Dialect`]: how a frame becomes a core command, and
//! how a server message becomes a frame (or nothing, for a dialect that has no
//! such message). The native protocol is [`Native`]; translators for older
//! clients live in [`crate::dialect`]. The loop, the queue, heartbeats, the
//! drain guard and the connection permit are the same for every dialect, and
//! the loop is generic, so the native path pays no dispatch.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::{sleep_until, Instant as TokioInstant};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, Instrument};

use crate::error::{ClientError, ErrorCode};
use crate::hub::{CloseReason, ConnCtl, ConnHandle, Outbound};
use crate::metrics as m;
use crate::node::{send_error, Node, Session};
use crate::protocol::{decode, encode, Codec, Command, Encoded, ServerMsg};

/// What the door learned about a connection before the upgrade.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address (the socket's, or from a trusted proxy's header).
    pub observed: SocketAddr,
    /// The codec fixed by the negotiated subprotocol, if any.
    pub codec: Option<Codec>,
}

const CODEC_UNSET: u8 = 0;
const CODEC_JSON: u8 = 1;
const CODEC_MSGPACK: u8 = 2;

fn codec_code(c: Codec) -> u8 {
    match c {
        Codec::Json => CODEC_JSON,
        Codec::MsgPack => CODEC_MSGPACK,
    }
}

/// What a connection's reader does after one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// A session was just established (start the heartbeat deadline).
    Registered,
    /// Close the connection with this reason.
    Close(CloseReason),
}

/// A wire format on one connection: the reader half. See the module docs.
pub trait Dialect: Send + 'static {
    /// The writer half.
    type Encoder: Encoder;
    /// The `dialect` label of metrics and spans.
    const NAME: &'static str;
    /// Builds the writer half (shares what it must with the reader).
    fn encoder(&self) -> Self::Encoder;
    /// Runs before the first frame. A dialect without a handshake registers
    /// the connection here and returns its session.
    fn open(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        info: &ConnInfo,
    ) -> impl Future<Output = Result<Option<Session>, CloseReason>> + Send;
    /// Handles one text or binary frame.
    fn frame(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        info: &ConnInfo,
        session: &mut Option<Session>,
        frame: &Message,
        received: Instant,
    ) -> impl Future<Output = Flow> + Send;
}

/// A wire format on one connection: the writer half.
pub trait Encoder: Send + Sync + 'static {
    /// The frame for `msg`, or `None` when this dialect has no such message.
    fn encode(&self, msg: &ServerMsg) -> Option<Message>;
    /// The close frame for a close reason.
    fn close_frame(&self, why: CloseReason) -> CloseFrame {
        CloseFrame {
            code: why.code,
            reason: why.reason.into(),
        }
    }
}

/// The native protocol (`/ws`): JSON text or MessagePack binary frames.
#[derive(Debug)]
pub struct Native {
    /// The answer encoding: fixed by the subprotocol, or by the first data frame.
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
    fn encode(&self, msg: &ServerMsg) -> Option<Message> {
        let codec = if self.codec.load(Ordering::Relaxed) == CODEC_MSGPACK {
            Codec::MsgPack
        } else {
            Codec::Json
        };
        Some(to_message(encode(msg, codec)))
    }
}

impl Dialect for Native {
    type Encoder = NativeEncoder;
    const NAME: &'static str = "native";

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
        frame: &Message,
        received: Instant,
    ) -> Flow {
        let (bytes, frame_codec) = match frame {
            Message::Text(t) => (t.as_bytes(), Codec::Json),
            Message::Binary(b) => (&b[..], Codec::MsgPack),
            _ => return Flow::Continue,
        };
        // Without a subprotocol, the first data frame fixes the answer encoding.
        let _ = self.codec.compare_exchange(
            CODEC_UNSET,
            codec_code(frame_codec),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let inbound = match decode(bytes, frame_codec, node.name_limits) {
            Ok(i) => i,
            Err(e) => {
                metrics::counter!(m::MESSAGES_IN, "type" => "invalid").increment(1);
                send_error(handle, e.id, e.error);
                return Flow::Continue;
            }
        };
        metrics::counter!(m::MESSAGES_IN, "type" => inbound.cmd.type_name()).increment(1);
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
                },
            ) => {
                let hello_id = inbound.id.clone();
                match node
                    .hello(handle, info.observed, inbound.id, peer_id, meta, token)
                    .await
                {
                    Ok(s) => {
                        tracing::Span::current().record("peer", tracing::field::display(&s.peer));
                        debug!("hello");
                        *slot = Some(s);
                        Flow::Registered
                    }
                    Err(refused) => {
                        send_error(handle, hello_id, refused.error);
                        match refused.close {
                            Some(c) => Flow::Close(c),
                            None => Flow::Continue,
                        }
                    }
                }
            }
            (None, Command::Ping) => {
                handle.send(ServerMsg::Pong { id: inbound.id });
                Flow::Continue
            }
            (None, _) => {
                send_error(
                    handle,
                    inbound.id,
                    ClientError::new(ErrorCode::HelloRequired, "send `hello` first"),
                );
                Flow::Continue
            }
        }
    }
}

/// Serves one upgraded socket in `dialect` until it closes. `permit` and
/// `token` are held for the connection's lifetime: the first caps
/// connections, the second keeps shutdown waiting for it.
pub async fn run<D: Dialect>(
    node: Arc<Node>,
    ws: WebSocket,
    info: ConnInfo,
    dialect: D,
    permit: OwnedSemaphorePermit,
    token: TaskTrackerToken,
) {
    let span = tracing::debug_span!("conn", node = %node.id, dialect = D::NAME, addr = %info.observed, peer = tracing::field::Empty);
    serve(node, ws, info, dialect).instrument(span).await;
    drop(permit);
    drop(token);
}

async fn serve<D: Dialect>(node: Arc<Node>, ws: WebSocket, info: ConnInfo, mut dialect: D) {
    metrics::gauge!(m::CONNECTIONS).increment(1.0);
    metrics::counter!(m::CONNECTIONS_TOTAL, "dialect" => D::NAME).increment(1);
    let limits = &node.cfg.limits;
    let (handle, rx) = ConnHandle::new(
        node.next_epoch(),
        limits.outbound_queue,
        node.close_all.child_token(),
    );
    let (sink, mut stream) = ws.split();
    let writer = tokio::spawn(
        writer(
            node.clone(),
            sink,
            rx,
            handle.ctl().clone(),
            dialect.encoder(),
            Duration::from_millis(limits.heartbeat_interval_ms),
        )
        .in_current_span(),
    );

    let hello_deadline = TokioInstant::now() + Duration::from_millis(limits.hello_timeout_ms);
    let idle_timeout = Duration::from_millis(limits.heartbeat_timeout_ms);
    let idle = tokio::time::sleep_until(hello_deadline);
    tokio::pin!(idle);
    let cancel = handle.ctl().cancel.clone();
    let mut session: Option<Session> = match dialect.open(&node, &handle, &info).await {
        Ok(s) => s,
        Err(why) => {
            handle.close(why);
            None
        }
    };
    if let Some(s) = &session {
        tracing::Span::current().record("peer", tracing::field::display(&s.peer));
        idle.as_mut().reset(TokioInstant::now() + idle_timeout);
    }

    let why = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break None,
            _ = &mut idle => break Some(if session.is_none() { CloseReason::HELLO_TIMEOUT } else { CloseReason::TIMEOUT }),
            frame = stream.next() => {
                let frame = match frame {
                    None => break Some(CloseReason::CLIENT_GONE),
                    Some(Err(e)) => break Some(read_error_reason(e)),
                    Some(Ok(f)) => f,
                };
                if session.is_some() {
                    idle.as_mut().reset(TokioInstant::now() + idle_timeout);
                }
                match &frame {
                    Message::Text(_) | Message::Binary(_) => {}
                    Message::Close(_) => break Some(CloseReason::CLIENT_CLOSED),
                    Message::Ping(_) | Message::Pong(_) => continue,
                }
                let received = Instant::now();
                match dialect.frame(&node, &handle, &info, &mut session, &frame, received).await {
                    Flow::Continue => {}
                    Flow::Registered => idle.as_mut().reset(TokioInstant::now() + idle_timeout),
                    Flow::Close(c) => break Some(c),
                }
            }
        }
    };
    if let Some(why) = why {
        handle.close(why);
    }
    let why = *handle.ctl().reason.get_or_init(|| default_reason(&node));
    metrics::counter!(m::DISCONNECTS, "reason" => why.reason).increment(1);
    if let Some(s) = &session {
        node.disconnect(s, why).await;
    }
    let _ = writer.await;
    metrics::gauge!(m::CONNECTIONS).decrement(1.0);
}

fn default_reason(node: &Node) -> CloseReason {
    if node.is_draining() {
        CloseReason::DRAINING
    } else {
        CloseReason::CLIENT_GONE
    }
}

fn read_error_reason(e: axum::Error) -> CloseReason {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => CloseReason::TOO_BIG,
        _ => CloseReason::CLIENT_GONE,
    }
}

fn to_message(e: Encoded) -> Message {
    match e {
        Encoded::Text(s) => Message::Text(s.into()),
        Encoded::Binary(b) => Message::Binary(b.into()),
    }
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;

async fn writer<E: Encoder>(
    node: Arc<Node>,
    mut sink: Sink,
    mut rx: mpsc::Receiver<Outbound>,
    ctl: Arc<ConnCtl>,
    enc: E,
    heartbeat: Duration,
) {
    let mut ping = tokio::time::interval_at(TokioInstant::now() + heartbeat, heartbeat);
    let mut sent_at: Vec<Instant> = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = ctl.cancel.cancelled() => break,
            out = rx.recv() => {
                let Some(out) = out else { break };
                // Feed everything already queued, then flush once.
                let mut batch = Some(out);
                let mut fed = 0;
                let mut failed = false;
                while let Some(out) = batch.take() {
                    if let Some(frame) = enc.encode(&out.msg) {
                        metrics::counter!(m::MESSAGES_OUT, "type" => out.msg.type_name()).increment(1);
                        if let Some(t) = out.received {
                            sent_at.push(t);
                        }
                        if sink.feed(frame).await.is_err() {
                            failed = true;
                            break;
                        }
                    }
                    fed += 1;
                    if fed < 64 {
                        batch = rx.try_recv().ok();
                    }
                }
                let flushed = !failed && tokio::select! {
                    r = sink.flush() => r.is_ok(),
                    _ = ctl.cancel.cancelled() => false,
                };
                for t in sent_at.drain(..) {
                    metrics::histogram!(m::RELAY_LATENCY).record(t.elapsed().as_secs_f64());
                }
                if !flushed {
                    break;
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
    let why = *ctl.reason.get_or_init(|| default_reason(&node));
    ctl.cancel.cancel();
    // Deliver what was queued before the close (an error, a reconnect notice),
    // unless the client is being closed for not reading.
    let deadline = TokioInstant::now() + Duration::from_secs(1);
    let closing = async {
        if why == CloseReason::CLIENT_CLOSED {
            // The client closed first: the library answers with the client's
            // own close frame; sending ours would fail before that is flushed.
            let _ = sink.flush().await;
            return;
        }
        if why != CloseReason::SLOW {
            while let Ok(out) = rx.try_recv() {
                let Some(frame) = enc.encode(&out.msg) else {
                    continue;
                };
                if sink.feed(frame).await.is_err() {
                    return;
                }
            }
        }
        let frame = enc.close_frame(why);
        let _ = sink.send(Message::Close(Some(frame))).await;
    };
    tokio::select! {
        _ = closing => {}
        _ = sleep_until(deadline) => debug!("close frame not delivered in time"),
    }
}
