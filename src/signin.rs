//! Sign-in: short-lived tokens the node issues itself, for apps without an
//! identity provider of their own (`POST /api/auth/anonymous`, and the room
//! signaling door's `/anonymous-signin`).
//!
//! A sign-in makes a fresh peer id (a UUID) and a JWT whose `sub` is that
//! id, signed with a key of the configuration (`auth.signin.private_key`,
//! whose public key `auth.jwt.public_keys` holds, or else
//! `auth.jwt.hs256_secret`): every node of the cluster has the same
//! configuration, so every node verifies what any node issued, with the
//! same [`crate::auth::Authenticator`] that verifies the operator's own
//! tokens, which keep working. The token carries `iss` (`auth.jwt.issuer`,
//! or `switchboard` when none is configured) and `aud` when
//! `auth.jwt.audience` is set, so the verifier's checks pass as for any
//! other token.
//!
//! Off by default (`auth.signin.enabled`): a node that mints a token for
//! anyone lets anyone in. The configuration refuses `enabled` without a key
//! (see `config::Config::validate`): a key only one process knows would
//! mint tokens other nodes (and this one, after a restart) refuse, and a
//! client that reuses its token (the room signaling clients do for their
//! whole session) would fail later, far from the cause.
//!
//! Minting is cheap for a client and costs the node a signature, so it is
//! rate-limited per client address (an IPv4 address, or an IPv6 /64, as
//! the STUN responder keys its sources), per node.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::config::AuthConfig;
use crate::metrics as m;
use crate::stun::SourceLimit;
use crate::types::{new_peer_id, PeerId};

/// The `iss` of issued tokens when `auth.jwt.issuer` is not set.
pub const DEFAULT_ISSUER: &str = "switchboard";

/// A token issued by a sign-in.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The JWT (compact form).
    pub token: String,
    /// The fresh peer id, also the token's `sub`.
    pub peer_id: PeerId,
    /// The token's `exp` (Unix seconds).
    pub expires_at: u64,
}

/// Why a sign-in was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInError {
    /// `auth.signin.enabled` is off.
    Disabled,
    /// This client address is over `auth.signin.rate_per_minute`; it may
    /// try again after this long.
    RateLimited(Duration),
    /// Signing failed (a fault of the node; logged).
    Failed,
}

/// The claims of an issued token.
#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// The sign-in service of one node: the signing key and the per-address
/// limit. See the module docs.
pub struct SignIn {
    /// The key and its algorithm; `None` while sign-in is off.
    key: Option<(EncodingKey, Algorithm)>,
    /// `auth.signin.token_ttl_s`.
    ttl: Duration,
    /// `iss` of issued tokens.
    issuer: String,
    /// `aud` of issued tokens, when one is configured.
    audience: Option<String>,
    /// The per-address limit; `None` for no limit (`rate_per_minute = 0`).
    limiter: Option<governor::DefaultKeyedRateLimiter<IpAddr>>,
    /// The limiter's clock (to say when a refused address may retry).
    clock: DefaultClock,
    /// When idle addresses are next forgotten.
    next_sweep: parking_lot::Mutex<std::time::Instant>,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn")
            .field("enabled", &self.key.is_some())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// How often addresses back at a full burst are forgotten (a keyed limiter
/// keeps every key otherwise).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

impl SignIn {
    /// The service `auth` configures (a loaded configuration: its key was
    /// read and checked at load). A configuration whose key no longer
    /// parses is an error naming the key.
    pub fn from_config(auth: &AuthConfig) -> Result<Self, Vec<String>> {
        let si = &auth.signin;
        let key = if !si.enabled {
            None
        } else if let Some(k) = &si.key {
            let b = k.pem.expose().as_bytes();
            let parsed = match k.alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(b),
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(b),
                _ => EncodingKey::from_ed_pem(b),
            };
            let parsed = parsed.map_err(|_| {
                vec!["auth.signin.private_key: the key changed after it was loaded".to_string()]
            })?;
            Some((parsed, k.alg))
        } else if !si.private_key.is_empty() {
            // Built in code without loading: load it now.
            let mut si = si.clone();
            let errs = si.load_key(&auth.jwt);
            if !errs.is_empty() {
                return Err(errs);
            }
            let mut a = auth.clone();
            a.signin = si;
            return Self::from_config(&a);
        } else if !auth.jwt.hs256_secret.is_empty() {
            Some((
                EncodingKey::from_secret(auth.jwt.hs256_secret.expose().as_bytes()),
                Algorithm::HS256,
            ))
        } else {
            return Err(vec![
                "auth.signin.enabled: sign-in needs a key to sign with".to_string(),
            ]);
        };
        let limiter = NonZeroU32::new(si.rate_per_minute).map(|rate| {
            let burst = NonZeroU32::new(si.burst.max(1)).expect("at least 1");
            governor::RateLimiter::dashmap_with_clock(
                governor::Quota::per_minute(rate).allow_burst(burst),
                DefaultClock::default(),
            )
        });
        Ok(Self {
            key,
            ttl: Duration::from_secs(si.token_ttl_s),
            issuer: if auth.jwt.issuer.is_empty() {
                DEFAULT_ISSUER.to_string()
            } else {
                auth.jwt.issuer.clone()
            },
            audience: (!auth.jwt.audience.is_empty()).then(|| auth.jwt.audience.clone()),
            limiter,
            clock: DefaultClock::default(),
            next_sweep: parking_lot::Mutex::new(std::time::Instant::now() + SWEEP_EVERY),
        })
    }

