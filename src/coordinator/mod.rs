//! The game P2P coordinator (docs/DOORS.md, "Coordinator"): hosts with
//! quality scores, zones with requirements, sessions, and the background
//! work that keeps them honest, shared by every node through the store
//! ([`crate::store::coordinator`]).
//!
//! Records are the old service's response shapes (field order as it
//! emitted them) plus a few fields of our own that never go on the wire
//! (`#[serde(flatten)]`). Every change is a read, a computation here, and a
//! compare-and-set write ([`modify`]), retried when another node wrote the
//! same record in between, so an upsert or a player joining a full session
//! is atomic across the cluster.
//!
//! What the old code only promised, done here:
//! - zone requirements ([`check_requirements`]) when a session picks or is
//!   given a host: the host's score against ten times the zone's
//!   `min_host_quality_score` (the zone's value is on the 0-10 scale its
//!   docstrings and default 7.0 use, the score on 0-100), its network speed
//!   against `min_bandwidth_mbps`, its latency against `max_latency_ms`;
//! - host staleness: a host without a heartbeat for
//!   `doors.coordinator.host_offline_after_s` counts as offline at once
//!   ([`Host::effective_status`]) and is written offline by the background
//!   work;
//! - host selection by score when a session request names no host;
//! - background work ([`background`]) on one node at a time, behind the
//!   store lease [`LEASE`]: session health, stale session cleanup, host
//!   staleness.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::config::{CoordinatorDoor, CoordinatorZone};
use crate::core::Core;
use crate::metrics as m;
use crate::node::Node;
use crate::store::coordinator::CoordKind;
use crate::store::{now_ms, StoreError};

/// The lease behind which one node at a time runs the background work.
pub const LEASE: &str = "coordinator";

/// A host's player capacity (the old service's constant).
pub const HOST_MAX_PLAYERS: i64 = 50;
/// A host's zone capacity (the old service's constant).
pub const HOST_MAX_ZONES: i64 = 5;

/// The signaling room of a coordinator session (part B's socket).
pub fn signaling_room(session_id: &str) -> String {
    format!("{SESSION_PREFIX}{session_id}")
}

/// What the core rooms of signaling sessions are named with.
pub const SESSION_PREFIX: &str = "coordinator/session/";

/// The room of a zone's hosts (what `POST /api/publish` with `zone` reaches).
pub fn zone_room(zone_id: &str) -> String {
    format!("coordinator/zone/{zone_id}")
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

/// A host as the API shows it (`HostResponse`, its field order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostView {
    pub id: u64,
    pub host_id: String,
    pub player_id: String,
    pub player_name: String,
    pub ip_address: String,
    pub port: i64,
    pub public_ip: Option<String>,
    pub cpu_cores: i64,
    pub cpu_frequency_mhz: i64,
    pub memory_mb: i64,
    pub network_speed_mbps: i64,
    pub latency_ms: f64,
    pub packet_loss_percent: f64,
    pub bandwidth_usage_mbps: f64,
    pub status: String,
    pub max_players: i64,
    pub current_players: i64,
    pub max_zones: i64,
    pub current_zones: i64,
    pub quality_score: f64,
}

/// A host as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// What the API shows.
    #[serde(flatten)]
    pub view: HostView,
    /// Stored, never returned (as in the old service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice_servers: Option<serde_json::Value>,
    /// Unix ms of its registration or last heartbeat: what staleness reads.
    pub seen_ms: u64,
}

impl Host {
    /// Its status, with staleness applied: an `online` host not seen for
    /// `offline_after` is `offline`.
    pub fn effective_status(&self, offline_after: Duration, now: u64) -> &str {
        if self.view.status == "online" && self.is_stale(offline_after, now) {
            "offline"
        } else {
            &self.view.status
        }
    }

    fn is_stale(&self, offline_after: Duration, now: u64) -> bool {
        now.saturating_sub(self.seen_ms) > offline_after.as_millis() as u64
    }

    /// What the API shows, staleness applied.
    pub fn shown(&self, offline_after: Duration, now: u64) -> HostView {
        let mut v = self.view.clone();
        v.status = self.effective_status(offline_after, now).to_string();
        v
    }
}

/// A zone (`ZoneResponse`, its field order); stored as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Zone {
    pub id: u64,
    pub zone_id: String,
    pub zone_name: String,
    pub zone_display_name: String,
    pub map_name: String,
    pub max_players: i64,
    pub recommended_players: i64,
    pub p2p_enabled: bool,
    pub p2p_priority: i64,
    pub fallback_enabled: bool,
    pub min_host_quality_score: f64,
    pub min_bandwidth_mbps: i64,
    pub max_latency_ms: i64,
    pub status: String,
    pub total_sessions: i64,
    pub active_sessions: i64,
    pub total_players_served: i64,
    pub description: Option<String>,
}

/// A session as the API shows it (`SessionResponse`, its field order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
    pub id: u64,
    pub session_id: String,
    /// The host's integer id (as the old service returned it).
    pub host_id: u64,
    /// The zone's integer id.
    pub zone_id: u64,
    pub connected_players: Vec<String>,
    pub current_players: i64,
    pub max_players: i64,
    pub status: String,
    pub average_latency_ms: f64,
    pub average_packet_loss_percent: f64,
    pub bandwidth_usage_mbps: f64,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// What the API shows.
    #[serde(flatten)]
    pub view: SessionView,
    /// The host's `host_id` (the health check looks it up).
    pub host_key: String,
    /// The zone's `zone_id`.
    pub zone_key: String,
    /// Unix ms of its last change: what the stale cleanup reads.
    pub changed_ms: u64,
}

