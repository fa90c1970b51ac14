//! Property tests: the dataflow, on one worker and on several, agrees record for record with
//! the reference model (tests/support/model.rs) on random streams of telemetry (availability
//! reports among it) and inventory records, and no input stops the job or is lost.

#[path = "../../tests/support/model.rs"]
mod reference;

use std::sync::Arc;

use pipeline::clock::RecordTime;
use pipeline::output::Output;
use pipeline::sink::Collector;
use pipeline::source::memory::MemoryRecord;
use pipeline::{InputSpec, Job, PipelineConfig};
use proptest::prelude::*;
use reference::normalise;
use schemas::{AnomalyKind, Codec, Registration, Telemetry};

/// The telemetry's partitions and the inventory's.
#[derive(Debug, Clone, Default)]
struct Input {
    telemetry: Vec<Vec<MemoryRecord>>,
    inventory: Vec<Vec<MemoryRecord>>,
}

impl From<Vec<Vec<MemoryRecord>>> for Input {
    fn from(telemetry: Vec<Vec<MemoryRecord>>) -> Input {
        Input {
            telemetry,
            inventory: Vec::new(),
        }
    }
}

fn model(input: &Input, cfg: &PipelineConfig) -> Vec<Output> {
    if input.inventory.is_empty() {
        return reference::model("memory", &input.telemetry, cfg);
    }
    let inventory = reference::Inventory {
        topic: "memory-inventory",
        partitions: &input.inventory,
    };
    reference::model_with("memory", &input.telemetry, &inventory, cfg)
}

/// Runs the dataflow over the same partitions on `workers` threads.
fn dataflow(input: &Input, cfg: &PipelineConfig, workers: usize) -> Vec<Output> {
    let collector = Collector::default();
    let job = Job {
        clock: Arc::new(|| 0),
        // Tiny slices, so the property tests cover an operator that yields mid-step.
        burst: 3,
        ..Job::new(
            Arc::new(cfg.clone()),
            InputSpec::Memory {
                partitions: Arc::new(input.telemetry.clone()),
                inventory: Arc::new(input.inventory.clone()),
                bounded: true,
            },
            Arc::new(Codec::builtin()),
            collector.factory(),
        )
    };
    let config = if workers == 1 {
        timely::Config::thread()
    } else {
        timely::Config::process(workers)
    };
    if let Err(e) = pipeline::run(config, job) {
        panic!("the dataflow failed: {e}");
    }
    collector.records()
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
    cfg.device_retention_ms = 120_000;
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
    /// How far its clock is off, ms; the second offset takes over every eighth reading for
    /// eight readings (a clock that jumps back and forth).
    clock: (i64, i64),
    /// Whether its producer stamps records with the device's own clock (else a gateway's).
    stamps_own: bool,
    /// Its registration in the inventory, if any.
    enrolled: Option<Enrolled>,
    /// It sends no telemetry at all (a registered device that never reports).
    silent: bool,
}

/// A device's registration: when (after T0), with what interval (0: none), watched or not,
/// decommissioned how long after, and how far its record time is stamped back (behind its
/// partition's watermark, beyond the out-of-orderness).
#[derive(Debug, Clone)]
struct Enrolled {
    at: i64,
    interval_ms: u32,
    monitored: bool,
    decommissioned_after: Option<i64>,
    stamped_back: i64,
}

fn enrolled() -> impl Strategy<Value = Option<Enrolled>> {
    prop::option::weighted(
        0.5,
        (
            -20_000i64..250_000,
            prop_oneof![1 => Just(0u32), 3 => 2_000u32..30_000],
            prop::bool::weighted(0.85),
            prop::option::weighted(0.4, 1_000i64..250_000),
            prop_oneof![6 => Just(0i64), 1 => 0i64..6_000],
        )
            .prop_map(
                |(at, interval_ms, monitored, decommissioned_after, stamped_back)| Enrolled {
                    at,
                    interval_ms,
                    monitored,
                    decommissioned_after,
                    stamped_back,
                },
            ),
    )
}

/// Mostly right clocks; the others off by less than the allowed future skew, by more, or behind.
fn clock_offset() -> impl Strategy<Value = i64> {
    prop_oneof![12 => Just(0i64), 1 => Just(45_000i64), 1 => Just(600_000i64), 1 => Just(-3_600_000i64)]
}

