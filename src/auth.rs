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

/// The claims as decoded: `sub` may be absent here, so that a token without
/// it is refused by the required-claims check ("a required claim is
/// missing", as documented) rather than by the decoder ("cannot be decoded").
#[derive(Deserialize)]
struct Decoded {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default, deserialize_with = "room_names")]
    rooms: Vec<String>,
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
            match decode::<Decoded>(token, &k.key, &v) {
                Ok(data) => {
                    // `sub` is a required claim: the check above enforced it.
                    let Some(sub) = data.claims.sub else {
                        return Err(AuthError::Invalid("a required claim is missing"));
                    };
                    if peer_id.is_some_and(|p| p != sub) {
                        return Err(AuthError::WrongSubject);
                    }
                    return Ok(Claims {
                        sub,
                        rooms: data.claims.rooms,
                    });
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

#[cfg(test)]
mod tests {
    //! Every algorithm family the docs list (PROTOCOL.md §9), `alg: none`,
    //! tokens of one family against keys of another, and the claim checks.
    //! Keys are the test-only ones in tests/fixtures/jwt.

    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::{json, Value};

    use super::*;
    use crate::config::Secret;

    const SECRET: &str = "unit-test-secret";

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn claims(sub: &str) -> Value {
        json!({"sub": sub, "exp": now() + 600})
    }

    /// An authenticator with the HMAC secret (when `hmac`) and the public
    /// halves of the named fixture keys.
    fn auth(hmac: bool, public: &[&str]) -> Authenticator {
        let mut cfg = JwtConfig {
            hs256_secret: if hmac {
                Secret::new(SECRET)
            } else {
                Secret::default()
            },
            public_keys: public
                .iter()
                .map(|n| fixture(&format!("{n}-public.pem")))
                .collect(),
            ..JwtConfig::default()
        };
        assert!(cfg.load_keys().is_empty(), "fixture keys load");
        Authenticator::from_config(&cfg).unwrap().expect("a key")
    }

    fn private(name: &str) -> Vec<u8> {
        std::fs::read(fixture(&format!("{name}-private.pem"))).unwrap()
    }

    /// A token for `claims`, signed with `alg` by the fixture key `key`
    /// (`hmac` for the shared secret).
    fn token(alg: Algorithm, key: &str, claims: &Value) -> String {
        let k = match key {
            "hmac" => EncodingKey::from_secret(SECRET.as_bytes()),
            "rs256" => EncodingKey::from_rsa_pem(&private(key)).unwrap(),
            "es256" | "es384" => EncodingKey::from_ec_pem(&private(key)).unwrap(),
            "ed25519" => EncodingKey::from_ed_pem(&private(key)).unwrap(),
            other => panic!("no fixture key {other}"),
        };
        encode(&Header::new(alg), claims, &k).unwrap()
    }

    /// Base64url without padding (the JWT encoding) of `v` as JSON.
    fn b64(v: &Value) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = v.to_string().into_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn every_documented_algorithm_verifies_with_a_key_of_its_family() {
        let all = auth(true, &["rs256", "es256", "es384", "ed25519"]);
        let cases = [
            (Algorithm::HS256, "hmac"),
            (Algorithm::HS384, "hmac"),
            (Algorithm::HS512, "hmac"),
            (Algorithm::RS256, "rs256"),
            (Algorithm::RS384, "rs256"),
            (Algorithm::RS512, "rs256"),
            (Algorithm::PS256, "rs256"),
            (Algorithm::PS384, "rs256"),
            (Algorithm::PS512, "rs256"),
            (Algorithm::ES256, "es256"),
            (Algorithm::ES384, "es384"),
            (Algorithm::EdDSA, "ed25519"),
        ];
        for (alg, key) in cases {
            let t = token(alg, key, &claims("alice"));
            let c = all
                .verify(Some(&t), Some("alice"))
                .unwrap_or_else(|e| panic!("{alg:?} with {key}: {e}"));
            assert_eq!(c.sub, "alice", "{alg:?}");
            // Without a peer id, `sub` is the peer id.
            assert_eq!(all.verify(Some(&t), None).unwrap().sub, "alice");
        }
    }

    #[test]
    fn alg_none_is_never_accepted() {
        let all = auth(true, &["rs256", "es256", "ed25519"]);
        let body = b64(&claims("alice"));
        for header in [
            json!({"alg": "none", "typ": "JWT"}),
            json!({"alg": "None"}),
            json!({"alg": "NONE"}),
            json!({"alg": ""}),
        ] {
            for sig in ["", "c2lnbmF0dXJl"] {
                let t = format!("{}.{body}.{sig}", b64(&header));
                assert_eq!(
                    all.verify(Some(&t), Some("alice")).unwrap_err(),
                    AuthError::Invalid("not a JWT"),
                    "{header} with signature {sig:?}"
                );
            }
        }
    }

    #[test]
    fn a_token_of_another_family_is_refused() {
        let t = |alg, key| token(alg, key, &claims("alice"));
        let no_key = AuthError::Invalid("no configured key accepts its algorithm");
        // Only RSA configured: HMAC, EC and EdDSA tokens find no key.
        let rsa = auth(false, &["rs256"]);
        for (alg, key) in [
            (Algorithm::HS256, "hmac"),
            (Algorithm::ES256, "es256"),
            (Algorithm::EdDSA, "ed25519"),
        ] {
            assert_eq!(rsa.verify(Some(&t(alg, key)), None).unwrap_err(), no_key);
        }
        // The classic key confusion: HS256 "signed" with the RSA public key
        // as the HMAC secret, against an RSA-only node.
        let public = std::fs::read(fixture("rs256-public.pem")).unwrap();
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims("alice"),
            &EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert_eq!(rsa.verify(Some(&forged), None).unwrap_err(), no_key);
        // Only the shared secret: an RS256 token finds no key.
        let hmac = auth(true, &[]);
        assert_eq!(
            hmac.verify(Some(&t(Algorithm::RS256, "rs256")), None)
                .unwrap_err(),
            no_key
        );
        // An EC key of the other curve: ES384 on a P-256 key, ES256 on a P-384 key.
        let p256 = auth(false, &["es256"]);
        assert!(p256
            .verify(Some(&t(Algorithm::ES384, "es384")), None)
            .is_err());
        let p384 = auth(false, &["es384"]);
        assert!(p384
            .verify(Some(&t(Algorithm::ES256, "es256")), None)
            .is_err());
    }

    #[test]
    fn signature_and_claims_are_checked() {
        let a = auth(true, &["rs256"]);
        // Another secret.
        let other = encode(
            &Header::new(Algorithm::HS384),
            &claims("alice"),
            &EncodingKey::from_secret(b"another secret"),
        )
        .unwrap();
        assert_eq!(
            a.verify(Some(&other), None).unwrap_err(),
            AuthError::Invalid("bad signature")
        );
        // A tampered payload.
        let good = token(Algorithm::RS512, "rs256", &claims("alice"));
        let mut parts: Vec<&str> = good.split('.').collect();
        let evil = b64(&claims("mallory"));
        parts[1] = &evil;
        assert_eq!(
            a.verify(Some(&parts.join(".")), None).unwrap_err(),
            AuthError::Invalid("bad signature")
        );
        let t = |c: Value| token(Algorithm::HS512, "hmac", &c);
        assert_eq!(
            a.verify(Some(&t(json!({"sub": "alice", "exp": now() - 3600}))), None)
                .unwrap_err(),
            AuthError::Expired
        );
        // Within the leeway (30 s) an expired token still passes.
        assert!(a
            .verify(Some(&t(json!({"sub": "alice", "exp": now() - 5}))), None)
            .is_ok());
        assert_eq!(
            a.verify(Some(&t(json!({"sub": "alice"}))), None)
                .unwrap_err(),
            AuthError::Invalid("a required claim is missing")
        );
        assert_eq!(
            a.verify(Some(&t(json!({"exp": now() + 600}))), None)
                .unwrap_err(),
            AuthError::Invalid("a required claim is missing")
        );
        assert_eq!(
            a.verify(Some(&t(json!({"sub": 42, "exp": now() + 600}))), None)
                .unwrap_err(),
            AuthError::Invalid("cannot be decoded")
        );
        assert_eq!(
            a.verify(
                Some(&t(
                    json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 3600})
                )),
                None
            )
            .unwrap_err(),
            AuthError::Invalid("not valid yet")
        );
        assert_eq!(
            a.verify(Some(&t(claims("alice"))), Some("bob"))
                .unwrap_err(),
            AuthError::WrongSubject
        );
        assert_eq!(a.verify(None, None).unwrap_err(), AuthError::Missing);
        assert_eq!(a.verify(Some(""), None).unwrap_err(), AuthError::Missing);
        assert_eq!(
            a.verify(Some("not.a.jwt"), None).unwrap_err(),
            AuthError::Invalid("not a JWT")
        );
    }

    #[test]
    fn a_configured_issuer_and_audience_are_required() {
        let cfg = JwtConfig {
            hs256_secret: Secret::new(SECRET),
            issuer: "my-app".into(),
            audience: "switchboard".into(),
            ..JwtConfig::default()
        };
        let a = Authenticator::from_config(&cfg).unwrap().unwrap();
        let t = |c: Value| token(Algorithm::HS256, "hmac", &c);
        let exp = now() + 600;
        let ok = json!({"sub": "a", "exp": exp, "iss": "my-app", "aud": ["x", "switchboard"]});
        assert_eq!(a.verify(Some(&t(ok)), None).unwrap().sub, "a");
        for (c, why) in [
            (
                json!({"sub": "a", "exp": exp, "aud": "switchboard"}),
                "a required claim is missing",
            ),
            (
                json!({"sub": "a", "exp": exp, "iss": "my-app"}),
                "a required claim is missing",
            ),
            (
                json!({"sub": "a", "exp": exp, "iss": "other", "aud": "switchboard"}),
                "wrong issuer",
            ),
            (
                json!({"sub": "a", "exp": exp, "iss": "my-app", "aud": "other"}),
                "wrong audience",
            ),
        ] {
            assert_eq!(
                a.verify(Some(&t(c.clone())), None).unwrap_err(),
                AuthError::Invalid(why),
                "{c}"
            );
        }
    }
}
