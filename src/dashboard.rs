//! The dashboard door's channels and room registry, on this node and across
//! the cluster (LEGACY-PROTOCOLS.md §3; docs/DOORS.md, "Dashboard").
//!
//! The door ([`crate::dialect::dashboard`], [`crate::http::dashboard`]) is
//! thin: it reads frames and calls this part, which holds what the node
//! shares between its dashboard sockets and with other nodes:
//!
//! - **channels**: which local sockets subscribed to which channel. A
//!   frame relayed on a channel goes to the local subscribers at once
//!   (one shared copy of its bytes) and, in one publish, to every other
//!   node, each of which hands it to its own subscribers. Channels are not
//!   core rooms: a core room keeps every member in the store and tells
//!   every member of every join, which for one channel of 10,000 dashboards
//!   is 10,000 store entries and 10^8 presence events; a channel is a
//!   per-node index and one bus channel for the door.
//! - **the room registry** (rooms, participants) lives in the store
//!   ([`crate::store::dashboard`]): every change is one atomic script that
//!   returns the whole list with a version. The node that made it delivers
//!   the list to its local subscribers of `webrtc-dashboard-rooms` and
//!   publishes it once; every other node delivers it to its own. A node
//!   drops a list older than the last one it delivered, so lists published
//!   by two nodes at once cannot leave a stale one behind.
//! - **the periodic list**: each node, `room_list_interval_ms` after the
//!   last list it delivered (periodic or a change's), reads the list once
//!   and sends it to its own subscribers (while rooms exist). So every
//!   subscriber gets a list at least once per period but no periodic one
//!   right after a change's, and the cost is one store read per node plus
//!   one frame per subscriber: it grows with the subscribers, not with
//!   subscribers × nodes (docs/BENCHMARKS.md).
//! - **one copy of a frame per node**: a list (or a relayed frame) is
//!   formatted once per node and shared (`Arc<Event>`) by every local
//!   subscriber's queue; each connection writes it from that copy
//!   ([`crate::dialect::Encoder::encode_ref`]).
//! - **client counts**: each node keeps its number of dashboard sockets in
//!   the store; a change is published (at most one publish per
//!   [`COUNT_COALESCE`]), and every node reads the total and sends
//!   `client_count` to each of its dashboard sockets.
//! - **cleanup**: a socket that closes leaves what it joined; a node that
//!   dies has its entries removed by whichever live node sweeps first
//!   (every `cluster.heartbeat_ms`; the store records what each node's
//!   sockets joined), and an outage is repaired by [`Dashboard::restore`]
//!   from what the node's sockets hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::bus::{NodeEvent, WarnEvery};
use crate::core::event::{Encoded, Event};
use crate::core::hub::{queued_cost, ConnHandle};
use crate::core::{cluster_err, Core};
use crate::error::{ClientError, ErrorCode};
use crate::metrics as m;
use crate::store::dashboard::{
    DashCount, DashJoin, DashLimits, DashList, DashParticipant, DashRefusal, DashRoom,
};
use crate::store::{now_ms, StoreError};
use crate::types::RoomName;

/// The channel of the room registry: the only one whose frames the server
/// reads (rules 4 to 7 of LEGACY-PROTOCOLS.md §3.2).
pub const ROOMS_CHANNEL: &str = "webrtc-dashboard-rooms";

/// The bus channel of the door: a room channel under a name no client room
/// can have (room names exclude control characters), so the bus needs
/// nothing new and the rooms part never touches it.
const BUS_ROOM: &str = "\u{1}dashboard";

/// Least time between two `client_count` fan-outs of one node: a burst of
/// connections (a reconnect storm) costs one count per socket per
/// window, not one per connection per socket.
pub const COUNT_COALESCE: Duration = Duration::from_millis(100);

/// Store failures of this part are logged at most once per 10 s.
static STORE_WARN: WarnEvery = WarnEvery::new(10_000);

/// The door's shared state on this node; see the module docs.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard").finish_non_exhaustive()
    }
}

