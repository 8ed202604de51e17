//! The operator console's cluster part (docs/ADMIN.md): what every node
//! knows of the whole cluster for `/admin`, and the chat between an admin
//! session and a worker, wherever each sits.
//!
//! The door ([`crate::http::console`]) is thin: pages, login, the two
//! WebSockets. This part holds what the node shares between its admin
//! sockets and with other nodes:
//!
//! - **node stats and the live log**: every node turns its own
//!   [`Note`]s (connects, disconnects, workers registering, pairings;
//!   told by the parts through [`crate::core::Activity`]) and its own
//!   transitions (draining, Redis unavailable and back) into log entries,
//!   and every [`TICK`] publishes the new ones, in one message, on the
//!   console's bus channel, with its stats once a second
//!   ([`STATS_EVERY`] ticks). Every node merges what it hears into one view
//!   (nodes, log), so an admin on any node sees the whole cluster. A node
//!   heard for the first time is logged `node-joined`; one not heard for
//!   [`NODE_STALE`] is logged `node-left` and dropped.
//! - **deltas**: each tick, what changed (nodes, log entries, whether any
//!   worker changed) is one frame, shared by every local admin socket
//!   ([`Console::watch`]): deltas are batched every 250 ms at most.
//! - **the worker list** is read from the store (`list_workers`, one
//!   script) at most once per [`WORKERS_FRESH`] per node, whatever the
//!   number of admin sockets, and each socket gets one page of it
//!   (search and paging on the server, never the whole list).
//! - **chat**: an admin session's line goes to the worker's node (the
//!   store's worker record names it) and out over the worker's socket as a
//!   `chat_message`; the worker's `chat_response` goes back to the node of
//!   the admin session that wrote (remembered per worker, bounded), which
//!   keeps the history per session and worker (bounded) and hands it to
//!   that session's chat sockets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tracing::debug;

use crate::bus::NodeEvent;
use crate::core::event::{Encoded, Event};
use crate::core::{Core, Note};
use crate::error::{ClientError, ErrorCode};
use crate::store::{now_ms, WorkerRecord};
use crate::types::{NodeId, PeerId, RoomName};

/// How often deltas go out to admin sockets and log entries to other nodes.
pub const TICK: Duration = Duration::from_millis(250);
/// Ticks between two stats messages of a node (1 s).
pub const STATS_EVERY: u32 = 4;
/// A node not heard for this long has left the console's view.
pub const NODE_STALE: Duration = Duration::from_secs(5);
/// How long a read of the worker list serves every admin socket of a node.
pub const WORKERS_FRESH: Duration = Duration::from_secs(1);
/// Log entries each node keeps (the snapshot's log).
pub const LOG_KEEP: usize = 500;
/// Log entries a node holds for the bus while it cannot publish; older
/// ones are dropped (and counted in the next entry).
pub const LOG_PENDING_MAX: usize = 2000;
/// Largest page of the worker list.
pub const MAX_PAGE: usize = 200;
/// Longest chat line (bytes) an admin may send.
pub const MAX_CHAT_BYTES: usize = 4096;
/// Conversations (admin session, worker) a node keeps history for.
pub const MAX_CONVERSATIONS: usize = 1000;
/// Admin sessions a worker's node remembers per worker for its replies.
pub const MAX_SESSIONS_PER_WORKER: usize = 16;
/// The console's bus channel: a room channel under a name no client room
/// can have (room names exclude control characters).
const BUS_ROOM: &str = "\u{1}console";

/// One node as the console shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Its id.
    pub id: NodeId,
    /// The address its HTTP listener is bound to.
    pub addr: String,
    /// Seconds since it started.
    pub uptime_s: u64,
    /// Its WebSocket sessions (peers).
    pub connections: usize,
    /// Signals it routed per second (over the last second).
    pub signals_per_s: f64,
    /// Rooms with a member on it.
    pub rooms: usize,
    /// `ready`, `draining` or `redis-unavailable`.
    pub state: String,
}

