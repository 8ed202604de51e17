//! The dialect seam: how a door's wire format meets the core.
//!
//! Every WebSocket door serves its connections with the same loop
//! ([`crate::connection`]): one task per socket, one bounded queue of core
//! [`Event`]s, heartbeats, the hello deadline, drain. What differs between
//! doors is only their wire format, a [`Dialect`]:
//!
//! - the reader half ([`Dialect`]) turns a frame into core operations: it
//!   decodes into a [`crate::core::command::Command`] (or its own
//!   vocabulary), registers the connection through [`Node::register`] (the
//!   one way in, whatever the door) and hands commands to the node;
//! - the writer half ([`Encoder`]) turns each core [`Event`] into a frame of
//!   its format, or into nothing when the dialect has no such message. A
//!   reply that only this dialect has is encoded by the door itself and
//!   queued as [`Event::Frame`]; encoders pass those through.
//!
//! Adding a dialect means a module here and one route in [`crate::http`]:
//! nothing in the core knows which dialects exist. The native protocol is
//! [`native`]; translators for clients of older systems sit beside it, each
//! holding no state another door or node would need.

pub mod coordinator;
pub mod dashboard;
pub mod legacy_worker;
pub mod native;
pub mod room_signaling;

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use crate::core::event::Encoded;
use crate::core::event::Event;
use crate::core::hub::{CloseReason, ConnHandle};
use crate::core::session::Session;
use crate::node::Node;
use crate::ws::{CloseFrame, Data};

/// What the door learned about a connection before the upgrade.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address (the socket's, or from a trusted proxy's header).
    pub observed: SocketAddr,
}

/// What a connection does after one frame.
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
    /// True when a session of this dialect may outlive its socket and be
    /// resumed (`crate::node::resume`): its encoder writes `seq`.
    const RESUMABLE: bool = false;
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
        frame: Data<'_>,
        received: Instant,
    ) -> impl Future<Output = Flow> + Send;
    /// Runs once when the connection has ended, after the node's own
    /// cleanup ([`Node::disconnect`]): a door that keeps state of its own
    /// per connection (the dashboard's channels) lets go of it here.
    fn closed(&mut self, _node: &Arc<Node>) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A wire format on one connection: the writer half.
pub trait Encoder: Send + Sync + 'static {
    /// The frame for `event`, or `None` when this dialect has no such
    /// message. [`Event::Frame`] is already encoded: give it back as it is
    /// (see [`passthrough`]).
    fn encode(&self, event: &Event) -> Option<Encoded>;
    /// [`Self::encode`] of a message numbered `seq` in a resumable
    /// session (0: not numbered). Only a dialect with resume writes it.
    fn encode_seq(&self, event: &Event, _seq: u64) -> Option<Encoded> {
        self.encode(event)
    }
    /// [`Self::encode_seq`], borrowing what needs no encoding: what the
    /// connection writes. The default encodes; an encoder that gives
    /// [`Event::Frame`] back as it is (and writes no `seq`) borrows it
    /// instead (see [`borrow_frame`]), so a frame fanned out to many
    /// sockets (the dashboard's room list) is not copied once per recipient
    /// before it is written.
    fn encode_ref<'a>(&self, event: &'a Event, seq: u64) -> Option<Cow<'a, Encoded>> {
        self.encode_seq(event, seq).map(Cow::Owned)
    }
    /// The close frame for a close reason.
    fn close_frame(&self, why: CloseReason) -> CloseFrame {
        CloseFrame {
            code: why.code,
            reason: why.reason,
        }
    }
}

/// The frame of an [`Event::Frame`], borrowed, for an [`Encoder::encode_ref`]
/// that passes frames through.
pub fn borrow_frame(event: &Event) -> Option<Cow<'_, Encoded>> {
    match event {
        Event::Frame(f) => Some(Cow::Borrowed(f)),
        _ => None,
    }
}

/// The frame of an [`Event::Frame`] (a door's own reply), for encoders.
pub fn passthrough(event: &Event) -> Option<Encoded> {
    match event {
        Event::Frame(f) => Some(f.clone()),
        _ => None,
    }
}
