//! The latest known state of every device: status, last seen, health, open anomalies. Each field
//! is replaced only by a newer record, so the order records arrive in (several partitions, a
//! replay) does not matter, and several bridges reading the same topics agree. Every bridge keeps
//! this in-process store; with Redis configured it also notes which devices changed, for the
//! [`crate::cache`] to write through.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use schemas::{Anomaly, AnomalyState, StatusTransition, WindowAggregate, wire_name as name};
use serde::Serialize;

/// What the bridge knows of one device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceState {
    /// Tenant.
    pub tenant_id: String,
    /// Device.
    pub device_id: String,
    /// Device class, when known.
    pub device_class: Option<String>,
    /// `online` or `offline`, once a transition was seen.
    pub status: Option<String>,
    /// When the status began, ms.
    pub status_since: Option<i64>,
    /// The device's latest reading, ms.
    pub last_seen: Option<i64>,
    /// Health score of the latest window, 0-100.
    pub health: Option<f64>,
    /// End of that window, ms.
    pub health_at: Option<i64>,
    /// Error rate of that window.
    pub error_rate: Option<f64>,
    /// Open anomalies by kind: since when (ms) and how severe.
    pub open_anomalies: BTreeMap<String, OpenAnomaly>,
    /// When each anomaly kind last fired or resolved, ms: an older change does not undo it.
    #[serde(skip)]
    pub anomaly_changed: BTreeMap<String, i64>,
}

/// An anomaly that fired and has not resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenAnomaly {
    /// When it fired, ms.
    pub since: i64,
    /// Its severity.
    pub severity: String,
}

/// A device, by tenant and id.
pub type DeviceKey = (String, String);

/// Every device's state, by tenant and device.
#[derive(Debug, Default)]
pub struct Store {
    devices: RwLock<HashMap<DeviceKey, DeviceState>>,
    /// The devices changed since [`Store::take_changed`] last ran, when something takes them.
    changed: Option<Mutex<HashSet<DeviceKey>>>,
}

impl Store {
    /// A store that notes which devices change, for [`Store::take_changed`].
    pub fn noting_changes() -> Store {
        Store {
            devices: RwLock::default(),
            changed: Some(Mutex::default()),
        }
    }

    /// The devices changed since the last call (with [`Store::noting_changes`]).
    pub fn take_changed(&self) -> HashSet<DeviceKey> {
        self.changed
            .as_ref()
            .map(|c| std::mem::take(&mut *c.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default()
    }

    /// Notes devices as changed again (they could not be written), or every device when `keys`
    /// is `None` (the copy they were written to may have lost them all).
    pub fn mark_changed(&self, keys: Option<HashSet<DeviceKey>>) {
        let Some(changed) = &self.changed else {
            return;
        };
        let keys = keys.unwrap_or_else(|| {
            let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
            devices.keys().cloned().collect()
        });
        changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(keys);
    }

    /// The state of these devices (those the store has).
    pub fn get<'a>(&self, keys: impl IntoIterator<Item = &'a DeviceKey>) -> Vec<DeviceState> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        keys.into_iter()
            .filter_map(|k| devices.get(k).cloned())
            .collect()
    }

    fn with<R>(
        &self,
        tenant: &str,
        device: &str,
        class: &Option<String>,
        f: impl FnOnce(&mut DeviceState) -> R,
    ) -> R {
        let key = (tenant.to_string(), device.to_string());
        let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
        let state = devices.entry(key.clone()).or_insert_with(|| DeviceState {
            tenant_id: tenant.into(),
            device_id: device.into(),
            device_class: None,
            status: None,
            status_since: None,
            last_seen: None,
            health: None,
            health_at: None,
            error_rate: None,
            open_anomalies: BTreeMap::new(),
            anomaly_changed: BTreeMap::new(),
        });
        if class.is_some() {
            state.device_class.clone_from(class);
        }
        let result = f(state);
        // Noted after the change and before the lock is let go: a writer that takes the note
        // reads the changed state (it takes the devices' lock after the note).
        if let Some(changed) = &self.changed {
            changed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key);
        }
        result
    }

    /// Takes a status transition, if it is newer than the one held.
    pub fn status(&self, s: &StatusTransition) {
        self.with(&s.tenant_id, &s.device_id, &s.device_class, |d| {
            if d.status_since.is_none_or(|since| s.ts >= since) {
                d.status = Some(name(&s.status));
                d.status_since = Some(s.ts);
            }
            d.last_seen = Some(d.last_seen.map_or(s.last_seen, |l| l.max(s.last_seen)));
        });
    }

    /// Takes a window's health, if the window ended later than the one held (of two ending
    /// together, the one read first stays: one device's records are in one partition, so every
    /// bridge reads them in the same order).
    pub fn aggregate(&self, a: &WindowAggregate) {
        self.with(&a.tenant_id, &a.device_id, &a.device_class, |d| {
            let newer = d.health_at.is_none_or(|at| a.window_end > at);
            if newer {
                d.health = Some(a.health_score);
                d.health_at = Some(a.window_end);
                d.error_rate = Some(a.error_rate);
            }
        });
    }

    /// Opens or closes an anomaly, if the change is newer than the last one seen of its kind.
    /// Tenant-level anomalies (no device) are not device state and are left out.
    pub fn anomaly(&self, a: &Anomaly) {
        if a.device_id.is_empty() {
            return;
        }
        let kind = name(&a.kind);
        self.with(&a.tenant_id, &a.device_id, &a.device_class, |d| {
            if d.anomaly_changed.get(&kind).is_some_and(|ts| *ts > a.ts) {
                return;
            }
            d.anomaly_changed.insert(kind.clone(), a.ts);
            match a.state {
                AnomalyState::Firing => {
                    d.open_anomalies.insert(
                        kind,
                        OpenAnomaly {
                            since: a.ts,
                            severity: name(&a.severity),
                        },
                    );
                }
                AnomalyState::Resolved => {
                    d.open_anomalies.remove(&kind);
                }
            }
        });
    }

    /// The devices `visible` lets through that `wanted` selects, sorted by tenant and device.
    pub fn select(
        &self,
        visible: impl Fn(&str) -> bool,
        wanted: impl Fn(&DeviceState) -> bool,
    ) -> Vec<DeviceState> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<DeviceState> = devices
            .values()
            .filter(|d| visible(&d.tenant_id) && wanted(d))
            .cloned()
            .collect();
        out.sort_by(|a, b| (&a.tenant_id, &a.device_id).cmp(&(&b.tenant_id, &b.device_id)));
        out
    }
}

#[cfg(test)]
mod tests {
    use schemas::{AnomalyKind, DeviceStatus, Severity, TransitionReason};

    use super::*;

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
        let all = store.select(|_| true, |_| true);
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
        let open = &store.select(|_| true, |_| true)[0].open_anomalies;
        assert!(open.contains_key("battery_low"), "{open:?}");
        store.anomaly(&anomaly(AnomalyState::Resolved, 400));
        assert!(
            store.select(|_| true, |_| true)[0]
                .open_anomalies
                .is_empty()
        );
        assert!(store.select(|t| t == "other", |_| true).is_empty());
    }
}
