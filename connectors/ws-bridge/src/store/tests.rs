//! Tests of [`super`]: store.rs's unit and property tests, kept apart so the module reads
//! as the code it is.

use schemas::{AnomalyKind, DeviceStatus, Severity, TransitionReason};

use super::*;

fn every(store: &Store) -> Vec<DeviceState> {
    store.pages(None, None, 2, |_| true)
}

fn transition(status: DeviceStatus, ts: i64) -> StatusTransition {
    StatusTransition {
        tenant_id: "t".into(),
        device_id: "d".into(),
        device_class: Some("sensor".into()),
        status,
        previous: None,
        ts,
        last_seen: ts,
        reason: TransitionReason::FirstSeen,
        time_in_previous_ms: None,
        event_id: format!("s/{ts}"),
    }
}

#[test]
fn only_newer_records_replace_what_is_held() {
    let store = Store::default();
    store.status(&transition(DeviceStatus::Offline, 200));
    store.status(&transition(DeviceStatus::Online, 100));
    let all = every(&store);
    assert_eq!(all[0].status.as_deref(), Some("offline"));
    assert_eq!(all[0].status_since, Some(200));
    assert_eq!(all[0].device_class.as_deref(), Some("sensor"));

    let anomaly = |state, ts| Anomaly {
        tenant_id: "t".into(),
        device_id: "d".into(),
        device_class: None,
        kind: AnomalyKind::BatteryLow,
        state,
        severity: Severity::Warning,
        observed: 10.0,
        threshold: 20.0,
        baseline: None,
        ts,
        message: String::new(),
        event_id: String::new(),
    };
    store.anomaly(&anomaly(AnomalyState::Firing, 300));
    store.anomaly(&anomaly(AnomalyState::Resolved, 250));
    let open = &every(&store)[0].open_anomalies;
    assert!(open.contains_key("battery_low"), "{open:?}");
    store.anomaly(&anomaly(AnomalyState::Resolved, 400));
    assert!(every(&store)[0].open_anomalies.is_empty());
    assert!(store.page(Some("other"), None, 9, |_| true).0.is_empty());
}

fn seen(device: &str, class: Option<&str>, at: i64) -> LastSeen {
    LastSeen {
        tenant_id: "t".into(),
        device_id: device.into(),
        device_class: class.map(str::to_string),
        last_seen: at,
        event_id: format!("lastseen/t/{device}/{at}"),
    }
}

#[test]
fn a_last_seen_time_only_moves_forward() {
    let store = Store::noting_changes();
    assert_eq!(
        store.last_seen(&seen("d", Some("sensor"), 1_000)),
        Some((Some("sensor".into()), 1_000))
    );
    let all = every(&store);
    assert_eq!(all[0].last_seen, Some(1_000));
    assert_eq!(all[0].status, None, "a reading time alone says no status");
    assert_eq!(all[0].device_class.as_deref(), Some("sensor"));
    // Late or replayed: nothing moves, nothing to write or send.
    store.take_changed();
    assert_eq!(store.last_seen(&seen("d", None, 999)), None);
    assert_eq!(store.last_seen(&seen("d", None, 1_000)), None);
    assert!(store.take_changed().is_empty());
    assert_eq!(every(&store)[0].last_seen, Some(1_000));
    // A status transition's older last_seen does not move it back either.
    let mut s = transition(DeviceStatus::Online, 900);
    s.last_seen = 500;
    store.status(&s);
    let d = &every(&store)[0];
    assert_eq!(
        (d.last_seen, d.status.as_deref()),
        (Some(1_000), Some("online"))
    );
    assert_eq!(
        store.last_seen(&seen("d", None, 2_000)),
        Some((Some("sensor".into()), 2_000)),
        "the class held is kept when the record has none"
    );
}

#[test]
fn a_moved_last_seen_is_noted_alone_and_anything_else_wholly() {
    let store = Store::noting_changes();
    let key = || ("t".to_string(), "d".to_string());
    store.last_seen(&seen("d", None, 1_000));
    assert_eq!(store.take_changed().get(&key()), Some(&Change::All), "new");
    store.last_seen(&seen("d", None, 2_000));
    assert_eq!(store.take_changed().get(&key()), Some(&Change::LastSeen));
    store.last_seen(&seen("d", Some("pump"), 3_000));
    assert_eq!(
        store.take_changed().get(&key()),
        Some(&Change::All),
        "its class changed"
    );
    // Noted twice between writes: the larger change wins.
    store.last_seen(&seen("d", None, 4_000));
    store.status(&transition(DeviceStatus::Online, 4_000));
    store.last_seen(&seen("d", None, 5_000));
    assert_eq!(store.take_changed().get(&key()), Some(&Change::All));
    store.last_seen(&seen("d", None, 6_000));
    store.mark_changed(None);
    assert_eq!(
        store.take_changed().get(&key()),
        Some(&Change::All),
        "everything after a lost cache"
    );
    // A write that failed puts its changes back before those noted since: taken `All`,
    // retired meanwhile, the write failed: gone it is.
    store.last_seen(&seen("d", None, 7_000));
    let taken = store.take_changed();
    store.status(&StatusTransition {
        reason: TransitionReason::Retired,
        ..transition(DeviceStatus::Offline, 8_000)
    });
    store.mark_changed(Some(taken));
    assert_eq!(store.take_changed().get(&key()), Some(&Change::Gone));
    store.last_seen(&seen("d", None, 9_000));
    let both = store.get([(&key(), &Change::LastSeen)]);
    assert_eq!(both.len(), 1);
    assert_eq!(both[0].0.last_seen, Some(9_000));
    assert_eq!(
        store.last_seen_of([("t", "d"), ("t", "nobody")]),
        [Some(9_000), None]
    );
}

