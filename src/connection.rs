//! One WebSocket connection, served by one task.
//!
//! The task waits on four things at once: the socket (frames in), the
//! connection's bounded queue (messages out), one timer (the `hello`
//! deadline, the heartbeat timeout and the server's pings) and the
//! connection's cancellation token. It decodes frames and hands commands to
//! the [`Node`]; it writes what is queued, batching everything ready into one
//! write. When the connection ends it sends one close frame with the first
//! reason given (or flushes the answer to the client's own close frame).
//!
//! One task instead of a reader and a writer saves a task, the lock of a split
//! socket and the wake-ups between them; see docs/DESIGN.md ("Memory per
//! connection"). The socket layer is [`crate::ws`].
//!
//! Backpressure: while more than `limits.max_write_buffer_bytes` wait to be
//! written to the socket (encoded in the socket's write buffer, or still in
//! the queue), the task stops reading it. So the answers a client asks for
//! (`pong`, `ack`, `error`) cannot pile up faster than it reads them.
//! Pausing, rather than closing with 1008, because a client that reads
//! slowly is not misbehaving: TCP slows its writes down until it reads, and
//! no memory is spent meanwhile. A client that never reads still ends: the
//! timer branch of the loop does not depend on the socket, so the `hello`
//! deadline (4003) and the heartbeat timeout (4004: a paused socket yields no
//! frame that would count as activity) close it, and messages from others
//! overflow its queue (1013 at `limits.outbound_queue_bytes`).
//!
//! The wire format is a [`Dialect`] (see [`crate::dialect`]): how a frame
//! becomes a core command, and how a core event becomes a frame (or nothing,
//! for a dialect that has no such message). The loop, the queue, heartbeats,
//! the drain guard and the connection permit are the same for every dialect,
//! and the loop is generic, so the native path pays no dispatch.

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep_until, Instant as TokioInstant};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, Instrument};

use crate::core::hub::{CloseReason, ConnHandle, OutboundRx, Written};
use crate::core::session::Session;
use crate::dialect::{ConnInfo, Dialect, Encoded, Encoder, Flow};
use crate::metrics as m;
use crate::node::Node;
use crate::ws::{Event as WsEvent, ReadEnd, WebSocket};

/// Serves one upgraded socket in `dialect` until it closes. `permit` and
/// `token` are held for the connection's lifetime: the first caps
/// connections, the second keeps shutdown waiting for it.
///
/// Not an `async fn`: that would store its arguments next to the future it
/// awaits, and this future is what an idle connection costs.
pub fn run<D: Dialect>(
    node: Arc<Node>,
    ws: WebSocket,
    info: ConnInfo,
    dialect: D,
    permit: OwnedSemaphorePermit,
    token: TaskTrackerToken,
) -> impl Future<Output = ()> + Send {
    let span = tracing::debug_span!("conn", node = %node.core.id, dialect = D::NAME, addr = %info.observed, peer = tracing::field::Empty);
    serve(node, ws, info, dialect, (permit, token)).instrument(span)
}

/// Messages taken from the queue per write (then one write for all of them).
const WRITE_BATCH: usize = 64;

