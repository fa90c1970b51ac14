//! The reference model: the pipeline's outputs computed the plain way, in one thread, from the
//! whole input at once. The pipeline's property tests and the end-to-end test against Kafka both
//! compare the dataflow with it.
//!
//! The model shares only leaf primitives with the pipeline (the health formula, the quantile
//! digest, the fire/resolve switch, the baseline estimator and the tenant counter, each unit-
//! tested on its own); lateness, ordering, windowing, presence, timers and the end of input are
//! written here again, as batch computations over sorted lists.

use std::collections::BTreeMap;

use pipeline::anomaly::{self, Baseline, Observation, Switches};
use pipeline::config::{PipelineConfig, Thresholds};
use pipeline::digest::RtDigest;
use pipeline::event_id;
use pipeline::health::{self, HealthInputs};
use pipeline::output::Output;
use pipeline::source::memory::MemoryRecord;
use pipeline::tenant::Tenants;
use schemas::{
    AnomalyKind, Codec, DeadLetter, DeadLetterReason, DeviceStatus, InputFormat, StatusTransition,
    Telemetry, TransitionReason, WindowAggregate,
};

/// An accepted reading with its position.
#[derive(Debug, Clone)]
struct Accepted {
    t: Telemetry,
    partition: i32,
    offset: i64,
}

/// Runs the model over in-memory partitions.
pub fn model(topic: &str, partitions: &[Vec<MemoryRecord>], cfg: &PipelineConfig) -> Vec<Output> {
    let codec = Codec::builtin();
    let mut out = Vec::new();
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut last_watermarks = Vec::new();
    for (p, records) in partitions.iter().enumerate() {
        let p = p as i32;
        let mut max_ts: Option<i64> = None;
        for (offset, rec) in records.iter().enumerate() {
            let offset = offset as i64;
            let reason = match codec.decode_telemetry(&rec.value, InputFormat::Auto) {
                Err(e) => Some(e.reason()),
                // Without a record timestamp (a file), the newest accepted reading is the
                // reference.
                Ok(t)
                    if rec
                        .record_ts
                        .or(max_ts)
                        .is_some_and(|r| t.ts > r + cfg.max_future_skew_ms) =>
                {
                    Some(DeadLetterReason::Future)
                }
                Ok(t) if max_ts.is_some_and(|m| t.ts < m - cfg.out_of_orderness_ms) => {
                    Some(DeadLetterReason::Late)
                }
                Ok(t) => {
                    max_ts = Some(max_ts.map_or(t.ts, |m| m.max(t.ts)));
                    accepted.push(Accepted {
                        t,
                        partition: p,
                        offset,
                    });
                    None
                }
            };
            if let Some(reason) = reason {
                out.push(Output::DeadLetter(DeadLetter {
                    source_topic: topic.into(),
                    source_partition: p,
                    source_offset: offset,
                    key: None,
                    raw: rec.value.clone(),
                    reason,
                    detail: String::new(),
                    record_ts: rec.record_ts,
                    event_id: event_id::dead_letter(topic, p, offset),
                }));
            }
        }
        if let Some(m) = max_ts {
            last_watermarks.push(m - cfg.out_of_orderness_ms);
        }
    }
    let last_wm = last_watermarks.into_iter().min().unwrap_or(i64::MIN);

    let mut by_device: BTreeMap<(String, String), Vec<Accepted>> = BTreeMap::new();
    for a in accepted {
        by_device
            .entry((a.t.tenant_id.clone(), a.t.device_id.clone()))
            .or_default()
            .push(a);
    }
    let mut transitions = Vec::new();
    for ((tenant, device), mut readings) in by_device {
        readings.sort_by_key(|a| (a.t.ts, a.partition, a.offset));
        let d = DeviceModel::new(&tenant, &device, &readings, cfg, last_wm);
        d.emit(&mut out, &mut transitions);
    }

    transitions.sort_by_key(|s: &StatusTransition| s.ts);
    let mut tenants = Tenants::default();
    let mut i = 0;
    while i < transitions.len() {
        let ts = transitions[i].ts;
        let j = i + transitions[i..].iter().take_while(|s| s.ts == ts).count();
        tenants.apply(ts, &transitions[i..j], cfg, &mut out);
        i = j;
    }
    out
}

