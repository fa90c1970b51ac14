//! The latest known state of every device: status, last seen, health, open anomalies. Each field
//! is replaced only by a newer record, so the order records arrive in (several partitions, a
//! replay) does not matter, and several bridges reading the same topics agree. Every bridge keeps
//! this in-process store; with Redis configured it also notes which devices changed, and how, for
//! the [`crate::cache`] to write through.
//!
//! Devices are filed by tenant, each tenant's sorted by id: a page of one tenant's devices (a
//! snapshot, `/api/devices`) is a range read that copies only that page. A device leaves the store
//! when the pipeline retires it (a transition with reason `retired` or `decommissioned`) or when it has been silent
//! for `bridge.device_retention_ms` ([`Store::sweep`]).

mod device;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, RwLock};

use schemas::{
    Anomaly, AnomalyState, LastSeen, StatusTransition, TransitionReason, WindowAggregate,
    wire_name as name,
};

use device::note;
pub use device::{Change, Changed, DeviceKey, DeviceState, OpenAnomaly};

/// One tenant's devices, by id.
type Devices = BTreeMap<String, DeviceState>;

/// Every device's state, by tenant and device.
#[derive(Debug, Default)]
pub struct Store {
    tenants: RwLock<BTreeMap<String, Devices>>,
    /// Retired devices, with the time of the transition that retired them: a record from before
    /// it, read late from another topic, does not bring the device back. Swept with the devices.
    retired: Mutex<HashMap<DeviceKey, i64>>,
    /// The devices changed since [`Store::take_changed`] last ran, when something takes them.
    changed: Option<Mutex<Changed>>,
}

