//! Rooms made over HTTP across a cluster: real node processes on a real
//! redis-server. A room made on one node is joined on another with its
//! token; its expiry and its deletion close it for members on every node,
//! its records leave Redis, and exactly one node sweeps.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard::cluster::Keys;
use switchboard::types::{NodeId, RoomName};

use crate::cluster_helpers::{cluster_env, spawn_cluster, unique_prefix, wait_ready, RedisServer};
use crate::helpers::{metric, Client, TestNode};
use crate::room_records::{claims, create, delete, jwt, try_join, wait_status, SECRET};

/// Every Redis key of `room` (none may be left once it is closed).
fn room_keys(k: &Keys, room: &str) -> Vec<String> {
    let r = RoomName::from_trusted(room);
    vec![k.room_record(&r), k.room_members(&r), k.room_nodes(&r)]
}

fn assert_room_gone(redis: &RedisServer, k: &Keys, room: &str) {
    for key in room_keys(k, room) {
        assert_eq!(
            redis.command(&["EXISTS", &key]),
            ":0\r\n",
            "{key} left behind"
        );
    }
    for index in [k.room_index(), k.room_expiry()] {
        assert_eq!(
            redis.command(&["ZSCORE", &index, room]),
            "$-1\r\n",
            "{room} left in {index}"
        );
    }
    for n in ["node-1", "node-2"] {
        let set = k.node_rooms(&NodeId::from_trusted(n));
        assert_eq!(
            redis.command(&["SISMEMBER", &set, room]),
            ":0\r\n",
            "{room} left in {set}"
        );
    }
}

async fn peer(node: &TestNode, id: &str) -> Client {
    let mut c = node.peer(id).await;
    // Generous: a room closes up to a sweep interval after its time.
    c.timeout = Duration::from_secs(15);
    c
}

