//! Wrong device clocks cost the other devices nothing: the metamorphic property of the clock
//! truth. Adding devices whose clocks are off (ahead, behind, jumping between the two), with
//! record timestamps stamped by the broker, by a trusted producer, by a gateway with a good clock,
//! by the lying device itself, or not at all (a file), leaves every honest device's aggregates,
//! transitions, anomalies and dead letters exactly as they are in the same stream without them,
//! at one worker and several, and across a stop and a restart from the checkpoint; each lying
//! device gets its `clock_skew` anomaly. The dataflow also agrees with the reference model on the
//! streams with liars.

#[path = "../../tests/support/model.rs"]
mod reference;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pipeline::checkpoint::Store;
use pipeline::clock::RecordTime;
use pipeline::output::Output;
use pipeline::sink::Collector;
use pipeline::source::memory::MemoryRecord;
use pipeline::{InputSpec, Job, PipelineConfig};
use proptest::prelude::*;
use reference::normalise;
use schemas::{AnomalyKind, AnomalyState, Codec, Telemetry};

const T0: i64 = 1_700_000_000_000;
const HONEST: &str = "t1";
const LIARS: &str = "t2";

fn config(trust_record_time: bool) -> PipelineConfig {
    let mut cfg = PipelineConfig {
        windows_ms: vec![10_000, 30_000],
        out_of_orderness_ms: 2_000,
        max_future_skew_ms: 60_000,
        clock_tolerance_ms: 30_000,
        watermark_step_ms: 500,
        mass_offline_min_devices: 3,
        mass_offline_window_ms: 10_000,
        trust_record_time,
        ..PipelineConfig::default()
    };
    cfg.thresholds.offline_timeout_ms = 15_000;
    cfg.thresholds.prolonged_offline_ms = 40_000;
    cfg.thresholds.cooldown_ms = 20_000;
    cfg
}

/// Who stamps the records' timestamps.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stamps {
    /// The broker, on append (`LogAppendTime`).
    Broker,
    /// A producer the configuration trusts.
    TrustedProducer,
    /// A gateway with a good clock, not trusted by configuration.
    Gateway,
    /// Each device's own producer, with its own clock.
    Device,
    /// Nobody: a file.
    File,
}

#[derive(Debug, Clone)]
struct Honest {
    /// Reporting interval, ms.
    interval: i64,
    /// Per reading: (error, out-of-orderness within the allowed, straggler late by, silence).
    marks: Vec<(bool, i64, Option<i64>, Option<i64>)>,
}

#[derive(Debug, Clone)]
struct Liar {
    partition: usize,
    /// The offsets its clock takes, each for 90 s of reports, in turn.
    offsets: Vec<i64>,
}

fn honest() -> impl Strategy<Value = Honest> {
    (
        700i64..2_500,
        prop::collection::vec(
            (
                prop::bool::weighted(0.15),
                0i64..1_500,
                prop::option::weighted(0.03, 30_000i64..60_000),
                prop::option::weighted(0.01, 20_000i64..40_000),
            ),
            30,
        ),
    )
        .prop_map(|(interval, marks)| Honest { interval, marks })
}

fn offset() -> impl Strategy<Value = i64> {
    prop::sample::select(vec![45_000i64, 120_000, 600_000, -300_000, -3_600_000])
}

fn liar(partitions: usize) -> impl Strategy<Value = Liar> {
    (0..partitions, prop::collection::vec(offset(), 1..4))
        .prop_map(|(partition, offsets)| Liar { partition, offsets })
}

/// One reading as sent: when, by whom, stamped how, and the record's timestamp.
struct Send {
    sent: i64,
    partition: usize,
    order: usize,
    telemetry: Telemetry,
    record_ts: i64,
}

fn reading(tenant: &str, device: String, ts: i64, i: usize, error: bool) -> Telemetry {
    Telemetry {
        tenant_id: tenant.into(),
        device_id: device,
        ts,
        response_time_ms: Some(40.0 + (i % 11) as f64 * 17.0 + if error { 900.0 } else { 0.0 }),
        ok: !error,
        error_code: error.then(|| "E".to_string()),
        battery_pct: Some((95.0 - i as f64 * 0.4).max(5.0)),
        signal_dbm: Some(-60.0 - (i % 5) as f64 * 7.0),
        device_class: Some("sensor".into()),
        attributes: Default::default(),
    }
}

/// The honest fleet (device `d` on partition `d % partitions`, at least three per partition)
/// reports for `SPAN_MS`; the liars report every second from ten seconds in until ten seconds
/// before the end, so every partition starts and ends with honest records.
const SPAN_MS: i64 = 300_000;

