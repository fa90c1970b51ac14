//! The inventory as the pipeline reads it, case by case, where the reference model (which takes
//! one registration per life and a device's class as fixed) does not reach: the registered class
//! replacing the reported one, a registration changed or unwatched, a tombstone for a device
//! never known, and records on the inventory that are no registration.

mod support;

use support::run;

use pipeline::clock::RecordTime;
use pipeline::output::Output;
use pipeline::source::memory::MemoryRecord;
use schemas::{
    Codec, DeadLetterReason, DeviceStatus, Registration, StatusTransition, Telemetry,
    TransitionReason,
};

const T0: i64 = 1_700_000_000_000;

fn reading(device: &str, class: Option<&str>, ts: i64) -> MemoryRecord {
    let t = Telemetry {
        tenant_id: "acme".into(),
        device_id: device.into(),
        device_class: class.map(Into::into),
        ts,
        ..Telemetry::example()
    };
    MemoryRecord {
        headers: Vec::new(),
        record_time: RecordTime::Producer(ts),
        key: None,
        value: Codec::builtin().encode(&t).unwrap_or_default(),
    }
}

fn key(device: &str) -> Option<Vec<u8>> {
    serde_json::to_vec(&["acme", device]).ok()
}

fn registered(r: Registration, at: i64) -> MemoryRecord {
    MemoryRecord {
        headers: Vec::new(),
        record_time: RecordTime::Producer(at),
        key: key(&r.device_id),
        value: Codec::builtin().encode(&r).unwrap_or_default(),
    }
}

fn tombstone(device: &str, at: i64) -> MemoryRecord {
    MemoryRecord {
        headers: Vec::new(),
        record_time: RecordTime::Producer(at),
        key: key(device),
        value: Vec::new(),
    }
}

fn statuses<'a>(out: &'a [Output], device: &str) -> Vec<&'a StatusTransition> {
    let mut s: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Status(s) if s.device_id == device => Some(s),
            _ => None,
        })
        .collect();
    s.sort_by_key(|s| s.ts);
    s
}

/// A fleet that reports every 10 s for 10 minutes, `device` among it, with other devices so
/// that event time moves past every deadline.
fn fleet(devices: &[&str], class: Option<&str>, until: i64) -> Vec<MemoryRecord> {
    let mut out = Vec::new();
    for step in 0..until / 10_000 {
        for d in devices {
            out.push(reading(d, class, T0 + step * 10_000));
        }
    }
    out
}

#[test]
fn the_registered_class_replaces_the_reported_one() {
    let registration = Registration {
        device_class: Some("camera".into()),
        ..Registration::new("acme", "cam-1")
    };
    let out = run(
        fleet(&["cam-1"], Some("sensor"), 120_000),
        vec![registered(registration, T0 - 5_000)],
    );
    let classes: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Aggregate(a) => Some(a.device_class.clone()),
            Output::Status(s) => Some(s.device_class.clone()),
            _ => None,
        })
        .collect();
    assert!(!classes.is_empty());
    assert!(
        classes.iter().all(|c| c.as_deref() == Some("camera")),
        "{classes:?}"
    );
}

#[test]
fn a_changed_registration_takes_effect_and_an_unwatched_device_is_not_expected() {
    let every = |device: &str, interval: i64, monitored: bool| Registration {
        expected_interval_ms: Some(interval),
        monitoring_enabled: monitored,
        ..Registration::new("acme", device)
    };
    // `slow` reports every 10 s: expected every 60 s, then every 2 s (a timeout of 6 s, which
    // its next 10 s gap exceeds); `ghost` never reports and is not watched, then watched.
    let mut telemetry = fleet(&["other"], None, 300_000);
    telemetry.extend([
        reading("slow", None, T0 + 1_000),
        reading("slow", None, T0 + 11_000),
    ]);
    telemetry.sort_by_key(|r| r.record_time.millis());
    let out = run(
        telemetry,
        vec![
            registered(every("slow", 60_000, true), T0),
            registered(every("ghost", 10_000, false), T0),
            registered(every("slow", 2_000, true), T0 + 5_000),
            registered(every("ghost", 10_000, true), T0 + 100_000),
        ],
    );
    let slow = statuses(&out, "slow");
    assert_eq!(slow[0].reason, TransitionReason::FirstSeen);
    // Online from 1 s; the timeout of 6 s set at 5 s makes it offline at 7 s (never before
    // the registration that shortened it), back at 11 s, offline at 17 s.
    let offline: Vec<_> = slow
        .iter()
        .filter(|s| s.status == DeviceStatus::Offline)
        .map(|s| (s.ts - T0, s.reason))
        .collect();
    assert_eq!(
        offline,
        [
            (7_000, TransitionReason::Timeout),
            (17_000, TransitionReason::Timeout)
        ]
    );
    let ghost = statuses(&out, "ghost");
    assert_eq!(ghost.len(), 1, "{ghost:?}");
    assert_eq!(ghost[0].reason, TransitionReason::NeverSeen);
    assert_eq!(ghost[0].ts, T0 + 130_000, "expected since it was watched");
    assert_eq!(ghost[0].last_seen, T0 + 100_000);
    assert_eq!(ghost[0].previous, None);
}

