//! A device as the cache writes it to Redis and reads it back: the arguments of the scripts
//! (numbers as text, so Lua's doubles never round them), the keys' expiry, and the rows a
//! snapshot reads parsed into device states.

use super::*;

/// One device as the write script takes it. Numbers travel as text so that Lua's doubles
/// never round them.
#[derive(Serialize)]
pub(super) struct Write<'a> {
    pub(super) t: &'a str,
    pub(super) d: &'a str,
    /// The device's key id.
    pub(super) k: String,
    /// When its keys expire, ms.
    pub(super) x: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) c: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) s: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) ss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) ls: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) ha: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) h: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) er: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) a: Vec<AnomalyWrite<'a>>,
}

#[derive(Serialize)]
pub(super) struct AnomalyWrite<'a> {
    pub(super) k: &'a str,
    pub(super) ts: String,
    /// `open|since|severity`.
    pub(super) v: String,
}

/// When a device's keys expire: `retention` after its latest record, ms.
pub(super) fn expiry(d: &DeviceState, retention: Duration) -> String {
    let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    d.latest()
        .unwrap_or(0)
        .saturating_add(retention)
        .to_string()
}

pub(super) fn to_write(d: &DeviceState, retention: Duration) -> Write<'_> {
    let text = |v: Option<i64>| v.map(|v| v.to_string());
    Write {
        t: &d.tenant_id,
        d: &d.device_id,
        k: key::encode(&d.tenant_id, &d.device_id),
        x: expiry(d, retention),
        c: d.device_class.as_deref(),
        s: d.status.as_deref(),
        ss: text(d.status_since),
        ls: text(d.last_seen),
        ha: text(d.health_at),
        h: d.health.map(|h| h.to_string()),
        er: d.error_rate.map(|e| e.to_string()),
        a: d.anomaly_changed
            .iter()
            .map(|(kind, ts)| AnomalyWrite {
                k: kind,
                ts: ts.to_string(),
                v: match d.open_anomalies.get(kind) {
                    Some(open) => format!("1|{}|{}", open.since, open.severity),
                    None => "0||".into(),
                },
            })
            .collect(),
    }
}

/// The arguments of the last-seen script after the slack: tenant, device, key id, last seen,
/// expiry, class (empty: none) of each device that has a last-seen time.
pub(super) fn last_seen_args<'a>(
    devices: impl IntoIterator<Item = &'a DeviceState>,
    retention: Duration,
) -> Vec<String> {
    let mut args = Vec::new();
    for d in devices {
        if let Some(at) = d.last_seen {
            args.extend([
                d.tenant_id.clone(),
                d.device_id.clone(),
                key::encode(&d.tenant_id, &d.device_id),
                at.to_string(),
                expiry(d, retention),
                d.device_class.clone().unwrap_or_default(),
            ]);
        }
    }
    args
}

/// How far ahead of its expiry a key's expiry is moved: an eighth of the retention, so that a
/// device's keys are touched for it a few times per retention, not at every write.
pub(super) fn slack(retention: Duration) -> String {
    (retention.as_millis() / 8).to_string()
}

/// One row of the read script.
pub(super) fn parse(row: &[serde_json::Value]) -> Result<DeviceState, CacheError> {
    let text = |i: usize| row.get(i).and_then(|v| v.as_str()).map(str::to_string);
    let number = |i: usize| text(i).and_then(|t| t.parse::<i64>().ok());
    let real = |i: usize| text(i).and_then(|t| t.parse::<f64>().ok());
    let (Some(device_id), Some(tenant_id)) = (text(0), text(1)) else {
        return Err(CacheError::Unreadable(format!("{row:?}")));
    };
    let mut open_anomalies = BTreeMap::new();
    let mut anomaly_changed = BTreeMap::new();
    for line in text(9).unwrap_or_default().lines() {
        let parsed = line.split_once('=').and_then(|(kind, value)| {
            let mut parts = value.split('|');
            let ts = parts.next()?.parse::<i64>().ok()?;
            let open = parts.next()? == "1";
            let since = parts.next()?.parse::<i64>().ok();
            let severity = parts.next()?.to_string();
            Some((kind, ts, open.then_some(since).flatten(), severity))
        });
        let Some((kind, ts, since, severity)) = parsed else {
            return Err(CacheError::Unreadable(line.to_string()));
        };
        anomaly_changed.insert(kind.to_string(), ts);
        if let Some(since) = since {
            open_anomalies.insert(kind.to_string(), OpenAnomaly { since, severity });
        }
    }
    Ok(DeviceState {
        tenant_id,
        device_id,
        device_class: text(2),
        status: text(3),
        status_since: number(4),
        last_seen: number(5),
        health_at: number(6),
        health: real(7),
        error_rate: real(8),
        open_anomalies,
        anomaly_changed,
    })
}
