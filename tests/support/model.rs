//! The reference model: the pipeline's outputs computed the plain way, in one thread, from the
//! whole input at once. The pipeline's property tests and the end-to-end test against Kafka both
//! compare the dataflow with it.
//!
//! The inventory is modelled too: registrations and tombstones on their own partitions, at their
//! record times, each device's lives split at its decommissioning, its deadlines following its
//! expected interval, `never_seen` for one registered before it ever reported. The model takes a
//! device's class as fixed in a life and allows one registration per life (the tests register
//! devices with the class they report, once).
//!
//! The model shares only leaf primitives with the pipeline (the health formula, the quantile
//! digest, the fire/resolve switch, the baseline estimator and the tenant counter, each unit-
//! tested on its own); clock truth, lateness, ordering, windowing, presence, timers, retirement
//! and the end of input are written here again: each partition's clock (and the last-seen
//! announcements on arrival) as a plain sequential scan over its records, everything after it as
//! batch computations over sorted lists.

use std::collections::BTreeMap;

use pipeline::anomaly::{self, Baseline, Observation, Switches};
use pipeline::clock::{BOOT_VOTES, CONFIRM_READINGS, CONFIRM_SUPPORT, QUORUM, RecordTime, WINDOW};
use pipeline::config::{PipelineConfig, Thresholds};
use pipeline::digest::RtDigest;
use pipeline::event_id;
use pipeline::health::{self, HealthInputs};
use pipeline::output::Output;
use pipeline::source::joined::INVENTORY;
use pipeline::source::memory::MemoryRecord;
use pipeline::tenant::Tenants;
use schemas::{
    AnomalyKind, Codec, DeadLetter, DeadLetterReason, DeviceStatus, InputFormat, LastSeen, Record,
    Registration, StatusTransition, TS_MAX_MS, TS_MIN_MS, Telemetry, TransitionReason,
    WindowAggregate,
};

/// How a device takes an accepted reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// At its own time.
    Stamped,
    /// Re-timed by the device's clock offset.
    Retimed,
    /// Only its arrival counts (the DLQ took the reading, or it is a report of being online).
    Arrival,
    /// A report of going offline: no sign of life, no measurement.
    Offline,
}

/// An accepted reading with its position; `t.ts` is the time it is taken at.
#[derive(Debug, Clone)]
struct Accepted {
    t: Telemetry,
    partition: i32,
    offset: i64,
    /// The device's known clock offset.
    clock: i64,
    kind: Kind,
    /// Its time went out as the device's last seen on arrival.
    announced: bool,
}

/// One device's clock as its partition sees it.
#[derive(Debug, Clone, Default)]
struct DeviceClock {
    offset: i64,
    /// (offset, readings, votes cast when it began, truth when it began, rebases then)
    candidate: Option<(i64, u32, u64, i64, u64)>,
}

/// One partition's clock truth, computed the plain way: every list kept whole and sorted anew.
#[derive(Default)]
struct PartitionModel {
    truth: Option<i64>,
    wm: Option<i64>,
    /// (device, time) of the partition's last votes.
    window: Vec<(String, i64)>,
    heard: u32,
    /// Readings ahead of the truth since the last vote.
    streak: Vec<(String, i64)>,
    cast: u64,
    rebases: u64,
    devices: BTreeMap<String, DeviceClock>,
}

/// What the partition made of a reading.
enum Judgement {
    Accept(i64, i64, Kind),
    Reject(DeadLetterReason, Option<(i64, i64)>),
}

fn lower_median(mut times: Vec<i64>) -> Option<i64> {
    times.sort_unstable();
    let n = times.len();
    (n > 0).then(|| times[(n - 1) / 2])
}

/// Each device's newest time.
fn newest_per_device(pairs: &[(String, i64)]) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for (d, t) in pairs {
        let e = out.entry(d.clone()).or_insert(*t);
        *e = (*e).max(*t);
    }
    out
}

impl PartitionModel {
    fn raise(&mut self, t: Option<i64>) {
        if let Some(t) = t {
            self.truth = Some(self.truth.map_or(t, |x| x.max(t)));
        }
    }

    /// Each voting device's newest vote in the window.
    fn voters(&self) -> BTreeMap<String, i64> {
        newest_per_device(&self.window)
    }

    fn median(&self) -> Option<i64> {
        lower_median(self.voters().into_values().collect())
    }

    fn push(&mut self, device: &str, ts: i64) {
        self.window.push((device.to_string(), ts));
        if self.window.len() > WINDOW {
            self.window.remove(0);
        }
    }

    fn commit(&mut self, cfg: &PipelineConfig) {
        let Some(m0) = self.median() else {
            return;
        };
        let far: Vec<String> = self
            .voters()
            .into_iter()
            .filter(|(_, t)| (t - m0).abs() > cfg.clock_tolerance_ms)
            .map(|(d, _)| d)
            .collect();
        self.window.retain(|(d, _)| !far.contains(d));
        self.raise(self.median());
    }

