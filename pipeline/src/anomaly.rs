//! Fire-and-resolve bookkeeping shared by every anomaly rule: which kinds are firing on a device,
//! cooldowns after a resolve, and the per-device baselines of the statistical rules.

use schemas::{Anomaly, AnomalyKind, AnomalyState, Severity};
use serde::{Deserialize, Serialize};

use crate::config::BaselineConfig;
use crate::event_id;

/// How urgent each kind is; a resolve carries the severity of its fire.
pub fn severity(kind: AnomalyKind) -> Severity {
    match kind {
        AnomalyKind::ErrorRateHigh | AnomalyKind::ProlongedOffline | AnomalyKind::MassOffline => {
            Severity::Critical
        }
        AnomalyKind::RtMeanHigh
        | AnomalyKind::BatteryLow
        | AnomalyKind::Flapping
        | AnomalyKind::ClockSkew => Severity::Warning,
        AnomalyKind::RtP95Baseline | AnomalyKind::ErrorRateBaseline | AnomalyKind::Unknown => {
            Severity::Info
        }
    }
}

fn bit(kind: AnomalyKind) -> u16 {
    1 << (kind as u16)
}

/// Every kind, in declaration order.
const KINDS: [AnomalyKind; 10] = [
    AnomalyKind::RtMeanHigh,
    AnomalyKind::ErrorRateHigh,
    AnomalyKind::BatteryLow,
    AnomalyKind::RtP95Baseline,
    AnomalyKind::ErrorRateBaseline,
    AnomalyKind::Flapping,
    AnomalyKind::ProlongedOffline,
    AnomalyKind::MassOffline,
    AnomalyKind::Unknown,
    AnomalyKind::ClockSkew,
];

/// Which anomaly kinds fire on one device, and until when each may not fire again.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Switches {
    firing: u16,
    /// Boxed: most devices never resolve an anomaly, and an empty `Vec` costs 24 bytes in each
    /// of a million devices where `None` costs 8.
    #[allow(clippy::box_collection)]
    cooldowns: Option<Box<Vec<(AnomalyKind, i64)>>>,
}

impl Switches {
    /// Whether `kind` is firing.
    pub fn is_firing(&self, kind: AnomalyKind) -> bool {
        self.firing & bit(kind) != 0
    }

    /// The kinds firing, in declaration order.
    pub fn firing(&self) -> Vec<AnomalyKind> {
        KINDS.into_iter().filter(|k| self.is_firing(*k)).collect()
    }

    /// Moves `kind` at event time `now`: fires if it is resolved, `fire` holds and no cooldown
    /// runs; resolves if it is firing and `resolve` holds (a resolve starts a cooldown of
    /// `cooldown_ms`). Returns the new state when it changed.
    pub fn update(
        &mut self,
        kind: AnomalyKind,
        now: i64,
        fire: bool,
        resolve: bool,
        cooldown_ms: i64,
    ) -> Option<AnomalyState> {
        if self.is_firing(kind) {
            if !resolve {
                return None;
            }
            self.firing &= !bit(kind);
            let cooldowns = self.cooldowns.get_or_insert_with(Box::default);
            cooldowns.retain(|(k, until)| *k != kind && *until > now);
            if cooldown_ms > 0 {
                cooldowns.push((kind, now + cooldown_ms));
            }
            return Some(AnomalyState::Resolved);
        }
        if !fire {
            return None;
        }
        let cooling = self
            .cooldowns
            .iter()
            .flat_map(|c| c.iter())
            .any(|(k, until)| *k == kind && now < *until);
        if cooling {
            return None;
        }
        self.firing |= bit(kind);
        Some(AnomalyState::Firing)
    }
}

/// What a rule observed when an anomaly changed state.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The value judged.
    pub observed: f64,
    /// The limit it was judged against.
    pub threshold: f64,
    /// The device's own baseline, for statistical kinds.
    pub baseline: Option<f64>,
    /// Human-readable explanation.
    pub message: String,
}