/// One entry of the live log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Unix milliseconds.
    pub ts: u64,
    /// The node it happened on.
    pub node: NodeId,
    /// `connect`, `disconnect`, `register`, `endpoint`, `pairing`, `unpairing`,
    /// `node-joined`, `node-left`, `node-draining`, `redis-unavailable`,
    /// `redis-back`, `dropped`.
    pub kind: String,
    /// The peer or worker it is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The other worker of a pairing, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other: Option<String>,
    /// The pairing it is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairing: Option<String>,
    /// More words (an address, a reason).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// A chat line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatLine {
    /// `admin` or `worker`.
    pub from: String,
    /// The text.
    pub text: String,
    /// Unix milliseconds.
    pub ts: u64,
}

/// What nodes' consoles tell each other ([`NodeEvent::Console`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "kebab-case")]
enum Wire {
    /// On the bus channel: new log entries, and the sender's stats.
    Tick {
        #[serde(default)]
        node: Option<NodeView>,
        #[serde(default)]
        events: Vec<LogEntry>,
    },
    /// To a worker's node: an admin session's line for the worker.
    Chat {
        session: String,
        admin_node: NodeId,
        worker: PeerId,
        text: String,
    },
    /// To an admin session's node: a worker's reply, or why a line did
    /// not reach it.
    Reply {
        session: String,
        worker: PeerId,
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        error: Option<String>,
    },
}

/// A frame for admin sockets, shared by all of them.
pub type Frame = Arc<str>;

/// A chat socket's feed.
type ChatTx = mpsc::Sender<Frame>;

/// Chat lines by (admin session, worker), and the conversations oldest first.
type History = (
    HashMap<(String, PeerId), VecDeque<ChatLine>>,
    VecDeque<(String, PeerId)>,
);

/// The console's state on this node; see the module docs.
pub struct Console {
    core: Arc<Core>,
    started: Instant,
    /// The HTTP listener's bound address (set once bound).
    addr: OnceLock<String>,
    bus_room: RoomName,
    /// Every node heard from, with when it was last heard.
    nodes: Mutex<BTreeMap<NodeId, (NodeView, Instant)>>,
    /// The last [`LOG_KEEP`] entries, cluster-wide.
    log: Mutex<VecDeque<LogEntry>>,
    /// What the next delta carries.
    delta: Mutex<Delta>,
    /// This node's entries not yet published.
    pending: Mutex<Vec<LogEntry>>,
    /// Local admin sockets' feed of deltas.
    watchers: broadcast::Sender<Frame>,
    /// The worker list, and when it was read.
    workers: tokio::sync::Mutex<Option<(Instant, Arc<Vec<WorkerRecord>>)>>,
    /// Local chat sockets, by (admin session, worker).
    chats: Mutex<HashMap<(String, PeerId), Vec<ChatTx>>>,
    /// Chat history by (admin session, worker), oldest conversation first.
    history: Mutex<History>,
    /// For each local worker, the admin sessions that wrote to it (newest
    /// last) and their nodes: where its replies go.
    reply_to: Mutex<HashMap<PeerId, VecDeque<(String, NodeId)>>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

/// What changed since the last delta.
#[derive(Debug, Default)]
struct Delta {
    nodes: bool,
    events: Vec<LogEntry>,
    workers: bool,
}

impl Console {
    /// The console of `core`'s node; its task runs on the core's
    /// background tasks.
    pub fn new(core: Arc<Core>) -> Arc<Self> {
        let notes = core.activity.subscribe();
        let c = Arc::new(Self {
            bus_room: RoomName::from_trusted(BUS_ROOM),
            started: Instant::now(),
            addr: OnceLock::new(),
            nodes: Mutex::new(BTreeMap::new()),
            log: Mutex::new(VecDeque::new()),
            delta: Mutex::new(Delta::default()),
            pending: Mutex::new(Vec::new()),
            watchers: broadcast::channel(64).0,
            workers: tokio::sync::Mutex::new(None),
            chats: Mutex::new(HashMap::new()),
            history: Mutex::new((HashMap::new(), VecDeque::new())),
            reply_to: Mutex::new(HashMap::new()),
            core: core.clone(),
        });
        core.spawn(run(Arc::downgrade(&c), notes));
        c
    }

    /// Records the HTTP listener's bound address (shown in the node list).
    pub fn set_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.addr.set(addr.to_string());
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.core.id
    }

