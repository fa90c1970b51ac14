//! The reference model: the pipeline's outputs computed the plain way, in one thread, from the
//! whole input at once, and property tests that the dataflow (one worker and several) agrees with
//! it record for record on random streams.
//!
//! The model shares only leaf primitives with the pipeline (the health formula, the quantile
//! digest, the fire/resolve switch, the baseline estimator and the tenant counter, each unit-
//! tested on its own); lateness, ordering, windowing, presence, timers and the end of input are
//! written here again, as batch computations over sorted lists.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use pipeline::anomaly::{self, Baseline, Observation, Switches};
use pipeline::config::{PipelineConfig, Thresholds};
use pipeline::digest::RtDigest;
use pipeline::health::{self, HealthInputs};
use pipeline::output::Output;
use pipeline::sink::{Collector, SinkFactory};
use pipeline::source::memory::MemoryRecord;
use pipeline::tenant::Tenants;
use pipeline::{InputSpec, Job, event_id};
use proptest::prelude::*;
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
fn model(partitions: &[Vec<MemoryRecord>], cfg: &PipelineConfig) -> Vec<Output> {
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
                Ok(t)
                    if rec
                        .record_ts
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
                    source_topic: "memory".into(),
                    source_partition: p,
                    source_offset: offset,
                    key: None,
                    raw: rec.value.clone(),
                    reason,
                    detail: String::new(),
                    record_ts: rec.record_ts,
                    event_id: event_id::dead_letter("memory", p, offset),
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
                    rt_min: rts.iter().copied().reduce(f64::min),
                    rt_mean: (!rts.is_empty()).then(|| rt_sum / rts.len() as f64),
                    rt_p50: digest.quantile(0.5),
                    rt_p95,
                    rt_p99: digest.quantile(0.99),
                    rt_max: rts.iter().copied().reduce(f64::max),
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
        let mut recent: Vec<f64> = Vec::new();
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
                        recent.push(rt);
                        if recent.len() > th.rt_mean_readings as usize {
                            recent.remove(0);
                        }
                        let mean = recent.iter().sum::<f64>() / recent.len() as f64;
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

/// Runs the dataflow over the same partitions on `workers` threads.
fn dataflow(partitions: &[Vec<MemoryRecord>], cfg: &PipelineConfig, workers: usize) -> Vec<Output> {
    let collector = Collector::default();
    let c = collector.clone();
    let sinks: SinkFactory = Arc::new(move |_| Ok(Box::new(c.clone())));
    let job = Job {
        cfg: Arc::new(cfg.clone()),
        input: InputSpec::Memory(Arc::new(partitions.to_vec())),
        codec: Arc::new(Codec::builtin()),
        clock: Arc::new(|| 0),
        stop: Arc::new(AtomicBool::new(false)),
        sinks,
    };
    let config = if workers == 1 {
        timely::Config::thread()
    } else {
        timely::Config::process(workers)
    };
    if let Err(e) = pipeline::run(config, job) {
        panic!("the dataflow failed: {e}");
    }
    collector.0.lock().map(|v| v.clone()).unwrap_or_default()
}

/// Both sides, made comparable: sorted by id, with free-text fields blanked (the model does not
/// restate messages word for word; the values they explain are compared).
fn normalise(mut records: Vec<Output>) -> Vec<Output> {
    for r in &mut records {
        match r {
            Output::Anomaly(a) => a.message.clear(),
            Output::DeadLetter(d) => d.detail.clear(),
            _ => {}
        }
    }
    records.sort_by(|a, b| a.event_id().cmp(b.event_id()));
    records
}

/// The settings the random streams are shaped for: small windows and timeouts, so a short
/// stream exercises every rule.
fn test_config() -> PipelineConfig {
    let mut cfg = PipelineConfig {
        windows_ms: vec![10_000, 30_000],
        out_of_orderness_ms: 2_000,
        watermark_step_ms: 500,
        max_future_skew_ms: 60_000,
        mass_offline_min_devices: 3,
        mass_offline_window_ms: 10_000,
        ..PipelineConfig::default()
    };
    cfg.thresholds.offline_timeout_ms = 15_000;
    cfg.thresholds.prolonged_offline_ms = 40_000;
    cfg.thresholds.cooldown_ms = 20_000;
    cfg.thresholds.flapping_transitions = 4;
    cfg.thresholds.flapping_period_ms = 120_000;
    cfg.baseline.warmup_windows = 3;
    cfg.baseline.m = 2;
    cfg
}

const T0: i64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
struct DeviceSpec {
    partition: usize,
    tenant: u8,
    slow: bool,
    /// Gaps between readings, ms; long ones are silences.
    gaps: Vec<i64>,
    /// Per reading: (error, jitter back in time, kind of message).
    marks: Vec<(bool, i64, u8)>,
    battery_start: f64,
}

fn device_spec() -> impl Strategy<Value = DeviceSpec> {
    (
        0usize..4,
        0u8..2,
        any::<bool>(),
        prop::collection::vec(
            prop_oneof![8 => 500i64..6_000, 1 => 16_000i64..90_000],
            1..40,
        ),
        prop::collection::vec((prop::bool::weighted(0.2), 0i64..2_500, 0u8..40), 40),
        10.0f64..100.0,
    )
        .prop_map(
            |(partition, tenant, slow, gaps, marks, battery_start)| DeviceSpec {
                partition,
                tenant,
                slow,
                gaps,
                marks,
                battery_start,
            },
        )
}

/// Lays the devices' readings out on partitions in send order, with out-of-order, late, future
/// and malformed messages mixed in by the marks.
fn build(devices: &[DeviceSpec], partitions: usize) -> Vec<Vec<MemoryRecord>> {
    let codec = Codec::builtin();
    let mut sends: Vec<Vec<(i64, usize, MemoryRecord)>> = vec![Vec::new(); partitions];
    for (d, spec) in devices.iter().enumerate() {
        let p = spec.partition % partitions;
        let mut sent = T0 + d as i64 * 37;
        for (i, gap) in spec.gaps.iter().enumerate() {
            sent += gap;
            let (error, jitter, kind) = spec.marks[i % spec.marks.len()];
            let mut ts = sent - if kind < 6 { jitter } else { 0 };
            if kind == 6 {
                ts = sent - 30_000;
            }
            if kind == 7 {
                ts = sent + 120_000;
            }
            let t = Telemetry {
                tenant_id: format!("tenant-{}", spec.tenant),
                device_id: format!("dev-{d}"),
                ts,
                response_time_ms: (kind != 9).then_some(
                    if spec.slow && (i / 12) % 2 == 0 {
                        1_500.0
                    } else {
                        40.0
                    } + (i % 7) as f64 * 13.0,
                ),
                ok: !error,
                error_code: error.then(|| "E".to_string()),
                // Drains, then is recharged.
                battery_pct: Some(if i < 25 {
                    (spec.battery_start - i as f64 * 2.0).max(1.0)
                } else {
                    90.0
                }),
                signal_dbm: (kind != 10).then_some(-60.0 - (i % 5) as f64 * 10.0),
                device_class: Some(if d % 2 == 0 { "sensor" } else { "gateway" }.into()),
                attributes: Default::default(),
            };
            let value = match kind {
                8 => vec![0xde, 0xad, 0xbe, 0xef],
                11 => codec
                    .encode(&Telemetry {
                        battery_pct: Some(150.0),
                        ..t
                    })
                    .unwrap_or_default(),
                12 => serde_json::to_vec(&t).unwrap_or_default(),
                _ => codec.encode(&t).unwrap_or_default(),
            };
            sends[p].push((
                sent,
                d,
                MemoryRecord {
                    record_ts: Some(sent),
                    value,
                },
            ));
        }
    }
    sends
        .into_iter()
        .map(|mut v| {
            v.sort_by_key(|(sent, d, _)| (*sent, *d));
            v.into_iter().map(|(_, _, r)| r).collect()
        })
        .collect()
}

fn compare(
    partitions: &[Vec<MemoryRecord>],
    cfg: &PipelineConfig,
    workers: usize,
) -> Result<(), TestCaseError> {
    let want = normalise(model(partitions, cfg));
    let got = normalise(dataflow(partitions, cfg, workers));
    let ids = |v: &[Output]| {
        v.iter()
            .map(|o| o.event_id().to_string())
            .collect::<Vec<_>>()
    };
    let (g, w) = (ids(&got), ids(&want));
    let missing: Vec<_> = w.iter().filter(|id| !g.contains(id)).collect();
    let extra: Vec<_> = g.iter().filter(|id| !w.contains(id)).collect();
    prop_assert!(
        missing.is_empty() && extra.is_empty(),
        "{} workers: missing {:?}, extra {:?}",
        workers,
        missing,
        extra
    );
    for (g, w) in got.iter().zip(&want) {
        prop_assert_eq!(g, w, "{} workers", workers);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// One worker, and three (partitions and devices spread over them), agree with the model.
    #[test]
    fn the_dataflow_agrees_with_the_model(
        devices in prop::collection::vec(device_spec(), 1..14),
        partitions in 1usize..5,
    ) {
        let cfg = test_config();
        let input = build(&devices, partitions);
        compare(&input, &cfg, 1)?;
        compare(&input, &cfg, 3)?;
    }
}

/// A fleet going quiet together raises one tenant-level anomaly, on both sides.
#[test]
fn a_mass_outage_is_one_anomaly() {
    let spec = |d: usize| DeviceSpec {
        partition: d,
        tenant: 0,
        slow: false,
        gaps: (0..30)
            .map(|i| if i == 20 && d < 8 { 200_000 } else { 1_000 })
            .collect(),
        marks: vec![(false, 0, 20)],
        battery_start: 90.0,
    };
    let devices: Vec<_> = (0..10).map(spec).collect();
    let cfg = test_config();
    let input = build(&devices, 3);
    let out = normalise(dataflow(&input, &cfg, 2));
    let mass: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Anomaly(a) if a.kind == AnomalyKind::MassOffline => Some(a.state),
            _ => None,
        })
        .collect();
    assert_eq!(mass.len(), 2, "one fire and one resolve: {mass:?}");
    let agree = compare(&input, &cfg, 2);
    assert!(agree.is_ok(), "{agree:?}");
}