impl Store {
    /// A store that notes which devices change, for [`Store::take_changed`].
    pub fn noting_changes() -> Store {
        Store {
            changed: Some(Mutex::default()),
            ..Store::default()
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Devices>> {
        self.tenants.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Devices>> {
        self.tenants.write().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, key: DeviceKey, change: Change) {
        if let Some(changed) = &self.changed {
            note(
                &mut changed.lock().unwrap_or_else(|e| e.into_inner()),
                key,
                change,
            );
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
    /// A change noted since those were taken came after them, and is kept after them.
    pub fn mark_changed(&self, keys: Option<Changed>) {
        let Some(changed) = &self.changed else {
            return;
        };
        let keys = keys.unwrap_or_else(|| {
            let tenants = self.read();
            tenants
                .iter()
                .flat_map(|(t, devices)| {
                    devices
                        .keys()
                        .map(|d| ((t.clone(), d.clone()), Change::All))
                })
                .collect()
        });
        let mut changed = changed.lock().unwrap_or_else(|e| e.into_inner());
        for (key, earlier) in keys {
            changed
                .entry(key)
                .and_modify(|later| *later = earlier.then(*later))
                .or_insert(earlier);
        }
    }

    /// The state of these devices (those the store has), each with how it changed.
    pub fn get<'a>(
        &self,
        keys: impl IntoIterator<Item = (&'a DeviceKey, &'a Change)>,
    ) -> Vec<(DeviceState, Change)> {
        let tenants = self.read();
        keys.into_iter()
            .filter_map(|((t, d), c)| Some((tenants.get(t)?.get(d)?.clone(), *c)))
            .collect()
    }

    /// One device.
    pub fn device(&self, tenant: &str, device: &str) -> Option<DeviceState> {
        self.read().get(tenant)?.get(device).cloned()
    }

    /// The last-seen times the store holds for these devices, `None` where it has none.
    pub fn last_seen_of<'a>(
        &self,
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<Option<i64>> {
        let tenants = self.read();
        keys.into_iter()
            .map(|(t, d)| tenants.get(t)?.get(d)?.last_seen)
            .collect()
    }

    /// How many devices the store holds.
    pub fn len(&self) -> usize {
        self.read().values().map(BTreeMap::len).sum()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies `f` to the device (created if new) and notes it changed as `change` if `f` says
    /// it changed anything (`Some`), or wholly if it is new or its class changed. A record at
    /// `at` (ms) or before the device was retired is dropped.
    fn with<R>(
        &self,
        tenant: &str,
        device: &str,
        at: i64,
        class: &Option<String>,
        change: Change,
        f: impl FnOnce(&mut DeviceState) -> Option<R>,
    ) -> Option<R> {
        let mut tenants = self.write();
        let mut whole = false;
        let devices = match tenants.get_mut(tenant) {
            Some(devices) => devices,
            None => tenants.entry(tenant.to_string()).or_default(),
        };
        let state = match devices.get_mut(device) {
            Some(state) => state,
            None => {
                let key = (tenant.to_string(), device.to_string());
                let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
                if retired.get(&key).is_some_and(|r| at <= *r) {
                    if devices.is_empty() {
                        tenants.remove(tenant);
                    }
                    return None;
                }
                retired.remove(&key);
                whole = true;
                devices
                    .entry(device.to_string())
                    .or_insert_with(|| DeviceState::new(tenant, device))
            }
        };
        if class.is_some() && state.device_class != *class {
            state.device_class.clone_from(class);
            whole = true;
        }
        let result = f(state);
        // Noted after the change and before the lock is let go: a writer that takes the note
        // reads the changed state (it takes the devices' lock after the note).
        if whole || result.is_some() {
            let change = if whole { Change::All } else { change };
            self.note((tenant.to_string(), device.to_string()), change);
        }
        result
    }

    /// Takes a status transition, if it is newer than the one held; one with reason `retired`
    /// or `decommissioned` removes the device.
    pub fn status(&self, s: &StatusTransition) {
        if matches!(
            s.reason,
            TransitionReason::Retired | TransitionReason::Decommissioned
        ) {
            self.retire(&s.tenant_id, &s.device_id, s.ts);
            return;
        }
        self.with(
            &s.tenant_id,
            &s.device_id,
            s.ts,
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

    /// Removes a device retired at `at` (ms), unless it came back after that.
    fn retire(&self, tenant: &str, device: &str, at: i64) {
        let key = (tenant.to_string(), device.to_string());
        let mut tenants = self.write();
        let newer = tenants
            .get(tenant)
            .and_then(|devices| devices.get(device))
            .is_some_and(|d| d.latest().is_some_and(|latest| latest > at));
        if newer {
            return;
        }
        if let Some(devices) = tenants.get_mut(tenant) {
            devices.remove(device);
            if devices.is_empty() {
                tenants.remove(tenant);
            }
        }
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        let held = retired.entry(key.clone()).or_insert(at);
        *held = (*held).max(at);
        drop(retired);
        self.note(key, Change::Gone);
        drop(tenants);
    }

    /// Removes the devices whose latest record is older than `oldest` (ms), and forgets
    /// retirements older than it; returns how many devices left.
    pub fn sweep(&self, oldest: i64) -> usize {
        let mut gone = Vec::new();
        let mut tenants = self.write();
        for (tenant, devices) in tenants.iter_mut() {
            devices.retain(|id, d| {
                let keep = d.latest().is_some_and(|l| l >= oldest);
                if !keep {
                    gone.push((tenant.clone(), id.clone()));
                }
                keep
            });
        }
        tenants.retain(|_, devices| !devices.is_empty());
        let n = gone.len();
        // Noted before the lock is let go: a record that brings a device back after this is
        // noted after it, and written.
        for key in gone {
            self.note(key, Change::Gone);
        }
        drop(tenants);
        self.retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, at| *at >= oldest);
        n
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
            l.last_seen,
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
        // A window is from before a retirement if it began before: a device decommissioned
        // mid-window has that window close after it left, and must not come back for it.
        self.with(
            &a.tenant_id,
            &a.device_id,
            a.window_start,
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
            a.ts,
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

    /// Every device of `tenant` (of every tenant when `None`) after `after` that `wanted`
    /// selects, in order, read [`Store::page`] by page of `page`: the lock is let go between
    /// pages.
    pub fn pages(
        &self,
        tenant: Option<&str>,
        mut after: Option<DeviceKey>,
        page: usize,
        wanted: impl Fn(&DeviceState) -> bool,
    ) -> Vec<DeviceState> {
        let mut all = Vec::new();
        loop {
            let (devices, next) = self.page(tenant, after.as_ref(), page, &wanted);
            all.extend(devices);
            match next {
                Some(next) => after = Some(next),
                None => return all,
            }
        }
    }

    /// Up to `limit` devices of `tenant` (of every tenant when `None`) after `after`, in tenant
    /// and device order, that `wanted` selects; with the key to go on from when the read stopped
    /// before the end. Only this page is copied, the lock is held only while it is read, and the
    /// read looks at no more than ten times `limit` and a thousand devices (a selective filter
    /// may then fill a page less, never hold the lock long).
    pub fn page(
        &self,
        tenant: Option<&str>,
        after: Option<&DeviceKey>,
        limit: usize,
        wanted: impl Fn(&DeviceState) -> bool,
    ) -> (Vec<DeviceState>, Option<DeviceKey>) {
        let budget = limit.saturating_mul(10).saturating_add(1_000);
        let tenants = self.read();
        let from_tenant = match (tenant, after) {
            (Some(t), _) => Bound::Included(t),
            (None, Some((t, _))) => Bound::Included(t.as_str()),
            (None, None) => Bound::Unbounded,
        };
        let to_tenant = tenant.map_or(Bound::Unbounded, Bound::Included);
        let mut out = Vec::new();
        let mut looked = 0;
        let mut last: Option<&DeviceState> = None;
        for (t, devices) in tenants.range::<str, _>((from_tenant, to_tenant)) {
            let from = match after {
                Some((at, d)) if at == t => Bound::Excluded(d.as_str()),
                Some((at, _)) if at.as_str() > t.as_str() => continue,
                _ => Bound::Unbounded,
            };
            for d in devices
                .range::<str, _>((from, Bound::Unbounded))
                .map(|(_, d)| d)
            {
                if out.len() == limit || looked == budget {
                    let next = last.map(|l| (l.tenant_id.clone(), l.device_id.clone()));
                    return (out, next);
                }
                looked += 1;
                last = Some(d);
                if wanted(d) {
                    out.push(d.clone());
                }
            }
        }
        (out, None)
    }
}

#[cfg(test)]
mod tests;
