//! A device's anomaly rules: its clock, its response time against its baseline, each closed
//! window's error rate and battery, flapping, and the timers that resolve what went quiet;
//! each verdict goes through [`Device::change`], the one place an anomaly fires or resolves.

use super::*;

impl Device {
    /// `clock_skew` fires while the device has a known clock offset and resolves when its clock
    /// agrees with the truth again.
    pub(super) fn clock_rule(&mut self, offset: i64, ts: i64, ctx: &mut Ctx<'_>) {
        let tolerance = ctx.cfg.clock_tolerance_ms;
        let obs = || Observation {
            observed: offset as f64,
            threshold: tolerance as f64,
            baseline: None,
            message: if offset == 0 {
                "the device's clock agrees with its partition's clock truth again".to_string()
            } else {
                format!(
                    "the device's clock is {} s {} its partition's clock truth, tolerance {} s",
                    offset.unsigned_abs() / 1000,
                    if offset > 0 { "ahead of" } else { "behind" },
                    tolerance / 1000
                )
            },
        };
        self.change(
            AnomalyKind::ClockSkew,
            offset != 0,
            offset == 0,
            ts,
            obs,
            ctx,
        );
    }

    pub(super) fn rt_rule(&mut self, rt: f64, ts: i64, ctx: &mut Ctx<'_>) {
        let t = Rc::clone(&self.thresholds);
        if self.recent_rt.len() >= t.rt_mean_readings as usize {
            self.recent_rt.pop_front();
        }
        if self.recent_rt.capacity() == 0 {
            self.recent_rt.reserve_exact(t.rt_mean_readings as usize);
        }
        self.recent_rt.push_back(rt as f32);
        let n = self.recent_rt.len();
        let mean = self.recent_rt.iter().map(|v| f64::from(*v)).sum::<f64>() / n as f64;
        let fire = n >= t.rt_mean_min_readings as usize && mean > t.rt_mean_ms;
        let resolve = mean < t.rt_mean_ms * (1.0 - t.resolve_margin);
        let obs = || Observation {
            observed: mean,
            threshold: t.rt_mean_ms,
            baseline: None,
            message: format!(
                "mean response time of the last {n} readings is {mean:.0} ms, limit {:.0} ms",
                t.rt_mean_ms
            ),
        };
        self.change(AnomalyKind::RtMeanHigh, fire, resolve, ts, obs, ctx);
    }

    pub(super) fn window_rules(&mut self, w: &WindowState, ctx: &mut Ctx<'_>) {
        let t = Rc::clone(&self.thresholds);
        let ts = w.end;
        let rate = w.error_rate();
        let obs = || Observation {
            observed: rate,
            threshold: t.error_rate,
            baseline: None,
            message: format!(
                "{:.1} % of readings failed in the window, limit {:.1} %",
                rate * 100.0,
                t.error_rate * 100.0
            ),
        };
        let resolve = rate < t.error_rate * (1.0 - t.resolve_margin);
        self.change(
            AnomalyKind::ErrorRateHigh,
            rate > t.error_rate,
            resolve,
            ts,
            obs,
            ctx,
        );

        if let Some(p95) = w.rt_quantile(0.95) {
            let firing = self.switches.is_firing(AnomalyKind::RtP95Baseline);
            let floor = (0.05 * p95).max(1.0);
            let v = self
                .p95_baseline
                .observe(p95, &ctx.cfg.baseline, floor, firing);
            let obs = || Observation {
                observed: p95,
                threshold: v.limit,
                baseline: Some(v.mean),
                message: format!(
                    "window p95 {p95:.0} ms against a baseline of {:.0} ms",
                    v.mean
                ),
            };
            self.change(AnomalyKind::RtP95Baseline, v.fire, v.resolve, ts, obs, ctx);
        }
        let firing = self.switches.is_firing(AnomalyKind::ErrorRateBaseline);
        let v = self
            .error_baseline
            .observe(rate, &ctx.cfg.baseline, 0.02, firing);
        let obs = || Observation {
            observed: rate,
            threshold: v.limit,
            baseline: Some(v.mean),
            message: format!(
                "window error rate {:.1} % against a baseline of {:.1} %",
                rate * 100.0,
                v.mean * 100.0
            ),
        };
        self.change(
            AnomalyKind::ErrorRateBaseline,
            v.fire,
            v.resolve,
            ts,
            obs,
            ctx,
        );
    }

    pub(super) fn rule_timer(&mut self, ts: i64, ctx: &mut Ctx<'_>) {
        // No reading followed the latest within an interval: its time goes out now. A device
        // about to retire has had it told at the latest when it went offline.
        if ts >= self.last_seen.saturating_add(ctx.cfg.lastseen_interval_ms) {
            self.tell_last_seen(ctx);
        }
        if self.retires() && ts >= self.last_seen.saturating_add(ctx.cfg.device_retention_ms) {
            self.retire(ts, ctx);
            return;
        }
        if let Some(Presence::Offline {
            prolonged_fired: false,
            seen,
        }) = self.presence
            && ts >= self.since + self.thresholds.prolonged_offline_ms
        {
            self.presence = Some(Presence::Offline {
                prolonged_fired: true,
                seen,
            });
            let (last_seen, since) = (self.last_seen, self.since);
            let limit = self.thresholds.prolonged_offline_ms;
            let obs = || Observation {
                observed: (ts - last_seen) as f64,
                threshold: limit as f64,
                baseline: None,
                message: format!("offline for {} s", (ts - since) / 1000),
            };
            self.change(AnomalyKind::ProlongedOffline, true, false, ts, obs, ctx);
        }
        if self.switches.is_firing(AnomalyKind::Flapping) {
            self.flapping(ts, ctx);
        }
    }

    /// Counts transitions within the flapping period ending at `now`.
    pub(super) fn flapping(&mut self, now: i64, ctx: &mut Ctx<'_>) {
        let t = Rc::clone(&self.thresholds);
        let n = match self.flaps.as_mut() {
            Some(flaps) => {
                while flaps
                    .front()
                    .is_some_and(|f| *f <= now - t.flapping_period_ms)
                {
                    flaps.pop_front();
                }
                flaps.len() as u32
            }
            None => 0,
        };
        let obs = || Observation {
            observed: f64::from(n),
            threshold: f64::from(t.flapping_transitions),
            baseline: None,
            message: format!(
                "{n} status changes in the last {} s, limit {}",
                t.flapping_period_ms / 1000,
                t.flapping_transitions
            ),
        };
        let fire = n >= t.flapping_transitions;
        let resolve = n <= t.flapping_transitions / 2;
        self.change(AnomalyKind::Flapping, fire, resolve, now, obs, ctx);
    }

    /// Applies a rule's verdict; `obs` is called only when the anomaly changes state (its
    /// message, formatted with `{:.0}` for every reading, was 7 % of the job's time).
    pub(super) fn change(
        &mut self,
        kind: AnomalyKind,
        fire: bool,
        resolve: bool,
        ts: i64,
        obs: impl FnOnce() -> Observation,
        ctx: &mut Ctx<'_>,
    ) {
        // A prolonged offline ends with the device's return; a cooldown would only hide the
        // next outage.
        let cooldown = if kind == AnomalyKind::ProlongedOffline {
            0
        } else {
            self.thresholds.cooldown_ms
        };
        if let Some(state) = self.switches.update(kind, ts, fire, resolve, cooldown) {
            ctx.out.push(Output::Anomaly(anomaly::record(
                &self.tenant,
                &self.id,
                self.class.as_deref(),
                kind,
                state,
                ts,
                obs(),
            )));
        }
    }
}
