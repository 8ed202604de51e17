//! The server side of WebSocket (RFC 6455), written for a small footprint per
//! idle socket.
//!
//! [`WsUpgrade`] is the extractor of an upgrade request (the same checks and
//! rejections as axum's `WebSocketUpgrade`); [`WsUpgrade::on_upgrade`] answers
//! 101 (or 200 on HTTP/2) and spawns the connection task with a [`WebSocket`]
//! on the raw upgraded connection.
//!
//! Why not tungstenite: it allocates its read buffer up front and keeps it
//! (4 KiB per socket, more than the rest of an idle connection together), and
//! its write buffer is never shrunk. Here, reads go into one scratch buffer per
//! worker thread; a socket keeps bytes only while a frame is incomplete or not
//! yet handled, and frees them when they are consumed. The write buffer exists
//! only while something is being written. An idle socket therefore holds no
//! buffer at all. See docs/DESIGN.md.
//!
//! What the framing does: client frames must be masked (else: protocol error);
//! no extension is negotiated (RSV bits must be 0); fragmented messages are
//! assembled, with control frames allowed between fragments; ping is answered
//! with pong; a close frame is answered with the same code and reason; text
//! must be UTF-8 (a single-frame message is checked when it is handed out, a
//! fragmented one as each fragment arrives, so an invalid one ends at the
//! first bad fragment); a frame or message over the size limit is
//! [`ReadEnd::TooBig`]. A protocol violation ends reading as
//! [`ReadEnd::Protocol`] (close 1002), text or a close reason that is not
//! UTF-8 as [`ReadEnd::InvalidUtf8`] (1007), and only the end of the stream
//! or a transport error as [`ReadEnd::Gone`].
//!
//! Memory under any input: reads take at most a frame plus one read's worth
//! at a time. Pings are answered with at most one pong pending: RFC 6455
//! (5.5.3) lets an endpoint answer only the most recent ping, so a ping that
//! arrives while a pong waits replaces its payload, and the pong is written
//! once everything before it has been. A client that sends pings and never
//! reads therefore costs one pong, not one per ping. What else the
//! connection writes is bounded by its caller: the connection task stops
//! reading while too much waits to be written (see [`crate::connection`]),
//! which pushes back on the client through TCP instead of buffering for it.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::ws::rejection::{
    ConnectionNotUpgradable, InvalidConnectionHeader, InvalidProtocolPseudoheader,
    InvalidUpgradeHeader, InvalidWebSocketVersionHeader, MethodNotConnect, MethodNotGet,
    WebSocketKeyHeaderMissing, WebSocketUpgradeRejection,
};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use axum::response::Response;
use bytes::Bytes;
use futures_util::future::{Either, FutureExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from a socket per `read` call, into the per-thread scratch buffer.
pub const READ_CHUNK: usize = 64 * 1024;

/// Stop taking messages from the queue once this much is waiting to be written.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// A WebSocket upgrade request, validated like axum's `WebSocketUpgrade`.
#[derive(Debug)]
pub struct WsUpgrade {
    /// `Sec-WebSocket-Key` on HTTP/1.1; `None` on HTTP/2 (extended CONNECT).
    key: Option<HeaderValue>,
    on_upgrade: OnUpgrade,
    /// The subprotocols the client offered, in its order.
    offered: Vec<HeaderValue>,
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = WebSocketUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let key = if parts.version <= Version::HTTP_11 {
            if parts.method != Method::GET {
                return Err(MethodNotGet::default().into());
            }
            if !header_contains(&parts.headers, header::CONNECTION, "upgrade") {
                return Err(InvalidConnectionHeader::default().into());
            }
            if !header_eq(&parts.headers, header::UPGRADE, "websocket") {
                return Err(InvalidUpgradeHeader::default().into());
            }
            Some(
                parts
                    .headers
                    .get(header::SEC_WEBSOCKET_KEY)
                    .ok_or(WebSocketKeyHeaderMissing::default())?
                    .clone(),
            )
        } else {
            if parts.method != Method::CONNECT {
                return Err(MethodNotConnect::default().into());
            }
            if parts
                .extensions
                .get::<hyper::ext::Protocol>()
                .is_none_or(|p| p.as_str() != "websocket")
            {
                return Err(InvalidProtocolPseudoheader::default().into());
            }
            None
        };
        if !header_eq(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(InvalidWebSocketVersionHeader::default().into());
        }
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(ConnectionNotUpgradable::default())?;
        let offered = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|p| HeaderValue::from_bytes(p.trim_ascii()).ok())
            .collect();
        Ok(Self {
            key,
            on_upgrade,
            offered,
        })
    }
}

