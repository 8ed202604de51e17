//! The domain vocabulary: validated names (peer ids, room names, signal
//! kinds, node ids, pools) and the shapes of rooms and pairings (members,
//! leave reasons, pairing notes) that the core, the bus, the store and every
//! door share.
//!
//! Raw strings from the wire are parsed into these newtypes at the door
//! (see [`crate::dialect`]), so the core never re-checks them. Each is an
//! `Arc<str>` underneath: ids are cloned into every event and map key, and a
//! clone must cost a reference count, not an allocation.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Why a name was refused; the text is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than the configured maximum (in bytes).
    #[error("must be at most {0} bytes")]
    TooLong(usize),
    /// The name contains a control character (newline, tab, NUL, ...).
    #[error("must not contain control characters")]
    BadChar,
}

fn check(s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > max {
        return Err(NameError::TooLong(max));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(NameError::BadChar);
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Parses and validates a name of at most `max` bytes.
            pub fn parse(s: &str, max: usize) -> Result<Self, NameError> {
                check(s, max)?;
                Ok(Self(Arc::from(s)))
            }

            /// Wraps a string that is already known to be valid (generated ids,
            /// values read back from our own store).
            pub fn from_trusted(s: impl Into<Arc<str>>) -> Self {
                Self(s.into())
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Ok(Self(Arc::from(&*s)))
            }
        }
    };
}

name_type!(
    /// A peer's id: unique across the cluster at any instant (newest connection wins).
    PeerId
);
name_type!(
    /// A room's name.
    RoomName
);
name_type!(
    /// A node's id: unique per running process, used to address it on the bus.
    NodeId
);
name_type!(
    /// A rendezvous pool: workers queued in the same pool are paired with each other.
    PoolName
);
name_type!(
    /// A signal's kind: `offer`, `answer`, `candidate` or any short name.
    SignalKind
);

/// Generates a fresh random peer id (a UUID v4) for a `hello` without one.
pub fn new_peer_id() -> PeerId {
    PeerId::from_trusted(uuid::Uuid::new_v4().to_string())
}

// ---------------------------------------------------------------------------
// The vocabulary of rooms and pairings, shared by the core, the bus, the
// store and every door.
// ---------------------------------------------------------------------------

/// A member of a room as shown in `joined`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The member's peer id.
    pub peer_id: PeerId,
    /// The metadata the member gave when joining (or in `hello` when absent).
    pub meta: Value,
}

/// Why a peer left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaveReason {
    /// It sent `leave`.
    Left,
    /// Its connection closed (by the client, an error, a slow queue or a drain).
    Disconnected,
    /// A newer connection with the same peer id replaced it.
    Replaced,
    /// It stopped answering heartbeats, or its node died.
    Timeout,
}

/// Why a room was closed under its members (`room-closed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoomClosedReason {
    /// Its lifetime (`ttl_secs` when it was created) ran out.
    Expired,
    /// It was deleted (`DELETE /api/rooms/{room}`).
    Deleted,
}

impl RoomClosedReason {
    /// The wire and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Deleted => "deleted",
        }
    }
}

/// Why a pairing ended, as told to the worker that did not end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairLostReason {
    /// The partner sent `unpair`.
    Unpaired,
    /// The partner's connection closed.
    Disconnected,
    /// The partner stopped answering heartbeats, or its node died.
    Timeout,
    /// A newer connection with the partner's id replaced it.
    Replaced,
}

impl PairLostReason {
    /// The wire and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unpaired => "unpaired",
            Self::Disconnected => "disconnected",
            Self::Timeout => "timeout",
            Self::Replaced => "replaced",
        }
    }
}

impl From<LeaveReason> for PairLostReason {
    fn from(r: LeaveReason) -> Self {
        match r {
            LeaveReason::Left | LeaveReason::Disconnected => Self::Disconnected,
            LeaveReason::Replaced => Self::Replaced,
            LeaveReason::Timeout => Self::Timeout,
        }
    }
}

/// A worker's side of a pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The earlier-queued worker (or `worker_a_id` of a manual pairing).
    Initiator,
    /// The other one.
    Responder,
}

/// The partner's endpoints, as given in `paired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairPeer {
    /// The partner's peer id (a legacy worker's worker id).
    pub peer_id: PeerId,
    /// The TCP address the broker saw for it (`ip:port`).
    pub observed_addr: String,
    /// The public IP it reported, or null.
    pub public_ip: Option<String>,
    /// Its public UDP endpoint (`ip:port`), or null.
    pub udp: Option<String>,
}

/// The body of `paired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairedNote {
    /// The pairing's id (a UUID).
    pub pairing_id: String,
    /// This worker's side.
    pub role: Role,
    /// The partner.
    pub peer: PairPeer,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert_eq!(RoomName::parse("", 8), Err(NameError::Empty));
        assert_eq!(RoomName::parse("123456789", 8), Err(NameError::TooLong(8)));
        assert_eq!(RoomName::parse("a\nb", 8), Err(NameError::BadChar));
        assert_eq!(RoomName::parse("lobby 1", 8).unwrap().as_str(), "lobby 1");
        assert_eq!(PeerId::parse("ünï", 8).unwrap().as_str(), "ünï");
    }
}
