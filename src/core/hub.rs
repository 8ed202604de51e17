//! The hub: this node's local socket map and local room index.
//!
//! It maps each locally connected peer to a [`ConnHandle`], the only way to
//! reach its socket: a bounded queue drained by the connection's task,
//! plus a cancellation token to close it. Pushing never blocks: a full queue
//! means the client cannot keep up, and it is closed with 1013 while everyone
//! else keeps receiving. Maps are sharded (`DashMap`) and no lock is ever held
//! across an `.await`.
//!
//! The queue is bounded twice: in messages (`limits.outbound_queue`) and in
//! the bytes the queued messages hold (`limits.outbound_queue_bytes`, from
//! [`Event::heap_bytes`]): a count alone lets a client that does not read
//! pin a thousand of the largest messages. A message shared by a fan-out
//! counts in full for every recipient, since each one keeps it alive.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::event::Event;
use crate::error::close;
use crate::error::ClientError;
use crate::metrics as m;
use crate::types::LeaveReason;
use crate::types::{PeerId, RoomName};

/// Why a connection is being closed: the close frame and the `peer-left` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code.
    pub code: u16,
    /// Close frame reason text (also the metric label).
    pub reason: &'static str,
    /// The reason given to the peer's rooms.
    pub leave: LeaveReason,
}

impl CloseReason {
    /// The client could not drain its queue.
    pub const SLOW: Self = Self {
        code: close::SLOW,
        reason: "slow-consumer",
        leave: LeaveReason::Disconnected,
    };
    /// The door's only room was closed (its lifetime ran out, or it was
    /// deleted): a door whose clients know no room-closed message (the room
    /// signaling door) ends the connection after telling it why.
    pub const ROOM_CLOSED: Self = Self {
        code: close::NORMAL,
        reason: "room-closed",
        leave: LeaveReason::Disconnected,
    };
    /// A newer connection took the peer id.
    pub const REPLACED: Self = Self {
        code: close::REPLACED,
        reason: "replaced",
        leave: LeaveReason::Replaced,
    };
    /// A resume of the session on another socket took it over while this
    /// socket still looked alive (its client had lost it).
    pub const RESUMED: Self = Self {
        code: close::REPLACED,
        reason: "resumed",
        leave: LeaveReason::Replaced,
    };
    /// The node is draining.
    pub const DRAINING: Self = Self {
        code: close::RESTART,
        reason: "draining",
        leave: LeaveReason::Disconnected,
    };
    /// Heartbeat timeout.
    pub const TIMEOUT: Self = Self {
        code: close::HEARTBEAT_TIMEOUT,
        reason: "heartbeat-timeout",
        leave: LeaveReason::Timeout,
    };
    /// No hello in time.
    pub const HELLO_TIMEOUT: Self = Self {
        code: close::HELLO_TIMEOUT,
        reason: "hello-timeout",
        leave: LeaveReason::Timeout,
    };
    /// Token refused.
    pub const UNAUTHORIZED: Self = Self {
        code: close::UNAUTHORIZED,
        reason: "unauthorized",
        leave: LeaveReason::Disconnected,
    };
    /// A legacy worker whose id a live connection holds (see `Node::register`).
    pub const PEER_ID_TAKEN: Self = Self {
        code: close::PEER_ID_TAKEN,
        reason: "peer-id-taken",
        leave: LeaveReason::Disconnected,
    };
    /// A message over the size limit.
    pub const TOO_BIG: Self = Self {
        code: close::TOO_BIG,
        reason: "message-too-big",
        leave: LeaveReason::Disconnected,
    };
    /// The client sent a close frame (the framing has queued the echo; the
    /// connection only has to flush it).
    pub const CLIENT_CLOSED: Self = Self {
        code: close::NORMAL,
        reason: "client-closed",
        leave: LeaveReason::Disconnected,
    };
    /// The connection ended without a close frame (EOF, reset, a failed write).
    pub const CLIENT_GONE: Self = Self {
        code: close::NORMAL,
        reason: "connection-lost",
        leave: LeaveReason::Disconnected,
    };
    /// The client broke the WebSocket protocol: an unmasked frame, reserved
    /// bits or opcodes, a fragmented or long control frame, a continuation
    /// without a start (or a new message inside a fragmented one), a close
    /// frame with a one-byte payload or a code a client may not send.
    pub const PROTOCOL_ERROR: Self = Self {
        code: close::PROTOCOL_ERROR,
        reason: "protocol-error",
        leave: LeaveReason::Disconnected,
    };
    /// A text message (or a close reason) that is not UTF-8.
    pub const INVALID_UTF8: Self = Self {
        code: close::INVALID_DATA,
        reason: "invalid-utf8",
        leave: LeaveReason::Disconnected,
    };
}

impl CloseReason {
    /// True when a session that ended this way waits for a resume (see
    /// `crate::node::resume`): its socket was lost, timed out, drained or
    /// taken by a resume, or its client closed it with a code other than
    /// 1000, 1001 or none (`client_code`); not when the client said it is
    /// done, was refused, replaced or too slow (its queue overflowed: what
    /// it missed is gone).
    pub fn resumable(self, client_code: Option<u16>) -> bool {
        match self {
            Self::CLIENT_GONE | Self::TIMEOUT | Self::DRAINING | Self::RESUMED => true,
            Self::CLIENT_CLOSED => !matches!(client_code, None | Some(1000 | 1001 | 1005)),
            _ => false,
        }
    }
}

