//! ICE servers for clients: the broker's STUN URLs and TURN relays with
//! ephemeral credentials in the TURN REST format that coturn checks with
//! `use-auth-secret` (draft-uberti-behave-turn-rest):
//!
//! - username: `EXPIRY:PEER_ID`, where EXPIRY is a Unix time in seconds;
//! - credential: base64(HMAC-SHA1(shared secret, username)).
//!
//! The TURN server needs no call to the broker: it recomputes the credential
//! from the username with the same secret and refuses it after EXPIRY. Each
//! `welcome` carries a fresh pair (`ice_servers`, in the shape of WebRTC's
//! `RTCIceServer`, so a browser passes it to `RTCPeerConnection` as it is); a
//! client that outlives `turn.ttl_s` gets a new one by reconnecting.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;

use crate::config::TurnConfig;
use crate::types::PeerId;

/// One entry of `welcome.ice_servers`: WebRTC's `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN only: `EXPIRY:PEER_ID`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN only: the HMAC of `username` with the shared secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The TURN REST credential of `username`: base64(HMAC-SHA1(secret, username)).
pub fn credential(secret: &str, username: &str) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The ICE servers for `peer` at Unix time `now_s`: the configured STUN URLs,
/// then the TURN URLs with a credential valid until `now_s + ttl_s`. Empty
/// when neither is configured.
pub fn ice_servers(cfg: &TurnConfig, peer: &PeerId, now_s: u64) -> Vec<IceServer> {
    let mut out = Vec::with_capacity(2);
    if !cfg.stun_urls.is_empty() {
        out.push(IceServer {
            urls: cfg.stun_urls.clone(),
            username: None,
            credential: None,
        });
    }
    if !cfg.urls.is_empty() {
        let username = format!("{}:{}", now_s + cfg.ttl_s, peer.as_str());
        out.push(IceServer {
            urls: cfg.urls.clone(),
            credential: Some(credential(cfg.secret.expose(), &username)),
            username: Some(username),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_matches_the_turn_rest_reference() {
        // openssl: printf '%s' '1796675241:alice' | openssl dgst -sha1 -hmac s3cret -binary | base64
        assert_eq!(
            credential("s3cret", "1796675241:alice"),
            "8gjoUiUpnP9iWoqF4fdfumfx7Zg="
        );
    }

    #[test]
    fn ice_servers_hold_stun_then_turn_with_an_expiring_username() {
        let cfg = TurnConfig {
            urls: vec!["turn:turn.example:3478?transport=udp".into()],
            stun_urls: vec!["stun:stun.example:3478".into()],
            secret: crate::config::Secret::new("k"),
            ttl_s: 600,
        };
        let peer = PeerId::parse("bob", 64).unwrap();
        let s = ice_servers(&cfg, &peer, 1000);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].urls, ["stun:stun.example:3478"]);
        assert_eq!(s[0].username, None);
        assert_eq!(s[1].username.as_deref(), Some("1600:bob"));
        assert_eq!(
            s[1].credential.as_deref(),
            Some(credential("k", "1600:bob").as_str())
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json[0],
            serde_json::json!({"urls": ["stun:stun.example:3478"]})
        );
        assert!(ice_servers(&TurnConfig::default(), &peer, 1000).is_empty());
    }
}
