//! One device's tumbling window: what its readings add up to, and the aggregate it yields when
//! event time passes its end.

use schemas::WindowAggregate;
use serde::{Deserialize, Serialize};

use crate::reading::Reading;

use crate::digest::RtDigest;
use crate::event_id;
use crate::health::{self, HealthInputs};

/// An open window of one device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowState {
    /// Inclusive start, ms.
    pub start: i64,
    /// Exclusive end, ms.
    pub end: i64,
    // Narrow fields and NaN for "no battery value": this struct exists once per window size in
    // every tracked device, so its bytes are the job's memory.
    count: u32,
    errors: u32,
    rt: RtDigest,
    rt_sum: f64,
    battery_last: f64,
    battery_min: f64,
    signal_sum: f64,
    signal_count: u32,
    /// At most the window's size, which configuration bounds to a day.
    offline_ms: i32,
    /// The clock offset readings were re-timed by, the largest in magnitude; 0 when none was.
    clock_offset_ms: i64,
}

/// The start of the window of size `size` holding `ts`.
pub fn window_start(ts: i64, size: i64) -> i64 {
    ts.div_euclid(size) * size
}

fn known(x: f64) -> Option<f64> {
    (!x.is_nan()).then_some(x)
}

impl WindowState {
    /// The window of size `size` holding `ts`.
    pub fn open(ts: i64, size: i64) -> WindowState {
        let start = window_start(ts, size);
        WindowState {
            start,
            end: start + size,
            count: 0,
            errors: 0,
            rt: RtDigest::default(),
            rt_sum: 0.0,
            battery_last: f64::NAN,
            battery_min: f64::NAN,
            signal_sum: 0.0,
            signal_count: 0,
            offline_ms: 0,
            clock_offset_ms: 0,
        }
    }

    /// Adds a reading; readings arrive in event-time order. `retimed`: the clock offset it was
    /// re-timed by.
    pub fn add(&mut self, r: &Reading, retimed: Option<i64>) {
        if let Some(offset) = retimed
            && offset.unsigned_abs() > self.clock_offset_ms.unsigned_abs()
        {
            self.clock_offset_ms = offset;
        }
        self.count += 1;
        if !r.ok {
            self.errors += 1;
        }
        if let Some(rt) = r.response_time_ms {
            self.rt.add(rt);
            self.rt_sum += rt;
        }
        if let Some(b) = r.battery_pct {
            self.battery_last = b;
            // `f64::min` ignores the NaN of "none yet".
            self.battery_min = self.battery_min.min(b);
        }
        if let Some(s) = r.signal_dbm {
            self.signal_sum += s;
            self.signal_count += 1;
        }
    }

    /// Records that the device was offline during `[from, to)`; only the overlap counts.
    pub fn add_offline(&mut self, from: i64, to: i64) {
        let overlap = to.min(self.end) - from.max(self.start);
        if overlap > 0 {
            self.offline_ms = self
                .offline_ms
                .saturating_add(i32::try_from(overlap).unwrap_or(i32::MAX));
        }
    }

    /// Whether no reading was added (only arrivals opened it).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Errors over readings.
    pub fn error_rate(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            f64::from(self.errors) / f64::from(self.count)
        }
    }

    /// A response-time quantile of the window.
    pub fn rt_quantile(&self, q: f64) -> Option<f64> {
        self.rt.quantile(q)
    }

    /// The aggregate of the window.
    pub fn finish(
        &self,
        tenant: &str,
        device: &str,
        class: Option<&str>,
        rt_slo_ms: f64,
    ) -> WindowAggregate {
        let rt_count = self.rt.count();
        let rt_mean = (rt_count > 0).then(|| self.rt_sum / rt_count as f64);
        let [rt_min, rt_p50, rt_p95, rt_p99, rt_max] =
            self.rt.quantiles([0.0, 0.5, 0.95, 0.99, 1.0]);
        let signal_mean =
            (self.signal_count > 0).then(|| self.signal_sum / f64::from(self.signal_count));
        let size = self.end - self.start;
        let error_rate = self.error_rate();
        let health_score = health::score(
            &HealthInputs {
                error_rate,
                rt_p95,
                battery_pct: known(self.battery_last),
                signal_dbm: signal_mean,
                online_share: 1.0 - f64::from(self.offline_ms) / size as f64,
            },
            rt_slo_ms,
        );
        WindowAggregate {
            tenant_id: tenant.to_string(),
            device_id: device.to_string(),
            device_class: class.map(str::to_string),
            window_start: self.start,
            window_end: self.end,
            count: i64::from(self.count),
            errors: i64::from(self.errors),
            error_rate,
            rt_min,
            rt_mean,
            rt_p50,
            rt_p95,
            rt_p99,
            rt_max,
            battery_last: known(self.battery_last),
            battery_min: known(self.battery_min),
            signal_mean,
            health_score,
            event_id: event_id::aggregate(tenant, device, size, self.start),
            clock_offset_ms: (self.clock_offset_ms != 0).then_some(self.clock_offset_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use schemas::Telemetry;

    use super::*;

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        assert_eq!(window_start(59_999, 60_000), 0);
        assert_eq!(window_start(60_000, 60_000), 60_000);
        let w = WindowState::open(61_000, 60_000);
        assert_eq!((w.start, w.end), (60_000, 120_000));
    }

    #[test]
    fn aggregates_what_it_saw() {
        let mut w = WindowState::open(0, 60_000);
        let r = |rt: f64, ok: bool, b: f64| Telemetry {
            ts: 1,
            response_time_ms: Some(rt),
            ok,
            battery_pct: Some(b),
            signal_dbm: Some(-60.0),
            ..Telemetry::example()
        };
        let r = |rt: f64, ok: bool, b: f64| {
            Reading::new(
                &schemas::TelemetryRef::of(&r(rt, ok, b)),
                0,
                0,
                1,
                0,
                crate::reading::ReadingKind::Stamped,
            )
        };
        w.add(&r(10.0, true, 90.0), None);
        w.add(&r(30.0, false, 80.0), Some(-240_000));
        w.add(
            &Reading {
                response_time_ms: None,
                battery_pct: None,
                signal_dbm: None,
                ..r(0.0, true, 0.0)
            },
            Some(3_000),
        );
        w.add_offline(30_000, 90_000);
        let a = w.finish("t", "d", Some("sensor"), 500.0);
        assert_eq!((a.count, a.errors), (3, 1));
        assert_eq!(a.rt_min, Some(10.0));
        assert_eq!(a.rt_max, Some(30.0));
        assert_eq!(a.rt_mean, Some(20.0));
        assert_eq!(a.battery_last, Some(80.0));
        assert_eq!(a.battery_min, Some(80.0));
        assert_eq!(a.signal_mean, Some(-60.0));
        assert!((a.error_rate - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(a.event_id, "agg/t/d/60000/0");
        assert_eq!(
            a.clock_offset_ms,
            Some(-240_000),
            "the largest re-timing in magnitude"
        );
        // Half the window offline costs half the presence share.
        assert!(a.health_score < 100.0);
    }
}
