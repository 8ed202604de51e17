//! Store conformance: one set of behaviour tests, run against the memory
//! store and against a real redis-server (`RedisStore`, spawned per test).
//!
//! Each behaviour is an `async fn(Fixture)`; `conformance!` makes a
//! `memory` and a `redis` test of it. A fixture hands out one store per
//! node id: the memory backend shares one `MemoryStore` between all of them
//! (it serves one process), the Redis backend gives each node its own
//! connections and `RedisStore` over one key prefix, as a cluster does.
//! Where the backends differ by design (the memory store has no dead
//! nodes), the test says so and checks each side's documented behaviour.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard::cluster::TEMPLATES;
use switchboard::store::{
    all_rooms, now_ms, Claim, Claimed, Door, EndpointUpdate, Enqueued, Membership, PairError,
    PeerLocation, RoomAccess, RoomRecord, RoomSummary, Store, StoreError, Unpaired, Which,
    WorkerConn, WorkerState, ROOM_KEY_GRACE_MS,
};
use switchboard::types::Member;
use switchboard::types::{NodeId, PeerId, PoolName, RoomName};

use crate::store_fixture::{conformance, Fixture};

conformance!(
    directory_newest_wins_and_epochs,
    a_nodes_peers_are_listed_in_pages_and_searched,
    a_held_peer_id_is_taken_only_with_proof,
    implicit_rooms_come_and_go_with_their_members,
    explicit_rooms_stay_until_deleted,
    joins_check_the_token_and_the_lifetime,
    expired_rooms_are_removed_once,
    a_lease_has_one_holder,
    slots_are_taken_all_or_none_and_end_with_their_time,
    joins_replace_older_connections_and_restore_ignores_limits,
    room_listing_pages_by_name,
    reaping_a_dead_node_is_exactly_once,
    own_entries_and_reregistration,
    matching_is_first_come_first_served_and_skips_stale_entries,
    partners_are_freed_once,
    concurrent_matching_pairs_every_worker_exactly_once,
    worker_doors_round_trip,
);

fn node(s: &str) -> NodeId {
    NodeId::from_trusted(s)
}

fn pid(s: &str) -> PeerId {
    PeerId::from_trusted(s)
}

fn room(s: &str) -> RoomName {
    RoomName::from_trusted(s)
}

fn member(p: &str) -> Member {
    Member {
        peer_id: pid(p),
        meta: json!({"name": p}),
    }
}

fn at(n: &str, epoch: u64) -> PeerLocation {
    PeerLocation {
        node: node(n),
        epoch,
    }
}

fn ids(members: &[Member]) -> Vec<&str> {
    members.iter().map(|m| m.peer_id.as_str()).collect()
}

fn summary(r: &str, members: usize) -> RoomSummary {
    RoomSummary::implicit(room(r), members)
}

/// The summary of a room made from [`explicit`].
fn made(r: &str, members: usize, max_peers: Option<usize>) -> RoomSummary {
    RoomSummary {
        explicit: true,
        expires_at: Some(FAR),
        max_peers,
        ..summary(r, members)
    }
}

/// An `expires_at` no test reaches (2100-01-01).
const FAR: u64 = 4_102_444_800_000;

async fn directory_newest_wins_and_epochs(fx: Fixture) {
    let (a, b) = (fx.node("a").await, fx.node("b").await);
    let p = pid("p");
    assert_eq!(a.locate_peer(&p).await.unwrap(), None);
    assert_eq!(a.register_peer(&p, at("a", 1)).await.unwrap(), None);
    assert_eq!(
        a.register_peer(&p, at("a", 2)).await.unwrap(),
        Some(at("a", 1))
    );
    assert_eq!(a.locate_peer(&p).await.unwrap(), Some(at("a", 2)));
    // A late cleanup of the older connection removes nothing.
    assert!(!a.unregister_peer(&p, 1).await.unwrap());
    assert_eq!(b.locate_peer(&p).await.unwrap(), Some(at("a", 2)));
    assert!(a.unregister_peer(&p, 2).await.unwrap());
    assert!(!a.unregister_peer(&p, 2).await.unwrap());
    assert_eq!(b.locate_peer(&p).await.unwrap(), None);
    // Re-registration after an outage: an entry of another node wins over it.
    assert_eq!(a.reregister_peer(&p, at("a", 3)).await.unwrap(), None);
    assert_eq!(
        a.reregister_peer(&p, at("a", 4)).await.unwrap(),
        None,
        "its own node's entry is overwritten"
    );
    assert_eq!(
        b.register_peer(&p, at("b", 5)).await.unwrap(),
        Some(at("a", 4))
    );
    assert_eq!(
        a.reregister_peer(&p, at("a", 4)).await.unwrap(),
        Some(at("b", 5))
    );
    assert_eq!(a.locate_peer(&p).await.unwrap(), Some(at("b", 5)));
}