/// One device's readings, judged as a whole.
struct DeviceModel<'a> {
    tenant: &'a str,
    device: &'a str,
    class: Option<String>,
    readings: &'a [Accepted],
    cfg: &'a PipelineConfig,
    th: Thresholds,
    last_wm: i64,
}

/// Things that happen to a device, in the order they are processed at one millisecond.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Happening {
    /// The rule window ending at this time closes (and was complete).
    RuleWindow(usize),
    /// Reading number `i`.
    Reading(usize),
    /// Offline deadline.
    Offline,
    /// The device has been offline for the prolonged limit.
    Prolonged,
    /// A transition leaves the flapping period.
    FlapExpiry,
}

impl<'a> DeviceModel<'a> {
    fn new(
        tenant: &'a str,
        device: &'a str,
        readings: &'a [Accepted],
        cfg: &'a PipelineConfig,
        last_wm: i64,
    ) -> Self {
        // The model takes a device's class as fixed (every fleet in the tests keeps it); the
        // pipeline follows the class of each reading, which only differs when it changes.
        let class = readings.iter().rev().find_map(|a| a.t.device_class.clone());
        DeviceModel {
            tenant,
            device,
            th: cfg.thresholds_for(tenant, class.as_deref()),
            class,
            readings,
            cfg,
            last_wm,
        }
    }

    /// Whether something due at `t` (processed after readings at `t` when `after_readings`) is
    /// ever processed: before the device's last reading, or before the input's last watermark.
    fn processed(&self, t: i64, after_readings: bool) -> bool {
        let last = self.readings.last().map_or(i64::MIN, |a| a.t.ts);
        t < last || (t == last && !after_readings) || t < self.last_wm
    }

    /// Presence: transitions, with the offline intervals they imply.
    fn presence(&self) -> Vec<StatusTransition> {
        let mut out = Vec::new();
        let mut since = 0;
        let status = |status, previous, ts, last_seen, reason, since: i64| StatusTransition {
            tenant_id: self.tenant.into(),
            device_id: self.device.into(),
            device_class: None,
            status,
            previous,
            ts,
            last_seen,
            reason,
            time_in_previous_ms: previous.map(|_| ts - since),
            event_id: event_id::status(self.tenant, self.device, status, ts),
        };
        for (i, a) in self.readings.iter().enumerate() {
            let ts = a.t.ts;
            if i == 0 {
                out.push(status(
                    DeviceStatus::Online,
                    None,
                    ts,
                    ts,
                    TransitionReason::FirstSeen,
                    0,
                ));
                since = ts;
                continue;
            }
            let prev = self.readings[i - 1].t.ts;
            let deadline = prev + self.th.offline_timeout_ms;
            if deadline < ts {
                out.push(status(
                    DeviceStatus::Offline,
                    Some(DeviceStatus::Online),
                    deadline,
                    prev,
                    TransitionReason::Timeout,
                    since,
                ));
                out.push(status(
                    DeviceStatus::Online,
                    Some(DeviceStatus::Offline),
                    ts,
                    prev,
                    TransitionReason::Resumed,
                    deadline,
                ));
                since = ts;
            }
        }
        if let Some(last) = self.readings.last() {
            let deadline = last.t.ts + self.th.offline_timeout_ms;
            if self.processed(deadline, true) {
                out.push(status(
                    DeviceStatus::Offline,
                    Some(DeviceStatus::Online),
                    deadline,
                    last.t.ts,
                    TransitionReason::Timeout,
                    since,
                ));
            }
        }
        out
    }

