//! One device as the bridge shows it (status, last seen, health, open anomalies), and what changed
//! of it since Redis was last written.

use std::collections::{BTreeMap, HashMap};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Only the last-seen time moved.
    LastSeen,
    /// Anything else, or the device is new: all of it is to be written.
    All,
    /// The device left the store (retired, or silent too long): it is to be deleted.
    Gone,
}

impl Change {
    /// One change standing for `self` followed by `next`.
    pub(super) fn then(self, next: Change) -> Change {
        match (self, next) {
            (_, Change::Gone) => Change::Gone,
            // Gone and back: what Redis held of it is overwritten as a whole.
            (Change::Gone, _) | (Change::All, _) | (_, Change::All) => Change::All,
            (Change::LastSeen, Change::LastSeen) => Change::LastSeen,
        }
    }
}

/// Devices changed, and how.
pub type Changed = HashMap<DeviceKey, Change>;

/// Notes `change` of `key` after a change already noted.
pub(super) fn note(changed: &mut Changed, key: DeviceKey, change: Change) {
    changed
        .entry(key)
        .and_modify(|held| *held = held.then(change))
        .or_insert(change);
}

impl DeviceState {
    pub(super) fn new(tenant: &str, device: &str) -> DeviceState {
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
    }

    /// The latest time any record of the device carried, ms.
    pub fn latest(&self) -> Option<i64> {
        [self.last_seen, self.status_since, self.health_at]
            .into_iter()
            .chain(self.anomaly_changed.values().map(|t| Some(*t)))
            .flatten()
            .max()
    }
}