    /// The nodes in the view, by id; this node's entry as it is now.
    pub fn nodes(&self) -> Vec<NodeView> {
        let mut nodes = self.nodes.lock();
        let rate = nodes
            .get(&self.core.id)
            .map_or(0.0, |(v, _)| v.signals_per_s);
        nodes.insert(self.core.id.clone(), (self.own_view(rate), Instant::now()));
        nodes.values().map(|(v, _)| v.clone()).collect()
    }

    /// The last log entries, oldest first.
    pub fn log(&self) -> Vec<LogEntry> {
        self.log.lock().iter().cloned().collect()
    }

    /// A feed of delta frames (`{"type":"delta",...}`) for an admin socket.
    pub fn watch(&self) -> broadcast::Receiver<Frame> {
        self.watchers.subscribe()
    }

    /// The worker list, read from the store at most once per
    /// [`WORKERS_FRESH`] on this node.
    pub async fn workers(&self) -> Result<Arc<Vec<WorkerRecord>>, ClientError> {
        let mut cached = self.workers.lock().await;
        if let Some((at, list)) = cached.as_ref() {
            if at.elapsed() < WORKERS_FRESH {
                return Ok(list.clone());
            }
        }
        let mut list = self
            .core
            .store
            .list_workers()
            .await
            .map_err(crate::core::cluster_err)?;
        list.sort_by(|a, b| a.peer_id.as_str().cmp(b.peer_id.as_str()));
        let list = Arc::new(list);
        *cached = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// Forgets the cached worker list (after a pairing made here, so the
    /// page that answers it shows it).
    pub async fn workers_changed(&self) {
        *self.workers.lock().await = None;
    }

    fn own_view(&self, signals_per_s: f64) -> NodeView {
        let state = if self.core.is_draining() {
            "draining"
        } else if !self.core.bus.is_connected() {
            "redis-unavailable"
        } else {
            "ready"
        };
        NodeView {
            id: self.core.id.clone(),
            addr: self
                .addr
                .get()
                .cloned()
                .unwrap_or_else(|| self.core.cfg.server.listen.to_string()),
            uptime_s: self.started.elapsed().as_secs(),
            connections: self.core.hub.peer_count(),
            signals_per_s,
            rooms: self.core.hub.room_count(),
            state: state.into(),
        }
    }

    fn entry(&self, kind: &str) -> LogEntry {
        LogEntry {
            ts: now_ms(),
            node: self.core.id.clone(),
            kind: kind.into(),
            peer: None,
            other: None,
            pairing: None,
            detail: String::new(),
        }
    }

    /// A log entry of this node: into the view and the next delta at once,
    /// and onto the bus at the next tick.
    fn local(&self, e: LogEntry) {
        {
            let mut p = self.pending.lock();
            if p.len() >= LOG_PENDING_MAX {
                let dropped = p.len() - LOG_PENDING_MAX / 2;
                p.drain(..dropped);
                let mut d = self.entry("dropped");
                d.detail = format!("{dropped} log entries not published (the bus was away)");
                p.insert(0, d);
            }
            p.push(e.clone());
        }
        self.append(vec![e]);
    }

    fn append(&self, entries: Vec<LogEntry>) {
        if entries.is_empty() {
            return;
        }
        let workers = entries.iter().any(|e| {
            matches!(
                e.kind.as_str(),
                "register" | "endpoint" | "disconnect" | "pairing" | "unpairing" | "node-left"
            )
        });
        {
            let mut log = self.log.lock();
            for e in &entries {
                if log.len() >= LOG_KEEP {
                    log.pop_front();
                }
                log.push_back(e.clone());
            }
        }
        let mut d = self.delta.lock();
        d.workers |= workers;
        // A delta holds at most one log's worth: an admin sees the newest.
        d.events.extend(entries);
        if d.events.len() > LOG_KEEP {
            let over = d.events.len() - LOG_KEEP;
            d.events.drain(..over);
        }
    }

    fn heard(&self, view: NodeView) {
        let mut nodes = self.nodes.lock();
        let joined = !nodes.contains_key(&view.id);
        let id = view.id.clone();
        let was_draining = nodes.get(&id).is_some_and(|(v, _)| v.state == "draining");
        let draining = view.state == "draining";
        nodes.insert(id.clone(), (view, Instant::now()));
        drop(nodes);
        self.delta.lock().nodes = true;
        if joined {
            let mut e = self.entry("node-joined");
            e.node = id;
            e.detail = "heard for the first time".into();
            self.append(vec![e]);
        } else if draining && !was_draining && self.core.id != id {
            // A node's own draining entry comes with its events.
            debug!(node = %id, "node draining");
        }
    }

    /// A console message from another node.
    pub fn remote(self: &Arc<Self>, origin: &NodeId, text: &str) {
        let msg: Wire = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                debug!(origin = %origin, error = %e, "console message dropped");
                return;
            }
        };
        match msg {
            Wire::Tick { node, events } => {
                if let Some(v) = node {
                    if v.id == *origin {
                        self.heard(v);
                    }
                }
                self.append(events);
            }
            Wire::Chat {
                session,
                admin_node,
                worker,
                text,
            } => {
                let me = self.clone();
                self.core.spawn(async move {
                    if let Err(e) = me.to_worker(&session, &admin_node, &worker, &text) {
                        let r = Wire::Reply {
                            session,
                            worker,
                            text: None,
                            error: Some(e.message),
                        };
                        me.publish_to(&admin_node, &r).await;
                    }
                });
            }
            Wire::Reply {
                session,
                worker,
                text,
                error,
            } => match (text, error) {
                (Some(t), _) => self.reply_here(&session, &worker, t),
                (None, Some(e)) => self.error_here(&session, &worker, "worker-not-found", &e),
                (None, None) => {}
            },
        }
    }

    async fn publish_to(&self, node: &NodeId, w: &Wire) -> bool {
        let text = serde_json::to_string(w).expect("console messages serialize");
        matches!(
            self.core
                .publish_node(node, NodeEvent::Console { text })
                .await,
            Ok(n) if n > 0
        )
    }

    // ----------------------------------------------------------------- chat

    /// Opens a chat socket of `session` with `worker`: its history so far,
    /// and the feed of what follows.
    pub fn chat_open(
        &self,
        session: &str,
        worker: &PeerId,
    ) -> (Vec<ChatLine>, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(256);
        let key = (session.to_string(), worker.clone());
        self.chats.lock().entry(key.clone()).or_default().push(tx);
        let history = self
            .history
            .lock()
            .0
            .get(&key)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default();
        (history, rx)
    }

    /// Forgets chat sockets that have closed.
    pub fn chat_closed(&self, session: &str, worker: &PeerId) {
        let key = (session.to_string(), worker.clone());
        let mut chats = self.chats.lock();
        if let Some(v) = chats.get_mut(&key) {
            v.retain(|tx| !tx.is_closed());
            if v.is_empty() {
                chats.remove(&key);
            }
        }
    }

    fn remember(&self, session: &str, worker: &PeerId, line: ChatLine) {
        let key = (session.to_string(), worker.clone());
        let max = self.core.cfg.console.chat_history.max(1);
        let mut guard = self.history.lock();
        let (map, order) = &mut *guard;
        if !map.contains_key(&key) {
            if map.len() >= MAX_CONVERSATIONS {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
            order.push_back(key.clone());
        }
        let h = map.entry(key).or_default();
        if h.len() >= max {
            h.pop_front();
        }
        h.push_back(line);
    }

    fn feed(&self, session: &str, worker: &PeerId, frame: Frame) {
        let key = (session.to_string(), worker.clone());
        if let Some(v) = self.chats.lock().get(&key) {
            for tx in v {
                let _ = tx.try_send(frame.clone());
            }
        }
    }

    /// An admin session's line for `worker`, wherever it is connected.
    /// Errors: `invalid-message` (empty or too long), `worker-not-found`
    /// (unknown, or gone), `cluster-unavailable`.
    pub async fn chat_send(
        self: &Arc<Self>,
        session: &str,
        worker: &PeerId,
        text: &str,
    ) -> Result<(), ClientError> {
        if text.trim().is_empty() || text.len() > MAX_CHAT_BYTES {
            return Err(ClientError::new(
                ErrorCode::InvalidMessage,
                format!("`text` must be 1 to {MAX_CHAT_BYTES} bytes"),
            ));
        }
        let not_found = || {
            ClientError::new(
                ErrorCode::WorkerNotFound,
                format!("worker `{worker}` is not connected"),
            )
        };
        let rec = self
            .core
            .store
            .get_worker(worker)
            .await
            .map_err(crate::core::cluster_err)?
            .ok_or_else(not_found)?;
        if rec.node == self.core.id {
            self.to_worker(session, &self.core.id, worker, text)?;
        } else {
            let w = Wire::Chat {
                session: session.to_string(),
                admin_node: self.core.id.clone(),
                worker: worker.clone(),
                text: text.to_string(),
            };
            if !self.publish_to(&rec.node, &w).await {
                return Err(not_found());
            }
        }
        let line = ChatLine {
            from: "admin".into(),
            text: text.to_string(),
            ts: now_ms(),
        };
        self.remember(session, worker, line.clone());
        self.feed(session, worker, chat_frame(worker, &line));
        Ok(())
    }

    /// Sends a line to a worker connected to this node, and remembers
    /// where its replies go.
    fn to_worker(
        &self,
        session: &str,
        admin_node: &NodeId,
        worker: &PeerId,
        text: &str,
    ) -> Result<(), ClientError> {
        let Some(h) = self.core.hub.get(worker) else {
            return Err(ClientError::new(
                ErrorCode::WorkerNotFound,
                format!("worker `{worker}` is not connected"),
            ));
        };
        let msg = serde_json::json!({
            "type": "chat_message",
            "admin_session_id": session,
            "message_id": uuid::Uuid::new_v4().to_string(),
            "content": text,
            "from": "admin",
            "ts": now_ms(),
        });
        {
            let mut map = self.reply_to.lock();
            let list = map.entry(worker.clone()).or_default();
            list.retain(|(s, _)| s != session);
            if list.len() >= MAX_SESSIONS_PER_WORKER {
                list.pop_front();
            }
            list.push_back((session.to_string(), admin_node.clone()));
        }
        h.send(Event::Frame(Encoded::Text(msg.to_string())));
        Ok(())
    }

    /// A worker of this node answered (`chat_response`): to the admin
    /// session it names (one that wrote to it), else the last one that did.
    /// A reply no session asked for is dropped.
    pub async fn chat_reply(&self, worker: &PeerId, session: Option<&str>, text: String) {
        let to = {
            let map = self.reply_to.lock();
            let Some(list) = map.get(worker) else {
                debug!(worker = %worker, "chat_response with no admin session to go to");
                return;
            };
            match session {
                Some(s) => list.iter().find(|(x, _)| x == s).cloned(),
                None => list.back().cloned(),
            }
        };
        let Some((session, node)) = to else {
            debug!(worker = %worker, "chat_response names no session that wrote to it");
            return;
        };
        if node == self.core.id {
            self.reply_here(&session, worker, text);
        } else {
            let w = Wire::Reply {
                session,
                worker: worker.clone(),
                text: Some(text),
                error: None,
            };
            self.publish_to(&node, &w).await;
        }
    }

    /// Forgets a worker of this node that is gone.
    fn worker_gone(&self, worker: &PeerId) {
        self.reply_to.lock().remove(worker);
    }

    fn reply_here(&self, session: &str, worker: &PeerId, text: String) {
        let line = ChatLine {
            from: "worker".into(),
            text,
            ts: now_ms(),
        };
        self.remember(session, worker, line.clone());
        self.feed(session, worker, chat_frame(worker, &line));
    }

    fn error_here(&self, session: &str, worker: &PeerId, code: &str, message: &str) {
        let f = serde_json::json!({"type": "error", "code": code, "message": message});
        self.feed(session, worker, f.to_string().into());
    }
}

