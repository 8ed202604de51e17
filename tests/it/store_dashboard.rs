//! The dashboard registry's conformance (`store::dashboard::DashRegistry`):
//! one set of behaviour tests, run against the memory store and a real
//! redis-server, as `store.rs` does for the other registries.

use std::time::Duration;

use switchboard::store::dashboard::{
    DashCount, DashJoin, DashLimits, DashParticipant, DashRefusal, DashRoom,
};
use switchboard::types::NodeId;

use crate::store_fixture::{conformance, Fixture};

conformance!(
    rooms_keep_creation_order_and_versions_grow,
    participants_are_bounded_and_the_first_name_stays,
    leaving_empties_and_removes_rooms,
    counts_follow_generations_over_nodes,
    a_closed_socket_leaves_what_it_joined,
    restore_keeps_only_what_the_node_holds,
    sweeping_removes_exactly_the_dead_nodes_entries,
);

const LIMITS: DashLimits = DashLimits {
    max_rooms: 3,
    max_participants: 2,
    max_list_bytes: 4_096,
};

fn n(id: &str) -> NodeId {
    NodeId::from_trusted(id)
}

fn room(id: &str) -> DashRoom {
    DashRoom {
        id: id.into(),
        head: format!("{{\"id\":{}", serde_json::to_string(id).unwrap()),
    }
}

fn person(room: &str, user: &str, name: &str) -> DashParticipant {
    DashParticipant {
        room: room.into(),
        user: user.into(),
        json: format!(
            "{{\"id\":{},\"name\":\"{name}\"}}",
            serde_json::to_string(user).unwrap()
        ),
    }
}

fn count(gen: u64, count: u64) -> DashCount {
    DashCount { gen, count }
}

fn joined(j: DashJoin) -> String {
    match j {
        DashJoin::Joined(l) => l.json,
        other => panic!("expected a join, got {other:?}"),
    }
}

async fn rooms_keep_creation_order_and_versions_grow(fx: Fixture) {
    let s = fx.node("n1").await;
    let v0 = s.dash_list().await.unwrap();
    assert_eq!((v0.rooms, v0.json.as_str()), (0, "[]"));
    let a = s.dash_create(&room("a:1"), &LIMITS).await.unwrap().unwrap();
    let b = s.dash_create(&room("b"), &LIMITS).await.unwrap().unwrap();
    assert!(v0.version < a.version && a.version < b.version);
    joined(
        s.dash_join(&n("n1"), &person("a:1", "u", "U"), &LIMITS)
            .await
            .unwrap(),
    );
    // Replacing keeps the place and resets the participants.
    let again = s.dash_create(&room("a:1"), &LIMITS).await.unwrap().unwrap();
    assert_eq!(
        again.json,
        r#"[{"id":"a:1","participantCount":0,"participants":[]},{"id":"b","participantCount":0,"participants":[]}]"#
    );
    s.dash_create(&room("c"), &LIMITS).await.unwrap().unwrap();
    assert_eq!(
        s.dash_create(&room("d"), &LIMITS).await.unwrap(),
        Err(DashRefusal::TooManyRooms)
    );
    let huge = DashRoom {
        id: "a:1".into(),
        head: format!("{{\"id\":\"a:1\",\"name\":\"{}\"", "x".repeat(4_000)),
    };
    assert_eq!(
        s.dash_create(&huge, &LIMITS).await.unwrap(),
        Err(DashRefusal::ListTooLarge)
    );
    assert_eq!(s.dash_list().await.unwrap().rooms, 3);
    if fx.is_redis() {
        // Versions keep growing when Redis loses everything.
        let before = s.dash_list().await.unwrap().version;
        fx.raw(&["FLUSHALL"]);
        let after = s.dash_list().await.unwrap();
        assert_eq!(after.rooms, 0);
        assert!(after.version > before, "{} <= {before}", after.version);
    }
}

