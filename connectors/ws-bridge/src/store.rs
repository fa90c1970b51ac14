//! The latest known state of every device: status, last seen, health, open anomalies. Each field
//! is replaced only by a newer record, so the order records arrive in (several partitions, a
//! replay) does not matter, and several bridges reading the same topics agree. Every bridge keeps
//! this in-process store; with Redis configured it also notes which devices changed, and how, for
//! the [`crate::cache`] to write through.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};

use schemas::{
    Anomaly, AnomalyState, LastSeen, StatusTransition, WindowAggregate, wire_name as name,
};
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

/// What of a device changed since it was last taken by [`Store::take_changed`]. Last-seen times
/// are by far the most frequent change (one per device and `lastseen_interval_ms`), and writing
/// only them costs Redis a fraction of writing a whole device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Only the last-seen time moved.
    LastSeen,
    /// Anything else, or the device is new: all of it is to be written.
    All,
}

/// Devices changed, and how.
pub type Changed = HashMap<DeviceKey, Change>;

/// Every device's state, by tenant and device.
#[derive(Debug, Default)]
pub struct Store {
    devices: RwLock<HashMap<DeviceKey, DeviceState>>,
    /// The devices changed since [`Store::take_changed`] last ran, when something takes them.
    changed: Option<Mutex<Changed>>,
}

/// Notes `change` of `key`, keeping the larger of it and a change already noted.
fn note(changed: &mut Changed, key: DeviceKey, change: Change) {
    let held = changed.entry(key).or_insert(change);
    *held = (*held).max(change);
}

impl Store {
    /// A store that notes which devices change, for [`Store::take_changed`].
    pub fn noting_changes() -> Store {
        Store {
            devices: RwLock::default(),
            changed: Some(Mutex::default()),
        }
    }

    /// The devices changed since the last call, and how (with [`Store::noting_changes`]).
    pub fn take_changed(&self) -> Changed {
        self.changed
            .as_ref()
            .map(|c| std::mem::take(&mut *c.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default()
    }

    /// Notes devices as changed again (they could not be written), or every device as wholly
    /// changed when `keys` is `None` (the copy they were written to may have lost them all).
    pub fn mark_changed(&self, keys: Option<Changed>) {
        let Some(changed) = &self.changed else {
            return;
        };
        let keys = keys.unwrap_or_else(|| {
            let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
            devices.keys().map(|k| (k.clone(), Change::All)).collect()
        });
        let mut changed = changed.lock().unwrap_or_else(|e| e.into_inner());
        for (key, change) in keys {
            note(&mut changed, key, change);
        }
    }

    /// The state of these devices (those the store has), each with how it changed.
    pub fn get<'a>(
        &self,
        keys: impl IntoIterator<Item = (&'a DeviceKey, &'a Change)>,
    ) -> Vec<(DeviceState, Change)> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        keys.into_iter()
            .filter_map(|(k, c)| Some((devices.get(k)?.clone(), *c)))
            .collect()
    }