/// A chat socket's frame for one line.
pub fn chat_frame(worker: &PeerId, line: &ChatLine) -> Frame {
    serde_json::json!({
        "type": "chat",
        "worker": worker,
        "from": line.from,
        "text": line.text,
        "ts": line.ts,
    })
    .to_string()
    .into()
}

/// The log entry of a note.
fn note_entry(c: &Console, n: Note) -> LogEntry {
    let mut e = c.entry("");
    match n {
        Note::Connected {
            peer,
            door,
            observed,
        } => {
            e.kind = "connect".into();
            e.peer = Some(peer.to_string());
            e.detail = format!("{door} from {observed}");
        }
        Note::Disconnected { peer, reason } => {
            c.worker_gone(&peer);
            e.kind = "disconnect".into();
            e.peer = Some(peer.to_string());
            e.detail = reason.into();
        }
        Note::Endpoint { peer, udp } => {
            e.kind = "endpoint".into();
            e.peer = Some(peer.to_string());
            if let Some(u) = udp {
                e.detail = format!("udp {u}");
            }
        }
        Note::WorkerRegistered { peer } => {
            e.kind = "register".into();
            e.peer = Some(peer.to_string());
        }
        Note::Paired {
            pairing_id,
            initiator,
            responder,
        } => {
            e.kind = "pairing".into();
            e.peer = Some(initiator.to_string());
            e.other = Some(responder.to_string());
            e.pairing = Some(pairing_id);
        }
        Note::PairEnded {
            pairing_id,
            peer,
            reason,
        } => {
            e.kind = "unpairing".into();
            e.peer = Some(peer.to_string());
            e.pairing = Some(pairing_id);
            e.detail = reason.into();
        }
    }
    e
}