async fn participants_are_bounded_and_the_first_name_stays(fx: Fixture) {
    let s = fx.node("n1").await;
    s.dash_create(&room("r"), &LIMITS).await.unwrap().unwrap();
    assert_eq!(
        s.dash_join(&n("n1"), &person("nowhere", "u", "U"), &LIMITS)
            .await
            .unwrap(),
        DashJoin::NoRoom
    );
    joined(
        s.dash_join(&n("n1"), &person("r", "u\n1", "First"), &LIMITS)
            .await
            .unwrap(),
    );
    let l = joined(
        s.dash_join(&n("n2"), &person("r", "u\n1", "Second"), &LIMITS)
            .await
            .unwrap(),
    );
    assert_eq!(
        l,
        r#"[{"id":"r","participantCount":1,"participants":[{"id":"u\n1","name":"First"}]}]"#
    );
    joined(
        s.dash_join(&n("n1"), &person("r", "u2", "B"), &LIMITS)
            .await
            .unwrap(),
    );
    assert_eq!(
        s.dash_join(&n("n1"), &person("r", "u3", "C"), &LIMITS)
            .await
            .unwrap(),
        DashJoin::Refused(DashRefusal::RoomFull)
    );
    let tight = DashLimits {
        max_participants: 10,
        max_list_bytes: 200,
        ..LIMITS
    };
    assert_eq!(
        s.dash_join(&n("n1"), &person("r", "u4", &"y".repeat(100)), &tight)
            .await
            .unwrap(),
        DashJoin::Refused(DashRefusal::ListTooLarge)
    );
}

async fn leaving_empties_and_removes_rooms(fx: Fixture) {
    let s = fx.node("n1").await;
    for id in ["a", "b"] {
        s.dash_create(&room(id), &LIMITS).await.unwrap().unwrap();
    }
    joined(
        s.dash_join(&n("n1"), &person("a", "u", "U"), &LIMITS)
            .await
            .unwrap(),
    );
    let l = s.dash_leave(&n("n1"), "a", "u").await.unwrap();
    assert_eq!(
        l.json,
        r#"[{"id":"b","participantCount":0,"participants":[]}]"#
    );
    // Leaving a room nobody is in removes it too (the old server's rule);
    // a room that does not exist changes nothing.
    let v = s
        .dash_leave(&n("n1"), "nowhere", "u")
        .await
        .unwrap()
        .version;
    let l = s.dash_leave(&n("n1"), "b", "nobody").await.unwrap();
    assert_eq!((l.rooms, l.version > v), (0, true));
}

async fn counts_follow_generations_over_nodes(fx: Fixture) {
    let (s1, s2) = (fx.node("n1").await, fx.node("n2").await);
    assert_eq!(s1.dash_set_count(&n("n1"), count(10, 3)).await.unwrap(), 3);
    assert_eq!(s2.dash_set_count(&n("n2"), count(5, 2)).await.unwrap(), 5);
    // An older generation of a node changes nothing.
    assert_eq!(s1.dash_set_count(&n("n1"), count(9, 100)).await.unwrap(), 5);
    assert_eq!(s1.dash_set_count(&n("n1"), count(11, 0)).await.unwrap(), 2);
    // Generations are compared as numbers, whatever their length.
    assert_eq!(
        s2.dash_set_count(&n("n2"), count(1_763_683_200_000_001, 7))
            .await
            .unwrap(),
        7
    );
    assert_eq!(
        s2.dash_set_count(&n("n2"), count(999_999_999_999_999, 1))
            .await
            .unwrap(),
        7
    );
    assert_eq!(s1.dash_clients().await.unwrap(), 7);
}

async fn a_closed_socket_leaves_what_it_joined(fx: Fixture) {
    let s = fx.node("n1").await;
    for id in ["a", "b"] {
        s.dash_create(&room(id), &LIMITS).await.unwrap().unwrap();
    }
    joined(
        s.dash_join(&n("n1"), &person("a", "u", "U"), &LIMITS)
            .await
            .unwrap(),
    );
    joined(
        s.dash_join(&n("n1"), &person("b", "u", "U"), &LIMITS)
            .await
            .unwrap(),
    );
    joined(
        s.dash_join(&n("n1"), &person("b", "v", "V"), &LIMITS)
            .await
            .unwrap(),
    );
    let l = s
        .dash_disconnect(
            &n("n1"),
            &[("a".into(), "u".into()), ("b".into(), "u".into())],
            count(3, 4),
        )
        .await
        .unwrap();
    assert_eq!(
        l.json,
        r#"[{"id":"b","participantCount":1,"participants":[{"id":"v","name":"V"}]}]"#
    );
    assert_eq!(s.dash_clients().await.unwrap(), 4);
}