/// The random streams are not vacuous: over a fixed sample they make the model (and so the
/// dataflow, which agrees with it) produce every kind of record the property is about.
#[test]
fn the_random_streams_cover_every_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeSet;

    let cfg = test_config();
    let mut runner = TestRunner::deterministic();
    let strategy = (prop::collection::vec(device_spec(), 1..14), 1usize..5);
    let mut seen = BTreeSet::new();
    for _ in 0..48 {
        let Ok(tree) = strategy.new_tree(&mut runner) else {
            continue;
        };
        let (devices, partitions) = tree.current();
        for o in model(&build(&devices, partitions), &cfg) {
            seen.insert(match o {
                Output::Aggregate(_) => "aggregate".to_string(),
                Output::Anomaly(a) => format!("{:?}/{:?}", a.kind, a.state),
                Output::Status(s) => format!("{:?}", s.reason),
                Output::DeadLetter(d) => format!("{:?}", d.reason),
            });
        }
    }
    for want in [
        "aggregate",
        "FirstSeen",
        "Timeout",
        "Resumed",
        "Undecodable",
        "InvalidField",
        "Late",
        "Future",
        "RtMeanHigh/Firing",
        "RtMeanHigh/Resolved",
        "ErrorRateHigh/Firing",
        "ErrorRateHigh/Resolved",
        "BatteryLow/Firing",
        "BatteryLow/Resolved",
        "MassOffline/Firing",
        "RtP95Baseline/Firing",
        "ProlongedOffline/Firing",
        "ProlongedOffline/Resolved",
        "Flapping/Firing",
        "Flapping/Resolved",
        "ErrorRateBaseline/Firing",
    ] {
        assert!(seen.contains(want), "no {want} in {seen:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arbitrary bytes (and valid readings, and readings cut or flipped) never stop the job or
    /// vanish: every record comes out as a dead letter or counts in exactly one window per size.
    #[test]
    fn no_input_stops_the_job_or_is_lost(
        messages in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                (0i64..100_000, 0usize..40, any::<u8>()).prop_map(|(dt, cut, flip)| {
                    let t = Telemetry { ts: T0 + dt, ..Telemetry::example() };
                    let mut bytes = Codec::builtin().encode(&t).unwrap_or_default();
                    match flip % 3 {
                        0 => bytes.truncate(cut.min(bytes.len())),
                        1 => {
                            let i = cut % bytes.len().max(1);
                            if let Some(b) = bytes.get_mut(i) {
                                *b ^= flip;
                            }
                        }
                        _ => {}
                    }
                    bytes
                }),
                Just(br#"{"tenant_id":"a"}"#.to_vec()),
                Just(br#"{"tenant_id":"a","device_id":"b","ts":"soon"}"#.to_vec()),
            ],
            1..200,
        ),
    ) {
        let n = messages.len();
        let partitions = vec![messages
            .into_iter()
            .map(|value| MemoryRecord { record_ts: Some(T0 + 50_000), value })
            .collect::<Vec<_>>()];
        let cfg = test_config();
        let out = dataflow(&partitions, &cfg, 2);
        let dead = out.iter().filter(|o| matches!(o, Output::DeadLetter(_))).count() as i64;
        let smallest = cfg.rule_window_ms();
        let counted: i64 = out
            .iter()
            .filter_map(|o| match o {
                Output::Aggregate(a) if a.window_end - a.window_start == smallest => Some(a.count),
                _ => None,
            })
            .sum();
        prop_assert_eq!(dead + counted, n as i64);
        prop_assert!(compare(&partitions, &cfg, 1).is_ok());
    }
}