    fn offline_within(&self, transitions: &[StatusTransition], start: i64, end: i64) -> i64 {
        let mut total = 0;
        for (i, t) in transitions.iter().enumerate() {
            if t.status != DeviceStatus::Offline {
                continue;
            }
            let until = transitions.get(i + 1).map_or(i64::MAX, |n| n.ts);
            let overlap = until.min(end) - t.ts.max(start);
            if overlap > 0 {
                total += overlap;
            }
        }
        total
    }

    fn windows(&self, size: i64, transitions: &[StatusTransition]) -> Vec<(WindowAggregate, f64)> {
        let mut groups: BTreeMap<i64, Vec<&Telemetry>> = BTreeMap::new();
        for a in self.readings {
            groups
                .entry(a.t.ts.div_euclid(size) * size)
                .or_default()
                .push(&a.t);
        }
        groups
            .into_iter()
            .map(|(start, rs)| {
                let end = start + size;
                let count = rs.len() as i64;
                let errors = rs.iter().filter(|r| !r.ok).count() as i64;
                let mut digest = RtDigest::default();
                let mut rt_sum = 0.0;
                let rts: Vec<f64> = rs.iter().filter_map(|r| r.response_time_ms).collect();
                for v in &rts {
                    digest.add(*v);
                    rt_sum += v;
                }
                let batteries: Vec<f64> = rs.iter().filter_map(|r| r.battery_pct).collect();
                let signals: Vec<f64> = rs.iter().filter_map(|r| r.signal_dbm).collect();
                let signal_mean = (!signals.is_empty())
                    .then(|| signals.iter().sum::<f64>() / signals.len() as f64);
                let error_rate = errors as f64 / count as f64;
                let rt_p95 = digest.quantile(0.95);
                let offline = self.offline_within(transitions, start, end);
                let battery_last = batteries.last().copied();
                let agg = WindowAggregate {
                    tenant_id: self.tenant.into(),
                    device_id: self.device.into(),
                    device_class: self.class.clone(),
                    window_start: start,
                    window_end: end,
                    count,
                    errors,
                    error_rate,
                    rt_min: digest.quantile(0.0),
                    rt_mean: (!rts.is_empty()).then(|| rt_sum / rts.len() as f64),
                    rt_p50: digest.quantile(0.5),
                    rt_p95,
                    rt_p99: digest.quantile(0.99),
                    rt_max: digest.quantile(1.0),
                    battery_last,
                    battery_min: batteries.iter().copied().reduce(f64::min),
                    signal_mean,
                    health_score: health::score(
                        &HealthInputs {
                            error_rate,
                            rt_p95,
                            battery_pct: battery_last,
                            signal_dbm: signal_mean,
                            online_share: 1.0 - offline as f64 / size as f64,
                        },
                        self.cfg.health.rt_slo_ms,
                    ),
                    event_id: event_id::aggregate(self.tenant, self.device, size, start),
                };
                (agg, rts.last().copied().unwrap_or(0.0))
            })
            .collect()
    }

    fn emit(&self, out: &mut Vec<Output>, all_transitions: &mut Vec<StatusTransition>) {
        let mut transitions = self.presence();
        for t in &mut transitions {
            t.device_class = self.class_at(t.ts, t.status);
        }
        let rule_size = self.cfg.rule_window_ms();
        let mut rule_windows = Vec::new();
        for size in &self.cfg.windows_ms {
            for (agg, _) in self.windows(*size, &transitions) {
                if *size == rule_size && self.processed(agg.window_end, false) {
                    rule_windows.push(agg.clone());
                }
                out.push(Output::Aggregate(agg));
            }
        }
        self.anomalies(&transitions, &rule_windows, out);
        for t in transitions {
            all_transitions.push(t.clone());
            out.push(Output::Status(t));
        }
    }