fn device_spec() -> impl Strategy<Value = DeviceSpec> {
    (
        0usize..4,
        0u8..2,
        any::<bool>(),
        prop::collection::vec(
            prop_oneof![16 => 500i64..6_000, 2 => 16_000i64..90_000, 1 => 125_000i64..200_000],
            1..40,
        ),
        prop::collection::vec((prop::bool::weighted(0.2), 0i64..2_500, 0u8..40), 40),
        10.0f64..100.0,
        (clock_offset(), clock_offset()),
        any::<bool>(),
        (enrolled(), prop::bool::weighted(0.1)),
    )
        .prop_map(
            |(
                partition,
                tenant,
                slow,
                gaps,
                marks,
                battery_start,
                clock,
                stamps_own,
                (enrolled, silent),
            )| DeviceSpec {
                partition,
                tenant,
                slow,
                gaps,
                marks,
                battery_start,
                clock,
                stamps_own,
                silent: silent && enrolled.is_some(),
                enrolled,
            },
        )
}

/// The inventory's partitions.
const INVENTORY_PARTITIONS: usize = 2;

/// Lays the devices' readings out on partitions in send order, with out-of-order, late, future
/// and malformed messages and availability reports mixed in by the marks; and their registrations and tombstones on the
/// inventory's partitions in the order they were written, with a record that is no
/// registration on some.
fn build(devices: &[DeviceSpec], partitions: usize) -> Input {
    let codec = Codec::builtin();
    let mut sends: Vec<Vec<(i64, usize, MemoryRecord)>> = vec![Vec::new(); partitions];
    let mut written: Vec<Vec<(i64, usize, MemoryRecord)>> = vec![Vec::new(); INVENTORY_PARTITIONS];
    for (d, spec) in devices.iter().enumerate() {
        let tenant = format!("tenant-{}", spec.tenant);
        let device = format!("dev-{d}");
        let class = if d % 2 == 0 { "sensor" } else { "gateway" };
        if let Some(e) = &spec.enrolled {
            let key = Some(serde_json::to_vec(&[&tenant, &device]).unwrap_or_default());
            let registration = Registration {
                device_class: Some(class.into()),
                expected_interval_ms: (e.interval_ms > 0).then_some(i64::from(e.interval_ms)),
                monitoring_enabled: e.monitored,
                ..Registration::new(&tenant, &device)
            };
            let at = T0 + e.at;
            let inventory = &mut written[d % INVENTORY_PARTITIONS];
            inventory.push((
                at,
                d,
                MemoryRecord {
                    headers: Vec::new(),
                    record_time: RecordTime::Producer(at - e.stamped_back),
                    key: key.clone(),
                    value: codec.encode(&registration).unwrap_or_default(),
                },
            ));
            if d % 5 == 3 {
                inventory.push((
                    at,
                    d,
                    MemoryRecord {
                        headers: Vec::new(),
                        record_time: RecordTime::Producer(at),
                        key: key.clone(),
                        value: b"not a registration".to_vec(),
                    },
                ));
            }
            if let Some(after) = e.decommissioned_after {
                inventory.push((
                    at + after,
                    d,
                    MemoryRecord {
                        headers: Vec::new(),
                        record_time: RecordTime::Producer(at + after),
                        key,
                        value: Vec::new(),
                    },
                ));
            }
        }
        if spec.silent {
            continue;
        }
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
            // An availability report instead of a reading: offline, online, neither, and
            // offline sent late.
            let availability: Option<&[u8]> = match kind {
                14 => Some(b"offline"),
                15 => Some(b"online"),
                16 => Some(b"unplugged"),
                17 => {
                    ts = sent - 30_000;
                    Some(b"offline")
                }
                _ => None,
            };
            let offset = if (i / 8) % 2 == 1 {
                spec.clock.1
            } else {
                spec.clock.0
            };
            ts += offset;
            let t = Telemetry {
                tenant_id: tenant.clone(),
                device_id: device.clone(),
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
                device_class: Some(class.into()),
                // Over the limit on attributes: a dead letter naming them.
                attributes: if kind == 13 {
                    (0..300).map(|a| (a.to_string(), String::new())).collect()
                } else {
                    Default::default()
                },
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
            // Partition 3 has no record timestamps, as a file has none; partition 2's are the
            // broker's; the others' their producers', a gateway's or the device's own.
            let record_time = match p {
                3 => RecordTime::None,
                2 => RecordTime::Broker(sent),
                _ if spec.stamps_own => RecordTime::Producer(sent + offset),
                _ => RecordTime::Producer(sent),
            };
            sends[p].push((
                sent,
                d,
                MemoryRecord {
                    headers: availability
                        .map(|a| (schemas::headers::AVAILABILITY.to_string(), a.to_vec()))
                        .into_iter()
                        .collect(),
                    record_time,
                    key: None,
                    value,
                },
            ));
        }
    }
    let in_order = |all: Vec<Vec<(i64, usize, MemoryRecord)>>| -> Vec<Vec<MemoryRecord>> {
        all.into_iter()
            .map(|mut v| {
                v.sort_by_key(|(sent, d, _)| (*sent, *d));
                v.into_iter().map(|(_, _, r)| r).collect()
            })
            .collect()
    };
    Input {
        telemetry: in_order(sends),
        inventory: in_order(written),
    }
}