/// What one queued message costs besides the heap its contents hold: the
/// message itself in its `Arc`, and the queue's slot.
const QUEUED_OVERHEAD: usize = std::mem::size_of::<Event>()
    + 2 * std::mem::size_of::<usize>()
    + std::mem::size_of::<Outbound>();

/// The bytes a queued `msg` counts for (an upper bound of what it pins).
pub fn queued_cost(msg: &Event) -> usize {
    QUEUED_OVERHEAD + msg.heap_bytes()
}

/// One queued server message.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The message, shared between every recipient of a fan-out.
    pub msg: Arc<Event>,
    /// When the relayed message was read from its sender (for the latency histogram).
    pub received: Option<Instant>,
    /// What it counts for in the queue's byte bound ([`queued_cost`]).
    pub cost: usize,
    /// The answer that opened the gate: outside the byte bound (see
    /// [`ConnHandle::open_gate`]).
    pub forced: bool,
    /// Its place in the session's sequence (`seq` on the wire), given when
    /// it enters the queue of a session that resumes ([`Event::resumable`]
    /// messages only); 0: none.
    pub seq: u64,
    /// Which room event this is, the same on every node that delivers it
    /// ([`event_tag`]): a session resumed on another node delivers a room
    /// event once even when both nodes queued it. 0: untagged.
    pub tag: u64,
}

/// The tag of the room event `seq` published by `origin` (see
/// [`Outbound::tag`]): FNV-1a, the same in every process and version
/// (nodes of two versions meet in a rolling upgrade). Never 0.
pub fn event_tag(origin: &str, seq: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in origin.bytes().chain([0xff]).chain(seq.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h | 1
}

/// What was written to the socket of a numbered session and not yet shown
/// read: kept until a pong answers a ping sent after it (the client read
/// everything before that ping), at most `resume.replay_max` messages. A
/// resume sends again what its client missed of these (see
/// `crate::node::resume`). Holds no memory while empty.
#[derive(Debug)]
pub struct Written {
    /// The messages, oldest first.
    pub ring: std::collections::VecDeque<Outbound>,
    /// The `seq` of the last message written (the next ping's mark).
    pub last: u64,
    /// The highest `seq` dropped from the ring unread (over `max`): a resume
    /// from before it has a gap.
    pub dropped: u64,
    max: usize,
}

impl Written {
    pub fn new(max: usize) -> Self {
        Self {
            ring: std::collections::VecDeque::new(),
            last: 0,
            dropped: 0,
            max,
        }
    }

    /// Keeps a numbered message that was just written.
    pub fn keep(&mut self, out: &Outbound) {
        if out.seq == 0 {
            return;
        }
        self.last = out.seq;
        if self.ring.len() >= self.max {
            if let Some(old) = self.ring.pop_front() {
                self.dropped = old.seq;
            }
        }
        self.ring.push_back(out.clone());
    }

    /// The client read everything up to `seq`.
    pub fn read_up_to(&mut self, seq: u64) {
        while self.ring.front().is_some_and(|o| o.seq <= seq) {
            self.ring.pop_front();
        }
        if self.ring.is_empty() && self.ring.capacity() > 0 {
            self.ring = std::collections::VecDeque::new();
        }
    }
}

/// Shared control state of one connection.
#[derive(Debug)]
pub struct ConnCtl {
    /// Cancelled to close the connection; the connection task watches it.
    pub cancel: CancellationToken,
    /// The first reason given for closing wins.
    pub reason: OnceLock<CloseReason>,
    /// The outbound queue and the messages held by the gate.
    queue: Mutex<Queue>,
    /// The most messages queued (or held) before the client counts as slow.
    capacity: usize,
    /// Set once the connection's claim on its peer id succeeded. A hub entry
    /// whose claim is still in progress (or is being undone) is not this
    /// node's to re-register after an outage.
    registered: std::sync::atomic::AtomicBool,
    /// Set when a room this connection was in was closed under it (the hub
    /// no longer lists it there): its session drops such rooms from its own
    /// set before its next command ([`crate::core::session::Session::sync_rooms`]).
    rooms_closed: std::sync::atomic::AtomicBool,
    /// The most bytes queued (or held) before the client counts as slow.
    capacity_bytes: usize,
    /// A copy of the queue's byte count (stored under its lock), so the
    /// connection task can weigh its backlog on every poll without locking.
    queued_bytes: AtomicUsize,
    /// Set while the session is parked (its socket is gone, it waits for a
    /// resume): a full queue then counts what it drops instead of closing.
    parked: std::sync::atomic::AtomicBool,
}

/// A connection's outbound queue. It allocates only while something is queued
/// (a tokio mpsc channel allocates a 32-slot block up front, ~1.3 KB per idle
/// connection), and it is drained by the connection task itself.
#[derive(Debug, Default)]
struct Queue {
    /// Messages waiting for the connection task.
    items: VecDeque<Outbound>,
    /// Messages held while the gate is closed (see [`ConnHandle::close_gate`]).
    held: Option<Vec<Outbound>>,
    /// The cost of what `items` holds.
    bytes: usize,
    /// The part of `bytes` that is forced answers (outside the bound).
    forced_bytes: usize,
    /// The cost of what `held` holds.
    held_bytes: usize,
    /// The connection task, when it waits for messages.
    waker: Option<Waker>,
    /// The receiving end is gone: pushes fail.
    closed: bool,
    /// The `seq` the next resumable message gets; 0 while the session does
    /// not number its messages (dialects without resume, or before `welcome`).
    next_seq: u64,
    /// Messages dropped because the queue was full while the session was
    /// parked (see [`ConnHandle::park`]): a resume that would skip them fails.
    missed: u64,
}

/// Outcome of queueing one message.
enum Queued {
    Yes(Option<Waker>),
    Full,
    Closed,
}

impl Queue {
    /// Queues `out` unless a bound is reached. A message larger than the byte
    /// bound still goes into a queue that holds nothing else counted (else it
    /// could never be sent). A forced message (the answer that opens the
    /// gate) is not checked against the byte bound and does not count
    /// against what follows it; it still counts in `bytes` (what the
    /// connection task weighs before reading more).
    fn enqueue(&mut self, out: Outbound, capacity: usize, capacity_bytes: usize) -> Queued {
        if self.closed {
            return Queued::Closed;
        }
        let counted = self.bytes - self.forced_bytes;
        if self.items.len() >= capacity
            || (!out.forced && counted > 0 && counted.saturating_add(out.cost) > capacity_bytes)
        {
            return Queued::Full;
        }
        let mut out = out;
        if self.next_seq > 0 && out.seq == 0 && out.msg.resumable() {
            out.seq = self.next_seq;
            self.next_seq += 1;
        }
        self.bytes += out.cost;
        if out.forced {
            self.forced_bytes += out.cost;
        }
        self.items.push_back(out);
        Queued::Yes(self.waker.take())
    }

    fn pop(&mut self) -> Option<Outbound> {
        let out = self.items.pop_front()?;
        self.bytes -= out.cost;
        if out.forced {
            self.forced_bytes -= out.cost;
        }
        Some(out)
    }
}

/// The handle through which anything on the node reaches one connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// Unique id of this connection, so a stale cleanup never removes a newer
    /// connection of the same peer.
    pub epoch: u64,
    ctl: Arc<ConnCtl>,
}