#[test]
fn a_decommissioned_device_leaves_and_comes_back_unregistered() {
    // Registered and decommissioned at 65 s; its readings go on (a device taken out of the
    // inventory but not switched off): it comes back as a device nobody registered.
    let out = run(
        fleet(&["d"], None, 200_000),
        vec![
            registered(Registration::new("acme", "d"), T0),
            tombstone("d", T0 + 65_000),
            tombstone("never-known", T0 + 70_000),
        ],
    );
    let d = statuses(&out, "d");
    let reasons: Vec<_> = d.iter().map(|s| (s.ts - T0, s.reason)).collect();
    assert_eq!(
        reasons,
        [
            (0, TransitionReason::FirstSeen),
            (65_000, TransitionReason::Decommissioned),
            (70_000, TransitionReason::FirstSeen),
        ]
    );
    assert_eq!(d[1].previous, Some(DeviceStatus::Online));
    assert_eq!(d[1].last_seen, T0 + 60_000);
    assert!(statuses(&out, "never-known").is_empty());
    // The minute open at 65 s closed at its end, once, with the readings of both lives.
    let start = (T0 + 65_000).div_euclid(60_000) * 60_000;
    let counts: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Aggregate(a)
                if a.device_id == "d"
                    && a.window_start == start
                    && a.window_end - a.window_start == 60_000 =>
            {
                Some(a.count)
            }
            _ => None,
        })
        .collect();
    let expected = (start..start + 60_000)
        .step_by(10_000)
        .filter(|t| (t - T0) % 10_000 == 0)
        .count() as i64;
    assert_eq!(counts, [expected]);
}

#[test]
fn inventory_records_that_are_no_registration_are_dead_letters_of_the_inventory() {
    let invalid = Registration {
        expected_interval_ms: Some(-5),
        ..Registration::new("acme", "bad")
    };
    let out = run(
        fleet(&["d"], None, 60_000),
        vec![
            MemoryRecord {
                headers: Vec::new(),
                record_time: RecordTime::Producer(T0),
                key: key("x"),
                value: b"garbage".to_vec(),
            },
            MemoryRecord {
                headers: Vec::new(),
                record_time: RecordTime::Producer(T0),
                key: Some(b"not a key".to_vec()),
                value: Vec::new(),
            },
            MemoryRecord {
                headers: Vec::new(),
                record_time: RecordTime::None,
                key: key("d"),
                value: Vec::new(),
            },
            registered(invalid, T0),
        ],
    );
    let mut dead: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::DeadLetter(d) => Some((
                d.source_topic.as_str(),
                d.source_partition,
                d.source_offset,
                d.reason,
            )),
            _ => None,
        })
        .collect();
    dead.sort_by_key(|d| d.2);
    assert_eq!(
        dead,
        [
            ("memory-inventory", 0, 0, DeadLetterReason::Undecodable),
            ("memory-inventory", 0, 1, DeadLetterReason::Undecodable),
            ("memory-inventory", 0, 2, DeadLetterReason::InvalidField),
            ("memory-inventory", 0, 3, DeadLetterReason::InvalidField),
        ]
    );
    assert_eq!(statuses(&out, "d")[0].reason, TransitionReason::FirstSeen);
}