/// The connection's future. A plain function returning an `async move`
/// block: the block uses its captures in place, where an `async fn` would
/// keep its arguments twice (as arguments, and moved into its body).
#[allow(clippy::manual_async_fn)] // on purpose, see above
fn serve<D: Dialect>(
    node: Arc<Node>,
    mut ws: WebSocket,
    info: ConnInfo,
    mut dialect: D,
    guards: (OwnedSemaphorePermit, TaskTrackerToken),
) -> impl Future<Output = ()> + Send {
    async move {
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        metrics::counter!(m::CONNECTIONS_TOTAL, "dialect" => D::NAME).increment(1);
        let limits = &node.core.cfg.limits;
        ws.set_max_size(limits.max_frame_bytes);
        let (handle, mut rx) = ConnHandle::with_byte_limit(
            node.core.next_epoch(),
            limits.outbound_queue,
            limits.outbound_queue_bytes,
            node.core.close_all.child_token(),
        );
        let enc = dialect.encoder();
        let heartbeat = || node.core.cfg.limits.heartbeat_interval;
        let idle_timeout = || node.core.cfg.limits.heartbeat_timeout;
        let start = TokioInstant::now();
        // One timer for three deadlines: it is re-armed lazily (when it fires, or
        // when a deadline moves earlier), so a frame costs no timer operation.
        let mut ping_at = start + heartbeat();
        let mut idle_at = start + limits.hello_timeout;
        let timer = sleep_until(ping_at.min(idle_at));
        tokio::pin!(timer);
        let cancelled = handle.ctl().cancel.cancelled();
        tokio::pin!(cancelled);
        let mut backlog = Backlog {
            max: limits.max_write_buffer_bytes,
            paused: false,
        };
        let mut written = Written::new(node.core.cfg.resume.replay_max);

        let mut session: Option<Session> = match Box::pin(dialect.open(&node, &handle, &info)).await
        {
            Ok(s) => s,
            Err(why) => {
                handle.close(why);
                None
            }
        };
        if let Some(s) = &session {
            tracing::Span::current().record("peer", tracing::field::display(&s.peer));
            idle_at = TokioInstant::now() + idle_timeout();
        }

        let why = loop {
            let due = ping_at.min(idle_at);
            if due < timer.deadline() {
                timer.as_mut().reset(due);
            }
            let event = tokio::select! {
                biased;
                _ = &mut cancelled => break None,
                _ = &mut timer => {
                    let now = TokioInstant::now();
                    if now >= idle_at {
                        break Some(if session.is_none() { CloseReason::HELLO_TIMEOUT } else { CloseReason::TIMEOUT });
                    }
                    if now >= ping_at {
                        // The mark: its pong tells what the client has read.
                        ws.queue_ping_mark(written.last);
                        ping_at = now + heartbeat();
                    }
                    timer.as_mut().reset(ping_at.min(idle_at));
                    continue;
                }
                ev = poll_fn(|cx| poll_socket(cx, &mut ws, &mut rx, &enc, &mut backlog, &mut written)) => ev,
            };
            let frame = match event {
                WsEvent::End(end) => break end_reason(end),
                WsEvent::Control | WsEvent::Pong(_) => {
                    if let WsEvent::Pong(Some(mark)) = event {
                        written.read_up_to(mark);
                    }
                    if session.is_some() {
                        idle_at = TokioInstant::now() + idle_timeout();
                    }
                    continue;
                }
                WsEvent::Message => {
                    let Some(frame) = ws.data() else {
                        // Text that is not UTF-8.
                        break Some(CloseReason::INVALID_UTF8);
                    };
                    frame
                }
            };
            let received = Instant::now();
            if session.is_some() {
                idle_at = TokioInstant::now() + idle_timeout();
            }
            // Boxed so that the connection's own future stays small while idle;
            // the box lives only while one frame is handled.
            let flow =
                Box::pin(dialect.frame(&node, &handle, &info, &mut session, frame, received)).await;
            match flow {
                Flow::Continue => {}
                Flow::Registered => idle_at = TokioInstant::now() + idle_timeout(),
                Flow::Close(c) => break Some(c),
            }
        };
        if let Some(why) = why {
            handle.close(why);
        }
        let why = *handle.ctl().reason.get_or_init(|| default_reason(&node));
        handle.ctl().cancel.cancel();
        metrics::counter!(m::DISCONNECTS, "reason" => why.reason).increment(1);
        let park = D::RESUMABLE
            && session.as_ref().is_some_and(|s| s.resumable)
            && node.core.cfg.resume.enabled
            && why.resumable(ws.peer_close_code());
        if park {
            // What the close writes joins what was written before: the client
            // may not read it, so a resume may have to send it again.
            Box::pin(close(
                &mut ws,
                &mut rx,
                &enc,
                why,
                limits.close_timeout,
                &mut written,
            ))
            .await;
            if let Some(s) = session.take() {
                node.park(s, rx, written, why);
            }
            dialect.closed(&node).await;
        } else {
            // Tell the rooms and send the close frame at the same time, as the
            // reader and the writer did when they were two tasks.
            let disconnect = async {
                if let Some(s) = &session {
                    node.disconnect(s, why).await;
                }
                dialect.closed(&node).await;
            };
            Box::pin(async {
                tokio::join!(
                    disconnect,
                    close(
                        &mut ws,
                        &mut rx,
                        &enc,
                        why,
                        limits.close_timeout,
                        &mut written
                    )
                );
            })
            .await;
            drop(rx);
        }
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        drop(guards);
    }
}

/// The close reason for how reading ended (`None`: already given, or the default).
fn end_reason(end: ReadEnd) -> Option<CloseReason> {
    match end {
        ReadEnd::Closed => Some(CloseReason::CLIENT_CLOSED),
        ReadEnd::TooBig => Some(CloseReason::TOO_BIG),
        ReadEnd::Gone => Some(CloseReason::CLIENT_GONE),
        ReadEnd::Protocol => Some(CloseReason::PROTOCOL_ERROR),
        ReadEnd::InvalidUtf8 => Some(CloseReason::INVALID_UTF8),
        ReadEnd::WriteFailed => None,
    }
}