async fn a_held_peer_id_is_taken_only_with_proof(fx: Fixture) {
    let (a, b) = (fx.node("a").await, fx.node("b").await);
    let ttl = Duration::from_secs(60);
    a.heartbeat(&node("a"), ttl).await.unwrap();
    b.heartbeat(&node("b"), ttl).await.unwrap();
    let p = pid("p");
    let claim = |presented: Option<u8>, secret: u8, token_for_id| Claim {
        token_for_id,
        presented: presented.map(|b| [b; 32]),
        secret: [secret; 32],
    };
    assert_eq!(
        a.claim_peer(&p, at("a", 1), &claim(None, 1, false))
            .await
            .unwrap(),
        Claimed::Registered(None)
    );
    // Another node, no proof or the wrong secret: refused, nothing changes.
    for c in [claim(None, 2, false), claim(Some(9), 2, false)] {
        assert_eq!(
            b.claim_peer(&p, at("b", 2), &c).await.unwrap(),
            Claimed::Taken(at("a", 1))
        );
    }
    assert_eq!(b.locate_peer(&p).await.unwrap(), Some(at("a", 1)));
    // The owner's secret takes it over, and the new secret replaces the old.
    assert_eq!(
        b.claim_peer(&p, at("b", 3), &claim(Some(1), 3, false))
            .await
            .unwrap(),
        Claimed::Registered(Some(at("a", 1)))
    );
    assert_eq!(
        a.claim_peer(&p, at("a", 4), &claim(Some(1), 4, false))
            .await
            .unwrap(),
        Claimed::Taken(at("b", 3))
    );
    // A token for the id takes it over without a secret.
    assert_eq!(
        a.claim_peer(&p, at("a", 5), &claim(None, 5, true))
            .await
            .unwrap(),
        Claimed::Registered(Some(at("b", 3)))
    );
    // The owner's own node decides by its hub: the store lets it through.
    assert_eq!(
        a.claim_peer(&p, at("a", 6), &claim(None, 6, false))
            .await
            .unwrap(),
        Claimed::Registered(Some(at("a", 5)))
    );
    // Once unregistered the id is free again, and its secret went with it.
    assert!(a.unregister_peer(&p, 6).await.unwrap());
    assert_eq!(
        b.claim_peer(&p, at("b", 7), &claim(None, 7, false))
            .await
            .unwrap(),
        Claimed::Registered(None)
    );
    assert_eq!(
        a.claim_peer(&p, at("a", 8), &claim(Some(6), 8, false))
            .await
            .unwrap(),
        Claimed::Taken(at("b", 7)),
        "an unregistered connection's secret proves nothing"
    );
    if !fx.is_redis() {
        // One process: no node of the memory store is ever dead.
        assert_eq!(a.dead_nodes().await.unwrap(), Vec::<NodeId>::new());
        return;
    }
    let k = fx.keys();
    // Redis lost the secret (a restart): restoring it makes it prove again.
    fx.raw(&["DEL", &k.node_secrets(&node("b"))]);
    assert_eq!(
        a.claim_peer(&p, at("a", 9), &claim(Some(7), 9, false))
            .await
            .unwrap(),
        Claimed::Taken(at("b", 7))
    );
    b.restore_secret(&p, &at("b", 7), &[7; 32]).await.unwrap();
    b.keep_secrets(&node("b")).await.unwrap();
    let pttl: i64 = fx.raw(&["PTTL", &k.node_secrets(&node("b"))])[1..]
        .trim()
        .parse()
        .unwrap();
    assert!(pttl > 0, "secrets expire with the node: {pttl}");
    assert_eq!(
        a.claim_peer(&p, at("a", 10), &claim(Some(7), 10, false))
            .await
            .unwrap(),
        Claimed::Registered(Some(at("b", 7)))
    );
    // The owner's node is dead: the id is free to take without proof.
    fx.raw(&["DEL", &k.node_alive(&node("a"))]);
    assert_eq!(a.live_nodes().await.unwrap(), vec![node("b")]);
    assert_eq!(
        b.claim_peer(&p, at("b", 11), &claim(None, 11, false))
            .await
            .unwrap(),
        Claimed::Registered(Some(at("a", 10)))
    );
}

async fn implicit_rooms_come_and_go_with_their_members(fx: Fixture) {
    let s = fx.node("n").await;
    let r = room("r");
    let before = now_ms();
    assert!(s
        .join_room(&r, &member("a"), 1, 10)
        .await
        .unwrap()
        .is_empty());
    let after = now_ms();
    let rec = s.get_room(&r).await.unwrap().expect("an implicit record");
    assert!(
        (before..=after).contains(&rec.created_at),
        "{} not in {before}..={after}",
        rec.created_at
    );
    assert_eq!(rec, RoomRecord::implicit(r.clone(), rec.created_at));
    assert_eq!(
        ids(&s.join_room(&r, &member("b"), 2, 10).await.unwrap()),
        ["a"]
    );
    assert_eq!(
        s.room_members(&r).await.unwrap().unwrap(),
        vec![member("a"), member("b")]
    );
    assert_eq!(all_rooms(s.as_ref()).await.unwrap(), vec![summary("r", 2)]);
    assert!(s.leave_room(&r, &pid("a"), 1).await.unwrap());
    assert!(s.get_room(&r).await.unwrap().is_some());
    assert!(s.leave_room(&r, &pid("b"), 2).await.unwrap());
    // The last leave took the implicit record with it.
    assert_eq!(s.get_room(&r).await.unwrap(), None);
    assert_eq!(s.room_members(&r).await.unwrap(), None);
    assert_eq!(all_rooms(s.as_ref()).await.unwrap(), vec![]);
    assert_eq!(s.delete_room(&r).await.unwrap(), None);
    // A join refused for size leaves no record behind.
    assert!(matches!(
        s.join_room(&r, &member("c"), 3, 0).await,
        Err(StoreError::RoomFull)
    ));
    assert_eq!(s.get_room(&r).await.unwrap(), None);
    if fx.is_redis() {
        let k = fx.keys();
        for key in [k.room_record(&r), k.room_members(&r), k.room_nodes(&r)] {
            assert_eq!(fx.raw(&["EXISTS", &key]), ":0\r\n", "{key} left behind");
        }
        assert_eq!(fx.raw(&["EXISTS", &k.room_index()]), ":0\r\n");
    }
}

fn explicit(r: &str, max_peers: Option<usize>) -> RoomRecord {
    RoomRecord {
        name: room(r),
        created_at: 1_700_000_000_000,
        expires_at: Some(FAR),
        max_peers,
        token_hash: None,
        meta: json!({"title": "standup", "deep": [[[1]]]}),
        explicit: false,
    }
}

