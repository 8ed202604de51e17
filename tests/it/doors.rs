//! The doors' listeners and prefixes (`[doors]`): each door's own listener
//! serves only that door (the main listener's paths are not there), the
//! prefixes put the doors on the main listener, and a listener that cannot
//! bind stops the start naming its key. What each door answers is tested
//! with the door (room_signaling.rs, dashboard.rs).

use std::time::Duration;

use crate::helpers::{command, http_client, TestNode};

const KEYS: [&str; 3] = [
    "doors.room_signaling.http_listen",
    "doors.room_signaling.ws_listen",
    "doors.dashboard.listen",
];

#[tokio::test]
async fn each_door_listener_serves_its_door_alone() {
    let node = TestNode::spawn(&[
        (
            "SWITCHBOARD_DOORS__ROOM_SIGNALING__HTTP_LISTEN",
            "127.0.0.1:0",
        ),
        (
            "SWITCHBOARD_DOORS__ROOM_SIGNALING__WS_LISTEN",
            "127.0.0.1:0",
        ),
        ("SWITCHBOARD_DOORS__DASHBOARD__LISTEN", "127.0.0.1:0"),
        ("SWITCHBOARD_DOORS__ROOM_SIGNALING__PREFIX", "/signaling"),
        ("SWITCHBOARD_DOORS__DASHBOARD__PREFIX", "/legacy/dashboard"),
    ]);
    let mut seen = vec![node.addr()];
    for key in KEYS {
        let addr = node.door_addr(key);
        assert!(
            addr.ip().is_loopback() && !seen.contains(&addr),
            "{key} at {addr}"
        );
        seen.push(addr);
        // The main listener's probes are not part of a door's path space
        // (on the room signaling WebSocket's listener every path is that
        // WebSocket, so a plain GET is a bad upgrade).
        let r = http_client()
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        let (status, code) = if key == "doors.room_signaling.ws_listen" {
            (400, "bad-request")
        } else {
            (404, "not-found")
        };
        assert_eq!(r.status(), status, "{key}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{key}: {body}");
    }
    let r = http_client()
        .get(node.http("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_door_port_that_is_taken_stops_the_start_naming_its_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let child = command(
        dir.path(),
        &[],
        &[
            ("SWITCHBOARD_SERVER__LISTEN", "127.0.0.1:0"),
            ("SWITCHBOARD_STUN__LISTEN", "127.0.0.1:0"),
            ("SWITCHBOARD_STUN__LISTEN_V6", ""),
            ("SWITCHBOARD_DOORS__DASHBOARD__LISTEN", &addr),
        ],
    )
    .spawn()
    .expect("spawn");
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("exit within 10 s")
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("doors.dashboard.listen: cannot bind {addr}")),
        "{stderr}"
    );
    drop(taken);
}