    /// The last-seen times the store holds for these devices, `None` where it has none.
    pub fn last_seen_of<'a>(
        &self,
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<Option<i64>> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        keys.into_iter()
            .map(|(t, d)| {
                // The map is keyed by owned pairs; one lookup key per device asked for.
                devices
                    .get(&(t.to_string(), d.to_string()))
                    .and_then(|s| s.last_seen)
            })
            .collect()
    }

    /// Applies `f` to the device (created if new) and notes it changed as `change` if `f` says
    /// it changed anything (`Some`), or wholly if it is new or its class changed.
    fn with<R>(
        &self,
        tenant: &str,
        device: &str,
        class: &Option<String>,
        change: Change,
        f: impl FnOnce(&mut DeviceState) -> Option<R>,
    ) -> Option<R> {
        let key = (tenant.to_string(), device.to_string());
        let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
        let mut whole = false;
        let state = devices.entry(key.clone()).or_insert_with(|| {
            whole = true;
            DeviceState {
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
            }
        });
        if class.is_some() && state.device_class != *class {
            state.device_class.clone_from(class);
            whole = true;
        }
        let result = f(state);
        // Noted after the change and before the lock is let go: a writer that takes the note
        // reads the changed state (it takes the devices' lock after the note).
        if let Some(changed) = &self.changed
            && (whole || result.is_some())
        {
            let change = if whole { Change::All } else { change };
            note(
                &mut changed.lock().unwrap_or_else(|e| e.into_inner()),
                key,
                change,
            );
        }
        result
    }

    /// Takes a status transition, if it is newer than the one held.
    pub fn status(&self, s: &StatusTransition) {
        self.with(
            &s.tenant_id,
            &s.device_id,
            &s.device_class,
            Change::All,
            |d| {
                if d.status_since.is_none_or(|since| s.ts >= since) {
                    d.status = Some(name(&s.status));
                    d.status_since = Some(s.ts);
                }
                d.last_seen = Some(d.last_seen.map_or(s.last_seen, |l| l.max(s.last_seen)));
                Some(())
            },
        );
    }

    /// Takes a device's last-seen time if it is later than the one held (a late or replayed
    /// record never moves it back). A device new to the store appears with no status: a
    /// reading time alone does not say whether the device is online (the record may be the one
    /// sent as it fell silent), and its first transition says so soon after. Returns the
    /// device's class and new last-seen time when the time moved.
    pub fn last_seen(&self, l: &LastSeen) -> Option<(Option<String>, i64)> {
        self.with(
            &l.tenant_id,
            &l.device_id,
            &l.device_class,
            Change::LastSeen,
            |d| {
                if d.last_seen.is_some_and(|held| held >= l.last_seen) {
                    return None;
                }
                d.last_seen = Some(l.last_seen);
                Some((d.device_class.clone(), l.last_seen))
            },
        )
    }

    /// Takes a window's health, if the window ended later than the one held (of two ending
    /// together, the one read first stays: one device's records are in one partition, so every
    /// bridge reads them in the same order).
    pub fn aggregate(&self, a: &WindowAggregate) {
        self.with(
            &a.tenant_id,
            &a.device_id,
            &a.device_class,
            Change::All,
            |d| {
                let newer = d.health_at.is_none_or(|at| a.window_end > at);
                if newer {
                    d.health = Some(a.health_score);
                    d.health_at = Some(a.window_end);
                    d.error_rate = Some(a.error_rate);
                }
                Some(())
            },
        );
    }

    /// Opens or closes an anomaly, if the change is newer than the last one seen of its kind.
    /// Tenant-level anomalies (no device) are not device state and are left out.
    pub fn anomaly(&self, a: &Anomaly) {
        if a.device_id.is_empty() {
            return;
        }
        let kind = name(&a.kind);
        self.with(
            &a.tenant_id,
            &a.device_id,
            &a.device_class,
            Change::All,
            |d| {
                if d.anomaly_changed.get(&kind).is_some_and(|ts| *ts > a.ts) {
                    return Some(());
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
                Some(())
            },
        );
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
        let all = store.select(|_| true, |_| true);
        assert_eq!(all[0].last_seen, Some(1_000));
        assert_eq!(all[0].status, None, "a reading time alone says no status");
        assert_eq!(all[0].device_class.as_deref(), Some("sensor"));
        // Late or replayed: nothing moves, nothing to write or send.
        store.take_changed();
        assert_eq!(store.last_seen(&seen("d", None, 999)), None);
        assert_eq!(store.last_seen(&seen("d", None, 1_000)), None);
        assert!(store.take_changed().is_empty());
        assert_eq!(store.select(|_| true, |_| true)[0].last_seen, Some(1_000));
        // A status transition's older last_seen does not move it back either.
        let mut s = transition(DeviceStatus::Online, 900);
        s.last_seen = 500;
        store.status(&s);
        let d = &store.select(|_| true, |_| true)[0];
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
        let both = store.get([(&key(), &Change::LastSeen)]);
        assert_eq!(both.len(), 1);
        assert_eq!(both[0].0.last_seen, Some(6_000));
        assert_eq!(
            store.last_seen_of([("t", "d"), ("t", "nobody")]),
            [Some(6_000), None]
        );
    }
}