struct Inner {
    core: Arc<Core>,
    /// When the node started (`/health`'s `uptime`).
    started: Instant,
    /// Channel -> the local sockets subscribed to it (by connection epoch).
    channels: RwLock<HashMap<String, HashMap<u64, ConnHandle>>>,
    /// The local dashboard sockets (by epoch) and what each joined.
    sockets: Mutex<HashMap<u64, Socket>>,
    /// This node's socket count as last given to the store (its generation
    /// orders the writes).
    count: Mutex<DashCount>,
    /// The last room list delivered to local subscribers; held while one
    /// is delivered, so two lists never interleave.
    delivered: Mutex<Delivered>,
    /// Wakes the count task.
    count_wake: Arc<Notify>,
    /// A local socket came or went since the last count fan-out (so the
    /// other nodes must be told).
    count_changed_here: AtomicBool,
    /// The door's bus channel.
    bus_room: RoomName,
}

/// The last room list a node delivered to its subscribers.
struct Delivered {
    /// Its version: an older list is dropped.
    version: u64,
    /// Its `rooms` JSON (`[]` before the first: what a new subscriber
    /// knows), so that a restore that changes nothing sends nothing.
    rooms: String,
    /// When it was sent: the periodic list is due a period after the last
    /// list, whatever sent it.
    at: Option<tokio::time::Instant>,
}

/// A local dashboard socket.
struct Socket {
    handle: ConnHandle,
    /// Participants it added (or joined again), for its cleanup and for
    /// [`Dashboard::restore`]. Bounded by `limits.max_rooms_per_peer`.
    joined: Vec<DashParticipant>,
}

/// The error for a refused registry change.
fn refused(r: DashRefusal, limits: &DashLimits) -> ClientError {
    match r {
        DashRefusal::TooManyRooms => ClientError::new(
            ErrorCode::RegistryFull,
            format!("the registry holds {} rooms, its most", limits.max_rooms),
        ),
        DashRefusal::RoomFull => ClientError::new(
            ErrorCode::RoomFull,
            format!(
                "the room has {} participants, its most",
                limits.max_participants
            ),
        ),
        DashRefusal::ListTooLarge => ClientError::new(
            ErrorCode::RegistryFull,
            format!(
                "the room list would be larger than {} bytes",
                limits.max_list_bytes
            ),
        ),
    }
}

impl Dashboard {
    /// The part for `core`'s node (its tasks start with [`Self::start`]).
    pub fn new(core: Arc<Core>) -> Self {
        Self {
            inner: Arc::new(Inner {
                core,
                started: Instant::now(),
                channels: RwLock::new(HashMap::new()),
                sockets: Mutex::new(HashMap::new()),
                count: Mutex::new(DashCount {
                    gen: now_ms().saturating_mul(1_000),
                    count: 0,
                }),
                delivered: Mutex::new(Delivered {
                    version: 0,
                    rooms: "[]".to_string(),
                    at: None,
                }),
                count_wake: Arc::new(Notify::new()),
                count_changed_here: AtomicBool::new(false),
                bus_room: RoomName::from_trusted(BUS_ROOM),
            }),
        }
    }

    /// True when the door is served (a listener or a prefix).
    pub fn enabled(&self) -> bool {
        self.inner.core.cfg.doors.dashboard.enabled()
    }

    /// Starts the background tasks (count fan-out, periodic list, sweep),
    /// when the door is served.
    pub fn start(&self) {
        if !self.enabled() {
            return;
        }
        let core = &self.inner.core;
        core.spawn(count_task(
            Arc::downgrade(&self.inner),
            self.inner.count_wake.clone(),
        ));
        core.spawn(list_task(Arc::downgrade(&self.inner)));
        core.spawn(sweep_task(Arc::downgrade(&self.inner)));
    }

    /// How long the node has run.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The registry's bounds.
    pub fn limits(&self) -> DashLimits {
        self.inner.limits()
    }

    /// A dashboard socket opened: counts it and sends it the count (the
    /// first of the two `client_count` a new socket gets; the fan-out that
    /// follows is the second).
    pub async fn connect(&self, handle: &ConnHandle) {
        let i = &self.inner;
        let count = {
            let mut s = i.sockets.lock();
            s.insert(
                handle.epoch,
                Socket {
                    handle: handle.clone(),
                    joined: Vec::new(),
                },
            );
            i.next_count(&s)
        };
        let total = match i.core.store.dash_set_count(&i.core.id, count).await {
            Ok(t) => t,
            Err(e) => {
                i.store_failed("count", &e);
                count.count
            }
        };
        handle.send(frame(client_count(total)));
        i.count_changed();
    }