    fn judge(
        &mut self,
        device: &str,
        ts: i64,
        record: RecordTime,
        cfg: &PipelineConfig,
    ) -> Judgement {
        let tolerance = cfg.clock_tolerance_ms;
        let trusted = match record {
            RecordTime::Broker(t) => Some(t),
            RecordTime::Producer(t) if cfg.trust_record_time => Some(t),
            _ => None,
        }
        .filter(|t| (TS_MIN_MS..TS_MAX_MS).contains(t));
        self.raise(trusted);
        let Some(mut at) = trusted.or(self.truth) else {
            self.push(device, ts);
            self.heard += 1;
            if self.heard >= BOOT_VOTES || self.voters().len() >= QUORUM {
                self.commit(cfg);
            }
            return Judgement::Accept(ts, 0, Kind::Stamped);
        };
        let near = |a: i64, b: i64| (a - b).abs() <= tolerance;
        let known = self.devices.get(device).map_or(0, |c| c.offset);
        let counts = known != 0 || self.voters().contains_key(device);
        if trusted.is_none() && counts && ts - known - at > tolerance {
            // A run of readings ahead of the truth with no vote between them, from more than
            // half of the devices voting lately, or as long as the window, are the truth's votes
            // and set it.
            self.streak.push((device.to_string(), ts - known));
            if self.streak.len() > WINDOW {
                self.streak.remove(0);
            }
            let run = newest_per_device(&self.streak);
            let others = self
                .voters()
                .keys()
                .filter(|d| !run.contains_key(*d))
                .count();
            if run.len() > others || self.streak.len() >= WINDOW {
                let earlier = self.streak.len() - 1;
                self.window = self.streak[..earlier].to_vec();
                self.streak.clear();
                self.rebases += 1;
                self.raise(lower_median(run.into_values().collect()));
                at = self.truth.unwrap_or(at);
            }
        }
        let skew = ts - at;
        let mut clock = self.devices.get(device).cloned().unwrap_or_default();
        let agrees = if near(skew, clock.offset) {
            clock.candidate = None;
            true
        } else if near(skew, 0) {
            clock = DeviceClock::default();
            true
        } else {
            // A candidate from before the truth last moved without votes starts again.
            let (readings, since, from, rebases) = match clock.candidate {
                Some((c, n, since, from, r)) if near(skew, c) && r == self.rebases => {
                    (n + 1, since, from, r)
                }
                _ => (1, self.cast, at, self.rebases),
            };
            let kept = readings >= CONFIRM_READINGS && at - from >= tolerance;
            let supported = trusted.is_some() || self.cast - since >= CONFIRM_SUPPORT;
            if kept && supported {
                clock = DeviceClock {
                    offset: skew,
                    candidate: None,
                };
                true
            } else {
                clock.candidate = Some((skew, readings, since, from, rebases));
                false
            }
        };
        let offset = clock.offset;
        if offset == 0 && clock.candidate.is_none() {
            self.devices.remove(device);
        } else {
            self.devices.insert(device.to_string(), clock);
        }
        let arrival = Some((at.max(self.wm.unwrap_or(i64::MIN)), offset));
        let behind = |t: i64| self.wm.is_some_and(|w| t < w);
        let vouched = record
            .millis()
            .is_some_and(|r| ts - r <= cfg.max_future_skew_ms);
        let (judgement, votes) = if agrees && offset != 0 {
            if !cfg.clock_correction {
                (
                    Judgement::Reject(DeadLetterReason::ClockSkew, arrival),
                    false,
                )
            } else {
                let retimed = (ts - offset).max(self.wm.unwrap_or(i64::MIN));
                (Judgement::Accept(retimed, offset, Kind::Retimed), false)
            }
        } else if skew > cfg.max_future_skew_ms && !vouched {
            (Judgement::Reject(DeadLetterReason::Future, arrival), false)
        } else if behind(ts) {
            (Judgement::Reject(DeadLetterReason::Late, arrival), false)
        } else {
            (Judgement::Accept(ts, offset, Kind::Stamped), agrees)
        };
        if votes {
            self.cast += 1;
            self.streak.clear();
            if trusted.is_none() {
                self.push(device, ts);
                self.raise(self.median());
            }
        }
        judgement
    }

    fn settle(&mut self, cfg: &PipelineConfig) {
        if self.truth.is_none() {
            self.commit(cfg);
        }
        self.follow(cfg);
    }

    fn follow(&mut self, cfg: &PipelineConfig) {
        if let Some(t) = self.truth {
            let data = t - cfg.out_of_orderness_ms;
            self.wm = Some(self.wm.map_or(data, |w| w.max(data)));
        }
    }
}

/// Whether a reading breaks one of the configured limits.
fn over_limits(len: usize, t: &Telemetry, cfg: &PipelineConfig) -> bool {
    let l = &cfg.limits;
    let ids = [
        Some(&t.tenant_id),
        Some(&t.device_id),
        t.device_class.as_ref(),
    ];
    len > l.message_bytes
        || ids.iter().flatten().any(|id| id.len() > l.id_bytes)
        || t.attributes.len() > l.attributes
        || t.attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            > l.attribute_bytes
}