fn header_eq(headers: &HeaderMap, key: HeaderName, value: &str) -> bool {
    headers
        .get(&key)
        .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

fn header_contains(headers: &HeaderMap, key: HeaderName, value: &str) -> bool {
    headers
        .get(&key)
        .and_then(|h| std::str::from_utf8(h.as_bytes()).ok())
        .is_some_and(|h| h.to_ascii_lowercase().contains(value))
}

impl WsUpgrade {
    /// The first of `supported` (in the server's order) that the client offered.
    pub fn select_protocol(&self, supported: &[&'static str]) -> Option<&'static str> {
        supported
            .iter()
            .copied()
            .find(|s| self.offered.iter().any(|o| o.as_bytes() == s.as_bytes()))
    }

    /// Answers the upgrade (with `protocol` as `Sec-WebSocket-Protocol`, if
    /// any) and spawns `callback` on the socket once the connection is handed
    /// over. A failed hand-over is logged at debug level.
    pub fn on_upgrade<C, Fut>(self, protocol: Option<&'static str>, callback: C) -> Response
    where
        C: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        // Two stages in one task: waiting for the hand-over (with the
        // callback), then only the connection's own future. `flatten` keeps
        // one of the two at a time, so an idle connection's task holds
        // nothing of the first stage.
        let task = self.on_upgrade.map(move |up| match up {
            Ok(up) => {
                // `pre` may be a view into hyper's whole read buffer: copy it
                // out and let the buffer go before the socket is served.
                let (io, pre) = Io::from_upgraded(up);
                Either::Left(callback(WebSocket::new(io, &pre)))
            }
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                Either::Right(std::future::ready(()))
            }
        });
        tokio::spawn(task.flatten());
        let mut response = match &self.key {
            Some(key) => Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
                .header(header::UPGRADE, HeaderValue::from_static("websocket"))
                .header(
                    header::SEC_WEBSOCKET_ACCEPT,
                    tungstenite::handshake::derive_accept_key(key.as_bytes()),
                )
                .body(axum::body::Body::empty())
                .expect("static response parts are valid"),
            // HTTP/2 (RFC 8441): a 2xx with an empty body.
            None => Response::new(axum::body::Body::empty()),
        };
        if let Some(p) = protocol {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        response
    }
}

/// The upgraded connection: the TCP stream itself when it can be taken back
/// from hyper (HTTP/1.1; this drops hyper's box and its buffers), else
/// hyper's boxed stream (HTTP/2).
#[derive(Debug)]
pub enum Io {
    /// The accepted TCP stream.
    Tcp(TcpStream),
    /// Anything else hyper upgraded (boxed: rare, and larger).
    Upgraded(Box<TokioIo<Upgraded>>),
}

impl Io {
    /// The connection, and the bytes hyper had already read past the request.
    fn from_upgraded(up: Upgraded) -> (Self, Bytes) {
        match hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(up) {
            Ok(parts) => (Io::Tcp(parts.io.into_inner()), parts.read_buf),
            Err(up) => (Io::Upgraded(Box::new(TokioIo::new(up))), Bytes::new()),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Upgraded(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Upgraded(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Upgraded(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Upgraded(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// A message as handed to the protocol layer, borrowed from the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data<'a> {
    /// A text message (valid UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

/// A close frame the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame {
    /// The close code.
    pub code: u16,
    /// The reason text (at most 123 bytes are sent).
    pub reason: &'static str,
}

/// Why reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// The client sent a close frame; the answer is queued for writing.
    Closed,
    /// A frame or message over the size limit.
    TooBig,
    /// End of stream or a transport error: no close frame can be exchanged.
    Gone,
    /// The client broke the framing rules (close with 1002).
    Protocol,
    /// A text message or a close reason that is not UTF-8 (close with 1007).
    InvalidUtf8,
    /// Writing failed.
    WriteFailed,
}

/// What [`WebSocket::poll_read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A whole data message: read it with [`WebSocket::data`].
    Message,
    /// A ping (a pong answer is queued for it).
    Control,
    /// A pong. It carries the mark of the ping it answers when that ping
    /// was queued by [`WebSocket::queue_ping_mark`] (its 8-byte payload),
    /// else `None`.
    Pong(Option<u64>),
    /// Reading is over.
    End(ReadEnd),
}

/// Where the message last returned by [`Event::Message`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Current {
    None,
    /// `rbuf[start..end]`, one unfragmented frame.
    InBuf {
        text: bool,
        start: usize,
        end: usize,
    },
    /// The assembled fragments in `frag`.
    Frag {
        text: bool,
    },
}

const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

thread_local! {
    /// Every socket polled on this thread reads into this one buffer.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One server-side WebSocket. Buffers are allocated only while in use.
#[derive(Debug)]
pub struct WebSocket {
    io: Io,
    /// Bytes read but not yet consumed: a partial frame, or frames not yet
    /// handed out. Freed when everything in it is consumed.
    rbuf: Vec<u8>,
    /// Start of the unparsed bytes in `rbuf`.
    rpos: usize,
    /// The message handed out last (valid until the next poll).
    current: Current,
    /// Payload of a fragmented message being assembled.
    frag: Vec<u8>,
    /// The opcode of the fragmented message being assembled, 0 when none.
    frag_op: u8,
    /// How much of `frag` (a text message) is checked UTF-8; a character cut
    /// by a fragment boundary waits for the next fragment.
    frag_checked: usize,
    /// Largest frame, and largest message, accepted.
    max_size: usize,
    /// Encoded frames not yet written. Freed once written.
    wbuf: Vec<u8>,
    /// Start of the unwritten bytes in `wbuf`.
    wpos: usize,
    /// Written but not yet flushed (a no-op for TCP, needed for HTTP/2).
    need_flush: bool,
    /// The payload of the latest ping not yet answered: one pong at most
    /// waits, whatever the number of pings (see the module docs).
    pong: Option<Box<[u8]>>,
    /// A close frame is queued: nothing may follow it, pongs included.
    close_queued: bool,
    /// The code of the client's close frame (1005 when it had none; 0
    /// before one arrived).
    peer_close: u16,
}

impl WebSocket {
    /// A socket on `io`, where `pre` was already read from it. The size
    /// limit is 64 MiB until [`Self::set_max_size`].
    pub fn new(io: Io, pre: &[u8]) -> Self {
        Self {
            io,
            rbuf: pre.to_vec(),
            rpos: 0,
            current: Current::None,
            frag: Vec::new(),
            frag_op: 0,
            frag_checked: 0,
            max_size: 64 << 20,
            wbuf: Vec::new(),
            wpos: 0,
            need_flush: false,
            pong: None,
            close_queued: false,
            peer_close: 0,
        }
    }

    /// The code of the client's close frame: 1005 for one without a code,
    /// `None` before (or without) one.
    pub fn peer_close_code(&self) -> Option<u16> {
        (self.peer_close != 0).then_some(self.peer_close)
    }

    /// Sets the largest frame and message accepted.
    pub fn set_max_size(&mut self, max: usize) {
        self.max_size = max;
    }

    /// True when nothing is buffered for writing.
    pub fn write_idle(&self) -> bool {
        self.wbuf.is_empty() && !self.need_flush && self.pong.is_none()
    }

    /// Bytes waiting to be written.
    pub fn write_pending(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// True when the write buffer is full enough that no more should be queued.
    pub fn write_full(&self) -> bool {
        self.write_pending() >= WRITE_BATCH_BYTES
    }

    /// Appends one frame to the write buffer.
    pub fn queue_frame(&mut self, opcode: u8, payload: &[u8]) {
        if opcode == OP_CLOSE {
            // Nothing may follow a close frame: a pending pong is dropped.
            self.close_queued = true;
            self.pong = None;
        }
        let w = &mut self.wbuf;
        w.reserve(payload.len() + 10);
        w.push(0x80 | opcode);
        let n = payload.len();
        if n < 126 {
            w.push(n as u8);
        } else if n <= u16::MAX as usize {
            w.push(126);
            w.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            w.push(127);
            w.extend_from_slice(&(n as u64).to_be_bytes());
        }
        w.extend_from_slice(payload);
    }

    /// Appends a text frame.
    pub fn queue_text(&mut self, s: &str) {
        self.queue_frame(OP_TEXT, s.as_bytes());
    }

    /// Appends a binary frame.
    pub fn queue_binary(&mut self, b: &[u8]) {
        self.queue_frame(OP_BINARY, b);
    }

    /// Appends an empty ping.
    pub fn queue_ping(&mut self) {
        self.queue_frame(OP_PING, &[]);
    }

    /// Appends a ping whose payload is `mark` (8 bytes, big-endian): its
    /// pong comes back as [`Event::Pong`] with the mark, which tells the
    /// caller that the client has read everything written before the ping.
    pub fn queue_ping_mark(&mut self, mark: u64) {
        self.queue_frame(OP_PING, &mark.to_be_bytes());
    }

    /// Appends a close frame.
    pub fn queue_close(&mut self, f: CloseFrame) {
        let mut p = Vec::with_capacity(2 + f.reason.len().min(123));
        p.extend_from_slice(&f.code.to_be_bytes());
        let mut cut = f.reason.len().min(123);
        while !f.reason.is_char_boundary(cut) {
            cut -= 1;
        }
        p.extend_from_slice(&f.reason.as_bytes()[..cut]);
        self.queue_frame(OP_CLOSE, &p);
    }

    /// Writes what is buffered, then the pending pong. `Ready(Ok)` once all
    /// of it is written and flushed (the buffer is then freed); `Pending`
    /// while the socket is full.
    pub fn poll_write_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while self.wpos < self.wbuf.len() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.wpos += n;
            }
            if !self.wbuf.is_empty() {
                self.wbuf = Vec::new();
                self.wpos = 0;
                self.need_flush = true;
            }
            // The pong goes out once everything before it is written: until
            // then, later pings only update its payload.
            match self.pong.take() {
                Some(p) => self.queue_frame(OP_PONG, &p),
                None => break,
            }
        }
        if self.need_flush {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.need_flush = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes and flushes everything buffered.
    pub async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_write_buffered(cx)).await
    }

    /// Flushes, then shuts the write side down (TCP FIN).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await
    }

    /// After the server's own close frame is written: reads (and drops)
    /// what the client still sends until its answering close frame, the end
    /// of the stream or a framing error. A socket closed while unread bytes
    /// wait in its receive buffer is reset, and a reset makes the client's
    /// system drop what it had not read yet, the server's close frame
    /// included; so the server reads until the client has said its last word.
    ///
    /// When the framing cannot be followed (the close was for a frame too
    /// big or a protocol violation), the bytes are dropped unparsed until the
    /// end of the stream. The caller bounds the wait.
    pub async fn read_until_closed(&mut self) {
        loop {
            match poll_fn(|cx| self.poll_read(cx)).await {
                Event::Message | Event::Control | Event::Pong(_) => {}
                Event::End(ReadEnd::Closed | ReadEnd::Gone | ReadEnd::WriteFailed) => return,
                Event::End(ReadEnd::TooBig | ReadEnd::Protocol | ReadEnd::InvalidUtf8) => break,
            }
        }
        self.release();
        self.rbuf = Vec::new();
        self.rpos = 0;
        poll_fn(|cx| loop {
            let read = SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                if s.is_empty() {
                    s.resize(READ_CHUNK, 0);
                }
                let mut rb = ReadBuf::new(&mut s[..]);
                ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
                Poll::Ready(Ok::<_, io::Error>(rb.filled().len()))
            });
            match ready!(read) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(_) => {}
            }
        })
        .await
    }

    /// The message of the last [`Event::Message`]; `None` for text that is
    /// not UTF-8 (a protocol violation: end the connection).
    pub fn data(&self) -> Option<Data<'_>> {
        let (text, bytes) = match self.current {
            Current::None => return None,
            Current::InBuf { text, start, end } => (text, &self.rbuf[start..end]),
            Current::Frag { text } => (text, &self.frag[..]),
        };
        if text {
            std::str::from_utf8(bytes).ok().map(Data::Text)
        } else {
            Some(Data::Binary(bytes))
        }
    }

    /// Releases the last message and anything fully consumed.
    fn release(&mut self) {
        if let Current::Frag { .. } = self.current {
            self.frag = Vec::new();
            self.frag_checked = 0;
        }
        self.current = Current::None;
        if self.rpos == self.rbuf.len() && self.rpos > 0 {
            self.rbuf = Vec::new();
            self.rpos = 0;
        }
    }

    /// Reads until a message, a control frame or the end. Releases the
    /// previous message first.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        self.release();
        loop {
            match self.parse() {
                Ok(Some(ev)) => return Poll::Ready(ev),
                Ok(None) => {}
                Err(end) => return Poll::Ready(Event::End(end)),
            }
            // Need more bytes: keep only the partial frame.
            if self.rpos > 0 {
                if self.rpos == self.rbuf.len() {
                    self.rbuf = Vec::new();
                } else {
                    self.rbuf.drain(..self.rpos);
                }
                self.rpos = 0;
            }
            let read = SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                if s.is_empty() {
                    s.resize(READ_CHUNK, 0);
                }
                let mut rb = ReadBuf::new(&mut s[..]);
                match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        self.rbuf.extend_from_slice(rb.filled());
                        Poll::Ready(Ok(rb.filled().len()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            });
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    return Poll::Ready(Event::End(ReadEnd::Gone))
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Parses frames from `rbuf[rpos..]` until one is worth reporting.
    /// `Ok(None)` when more bytes are needed.
    fn parse(&mut self) -> Result<Option<Event>, ReadEnd> {
        loop {
            let buf = &mut self.rbuf[self.rpos..];
            let Some(h) = parse_header(buf)? else {
                return Ok(None);
            };
            let data_op = matches!(h.opcode, OP_CONT | OP_TEXT | OP_BINARY);
            if data_op {
                let so_far = if h.opcode == OP_CONT {
                    self.frag.len()
                } else {
                    0
                };
                if h.len > self.max_size as u64 || so_far as u64 + h.len > self.max_size as u64 {
                    return Err(ReadEnd::TooBig);
                }
            }
            let len = h.len as usize;
            if buf.len() - h.header_len < len {
                return Ok(None);
            }
            let payload = &mut buf[h.header_len..h.header_len + len];
            unmask(payload, h.mask);
            let start = self.rpos + h.header_len;
            let end = start + len;
            self.rpos = end;
            match h.opcode {
                OP_TEXT | OP_BINARY => {
                    if self.frag_op != 0 {
                        return Err(ReadEnd::Protocol);
                    }
                    let text = h.opcode == OP_TEXT;
                    if h.fin {
                        self.current = Current::InBuf { text, start, end };
                        return Ok(Some(Event::Message));
                    }
                    self.frag_op = h.opcode;
                    self.frag = self.rbuf[start..end].to_vec();
                    self.frag_checked = 0;
                    if text {
                        self.check_frag_utf8(false)?;
                    }
                }
                OP_CONT => {
                    if self.frag_op == 0 {
                        return Err(ReadEnd::Protocol);
                    }
                    self.frag.extend_from_slice(&self.rbuf[start..end]);
                    let text = self.frag_op == OP_TEXT;
                    if text {
                        self.check_frag_utf8(h.fin)?;
                    }
                    if h.fin {
                        self.frag_op = 0;
                        self.current = Current::Frag { text };
                        return Ok(Some(Event::Message));
                    }
                }
                OP_PING => {
                    // Remember the payload for the pong; a later ping replaces
                    // it (RFC 6455 5.5.3: only the most recent ping needs an
                    // answer). No pong may follow a close frame.
                    if !self.close_queued {
                        let p = &self.rbuf[start..end];
                        match &mut self.pong {
                            Some(q) if q.len() == p.len() => q.copy_from_slice(p),
                            slot => *slot = Some(p.into()),
                        }
                    }
                    return Ok(Some(Event::Control));
                }
                OP_PONG => {
                    let p = &self.rbuf[start..end];
                    let mark = <[u8; 8]>::try_from(p).ok().map(u64::from_be_bytes);
                    return Ok(Some(Event::Pong(mark)));
                }
                OP_CLOSE => {
                    let p = &self.rbuf[start..end];
                    match p.len() {
                        0 => {
                            self.peer_close = 1005;
                            self.queue_frame(OP_CLOSE, &[]);
                        }
                        1 => return Err(ReadEnd::Protocol),
                        _ => {
                            let code = u16::from_be_bytes([p[0], p[1]]);
                            if !close_code_allowed(code) {
                                return Err(ReadEnd::Protocol);
                            }
                            if std::str::from_utf8(&p[2..]).is_err() {
                                return Err(ReadEnd::InvalidUtf8);
                            }
                            self.peer_close = code;
                            let echo = p.to_vec();
                            self.queue_frame(OP_CLOSE, &echo);
                        }
                    }
                    return Err(ReadEnd::Closed);
                }
                _ => unreachable!("parse_header refuses other opcodes"),
            }
        }
    }
}

impl WebSocket {
    /// Checks the UTF-8 of a text message's fragments as they arrive: what
    /// is complete must be valid, and only a character cut at the end of the
    /// last fragment so far may wait for the next one (not at `fin`).
    fn check_frag_utf8(&mut self, fin: bool) -> Result<(), ReadEnd> {
        match std::str::from_utf8(&self.frag[self.frag_checked..]) {
            Ok(_) => self.frag_checked = self.frag.len(),
            Err(e) if e.error_len().is_none() && !fin => self.frag_checked += e.valid_up_to(),
            Err(_) => return Err(ReadEnd::InvalidUtf8),
        }
        Ok(())
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
    mask: [u8; 4],
    header_len: usize,
}

/// Parses a client frame header; `Ok(None)` when `buf` is too short.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, ReadEnd> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if b0 & 0x70 != 0 || b1 & 0x80 == 0 {
        // Reserved bits without an extension, or an unmasked client frame.
        return Err(ReadEnd::Protocol);
    }
    let control = match opcode {
        OP_CONT | OP_TEXT | OP_BINARY => false,
        OP_CLOSE | OP_PING | OP_PONG => true,
        _ => return Err(ReadEnd::Protocol),
    };
    let (len, at) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if n >> 63 != 0 {
                return Err(ReadEnd::Protocol);
            }
            (n, 10)
        }
        n => (u64::from(n), 2),
    };
    if control && (!fin || len > 125) {
        return Err(ReadEnd::Protocol);
    }
    if buf.len() < at + 4 {
        return Ok(None);
    }
    let mask = buf[at..at + 4].try_into().expect("4 bytes");
    Ok(Some(Header {
        fin,
        opcode,
        len,
        mask,
        header_len: at + 4,
    }))
}

/// XORs `payload` with the client's masking key.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Close codes a peer may send (RFC 6455 7.4, as tungstenite judges them).
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

#[cfg(test)]
mod tests;