    /// A dashboard socket closed: it leaves its channels and what it
    /// joined (the others are told the new list if that changed anything),
    /// and the count goes down.
    pub async fn disconnect(&self, epoch: u64, channels: &[String]) {
        let i = &self.inner;
        {
            let mut ch = i.channels.write();
            for c in channels {
                if let Some(subs) = ch.get_mut(c.as_str()) {
                    subs.remove(&epoch);
                    if subs.is_empty() {
                        ch.remove(c.as_str());
                    }
                }
            }
        }
        let (socket, count) = {
            let mut s = i.sockets.lock();
            let socket = s.remove(&epoch);
            (socket, i.next_count(&s))
        };
        let Some(socket) = socket else { return };
        let joined: Vec<(String, String)> = socket
            .joined
            .into_iter()
            .map(|p| (p.room, p.user))
            .collect();
        match i
            .core
            .store
            .dash_disconnect(&i.core.id, &joined, count)
            .await
        {
            Ok(list) if !joined.is_empty() => i.rooms_changed(&list).await,
            Ok(_) => {}
            Err(e) => i.store_failed("disconnect", &e),
        }
        i.count_changed();
    }

    /// Subscribes a socket to a channel (the caller bounds how many).
    pub fn subscribe(&self, handle: &ConnHandle, channel: &str) {
        self.inner
            .channels
            .write()
            .entry(channel.to_string())
            .or_default()
            .insert(handle.epoch, handle.clone());
    }

    /// Unsubscribes a socket from a channel.
    pub fn unsubscribe(&self, epoch: u64, channel: &str) {
        let mut ch = self.inner.channels.write();
        if let Some(subs) = ch.get_mut(channel) {
            subs.remove(&epoch);
            if subs.is_empty() {
                ch.remove(channel);
            }
        }
    }

    /// Relays a frame, byte for byte, to every other subscriber of
    /// `channel`, on every node.
    pub async fn relay(
        &self,
        from: u64,
        channel: &str,
        text: &str,
        received: Instant,
    ) -> Result<(), ClientError> {
        let i = &self.inner;
        i.fanout(channel, frame(text.to_string()), Some(from), Some(received));
        let event = NodeEvent::DashRelay {
            channel: channel.to_string(),
            text: text.to_string(),
        };
        i.core.publish_room(&i.bus_room, event).await
    }

    /// `room-created`: creates (or replaces) a room and tells every
    /// subscriber of the rooms channel.
    pub async fn create_room(&self, room: &DashRoom) -> Result<(), ClientError> {
        let i = &self.inner;
        let limits = i.limits();
        match i.core.store.dash_create(room, &limits).await {
            Ok(Ok(list)) => {
                i.rooms_changed(&list).await;
                Ok(())
            }
            Ok(Err(r)) => Err(refused(r, &limits)),
            Err(e) => Err(cluster_err(e)),
        }
    }

    /// `user-joined-room` from socket `epoch`: adds the participant if the
    /// room exists (false when it does not: nothing happened) and tells
    /// every subscriber of the rooms channel.
    pub async fn join_room(&self, epoch: u64, p: &DashParticipant) -> Result<bool, ClientError> {
        let i = &self.inner;
        let limits = i.limits();
        // Recorded on the socket first, so that a restore running meanwhile
        // keeps it; taken back if the store refuses.
        let added = {
            let mut s = i.sockets.lock();
            let Some(sock) = s.get_mut(&epoch) else {
                return Ok(false);
            };
            if sock.joined.contains(p) {
                false
            } else {
                let max = i.core.cfg.limits.max_rooms_per_peer;
                if sock.joined.len() >= max {
                    return Err(ClientError::new(
                        ErrorCode::TooManyRooms,
                        format!("a socket may join at most {max} rooms"),
                    ));
                }
                sock.joined.push(p.clone());
                true
            }
        };
        let undo = || {
            if added {
                if let Some(sock) = i.sockets.lock().get_mut(&epoch) {
                    sock.joined.retain(|q| q != p);
                }
            }
        };
        match i.core.store.dash_join(&i.core.id, p, &limits).await {
            Ok(DashJoin::Joined(list)) => {
                i.rooms_changed(&list).await;
                Ok(true)
            }
            Ok(DashJoin::NoRoom) => {
                undo();
                Ok(false)
            }
            Ok(DashJoin::Refused(r)) => {
                undo();
                Err(refused(r, &limits))
            }
            Err(e) => {
                // It may have run: kept, and the next restore settles it.
                i.store_failed("join", &e);
                Err(cluster_err(e))
            }
        }
    }