    /// True when sign-in is on.
    pub fn is_enabled(&self) -> bool {
        self.key.is_some()
    }

    /// A fresh peer id and a token for it, for the client at `from` (its
    /// address after `http.trusted_proxies`). Counted by outcome.
    pub fn issue(&self, from: IpAddr) -> Result<Issued, SignInError> {
        let r = self.try_issue(from);
        let outcome = match &r {
            Ok(_) => "issued",
            Err(SignInError::Disabled) => "disabled",
            Err(SignInError::RateLimited(_)) => "rate-limited",
            Err(SignInError::Failed) => "failed",
        };
        metrics::counter!(m::SIGNINS, "outcome" => outcome).increment(1);
        r
    }

    fn try_issue(&self, from: IpAddr) -> Result<Issued, SignInError> {
        let Some((key, alg)) = &self.key else {
            return Err(SignInError::Disabled);
        };
        if let Some(limiter) = &self.limiter {
            self.sweep_if_due(limiter);
            if let Err(not_until) = limiter.check_key(&SourceLimit::source_key(from)) {
                // At least a second: `Retry-After` is in whole seconds.
                let wait = not_until.wait_time_from(self.clock.now());
                return Err(SignInError::RateLimited(wait.max(Duration::from_secs(1))));
            }
        }
        let peer_id = new_peer_id();
        let now = crate::store::now_ms() / 1000;
        let exp = now + self.ttl.as_secs();
        let claims = IssuedClaims {
            sub: peer_id.as_str(),
            iat: now,
            exp,
            iss: &self.issuer,
            aud: self.audience.as_deref(),
        };
        match jsonwebtoken::encode(&Header::new(*alg), &claims, key) {
            Ok(token) => Ok(Issued {
                token,
                peer_id,
                expires_at: exp,
            }),
            Err(e) => {
                tracing::error!(error = %e, "signing a sign-in token failed");
                Err(SignInError::Failed)
            }
        }
    }