#[test]
fn a_decommissioned_device_leaves_and_its_last_window_does_not_bring_it_back() {
    let store = Store::noting_changes();
    store.last_seen(&seen("d", None, 1_000));
    store.status(&StatusTransition {
        reason: TransitionReason::Decommissioned,
        ..transition(DeviceStatus::Offline, 5_000)
    });
    assert!(every(&store).is_empty());
    // The minute it was decommissioned in closes after it left.
    let window = WindowAggregate {
        tenant_id: "t".into(),
        device_id: "d".into(),
        device_class: None,
        window_start: 0,
        window_end: 60_000,
        count: 1,
        errors: 0,
        error_rate: 0.0,
        rt_min: None,
        rt_mean: None,
        rt_p50: None,
        rt_p95: None,
        rt_p99: None,
        rt_max: None,
        battery_last: None,
        battery_min: None,
        signal_mean: None,
        health_score: 100.0,
        event_id: "agg/t/d/60000/0".into(),
        clock_offset_ms: None,
    };
    store.aggregate(&window);
    assert!(every(&store).is_empty());
    // A window it began after coming back is its own.
    store.aggregate(&WindowAggregate {
        window_start: 60_000,
        window_end: 120_000,
        ..window
    });
    assert_eq!(every(&store).len(), 1);
}

fn retired(tenant: &str, device: &str, ts: i64) -> StatusTransition {
    StatusTransition {
        tenant_id: tenant.into(),
        device_id: device.into(),
        reason: TransitionReason::Retired,
        ..transition(DeviceStatus::Offline, ts)
    }
}

#[test]
fn a_retired_device_leaves_and_older_records_do_not_bring_it_back() {
    let store = Store::noting_changes();
    store.last_seen(&seen("d", None, 1_000));
    store.last_seen(&seen("e", None, 1_000));
    store.take_changed();
    store.status(&retired("t", "d", 5_000));
    assert_eq!(every(&store).len(), 1);
    let key = ("t".to_string(), "d".to_string());
    assert_eq!(store.take_changed().get(&key), Some(&Change::Gone));
    // Read late from another topic: from before the retirement, dropped.
    store.last_seen(&seen("d", None, 4_000));
    assert_eq!(every(&store).len(), 1);
    assert!(store.take_changed().is_empty());
    // It reports again: a device anew, written whole.
    store.last_seen(&seen("d", None, 6_000));
    store.status(&retired("t", "d", 5_500));
    assert_eq!(
        store.device("t", "d").and_then(|d| d.last_seen),
        Some(6_000)
    );
    assert_eq!(store.take_changed().get(&key), Some(&Change::All));
    // Silent past the retention: swept, and noted gone.
    assert_eq!(store.sweep(5_000), 1);
    assert_eq!(store.device("t", "e"), None);
    assert_eq!(store.len(), 1);
    assert_eq!(
        store
            .take_changed()
            .get(&("t".to_string(), "e".to_string())),
        Some(&Change::Gone)
    );
}

#[test]
fn pages_follow_tenant_then_device_order_whatever_the_ids_hold() {
    let store = Store::default();
    for (t, d) in [
        ("a", "b/c"),
        ("a/b", "c"),
        ("a", "a"),
        ("b", "x"),
        ("a/b", "a"),
    ] {
        store.last_seen(&LastSeen {
            tenant_id: t.into(),
            ..seen(d, None, 1)
        });
    }
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = store.page(None, after.as_ref(), 2, |_| true);
        got.extend(page.into_iter().map(|d| (d.tenant_id, d.device_id)));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let pair = |t: &str, d: &str| (t.to_string(), d.to_string());
    assert_eq!(
        got,
        [
            pair("a", "a"),
            pair("a", "b/c"),
            pair("a/b", "a"),
            pair("a/b", "c"),
            pair("b", "x")
        ]
    );
    let (tenant, next) = store.page(Some("a/b"), None, 5, |_| true);
    assert_eq!(tenant.len(), 2);
    assert_eq!(next, None);
}