    /// `user-left-room` from socket `epoch`: removes the participant (the
    /// room goes when it empties) and tells every subscriber of the rooms
    /// channel, changed or not, as the old server did.
    pub async fn leave_room(&self, epoch: u64, room: &str, user: &str) -> Result<(), ClientError> {
        let i = &self.inner;
        let list = i
            .core
            .store
            .dash_leave(&i.core.id, room, user)
            .await
            .map_err(cluster_err)?;
        if let Some(sock) = i.sockets.lock().get_mut(&epoch) {
            sock.joined.retain(|p| !(p.room == room && p.user == user));
        }
        i.rooms_changed(&list).await;
        Ok(())
    }

    /// `room-list-request`: the list, to the requester only.
    pub async fn send_list(&self, handle: &ConnHandle) -> Result<(), ClientError> {
        let list = self
            .inner
            .core
            .store
            .dash_list()
            .await
            .map_err(cluster_err)?;
        metrics::counter!(m::DASHBOARD_ROOM_LISTS, "trigger" => "request").increment(1);
        handle.send(frame(room_list(&list.json)));
        Ok(())
    }

    /// Dashboard sockets over every node, and the room list (`/health`).
    pub async fn status(&self) -> Result<(u64, DashList), StoreError> {
        let store = &self.inner.core.store;
        let list = store.dash_list().await?;
        let clients = store.dash_clients().await?;
        Ok((clients, list))
    }

    /// A dashboard event from another node.
    pub fn deliver_remote(&self, event: NodeEvent) {
        let i = &self.inner;
        match event {
            NodeEvent::DashRelay { channel, text } => {
                i.fanout(&channel, frame(text), None, None);
            }
            NodeEvent::DashRooms { version, rooms } => {
                i.deliver_list(version, &rooms, "change");
            }
            NodeEvent::DashCount {} => i.count_wake.notify_one(),
            _ => {}
        }
    }

    /// Makes the store hold what this node holds (after an outage, or a
    /// node declared dead while it lived; also at start, which clears what
    /// an earlier run under the same node id left): its count and what its
    /// sockets joined. Everyone hears the count again, and the list when
    /// the restore changed the registry; when it did not, only this node's
    /// subscribers, and only if they hold another list (none yet counts as
    /// `[]`), so a restore that changes nothing sends no list.
    pub async fn restore(&self) -> Result<(), StoreError> {
        if !self.enabled() {
            return Ok(());
        }
        self.inner.restore().await
    }
}

impl Inner {
    fn limits(&self) -> DashLimits {
        let d = &self.core.cfg.doors.dashboard;
        DashLimits {
            max_rooms: d.max_rooms,
            max_participants: d.max_participants,
            max_list_bytes: d.max_list_bytes,
        }
    }

    /// The next count of this node (call with the sockets locked, so that
    /// generations follow the order of the changes).
    fn next_count(&self, sockets: &HashMap<u64, Socket>) -> DashCount {
        let mut c = self.count.lock();
        c.gen += 1;
        c.count = sockets.len() as u64;
        *c
    }

    fn store_failed(&self, op: &'static str, e: &StoreError) {
        if let Some(held) = STORE_WARN.allow() {
            warn!(op, error = %e, held_back = held, "dashboard registry call failed; will restore");
        }
        // The maintenance loop registers everything again, this part's
        // state included (`restore`).
        self.core.mark_dirty();
    }

    /// A local socket came or went: fan the count out (and tell the other
    /// nodes).
    fn count_changed(&self) {
        self.count_changed_here.store(true, Ordering::Release);
        self.count_wake.notify_one();
    }

    /// Pushes one shared frame to the local subscribers of `channel`
    /// (except the connection `except`).
    fn fanout(
        &self,
        channel: &str,
        msg: Event,
        except: Option<u64>,
        received: Option<Instant>,
    ) -> usize {
        let msg = Arc::new(msg);
        let cost = queued_cost(&msg);
        let ch = self.channels.read();
        let Some(subs) = ch.get(channel) else {
            return 0;
        };
        let mut n = 0;
        for (epoch, h) in subs {
            if Some(*epoch) != except {
                h.push_costed(msg.clone(), cost, received);
                n += 1;
            }
        }
        n
    }

