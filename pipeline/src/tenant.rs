//! Tenant-level presence: one `mass_offline` anomaly when a large share of a tenant's online
//! devices goes offline together, instead of a flood nobody reads.
//!
//! "Together" is judged in event time, not in frontier steps (which depend on timing): offline
//! transitions within `mass_offline_window_ms` of each other, of devices still offline, against
//! the devices online just before. It fires when more than `mass_offline_share` of them (and at
//! least `mass_offline_min_devices`) went offline, and resolves once three quarters of the share
//! that went away (with the default half: 75 % of the tenant) is back online. Transitions are
//! applied a millisecond at a time, so the verdict never depends on their order within one.

use std::collections::{HashMap, VecDeque};

use schemas::{AnomalyKind, AnomalyState, DeviceStatus, StatusTransition, TransitionReason};
use serde::{Deserialize, Serialize};

use crate::anomaly::{self, Observation};
use crate::config::PipelineConfig;
use crate::output::Output;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Tenant {
    online: i64,
    /// Offline transitions within the window: (time, device).
    recent: VecDeque<(i64, String)>,
    /// Devices online before the outage, while `mass_offline` fires.
    firing_baseline: Option<i64>,
}

/// Presence counts per tenant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tenants {
    tenants: HashMap<String, Tenant>,
}

impl Tenants {
    /// Keeps only the tenants `keep` accepts (a restored worker's share).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.tenants.retain(|name, _| keep(name));
    }

    /// Takes over another worker's tenants (restoring a checkpoint).
    pub fn absorb(&mut self, other: Tenants) {
        self.tenants.extend(other.tenants);
    }

    /// Applies all transitions of one millisecond (all of one tenant or not), then judges the
    /// tenants they touched.
    pub fn apply(
        &mut self,
        ts: i64,
        batch: &[StatusTransition],
        cfg: &PipelineConfig,
        out: &mut Vec<Output>,
    ) {
        let mut touched: Vec<&str> = Vec::new();
        for t in batch {
            let tenant = self.tenants.entry(t.tenant_id.clone()).or_default();
            match t.status {
                // A device that leaves (retired, usually long offline; or decommissioned) only
                // leaves the count and the outage it may still be counted in: taking a device
                // out of service is no outage.
                _ if matches!(
                    t.reason,
                    TransitionReason::Retired | TransitionReason::Decommissioned
                ) =>
                {
                    if t.previous == Some(DeviceStatus::Online) {
                        tenant.online -= 1;
                    }
                    tenant.recent.retain(|(_, d)| *d != t.device_id);
                }
                DeviceStatus::Online => {
                    tenant.online += 1;
                    tenant.recent.retain(|(_, d)| *d != t.device_id);
                }
                // A device that was never online was not part of what the tenant lost.
                DeviceStatus::Offline if t.previous.is_none() => {}
                DeviceStatus::Offline => {
                    tenant.online -= 1;
                    tenant.recent.push_back((ts, t.device_id.clone()));
                }
            }
            if !touched.contains(&t.tenant_id.as_str()) {
                touched.push(&t.tenant_id);
            }
        }
        touched.sort_unstable();
        for name in touched {
            if let Some(tenant) = self.tenants.get_mut(name) {
                judge(name, tenant, ts, cfg, out);
            }
        }
    }
}