/// The console's task: every [`TICK`], turn notes into log entries,
/// publish this node's new entries (and its stats every second), drop
/// nodes not heard from, and send the delta to local admin sockets.
async fn run(console: Weak<Console>, mut notes: broadcast::Receiver<Note>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut subscribed, mut n, mut last_signals, mut last_at) =
        (false, 0u32, 0u64, Instant::now());
    let (mut was_connected, mut was_draining) = (true, false);
    loop {
        tick.tick().await;
        let Some(c) = console.upgrade() else { return };
        if !subscribed {
            subscribed = c.core.bus.subscribe_room(&c.bus_room).await.is_ok();
        }
        loop {
            match notes.try_recv() {
                Ok(note) => {
                    let e = note_entry(&c, note);
                    c.local(e);
                }
                Err(broadcast::error::TryRecvError::Lagged(k)) => {
                    let mut e = c.entry("dropped");
                    e.detail = format!("{k} events not logged (too many at once)");
                    c.local(e);
                }
                Err(_) => break,
            }
        }
        let connected = c.core.bus.is_connected();
        if connected != was_connected {
            was_connected = connected;
            c.local(c.entry(if connected {
                "redis-back"
            } else {
                "redis-unavailable"
            }));
        }
        let draining = c.core.is_draining();
        if draining && !was_draining {
            was_draining = true;
            c.local(c.entry("node-draining"));
        }
        let stats = n % STATS_EVERY == 0 || draining;
        n = n.wrapping_add(1);
        let view = stats.then(|| {
            let now = c.core.activity.signals.load(Ordering::Relaxed);
            let secs = last_at.elapsed().as_secs_f64().max(0.001);
            let rate = (now.saturating_sub(last_signals)) as f64 / secs;
            (last_signals, last_at) = (now, Instant::now());
            let v = c.own_view((rate * 10.0).round() / 10.0);
            c.heard(v.clone());
            v
        });
        let events = std::mem::take(&mut *c.pending.lock());
        if (view.is_some() || !events.is_empty()) && connected {
            let w = Wire::Tick {
                node: view,
                events: events.clone(),
            };
            let text = serde_json::to_string(&w).expect("console messages serialize");
            if c.core
                .publish_room(&c.bus_room, NodeEvent::Console { text })
                .await
                .is_err()
            {
                put_back(&c, events);
            }
        } else if !connected {
            put_back(&c, events);
        }
        // Nodes not heard from.
        let gone: Vec<NodeId> = {
            let mut nodes = c.nodes.lock();
            let stale: Vec<NodeId> = nodes
                .iter()
                .filter(|(id, (_, at))| **id != c.core.id && at.elapsed() > NODE_STALE)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &stale {
                nodes.remove(id);
            }
            stale
        };
        if !gone.is_empty() {
            let entries = gone
                .into_iter()
                .map(|id| {
                    let mut e = c.entry("node-left");
                    e.node = id;
                    e.detail = format!("not heard for {} s", NODE_STALE.as_secs());
                    e
                })
                .collect();
            c.append(entries);
            c.delta.lock().nodes = true;
        }
        let d = std::mem::take(&mut *c.delta.lock());
        if (d.nodes || !d.events.is_empty() || d.workers) && c.watchers.receiver_count() > 0 {
            if d.workers {
                *c.workers.lock().await = None;
            }
            let frame = serde_json::json!({
                "type": "delta",
                "nodes": if d.nodes { Some(c.nodes()) } else { None },
                "events": d.events,
                "workers_changed": d.workers,
            });
            let _ = c.watchers.send(frame.to_string().into());
        }
    }
}