#[tokio::test]
async fn expiry_closes_a_room_on_every_node_and_one_node_sweeps() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("rooms-expiry");
    let k = Keys::new(&prefix);
    // Node 1 takes the sweeper's lease; node 2, started once it holds it,
    // looks ten times as often: without the lease it would sweep first.
    let mut nodes = spawn_cluster(&redis, &prefix, 1, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.command(&["GET", &k.lease("room-sweeper")]) != "$6\r\nnode-1\r\n" {
        assert!(Instant::now() < deadline, "node 1 did not take the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut env = cluster_env(&redis, &prefix, "node-2");
    env.push(("SWITCHBOARD_ROOMS__SWEEP_INTERVAL_MS".into(), "100".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    nodes.push(TestNode::spawn(&env));
    wait_ready(&nodes[1], true, Duration::from_secs(10)).await;
    // Two rooms with members on both nodes, made on either node, and an
    // empty one: all three expire within two seconds.
    let one = create(&nodes[0], json!({"name": "one", "ttl_secs": 1})).await;
    let two = create(
        &nodes[1],
        json!({"name": "two", "ttl_secs": 2, "token": false}),
    )
    .await;
    create(&nodes[0], json!({"name": "empty", "ttl_secs": 1})).await;
    let token = one["token"].as_str().unwrap().to_string();
    assert_eq!(two["token"], Value::Null);
    // Redis holds the room with a lifetime: in the expiry index, keys expiring.
    let due = redis.command(&["ZSCORE", &k.room_expiry(), "one"]);
    let due: u64 = due.lines().nth(1).unwrap().parse().unwrap();
    assert_eq!(due / 1000, one["expires_at"].as_u64().unwrap());
    let pttl: i64 = redis.command(&["PTTL", &room_keys(&k, "one")[0]])[1..]
        .trim()
        .parse()
        .unwrap();
    assert!(
        pttl > 60_000,
        "the record expires a grace period after the room: {pttl}"
    );

    let mut a = peer(&nodes[0], "a").await;
    let mut b = peer(&nodes[1], "b").await;
    // On the other node than the one that made it, the token is needed too.
    let e = try_join(&mut b, json!({"type": "join", "room": "one"})).await;
    assert_eq!(e["code"], "room-token-required", "{e}");
    a.join_with(json!({"type": "join", "room": "one", "token": token}))
        .await;
    b.join_with(json!({"type": "join", "room": "one", "token": token}))
        .await;
    assert_eq!(a.recv_type("peer-joined").await["peer_id"], "b");
    a.join("two").await;
    b.join("two").await;
    assert_eq!(a.recv_type("peer-joined").await["peer_id"], "b");

    // Each member hears each of its rooms close, on its own node.
    for c in [&mut a, &mut b] {
        let mut closed = vec![c.recv().await, c.recv().await];
        closed.sort_by_key(|v| v["room"].as_str().unwrap().to_string());
        assert_eq!(
            closed,
            [
                json!({"type": "room-closed", "room": "one", "reason": "expired"}),
                json!({"type": "room-closed", "room": "two", "reason": "expired"}),
            ]
        );
    }
    wait_status(&nodes[1], "/api/rooms/empty", 404, Duration::from_secs(15)).await;
    for n in &nodes {
        for room in ["one", "two", "empty"] {
            let (status, v) = n.get(&format!("/api/rooms/{room}")).await;
            assert_eq!(status, 404, "{room}: {v}");
        }
        assert_eq!(n.get("/api/rooms").await.1, json!({"rooms": []}));
    }
    for room in ["one", "two", "empty"] {
        assert_room_gone(&redis, &k, room);
    }
    // One node swept, the one holding the lease: every room; the other none.
    assert_eq!(
        redis.command(&["GET", &k.lease("room-sweeper")]),
        "$6\r\nnode-1\r\n"
    );
    assert_eq!(
        metric(&nodes[0], "switchboard_rooms_expired_total").await,
        3.0
    );
    assert_eq!(
        metric(&nodes[1], "switchboard_rooms_expired_total").await,
        0.0
    );

    // No ghost on either node: the members are in no room, and a room of
    // the same name made by a join starts afresh, seen from both nodes.
    for c in [&mut a, &mut b] {
        c.send_json(json!({"type": "broadcast", "id": "x", "room": "one", "data": 1}))
            .await;
        c.recv_error("not-in-room").await;
    }
    assert_eq!(a.join("one").await["peers"], json!([]));
    assert_eq!(
        b.join("one").await["peers"],
        json!([{"peer_id": "a", "meta": null}])
    );
    assert_eq!(a.recv_type("peer-joined").await["peer_id"], "b");
}

#[tokio::test]
async fn deleting_a_room_closes_it_on_every_node() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("rooms-delete");
    let nodes = spawn_cluster(&redis, &prefix, 2, &[]).await;
    let k = Keys::new(&prefix);
    let made = create(&nodes[0], json!({"name": "doomed", "ttl_secs": 600})).await;
    let token = made["token"].as_str().unwrap().to_string();
    let mut a = peer(&nodes[0], "a").await;
    let mut b = peer(&nodes[1], "b").await;
    let mut c = peer(&nodes[1], "c").await;
    a.join_with(json!({"type": "join", "room": "doomed", "token": token}))
        .await;
    b.join_with(json!({"type": "join", "room": "doomed", "token": token}))
        .await;
    a.recv_type("peer-joined").await;
    c.join("bystander").await;
    let (_, room) = nodes[1].get("/api/rooms/doomed").await;
    assert_eq!(
        room["members"],
        json!([{"peer_id": "a", "meta": null}, {"peer_id": "b", "meta": null}])
    );
    // Deleted through the node that holds neither the record's maker nor a.
    assert_eq!(delete(&nodes[1], "doomed").await, 204);
    for x in [&mut a, &mut b] {
        assert_eq!(
            x.recv().await,
            json!({"type": "room-closed", "room": "doomed", "reason": "deleted"})
        );
    }
    c.ping().await;
    for n in &nodes {
        assert_eq!(n.get("/api/rooms/doomed").await.0, 404);
    }
    assert_room_gone(&redis, &k, "doomed");
    assert_eq!(delete(&nodes[0], "doomed").await, 404);
    // A new room of that name on node 2 does not reach a's old membership
    // on node 1: b joins it, a hears nothing, then a joins and sees b.
    assert_eq!(b.join("doomed").await["peers"], json!([]));
    a.ping().await;
    assert_eq!(
        a.join("doomed").await["peers"],
        json!([{"peer_id": "b", "meta": null}])
    );
}

/// The caps on rooms made by callers other than admins hold across the
/// cluster (slots in Redis): a signed-in caller's rooms count on every node.
#[tokio::test]
async fn a_creators_cap_holds_across_nodes() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("rooms-cap");
    let nodes = spawn_cluster(
        &redis,
        &prefix,
        2,
        &[
            ("SWITCHBOARD_AUTH__JWT__HS256_SECRET", SECRET),
            ("SWITCHBOARD_ROOMS__CREATE", "signed_in"),
            ("SWITCHBOARD_ROOMS__MAX_ROOMS_PER_CREATOR", "2"),
        ],
    )
    .await;
    let bearer = |sub: &str| format!("Bearer {}", jwt(claims(sub)));
    let (carol, dave) = (bearer("carol"), bearer("dave"));
    assert_eq!(post_room(&nodes[0], &carol, "c1").await.0, 201);
    assert_eq!(post_room(&nodes[1], &carol, "c2").await.0, 201);
    let (status, v) = post_room(&nodes[0], &carol, "c3").await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (429, &json!("rate-limited")),
        "{v}"
    );
    // Another creator, from the same address, has slots of their own.
    assert_eq!(post_room(&nodes[1], &dave, "d1").await.0, 201);
    assert_eq!(nodes[1].get("/api/rooms/c3").await.0, 404);
}

/// `POST /api/rooms {"name"}` with `Authorization: <bearer>`, through the
/// loopback proxy (so not an admin).
async fn post_room(node: &TestNode, bearer: &str, name: &str) -> (u16, Value) {
    crate::room_records::request(
        node,
        reqwest::Method::POST,
        "/api/rooms",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("authorization", bearer),
        ],
        Some(json!({ "name": name })),
    )
    .await
}