impl Session {
    fn touch(&mut self, now: u64) {
        self.changed_ms = now;
        self.view.updated_at = iso_micros(now * 1000);
    }

    /// Pending or active: what health and cleanup look at.
    pub fn is_live(&self) -> bool {
        matches!(self.view.status.as_str(), "pending" | "active")
    }
}

/// What a host registers with (`HostRegistration`, validated by the door).
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub host_id: String,
    pub player_id: String,
    pub player_name: String,
    pub ip_address: String,
    pub port: i64,
    pub public_ip: Option<String>,
    pub cpu_cores: i64,
    pub cpu_frequency_mhz: i64,
    pub memory_mb: i64,
    pub network_speed_mbps: i64,
    pub ice_servers: Option<serde_json::Value>,
}

/// A heartbeat's metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heartbeat {
    pub latency_ms: f64,
    pub packet_loss_percent: f64,
    pub bandwidth_usage_mbps: f64,
    pub current_players: i64,
    pub current_zones: i64,
}

// ---------------------------------------------------------------------------
// The quality score (LEGACY-PROTOCOLS.md §1.4.1)
// ---------------------------------------------------------------------------

/// The host quality score, 0..100 rounded to two places, exactly as the
/// old service computes it (`cpu_frequency_mhz` plays no part).
pub fn quality_score(h: &HostView) -> f64 {
    let latency = (30.0 - h.latency_ms / 10.0).max(0.0);
    let loss = (20.0 - 2.0 * h.packet_loss_percent).max(0.0);
    let max = if h.max_players > 0 {
        h.max_players as f64
    } else {
        HOST_MAX_PLAYERS as f64
    };
    let capacity = (100.0 - 100.0 * h.current_players as f64 / max) / 100.0 * 25.0;
    let cpu = (h.cpu_cores as f64 / 4.0 * 10.0).min(10.0);
    let memory = (h.memory_mb as f64 / 8192.0 * 10.0).min(10.0);
    let network = (h.network_speed_mbps as f64 / 100.0 * 5.0).min(5.0);
    round2((latency + loss + capacity + cpu + memory + network).clamp(0.0, 100.0))
}

/// Rounded to two decimal places.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Unix microseconds as the old service's timestamps:
/// `2025-11-11T03:44:13.123456+00:00`.
pub fn iso_micros(us: u64) -> String {
    format!(
        "{}.{:06}+00:00",
        crate::time::iso_seconds(us / 1_000_000),
        us % 1_000_000
    )
}

fn now_iso() -> String {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    iso_micros(us)
}

// ---------------------------------------------------------------------------
// Zone requirements and host selection
// ---------------------------------------------------------------------------

/// Why a host does not meet a zone's requirements.
#[derive(Debug, Clone, PartialEq)]
pub enum Unfit {
    /// Its score is below ten times the zone's `min_host_quality_score`.
    Score { score: f64, min: f64 },
    /// Its network speed is below `min_bandwidth_mbps`.
    Bandwidth { mbps: i64, min: i64 },
    /// Its latency is above `max_latency_ms`.
    Latency { ms: f64, max: i64 },
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Score { score, min } => {
                write!(
                    f,
                    "host quality score {score:?} is below the zone's minimum {min:?}"
                )
            }
            Self::Bandwidth { mbps, min } => write!(
                f,
                "host network speed {mbps} Mbps is below the zone's minimum {min} Mbps"
            ),
            Self::Latency { ms, max } => {
                write!(
                    f,
                    "host latency {ms:?} ms is above the zone's maximum {max} ms"
                )
            }
        }
    }
}

/// The zone's minimum score on the host score's 0..100 scale.
pub fn min_score(zone: &Zone) -> f64 {
    round2(zone.min_host_quality_score * 10.0)
}

/// Checks a host against a zone's requirements.
pub fn check_requirements(host: &HostView, zone: &Zone) -> Result<(), Unfit> {
    let min = min_score(zone);
    if host.quality_score < min {
        return Err(Unfit::Score {
            score: host.quality_score,
            min,
        });
    }
    if host.network_speed_mbps < zone.min_bandwidth_mbps {
        return Err(Unfit::Bandwidth {
            mbps: host.network_speed_mbps,
            min: zone.min_bandwidth_mbps,
        });
    }
    if host.latency_ms > zone.max_latency_ms as f64 {
        return Err(Unfit::Latency {
            ms: host.latency_ms,
            max: zone.max_latency_ms,
        });
    }
    Ok(())
}

/// Available: online (staleness applied), below its player and zone
/// capacity, at least `min` score.
fn available(h: &Host, cfg: &CoordinatorDoor, now: u64, min: Option<f64>) -> bool {
    h.effective_status(offline_after(cfg), now) == "online"
        && h.view.current_players < h.view.max_players
        && h.view.current_zones < h.view.max_zones
        && min.is_none_or(|m| h.view.quality_score >= m)
}