async fn restore_keeps_only_what_the_node_holds(fx: Fixture) {
    let (s1, s2) = (fx.node("n1").await, fx.node("n2").await);
    s1.dash_create(&room("r"), &LIMITS).await.unwrap().unwrap();
    joined(
        s2.dash_join(&n("n2"), &person("r", "other", "O"), &LIMITS)
            .await
            .unwrap(),
    );
    joined(
        s1.dash_join(&n("n1"), &person("r", "gone", "G"), &LIMITS)
            .await
            .unwrap(),
    );
    // `kept` was lost by the store (an outage), its socket still holds it.
    let kept = person("r", "kept", "K");
    let l = s1
        .dash_restore(&n("n1"), count(2, 1), std::slice::from_ref(&kept))
        .await
        .unwrap();
    assert_eq!(
        l.json,
        r#"[{"id":"r","participantCount":2,"participants":[{"id":"other","name":"O"},{"id":"kept","name":"K"}]}]"#
    );
    assert_eq!(s1.dash_clients().await.unwrap(), 1);
    // What it restored is its own: a close removes it.
    let l = s1
        .dash_disconnect(&n("n1"), &[("r".into(), "kept".into())], count(3, 0))
        .await
        .unwrap();
    assert_eq!(
        l.json,
        r#"[{"id":"r","participantCount":1,"participants":[{"id":"other","name":"O"}]}]"#
    );
}

async fn sweeping_removes_exactly_the_dead_nodes_entries(fx: Fixture) {
    let (dead, live, sweeper) = (
        fx.node("dead").await,
        fx.node("live").await,
        fx.node("sweeper").await,
    );
    dead.dash_create(&room("r"), &LIMITS)
        .await
        .unwrap()
        .unwrap();
    joined(
        dead.dash_join(&n("dead"), &person("r", "d", "D"), &LIMITS)
            .await
            .unwrap(),
    );
    joined(
        live.dash_join(&n("live"), &person("r", "l", "L"), &LIMITS)
            .await
            .unwrap(),
    );
    dead.dash_set_count(&n("dead"), count(1, 5)).await.unwrap();
    live.dash_set_count(&n("live"), count(1, 2)).await.unwrap();
    // `live` has a heartbeat, `dead` has none; both last swept long ago
    // as far as a zero staleness is concerned.
    live.heartbeat(&n("live"), Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let swept = sweeper
        .dash_sweep(&n("sweeper"), Duration::ZERO)
        .await
        .unwrap();
    if !fx.is_redis() {
        // One process: every node the memory store knows is alive.
        assert_eq!(swept.nodes, 0);
        assert_eq!(sweeper.dash_clients().await.unwrap(), 7);
        return;
    }
    assert_eq!(swept.nodes, 1);
    assert_eq!(
        swept.list.expect("the list changed").json,
        r#"[{"id":"r","participantCount":1,"participants":[{"id":"l","name":"L"}]}]"#
    );
    assert_eq!(sweeper.dash_clients().await.unwrap(), 2);
    // Idempotent: nothing is left to sweep.
    let again = sweeper
        .dash_sweep(&n("sweeper"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((again.nodes, again.list), (0, None));
    // A node that swept recently is not swept, heartbeat or not.
    live.dash_sweep(&n("live"), Duration::from_secs(60))
        .await
        .unwrap();
    let recent = fx.node("young").await;
    recent
        .dash_set_count(&n("young"), count(1, 1))
        .await
        .unwrap();
    let third = sweeper
        .dash_sweep(&n("sweeper"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(third.nodes, 0);
    assert_eq!(sweeper.dash_clients().await.unwrap(), 3);
}