async fn explicit_rooms_stay_until_deleted(fx: Fixture) {
    let (s, t) = (fx.node("n").await, fx.node("m").await);
    let e = room("e");
    s.create_room(&explicit("e", Some(2))).await.unwrap();
    let stored = s.get_room(&e).await.unwrap().unwrap();
    assert_eq!(
        stored,
        RoomRecord {
            explicit: true,
            ..explicit("e", Some(2))
        }
    );
    // Exactly one creator wins, and a room with members exists implicitly.
    assert!(matches!(
        t.create_room(&explicit("e", None)).await,
        Err(StoreError::RoomExists)
    ));
    s.join_room(&room("busy"), &member("x"), 1, 10)
        .await
        .unwrap();
    assert!(matches!(
        s.create_room(&explicit("busy", None)).await,
        Err(StoreError::RoomExists)
    ));
    assert!(!s.get_room(&room("busy")).await.unwrap().unwrap().explicit);
    // Empty, it is listed with 0 members but has no member list.
    assert_eq!(s.room_members(&e).await.unwrap(), None);
    assert_eq!(
        all_rooms(s.as_ref()).await.unwrap(),
        vec![summary("busy", 1), made("e", 0, Some(2))]
    );
    // The record's max_peers replaces the caller's limit, both ways.
    s.join_room(&e, &member("a"), 1, 1).await.unwrap();
    t.join_room(&e, &member("b"), 2, 1).await.unwrap();
    assert!(matches!(
        s.join_room(&e, &member("c"), 3, 100).await,
        Err(StoreError::RoomFull)
    ));
    // Leaving empties it; the explicit record stays.
    assert!(s.leave_room(&e, &pid("a"), 1).await.unwrap());
    assert!(t.leave_room(&e, &pid("b"), 2).await.unwrap());
    assert_eq!(s.get_room(&e).await.unwrap(), Some(stored.clone()));
    assert_eq!(
        all_rooms(s.as_ref()).await.unwrap(),
        vec![summary("busy", 1), made("e", 0, Some(2))]
    );
    // Deleting returns every membership once, with its epoch.
    s.join_room(&e, &member("a"), 4, 10).await.unwrap();
    t.join_room(&e, &member("b"), 5, 10).await.unwrap();
    assert_eq!(
        t.delete_room(&e).await.unwrap(),
        Some(vec![
            Membership {
                member: member("a"),
                epoch: 4
            },
            Membership {
                member: member("b"),
                epoch: 5
            },
        ])
    );
    assert_eq!(s.delete_room(&e).await.unwrap(), None);
    assert_eq!(s.get_room(&e).await.unwrap(), None);
    assert_eq!(s.room_members(&e).await.unwrap(), None);
    assert!(!s.leave_room(&e, &pid("a"), 4).await.unwrap());
    assert_eq!(
        all_rooms(s.as_ref()).await.unwrap(),
        vec![summary("busy", 1)]
    );
    // Deleting an implicit room works the same; a join after it starts afresh.
    assert_eq!(
        s.delete_room(&room("busy")).await.unwrap(),
        Some(vec![Membership {
            member: member("x"),
            epoch: 1
        }])
    );
    assert!(s
        .join_room(&e, &member("c"), 6, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(!s.get_room(&e).await.unwrap().unwrap().explicit);
    if fx.is_redis() {
        // Nothing of the deleted rooms is left in the nodes' room sets.
        let k = fx.keys();
        assert_eq!(fx.raw(&["SMEMBERS", &k.node_rooms(&node("m"))]), "*0\r\n");
        assert_eq!(
            fx.raw(&["SMEMBERS", &k.node_rooms(&node("n"))]),
            "*1\r\n$1\r\ne\r\n"
        );
    }
}

/// A record with a token (`[7; 32]`) and `expires_at`.
fn guarded(r: &str, expires_at: u64) -> RoomRecord {
    RoomRecord {
        name: room(r),
        created_at: now_ms(),
        expires_at: Some(expires_at),
        max_peers: None,
        token_hash: Some([7; 32]),
        meta: json!(null),
        explicit: true,
    }
}

/// The PTTL of `key`, in ms (-2: no such key, -1: no expiry).
fn pttl(fx: &Fixture, key: &str) -> i64 {
    fx.raw(&["PTTL", key])[1..].trim().parse().unwrap()
}

async fn joins_check_the_token_and_the_lifetime(fx: Fixture) {
    let (s, t) = (fx.node("n").await, fx.node("m").await);
    let now = now_ms();
    let x = now + 3_600_000;
    let r = room("t");
    s.create_room(&guarded("t", x)).await.unwrap();
    let shows = |token: Option<u8>, granted| RoomAccess {
        token: token.map(|b| [b; 32]),
        granted,
    };
    // No token, another token: refused, and nothing written.
    for (access, want) in [
        (shows(None, false), "required"),
        (shows(Some(8), false), "invalid"),
    ] {
        let r = t
            .join_room_with(&r, &member("a"), 1, 10, &access, now)
            .await;
        match (want, r) {
            ("required", Err(StoreError::RoomTokenRequired))
            | ("invalid", Err(StoreError::RoomTokenInvalid)) => {}
            (_, other) => panic!("{want}: {other:?}"),
        }
    }
    assert!(matches!(
        s.join_room(&r, &member("a"), 1, 10).await,
        Err(StoreError::RoomTokenRequired)
    ));
    assert_eq!(s.room_members(&r).await.unwrap(), None);
    // The token, or a grant without one, admits.
    assert!(t
        .join_room_with(&r, &member("a"), 1, 10, &shows(Some(7), false), now)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(&s
            .join_room_with(&r, &member("b"), 2, 10, &shows(None, true), now)
            .await
            .unwrap()),
        ["a"]
    );
    // At `expires_at` the room admits nobody, token or not; a moment
    // before it still does.
    for access in [shows(Some(7), false), shows(None, true)] {
        assert!(matches!(
            s.join_room_with(&r, &member("c"), 3, 10, &access, x).await,
            Err(StoreError::RoomExpired)
        ));
    }
    assert_eq!(
        ids(&s
            .join_room_with(&r, &member("c"), 3, 10, &shows(Some(7), false), x - 1)
            .await
            .unwrap()),
        ["a", "b"]
    );
    // A restore after an outage checks neither (the member was admitted).
    assert!(s.leave_room(&r, &pid("c"), 3).await.unwrap());
    assert!(s.restore_member(&r, &member("c"), 3).await.unwrap());
    assert_eq!(
        ids(&s.room_members(&r).await.unwrap().unwrap()),
        ["a", "b", "c"]
    );
    // Rooms without a token are open to any access.
    s.create_room(&explicit("open", None)).await.unwrap();
    s.join_room_with(
        &room("open"),
        &member("a"),
        1,
        10,
        &shows(Some(9), false),
        now,
    )
    .await
    .unwrap();
    s.join_room(&room("open"), &member("b"), 2, 10)
        .await
        .unwrap();
    if fx.is_redis() {
        // Every key of a room with a lifetime expires a grace period after it.
        let k = fx.keys();
        for key in [k.room_record(&r), k.room_members(&r), k.room_nodes(&r)] {
            // Read the clock first: the PTTL, read after, can only be less.
            let due = (x + ROOM_KEY_GRACE_MS - now_ms()) as i64;
            let left = pttl(&fx, &key);
            assert!(
                (due - 60_000..=due).contains(&left),
                "{key}: PTTL {left}, expected about {due}"
            );
        }
        let due: i64 = fx
            .raw(&["ZSCORE", &k.room_expiry(), "t"])
            .lines()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(due, x as i64);
    }
}

async fn expired_rooms_are_removed_once(fx: Fixture) {
    let (s, t) = (fx.node("n").await, fx.node("m").await);
    let now = now_ms();
    let (t1, t2, later) = (now + 10_000, now + 20_000, now + 30_000);
    let open = |r: &str, x: Option<u64>| RoomRecord {
        token_hash: None,
        expires_at: x,
        ..guarded(r, 0)
    };
    s.create_room(&open("b", Some(t2))).await.unwrap();
    s.create_room(&open("a", Some(t1))).await.unwrap();
    s.create_room(&open("c", None)).await.unwrap();
    s.create_room(&open("d", Some(later))).await.unwrap();
    // Due rooms, soonest first, bounded; none before their time.
    assert_eq!(s.expiring_rooms(now, 10).await.unwrap(), vec![]);
    assert_eq!(
        s.expiring_rooms(t2, 10).await.unwrap(),
        [room("a"), room("b")]
    );
    assert_eq!(s.expiring_rooms(t2, 1).await.unwrap(), [room("a")]);
    assert_eq!(s.expiring_rooms(t2, 0).await.unwrap(), vec![]);
    // Members on two nodes; two sweepers at once: one gets every membership.
    s.join_room_with(&room("a"), &member("p"), 1, 10, &RoomAccess::default(), now)
        .await
        .unwrap();
    t.join_room_with(&room("a"), &member("q"), 2, 10, &RoomAccess::default(), now)
        .await
        .unwrap();
    let a = room("a");
    let (x, y) = tokio::join!(s.expire_room(&a, t2), t.expire_room(&a, t2));
    let mut got: Vec<_> = [x.unwrap(), y.unwrap()].into_iter().flatten().collect();
    assert_eq!(got.len(), 1, "exactly one sweeper removes the room");
    assert_eq!(
        got.pop().unwrap(),
        vec![
            Membership {
                member: member("p"),
                epoch: 1
            },
            Membership {
                member: member("q"),
                epoch: 2
            },
        ]
    );
    assert_eq!(s.get_room(&room("a")).await.unwrap(), None);
    // Not due yet, or no lifetime: left alone.
    assert_eq!(s.expire_room(&room("d"), t2).await.unwrap(), None);
    assert_eq!(s.expire_room(&room("c"), later).await.unwrap(), None);
    assert!(s.get_room(&room("d")).await.unwrap().is_some());
    assert!(s.get_room(&room("c")).await.unwrap().is_some());
    // An empty room expires too (nobody to tell).
    assert_eq!(s.expire_room(&room("b"), t2).await.unwrap(), Some(vec![]));
    assert_eq!(s.expiring_rooms(later, 10).await.unwrap(), [room("d")]);
    // Deleting a room with a lifetime takes it out of the expiry index.
    assert_eq!(s.delete_room(&room("d")).await.unwrap(), Some(vec![]));
    assert_eq!(s.expiring_rooms(later, 10).await.unwrap(), vec![]);
    // A room made again under an expired name lives its own lifetime.
    s.create_room(&open("a", Some(later))).await.unwrap();
    assert_eq!(s.expire_room(&room("a"), t2).await.unwrap(), None);
    assert!(s.get_room(&room("a")).await.unwrap().is_some());
    assert_eq!(
        all_rooms(s.as_ref())
            .await
            .unwrap()
            .iter()
            .map(|r| r.room.as_str())
            .collect::<Vec<_>>(),
        ["a", "c"]
    );
    if fx.is_redis() {
        let k = fx.keys();
        for r in ["b", "d"] {
            let r = room(r);
            for key in [k.room_record(&r), k.room_members(&r), k.room_nodes(&r)] {
                assert_eq!(fx.raw(&["EXISTS", &key]), ":0\r\n", "{key} left behind");
            }
        }
        for n in ["n", "m"] {
            assert_eq!(fx.raw(&["SMEMBERS", &k.node_rooms(&node(n))]), "*0\r\n");
        }
        assert_eq!(
            fx.raw(&["ZRANGE", &k.room_expiry(), "0", "-1"]),
            "*1\r\n$1\r\na\r\n"
        );
        // A name left in the expiry index without its record (Redis expired
        // the keys) is taken out by the next sweep, which removes nothing.
        fx.raw(&["DEL", &k.room_record(&room("a"))]);
        assert_eq!(s.expiring_rooms(later, 10).await.unwrap(), [room("a")]);
        assert_eq!(s.expire_room(&room("a"), later).await.unwrap(), None);
        assert_eq!(fx.raw(&["EXISTS", &k.room_expiry()]), ":0\r\n");
    }
}

async fn a_lease_has_one_holder(fx: Fixture) {
    let (s, t) = (fx.node("n").await, fx.node("m").await);
    let ttl = Duration::from_secs(30);
    assert!(s.try_lease("sweeper", &node("n"), ttl).await.unwrap());
    if !fx.is_redis() {
        // One process: every caller holds it.
        assert!(t.try_lease("sweeper", &node("m"), ttl).await.unwrap());
        return;
    }
    // Held: others are refused, the holder renews, other leases are apart.
    assert!(!t.try_lease("sweeper", &node("m"), ttl).await.unwrap());
    assert!(s.try_lease("sweeper", &node("n"), ttl).await.unwrap());
    assert!(t.try_lease("other", &node("m"), ttl).await.unwrap());
    let k = fx.keys();
    let left = pttl(&fx, &k.lease("sweeper"));
    assert!((1..=30_000).contains(&left), "PTTL {left}");
    // Renewing puts the full lifetime back.
    fx.raw(&["PEXPIRE", &k.lease("sweeper"), "5000"]);
    assert!(s.try_lease("sweeper", &node("n"), ttl).await.unwrap());
    assert!(pttl(&fx, &k.lease("sweeper")) > 5_000);
    // Once it lapses (as if the holder stopped renewing), the next caller takes it.
    fx.raw(&["DEL", &k.lease("sweeper")]);
    assert!(t.try_lease("sweeper", &node("m"), ttl).await.unwrap());
    assert!(!s.try_lease("sweeper", &node("n"), ttl).await.unwrap());
    assert_eq!(fx.raw(&["GET", &k.lease("sweeper")]), "$1\r\nm\r\n");
    // Released by another than its holder: nothing changes; by its holder
    // (a draining node): the next caller takes it at once.
    s.release_lease("sweeper", &node("n")).await.unwrap();
    assert!(!s.try_lease("sweeper", &node("n"), ttl).await.unwrap());
    t.release_lease("sweeper", &node("m")).await.unwrap();
    assert_eq!(fx.raw(&["EXISTS", &k.lease("sweeper")]), ":0\r\n");
    assert!(s.try_lease("sweeper", &node("n"), ttl).await.unwrap());
}

/// `take_slots`, the caps on rooms made by callers other than admins: a
/// full quota refuses (its index) and takes nothing from the others; a
/// member counts once; slots end at their time; on Redis each quota
/// expires with its last slot.
async fn slots_are_taken_all_or_none_and_end_with_their_time(fx: Fixture) {
    let s = fx.node("n").await;
    let q = |name: &str, most: usize| (name.to_string(), most);
    // Real times: on Redis a quota's key expires (PEXPIREAT) with its last slot.
    let now = now_ms();
    let later = now + 60_000;
    let both = [q("carol", 2), q("all", 3)];
    assert_eq!(s.take_slots(&both, "a", now, later).await.unwrap(), None);
    assert_eq!(s.take_slots(&both, "b", now, now + 10).await.unwrap(), None);
    // The same member again only moves its end.
    assert_eq!(s.take_slots(&both, "b", now, later).await.unwrap(), None);
    assert_eq!(s.take_slots(&both, "c", now, later).await.unwrap(), Some(0));
    // Refused by carol's quota: nothing was taken from "all".
    let dave = [q("dave", 2), q("all", 3)];
    assert_eq!(s.take_slots(&dave, "d", now, later).await.unwrap(), None);
    assert_eq!(s.take_slots(&dave, "e", now, later).await.unwrap(), Some(1));
    // Slots end at their time.
    assert_eq!(
        s.take_slots(&both, "c", later, later + 10).await.unwrap(),
        None
    );
    if fx.is_redis() {
        let k = fx.keys();
        assert_eq!(fx.raw(&["ZCARD", &k.quota("all")]), ":1\r\n");
        // Each key expires with its last slot.
        let left = pttl(&fx, &k.quota("dave"));
        assert!((1..=60_000).contains(&left), "PTTL {left}");
        let left = pttl(&fx, &k.quota("carol"));
        assert!((1..=60_010).contains(&left), "PTTL {left}");
    }
}

async fn joins_replace_older_connections_and_restore_ignores_limits(fx: Fixture) {
    let s = fx.node("n").await;
    let r = room("r");
    assert!(s
        .join_room(&r, &member("a"), 1, 2)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(&s.join_room(&r, &member("b"), 2, 2).await.unwrap()),
        ["a"]
    );
    assert!(matches!(
        s.join_room(&r, &member("c"), 3, 2).await,
        Err(StoreError::RoomFull)
    ));
    // A newer connection of `a` joins again: allowed at capacity, and the
    // older connection can no longer leave.
    assert_eq!(
        ids(&s.join_room(&r, &member("a"), 4, 2).await.unwrap()),
        ["b"]
    );
    assert!(!s.leave_room(&r, &pid("a"), 1).await.unwrap());
    // Restoring ignores the limit; it reports whether the membership was missing.
    assert!(s.restore_member(&r, &member("c"), 5).await.unwrap());
    assert!(!s.restore_member(&r, &member("c"), 5).await.unwrap());
    assert_eq!(
        ids(&s.room_members(&r).await.unwrap().unwrap()),
        ["a", "b", "c"]
    );
    for (p, e) in [("a", 4), ("b", 2), ("c", 5)] {
        assert!(s.leave_room(&r, &pid(p), e).await.unwrap());
    }
    assert_eq!(s.get_room(&r).await.unwrap(), None);
    // A restore into a room that lost everything brings an implicit record.
    assert!(s.restore_member(&r, &member("d"), 6).await.unwrap());
    assert!(!s.get_room(&r).await.unwrap().unwrap().explicit);
    assert_eq!(all_rooms(s.as_ref()).await.unwrap(), vec![summary("r", 1)]);
}

async fn room_listing_pages_by_name(fx: Fixture) {
    let s = fx.node("n").await;
    // 25 rooms, every third explicit and empty, the others with 1 or 2 members.
    let mut expected = Vec::new();
    for i in 0..25 {
        let name = format!("room-{i:02}");
        if i % 3 == 0 {
            s.create_room(&explicit(&name, None)).await.unwrap();
            expected.push(made(&name, 0, None));
        } else {
            let n = 1 + i % 2;
            for m in 0..n {
                s.join_room(&room(&name), &member(&format!("p{m}")), 1, 10)
                    .await
                    .unwrap();
            }
            expected.push(summary(&name, n));
        }
    }
    let first = s.list_rooms(None, 10).await.unwrap();
    assert_eq!(first.rooms, expected[..10]);
    assert_eq!(first.next, Some(room("room-09")));
    // A room deleted behind the cursor, and one created ahead of it, between pages.
    s.delete_room(&room("room-03")).await.unwrap().unwrap();
    s.create_room(&explicit("room-15a", None)).await.unwrap();
    let second = s.list_rooms(first.next.as_ref(), 10).await.unwrap();
    let mut tail = expected[10..].to_vec();
    tail.insert(6, made("room-15a", 0, None));
    assert_eq!(second.rooms, tail[..10]);
    assert_eq!(second.next, Some(room("room-18")));
    let third = s.list_rooms(second.next.as_ref(), 10).await.unwrap();
    assert_eq!(third.rooms, tail[10..]);
    assert_eq!(third.next, None, "the last page says so");
    // A full last page is not followed by an empty one.
    let exact = s.list_rooms(Some(&room("room-18")), 6).await.unwrap();
    assert_eq!((exact.rooms.len(), exact.next), (6, None));
    let short = s.list_rooms(Some(&room("room-18")), 5).await.unwrap();
    assert_eq!(short.next, Some(room("room-23")));
    assert_eq!(s.list_rooms(None, 0).await.unwrap().rooms, vec![]);
    assert_eq!(
        s.list_rooms(Some(&room("zzz")), 10).await.unwrap().rooms,
        vec![]
    );
    let all = all_rooms(s.as_ref()).await.unwrap();
    assert_eq!(all.len(), 25);
    assert!(all.windows(2).all(|w| w[0].room < w[1].room));
}

async fn reaping_a_dead_node_is_exactly_once(fx: Fixture) {
    let (a, b, c) = (fx.node("a").await, fx.node("b").await, fx.node("c").await);
    let ttl = Duration::from_secs(60);
    for (s, n) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        s.heartbeat(&node(n), ttl).await.unwrap();
    }
    a.register_peer(&pid("a1"), at("a", 1)).await.unwrap();
    b.register_peer(&pid("b1"), at("b", 2)).await.unwrap();
    // a1 alone in `r` (implicit), with b1 in `s`, alone in explicit `e`.
    a.join_room(&room("r"), &member("a1"), 1, 10).await.unwrap();
    a.join_room(&room("s"), &member("a1"), 1, 10).await.unwrap();
    b.join_room(&room("s"), &member("b1"), 2, 10).await.unwrap();
    a.create_room(&explicit("e", None)).await.unwrap();
    a.join_room(&room("e"), &member("a1"), 1, 10).await.unwrap();
    // A pairing across the nodes.
    a.upsert_worker(&conn("a1", "a", 1), &EndpointUpdate::default())
        .await
        .unwrap();
    b.upsert_worker(&conn("b1", "b", 2), &EndpointUpdate::default())
        .await
        .unwrap();
    a.pair_workers(&pid("a1"), &pid("b1"), "pair-1")
        .await
        .unwrap();

    if !fx.is_redis() {
        // One process: nothing is ever dead, and nobody reaps.
        assert_eq!(b.dead_nodes().await.unwrap(), Vec::<NodeId>::new());
        assert_eq!(b.reap_node(&node("a"), &node("b")).await.unwrap(), None);
        assert!(b.heartbeat(&node("b"), ttl).await.unwrap());
        return;
    }
    assert_eq!(b.dead_nodes().await.unwrap(), Vec::<NodeId>::new());
    fx.raw(&["DEL", &fx.keys().node_alive(&node("a"))]);
    assert_eq!(b.dead_nodes().await.unwrap(), vec![node("a")]);
    let (na, nb, nc) = (node("a"), node("b"), node("c"));
    let (rb, rc) = tokio::join!(b.reap_node(&na, &nb), c.reap_node(&na, &nc));
    let reaped = match (rb.unwrap(), rc.unwrap()) {
        (Some(r), None) | (None, Some(r)) => r,
        other => panic!("exactly one reaper must win: {other:?}"),
    };
    let mut left = reaped.left.clone();
    left.sort();
    assert_eq!(
        left,
        vec![
            (room("e"), pid("a1")),
            (room("r"), pid("a1")),
            (room("s"), pid("a1"))
        ]
    );
    assert_eq!(reaped.peers, 1);
    assert_eq!(reaped.lost.len(), 1);
    assert_eq!(reaped.lost[0].pairing_id, "pair-1");
    assert_eq!(reaped.lost[0].partner.peer_id, pid("b1"));
    assert_eq!(reaped.lost[0].partner.state, WorkerState::Idle);
    assert_eq!(b.reap_node(&node("a"), &node("b")).await.unwrap(), None);
    assert_eq!(b.dead_nodes().await.unwrap(), Vec::<NodeId>::new());
    // The implicit room it emptied went, record and all; the explicit one stays.
    assert_eq!(b.get_room(&room("r")).await.unwrap(), None);
    assert!(b.get_room(&room("e")).await.unwrap().unwrap().explicit);
    assert!(!b.get_room(&room("s")).await.unwrap().unwrap().explicit);
    assert_eq!(
        all_rooms(b.as_ref()).await.unwrap(),
        vec![made("e", 0, None), summary("s", 1)]
    );
    assert_eq!(b.locate_peer(&pid("a1")).await.unwrap(), None);
    assert_eq!(b.locate_peer(&pid("b1")).await.unwrap(), Some(at("b", 2)));
    assert_eq!(b.get_worker(&pid("a1")).await.unwrap(), None);
    // The dead node comes back: its first heartbeat says it must re-register.
    assert!(!a.heartbeat(&node("a"), ttl).await.unwrap());
    assert!(a.heartbeat(&node("a"), ttl).await.unwrap());
    a.goodbye(&node("a")).await.unwrap();
    assert_eq!(b.dead_nodes().await.unwrap(), Vec::<NodeId>::new());
}

async fn own_entries_and_reregistration(fx: Fixture) {
    let (a, b) = (fx.node("a").await, fx.node("b").await);
    a.register_peer(&pid("a1"), at("a", 1)).await.unwrap();
    a.register_peer(&pid("a2"), at("a", 2)).await.unwrap();
    b.register_peer(&pid("a2"), at("b", 3)).await.unwrap();
    a.join_room(&room("r"), &member("a1"), 1, 10).await.unwrap();
    b.join_room(&room("r"), &member("b1"), 4, 10).await.unwrap();
    let own = a.own_entries(&node("a")).await.unwrap();
    if !fx.is_redis() {
        // The memory store cannot lose a node's state: nothing to reconcile.
        assert_eq!(own, Default::default());
        return;
    }
    assert_eq!(own.peers, vec![(pid("a1"), 1)]);
    assert_eq!(own.memberships, vec![(room("r"), pid("a1"), 1)]);
    // Redis restarted empty: the node writes what it holds again, and the
    // rooms come back as implicit records.
    fx.raw(&["FLUSHALL"]);
    assert_eq!(a.get_room(&room("r")).await.unwrap(), None);
    assert_eq!(
        a.reregister_peer(&pid("a1"), at("a", 1)).await.unwrap(),
        None
    );
    assert!(a
        .restore_member(&room("r"), &member("a1"), 1)
        .await
        .unwrap());
    assert!(!a.get_room(&room("r")).await.unwrap().unwrap().explicit);
    assert_eq!(all_rooms(a.as_ref()).await.unwrap(), vec![summary("r", 1)]);
    let own = a.own_entries(&node("a")).await.unwrap();
    assert_eq!(own.peers, vec![(pid("a1"), 1)]);
    assert_eq!(own.memberships, vec![(room("r"), pid("a1"), 1)]);
}

fn conn(p: &str, n: &str, epoch: u64) -> WorkerConn {
    WorkerConn {
        peer_id: pid(p),
        node: node(n),
        epoch,
        door: Door::Native,
        observed_addr: "127.0.0.1:1".into(),
    }
}

async fn queue(s: &Arc<dyn Store>, p: &str, epoch: u64, pool: &str) -> Result<Enqueued, PairError> {
    s.upsert_worker(&conn(p, "n", epoch), &EndpointUpdate::default())
        .await
        .unwrap();
    s.enqueue_or_match(
        &pid(p),
        epoch,
        &PoolName::from_trusted(pool),
        &Value::Null,
        1,
        &format!("pair-{p}"),
    )
    .await
}

fn matched(e: Enqueued) -> (String, String, String) {
    match e {
        Enqueued::Matched {
            pairing_id,
            initiator,
            responder,
        } => {
            assert_eq!(initiator.partner.as_ref(), Some(&responder.peer_id));
            assert_eq!(responder.partner.as_ref(), Some(&initiator.peer_id));
            assert_eq!(initiator.pairing_id.as_deref(), Some(pairing_id.as_str()));
            assert_eq!(responder.pairing_id.as_deref(), Some(pairing_id.as_str()));
            assert_eq!(
                (initiator.state, responder.state),
                (WorkerState::Paired, WorkerState::Paired)
            );
            (
                pairing_id,
                initiator.peer_id.to_string(),
                responder.peer_id.to_string(),
            )
        }
        other => panic!("expected a match, got {other:?}"),
    }
}

async fn matching_is_first_come_first_served_and_skips_stale_entries(fx: Fixture) {
    let s = fx.node("n").await;
    assert_eq!(queue(&s, "a", 1, "x").await.unwrap(), Enqueued::Queued);
    // Queuing again keeps the place.
    assert_eq!(queue(&s, "a", 1, "x").await.unwrap(), Enqueued::Queued);
    let (id, i, r) = matched(queue(&s, "b", 2, "x").await.unwrap());
    assert_eq!((id.as_str(), i.as_str(), r.as_str()), ("pair-b", "a", "b"));
    assert!(matches!(
        queue(&s, "a", 1, "x").await,
        Err(PairError::AlreadyPaired(Which::A))
    ));
    // A queued worker that left is skipped; one that moved pools too.
    assert_eq!(queue(&s, "c", 3, "x").await.unwrap(), Enqueued::Queued);
    assert_eq!(s.remove_worker(&pid("c"), 3).await.unwrap(), None);
    assert_eq!(queue(&s, "d", 4, "x").await.unwrap(), Enqueued::Queued);
    assert_eq!(queue(&s, "d", 4, "y").await.unwrap(), Enqueued::Queued);
    assert_eq!(queue(&s, "e", 5, "x").await.unwrap(), Enqueued::Queued);
    let (_, i, r) = matched(queue(&s, "f", 6, "y").await.unwrap());
    assert_eq!((i.as_str(), r.as_str()), ("d", "f"));
    let (_, i, r) = matched(queue(&s, "g", 7, "x").await.unwrap());
    assert_eq!((i.as_str(), r.as_str()), ("e", "g"));
    // A stale connection cannot queue.
    assert!(matches!(
        s.enqueue_or_match(
            &pid("g"),
            99,
            &PoolName::from_trusted("x"),
            &Value::Null,
            1,
            "p"
        )
        .await,
        Err(PairError::Stale)
    ));
    // A record is never written for a connection the directory says was replaced.
    s.register_peer(&pid("h"), at("n", 9)).await.unwrap();
    s.upsert_worker(&conn("h", "n", 8), &EndpointUpdate::default())
        .await
        .unwrap();
    assert_eq!(s.get_worker(&pid("h")).await.unwrap(), None);
    let listed: Vec<String> = s
        .list_workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.peer_id.to_string())
        .collect();
    assert_eq!(listed, ["a", "b", "d", "e", "f", "g"]);
    let mut mine = s.node_workers(&node("n")).await.unwrap();
    mine.sort();
    assert_eq!(mine.len(), 6);
    assert_eq!(mine[0], (pid("a"), 1));
}