/// The `host_offline_after_s` bound.
pub fn offline_after(cfg: &CoordinatorDoor) -> Duration {
    Duration::from_secs(cfg.host_offline_after_s)
}

// ---------------------------------------------------------------------------
// Store access
// ---------------------------------------------------------------------------

/// Why an operation failed.
#[derive(Debug)]
pub enum CoordError {
    /// The store failed (the door answers 500 and logs it).
    Store(StoreError),
    /// A stored record does not parse (a bug, or another release's data).
    Corrupt(String),
    /// Too many concurrent writers to one record; trying again may work.
    Contended,
}

impl From<StoreError> for CoordError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl std::fmt::Display for CoordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(e) => write!(f, "store: {e}"),
            Self::Corrupt(e) => write!(f, "corrupt record: {e}"),
            Self::Contended => write!(f, "too many concurrent changes to one record"),
        }
    }
}

type Res<T> = Result<T, CoordError>;

fn parse<T: DeserializeOwned>(json: &str) -> Res<T> {
    serde_json::from_str(json).map_err(|e| CoordError::Corrupt(e.to_string()))
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records serialize")
}

/// Reads one record.
pub async fn get<T: DeserializeOwned>(core: &Core, kind: CoordKind, key: &str) -> Res<Option<T>> {
    match core.store.coord_get(kind, key).await? {
        Some(v) => Ok(Some(parse(&v.json)?)),
        None => Ok(None),
    }
}

/// Every record of a kind (a record that does not parse is logged and
/// skipped, so one bad record cannot hide the others).
pub async fn list<T: DeserializeOwned>(core: &Core, kind: CoordKind) -> Res<Vec<T>> {
    let mut out = Vec::new();
    for (key, v) in core.store.coord_list(kind).await? {
        match parse(&v.json) {
            Ok(t) => out.push(t),
            Err(e) => {
                debug!(kind = kind.as_str(), %key, error = %e, "skipping a coordinator record")
            }
        }
    }
    Ok(out)
}

/// What a [`modify`] step decided.
pub enum Step<T, R> {
    /// Write this record, then return `R`.
    Write(T, R),
    /// Write nothing, return `R`.
    Keep(R),
}

/// Most attempts of one compare-and-set change before it gives up.
const ATTEMPTS: usize = 32;

/// Reads record `key`, lets `f` decide, and writes its result if nobody
/// wrote the record in between; otherwise reads again (at most
/// [`ATTEMPTS`] times).
pub async fn modify<T, R, F>(core: &Core, kind: CoordKind, key: &str, mut f: F) -> Res<R>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(Option<T>) -> Step<T, R>,
{
    for _ in 0..ATTEMPTS {
        let cur = core.store.coord_get(kind, key).await?;
        let (version, value) = match cur {
            Some(v) => (v.version, Some(parse::<T>(&v.json)?)),
            None => (0, None),
        };
        match f(value) {
            Step::Keep(r) => return Ok(r),
            Step::Write(t, r) => {
                if core
                    .store
                    .coord_put(kind, key, version, &to_json(&t))
                    .await?
                    .is_some()
                {
                    return Ok(r);
                }
            }
        }
    }
    Err(CoordError::Contended)
}

fn cfg(core: &Core) -> &CoordinatorDoor {
    &core.cfg.doors.coordinator
}

// ---------------------------------------------------------------------------
// Hosts
// ---------------------------------------------------------------------------

/// An id for the record `key` of `kind` when it does not exist yet, taken
/// before the change: a retry that finds the record created meanwhile
/// leaves a gap in the ids, never a duplicate.
async fn id_if_new(core: &Core, kind: CoordKind, key: &str) -> Res<Option<u64>> {
    Ok(match core.store.coord_get(kind, key).await? {
        Some(_) => None,
        None => Some(core.store.coord_next_id(kind).await?),
    })
}

/// Registers a host, or updates it (an upsert on `host_id`: its id and
/// metrics stay, its status is online again, its score recomputed).
pub async fn register_host(core: &Core, reg: Registration) -> Res<HostView> {
    let mut new_id = id_if_new(core, CoordKind::Host, &reg.host_id).await?;
    loop {
        let id_for_new = new_id;
        let out = modify(core, CoordKind::Host, &reg.host_id, |cur: Option<Host>| {
            let now = now_ms();
            let mut h = match cur {
                Some(h) => h,
                None => match id_for_new {
                    Some(id) => Host {
                        view: HostView {
                            id,
                            host_id: reg.host_id.clone(),
                            player_id: String::new(),
                            player_name: String::new(),
                            ip_address: String::new(),
                            port: 0,
                            public_ip: None,
                            cpu_cores: 0,
                            cpu_frequency_mhz: 0,
                            memory_mb: 0,
                            network_speed_mbps: 0,
                            latency_ms: 0.0,
                            packet_loss_percent: 0.0,
                            bandwidth_usage_mbps: 0.0,
                            status: "online".into(),
                            max_players: HOST_MAX_PLAYERS,
                            current_players: 0,
                            max_zones: HOST_MAX_ZONES,
                            current_zones: 0,
                            quality_score: 0.0,
                        },
                        ice_servers: None,
                        seen_ms: now,
                    },
                    // Deleted since we looked: take an id first.
                    None => return Step::Keep(None),
                },
            };
            let v = &mut h.view;
            v.player_id = reg.player_id.clone();
            v.player_name = reg.player_name.clone();
            v.ip_address = reg.ip_address.clone();
            v.port = reg.port;
            v.public_ip = reg.public_ip.clone();
            v.cpu_cores = reg.cpu_cores;
            v.cpu_frequency_mhz = reg.cpu_frequency_mhz;
            v.memory_mb = reg.memory_mb;
            v.network_speed_mbps = reg.network_speed_mbps;
            v.status = "online".into();
            v.quality_score = quality_score(v);
            h.ice_servers = reg.ice_servers.clone();
            h.seen_ms = now;
            let view = h.view.clone();
            Step::Write(h, Some(view))
        })
        .await?;
        match out {
            Some(v) => return Ok(v),
            None => new_id = Some(core.store.coord_next_id(CoordKind::Host).await?),
        }
    }
}