/// Entries that could not be published wait for the next tick (bounded).
fn put_back(c: &Console, events: Vec<LogEntry>) {
    let mut p = c.pending.lock();
    let newer = std::mem::take(&mut *p);
    *p = events;
    p.extend(newer);
    if p.len() > LOG_PENDING_MAX {
        let over = p.len() - LOG_PENDING_MAX;
        p.drain(..over);
    }
}

/// One page of workers matching `search` (a substring of the id, node or
/// an address; empty: all), in id order.
pub fn page<'a>(
    list: &'a [WorkerRecord],
    search: &str,
    offset: usize,
    limit: usize,
) -> (usize, Vec<&'a WorkerRecord>) {
    let limit = limit.clamp(1, MAX_PAGE);
    let needle = search.trim().to_lowercase();
    let matches = |w: &&WorkerRecord| {
        needle.is_empty()
            || w.peer_id.as_str().to_lowercase().contains(&needle)
            || w.node.as_str().to_lowercase().contains(&needle)
            || w.observed_addr.contains(&needle)
            || w.udp.as_deref().is_some_and(|u| u.contains(&needle))
            || w.public_ip.as_deref().is_some_and(|u| u.contains(&needle))
    };
    if needle.is_empty() {
        let items = list.iter().skip(offset).take(limit).collect();
        return (list.len(), items);
    }
    let mut total = 0;
    let mut items = Vec::new();
    for w in list.iter().filter(matches) {
        if total >= offset && items.len() < limit {
            items.push(w);
        }
        total += 1;
    }
    (total, items)
}