async fn partners_are_freed_once(fx: Fixture) {
    let s = fx.node("n").await;
    queue(&s, "a", 1, "x").await.unwrap();
    matched(queue(&s, "b", 2, "x").await.unwrap());
    // Unpair frees both; the partner is returned.
    match s.unpair_worker(&pid("a"), 1).await.unwrap() {
        Unpaired::Paired(lost) => {
            assert_eq!(lost.partner.peer_id, pid("b"));
            assert_eq!(lost.partner.state, WorkerState::Idle);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.unpair_worker(&pid("b"), 2).await,
        Err(PairError::NotPaired)
    ));
    // Manual pairing: errors name the worker.
    assert!(matches!(
        s.pair_workers(&pid("a"), &pid("a"), "m").await,
        Err(PairError::SameWorker)
    ));
    assert!(matches!(
        s.pair_workers(&pid("a"), &pid("zz"), "m").await,
        Err(PairError::NotFound(Which::B))
    ));
    let (ra, rb) = s.pair_workers(&pid("a"), &pid("b"), "m").await.unwrap();
    assert_eq!(
        (ra.state, rb.state),
        (WorkerState::Paired, WorkerState::Paired)
    );
    assert!(matches!(
        s.pair_workers(&pid("b"), &pid("a"), "m2").await,
        Err(PairError::AlreadyPaired(Which::A))
    ));
    // A stale epoch removes nothing; the current one frees the partner.
    assert_eq!(s.remove_worker(&pid("a"), 7).await.unwrap(), None);
    let lost = s.remove_worker(&pid("a"), 1).await.unwrap().unwrap();
    assert_eq!(
        (lost.pairing_id.as_str(), lost.partner.peer_id.as_str()),
        ("m", "b")
    );
    // A newer connection replaces the record and frees the old partner.
    queue(&s, "c", 3, "x").await.unwrap();
    matched(queue(&s, "b", 2, "x").await.unwrap());
    let lost = s
        .upsert_worker(&conn("c", "n", 30), &EndpointUpdate::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lost.partner.peer_id, pid("b"));
    let c = s.get_worker(&pid("c")).await.unwrap().unwrap();
    assert_eq!((c.epoch, c.state), (30, WorkerState::Idle));
    // Nothing is freed twice: b is idle, and removing c tells nobody.
    assert_eq!(s.remove_worker(&pid("c"), 30).await.unwrap(), None);
}

