//! The coordinator records' conformance (`store::coordinator::CoordStore`):
//! one set of behaviour tests, run against the memory store and a real
//! redis-server (two connections as two nodes), as `store_dashboard.rs`
//! does for the dashboard registry.

use std::collections::HashSet;

use switchboard::store::coordinator::CoordKind;

use crate::store_fixture::{conformance, Fixture};

conformance!(
    a_write_needs_the_version_it_read,
    ids_are_unique_across_nodes,
    kinds_are_separate_and_lists_are_in_key_order,
);

async fn a_write_needs_the_version_it_read(fx: Fixture) {
    let (a, b) = (fx.node("a").await, fx.node("b").await);
    let h = CoordKind::Host;
    let v1 = a
        .coord_put(h, "x", 0, "{\"n\":1}")
        .await
        .unwrap()
        .expect("created");
    // Created once: a second create (expected 0) writes nothing.
    assert_eq!(b.coord_put(h, "x", 0, "{\"n\":2}").await.unwrap(), None);
    let got = b.coord_get(h, "x").await.unwrap().unwrap();
    assert_eq!((got.version, got.json.as_str()), (v1, "{\"n\":1}"));
    // B writes with the version it read; A's older version is then refused.
    let v2 = b
        .coord_put(h, "x", v1, "{\"n\":3}")
        .await
        .unwrap()
        .expect("written");
    assert!(v2 > v1);
    assert_eq!(a.coord_put(h, "x", v1, "{\"n\":4}").await.unwrap(), None);
    assert!(!a.coord_delete(h, "x", v1).await.unwrap());
    assert!(a.coord_delete(h, "x", v2).await.unwrap());
    assert_eq!(b.coord_get(h, "x").await.unwrap(), None);
    assert!(!b.coord_delete(h, "x", v2).await.unwrap());
    // Created again: a version read before the delete never matches.
    let v3 = a
        .coord_put(h, "x", 0, "{}")
        .await
        .unwrap()
        .expect("created again");
    assert!(v3 > v2);
    // Text with spaces and any characters survives as it is.
    let odd = "{\"s\":\"a b\\n\u{e9}\"}";
    let v4 = b.coord_put(h, "x", v3, odd).await.unwrap().unwrap();
    assert_eq!(a.coord_get(h, "x").await.unwrap().unwrap().json, odd);
    assert!(v4 > v3);
}

async fn ids_are_unique_across_nodes(fx: Fixture) {
    let (a, b) = (fx.node("a").await, fx.node("b").await);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.coord_next_id(CoordKind::Session).await.unwrap()
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        assert!(ids.insert(t.await.unwrap()), "an id handed out twice");
    }
    assert_eq!(ids.len(), 50);
    assert_eq!(ids.iter().copied().min(), Some(1));
    // Each kind counts on its own.
    assert_eq!(a.coord_next_id(CoordKind::Zone).await.unwrap(), 1);
}

async fn kinds_are_separate_and_lists_are_in_key_order(fx: Fixture) {
    let a = fx.node("a").await;
    for key in ["b", "a", "c"] {
        a.coord_put(CoordKind::Zone, key, 0, key)
            .await
            .unwrap()
            .unwrap();
    }
    a.coord_put(CoordKind::Host, "a", 0, "host")
        .await
        .unwrap()
        .unwrap();
    let zones = a.coord_list(CoordKind::Zone).await.unwrap();
    let keys: Vec<&str> = zones.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    assert_eq!(zones[0].1.json, "a");
    let hosts = a.coord_list(CoordKind::Host).await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].1.json, "host");
    assert!(a.coord_list(CoordKind::Session).await.unwrap().is_empty());
}