/// A worker as the console shows it.
pub fn worker_view(w: &WorkerRecord) -> serde_json::Value {
    serde_json::json!({
        "id": w.peer_id,
        "node": w.node,
        "dialect": w.door,
        "observed_addr": w.observed_addr,
        "public_ip": w.public_ip,
        "stun": w.udp,
        "state": w.state,
        "paired_with": w.partner,
        "pairing_id": w.pairing_id,
        "since": w.since_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Door, WorkerConn};

    fn w(id: &str, node: &str) -> WorkerRecord {
        WorkerRecord::new(&WorkerConn {
            peer_id: PeerId::from_trusted(id),
            node: NodeId::from_trusted(node),
            epoch: 1,
            door: Door::LegacyWorker,
            observed_addr: "198.51.100.1:5000".into(),
        })
    }

    #[test]
    fn pages_search_and_count_on_the_server() {
        let list: Vec<WorkerRecord> = (0..120)
            .map(|i| {
                w(
                    &format!("w{i:03}"),
                    if i % 2 == 0 { "node-a" } else { "node-b" },
                )
            })
            .collect();
        let (total, items) = page(&list, "", 100, 50);
        assert_eq!(total, 120);
        let ids: Vec<&str> = items.iter().map(|w| w.peer_id.as_str()).collect();
        assert_eq!(ids.first(), Some(&"w100"));
        assert_eq!(ids.len(), 20);
        let (total, items) = page(&list, "NODE-B", 10, 5);
        assert_eq!(total, 60);
        assert_eq!(items[0].peer_id.as_str(), "w021");
        assert_eq!(items.len(), 5);
        let (total, items) = page(&list, "w11", 0, 1000);
        assert_eq!((total, items.len()), (10, 10));
        assert_eq!(page(&list, "nothing", 0, 10).0, 0);
        // The limit is bounded.
        assert_eq!(page(&list, "", 0, 10_000).1.len(), MAX_PAGE.min(120));
    }
}