/// Two nodes queue 40 workers in one pool at the same time: every worker is
/// paired exactly once, with someone else, each pairing naming both sides.
async fn concurrent_matching_pairs_every_worker_exactly_once(fx: Fixture) {
    let (a, b) = (fx.node("a").await, fx.node("b").await);
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let n = if i % 2 == 0 { "a" } else { "b" };
        let p = format!("w{i:02}");
        s.upsert_worker(&conn(&p, n, i + 1), &EndpointUpdate::default())
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            s.enqueue_or_match(
                &pid(&p),
                i + 1,
                &PoolName::from_trusted("pool"),
                &json!({"i": i}),
                1,
                &format!("pairing-{p}"),
            )
            .await
            .unwrap()
        }));
    }
    let mut partner_of: HashMap<String, String> = HashMap::new();
    let mut pairings = HashSet::new();
    let mut queued = 0;
    for t in tasks {
        match t.await.unwrap() {
            Enqueued::Queued => queued += 1,
            m => {
                let (id, i, r) = matched(m);
                assert!(pairings.insert(id));
                assert_ne!(i, r);
                assert_eq!(partner_of.insert(i.clone(), r.clone()), None, "{i} twice");
                assert_eq!(partner_of.insert(r.clone(), i), None, "{r} twice");
            }
        }
    }
    assert_eq!((pairings.len(), queued, partner_of.len()), (20, 20, 40));
    // The store agrees with what the callers were told.
    for w in a.list_workers().await.unwrap() {
        assert_eq!(w.state, WorkerState::Paired);
        assert_eq!(
            w.partner.as_ref().map(|p| p.to_string()),
            partner_of.get(w.peer_id.as_str()).cloned()
        );
    }
}