    /// Sends a list to the local subscribers of the rooms channel unless
    /// a newer one was sent already.
    fn deliver_list(&self, version: u64, rooms: &str, trigger: &'static str) {
        let mut delivered = self.delivered.lock();
        if version < delivered.version {
            return;
        }
        delivered.version = version;
        delivered.at = Some(tokio::time::Instant::now());
        if delivered.rooms != rooms {
            delivered.rooms = rooms.to_string();
        }
        if self.fanout(ROOMS_CHANNEL, frame(room_list(rooms)), None, None) > 0 {
            metrics::counter!(m::DASHBOARD_ROOM_LISTS, "trigger" => trigger).increment(1);
        }
    }

    /// A change made on this node: its subscribers get the list now, the
    /// other nodes' through one publish.
    async fn rooms_changed(&self, list: &DashList) {
        self.deliver_list(list.version, &list.json, "change");
        let event = NodeEvent::DashRooms {
            version: list.version,
            rooms: list.json.clone(),
        };
        if self.core.publish_room(&self.bus_room, event).await.is_err() {
            // Logged by `cluster_err`; the other nodes' next periodic list
            // carries the change.
            debug!("dashboard room list not published");
        }
    }

    fn rooms_subscribers(&self) -> usize {
        self.channels
            .read()
            .get(ROOMS_CHANNEL)
            .map_or(0, HashMap::len)
    }

    async fn restore(&self) -> Result<(), StoreError> {
        let (count, held) = {
            let s = self.sockets.lock();
            let held: Vec<DashParticipant> =
                s.values().flat_map(|x| x.joined.iter().cloned()).collect();
            (self.next_count(&s), held)
        };
        // The version before tells whether the restore changed the registry
        // (it bumps the version only then; a change by another node in
        // between only costs a list more).
        let before = self.core.store.dash_list().await.ok().map(|l| l.version);
        let list = self
            .core
            .store
            .dash_restore(&self.core.id, count, &held)
            .await?;
        // Changed: everyone hears the list. Not changed: the other nodes'
        // subscribers have it already, and this node's get it only if it is
        // not the one they hold (`[]` at start): the old server sent no list
        // when nothing changed, and a node starting (or restoring) with
        // nothing to change once sent every subscriber of every node an
        // empty list. The store may have lost its versions (a Redis
        // restart): the next list is delivered whatever its version.
        let held_here = {
            let mut d = self.delivered.lock();
            d.version = 0;
            d.rooms == list.json
        };
        if before != Some(list.version) {
            self.rooms_changed(&list).await;
        } else if !held_here {
            self.deliver_list(list.version, &list.json, "change");
        }
        self.count_changed();
        Ok(())
    }
}

/// Sends `client_count` to every local dashboard socket after a change, at
/// most once per [`COUNT_COALESCE`]; tells the other nodes first when the
/// change was local.
async fn count_task(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(i) = inner.upgrade() else { return };
        if i.count_changed_here.swap(false, Ordering::AcqRel) {
            let _ = i
                .core
                .publish_room(&i.bus_room, NodeEvent::DashCount {})
                .await;
        }
        match i.core.store.dash_clients().await {
            Ok(total) => {
                let msg = Arc::new(frame(client_count(total)));
                let cost = queued_cost(&msg);
                for s in i.sockets.lock().values() {
                    s.handle.push_costed(msg.clone(), cost, None);
                }
            }
            Err(e) => debug!(error = %e, "dashboard count not read"),
        }
        drop(i);
        tokio::time::sleep(COUNT_COALESCE).await;
    }
}

/// Every `room_list_interval_ms` after the last list this node delivered
/// (a change's list restarts the period: its subscribers have the list
/// then, so a periodic one right after it would only repeat it): the list
/// to this node's subscribers of the rooms channel, while rooms exist (one
/// store read per node).
async fn list_task(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => i.core.cfg.doors.dashboard.room_list_interval,
        None => return,
    };
    let mut due = tokio::time::Instant::now() + period;
    loop {
        tokio::time::sleep_until(due).await;
        let Some(i) = inner.upgrade() else { return };
        let now = tokio::time::Instant::now();
        let last = i.delivered.lock().at;
        if let Some(next) = last.map(|at| at + period).filter(|next| *next > now) {
            due = next;
            continue;
        }
        due = now + period;
        if i.rooms_subscribers() == 0 {
            continue;
        }
        match i.core.store.dash_list().await {
            Ok(list) if list.rooms > 0 => i.deliver_list(list.version, &list.json, "periodic"),
            Ok(_) => {}
            Err(e) => debug!(error = %e, "dashboard room list not read"),
        }
    }
}