/// The inventory's partitions, as the pipeline reads them beside the telemetry.
pub struct Inventory<'a> {
    /// Its topic (for dead letters).
    pub topic: &'a str,
    /// Its records per partition.
    pub partitions: &'a [Vec<MemoryRecord>],
}

/// A registration, as far as the model uses it.
#[derive(Debug, Clone)]
struct Reg {
    at: i64,
    class: Option<String>,
    interval_ms: u32,
    monitored: bool,
}

/// An accepted inventory record: a registration, or (`None`) a tombstone.
#[derive(Debug, Clone)]
struct InventoryEvent {
    ts: i64,
    partition: i32,
    offset: i64,
    reg: Option<Reg>,
}

/// Runs the model over in-memory partitions.
pub fn model(topic: &str, partitions: &[Vec<MemoryRecord>], cfg: &PipelineConfig) -> Vec<Output> {
    let inventory = Inventory {
        topic: "memory-inventory",
        partitions: &[],
    };
    model_with(topic, partitions, &inventory, cfg)
}

/// The inventory record `rec` holds: tenant, device, and its registration (`None`: a
/// tombstone); or why it is unusable.
fn registration(
    codec: &Codec,
    rec: &MemoryRecord,
    cfg: &PipelineConfig,
) -> Result<(String, String, Option<Registration>), DeadLetterReason> {
    if rec.value.len() > cfg.limits.message_bytes {
        return Err(DeadLetterReason::InvalidField);
    }
    let decoded = if rec.value.is_empty() {
        let (tenant, device) = rec
            .key
            .as_deref()
            .and_then(schemas::device_of_key)
            .ok_or(DeadLetterReason::Undecodable)?;
        (tenant, device, None)
    } else {
        let r: Registration = codec.decode(&rec.value).map_err(|e| e.reason())?;
        r.validate().map_err(|_| DeadLetterReason::InvalidField)?;
        (r.tenant_id.clone(), r.device_id.clone(), Some(r))
    };
    if rec.record_time.millis().is_none() {
        return Err(DeadLetterReason::InvalidField);
    }
    Ok(decoded)
}

