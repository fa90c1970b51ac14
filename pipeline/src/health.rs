//! The health score of a device over one window, 0 (broken) to 100 (healthy). The formula and its
//! reasons are in docs/health.md; this is the one place it is computed.

/// What a window knows about a device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthInputs {
    /// Errors over readings, 0 to 1.
    pub error_rate: f64,
    /// 95th percentile response time, if any reading carried one.
    pub rt_p95: Option<f64>,
    /// Latest battery, percent.
    pub battery_pct: Option<f64>,
    /// Mean signal, dBm.
    pub signal_dbm: Option<f64>,
    /// Share of the window the device was online, 0 to 1.
    pub online_share: f64,
}

/// Weights of the components; they sum to 1. A component without data (no battery, no radio)
/// is left out and the others are rescaled, so a mains-powered device is not punished.
const W_ERRORS: f64 = 0.35;
const W_RT: f64 = 0.25;
const W_BATTERY: f64 = 0.15;
const W_SIGNAL: f64 = 0.10;
const W_PRESENCE: f64 = 0.15;

/// Error rate at which the error component reaches 0.
const ERROR_RATE_ZERO: f64 = 0.5;
/// p95 at this multiple of the SLO scores 0 for speed.
const RT_ZERO_AT_SLO_MULTIPLE: f64 = 4.0;
const BATTERY_FULL_PCT: f64 = 50.0;
const BATTERY_ZERO_PCT: f64 = 10.0;
const SIGNAL_FULL_DBM: f64 = -70.0;
const SIGNAL_ZERO_DBM: f64 = -110.0;

/// Linear from 1 at `full` to 0 at `zero`, clamped.
fn ramp(x: f64, full: f64, zero: f64) -> f64 {
    ((x - zero) / (full - zero)).clamp(0.0, 1.0)
}

/// The score, rounded to one decimal.
pub fn score(inputs: &HealthInputs, rt_slo_ms: f64) -> f64 {
    let mut parts = vec![
        (W_ERRORS, ramp(inputs.error_rate, 0.0, ERROR_RATE_ZERO)),
        (W_PRESENCE, inputs.online_share.clamp(0.0, 1.0)),
    ];
    if let Some(p95) = inputs.rt_p95 {
        parts.push((
            W_RT,
            ramp(p95, rt_slo_ms, RT_ZERO_AT_SLO_MULTIPLE * rt_slo_ms),
        ));
    }
    if let Some(b) = inputs.battery_pct {
        parts.push((W_BATTERY, ramp(b, BATTERY_FULL_PCT, BATTERY_ZERO_PCT)));
    }
    if let Some(s) = inputs.signal_dbm {
        parts.push((W_SIGNAL, ramp(s, SIGNAL_FULL_DBM, SIGNAL_ZERO_DBM)));
    }
    let weight: f64 = parts.iter().map(|(w, _)| w).sum();
    let raw = parts.iter().map(|(w, s)| w * s).sum::<f64>() / weight;
    (raw * 1000.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLO: f64 = 500.0;

    fn perfect() -> HealthInputs {
        HealthInputs {
            error_rate: 0.0,
            rt_p95: Some(100.0),
            battery_pct: Some(90.0),
            signal_dbm: Some(-60.0),
            online_share: 1.0,
        }
    }

    #[test]
    fn a_healthy_device_scores_100_and_a_dead_one_0() {
        assert_eq!(score(&perfect(), SLO), 100.0);
        let dead = HealthInputs {
            error_rate: 1.0,
            rt_p95: Some(10_000.0),
            battery_pct: Some(0.0),
            signal_dbm: Some(-120.0),
            online_share: 0.0,
        };
        assert_eq!(score(&dead, SLO), 0.0);
    }

    #[test]
    fn edges_of_each_component() {
        let at = |f: &dyn Fn(&mut HealthInputs)| {
            let mut i = perfect();
            f(&mut i);
            score(&i, SLO)
        };
        // Exactly at the SLO is still full marks; four times it is none of the speed share.
        assert_eq!(at(&|i| i.rt_p95 = Some(SLO)), 100.0);
        assert_eq!(at(&|i| i.rt_p95 = Some(4.0 * SLO)), 75.0);
        // Half the readings failing loses the whole error share.
        assert_eq!(at(&|i| i.error_rate = 0.5), 65.0);
        assert_eq!(at(&|i| i.error_rate = 0.25), 82.5);
        assert_eq!(at(&|i| i.battery_pct = Some(10.0)), 85.0);
        assert_eq!(at(&|i| i.battery_pct = Some(50.0)), 100.0);
        assert_eq!(at(&|i| i.signal_dbm = Some(-110.0)), 90.0);
        assert_eq!(at(&|i| i.online_share = 0.0), 85.0);
    }

    #[test]
    fn missing_components_are_left_out_not_punished() {
        let mains = HealthInputs {
            battery_pct: None,
            signal_dbm: None,
            rt_p95: None,
            ..perfect()
        };
        assert_eq!(score(&mains, SLO), 100.0);
        let failing = HealthInputs {
            error_rate: 0.5,
            ..mains
        };
        // Only errors (0.35) and presence (0.15) remain: 0.15 / 0.5.
        assert_eq!(score(&failing, SLO), 30.0);
    }
}