/// The record of a state change.
pub fn record(
    tenant: &str,
    device: &str,
    class: Option<&str>,
    kind: AnomalyKind,
    state: AnomalyState,
    ts: i64,
    obs: Observation,
) -> Anomaly {
    Anomaly {
        tenant_id: tenant.to_string(),
        device_id: device.to_string(),
        device_class: class.map(str::to_string),
        kind,
        state,
        severity: severity(kind),
        observed: obs.observed,
        threshold: obs.threshold,
        baseline: obs.baseline,
        ts,
        message: obs.message,
        event_id: event_id::anomaly(tenant, device, kind, state, ts),
    }
}

/// An exponentially weighted mean and variance of one per-window statistic of one device.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Baseline {
    mean: f64,
    var: f64,
    windows: u32,
    streak: u32,
}

/// How one window compares with the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The window is above the baseline by more than `k` deviations for `m` windows running.
    pub fire: bool,
    /// The window is back within `k / 2` deviations.
    pub resolve: bool,
    /// The baseline mean before this window.
    pub mean: f64,
    /// `mean + k * deviation`.
    pub limit: f64,
}

impl Baseline {
    /// Judges window value `x`, then learns from it unless it is an outlier or the anomaly is
    /// firing, so an incident does not become the new normal. `floor` bounds the deviation
    /// from below: a perfectly steady device must not fire on noise.
    pub fn observe(&mut self, x: f64, cfg: &BaselineConfig, floor: f64, firing: bool) -> Verdict {
        let sd = self.var.sqrt().max(floor);
        let z = (x - self.mean) / sd;
        let warm = self.windows >= cfg.warmup_windows;
        let above = warm && z > cfg.k;
        self.streak = if above { self.streak + 1 } else { 0 };
        let verdict = Verdict {
            fire: above && self.streak >= cfg.m,
            resolve: warm && z <= cfg.k / 2.0,
            mean: self.mean,
            limit: self.mean + cfg.k * sd,
        };
        if !warm || !(above || firing) {
            self.learn(x, cfg.alpha);
        }
        verdict
    }

    fn learn(&mut self, x: f64, alpha: f64) {
        if self.windows == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            let diff = x - self.mean;
            self.mean += alpha * diff;
            self.var = (1.0 - alpha) * (self.var + alpha * diff * diff);
        }
        self.windows = self.windows.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_resolves_once_and_cools_down() {
        let mut s = Switches::default();
        let k = AnomalyKind::BatteryLow;
        assert_eq!(s.update(k, 0, true, false, 100), Some(AnomalyState::Firing));
        assert_eq!(s.update(k, 1, true, false, 100), None);
        assert_eq!(s.update(k, 2, false, false, 100), None);
        assert_eq!(
            s.update(k, 3, false, true, 100),
            Some(AnomalyState::Resolved)
        );
        assert_eq!(s.update(k, 4, false, true, 100), None);
        // Within the cooldown a new fire is swallowed; after it, it fires.
        assert_eq!(s.update(k, 50, true, false, 100), None);
        assert_eq!(
            s.update(k, 103, true, false, 100),
            Some(AnomalyState::Firing)
        );
        // Kinds are independent.
        assert!(!s.is_firing(AnomalyKind::Flapping));
    }

    #[test]
    fn baseline_fires_after_m_outliers_and_not_during_warmup() {
        let cfg = BaselineConfig {
            alpha: 0.2,
            k: 3.0,
            m: 2,
            warmup_windows: 3,
        };
        let mut b = Baseline::default();
        // An outlier during warm-up is learnt, not judged.
        for x in [100.0, 1000.0, 100.0] {
            assert!(!b.observe(x, &cfg, 1.0, false).fire);
        }
        let mut b = Baseline::default();
        for _ in 0..5 {
            assert!(!b.observe(100.0, &cfg, 5.0, false).fire);
        }
        assert!(
            !b.observe(500.0, &cfg, 5.0, false).fire,
            "one window is not enough"
        );
        let v = b.observe(500.0, &cfg, 5.0, false);
        assert!(v.fire);
        assert_eq!(v.mean, 100.0, "outliers are not learnt");
        assert!(!b.observe(500.0, &cfg, 5.0, true).resolve);
        assert!(b.observe(101.0, &cfg, 5.0, true).resolve);
    }
}