/// Every `cluster.heartbeat_ms`: subscribes the door's bus channel (until
/// it is), restores this node's entries once at start, and removes the
/// entries of dead nodes.
async fn sweep_task(inner: Weak<Inner>) {
    let (period, stale) = match inner.upgrade() {
        Some(i) => (i.core.cfg.cluster.heartbeat, i.core.cfg.cluster.node_ttl),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut subscribed, mut restored, mut ready) = (false, false, false);
    loop {
        tick.tick().await;
        let Some(i) = inner.upgrade() else { return };
        if !subscribed {
            match i.core.bus.subscribe_room(&i.bus_room).await {
                Ok(()) => subscribed = true,
                Err(e) => debug!(error = %e, "dashboard bus channel not subscribed yet"),
            }
        }
        if !restored {
            match i.restore().await {
                Ok(()) => restored = true,
                Err(e) => debug!(error = %e, "dashboard entries not restored yet"),
            }
        }
        if !ready && subscribed && restored {
            ready = true;
            info!("dashboard door ready: cluster channel subscribed, entries restored");
        }
        match i.core.store.dash_sweep(&i.core.id, stale).await {
            Ok(swept) if swept.nodes > 0 => {
                metrics::counter!(m::DASHBOARD_NODES_SWEPT).increment(swept.nodes as u64);
                info!(
                    nodes = swept.nodes,
                    "removed the dashboard entries of dead nodes"
                );
                if let Some(list) = swept.list {
                    i.rooms_changed(&list).await;
                }
                i.count_changed();
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "dashboard sweep failed"),
        }
    }
}

// ---------------------------------------------------------------------------
// The frames the server writes (compact JSON, ISO 8601 timestamps with
// milliseconds and `Z`, keys in the old server's order).
// ---------------------------------------------------------------------------

/// A door frame, ready for the socket.
pub fn frame(text: String) -> Event {
    Event::Frame(Encoded::Text(text))
}

/// Now as `2025-11-21T00:00:00.000Z` (JavaScript's `toISOString`).
pub fn iso_now() -> String {
    iso_time(now_ms())
}

/// Unix milliseconds as `2025-11-21T00:00:00.000Z`.
pub fn iso_time(ms: u64) -> String {
    format!("{}.{:03}Z", crate::time::iso_seconds(ms / 1000), ms % 1000)
}

/// `{"type":"client_count","count":n,"timestamp":"..."}`.
pub fn client_count(n: u64) -> String {
    format!(
        r#"{{"type":"client_count","count":{n},"timestamp":"{}"}}"#,
        iso_now()
    )
}

/// `{"type":"server-room-list","channel":"webrtc-dashboard-rooms","rooms":[...],"timestamp":"..."}`.
pub fn room_list(rooms: &str) -> String {
    format!(
        r#"{{"type":"server-room-list","channel":"{ROOMS_CHANNEL}","rooms":{rooms},"timestamp":"{}"}}"#,
        iso_now()
    )
}

/// `{"type":"pong","timestamp":"..."}`.
pub fn pong() -> String {
    format!(r#"{{"type":"pong","timestamp":"{}"}}"#, iso_now())
}

/// `{"type":"echo","original":"<text>","timestamp":"..."}`.
pub fn echo(original: &str) -> String {
    #[derive(Serialize)]
    struct Echo<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        original: &'a str,
        timestamp: String,
    }
    serde_json::to_string(&Echo {
        ty: "echo",
        original,
        timestamp: iso_now(),
    })
    .expect("a string serializes")
}

/// The door's error frame (the old server had none):
/// `{"type":"error","code":"...","message":"...","timestamp":"..."}`, with
/// no `channel`, so the browser client, which reads only frames of its
/// channel, ignores it.
pub fn error(e: &ClientError) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        code: &'static str,
        message: &'a str,
        timestamp: String,
    }
    serde_json::to_string(&Error {
        ty: "error",
        code: e.code.as_str(),
        message: &e.message,
        timestamp: iso_now(),
    })
    .expect("strings serialize")
}