    /// The class a record made at `ts` carries: that of the latest reading processed before it.
    fn class_at(&self, ts: i64, status: DeviceStatus) -> Option<String> {
        self.readings
            .iter()
            .take_while(|a| a.t.ts < ts || (a.t.ts == ts && status == DeviceStatus::Online))
            .filter_map(|a| a.t.device_class.clone())
            .last()
    }

    fn anomalies(
        &self,
        transitions: &[StatusTransition],
        windows: &[WindowAggregate],
        out: &mut Vec<Output>,
    ) {
        let mut timeline: Vec<(i64, Happening)> = Vec::new();
        for (i, w) in windows.iter().enumerate() {
            timeline.push((w.window_end, Happening::RuleWindow(i)));
        }
        for (i, a) in self.readings.iter().enumerate() {
            timeline.push((a.t.ts, Happening::Reading(i)));
        }
        for (i, t) in transitions.iter().enumerate() {
            if t.status == DeviceStatus::Offline {
                timeline.push((t.ts, Happening::Offline));
                let at = t.ts + self.th.prolonged_offline_ms;
                let back = transitions.get(i + 1).map_or(i64::MAX, |n| n.ts);
                if at < back && self.processed(at, true) {
                    timeline.push((at, Happening::Prolonged));
                }
            }
            if t.previous.is_some() {
                let at = t.ts + self.th.flapping_period_ms;
                if self.processed(at, true) {
                    timeline.push((at, Happening::FlapExpiry));
                }
            }
        }
        timeline.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal))
        });

        let th = self.th;
        let mut sw = Switches::default();
        let mut recent: Vec<f32> = Vec::new();
        let mut flaps: Vec<i64> = Vec::new();
        let mut offline_since = None;
        let (mut p95_base, mut err_base) = (Baseline::default(), Baseline::default());
        let mut class: Option<String> = None;
        let mut change = |sw: &mut Switches,
                          kind,
                          fire,
                          resolve,
                          ts,
                          obs: Observation,
                          class: &Option<String>| {
            let cooldown = if kind == AnomalyKind::ProlongedOffline {
                0
            } else {
                th.cooldown_ms
            };
            if let Some(state) = sw.update(kind, ts, fire, resolve, cooldown) {
                out.push(Output::Anomaly(anomaly::record(
                    self.tenant,
                    self.device,
                    class.as_deref(),
                    kind,
                    state,
                    ts,
                    obs,
                )));
            }
        };
        let obs = |observed: f64, threshold: f64, baseline: Option<f64>| Observation {
            observed,
            threshold,
            baseline,
            message: String::new(),
        };
        for (ts, what) in timeline {
            match what {
                Happening::Reading(i) => {
                    let r = &self.readings[i].t;
                    if r.device_class.is_some() {
                        class = r.device_class.clone();
                    }
                    if let Some(since) = offline_since.take() {
                        flaps.push(ts);
                        self.flapping(&mut sw, &mut flaps, ts, &mut change, &class);
                        change(
                            &mut sw,
                            AnomalyKind::ProlongedOffline,
                            false,
                            true,
                            ts,
                            obs((ts - since) as f64, th.prolonged_offline_ms as f64, None),
                            &class,
                        );
                    }
                    if let Some(rt) = r.response_time_ms {
                        recent.push(rt as f32);
                        if recent.len() > th.rt_mean_readings as usize {
                            recent.remove(0);
                        }
                        let mean =
                            recent.iter().map(|v| f64::from(*v)).sum::<f64>() / recent.len() as f64;
                        let fire = recent.len() >= th.rt_mean_min_readings as usize
                            && mean > th.rt_mean_ms;
                        let resolve = mean < th.rt_mean_ms * (1.0 - th.resolve_margin);
                        change(
                            &mut sw,
                            AnomalyKind::RtMeanHigh,
                            fire,
                            resolve,
                            ts,
                            obs(mean, th.rt_mean_ms, None),
                            &class,
                        );
                    }
                    if let Some(b) = r.battery_pct {
                        let resolve = b >= th.battery_low_pct * (1.0 + th.resolve_margin);
                        change(
                            &mut sw,
                            AnomalyKind::BatteryLow,
                            b < th.battery_low_pct,
                            resolve,
                            ts,
                            obs(b, th.battery_low_pct, None),
                            &class,
                        );
                    }
                }
                Happening::RuleWindow(i) => {
                    let w = &windows[i];
                    let rate = w.error_rate;
                    let resolve = rate < th.error_rate * (1.0 - th.resolve_margin);
                    change(
                        &mut sw,
                        AnomalyKind::ErrorRateHigh,
                        rate > th.error_rate,
                        resolve,
                        ts,
                        obs(rate, th.error_rate, None),
                        &class,
                    );
                    if let Some(p95) = w.rt_p95 {
                        let firing = sw.is_firing(AnomalyKind::RtP95Baseline);
                        let v = p95_base.observe(
                            p95,
                            &self.cfg.baseline,
                            (0.05 * p95).max(1.0),
                            firing,
                        );
                        change(
                            &mut sw,
                            AnomalyKind::RtP95Baseline,
                            v.fire,
                            v.resolve,
                            ts,
                            obs(p95, v.limit, Some(v.mean)),
                            &class,
                        );
                    }
                    let firing = sw.is_firing(AnomalyKind::ErrorRateBaseline);
                    let v = err_base.observe(rate, &self.cfg.baseline, 0.02, firing);
                    change(
                        &mut sw,
                        AnomalyKind::ErrorRateBaseline,
                        v.fire,
                        v.resolve,
                        ts,
                        obs(rate, v.limit, Some(v.mean)),
                        &class,
                    );
                }
                Happening::Offline => {
                    offline_since = Some(ts);
                    flaps.push(ts);
                    self.flapping(&mut sw, &mut flaps, ts, &mut change, &class);
                }
                Happening::Prolonged => {
                    let last_seen = ts - th.prolonged_offline_ms - th.offline_timeout_ms;
                    change(
                        &mut sw,
                        AnomalyKind::ProlongedOffline,
                        true,
                        false,
                        ts,
                        obs(
                            (ts - last_seen) as f64,
                            th.prolonged_offline_ms as f64,
                            None,
                        ),
                        &class,
                    );
                }
                Happening::FlapExpiry => {
                    if sw.is_firing(AnomalyKind::Flapping) {
                        self.flapping(&mut sw, &mut flaps, ts, &mut change, &class);
                    }
                }
            }
        }
    }

    fn flapping<F>(
        &self,
        sw: &mut Switches,
        flaps: &mut Vec<i64>,
        now: i64,
        change: &mut F,
        class: &Option<String>,
    ) where
        F: FnMut(&mut Switches, AnomalyKind, bool, bool, i64, Observation, &Option<String>),
    {
        let th = self.th;
        flaps.retain(|f| *f > now - th.flapping_period_ms);
        let n = flaps.len() as u32;
        let obs = Observation {
            observed: f64::from(n.min(th.flapping_transitions)),
            threshold: f64::from(th.flapping_transitions),
            baseline: None,
            message: String::new(),
        };
        change(
            sw,
            AnomalyKind::Flapping,
            n >= th.flapping_transitions,
            n <= th.flapping_transitions / 2,
            now,
            obs,
            class,
        );
    }
}

/// Both sides, made comparable: sorted by id, with free-text fields blanked (the model does not
/// restate messages word for word; the values they explain are compared).
pub fn normalise(mut records: Vec<Output>) -> Vec<Output> {
    for r in &mut records {
        match r {
            Output::Anomaly(a) => a.message.clear(),
            Output::DeadLetter(d) => {
                d.detail.clear();
                d.key = None;
            }
            _ => {}
        }
    }
    records.sort_by(|a, b| a.event_id().cmp(b.event_id()));
    records
}
