//! Tests of [`super`]: cache.rs's unit and property tests, kept apart so the module reads
//! as the code it is.

use super::*;

#[test]
fn a_written_device_reads_back() {
    let mut d = DeviceState {
        tenant_id: "t".into(),
        device_id: "d".into(),
        device_class: Some("sensor".into()),
        status: Some("online".into()),
        status_since: Some(1_764_979_200_123),
        last_seen: Some(1_764_979_260_456),
        health: Some(87.123_456_789_012_34),
        health_at: Some(1_764_979_260_000),
        error_rate: Some(0.125),
        open_anomalies: BTreeMap::new(),
        anomaly_changed: BTreeMap::new(),
    };
    d.anomaly_changed.insert("battery_low".into(), 10);
    d.anomaly_changed.insert("offline".into(), 20);
    d.open_anomalies.insert(
        "battery_low".into(),
        OpenAnomaly {
            since: 10,
            severity: "warning".into(),
        },
    );
    // What the scripts do with a write, by hand: stored values, then the read row.
    let w = to_write(&d, Duration::from_secs(60));
    let anomalies: Vec<String> =
        w.a.iter()
            .map(|a| format!("{}={}|{}", a.k, a.ts, a.v))
            .collect();
    let row: Vec<serde_json::Value> = [
        Some(w.d.to_string()),
        Some(w.t.to_string()),
        w.c.map(str::to_string),
        w.s.map(str::to_string),
        w.ss.clone(),
        w.ls.clone(),
        w.ha.clone(),
        w.h.clone(),
        w.er.clone(),
        Some(anomalies.join("\n")),
    ]
    .into_iter()
    .map(|v| v.map_or(serde_json::Value::Bool(false), serde_json::Value::String))
    .collect();
    assert_eq!(parse(&row).ok(), Some(d));
}

#[test]
fn last_seen_writes_carry_six_texts_per_device() {
    let mut d = DeviceState {
        tenant_id: "t".into(),
        device_id: "d".into(),
        device_class: Some("sensor".into()),
        status: None,
        status_since: None,
        last_seen: Some(1_764_979_260_456),
        health: None,
        health_at: None,
        error_rate: None,
        open_anomalies: BTreeMap::new(),
        anomaly_changed: BTreeMap::new(),
    };
    let mut classless = d.clone();
    classless.device_id = "e".into();
    classless.device_class = None;
    let mut never = d.clone();
    never.last_seen = None;
    assert_eq!(
        last_seen_args([&d, &classless, &never], Duration::from_secs(1)),
        [
            "t",
            "d",
            "t/d",
            "1764979260456",
            "1764979261456",
            "sensor",
            "t",
            "e",
            "t/e",
            "1764979260456",
            "1764979261456",
            ""
        ]
    );
    d.last_seen = Some(-1);
    assert_eq!(last_seen_args([&d], Duration::ZERO)[3], "-1");
}