fn judge(name: &str, t: &mut Tenant, ts: i64, cfg: &PipelineConfig, out: &mut Vec<Output>) {
    while t
        .recent
        .front()
        .is_some_and(|(at, _)| *at <= ts - cfg.mass_offline_window_ms)
    {
        t.recent.pop_front();
    }
    let gone = t.recent.len() as i64;
    let before = t.online + gone;
    let share = cfg.mass_offline_share;
    let (state, observed) = match t.firing_baseline {
        None => {
            let fire = gone >= i64::from(cfg.mass_offline_min_devices)
                && before > 0
                && gone as f64 > share * before as f64;
            if !fire {
                return;
            }
            t.firing_baseline = Some(before);
            (AnomalyState::Firing, gone as f64 / before as f64)
        }
        Some(baseline) => {
            let back = t.online as f64 >= (1.0 - share / 2.0) * baseline as f64;
            if !back {
                return;
            }
            t.firing_baseline = None;
            (
                AnomalyState::Resolved,
                t.online as f64 / baseline.max(1) as f64,
            )
        }
    };
    let message = match state {
        AnomalyState::Firing => format!(
            "{gone} of {before} online devices went offline within {} s",
            cfg.mass_offline_window_ms / 1000
        ),
        AnomalyState::Resolved => format!("{} devices back online", t.online),
    };
    out.push(Output::Anomaly(anomaly::record(
        name,
        "",
        None,
        AnomalyKind::MassOffline,
        state,
        ts,
        Observation {
            observed,
            threshold: share,
            baseline: None,
            message,
        },
    )));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(device: usize, status: DeviceStatus, ts: i64) -> StatusTransition {
        StatusTransition {
            tenant_id: "t".into(),
            device_id: format!("d{device}"),
            device_class: None,
            status,
            previous: (status == DeviceStatus::Offline).then_some(DeviceStatus::Online),
            ts,
            last_seen: ts,
            reason: match status {
                DeviceStatus::Online => TransitionReason::FirstSeen,
                DeviceStatus::Offline => TransitionReason::Timeout,
            },
            time_in_previous_ms: None,
            event_id: String::new(),
        }
    }

    /// A tenant of `devices` devices, all online at 0.
    fn online(devices: usize, cfg: &PipelineConfig, out: &mut Vec<Output>) -> Tenants {
        let mut tenants = Tenants::default();
        let online: Vec<_> = (0..devices)
            .map(|d| tr(d, DeviceStatus::Online, 0))
            .collect();
        tenants.apply(0, &online, cfg, out);
        tenants
    }

    fn kinds(out: &[Output]) -> Vec<(AnomalyState, i64)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Anomaly(a) => Some((a.state, a.ts)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_mass_outage_fires_once_and_resolves_once() {
        let cfg = PipelineConfig::default();
        let mut out = Vec::new();
        let mut tenants = online(40, &cfg, &mut out);
        // 30 of 40 go offline over 30 s, one per second.
        for d in 0..30 {
            let ts = 1_000 * (d as i64 + 1);
            tenants.apply(ts, &[tr(d, DeviceStatus::Offline, ts)], &cfg, &mut out);
        }
        assert_eq!(kinds(&out), vec![(AnomalyState::Firing, 21_000)]);
        // They come back; it resolves once 75 % (30 of 40) are online again.
        for d in 0..30 {
            let ts = 100_000 + d as i64;
            tenants.apply(ts, &[tr(d, DeviceStatus::Online, ts)], &cfg, &mut out);
        }
        assert_eq!(
            kinds(&out),
            vec![
                (AnomalyState::Firing, 21_000),
                (AnomalyState::Resolved, 100_019)
            ]
        );
    }

    #[test]
    fn devices_never_seen_or_taken_out_of_service_are_no_outage() {
        let cfg = PipelineConfig::default();
        let mut out = Vec::new();
        let mut tenants = online(40, &cfg, &mut out);
        // 30 registered devices that never reported, and 30 of the 40 decommissioned.
        let never: Vec<_> = (100..130)
            .map(|d| StatusTransition {
                previous: None,
                reason: TransitionReason::NeverSeen,
                ..tr(d, DeviceStatus::Offline, 1_000)
            })
            .collect();
        tenants.apply(1_000, &never, &cfg, &mut out);
        let gone: Vec<_> = (0..30)
            .map(|d| StatusTransition {
                reason: TransitionReason::Decommissioned,
                ..tr(d, DeviceStatus::Offline, 2_000)
            })
            .collect();
        tenants.apply(2_000, &gone, &cfg, &mut out);
        assert_eq!(kinds(&out), vec![]);
        // The 10 left going offline are most of the tenant now.
        let offline: Vec<_> = (30..40)
            .map(|d| tr(d, DeviceStatus::Offline, 3_000))
            .collect();
        let cfg = PipelineConfig {
            mass_offline_min_devices: 5,
            ..cfg
        };
        tenants.apply(3_000, &offline, &cfg, &mut out);
        assert_eq!(kinds(&out), vec![(AnomalyState::Firing, 3_000)]);
    }

    #[test]
    fn a_slow_trickle_or_a_small_tenant_does_not_fire() {
        let cfg = PipelineConfig::default();
        let mut out = Vec::new();
        let mut tenants = online(40, &cfg, &mut out);
        for d in 0..30 {
            let ts = 61_000 * (d as i64 + 1);
            tenants.apply(ts, &[tr(d, DeviceStatus::Offline, ts)], &cfg, &mut out);
        }
        let mut small = online(10, &cfg, &mut out);
        let offline: Vec<_> = (0..10).map(|d| tr(d, DeviceStatus::Offline, 5)).collect();
        small.apply(5, &offline, &cfg, &mut out);
        assert_eq!(kinds(&out), vec![]);
    }
}