/// Runs the model over in-memory telemetry partitions and the inventory's.
pub fn model_with(
    topic: &str,
    partitions: &[Vec<MemoryRecord>],
    inventory: &Inventory<'_>,
    cfg: &PipelineConfig,
) -> Vec<Output> {
    let codec = Codec::builtin();
    let mut out = Vec::new();
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut last_watermarks = Vec::new();
    // Each device's last announced time (a device's readings are all in one partition).
    let mut announced: BTreeMap<String, i64> = BTreeMap::new();
    for (p, records) in partitions.iter().enumerate() {
        let p = p as i32;
        let mut clock = PartitionModel::default();
        for (offset, rec) in records.iter().enumerate() {
            let offset = offset as i64;
            let decoded = if rec.value.len() > cfg.limits.message_bytes {
                Err(DeadLetterReason::InvalidField)
            } else {
                codec
                    .decode_telemetry(&rec.value, InputFormat::Auto)
                    .map_err(|e| e.reason())
            };
            let report = rec
                .headers
                .iter()
                .find(|(name, _)| name == schemas::headers::AVAILABILITY)
                .map(|(_, value)| match value.as_slice() {
                    b"online" => Some(Kind::Arrival),
                    b"offline" => Some(Kind::Offline),
                    _ => None,
                });
            let reason = match decoded {
                Err(reason) => Some(reason),
                Ok(t) if over_limits(rec.value.len(), &t, cfg) || report == Some(None) => {
                    Some(DeadLetterReason::InvalidField)
                }
                Ok(t) => {
                    let report = report.flatten();
                    // The device's key: tenant and id, which no two distinct pairs share.
                    let key = format!("{}\u{0}{}", t.tenant_id, t.device_id);
                    let judged = clock.judge(&key, t.ts, rec.record_time, cfg);
                    clock.follow(cfg);
                    // A report is judged as a reading is; one of going offline says nothing of
                    // the device being there when it is rejected.
                    let (accept, reason) = match judged {
                        Judgement::Accept(ts, offset, kind) => {
                            (Some((ts, offset, report.unwrap_or(kind))), None)
                        }
                        Judgement::Reject(reason, arrival) => (
                            arrival
                                .filter(|_| report != Some(Kind::Offline))
                                .map(|(at, offset)| (at, offset, Kind::Arrival)),
                            Some(reason),
                        ),
                    };
                    if let Some((ts, clock, kind)) = accept {
                        let due = kind != Kind::Offline
                            && announced
                                .get(&key)
                                .is_none_or(|last| ts >= last + cfg.lastseen_interval_ms);
                        if due {
                            announced.insert(key, ts);
                            out.push(last_seen(&t.tenant_id, &t.device_id, &t.device_class, ts));
                        }
                        accepted.push(Accepted {
                            t: Telemetry { ts, ..t },
                            partition: p,
                            offset,
                            clock,
                            kind,
                            announced: due,
                        });
                    }
                    reason
                }
            };
            if let Some(reason) = reason {
                out.push(dead_letter(topic, (p, offset), rec, reason));
            }
        }
        clock.settle(cfg);
        if let Some(t) = clock.truth {
            last_watermarks.push(t - cfg.out_of_orderness_ms);
        }
    }
    let last_wm = last_watermarks.into_iter().min().unwrap_or(i64::MIN);

    // The inventory: its record time is its event time, and one behind its partition's
    // watermark is taken at the watermark.
    let mut enrolments: BTreeMap<(String, String), Vec<InventoryEvent>> = BTreeMap::new();
    for (p, records) in inventory.partitions.iter().enumerate() {
        let p = p as i32;
        let mut clock = PartitionModel::default();
        for (offset, rec) in records.iter().enumerate() {
            let offset = offset as i64;
            let (tenant, device, reg) = match registration(&codec, rec, cfg) {
                Ok(r) => r,
                Err(reason) => {
                    out.push(dead_letter(inventory.topic, (p, offset), rec, reason));
                    continue;
                }
            };
            let Some(at) = rec.record_time.millis() else {
                continue;
            };
            let key = format!("{tenant}\u{0}{device}");
            let ts = match clock.judge(&key, at, RecordTime::Broker(at), cfg) {
                Judgement::Accept(ts, _, _) => ts,
                Judgement::Reject(_, arrival) => arrival.map_or(at, |(ts, _)| ts),
            };
            clock.follow(cfg);
            let reg = reg.map(|r| Reg {
                at: ts,
                class: r.device_class,
                interval_ms: r
                    .expected_interval_ms
                    .map_or(0, |ms| u32::try_from(ms).unwrap_or(u32::MAX)),
                monitored: r.monitoring_enabled,
            });
            enrolments
                .entry((tenant, device))
                .or_default()
                .push(InventoryEvent {
                    ts,
                    partition: INVENTORY + p,
                    offset,
                    reg,
                });
        }
    }

    let mut by_device: BTreeMap<(String, String), Vec<Accepted>> = BTreeMap::new();
    for a in accepted {
        by_device
            .entry((a.t.tenant_id.clone(), a.t.device_id.clone()))
            .or_default()
            .push(a);
    }
    for key in enrolments.keys() {
        by_device.entry(key.clone()).or_default();
    }
    let mut transitions = Vec::new();
    for ((tenant, device), mut readings) in by_device {
        readings.sort_by_key(|a| (a.t.ts, a.partition, a.offset));
        let mut events = enrolments
            .remove(&(tenant.clone(), device.clone()))
            .unwrap_or_default();
        events.sort_by_key(|e| (e.ts, e.partition, e.offset));
        let lives = lives(readings, events, cfg);
        let models: Vec<DeviceModel> = lives
            .iter()
            .map(|life| DeviceModel::new(&tenant, &device, life, cfg, last_wm))
            .collect();
        let Some(first) = models.first() else {
            continue;
        };
        let per_life: Vec<Vec<StatusTransition>> =
            models.iter().map(DeviceModel::transitions).collect();
        // A window open when its device leaves closes at its end, with the readings of the
        // device's next life if one began by then: windows are the device's, not a life's.
        let all: Vec<StatusTransition> = per_life.iter().flatten().cloned().collect();
        let readings: Vec<&Accepted> = lives.iter().flat_map(|l| &l.readings).collect();
        let rule_size = cfg.rule_window_ms();
        let mut rule_windows = Vec::new();
        for size in &cfg.windows_ms {
            for (agg, _) in first.windows(&readings, *size, &all) {
                if *size == rule_size {
                    rule_windows.push(agg.clone());
                }
                out.push(Output::Aggregate(agg));
            }
        }
        for (d, t) in models.iter().zip(per_life) {
            d.emit(t, &rule_windows, &mut out, &mut transitions);
        }
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

/// The dead letter of `rec`, read at `partition`/`offset` of `topic`, for `reason` (the model
/// does not restate details).
fn dead_letter(
    topic: &str,
    (partition, offset): (i32, i64),
    rec: &MemoryRecord,
    reason: DeadLetterReason,
) -> Output {
    Output::DeadLetter(DeadLetter {
        source_topic: topic.into(),
        source_partition: partition,
        source_offset: offset,
        key: None,
        raw: rec.value.clone(),
        reason,
        detail: String::new(),
        record_ts: rec.record_time.millis(),
        event_id: event_id::dead_letter(topic, partition, offset),
    })
}

fn last_seen(tenant: &str, device: &str, class: &Option<String>, ts: i64) -> Output {
    Output::LastSeen(LastSeen {
        tenant_id: tenant.into(),
        device_id: device.into(),
        device_class: class.clone(),
        last_seen: ts,
        event_id: event_id::last_seen(tenant, device, ts),
    })
}

/// How a life ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// It does not end before the input does (it may still be retired then).
    Open,
    /// Retired at this time, as a later event of the device came after its retention.
    Retired(i64),
    /// Decommissioned at this time.
    Decommissioned(i64),
}

/// One life of a device: from its first reading or registration to its retirement or
/// decommissioning.
#[derive(Debug, Clone)]
struct Life {
    readings: Vec<Accepted>,
    reg: Option<Reg>,
    end: End,
}

impl Life {
    /// The life's latest sign of life: its last reading that is no offline report.
    fn last_seen(&self) -> Option<&Accepted> {
        self.readings.iter().rev().find(|a| a.kind != Kind::Offline)
    }
}

/// A device's readings and inventory events cut into lives: a device silent past the retention
/// (unless registered) is retired, a tombstone decommissions it, and what follows is a new
/// device. Events of one millisecond come in the pipeline's order: readings before inventory
/// records (whose partitions are numbered after every telemetry partition), and the retention's
/// timer after both.
fn lives(readings: Vec<Accepted>, events: Vec<InventoryEvent>, cfg: &PipelineConfig) -> Vec<Life> {
    enum Event {
        Reading(Accepted),
        Inventory(InventoryEvent),
    }
    let mut all: Vec<((i64, i32, i64), Event)> = readings
        .into_iter()
        .map(|a| ((a.t.ts, a.partition, a.offset), Event::Reading(a)))
        .chain(
            events
                .into_iter()
                .map(|e| ((e.ts, e.partition, e.offset), Event::Inventory(e))),
        )
        .collect();
    all.sort_by_key(|(k, _)| *k);
    let mut out = Vec::new();
    let mut current: Option<Life> = None;
    let fresh = || Life {
        readings: Vec::new(),
        reg: None,
        end: End::Open,
    };
    for ((t, _, _), event) in all {
        if let Some(life) = current.take() {
            let retire = life
                .last_seen()
                .filter(|_| life.reg.is_none())
                .map(|a| a.t.ts + cfg.device_retention_ms)
                .filter(|x| t > *x);
            match retire {
                Some(x) => out.push(Life {
                    end: End::Retired(x),
                    ..life
                }),
                None => current = Some(life),
            }
        }
        match event {
            // A device nobody knows is not taken offline, nor known after.
            Event::Reading(a) if a.kind == Kind::Offline => {
                if let Some(life) = current.as_mut() {
                    life.readings.push(a);
                }
            }
            Event::Reading(a) => current.get_or_insert_with(fresh).readings.push(a),
            Event::Inventory(InventoryEvent { reg: Some(r), .. }) => {
                let life = current.get_or_insert_with(fresh);
                assert!(
                    life.reg.is_none(),
                    "the model takes one registration per life"
                );
                life.reg = Some(r);
            }
            Event::Inventory(InventoryEvent { reg: None, ts, .. }) => {
                if let Some(life) = current.take() {
                    out.push(Life {
                        end: End::Decommissioned(ts),
                        ..life
                    });
                }
            }
        }
    }
    out.extend(current);
    out
}

/// One device's life, judged as a whole.
struct DeviceModel<'a> {
    tenant: &'a str,
    device: &'a str,
    class: Option<String>,
    readings: &'a [Accepted],
    reg: Option<&'a Reg>,
    cfg: &'a PipelineConfig,
    th: Thresholds,
    last_wm: i64,
    /// When the device is retired, if it is: nothing due at or after it is processed.
    retired: Option<i64>,
    /// When the device is decommissioned, if it is: nothing due after the readings of that
    /// millisecond is processed.
    decommissioned: Option<i64>,
}