/// The receiving end of a connection's queue, owned by its connection task.
/// Dropping it refuses further pushes and frees what is queued.
#[derive(Debug)]
pub struct OutboundRx {
    ctl: Arc<ConnCtl>,
}

/// Messages taken from the queue at a time (under one lock).
const TAKE_CHUNK: usize = 16;

impl OutboundRx {
    /// Takes the next message, if any.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let mut q = self.ctl.queue.lock();
        let out = q.pop();
        self.ctl.queued_bytes.store(q.bytes, Ordering::Relaxed);
        out
    }

    /// The bytes the queue holds now ([`queued_cost`] of each message).
    pub fn queued_bytes(&self) -> usize {
        self.ctl.queued_bytes.load(Ordering::Relaxed)
    }

    /// Hands queued messages to `f` (at most `max`, and stops early once
    /// `full()` says so); returns how many. When none is queued, the task is
    /// woken by the next push.
    pub fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        mut f: impl FnMut(Outbound),
        full: impl Fn() -> bool,
    ) -> usize {
        let mut n = 0;
        while n < max && !full() {
            let mut chunk: [Option<Outbound>; TAKE_CHUNK] = Default::default();
            let mut k = 0;
            {
                let mut q = self.ctl.queue.lock();
                while k < TAKE_CHUNK.min(max - n) {
                    match q.pop() {
                        Some(o) => chunk[k] = Some(o),
                        None => break,
                    }
                    k += 1;
                }
                self.ctl.queued_bytes.store(q.bytes, Ordering::Relaxed);
                if k == 0 {
                    if n == 0 {
                        match &q.waker {
                            Some(w) if w.will_wake(cx.waker()) => {}
                            _ => q.waker = Some(cx.waker().clone()),
                        }
                    }
                    // Give the memory back while nothing is queued.
                    if q.items.capacity() > 0 {
                        q.items = VecDeque::new();
                    }
                    break;
                }
            }
            for o in chunk.iter_mut().take(k) {
                f(o.take().expect("filled above"));
            }
            n += k;
        }
        n
    }

    /// Waits until a message is queued, then takes it (tests).
    pub async fn recv(&mut self) -> Outbound {
        std::future::poll_fn(|cx| {
            let mut got = None;
            self.poll_take(cx, 1, |o| got = Some(o), || false);
            got.map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        let mut q = self.ctl.queue.lock();
        q.closed = true;
        q.items = VecDeque::new();
        q.held = None;
        q.bytes = 0;
        q.forced_bytes = 0;
        q.held_bytes = 0;
        q.waker = None;
        self.ctl.queued_bytes.store(0, Ordering::Relaxed);
    }
}

impl ConnHandle {
    /// Creates a handle and the receiving end of a queue bounded in messages
    /// only (tests; connections use [`Self::with_byte_limit`]).
    pub fn new(epoch: u64, capacity: usize, cancel: CancellationToken) -> (Self, OutboundRx) {
        Self::with_byte_limit(epoch, capacity, usize::MAX, cancel)
    }

    /// Creates a handle and the receiving end of its queue, bounded to
    /// `capacity` messages and `capacity_bytes` bytes ([`queued_cost`]).
    pub fn with_byte_limit(
        epoch: u64,
        capacity: usize,
        capacity_bytes: usize,
        cancel: CancellationToken,
    ) -> (Self, OutboundRx) {
        let ctl = Arc::new(ConnCtl {
            cancel,
            reason: OnceLock::new(),
            queue: Mutex::new(Queue::default()),
            capacity,
            registered: std::sync::atomic::AtomicBool::new(false),
            rooms_closed: std::sync::atomic::AtomicBool::new(false),
            capacity_bytes,
            queued_bytes: AtomicUsize::new(0),
            parked: std::sync::atomic::AtomicBool::new(false),
        });
        (
            Self {
                epoch,
                ctl: ctl.clone(),
            },
            OutboundRx { ctl },
        )
    }

    /// The control state (for the connection's own task).
    pub fn ctl(&self) -> &Arc<ConnCtl> {
        &self.ctl
    }

    /// Queues a message without waiting. A full queue closes the connection as
    /// too slow; returns whether the message was queued.
    pub fn push(&self, msg: Arc<Event>, received: Option<Instant>) -> bool {
        let cost = queued_cost(&msg);
        self.push_costed(msg, cost, received)
    }

    /// [`Self::push`] with the cost already known (a fan-out computes it once).
    pub fn push_costed(&self, msg: Arc<Event>, cost: usize, received: Option<Instant>) -> bool {
        self.push_tagged(msg, cost, received, 0)
    }

    /// [`Self::push_costed`] of a room event with its [`Outbound::tag`].
    pub fn push_tagged(
        &self,
        msg: Arc<Event>,
        cost: usize,
        received: Option<Instant>,
        tag: u64,
    ) -> bool {
        let out = Outbound {
            msg,
            received,
            cost,
            forced: false,
            seq: 0,
            tag,
        };
        let (cap, cap_bytes) = (self.ctl.capacity, self.ctl.capacity_bytes);
        let mut q = self.ctl.queue.lock();
        let held_bytes = q.held_bytes;
        if let Some(buf) = q.held.as_mut() {
            if buf.len() >= cap || (held_bytes > 0 && held_bytes.saturating_add(cost) > cap_bytes) {
                drop(q);
                self.overflow();
                return false;
            }
            buf.push(out);
            q.held_bytes += cost;
            return true;
        }
        let r = q.enqueue(out, cap, cap_bytes);
        self.ctl.queued_bytes.store(q.bytes, Ordering::Relaxed);
        drop(q);
        self.after_enqueue(r)
    }

    fn after_enqueue(&self, r: Queued) -> bool {
        match r {
            Queued::Yes(waker) => {
                if let Some(w) = waker {
                    w.wake();
                }
                true
            }
            Queued::Full => {
                self.overflow();
                false
            }
            Queued::Closed => false,
        }
    }

    fn overflow(&self) {
        metrics::counter!(m::QUEUE_OVERFLOWS).increment(1);
        if self.ctl.parked.load(Ordering::Acquire) {
            // Nobody reads a parked queue: what does not fit is counted, and
            // a resume that would skip it fails (`resume-failed`).
            self.ctl.queue.lock().missed += 1;
            return;
        }
        self.close(CloseReason::SLOW);
    }

    /// This handle under another epoch, same queue (a resumed session keeps
    /// the epoch it had: its records in the store name it).
    pub fn with_epoch(&self, epoch: u64) -> Self {
        Self {
            epoch,
            ctl: self.ctl.clone(),
        }
    }

    /// Numbers the resumable messages queued from now on, starting at `next`.
    pub fn start_seq(&self, next: u64) {
        self.ctl.queue.lock().next_seq = next.max(1);
    }

    /// The `seq` the next resumable message will get (0: not numbered).
    pub fn next_seq(&self) -> u64 {
        self.ctl.queue.lock().next_seq
    }

    /// Marks the session parked: its socket is gone and pushes keep
    /// collecting in its queue, within its bounds, until a resume takes
    /// them ([`Self::take_parked`]) or the window ends.
    pub fn park(&self) {
        self.ctl.parked.store(true, Ordering::Release);
    }

    /// True while parked.
    pub fn is_parked(&self) -> bool {
        self.ctl.parked.load(Ordering::Acquire)
    }

    /// Messages dropped while parked.
    pub fn missed(&self) -> u64 {
        self.ctl.queue.lock().missed
    }

    /// Ends the parking: refuses further pushes and returns what the queue
    /// holds (in order), the next `seq`, and how many were dropped.
    pub fn take_parked(&self) -> (Vec<Outbound>, u64, u64) {
        let mut q = self.ctl.queue.lock();
        q.closed = true;
        let items: Vec<Outbound> = std::mem::take(&mut q.items).into();
        q.bytes = 0;
        q.forced_bytes = 0;
        q.held = None;
        q.held_bytes = 0;
        self.ctl.queued_bytes.store(0, Ordering::Relaxed);
        (items, q.next_seq, q.missed)
    }

    /// Opens the gate of a resumed session: queues `first` (its `welcome`),
    /// then `replay` (what it missed, already numbered), then what the gate
    /// held, less the room events whose tag is in `seen` (queued by the
    /// node the session came from too); numbering goes on from `next_seq`.
    pub fn open_gate_resumed(
        &self,
        first: Event,
        replay: Vec<Outbound>,
        seen: &std::collections::HashSet<u64>,
        next_seq: u64,
    ) {
        let first = Outbound {
            cost: queued_cost(&first),
            msg: Arc::new(first),
            received: None,
            forced: true,
            seq: 0,
            tag: 0,
        };
        let mut q = self.ctl.queue.lock();
        q.next_seq = next_seq.max(1);
        let held = q.held.take().unwrap_or_default();
        q.held_bytes = 0;
        let replay = replay.into_iter().map(|mut o| {
            // What it missed fit the queue it came from: it is not refused here.
            o.forced = true;
            o
        });
        let held = held
            .into_iter()
            .filter(|o| o.tag == 0 || !seen.contains(&o.tag));
        self.enqueue_all(q, std::iter::once(first).chain(replay).chain(held));
    }

    /// Queues `items` in order under the queue's lock `q` (then released),
    /// wakes the connection, and closes it as slow if one did not fit.
    fn enqueue_all(
        &self,
        mut q: parking_lot::MutexGuard<'_, Queue>,
        items: impl Iterator<Item = Outbound>,
    ) {
        let (cap, cap_bytes) = (self.ctl.capacity, self.ctl.capacity_bytes);
        let mut waker = None;
        let mut full = false;
        for out in items {
            match q.enqueue(out, cap, cap_bytes) {
                Queued::Yes(w) => waker = waker.or(w),
                Queued::Full => full = true,
                Queued::Closed => {}
            }
        }
        self.ctl.queued_bytes.store(q.bytes, Ordering::Relaxed);
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
        if full {
            self.overflow();
        }
    }

    /// Queues a message built for this one recipient.
    pub fn send(&self, msg: Event) -> bool {
        self.push(Arc::new(msg), None)
    }

    /// Queues an `error` for this connection (the answer to a request that
    /// failed) and counts it by code.
    pub fn send_error(&self, id: Option<serde_json::Value>, e: ClientError) -> bool {
        metrics::counter!(m::ERRORS, "code" => e.code.as_str()).increment(1);
        self.send(Event::error(id, e))
    }

    /// Holds every message pushed from now on until [`Self::open_gate`].
    ///
    /// Used around `hello` and `join`, whose answer must be the first thing
    /// the client reads of them: `welcome` only once the peer is reachable
    /// cluster-wide, `joined` before any event of that room. Events that
    /// arrive in between are delivered right after the answer, in order.
    pub fn close_gate(&self) {
        let mut q = self.ctl.queue.lock();
        if q.held.is_none() {
            q.held = Some(Vec::new());
        }
    }

    /// Queues `first` (the answer), then what was held (less the events of
    /// `drop_room`, a room the client failed to join), and lets pushes through again.
    pub fn open_gate(&self, first: Option<Event>, drop_room: Option<&RoomName>) {
        // The answer is costed outside the lock (a `joined` walks every member's `meta`).
        let first = first.map(|m| Outbound {
            cost: queued_cost(&m),
            msg: Arc::new(m),
            received: None,
            forced: true,
            seq: 0,
            tag: 0,
        });
        let mut q = self.ctl.queue.lock();
        let held = q.held.take().unwrap_or_default();
        q.held_bytes = 0;
        // The answer is the one message the client asked for, and its size
        // is bounded by the room's limits (a `joined` of a full room can be a
        // few MiB): it neither overflows nor makes the events after it
        // overflow. It does count in what the connection task weighs before
        // reading more, so such answers cannot pile up.
        let held = held
            .into_iter()
            .filter(|out| drop_room.is_none() || out.msg.room() != drop_room);
        self.enqueue_all(q, first.into_iter().chain(held));
    }

    /// Queues `msg` now, ahead of what the gate holds and of the answer that
    /// will open it (a `resume-failed` before the fresh session's `welcome`).
    pub fn send_first(&self, msg: Event) {
        let out = Outbound {
            cost: queued_cost(&msg),
            msg: Arc::new(msg),
            received: None,
            forced: true,
            seq: 0,
            tag: 0,
        };
        let (cap, cap_bytes) = (self.ctl.capacity, self.ctl.capacity_bytes);
        let mut q = self.ctl.queue.lock();
        let r = q.enqueue(out, cap, cap_bytes);
        self.ctl.queued_bytes.store(q.bytes, Ordering::Relaxed);
        drop(q);
        self.after_enqueue(r);
    }

    /// Lets pushes through again and returns what the gate held, undelivered
    /// (a `hello` that was refused after the peer id was claimed locally:
    /// what reached the connection meanwhile was meant for the id's owner).
    pub fn open_gate_taking_held(&self) -> Vec<Outbound> {
        self.ctl.queue.lock().held.take().unwrap_or_default()
    }

    /// Asks the connection to close; the first reason given wins.
    pub fn close(&self, why: CloseReason) {
        let _ = self.ctl.reason.set(why);
        self.ctl.cancel.cancel();
    }

    /// True once the connection has been asked to close.
    pub fn is_closing(&self) -> bool {
        self.ctl.cancel.is_cancelled()
    }

    /// Records that the connection's claim on its peer id succeeded.
    pub fn mark_registered(&self) {
        self.ctl
            .registered
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// True once the connection's claim on its peer id succeeded.
    pub fn is_registered(&self) -> bool {
        self.ctl
            .registered
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records that a room of this connection was closed under it (call it
    /// after taking the connection out of the room in the hub).
    pub fn note_room_closed(&self) {
        self.ctl.rooms_closed.store(true, Ordering::Release);
    }

    /// Takes the mark of [`Self::note_room_closed`]: true when a room was
    /// closed since the last call. One load when nothing was.
    pub fn take_rooms_closed(&self) -> bool {
        self.ctl.rooms_closed.load(Ordering::Relaxed)
            && self.ctl.rooms_closed.swap(false, Ordering::AcqRel)
    }
}

/// The local socket map and local room index.
#[derive(Debug, Default)]
pub struct Hub {
    peers: DashMap<PeerId, ConnHandle>,
    rooms: DashMap<RoomName, HashMap<PeerId, LocalMember>>,
}

/// A local member of a room.
#[derive(Debug, Clone)]
pub struct LocalMember {
    /// Its connection.
    pub handle: ConnHandle,
    /// The metadata it joined with (kept to re-register after a store outage).
    pub meta: serde_json::Value,
}

impl Hub {
    /// Registers a connection for `peer`, returning the one it replaces.
    pub fn register(&self, peer: PeerId, handle: ConnHandle) -> Option<ConnHandle> {
        let old = self.peers.insert(peer, handle);
        if old.is_none() {
            metrics::gauge!(m::PEERS).increment(1.0);
        }
        old
    }

    /// Registers `handle` for `peer` only if the current connection is still
    /// the one the caller checked (`expected`: its epoch, or `None` for no
    /// connection). `Ok` carries the connection it replaced; `Err` the one
    /// found instead, and nothing changed.
    pub fn register_if(
        &self,
        peer: PeerId,
        handle: ConnHandle,
        expected: Option<u64>,
    ) -> Result<Option<ConnHandle>, Option<ConnHandle>> {
        use dashmap::mapref::entry::Entry;
        match self.peers.entry(peer) {
            Entry::Occupied(mut e) => {
                if Some(e.get().epoch) != expected {
                    return Err(Some(e.get().clone()));
                }
                Ok(Some(e.insert(handle)))
            }
            Entry::Vacant(v) => {
                if expected.is_some() {
                    return Err(None);
                }
                v.insert(handle);
                metrics::gauge!(m::PEERS).increment(1.0);
                Ok(None)
            }
        }
    }

    /// Removes `peer` if its current connection is `epoch`.
    pub fn unregister(&self, peer: &PeerId, epoch: u64) -> bool {
        let removed = self
            .peers
            .remove_if(peer, |_, h| h.epoch == epoch)
            .is_some();
        if removed {
            metrics::gauge!(m::PEERS).decrement(1.0);
        }
        removed
    }

    /// The connection of a local peer.
    pub fn get(&self, peer: &PeerId) -> Option<ConnHandle> {
        self.peers.get(peer).map(|h| h.clone())
    }

    /// Number of local peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Every local connection (for drain).
    pub fn handles(&self) -> Vec<ConnHandle> {
        self.peers.iter().map(|e| e.value().clone()).collect()
    }

    /// Adds a local member; returns true when the room had no local member before.
    pub fn room_add(
        &self,
        room: &RoomName,
        peer: PeerId,
        handle: ConnHandle,
        meta: serde_json::Value,
    ) -> bool {
        let mut entry = self.rooms.entry(room.clone()).or_default();
        let first = entry.is_empty();
        entry.insert(peer, LocalMember { handle, meta });
        if first {
            metrics::gauge!(m::ROOMS).increment(1.0);
        }
        first
    }

    /// Removes a local member if its connection is `epoch`; returns
    /// `(removed, room now has no local member)`.
    pub fn room_remove(&self, room: &RoomName, peer: &PeerId, epoch: u64) -> (bool, bool) {
        let mut removed = false;
        let emptied = self
            .rooms
            .remove_if_mut(room, |_, members| {
                if members.get(peer).is_some_and(|m| m.handle.epoch == epoch) {
                    members.remove(peer);
                    removed = true;
                }
                members.is_empty()
            })
            .is_some();
        if emptied {
            metrics::gauge!(m::ROOMS).decrement(1.0);
        }
        (removed, emptied)
    }

    /// Removes a local member if its connection is `epoch`; returns its
    /// handle when it was removed, and whether the room now has no local
    /// member.
    pub fn room_take(
        &self,
        room: &RoomName,
        peer: &PeerId,
        epoch: u64,
    ) -> (Option<ConnHandle>, bool) {
        let mut taken = None;
        let emptied = self
            .rooms
            .remove_if_mut(room, |_, members| {
                if members.get(peer).is_some_and(|m| m.handle.epoch == epoch) {
                    taken = members.remove(peer).map(|m| m.handle);
                }
                members.is_empty()
            })
            .is_some();
        if emptied {
            metrics::gauge!(m::ROOMS).decrement(1.0);
        }
        (taken, emptied)
    }

    /// Gives the local member `peer` of `room` (connection `epoch`) another
    /// handle under the same epoch (a session resumed on this node), keeping
    /// its metadata.
    pub fn room_rebind(&self, room: &RoomName, peer: &PeerId, epoch: u64, handle: ConnHandle) {
        if let Some(mut members) = self.rooms.get_mut(room) {
            if let Some(m) = members.get_mut(peer).filter(|m| m.handle.epoch == epoch) {
                m.handle = handle;
            }
        }
    }

    /// The metadata the local member `peer` (connection `epoch`) of `room`
    /// joined with.
    pub fn member_meta(
        &self,
        room: &RoomName,
        peer: &PeerId,
        epoch: u64,
    ) -> Option<serde_json::Value> {
        self.rooms.get(room).and_then(|m| {
            m.get(peer)
                .filter(|m| m.handle.epoch == epoch)
                .map(|m| m.meta.clone())
        })
    }

    /// True when `room` has a member on this node.
    pub fn has_room(&self, room: &RoomName) -> bool {
        self.rooms.contains_key(room)
    }

    /// Queues `msg` for every local member of `room` except `except`; returns how many got it.
    pub fn room_fanout(
        &self,
        room: &str,
        except: Option<&str>,
        msg: &Arc<Event>,
        received: Option<Instant>,
    ) -> usize {
        self.room_fanout_tagged(room, except, msg, received, 0)
    }

    /// [`Self::room_fanout`] of a room event published with tag `tag`
    /// ([`event_tag`]).
    pub fn room_fanout_tagged(
        &self,
        room: &str,
        except: Option<&str>,
        msg: &Arc<Event>,
        received: Option<Instant>,
        tag: u64,
    ) -> usize {
        let Some(members) = self.rooms.get(room) else {
            return 0;
        };
        let cost = queued_cost(msg);
        let mut n = 0;
        for (peer, m) in members.iter() {
            if Some(peer.as_str()) != except
                && m.handle.push_tagged(msg.clone(), cost, received, tag)
            {
                n += 1;
            }
        }
        n
    }

    /// True when connection `epoch` of `peer` is a local member of `room`.
    pub fn is_member(&self, room: &RoomName, peer: &PeerId, epoch: u64) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|m| m.get(peer).is_some_and(|m| m.handle.epoch == epoch))
    }

    /// Number of rooms with a local member.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Every local peer with its connection (for re-registration after a store outage).
    pub fn peers(&self) -> Vec<(PeerId, ConnHandle)> {
        self.peers
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Every local room membership as `(room, peer, epoch, meta)` (for re-registration).
    pub fn memberships(&self) -> Vec<(RoomName, PeerId, u64, serde_json::Value)> {
        let mut out = Vec::new();
        for e in self.rooms.iter() {
            for (p, m) in e.value() {
                out.push((e.key().clone(), p.clone(), m.handle.epoch, m.meta.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_closes_only_that_connection() {
        let hub = Hub::default();
        let (slow, _slow_rx) = ConnHandle::new(1, 2, CancellationToken::new());
        let (fast, mut fast_rx) = ConnHandle::new(2, 2, CancellationToken::new());
        let room = RoomName::from_trusted("r");
        hub.room_add(
            &room,
            PeerId::from_trusted("slow"),
            slow.clone(),
            serde_json::Value::Null,
        );
        hub.room_add(
            &room,
            PeerId::from_trusted("fast"),
            fast.clone(),
            serde_json::Value::Null,
        );
        let msg = Arc::new(Event::Pong { id: None });
        for _ in 0..3 {
            hub.room_fanout("r", None, &msg, None);
            assert!(fast_rx.try_recv().is_some());
        }
        assert!(slow.is_closing());
        assert_eq!(slow.ctl().reason.get(), Some(&CloseReason::SLOW));
        assert!(!fast.is_closing());
    }

    #[test]
    fn gate_puts_the_answer_first_and_keeps_order() {
        let (h, mut rx) = ConnHandle::new(1, 8, CancellationToken::new());
        h.close_gate();
        h.send(Event::Pong { id: Some(1.into()) });
        h.send(Event::Pong { id: Some(2.into()) });
        assert!(rx.try_recv().is_none(), "held while the gate is closed");
        h.open_gate(Some(Event::Ack { id: 0.into() }), None);
        h.send(Event::Pong { id: Some(3.into()) });
        let order: Vec<String> = std::iter::from_fn(|| rx.try_recv())
            .map(|o| serde_json::to_string(&*o.msg).unwrap())
            .collect();
        assert_eq!(
            order,
            [
                r#"{"type":"ack","id":0}"#,
                r#"{"type":"pong","id":1}"#,
                r#"{"type":"pong","id":2}"#,
                r#"{"type":"pong","id":3}"#
            ]
        );
    }

    #[test]
    fn queue_takes_in_batches_and_gives_its_memory_back() {
        let (h, mut rx) = ConnHandle::new(1, 100, CancellationToken::new());
        for i in 0..10 {
            assert!(h.send(Event::Pong { id: Some(i.into()) }));
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut got = Vec::new();
        assert_eq!(rx.poll_take(&mut cx, 4, |o| got.push(o), || false), 4);
        assert_eq!(rx.poll_take(&mut cx, 64, |o| got.push(o), || false), 6);
        assert_eq!(got.len(), 10);
        assert_eq!(rx.poll_take(&mut cx, 64, |o| got.push(o), || false), 0);
        let q = h.ctl.queue.lock();
        assert_eq!(q.items.capacity(), 0, "an empty queue holds no memory");
        assert!(q.waker.is_some(), "an empty queue remembers who to wake");
    }

    #[test]
    fn a_queue_without_its_connection_refuses_quietly() {
        let (h, rx) = ConnHandle::new(1, 1, CancellationToken::new());
        drop(rx);
        assert!(!h.send(Event::Pong { id: None }));
        assert!(!h.send(Event::Pong { id: None }));
        assert!(
            !h.is_closing(),
            "not a slow consumer: the connection is gone"
        );
    }

    #[tokio::test]
    async fn a_push_wakes_the_waiting_connection() {
        let (h, mut rx) = ConnHandle::new(1, 8, CancellationToken::new());
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        h.send(Event::Pong { id: Some(7.into()) });
        let out = waiting.await.unwrap();
        assert_eq!(
            serde_json::to_string(&*out.msg).unwrap(),
            r#"{"type":"pong","id":7}"#
        );
    }

    #[test]
    fn stale_epoch_does_not_remove_newer_connection() {
        let hub = Hub::default();
        let p = PeerId::from_trusted("p");
        let (old, _) = ConnHandle::new(1, 1, CancellationToken::new());
        let (new, _) = ConnHandle::new(2, 1, CancellationToken::new());
        assert!(hub.register(p.clone(), old).is_none());
        assert_eq!(hub.register(p.clone(), new).map(|h| h.epoch), Some(1));
        assert!(!hub.unregister(&p, 1));
        assert_eq!(hub.get(&p).map(|h| h.epoch), Some(2));
        let room = RoomName::from_trusted("r");
        hub.room_add(
            &room,
            p.clone(),
            hub.get(&p).unwrap(),
            serde_json::Value::Null,
        );
        assert_eq!(hub.room_remove(&room, &p, 1), (false, false));
        assert_eq!(hub.room_remove(&room, &p, 2), (true, true));
        assert_eq!(hub.room_count(), 0);
    }

    /// A signal whose `data` is `n` bytes of JSON text.
    fn signal(n: usize) -> Arc<Event> {
        let text = format!("\"{}\"", "x".repeat(n - 2));
        Arc::new(Event::Signal {
            from: PeerId::from_trusted("a"),
            kind: crate::types::SignalKind::from_trusted("k"),
            data: crate::payload::Opaque::Json(
                serde_json::value::RawValue::from_string(text).unwrap(),
            ),
        })
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let one = queued_cost(&signal(10_000));
        assert!((10_000..10_000 + 1024).contains(&one), "{one}");
        // Room for three such messages (and a thousand slots).
        let (h, mut rx) =
            ConnHandle::with_byte_limit(1, 1000, 3 * one + 10, CancellationToken::new());
        for _ in 0..3 {
            assert!(h.push(signal(10_000), None));
        }
        assert!(!h.is_closing());
        assert_eq!(h.ctl.queue.lock().bytes, 3 * one);
        assert_eq!(rx.queued_bytes(), 3 * one);
        // Taking one makes room for one.
        assert!(rx.try_recv().is_some());
        assert_eq!(rx.queued_bytes(), 2 * one);
        assert!(h.push(signal(10_000), None));
        // The fourth overflows: closed as a slow consumer.
        assert!(!h.push(signal(10_000), None));
        assert_eq!(h.ctl().reason.get(), Some(&CloseReason::SLOW));
    }

    #[test]
    fn one_message_larger_than_the_bound_fits_an_empty_queue() {
        let (h, mut rx) = ConnHandle::with_byte_limit(1, 1000, 4096, CancellationToken::new());
        assert!(h.push(signal(100_000), None));
        assert!(!h.is_closing());
        assert!(!h.push(signal(100), None), "nothing fits behind it");
        assert!(h.is_closing());
        drop(rx.try_recv());
        let (h, mut rx) = ConnHandle::with_byte_limit(1, 1000, 4096, CancellationToken::new());
        assert!(h.push(signal(100_000), None));
        assert!(rx.try_recv().is_some());
        assert_eq!(h.ctl.queue.lock().bytes, 0);
        assert!(h.push(signal(100_000), None), "the queue is empty again");
    }

    #[test]
    fn the_gate_holds_within_the_byte_bound_and_lets_its_answer_through() {
        let one = queued_cost(&signal(1000));
        let (h, mut rx) = ConnHandle::with_byte_limit(1, 1000, 2 * one, CancellationToken::new());
        h.close_gate();
        assert!(h.push(signal(1000), None));
        assert!(h.push(signal(1000), None));
        // The answer is bigger than the whole bound, and goes first anyway;
        // what was held still fits after it.
        let big = signal(50_000).as_ref().clone();
        h.open_gate(Some(big), None);
        assert!(!h.is_closing());
        let big_cost = queued_cost(&signal(50_000));
        assert_eq!(rx.queued_bytes(), big_cost + 2 * one);
        // The bound applies to what follows, the answer aside.
        assert!(!h.push(signal(1000), None));
        assert!(h.is_closing());
        assert!(rx.try_recv().is_some());
        assert_eq!(rx.queued_bytes(), 2 * one);
        // Held messages beyond the bound overflow while the gate is closed.
        let (h, _rx) = ConnHandle::with_byte_limit(1, 1000, 2 * one, CancellationToken::new());
        h.close_gate();
        assert!(h.push(signal(1000), None));
        assert!(h.push(signal(1000), None));
        assert!(!h.push(signal(1000), None));
        assert!(h.is_closing());
    }

    #[test]
    fn a_fan_out_counts_for_every_recipient() {
        let hub = Hub::default();
        let one = queued_cost(&signal(5000));
        let room = RoomName::from_trusted("r");
        let mut rxs = Vec::new();
        for (i, p) in ["p1", "p2"].into_iter().enumerate() {
            let (h, rx) =
                ConnHandle::with_byte_limit(i as u64, 1000, 2 * one, CancellationToken::new());
            hub.room_add(
                &room,
                PeerId::from_trusted(p),
                h.clone(),
                serde_json::Value::Null,
            );
            rxs.push((h, rx));
        }
        let msg = signal(5000);
        for _ in 0..2 {
            assert_eq!(hub.room_fanout("r", None, &msg, None), 2);
        }
        for (h, _) in &rxs {
            assert_eq!(h.ctl.queue.lock().bytes, 2 * one);
        }
        assert_eq!(hub.room_fanout("r", None, &msg, None), 0);
        assert!(rxs.iter().all(|(h, _)| h.is_closing()));
    }
}