/// Whether reading is paused for backpressure (see the module docs).
struct Backlog {
    /// `limits.max_write_buffer_bytes`.
    max: usize,
    /// Paused at the last poll (a pause is counted once, when it starts).
    paused: bool,
}

/// Writes what is queued (up to [`WRITE_BATCH`] messages per write), then
/// reads; returns the next read event. Writing never waits for reading;
/// reading waits for writing only while the socket is backlogged (see the
/// module docs).
fn poll_socket<E: Encoder>(
    cx: &mut Context<'_>,
    ws: &mut WebSocket,
    rx: &mut OutboundRx,
    enc: &E,
    backlog: &mut Backlog,
    written: &mut Written,
) -> Poll<WsEvent> {
    // A few batches per wake-up at most, so a busy queue cannot starve reads.
    for round in 0.. {
        match ws.poll_write_buffered(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(WsEvent::End(ReadEnd::WriteFailed)),
            Poll::Pending => break,
        }
        if round == 4 {
            cx.waker().wake_by_ref();
            break;
        }
        let mut sent_at: [Option<Instant>; WRITE_BATCH] = [None; WRITE_BATCH];
        let mut relayed = 0;
        let taken = {
            let ws = &mut *ws;
            let full = std::cell::Cell::new(false);
            rx.poll_take(
                cx,
                WRITE_BATCH,
                |out| {
                    if let Some(frame) = enc.encode_ref(&out.msg, out.seq) {
                        written.keep(&out);
                        m::count(m::MESSAGES_OUT, "type", out.msg.type_name(), 1);
                        if let Some(t) = out.received {
                            sent_at[relayed] = Some(t);
                            relayed += 1;
                        }
                        match &*frame {
                            Encoded::Text(s) => ws.queue_text(s),
                            Encoded::Binary(b) => ws.queue_binary(b),
                        }
                        full.set(ws.write_full());
                    }
                },
                || full.get(),
            )
        };
        if taken == 0 {
            break;
        }
        for t in sent_at.iter().take(relayed).flatten() {
            m::record(m::RELAY_LATENCY, t.elapsed().as_secs_f64());
        }
    }
    if ws.write_pending() + rx.queued_bytes() > backlog.max {
        // Backlogged: stop reading (see the module docs). Something is left
        // to write only when the last write returned `Pending` (the socket
        // wakes the task when it can take more) or after the last round
        // (which woke the task itself).
        if !backlog.paused {
            backlog.paused = true;
            metrics::counter!(m::READ_PAUSES).increment(1);
        }
        return Poll::Pending;
    }
    backlog.paused = false;
    ws.poll_read(cx)
}

/// Ends the connection on the wire within `limits.close_timeout_ms`:
/// flushes the answer to a client's close, or delivers what was queued (an
/// error, a reconnect notice; not for a client closed for not reading) and
/// then the close frame, and reads until the client answers it (closing a
/// socket with unread input resets it, and the reset destroys what the
/// client had not read yet: see [`WebSocket::read_until_closed`]).
async fn close<E: Encoder>(
    ws: &mut WebSocket,
    rx: &mut OutboundRx,
    enc: &E,
    why: CloseReason,
    within: Duration,
    written: &mut Written,
) {
    let deadline = TokioInstant::now() + within;
    let closing = async {
        if why != CloseReason::CLIENT_CLOSED {
            if why != CloseReason::SLOW {
                while let Some(out) = rx.try_recv() {
                    match enc.encode_seq(&out.msg, out.seq) {
                        Some(Encoded::Text(s)) => ws.queue_text(&s),
                        Some(Encoded::Binary(b)) => ws.queue_binary(&b),
                        None => continue,
                    }
                    written.keep(&out);
                }
            }
            ws.queue_close(enc.close_frame(why));
        }
        let shut = ws.shutdown().await;
        // The server started the close on a socket that still works: wait for
        // the client's answer. (The client's own close is answered already; a
        // socket that ended or failed has nothing more to say.)
        if shut.is_ok() && why != CloseReason::CLIENT_CLOSED && why != CloseReason::CLIENT_GONE {
            ws.read_until_closed().await;
        }
    };
    tokio::select! {
        _ = closing => {}
        _ = sleep_until(deadline) => debug!("close frame not delivered in time"),
    }
}

fn default_reason(node: &Node) -> CloseReason {
    if node.core.is_draining() {
        CloseReason::DRAINING
    } else {
        CloseReason::CLIENT_GONE
    }
}