/// Things that happen to a device, in the order they are processed at one millisecond.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Happening {
    /// The rule window ending at this time closes (and was complete).
    RuleWindow(usize),
    /// Reading number `i`.
    Reading(usize),
    /// The registration (after the readings of its millisecond).
    Registered,
    /// Offline deadline; whether it counts towards flapping (not `never_seen`, which follows
    /// no status).
    Offline(bool),
    /// The device has been offline for the prolonged limit since transition `i`.
    Prolonged(usize),
    /// A transition leaves the flapping period.
    FlapExpiry,
    /// Transition `i` retires or decommissions the device.
    Retire(usize),
}

impl<'a> DeviceModel<'a> {
    fn new(
        tenant: &'a str,
        device: &'a str,
        life: &'a Life,
        cfg: &'a PipelineConfig,
        last_wm: i64,
    ) -> Self {
        let readings = &life.readings[..];
        let reg = life.reg.as_ref();
        // The model takes a device's class as fixed (every fleet in the tests keeps it); the
        // pipeline follows the class of each reading, which only differs when it changes.
        let class = reg.and_then(|r| r.class.clone()).or_else(|| {
            readings
                .iter()
                .rev()
                .filter(|a| a.kind != Kind::Offline)
                .find_map(|a| a.t.device_class.clone())
        });
        let mut d = DeviceModel {
            tenant,
            device,
            th: cfg.thresholds_for(tenant, class.as_deref()),
            class,
            readings,
            reg,
            cfg,
            last_wm,
            retired: None,
            decommissioned: None,
        };
        match life.end {
            End::Retired(x) => d.retired = Some(x),
            End::Decommissioned(t) => d.decommissioned = Some(t),
            End::Open => {
                let retire = life
                    .last_seen()
                    .filter(|_| reg.is_none())
                    .map(|a| a.t.ts + cfg.device_retention_ms);
                d.retired = retire.filter(|r| d.processed(*r, true));
            }
        }
        d
    }

