//! Verification of `hello` tokens (JWT).
//!
//! Keys come from `auth.jwt`: an HS256 secret and/or PEM public keys (RSA,
//! EC P-256/P-384, Ed25519). A token is checked against the keys whose family
//! matches its header's `alg`; its `sub` must be the peer id. With no key
//! configured there is no [`Authenticator`]: peers without a token are then
//! admitted only as `auth.anonymous` allows (by default, only while the node
//! listens on loopback; see [`crate::config::Config::anonymous_mode`]).
//!
//! A verified token for a peer id is also what lets a connection take that id
//! over from a live one; without auth, the holder's `reconnect_secret` is
//! (see `Node::register`).

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{JwtConfig, KeyFamily};

/// The claims Switchboard reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    /// The peer id the token is for.
    pub sub: String,
    /// Rooms the token grants: a `join` into one of them needs no room
    /// token (docs/PROTOCOL.md, 5.2). A list of room names; a claim of
    /// another shape, or entries that are not strings, grant nothing
    /// (rather than refuse a token an issuer gave a `rooms` claim of its own).
    #[serde(default, deserialize_with = "room_names")]
    pub rooms: Vec<String>,
}

/// The strings of a `rooms` claim that is an array; nothing otherwise.
fn room_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(a) => a
            .into_iter()
            .filter_map(|v| match v {
                serde_json::Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// Why a token was refused (the text is sent to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `hello` carried no token.
    #[error("a token is required")]
    Missing,
    /// The token is expired.
    #[error("token expired")]
    Expired,
    /// The token does not verify with any configured key, or is not a JWT.
    #[error("token is invalid: {0}")]
    Invalid(&'static str),
    /// The token's `sub` names a different peer.
    #[error("token `sub` does not match the peer id")]
    WrongSubject,
}

struct Key {
    key: DecodingKey,
    algs: &'static [Algorithm],
}

/// Verifies tokens against the configured keys.
pub struct Authenticator {
    keys: Vec<Key>,
    cfg: JwtConfig,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .finish()
    }
}

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
const ED: &[Algorithm] = &[Algorithm::EdDSA];

impl Authenticator {
    /// Builds the verifier; `Ok(None)` when no key is configured. The
    /// public keys are those the configuration loaded ([`JwtConfig::keys`]);
    /// a configuration built in code without loading them is loaded here,
    /// and its errors name the bad key.
    pub fn from_config(cfg: &JwtConfig) -> Result<Option<Self>, Vec<String>> {
        let loaded;
        let cfg = if cfg.keys.len() == cfg.public_keys.len() {
            cfg
        } else {
            let mut c = cfg.clone();
            let errs = c.load_keys();
            if !errs.is_empty() {
                return Err(errs);
            }
            loaded = c;
            &loaded
        };
        let mut keys = Vec::new();
        if !cfg.hs256_secret.is_empty() {
            keys.push(Key {
                key: DecodingKey::from_secret(cfg.hs256_secret.expose().as_bytes()),
                algs: HMAC,
            });
        }
        for k in &cfg.keys {
            let b = k.pem.as_bytes();
            // Parsed once already, when the configuration was loaded.
            let (key, algs) = match k.family {
                KeyFamily::Rsa => (DecodingKey::from_rsa_pem(b), RSA),
                KeyFamily::Ec => (DecodingKey::from_ec_pem(b), EC),
                KeyFamily::Ed => (DecodingKey::from_ed_pem(b), ED),
            };
            let key = key.map_err(|_| {
                vec!["auth.jwt.public_keys: a key changed after it was loaded".to_string()]
            })?;
            keys.push(Key { key, algs });
        }
        Ok((!keys.is_empty()).then(|| Self {
            keys,
            cfg: cfg.clone(),
        }))
    }

    /// Verifies `token` for `peer_id` (or, when `None`, returns the `sub` to use as the peer id).
    pub fn verify(&self, token: Option<&str>, peer_id: Option<&str>) -> Result<Claims, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let header = decode_header(token).map_err(|_| AuthError::Invalid("not a JWT"))?;
        let mut last = AuthError::Invalid("no configured key accepts its algorithm");
        for k in self.keys.iter().filter(|k| k.algs.contains(&header.alg)) {
            let mut v = Validation::new(header.alg);
            v.leeway = self.cfg.leeway_s;
            // A configured issuer or audience is required, not merely checked when present.
            let mut required = vec!["exp", "sub"];
            if self.cfg.issuer.is_empty() {
                v.iss = None;
            } else {
                v.set_issuer(&[&self.cfg.issuer]);
                required.push("iss");
            }
            if self.cfg.audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&[&self.cfg.audience]);
                required.push("aud");
            }
            v.set_required_spec_claims(&required);
            v.validate_nbf = true;
            match decode::<Claims>(token, &k.key, &v) {
                Ok(data) => {
                    if peer_id.is_some_and(|p| p != data.claims.sub) {
                        return Err(AuthError::WrongSubject);
                    }
                    return Ok(data.claims);
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::ExpiredSignature => return Err(AuthError::Expired),
                        K::InvalidSignature => AuthError::Invalid("bad signature"),
                        K::InvalidIssuer => AuthError::Invalid("wrong issuer"),
                        K::InvalidAudience => AuthError::Invalid("wrong audience"),
                        K::ImmatureSignature => AuthError::Invalid("not valid yet"),
                        K::MissingRequiredClaim(_) => {
                            AuthError::Invalid("a required claim is missing")
                        }
                        _ => AuthError::Invalid("cannot be decoded"),
                    };
                }
            }
        }
        Err(last)
    }
}