/// Applies a heartbeat; `None` when there is no such host.
pub async fn heartbeat(core: &Core, host_id: &str, hb: Heartbeat) -> Res<Option<HostView>> {
    modify(core, CoordKind::Host, host_id, |cur: Option<Host>| {
        let Some(mut h) = cur else {
            return Step::Keep(None);
        };
        let v = &mut h.view;
        v.latency_ms = hb.latency_ms;
        v.packet_loss_percent = hb.packet_loss_percent;
        v.bandwidth_usage_mbps = hb.bandwidth_usage_mbps;
        v.current_players = hb.current_players;
        v.current_zones = hb.current_zones;
        // A heartbeat from a host marked offline for want of one brings it
        // back (the old service never marked hosts offline at all).
        if v.status == "offline" {
            v.status = "online".into();
        }
        v.quality_score = quality_score(v);
        h.seen_ms = now_ms();
        let view = h.view.clone();
        Step::Write(h, Some(view))
    })
    .await
}

/// One host, staleness applied.
pub async fn get_host(core: &Core, host_id: &str) -> Res<Option<HostView>> {
    let h: Option<Host> = get(core, CoordKind::Host, host_id).await?;
    Ok(h.map(|h| h.shown(offline_after(cfg(core)), now_ms())))
}

/// Every host, staleness applied, by score (highest first, then id).
pub async fn list_hosts(core: &Core, min: Option<f64>) -> Res<Vec<HostView>> {
    let now = now_ms();
    let after = offline_after(cfg(core));
    let mut hosts: Vec<HostView> = list::<Host>(core, CoordKind::Host)
        .await?
        .iter()
        .map(|h| h.shown(after, now))
        .filter(|h| min.is_none_or(|m| h.quality_score >= m))
        .collect();
    sort_by_score(&mut hosts);
    Ok(hosts)
}

fn sort_by_score(hosts: &mut [HostView]) {
    hosts.sort_by(|a, b| {
        b.quality_score
            .total_cmp(&a.quality_score)
            .then(a.id.cmp(&b.id))
    });
}

/// Available hosts by score (see [`available`]).
pub async fn available_hosts(core: &Core, min: Option<f64>) -> Res<Vec<HostView>> {
    let now = now_ms();
    let c = cfg(core);
    let mut hosts: Vec<HostView> = list::<Host>(core, CoordKind::Host)
        .await?
        .iter()
        .filter(|h| available(h, c, now, min))
        .map(|h| h.shown(offline_after(c), now))
        .collect();
    sort_by_score(&mut hosts);
    Ok(hosts)
}

/// Deletes a host; false when there is none.
pub async fn delete_host(core: &Core, host_id: &str) -> Res<bool> {
    for _ in 0..ATTEMPTS {
        let Some(v) = core.store.coord_get(CoordKind::Host, host_id).await? else {
            return Ok(false);
        };
        if core
            .store
            .coord_delete(CoordKind::Host, host_id, v.version)
            .await?
        {
            return Ok(true);
        }
    }
    Err(CoordError::Contended)
}

// ---------------------------------------------------------------------------
// Zones
// ---------------------------------------------------------------------------

/// A zone's fields as created (`ZoneCreate`, validated by the door).
pub type ZoneCreate = CoordinatorZone;

/// Creates a zone, or updates its fields (its id, status and counters
/// stay). With `only_if_absent`, an existing zone is left as it is (the
/// zones of the configuration file).
pub async fn upsert_zone(core: &Core, z: &ZoneCreate, only_if_absent: bool) -> Res<Zone> {
    let mut new_id = id_if_new(core, CoordKind::Zone, &z.zone_id).await?;
    loop {
        let id_for_new = new_id;
        let out = modify(core, CoordKind::Zone, &z.zone_id, |cur: Option<Zone>| {
            let (id, status, counters) = match cur {
                Some(c) if only_if_absent => return Step::Keep(Some(c)),
                Some(c) => (
                    c.id,
                    c.status,
                    (c.total_sessions, c.active_sessions, c.total_players_served),
                ),
                None => match id_for_new {
                    Some(id) => (id, "enabled".to_string(), (0, 0, 0)),
                    None => return Step::Keep(None),
                },
            };
            let zone = Zone {
                id,
                zone_id: z.zone_id.clone(),
                zone_name: z.zone_name.clone(),
                zone_display_name: z.zone_display_name.clone(),
                map_name: z.map_name.clone(),
                max_players: z.max_players,
                recommended_players: z.recommended_players,
                p2p_enabled: z.p2p_enabled,
                p2p_priority: z.p2p_priority,
                fallback_enabled: z.fallback_enabled,
                min_host_quality_score: z.min_host_quality_score,
                min_bandwidth_mbps: z.min_bandwidth_mbps,
                max_latency_ms: z.max_latency_ms,
                status,
                total_sessions: counters.0,
                active_sessions: counters.1,
                total_players_served: counters.2,
                description: z.description.clone(),
            };
            Step::Write(zone.clone(), Some(zone))
        })
        .await?;
        match out {
            Some(z) => return Ok(z),
            None => new_id = Some(core.store.coord_next_id(CoordKind::Zone).await?),
        }
    }
}