async fn worker_doors_round_trip(fx: Fixture) {
    let s = fx.node("n").await;
    let mut legacy = conn("old", "n", 1);
    legacy.door = Door::LegacyWorker;
    s.upsert_worker(
        &legacy,
        &EndpointUpdate {
            public_ip: Some("203.0.113.9".into()),
            udp: None,
        },
    )
    .await
    .unwrap();
    s.upsert_worker(&conn("new", "n", 2), &EndpointUpdate::default())
        .await
        .unwrap();
    let old = s.get_worker(&pid("old")).await.unwrap().unwrap();
    assert_eq!(old.door, Door::LegacyWorker);
    assert_eq!(old.public_ip.as_deref(), Some("203.0.113.9"));
    assert_eq!(
        s.get_worker(&pid("new")).await.unwrap().unwrap().door,
        Door::Native
    );
    // The API's (and Redis') name and values are kept from before the rename.
    let v = serde_json::to_value(&old).unwrap();
    assert_eq!(v["dialect"], json!("legacy"));
    assert!(v.get("door").is_none());
    if fx.is_redis() {
        let d = fx.raw(&["HGET", &fx.keys().worker(&pid("old")), "d"]);
        assert_eq!(d, "$6\r\nlegacy\r\n");
    }
}

/// Every `k_*` function of the Lua prelude returns the key its Rust method
/// builds, for a prefix that needs escaping, as Redis runs it.
#[tokio::test]
async fn lua_key_functions_match_the_rust_key_names() {
    use fred::prelude::*;
    let mut fx = Fixture::redis("prelude");
    fx.prefix = "p'x\\y\"z".into();
    let keys = fx.keys();
    let r = fx.connect().await;
    let calls: Vec<String> = TEMPLATES
        .iter()
        .map(|(name, tmpl)| {
            let args: Vec<String> = (1..tmpl.split("{}").count())
                .map(|i| format!("'x{i}'"))
                .collect();
            format!("k_{name}({})", args.join(", "))
        })
        .collect();
    let src = format!("{}return {{{}}}", keys.lua_prelude(), calls.join(", "));
    let got: Vec<String> = r
        .client()
        .eval(src, Vec::<String>::new(), Vec::<String>::new())
        .await
        .unwrap();
    let expected: Vec<String> = TEMPLATES
        .iter()
        .map(|(_, tmpl)| {
            let mut out = format!("{}:", fx.prefix);
            for (i, part) in tmpl.split("{}").enumerate() {
                if i > 0 {
                    out.push_str(&format!("x{i}"));
                }
                out.push_str(part);
            }
            out
        })
        .collect();
    assert_eq!(got, expected);
    // The templates are the ones the Rust methods use.
    assert_eq!(got[0], keys.peer(&pid("x1")));
    assert!(got.contains(&keys.room_members(&room("x1"))));
    assert!(got.contains(&keys.node_secrets(&node("x1"))));
}