fn build(
    fleet: &[Honest],
    liars: &[Liar],
    partitions: usize,
    stamps: Stamps,
) -> Vec<Vec<MemoryRecord>> {
    let codec = Codec::builtin();
    let mut sends = Vec::new();
    for (d, h) in fleet.iter().enumerate() {
        let mut sent = T0 + d as i64 * 53;
        let mut i = 0;
        while sent < T0 + SPAN_MS {
            let (error, ooo, straggler, silence) = h.marks[i % h.marks.len()];
            let ts = sent - straggler.unwrap_or(ooo);
            sends.push(Send {
                sent,
                partition: d % partitions,
                order: d,
                telemetry: reading(HONEST, format!("h{d}"), ts, i, error),
                record_ts: sent,
            });
            sent += h.interval + silence.unwrap_or(0);
            i += 1;
        }
    }
    for (l, liar) in liars.iter().enumerate() {
        let mut sent = T0 + 10_000 + l as i64 * 71;
        let mut i = 0;
        while sent < T0 + SPAN_MS - 10_000 {
            let step = ((sent - T0 - 10_000) / 90_000) as usize;
            let offset = liar.offsets[step % liar.offsets.len()];
            let own = stamps == Stamps::Device;
            sends.push(Send {
                sent,
                partition: liar.partition % partitions,
                order: fleet.len() + l,
                telemetry: reading(LIARS, format!("l{l}"), sent + offset, i, i % 9 == 0),
                record_ts: if own { sent + offset } else { sent },
            });
            sent += 1_000;
            i += 1;
        }
    }
    sends.sort_by_key(|s| (s.sent, s.order));
    let mut out = vec![Vec::new(); partitions];
    for s in sends {
        let record_time = match stamps {
            Stamps::Broker => RecordTime::Broker(s.record_ts),
            Stamps::File => RecordTime::None,
            _ => RecordTime::Producer(s.record_ts),
        };
        let value = codec.encode(&s.telemetry).unwrap_or_default();
        out[s.partition].push(MemoryRecord {
            headers: Vec::new(),
            record_time,
            key: None,
            value,
        });
    }
    out
}

fn job(
    input: &[Vec<MemoryRecord>],
    cfg: &PipelineConfig,
    bounded: bool,
    collector: &Collector,
) -> Job {
    Job {
        // Frozen: no partition goes idle, so the output is a function of the input.
        clock: Arc::new(|| 0),
        burst: 5,
        ..Job::new(
            Arc::new(cfg.clone()),
            InputSpec::Memory {
                partitions: Arc::new(input.to_vec()),
                inventory: Arc::default(),
                bounded,
            },
            Arc::new(Codec::builtin()),
            collector.factory(),
        )
    }
}

fn run(input: &[Vec<MemoryRecord>], cfg: &PipelineConfig, workers: usize) -> Vec<Output> {
    let collector = Collector::default();
    let config = if workers == 1 {
        timely::Config::thread()
    } else {
        timely::Config::process(workers)
    };
    if let Err(e) = pipeline::run(config, job(input, cfg, true, &collector)) {
        panic!("the dataflow failed: {e}");
    }
    collector.records()
}

/// The records about honest devices: everything of their tenant, and their dead letters by
/// reason and value (their offsets move when other records are added between them).
fn honest_part(records: &[Output]) -> (Vec<Output>, Vec<(String, Vec<u8>)>) {
    let codec = Codec::builtin();
    let mut kept = Vec::new();
    let mut dead = Vec::new();
    for r in records {
        match r {
            Output::Aggregate(a) if a.tenant_id == HONEST => kept.push(r.clone()),
            Output::Anomaly(a) if a.tenant_id == HONEST => kept.push(r.clone()),
            Output::Status(s) if s.tenant_id == HONEST => kept.push(r.clone()),
            Output::DeadLetter(d) => {
                let tenant = codec
                    .decode_telemetry(&d.raw, schemas::InputFormat::Auto)
                    .map(|t| t.tenant_id)
                    .unwrap_or_default();
                if tenant == HONEST {
                    dead.push((d.reason.as_str().to_string(), d.raw.clone()));
                }
            }
            _ => {}
        }
    }
    dead.sort();
    (normalise(kept), dead)
}

/// The liars whose `clock_skew` fired, with the offset it reported.
fn skewed(records: &[Output]) -> BTreeMap<String, f64> {
    records
        .iter()
        .filter_map(|r| match r {
            Output::Anomaly(a)
                if a.kind == AnomalyKind::ClockSkew && a.state == AnomalyState::Firing =>
            {
                Some((a.device_id.clone(), a.observed))
            }
            _ => None,
        })
        .collect()
}

fn stamps() -> impl Strategy<Value = Stamps> {
    prop::sample::select(vec![
        Stamps::Broker,
        Stamps::TrustedProducer,
        Stamps::Gateway,
        Stamps::Device,
        Stamps::File,
    ])
}