fn compare(input: &Input, cfg: &PipelineConfig, workers: usize) -> Result<(), TestCaseError> {
    let want = normalise(model(input, cfg));
    let got = normalise(dataflow(input, cfg, workers));
    let ids = |v: &[Output]| {
        v.iter()
            .map(|o| o.event_id().to_string())
            .collect::<Vec<_>>()
    };
    let (g, w) = (ids(&got), ids(&want));
    let extra_records: Vec<_> = got
        .iter()
        .filter(|o| !w.contains(&o.event_id().to_string()))
        .collect();
    let missing: Vec<_> = w.iter().filter(|id| !g.contains(id)).collect();
    prop_assert!(
        missing.is_empty() && extra_records.is_empty(),
        "{} workers: missing {:?}, extra {:?}",
        workers,
        missing,
        extra_records
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
        trust_record_time in any::<bool>(),
    ) {
        let cfg = PipelineConfig { trust_record_time, ..test_config() };
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
        clock: (0, 0),
        stamps_own: false,
        enrolled: None,
        silent: false,
    };
    let devices: Vec<_> = (0..10).map(spec).collect();
    // The outage outlasts the usual test retention; here the devices come back, not retire.
    let cfg = PipelineConfig {
        device_retention_ms: 600_000,
        ..test_config()
    };
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
                Output::LastSeen(_) => "last_seen".to_string(),
            });
        }
    }
    for want in [
        "aggregate",
        "last_seen",
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
        "ClockSkew/Firing",
        "ClockSkew/Resolved",
        "Retired",
        "NeverSeen",
        "Decommissioned",
        "ReportedOffline",
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
        let partitions: Input = vec![messages
            .into_iter()
            .map(|value| MemoryRecord {
 headers: Vec::new(), record_time: RecordTime::Producer(T0 + 50_000), key: None, value })
            .collect::<Vec<_>>()].into();
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
        compare(&partitions, &cfg, 1)?;
    }
}

/// A fleet large enough that each source hands the device operators many batches at one time:
/// every device's readings still reach it in the order its partition holds them, on several
/// workers, so the last-seen times announced as readings arrive are the model's. Timely's
/// `exchange` operator, which sorts an activation's batches by time with an unstable sort, made
/// this differ from run to run.
#[test]
fn a_large_fleet_on_four_workers_agrees_with_the_model() {
    let spec = |d: usize| DeviceSpec {
        partition: d % 4,
        tenant: (d % 2) as u8,
        slow: false,
        gaps: vec![1_000; 120],
        marks: vec![(false, 0, 20)],
        battery_start: 90.0,
        clock: (0, 0),
        stamps_own: false,
        enrolled: None,
        silent: false,
    };
    let devices: Vec<_> = (0..400).map(spec).collect();
    let input = build(&devices, 4);
    for run in 0..3 {
        let agree = compare(&input, &test_config(), 4);
        assert!(agree.is_ok(), "run {run}: {agree:?}");
    }
}
