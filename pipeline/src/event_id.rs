//! Deterministic `event_id`s: the same input always names an output the same way, so consumers
//! drop repeats after a replay by comparing ids.

use schemas::{AnomalyKind, AnomalyState, DeviceStatus};

/// A window aggregate: device and window.
pub fn aggregate(tenant: &str, device: &str, size_ms: i64, start_ms: i64) -> String {
    format!("agg/{tenant}/{device}/{size_ms}/{start_ms}")
}

/// An anomaly state change: device (empty for tenant-level kinds), kind, state and time.
pub fn anomaly(
    tenant: &str,
    device: &str,
    kind: AnomalyKind,
    state: AnomalyState,
    ts: i64,
) -> String {
    let kind = serde_json::to_value(kind).ok();
    let state = serde_json::to_value(state).ok();
    let text = |v: Option<serde_json::Value>| {
        v.and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    format!(
        "anomaly/{tenant}/{device}/{}/{}/{ts}",
        text(kind),
        text(state)
    )
}

/// A status transition: device, new status and time.
pub fn status(tenant: &str, device: &str, status: DeviceStatus, ts: i64) -> String {
    let s = match status {
        DeviceStatus::Online => "online",
        DeviceStatus::Offline => "offline",
    };
    format!("status/{tenant}/{device}/{s}/{ts}")
}

/// A last-seen time: device and time.
pub fn last_seen(tenant: &str, device: &str, ts: i64) -> String {
    format!("lastseen/{tenant}/{device}/{ts}")
}

/// A dead letter: where the rejected record was read.
pub fn dead_letter(topic: &str, partition: i32, offset: i64) -> String {
    format!("dlq/{topic}/{partition}/{offset}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_parts() {
        assert_eq!(aggregate("t", "d", 60_000, 120_000), "agg/t/d/60000/120000");
        assert_eq!(
            anomaly("t", "", AnomalyKind::MassOffline, AnomalyState::Firing, 5),
            "anomaly/t//mass_offline/firing/5"
        );
        assert_eq!(
            status("t", "d", DeviceStatus::Offline, 7),
            "status/t/d/offline/7"
        );
        assert_eq!(dead_letter("telemetry", 3, 9), "dlq/telemetry/3/9");
        assert_eq!(last_seen("t", "d", 11), "lastseen/t/d/11");
    }
}