fn case() -> impl Strategy<Value = (Vec<Honest>, Vec<Liar>, usize, Stamps)> {
    (1usize..4).prop_flat_map(|partitions| {
        (
            prop::collection::vec(honest(), 3 * partitions..3 * partitions + 6),
            prop::collection::vec(liar(partitions), 1..=partitions),
            Just(partitions),
            stamps(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn wrong_clocks_leave_every_honest_devices_records_as_they_were(
        (fleet, liars, partitions, stamps) in case()
    ) {
        let cfg = config(stamps == Stamps::TrustedProducer);
        let without = run(&build(&fleet, &[], partitions, stamps), &cfg, 1);
        let input = build(&fleet, &liars, partitions, stamps);
        let (want, want_dead) = honest_part(&without);
        prop_assert!(want.len() > 100, "a vacuous stream: {} records", want.len());
        for workers in [1, 3] {
            let with = run(&input, &cfg, workers);
            let (got, got_dead) = honest_part(&with);
            let first = got.iter().zip(&want).position(|(g, w)| g != w);
            prop_assert!(
                got.len() == want.len() && first.is_none(),
                "{stamps:?}, {workers} workers: {} honest records against {}; first difference {:?}",
                got.len(), want.len(), first.map(|i| (&got[i], &want[i]))
            );
            prop_assert_eq!(&got_dead, &want_dead, "{:?}: honest dead letters", stamps);
            let skew = skewed(&with);
            for l in 0..liars.len() {
                prop_assert!(skew.contains_key(&format!("l{l}")), "{:?}: l{} has no clock_skew: {:?}", stamps, l, skew);
            }
            prop_assert!(skew.keys().all(|d| d.starts_with('l')), "{:?}", skew);
            if workers == 1 {
                let model = normalise(reference::model("memory", &input, &cfg));
                prop_assert!(normalise(with) == model, "{:?}: the dataflow and the model differ", stamps);
            }
        }
    }
}

/// The case: one device four minutes ahead (its records stamped by a gateway with a good
/// clock) among twenty honest devices reporting every second on one partition. Before the clock
/// truth, 2,980 of the 3,000 readings that followed were late.
#[test]
fn a_fast_clock_makes_no_honest_reading_late_and_is_itself_retimed() {
    let fleet: Vec<Honest> = (0..20)
        .map(|_| Honest {
            interval: 1_000,
            marks: vec![(false, 0, None, None)],
        })
        .collect();
    let liar = Liar {
        partition: 0,
        offsets: vec![240_000],
    };
    let cfg = config(false);
    let out = run(&build(&fleet, &[liar], 1, Stamps::Gateway), &cfg, 1);
    let late = out
        .iter()
        .filter(
            |o| matches!(o, Output::DeadLetter(d) if d.reason == schemas::DeadLetterReason::Late),
        )
        .count();
    assert_eq!(late, 0);
    let skew = skewed(&out);
    let observed = skew.get("l0").copied().unwrap_or_default();
    assert!((observed - 240_000.0).abs() < 3_000.0, "{skew:?}");
    let retimed = out.iter().any(|o| {
        matches!(o, Output::Aggregate(a) if a.device_id == "l0"
            && a.clock_offset_ms.is_some_and(|c| (c - 240_000).abs() < 3_000))
    });
    assert!(retimed, "the liar's windows say they were re-timed");
}

/// Stopped part-way (as SIGTERM stops it) with liars in the stream, and resumed from its
/// checkpoint on another number of workers: the honest records of the two runs together are
/// those of the stream without liars, and the liars' offsets carried over.
#[test]
fn wrong_clocks_cost_nothing_across_a_restart_from_a_checkpoint() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    for _ in 0..3 {
        let Ok(tree) = case().new_tree(&mut runner) else {
            continue;
        };
        let (fleet, liars, partitions, stamps) = tree.current();
        let cfg = PipelineConfig {
            checkpoint_interval_ms: 1,
            ..config(stamps == Stamps::TrustedProducer)
        };
        let (want, _) = honest_part(&run(&build(&fleet, &[], partitions, stamps), &cfg, 1));
        let input = build(&fleet, &liars, partitions, stamps);
        let uninterrupted = run(&input, &cfg, 1);

        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::new(dir.path());
        let first = Collector::default();
        let stop = Arc::new(AtomicBool::new(false));
        let running = Job {
            stop: Arc::clone(&stop),
            checkpoints: Some(store.clone()),
            ..job(&input, &cfg, false, &first)
        };
        let handle = std::thread::spawn(move || pipeline::run(timely::Config::process(2), running));
        let deadline = Instant::now() + Duration::from_secs(60);
        while first.records().len() < uninterrupted.len() / 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(
            handle.join().is_ok_and(|r| r.is_ok()),
            "the first run stops"
        );
        let second = Collector::default();
        let resumed = Job {
            checkpoints: Some(store),
            ..job(&input, &cfg, true, &second)
        };
        assert!(pipeline::run(timely::Config::process(3), resumed).is_ok());

        let mut all: BTreeMap<String, Output> = BTreeMap::new();
        for r in first.records().into_iter().chain(second.records()) {
            all.insert(r.event_id().to_string(), r);
        }
        let all: Vec<Output> = all.into_values().collect();
        let (got, _) = honest_part(&all);
        assert!(
            got == want,
            "{stamps:?}: the honest records differ after the restart"
        );
        assert_eq!(
            skewed(&all),
            skewed(&uninterrupted),
            "{stamps:?}: the liars' anomalies"
        );
    }
}