/// An error reply (a key of the wrong type under a script, a Lua runtime
/// error) is a refusal, not an outage; Redis gone is an outage.
#[tokio::test]
async fn script_errors_are_refusals_and_a_dead_redis_an_outage() {
    let mut fx = Fixture::redis("errors");
    let s = fx.node("n").await;
    let r = room("r");
    s.join_room(&r, &member("a"), 1, 10).await.unwrap();
    let members = fx.keys().room_members(&r);
    fx.raw(&["DEL", &members]);
    assert_eq!(fx.raw(&["SET", &members, "not a hash"]), "+OK\r\n");
    for res in [
        s.leave_room(&r, &pid("a"), 1).await.map(|_| ()),
        s.join_room(&r, &member("b"), 2, 10).await.map(|_| ()),
        s.delete_room(&r).await.map(|_| ()),
    ] {
        match res {
            Err(e @ StoreError::Rejected(_)) => assert!(!e.is_transient()),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // A Lua runtime error (comparing with a `max` that is not a number).
    let q = room("q");
    s.join_room(&q, &member("a"), 1, 10).await.unwrap();
    fx.raw(&["HSET", &fx.keys().room_record(&q), "max", "many"]);
    match s.join_room(&q, &member("b"), 2, 10).await {
        Err(StoreError::Rejected(e)) => assert!(e.contains("user_script"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    fx.redis.as_mut().unwrap().stop();
    match s.locate_peer(&pid("a")).await {
        Err(e @ StoreError::Unavailable(_)) => assert!(e.is_transient()),
        other => panic!("expected an outage, got {other:?}"),
    }
}

/// `scan_node_peers` (the operator console's peer list): every peer of the
/// node once over the pages, none of another node's, and a search is a
/// literal substring (glob characters included).
async fn a_nodes_peers_are_listed_in_pages_and_searched(fx: Fixture) {
    let (a, b) = (fx.node("n1").await, fx.node("n2").await);
    let mut want = HashSet::new();
    for i in 0..25 {
        let p = format!("p-{i:02}");
        a.register_peer(&pid(&p), at("n1", i)).await.unwrap();
        want.insert(p);
    }
    a.register_peer(&pid("a*b"), at("n1", 99)).await.unwrap();
    want.insert("a*b".to_string());
    for i in 0..3 {
        b.register_peer(&pid(&format!("q-{i}")), at("n2", i))
            .await
            .unwrap();
    }
    let walk = |search: &'static str| {
        let a = a.clone();
        async move {
            let mut seen = HashSet::new();
            let mut cursor = 0;
            for _ in 0..100 {
                let (next, ids) = a
                    .scan_node_peers(&node("n1"), cursor, search, 10)
                    .await
                    .unwrap();
                seen.extend(ids.into_iter().map(|p| p.to_string()));
                if next == 0 {
                    return seen;
                }
                cursor = next;
            }
            panic!("no last page after 100");
        }
    };
    assert_eq!(walk("").await, want);
    let tens: HashSet<String> = (10..20).map(|i| format!("p-{i}")).collect();
    assert_eq!(walk("-1").await, tens);
    assert_eq!(walk("*").await, HashSet::from(["a*b".to_string()]));
    assert!(walk("nobody").await.is_empty());
    let (_, q) = b.scan_node_peers(&node("n2"), 0, "", 100).await.unwrap();
    assert_eq!(q.len(), 3);
}