/// One zone.
pub async fn get_zone(core: &Core, zone_id: &str) -> Res<Option<Zone>> {
    get(core, CoordKind::Zone, zone_id).await
}

/// Zones by priority (highest first), then name.
pub async fn list_zones(core: &Core, p2p: Option<bool>) -> Res<Vec<Zone>> {
    let mut zones: Vec<Zone> = list::<Zone>(core, CoordKind::Zone)
        .await?
        .into_iter()
        .filter(|z| p2p.is_none_or(|p| z.p2p_enabled == p))
        .collect();
    zones.sort_by(|a, b| {
        b.p2p_priority
            .cmp(&a.p2p_priority)
            .then_with(|| a.zone_name.cmp(&b.zone_name))
    });
    Ok(zones)
}

/// Sets a zone's `p2p_enabled`; `None` when there is no such zone.
pub async fn set_p2p(core: &Core, zone_id: &str, on: bool) -> Res<Option<Zone>> {
    modify(
        core,
        CoordKind::Zone,
        zone_id,
        |cur: Option<Zone>| match cur {
            None => Step::Keep(None),
            Some(mut z) => {
                z.p2p_enabled = on;
                Step::Write(z.clone(), Some(z))
            }
        },
    )
    .await
}

/// Creates the zones of the configuration file that do not exist yet.
pub async fn seed_zones(core: &Core) -> Res<usize> {
    let mut n = 0;
    for z in &cfg(core).zones {
        let mut z = z.clone();
        if z.zone_name.is_empty() {
            z.zone_name = z.zone_id.clone();
        }
        if z.zone_display_name.is_empty() {
            z.zone_display_name = z.zone_name.clone();
        }
        if z.map_name.is_empty() {
            z.map_name = z.zone_id.clone();
        }
        upsert_zone(core, &z, true).await?;
        n += 1;
    }
    Ok(n)
}

// ---------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------

/// Why a session was not created.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateRefused {
    /// The old service's cases: the host missing or not online, the zone
    /// missing or with p2p off.
    Failed,
    /// The named host does not meet the zone's requirements.
    Unfit(Unfit),
    /// No host was named and none available meets the zone's requirements.
    NoHost,
}

/// Creates a session in `zone_id` on `host_id`, or on the best available
/// host that meets the zone's requirements when `host_id` is `None`.
pub async fn create_session(
    core: &Core,
    host_id: Option<&str>,
    zone_id: &str,
    players: Vec<String>,
) -> Res<Result<SessionView, CreateRefused>> {
    let c = cfg(core);
    let now = now_ms();
    let Some(zone) = get_zone(core, zone_id).await? else {
        return Ok(Err(CreateRefused::Failed));
    };
    if !zone.p2p_enabled {
        return Ok(Err(CreateRefused::Failed));
    }
    let host = match host_id {
        Some(h) => {
            let Some(host) = get::<Host>(core, CoordKind::Host, h).await? else {
                return Ok(Err(CreateRefused::Failed));
            };
            if host.effective_status(offline_after(c), now) != "online" {
                return Ok(Err(CreateRefused::Failed));
            }
            if let Err(u) = check_requirements(&host.view, &zone) {
                return Ok(Err(CreateRefused::Unfit(u)));
            }
            host
        }
        None => {
            let mut hosts: Vec<Host> = list::<Host>(core, CoordKind::Host)
                .await?
                .into_iter()
                .filter(|h| available(h, c, now, None))
                .filter(|h| check_requirements(&h.view, &zone).is_ok())
                .collect();
            hosts.sort_by(|a, b| {
                b.view
                    .quality_score
                    .total_cmp(&a.view.quality_score)
                    .then(a.view.id.cmp(&b.view.id))
            });
            match hosts.into_iter().next() {
                Some(h) => h,
                None => return Ok(Err(CreateRefused::NoHost)),
            }
        }
    };
    let id = core.store.coord_next_id(CoordKind::Session).await?;
    let created = now_iso();
    let mut connected: Vec<String> = Vec::new();
    for p in players {
        if !connected.contains(&p) {
            connected.push(p);
        }
    }
    let s = Session {
        view: SessionView {
            id,
            session_id: format!(
                "session-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..16]
            ),
            host_id: host.view.id,
            zone_id: zone.id,
            current_players: connected.len() as i64,
            connected_players: connected,
            max_players: zone.max_players,
            status: "pending".into(),
            average_latency_ms: 0.0,
            average_packet_loss_percent: 0.0,
            bandwidth_usage_mbps: 0.0,
            started_at: None,
            ended_at: None,
            created_at: created.clone(),
            updated_at: created,
        },
        host_key: host.view.host_id.clone(),
        zone_key: zone.zone_id.clone(),
        changed_ms: now,
    };
    let written = core
        .store
        .coord_put(CoordKind::Session, &id.to_string(), 0, &to_json(&s))
        .await?;
    if written.is_none() {
        // Ids are never reused: only a bug (or a wiped counter) gets here.
        return Err(CoordError::Corrupt(format!(
            "session id {id} already taken"
        )));
    }
    Ok(Ok(s.view))
}