    /// Whether something due at `t` (processed after readings at `t` when `after_readings`) is
    /// ever processed: before the device's last reading or registration, or before the input's
    /// last watermark, and before its retirement or decommissioning.
    fn processed(&self, t: i64, after_readings: bool) -> bool {
        if let Some(d) = self.decommissioned {
            return t < d || (t == d && !after_readings);
        }
        if let Some(r) = self.retired {
            return t < r;
        }
        let last = self.event_times().max().unwrap_or(i64::MIN);
        t < last || (t == last && !after_readings) || t < self.last_wm
    }

    /// The times of the life's first and last readings (or reports) and of its registration:
    /// what forces the device's timers forward, and when the life begins.
    fn event_times(&self) -> impl Iterator<Item = i64> + '_ {
        let ends = self
            .readings
            .first()
            .into_iter()
            .chain(self.readings.last());
        ends.map(|a| a.t.ts).chain(self.reg.map(|r| r.at))
    }

    /// When silence since the reading at `from` makes the device offline: after its timeout,
    /// which its registration sets from the registration on (never before it), when it was
    /// registered before the old deadline passed.
    fn deadline(&self, from: i64) -> i64 {
        let default = from + self.th.offline_timeout_ms;
        match self.reg {
            Some(r) if r.at <= from || default >= r.at => {
                let timeout = if r.monitored && r.interval_ms > 0 {
                    self.cfg.expected_timeout_ms(r.interval_ms)
                } else {
                    self.th.offline_timeout_ms
                };
                (from + timeout).max(r.at)
            }
            _ => default,
        }
    }

    /// The life's signs of life, with their places among its readings: all but offline reports.
    fn seen(&self) -> impl Iterator<Item = (usize, &Accepted)> + '_ {
        self.readings
            .iter()
            .enumerate()
            .filter(|(_, a)| a.kind != Kind::Offline)
    }

    /// Whether an offline report comes among the readings `from..to`.
    fn reported_offline(&self, from: usize, to: usize) -> bool {
        self.readings[from..to]
            .iter()
            .any(|a| a.kind == Kind::Offline)
    }

    /// The registration the device was expected by before it ever reported, if any.
    fn expected(&self) -> Option<&Reg> {
        self.reg
            .filter(|r| r.monitored && self.seen().next().is_none_or(|(_, a)| r.at < a.t.ts))
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
        // A device registered before it ever reported, and silent for its timeout.
        let mut never_seen = false;
        if let Some(r) = self.expected() {
            let due = self.deadline(r.at);
            let first = self.seen().next().map(|(_, a)| a.t.ts);
            if first.is_none_or(|f| due < f) && self.processed(due, true) {
                out.push(status(
                    DeviceStatus::Offline,
                    None,
                    due,
                    r.at,
                    TransitionReason::NeverSeen,
                    0,
                ));
                since = due;
                never_seen = true;
            }
        }
        // The latest sign of life, and whether the device is online after it.
        let mut last: Option<i64> = None;
        let mut online = false;
        for a in self.readings {
            let ts = a.t.ts;
            if let Some(prev) = last.filter(|_| online) {
                let deadline = self.deadline(prev);
                if deadline < ts {
                    out.push(status(
                        DeviceStatus::Offline,
                        Some(DeviceStatus::Online),
                        deadline,
                        prev,
                        TransitionReason::Timeout,
                        since,
                    ));
                    since = deadline;
                    online = false;
                }
            }
            if a.kind == Kind::Offline {
                if let Some(prev) = last.filter(|_| online) {
                    out.push(status(
                        DeviceStatus::Offline,
                        Some(DeviceStatus::Online),
                        ts,
                        prev,
                        TransitionReason::ReportedOffline,
                        since,
                    ));
                    since = ts;
                    online = false;
                }
                continue;
            }
            if !online {
                let (previous, last_seen, reason) = match last {
                    None => (
                        never_seen.then_some(DeviceStatus::Offline),
                        ts,
                        TransitionReason::FirstSeen,
                    ),
                    Some(prev) => (Some(DeviceStatus::Offline), prev, TransitionReason::Resumed),
                };
                out.push(status(
                    DeviceStatus::Online,
                    previous,
                    ts,
                    last_seen,
                    reason,
                    since,
                ));
                since = ts;
                online = true;
            }
            last = Some(ts);
        }
        let mut previous = never_seen.then_some(DeviceStatus::Offline);
        if let Some(last) = last {
            previous = Some(DeviceStatus::Offline);
            let deadline = self.deadline(last);
            if online && self.processed(deadline, true) {
                out.push(status(
                    DeviceStatus::Offline,
                    Some(DeviceStatus::Online),
                    deadline,
                    last,
                    TransitionReason::Timeout,
                    since,
                ));
                since = deadline;
            } else if online {
                previous = Some(DeviceStatus::Online);
            }
            if let Some(r) = self.retired {
                out.push(status(
                    DeviceStatus::Offline,
                    previous,
                    r,
                    last,
                    TransitionReason::Retired,
                    since,
                ));
            }
        }
        if let (Some(d), Some(_)) = (self.decommissioned, previous) {
            let last_seen = self
                .seen()
                .last()
                .map(|(_, a)| a.t.ts)
                .or(self.reg.map(|r| r.at))
                .unwrap_or(d);
            out.push(status(
                DeviceStatus::Offline,
                previous,
                d,
                last_seen,
                TransitionReason::Decommissioned,
                since,
            ));
        }
        out
    }

    /// The offline time within `[start, end)` of a window first opened at `opened`.
    fn offline_within(
        &self,
        transitions: &[StatusTransition],
        start: i64,
        end: i64,
        opened: i64,
    ) -> i64 {
        let leaves = |t: &StatusTransition| {
            matches!(
                t.reason,
                TransitionReason::Retired | TransitionReason::Decommissioned
            )
        };
        let mut total = 0;
        for (i, t) in transitions.iter().enumerate() {
            // Leaving ends the windows' offline time; it begins none.
            if t.status != DeviceStatus::Offline || leaves(t) {
                continue;
            }
            let next = transitions.get(i + 1);
            // An offline time that ended with the device leaving counts only in the windows
            // open then: a window its next life opens knows nothing of it.
            if next.is_some_and(|n| leaves(n) && opened > n.ts) {
                continue;
            }
            let until = next.map_or(i64::MAX, |n| n.ts);
            let overlap = until.min(end) - t.ts.max(start);
            if overlap > 0 {
                total += overlap;
            }
        }
        total
    }

    /// The windows of `readings` (of every life of the device).
    fn windows(
        &self,
        readings: &[&Accepted],
        size: i64,
        transitions: &[StatusTransition],
    ) -> Vec<(WindowAggregate, f64)> {
        let mut groups: BTreeMap<i64, Vec<&Accepted>> = BTreeMap::new();
        let measured = |a: &&Accepted| !matches!(a.kind, Kind::Arrival | Kind::Offline);
        for a in readings.iter().copied().filter(measured) {
            groups
                .entry(a.t.ts.div_euclid(size) * size)
                .or_default()
                .push(a);
        }
        groups
            .into_iter()
            .map(|(start, accepted)| {
                // The offset of the window's re-timed readings: the first of the largest.
                let mut retimed = 0i64;
                for a in accepted.iter().filter(|a| a.kind == Kind::Retimed) {
                    if a.clock.abs() > retimed.abs() {
                        retimed = a.clock;
                    }
                }
                let rs: Vec<&Telemetry> = accepted.iter().map(|a| &a.t).collect();
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
                let opened = readings
                    .iter()
                    .filter(|a| a.kind != Kind::Offline)
                    .map(|a| a.t.ts)
                    .filter(|ts| (start..end).contains(ts))
                    .min()
                    .unwrap_or(start);
                let offline = self.offline_within(transitions, start, end, opened);
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
                    clock_offset_ms: (retimed != 0).then_some(retimed),
                };
                (agg, rts.last().copied().unwrap_or(0.0))
            })
            .collect()
    }

    /// The life's transitions, with the class each carries.
    fn transitions(&self) -> Vec<StatusTransition> {
        let mut transitions = self.presence();
        for t in &mut transitions {
            t.device_class = self.class_at(t);
        }
        transitions
    }

    /// The life's records but its windows; it judges the device's rule windows that close while
    /// it lives (after its first event, and processed before it ends).
    fn emit(
        &self,
        transitions: Vec<StatusTransition>,
        device_rule_windows: &[WindowAggregate],
        out: &mut Vec<Output>,
        all_transitions: &mut Vec<StatusTransition>,
    ) {
        let begins = self.event_times().min().unwrap_or(i64::MAX);
        let rule_windows: Vec<WindowAggregate> = device_rule_windows
            .iter()
            .filter(|w| begins < w.window_end && self.processed(w.window_end, false))
            .cloned()
            .collect();
        self.anomalies(&transitions, &rule_windows, out);
        self.last_seen(out);
        for t in transitions {
            all_transitions.push(t.clone());
            out.push(Output::Status(t));
        }
    }

    /// What the device side tells of its last-seen times: a reading not announced on arrival
    /// goes out when it brings the device online, or when neither a reading nor the end of the
    /// life came within an interval (or the offline timeout, whichever is shorter) after it, or
    /// when a report took the device offline before the next.
    fn last_seen(&self, out: &mut Vec<Output>) {
        let within = self.cfg.lastseen_interval_ms;
        let mut told = i64::MIN;
        let mut class = None;
        let seen: Vec<(usize, &Accepted)> = self.seen().collect();
        for (k, &(i, a)) in seen.iter().enumerate() {
            let ts = a.t.ts;
            if a.t.device_class.is_some() {
                class.clone_from(&a.t.device_class);
            }
            let came_online = k == 0 || {
                let (j, before) = seen[k - 1];
                self.deadline(before.t.ts) < ts || self.reported_offline(j, i)
            };
            if a.announced {
                told = told.max(ts);
            }
            let next = seen.get(k + 1).copied();
            // The life's last reading goes out at the latest at the end of the input or when
            // the device retires.
            let silence = next.is_none_or(|(j, n)| {
                let n = n.t.ts;
                ts + within < n || self.deadline(ts) < n || self.reported_offline(i, j)
            });
            if told < ts && (came_online || silence) {
                told = ts;
                out.push(last_seen(self.tenant, self.device, &class, ts));
            }
        }
    }

    /// The class transition `t` carries: that of the latest reading processed before it. A
    /// reading of its millisecond counts for one going online, and for a report of going offline
    /// (which, when it acts, follows a reading; the fleets of the tests name the class in every
    /// reading).
    fn class_at(&self, t: &StatusTransition) -> Option<String> {
        if let Some(class) = self
            .reg
            .filter(|r| r.at <= t.ts)
            .and_then(|r| r.class.clone())
        {
            return Some(class);
        }
        let same_ms =
            t.status == DeviceStatus::Online || t.reason == TransitionReason::ReportedOffline;
        self.seen()
            .map(|(_, a)| a)
            .take_while(|a| a.t.ts < t.ts || (a.t.ts == t.ts && same_ms))
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
        if let Some(r) = self.reg {
            timeline.push((r.at, Happening::Registered));
        }
        for (i, t) in transitions.iter().enumerate() {
            if matches!(
                t.reason,
                TransitionReason::Retired | TransitionReason::Decommissioned
            ) {
                timeline.push((t.ts, Happening::Retire(i)));
                continue;
            }
            if t.status == DeviceStatus::Offline {
                // A report takes the device offline where it comes among the readings.
                if t.reason != TransitionReason::ReportedOffline {
                    timeline.push((t.ts, Happening::Offline(t.previous.is_some())));
                }
                let at = t.ts + self.th.prolonged_offline_ms;
                let back = transitions.get(i + 1).map_or(i64::MAX, |n| n.ts);
                if at < back && self.processed(at, true) {
                    timeline.push((at, Happening::Prolonged(i)));
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
        let mut online = false;
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
                Happening::Reading(i) if self.readings[i].kind == Kind::Offline => {
                    if online {
                        online = false;
                        offline_since = Some(ts);
                        flaps.push(ts);
                        self.flapping(&mut sw, &mut flaps, ts, &mut change, &class);
                    }
                }
                Happening::Reading(i) => {
                    online = true;
                    let a = &self.readings[i];
                    let r = &a.t;
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
                    change(
                        &mut sw,
                        AnomalyKind::ClockSkew,
                        a.clock != 0,
                        a.clock == 0,
                        ts,
                        obs(a.clock as f64, self.cfg.clock_tolerance_ms as f64, None),
                        &class,
                    );
                    if a.kind == Kind::Arrival {
                        continue;
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
                Happening::Registered => {
                    if let Some(c) = self.reg.and_then(|r| r.class.clone()) {
                        class = Some(c);
                    }
                }
                Happening::Offline(flap) => {
                    online = false;
                    offline_since = Some(ts);
                    if flap {
                        flaps.push(ts);
                        self.flapping(&mut sw, &mut flaps, ts, &mut change, &class);
                    }
                }
                Happening::Prolonged(i) => {
                    let last_seen = transitions[i].last_seen;
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
                Happening::Retire(i) => {
                    let t = &transitions[i];
                    let silent = ts - t.last_seen;
                    let threshold = if t.reason == TransitionReason::Retired {
                        self.cfg.device_retention_ms as f64
                    } else {
                        0.0
                    };
                    for kind in sw.firing() {
                        change(
                            &mut sw,
                            kind,
                            false,
                            true,
                            ts,
                            obs(silent as f64, threshold, None),
                            &class,
                        );
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
/// restate messages word for word; the values they explain are compared), and a last-seen time
/// repeated after a device told an older one dropped (consumers drop it by `event_id`; whether
/// it is repeated depends on when the newer reading arrived).
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
    records.dedup_by(|b, a| {
        matches!((&*a, &*b), (Output::LastSeen(x), Output::LastSeen(y)) if x.event_id == y.event_id)
    });
    records
}