    fn sweep_if_due(&self, limiter: &governor::DefaultKeyedRateLimiter<IpAddr>) {
        let now = std::time::Instant::now();
        {
            let mut next = self.next_sweep.lock();
            if now < *next {
                return;
            }
            *next = now + SWEEP_EVERY;
        }
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;
    use crate::config::{from_toml_str, Config};

    fn cfg(toml: &str) -> Config {
        from_toml_str(toml).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn off_by_default_and_refused_without_a_key() {
        let c = Config::default();
        let s = SignIn::from_config(&c.auth).unwrap();
        assert!(!s.is_enabled());
        assert_eq!(s.issue(ip("192.0.2.1")).unwrap_err(), SignInError::Disabled);
        let err = from_toml_str("[auth.signin]\nenabled = true\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("auth.signin.enabled: sign-in needs a key"),
            "{err}"
        );
    }

    #[test]
    fn hs256_tokens_verify_with_the_nodes_authenticator_and_carry_issuer_and_audience() {
        let c = cfg("[auth.jwt]\nhs256_secret = \"s3cret\"\nissuer = \"my-app\"\naudience = \"sb\"\n[auth.signin]\nenabled = true\ntoken_ttl_s = 600\n");
        let s = SignIn::from_config(&c.auth).unwrap();
        let before = crate::store::now_ms() / 1000;
        let t = s.issue(ip("192.0.2.1")).unwrap();
        assert!(
            (before + 600..=before + 601).contains(&t.expires_at),
            "{t:?}"
        );
        let auth = Authenticator::from_config(&c.auth.jwt).unwrap().unwrap();
        let claims = auth
            .verify(Some(&t.token), Some(t.peer_id.as_str()))
            .unwrap();
        assert_eq!(claims.sub, t.peer_id.as_str());
        // Each sign-in is a new peer id.
        let t2 = s.issue(ip("192.0.2.1")).unwrap();
        assert_ne!(t2.peer_id, t.peer_id);
    }

    #[test]
    fn a_private_key_signs_and_must_have_its_public_key_configured() {
        let fx = |f: &str| format!("{}/tests/fixtures/jwt/{f}", env!("CARGO_MANIFEST_DIR"));
        for (private, public) in [
            ("es256-private.pem", "es256-public.pem"),
            ("ed25519-private.pem", "ed25519-public.pem"),
            ("rs256-private.pem", "rs256-public.pem"),
        ] {
            let c = cfg(&format!(
                "[auth.jwt]\npublic_keys = [\"{}\"]\n[auth.signin]\nenabled = true\nprivate_key = \"{}\"\n",
                fx(public),
                fx(private)
            ));
            let s = SignIn::from_config(&c.auth).unwrap();
            let t = s.issue(ip("192.0.2.1")).unwrap();
            let auth = Authenticator::from_config(&c.auth.jwt).unwrap().unwrap();
            assert!(
                auth.verify(Some(&t.token), Some(t.peer_id.as_str()))
                    .is_ok(),
                "{private}"
            );
        }
        // Its public key is not among the verifier's keys: refused at load.
        let err = from_toml_str(&format!(
            "[auth.jwt]\npublic_keys = [\"{}\"]\n[auth.signin]\nenabled = true\nprivate_key = \"{}\"\n",
            fx("rs256-public.pem"),
            fx("es256-private.pem")
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("auth.signin.private_key: no key in auth.jwt.public_keys verifies"),
            "{err}"
        );
        let err = from_toml_str(&format!(
            "[auth.signin]\nprivate_key = \"{}\"\n",
            fx("es256-public.pem")
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("auth.signin.private_key: not an RSA, EC"),
            "{err}"
        );
        // The secret never prints.
        let c = cfg(&format!(
            "[auth.jwt]\npublic_keys = [\"{}\"]\n[auth.signin]\nprivate_key = \"{}\"\n",
            fx("es256-public.pem"),
            fx("es256-private.pem")
        ));
        assert_eq!(c.redacted().auth.signin.private_key.expose(), "[redacted]");
        assert!(!format!("{:?}", c.auth.signin).contains("BEGIN"));
    }

    #[test]
    fn the_limit_is_per_address_and_per_ipv6_prefix() {
        let c = cfg("[auth.jwt]\nhs256_secret = \"k\"\n[auth.signin]\nenabled = true\nrate_per_minute = 2\nburst = 3\n");
        let s = SignIn::from_config(&c.auth).unwrap();
        for _ in 0..3 {
            s.issue(ip("192.0.2.1")).unwrap();
        }
        match s.issue(ip("192.0.2.1")) {
            // 2 a minute: the next one in up to 30 s.
            Err(SignInError::RateLimited(d)) => {
                assert!(
                    d >= Duration::from_secs(1) && d <= Duration::from_secs(30),
                    "{d:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        s.issue(ip("192.0.2.2")).unwrap();
        for _ in 0..3 {
            s.issue(ip("2001:db8::1")).unwrap();
        }
        // Same /64.
        assert!(matches!(
            s.issue(ip("2001:db8::ffff")),
            Err(SignInError::RateLimited(_))
        ));
        s.issue(ip("2001:db8:0:1::1")).unwrap();
        // 0: no limit.
        let c = cfg("[auth.jwt]\nhs256_secret = \"k\"\n[auth.signin]\nenabled = true\nrate_per_minute = 0\n");
        let s = SignIn::from_config(&c.auth).unwrap();
        for _ in 0..50 {
            s.issue(ip("192.0.2.1")).unwrap();
        }
    }

    #[test]
    fn settings_are_checked() {
        for (toml, want) in [
            (
                "[auth.signin]\ntoken_ttl_s = 0\n",
                "auth.signin.token_ttl_s: must be between 1 and 604800",
            ),
            (
                "[auth.signin]\ntoken_ttl_s = 604801\n",
                "auth.signin.token_ttl_s: must be between 1 and 604800",
            ),
            (
                "[auth.signin]\nburst = 0\n",
                "auth.signin.burst: must be greater than 0",
            ),
            (
                "[doors.room_signaling]\nroom_ttl_s = 0\n",
                "doors.room_signaling.room_ttl_s: must be greater than 0",
            ),
        ] {
            let err = from_toml_str(toml).unwrap_err().to_string();
            assert!(err.starts_with(want), "{toml}: {err}");
        }
        assert!(from_toml_str("[auth.signin]\nburst = 0\nrate_per_minute = 0\n").is_ok());
    }
}