/// One session by its integer id.
pub async fn get_session(core: &Core, id: u64) -> Res<Option<SessionView>> {
    let s: Option<Session> = get(core, CoordKind::Session, &id.to_string()).await?;
    Ok(s.map(|s| s.view))
}

/// Changes a session with `f` (false: refused, nothing written). True when
/// the session exists and `f` accepted.
pub async fn change_session<F>(core: &Core, id: u64, mut f: F) -> Res<bool>
where
    F: FnMut(&mut Session) -> bool,
{
    modify(
        core,
        CoordKind::Session,
        &id.to_string(),
        |cur: Option<Session>| {
            let Some(mut s) = cur else {
                return Step::Keep(false);
            };
            if !f(&mut s) {
                return Step::Keep(false);
            }
            s.touch(now_ms());
            Step::Write(s, true)
        },
    )
    .await
}

/// Pending to active (sets `started_at`).
pub async fn activate(core: &Core, id: u64) -> Res<bool> {
    change_session(core, id, |s| {
        if s.view.status != "pending" {
            return false;
        }
        s.view.status = "active".into();
        s.view.started_at = Some(now_iso());
        true
    })
    .await
}

/// Any status to ended (sets `ended_at`).
pub async fn end(core: &Core, id: u64) -> Res<bool> {
    change_session(core, id, |s| {
        s.view.status = "ended".into();
        s.view.ended_at = Some(now_iso());
        true
    })
    .await
}

/// Sets the metrics given.
pub async fn set_metrics(
    core: &Core,
    id: u64,
    latency: Option<f64>,
    loss: Option<f64>,
    bandwidth: Option<f64>,
) -> Res<bool> {
    change_session(core, id, |s| {
        if let Some(v) = latency {
            s.view.average_latency_ms = v;
        }
        if let Some(v) = loss {
            s.view.average_packet_loss_percent = v;
        }
        if let Some(v) = bandwidth {
            s.view.bandwidth_usage_mbps = v;
        }
        true
    })
    .await
}

/// Adds a player (already there: success, nothing changes); refused when
/// the session is full.
pub async fn add_player(core: &Core, id: u64, player: &str) -> Res<bool> {
    modify(
        core,
        CoordKind::Session,
        &id.to_string(),
        |cur: Option<Session>| {
            let Some(mut s) = cur else {
                return Step::Keep(false);
            };
            if s.view.connected_players.iter().any(|p| p == player) {
                return Step::Keep(true);
            }
            if s.view.current_players >= s.view.max_players {
                return Step::Keep(false);
            }
            s.view.connected_players.push(player.to_string());
            s.view.current_players = s.view.connected_players.len() as i64;
            s.touch(now_ms());
            Step::Write(s, true)
        },
    )
    .await
}

/// Removes a player; refused when the session or the player is not there.
pub async fn remove_player(core: &Core, id: u64, player: &str) -> Res<bool> {
    change_session(core, id, |s| {
        let before = s.view.connected_players.len();
        s.view.connected_players.retain(|p| p != player);
        s.view.current_players = s.view.connected_players.len() as i64;
        s.view.connected_players.len() != before
    })
    .await
}

/// Active sessions of a host (`by_host`) or a zone, by id.
pub async fn active_sessions(core: &Core, key: &str, by_host: bool) -> Res<Vec<SessionView>> {
    let mut out: Vec<SessionView> = list::<Session>(core, CoordKind::Session)
        .await?
        .into_iter()
        .filter(|s| s.view.status == "active")
        .filter(|s| {
            if by_host {
                s.host_key == key
            } else {
                s.zone_key == key
            }
        })
        .map(|s| s.view)
        .collect();
    out.sort_by_key(|s| s.id);
    Ok(out)
}

/// Every session.
pub async fn all_sessions(core: &Core) -> Res<Vec<Session>> {
    list(core, CoordKind::Session).await
}

/// Every host as stored.
pub async fn all_hosts(core: &Core) -> Res<Vec<Host>> {
    list(core, CoordKind::Host).await
}

/// Marks a live session failed (sets `ended_at`); true when this call did.
async fn fail_session(core: &Core, id: u64, still: impl Fn(&Session) -> bool) -> Res<bool> {
    change_session(core, id, |s| {
        if !s.is_live() || !still(s) {
            return false;
        }
        s.view.status = "failed".into();
        s.view.ended_at = Some(now_iso());
        true
    })
    .await
}