/// A JSON string literal of `s`, escaped as JavaScript's `JSON.stringify`
/// escapes it (quotes, backslashes, control characters).
fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The fields of a `room-created` the registry keeps (§3.2: only these
/// survive; every other field the client sends is dropped).
#[derive(Debug, Clone, Default)]
pub struct RoomFields<'a> {
    /// `id`.
    pub id: &'a str,
    /// `name` (omitted when absent, as `JSON.stringify` omits `undefined`).
    pub name: Option<&'a str>,
    /// `description` (`""` when absent or empty).
    pub description: Option<&'a str>,
    /// `host` (omitted when absent).
    pub host: Option<&'a str>,
    /// `hostId` (omitted when absent).
    pub host_id: Option<&'a str>,
    /// `createdAt` as the client sent it (the server's time when absent or
    /// empty).
    pub created_at: Option<&'a str>,
}

impl RoomFields<'_> {
    /// The room for the registry: its JSON up to `createdAt`, in the old
    /// server's key order.
    pub fn room(&self) -> DashRoom {
        let mut h = String::from("{\"id\":");
        h.push_str(&json_str(self.id));
        if let Some(n) = self.name {
            h.push_str(",\"name\":");
            h.push_str(&json_str(n));
        }
        h.push_str(",\"description\":");
        h.push_str(&json_str(self.description.unwrap_or("")));
        if let Some(v) = self.host {
            h.push_str(",\"host\":");
            h.push_str(&json_str(v));
        }
        if let Some(v) = self.host_id {
            h.push_str(",\"hostId\":");
            h.push_str(&json_str(v));
        }
        h.push_str(",\"createdAt\":");
        match self.created_at.filter(|c| !c.is_empty()) {
            Some(c) => h.push_str(&json_str(c)),
            None => h.push_str(&json_str(&iso_now())),
        }
        DashRoom {
            id: self.id.to_string(),
            head: h,
        }
    }
}

/// A participant for the registry: `{"id":user,"name":name}` (`name`
/// omitted when absent).
pub fn participant(room: &str, user: &str, name: Option<&str>) -> DashParticipant {
    let mut json = String::from("{\"id\":");
    json.push_str(&json_str(user));
    if let Some(n) = name {
        json.push_str(",\"name\":");
        json.push_str(&json_str(n));
    }
    json.push('}');
    DashParticipant {
        room: room.to_string(),
        user: user.to_string(),
        json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_javascript_iso_strings() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_time(1_763_683_200_000), "2025-11-21T00:00:00.000Z");
        assert_eq!(iso_time(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso_time(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn rooms_keep_the_old_field_order_and_omit_what_is_absent() {
        let r = RoomFields {
            id: "room_1",
            name: Some("R1"),
            description: Some("d"),
            host: Some("Alice"),
            host_id: None,
            created_at: Some("2025-11-21T00:00:00.000Z"),
        }
        .room();
        assert_eq!(
            r.head,
            r#"{"id":"room_1","name":"R1","description":"d","host":"Alice","createdAt":"2025-11-21T00:00:00.000Z""#
        );
        let odd = RoomFields {
            id: "a\"b\n\u{1}</script>",
            host_id: Some("h"),
            ..Default::default()
        }
        .room();
        assert!(odd.head.starts_with(
            r#"{"id":"a\"b\n\u0001</script>","description":"","hostId":"h","createdAt":""#
        ));
        assert_eq!(
            participant("r", "u1", Some("Alice")).json,
            r#"{"id":"u1","name":"Alice"}"#
        );
        assert_eq!(participant("r", "u1", None).json, r#"{"id":"u1"}"#);
    }

    #[test]
    fn server_frames_are_compact_and_ordered() {
        assert!(client_count(3).starts_with(r#"{"type":"client_count","count":3,"timestamp":""#));
        assert!(room_list("[]").starts_with(
            r#"{"type":"server-room-list","channel":"webrtc-dashboard-rooms","rooms":[],"timestamp":""#
        ));
        assert!(
            echo("hi \"x\"").starts_with(r#"{"type":"echo","original":"hi \"x\"","timestamp":""#)
        );
        let t = pong();
        assert!(t.ends_with("Z\"}") && t.len() == r#"{"type":"pong","timestamp":""}"#.len() + 24);
    }
}