/// Marks failed every pending or active session unchanged for `timeout`;
/// returns how many this call marked.
pub async fn cleanup_stale(core: &Core, timeout: Duration) -> Res<usize> {
    let cutoff = now_ms().saturating_sub(timeout.as_millis() as u64);
    let mut n = 0;
    for s in all_sessions(core).await? {
        if s.is_live() && s.changed_ms < cutoff {
            // Checked again inside the change: a session touched since it
            // was listed is left alone.
            if fail_session(core, s.view.id, |s| s.changed_ms < cutoff).await? {
                ::metrics::counter!(m::COORDINATOR_SESSIONS_FAILED, "reason" => "stale")
                    .increment(1);
                n += 1;
            }
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------
// Background work
// ---------------------------------------------------------------------------

/// Tells a failed session's peers that it failed: a server message to the
/// signaling session named by its `session_id` (`session-...`) and to the
/// one named by its integer id, the two names a game client can have joined
/// it under. They get `broadcast {session_id, data, timestamp}` with `data`
/// `{"type": "session-failed", "session_id", "id", "reason": "host-offline"}`
/// (docs/DOORS.md, "Coordinator"). A failed delivery is logged: the session
/// is failed in the store either way.
pub async fn notify_session_failed(node: &Node, session: &SessionView) {
    let data = serde_json::json!({
        "type": "session-failed",
        "session_id": session.session_id,
        "id": session.id,
        "reason": "host-offline",
    });
    let max = node.core.cfg.limits.max_name_bytes;
    for name in [session.session_id.clone(), session.id.to_string()] {
        let Ok(room) = crate::types::RoomName::parse(&signaling_room(&name), max) else {
            continue;
        };
        if let Err(e) = node.rooms.publish(&room, data.clone()).await {
            warn!(session = session.id, room = %room, error = %e.message, "could not tell a failed session's peers");
        }
    }
    info!(
        node = %node.core.id,
        session = session.id,
        session_id = %session.session_id,
        "coordinator session failed: its host is offline"
    );
}

/// Session health: every live session whose host is offline (marked,
/// stale, or gone) is marked failed and its peers told. Returns how many.
pub async fn check_health(node: &Node) -> Res<usize> {
    let core = &node.core;
    let after = offline_after(cfg(core));
    let now = now_ms();
    let hosts = all_hosts(core).await?;
    let online = |key: &str| {
        hosts
            .iter()
            .any(|h| h.view.host_id == key && h.effective_status(after, now) == "online")
    };
    let mut n = 0;
    for s in all_sessions(core).await? {
        if !s.is_live() || online(&s.host_key) {
            continue;
        }
        if fail_session(core, s.view.id, |_| true).await? {
            ::metrics::counter!(m::COORDINATOR_SESSIONS_FAILED, "reason" => "host-offline")
                .increment(1);
            let mut view = s.view.clone();
            view.status = "failed".into();
            notify_session_failed(node, &view).await;
            n += 1;
        }
    }
    Ok(n)
}

/// Host staleness: writes `offline` on every online host not seen for
/// `host_offline_after_s`. Returns how many.
pub async fn mark_stale_hosts(core: &Core) -> Res<usize> {
    let after = offline_after(cfg(core));
    let now = now_ms();
    let mut n = 0;
    for h in all_hosts(core).await? {
        if h.view.status != "online" || !h.is_stale(after, now) {
            continue;
        }
        let marked = modify(
            core,
            CoordKind::Host,
            &h.view.host_id,
            |cur: Option<Host>| match cur {
                Some(mut h) if h.view.status == "online" && h.is_stale(after, now_ms()) => {
                    h.view.status = "offline".into();
                    Step::Write(h, true)
                }
                _ => Step::Keep(false),
            },
        )
        .await?;
        if marked {
            ::metrics::counter!(m::COORDINATOR_HOSTS_OFFLINE).increment(1);
            n += 1;
        }
    }
    Ok(n)
}

/// The background work of one node: creates the configured zones unless
/// `seeded` (done at start), then every `lease_tick_ms` takes or renews [`LEASE`] (it lives three ticks,
/// so a dead holder is replaced within about that) and, holding it, runs
/// what is due: host staleness and session health every
/// `health_interval_ms`, stale session cleanup every `cleanup_interval_ms`.
/// A node that takes the lease over runs both at once. If two nodes ever
/// ran at once (a holder stalled past its lease), each change is still a
/// compare-and-set, so every session is failed once.
pub async fn background(node: std::sync::Weak<Node>, mut seeded: bool) {
    let (tick, health, cleanup, timeout) = match node.upgrade() {
        Some(n) => {
            let c = cfg(&n.core);
            (
                c.lease_tick,
                c.health_interval,
                c.cleanup_interval,
                Duration::from_secs(c.session_timeout_s),
            )
        }
        None => return,
    };
    let lease = tick.saturating_mul(3);
    let mut timer = tokio::time::interval(tick);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When each task last ran while this node held the lease.
    let mut last_health: Option<tokio::time::Instant> = None;
    let mut last_cleanup: Option<tokio::time::Instant> = None;
    loop {
        timer.tick().await;
        let Some(node) = node.upgrade() else { return };
        let core = &node.core;
        if !seeded {
            seeded = seed_zones(core).await.is_ok();
        }
        let held = core.hold_lease(LEASE, lease).await;
        ::metrics::gauge!(m::COORDINATOR_LEASE_HELD).set(if held { 1.0 } else { 0.0 });
        if !held {
            last_health = None;
            last_cleanup = None;
            continue;
        }
        let now = tokio::time::Instant::now();
        if last_health.is_none_or(|t| now.duration_since(t) >= health) {
            last_health = Some(now);
            match mark_stale_hosts(core).await {
                Ok(n) => {
                    ::metrics::counter!(m::COORDINATOR_RUNS, "task" => "staleness").increment(1);
                    if n > 0 {
                        info!(hosts = n, "coordinator hosts marked offline: no heartbeat");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "coordinator host staleness failed"),
            }
            match check_health(&node).await {
                Ok(n) => {
                    ::metrics::counter!(m::COORDINATOR_RUNS, "task" => "health").increment(1);
                    if n > 0 {
                        info!(sessions = n, "coordinator sessions failed: host offline");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "coordinator session health failed"),
            }
        }
        if last_cleanup.is_none_or(|t| now.duration_since(t) >= cleanup) {
            last_cleanup = Some(now);
            match cleanup_stale(core, timeout).await {
                Ok(n) => {
                    ::metrics::counter!(m::COORDINATOR_RUNS, "task" => "cleanup").increment(1);
                    if n > 0 {
                        info!(sessions = n, "coordinator stale sessions failed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "coordinator session cleanup failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(cores: i64, mb: i64, mbps: i64) -> HostView {
        HostView {
            id: 1,
            host_id: "h".into(),
            player_id: "p".into(),
            player_name: "n".into(),
            ip_address: "127.0.0.1".into(),
            port: 5000,
            public_ip: None,
            cpu_cores: cores,
            cpu_frequency_mhz: 3000,
            memory_mb: mb,
            network_speed_mbps: mbps,
            latency_ms: 0.0,
            packet_loss_percent: 0.0,
            bandwidth_usage_mbps: 0.0,
            status: "online".into(),
            max_players: HOST_MAX_PLAYERS,
            current_players: 0,
            max_zones: HOST_MAX_ZONES,
            current_zones: 0,
            quality_score: 0.0,
        }
    }

    #[test]
    fn the_worked_example_scores_100_then_92_3() {
        let mut h = host(8, 16384, 1000);
        assert_eq!(quality_score(&h), 100.0);
        h.latency_ms = 50.0;
        h.packet_loss_percent = 0.1;
        h.current_players = 5;
        assert_eq!(quality_score(&h), 92.3);
    }

    #[test]
    fn each_component_is_capped_and_floored() {
        // 2 cores (5), 4096 MB (5), 50 Mbps (2.5), latency 500 (0), loss 50 (0), full (0).
        let mut h = host(2, 4096, 50);
        h.latency_ms = 500.0;
        h.packet_loss_percent = 50.0;
        h.current_players = 50;
        assert_eq!(quality_score(&h), 12.5);
        // Over capacity never goes below 0 overall.
        h.current_players = 500;
        h.cpu_cores = 1;
        h.memory_mb = 1;
        h.network_speed_mbps = 1;
        assert_eq!(quality_score(&h), 0.0);
    }

    fn zone() -> Zone {
        Zone {
            id: 1,
            zone_id: "z".into(),
            zone_name: "z".into(),
            zone_display_name: "z".into(),
            map_name: "m".into(),
            max_players: 100,
            recommended_players: 50,
            p2p_enabled: true,
            p2p_priority: 1,
            fallback_enabled: true,
            min_host_quality_score: 7.0,
            min_bandwidth_mbps: 100,
            max_latency_ms: 100,
            status: "enabled".into(),
            total_sessions: 0,
            active_sessions: 0,
            total_players_served: 0,
            description: None,
        }
    }

    #[test]
    fn requirements_use_ten_times_the_zone_minimum() {
        let z = zone();
        let mut h = host(8, 16384, 1000);
        h.quality_score = 70.0;
        assert_eq!(check_requirements(&h, &z), Ok(()));
        h.quality_score = 69.99;
        assert_eq!(
            check_requirements(&h, &z),
            Err(Unfit::Score {
                score: 69.99,
                min: 70.0
            })
        );
        h.quality_score = 90.0;
        h.network_speed_mbps = 99;
        assert_eq!(
            check_requirements(&h, &z),
            Err(Unfit::Bandwidth { mbps: 99, min: 100 })
        );
        h.network_speed_mbps = 100;
        h.latency_ms = 100.5;
        assert_eq!(
            check_requirements(&h, &z),
            Err(Unfit::Latency {
                ms: 100.5,
                max: 100
            })
        );
    }

    #[test]
    fn a_host_not_seen_for_the_bound_is_offline() {
        let h = Host {
            view: host(8, 16384, 1000),
            ice_servers: None,
            seen_ms: 10_000,
        };
        let after = Duration::from_secs(60);
        assert_eq!(h.effective_status(after, 70_000), "online");
        assert_eq!(h.effective_status(after, 70_001), "offline");
    }

    #[test]
    fn timestamps_have_microseconds_and_an_offset() {
        assert_eq!(
            iso_micros(1_762_832_653_123_456),
            "2025-11-11T03:44:13.123456+00:00"
        );
    }

    #[test]
    fn room_names() {
        assert_eq!(signaling_room("s-1"), "coordinator/session/s-1");
        assert_eq!(zone_room("prontera"), "coordinator/zone/prontera");
    }
}
