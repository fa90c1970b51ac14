//! Stop and resume: a job stopped at an arbitrary moment (as SIGTERM stops it) writes a
//! checkpoint; a job started from it, even with another number of workers, finishes the input;
//! together they emit exactly what one uninterrupted run emits, and nothing twice (but a
//! last-seen time a device repeats after telling an older one, as any run may). A job that
//! dies instead resumes from the last checkpoint it cut while running: it repeats some records,
//! each exactly as before, and loses none. The input has an inventory beside the telemetry:
//! devices registered with an interval, registered devices that never report, decommissioned
//! ones.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use generator::{Fleet, GeneratorConfig, MessageFormat};
use pipeline::checkpoint::Store;
use pipeline::clock::RecordTime;
use pipeline::output::Output;
use pipeline::reading::route;
use pipeline::sink::Collector;
use pipeline::source::memory::MemoryRecord;
use pipeline::{InputSpec, Job, PipelineConfig};
use schemas::{Codec, Registration, TransitionReason};

const START_MS: i64 = 1_700_000_000_000;

/// The telemetry's partitions and the inventory's.
#[derive(Clone)]
struct Input {
    telemetry: Arc<Vec<Vec<MemoryRecord>>>,
    inventory: Arc<Vec<Vec<MemoryRecord>>>,
}

/// A fleet's messages on three partitions, keyed by device as a producer would put them, and
/// an inventory on two: a fifth of the devices registered over the first minute (every other
/// one with an expected interval), a tenth of them decommissioned half-way, and ten devices
/// that never report, the last registered at the end of the input, so that the inventory never
/// holds the frontier back on a clock that does not move.
fn input() -> Input {
    let fleet = GeneratorConfig {
        devices: 150,
        events: 30_000,
        start_ms: Some(START_MS),
        silence_rate: 0.003,
        ..GeneratorConfig::default()
    };
    let codec = Codec::builtin();
    let mut partitions = vec![Vec::new(); 3];
    let mut devices = BTreeMap::new();
    let mut end = START_MS;
    for event in Fleet::new(&fleet, START_MS).take(fleet.events as usize) {
        end = end.max(event.record_ts);
        if let generator::Body::Reading(t) = &event.body {
            devices
                .entry((t.tenant_id.clone(), t.device_id.clone()))
                .or_insert_with(|| t.device_class.clone());
        }
        let mut value = Vec::new();
        if generator::encode(&event, MessageFormat::Avro, &codec, &mut value).is_err() {
            continue;
        }
        partitions[(route(&event.key) % 3) as usize].push(MemoryRecord {
            headers: Vec::new(),
            record_time: RecordTime::Producer(event.record_ts),
            key: None,
            value,
        });
    }
    let mut inventory = vec![Vec::new(); 2];
    let mut write = |r: Option<&Registration>, tenant: &str, device: &str, at: i64| {
        inventory[(at / 1_000 % 2) as usize].push(MemoryRecord {
            headers: Vec::new(),
            record_time: RecordTime::Producer(at),
            key: serde_json::to_vec(&[tenant, device]).ok(),
            value: r.map_or(Vec::new(), |r| codec.encode(r).unwrap_or_default()),
        });
    };
    let half = START_MS + (end - START_MS) / 2;
    for (i, ((tenant, device), class)) in devices.iter().enumerate().step_by(5) {
        let r = Registration {
            device_class: class.clone(),
            expected_interval_ms: (i % 2 == 0).then_some(5_000),
            ..Registration::new(tenant, device)
        };
        write(Some(&r), tenant, device, START_MS + i as i64 * 400);
        if i % 10 == 0 {
            write(None, tenant, device, half + i as i64);
        }
    }
    for g in 0..10 {
        let (tenant, device) = (format!("tenant-{}", g % 3), format!("ghost-{g}"));
        let at = if g == 9 { end } else { START_MS + g * 3_000 };
        write(
            Some(&Registration::new(&tenant, &device)),
            &tenant,
            &device,
            at,
        );
    }
    for p in &mut inventory {
        p.sort_by_key(|r| r.record_time.millis());
    }
    Input {
        telemetry: Arc::new(partitions),
        inventory: Arc::new(inventory),
    }
}

fn job(input: &Input, bounded: bool, collector: &Collector) -> Job {
    Job {
        // Frozen: no partition ever goes idle, so the output is a function of the input.
        clock: Arc::new(|| 0),
        ..Job::new(
            Arc::new(PipelineConfig::default()),
            InputSpec::Memory {
                partitions: Arc::clone(&input.telemetry),
                inventory: Arc::clone(&input.inventory),
                bounded,
            },
            Arc::new(Codec::builtin()),
            collector.factory(),
        )
    }
}

fn ids(records: &[Output]) -> Vec<String> {
    records.iter().map(|o| o.event_id().to_string()).collect()
}

/// Records by id, a repeated last-seen time once: whether a device repeats one depends on when
/// the newer reading arrived (see `pipeline::lastseen`).
fn distinct(mut records: Vec<Output>) -> Vec<Output> {
    records.sort_by(|x, y| x.event_id().cmp(y.event_id()));
    records.dedup_by(|b, a| matches!(a, Output::LastSeen(_)) && a.event_id() == b.event_id());
    records
}

#[test]
fn a_stopped_job_resumes_from_its_checkpoint_without_loss_or_repeats() {
    let input = input();
    let whole = Collector::default();
    let reference = job(&input, true, &whole);
    assert!(pipeline::run(timely::Config::process(2), reference).is_ok());
    let want = ids(&distinct(whole.records()));
    assert!(want.len() > 1_000);
    for reason in [
        TransitionReason::NeverSeen,
        TransitionReason::Decommissioned,
    ] {
        let seen = whole
            .records()
            .iter()
            .any(|o| matches!(o, Output::Status(s) if s.reason == reason));
        assert!(seen, "no {reason:?} in the uninterrupted run");
    }

    let dir = tempfile::tempdir().expect("a temporary directory");
    for stop_after in [want.len() / 5, want.len() / 2] {
        let store = Store::new(&dir.path().join(format!("at-{stop_after}")));
        // First run: reads as a live topic and is stopped once it has emitted `stop_after`.
        let first = Collector::default();
        let stop = Arc::new(AtomicBool::new(false));
        let running = Job {
            stop: Arc::clone(&stop),
            checkpoints: Some(store.clone()),
            ..job(&input, false, &first)
        };
        let handle = std::thread::spawn(move || pipeline::run(timely::Config::process(2), running));
        let deadline = Instant::now() + Duration::from_secs(60);
        while first.records().len() < stop_after && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(
            handle.join().is_ok_and(|r| r.is_ok()),
            "the first run stops cleanly"
        );
        assert!(store.latest().is_some(), "and leaves a checkpoint");

        // Second run: three workers this time, from the checkpoint to the end of the input.
        let second = Collector::default();
        let resumed = Job {
            checkpoints: Some(store.clone()),
            ..job(&input, true, &second)
        };
        assert!(pipeline::run(timely::Config::process(3), resumed).is_ok());

        let (a, b) = (ids(&first.records()), ids(&second.records()));
        let repeated: Vec<_> = a
            .iter()
            .filter(|id| b.contains(id) && !id.starts_with("lastseen/"))
            .take(5)
            .collect();
        assert!(repeated.is_empty(), "emitted twice: {repeated:?}");
        let mut all = first.records();
        all.extend(second.records());
        let all = distinct(all);
        let got = ids(&all);
        let (g, w): (BTreeSet<_>, BTreeSet<_>) = (got.iter().collect(), want.iter().collect());
        let missing: Vec<_> = w.difference(&g).take(5).collect();
        let extra: Vec<_> = g.difference(&w).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty() && got.len() == want.len(),
            "stopped after {stop_after}: missing {missing:?}, extra {extra:?}"
        );
        // Same ids, and the same records: the payloads agree too.
        let reference = distinct(whole.records());
        assert!(
            all == reference,
            "stopped after {stop_after}: a payload differs"
        );
    }
}

/// The checkpoint generations in `dir`.
fn generations(dir: &std::path::Path) -> BTreeSet<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// Runs `job` until it has emitted `records` (or emits nothing more: it has caught up) and, if
/// `cut`, written a new checkpoint into `dir` (or five seconds passed: a job that has read
/// everything takes no more cuts), then stops it.
fn run_until(job: Job, collector: &Collector, records: usize, cut: bool, dir: &std::path::Path) {
    let before = generations(dir);
    let stop = Arc::clone(&job.stop);
    let handle = std::thread::spawn(move || pipeline::run(timely::Config::process(2), job));
    let deadline = Instant::now() + Duration::from_secs(5);
    let new_cut = || !cut || generations(dir).difference(&before).next().is_some();
    let (mut seen, mut since) = (0, Instant::now());
    loop {
        let now = collector.records().len();
        if now != seen {
            (seen, since) = (now, Instant::now());
        }
        let enough = now >= records || since.elapsed() > Duration::from_millis(300);
        if (enough && new_cut()) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        handle.join().is_ok_and(|r| r.is_ok()),
        "the run stops cleanly"
    );
}

/// How a life of the crash test ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Life {
    /// Killed once it emitted this many records and cut a checkpoint.
    Crash(usize),
    /// Stopped (SIGTERM) before it does anything.
    StopAtStart,
    /// Stopped (SIGTERM) once it emitted something.
    Stop,
    /// Reads the input to its end.
    Finish,
}

#[test]
fn a_crashed_job_resumes_from_its_last_cut_and_repeats_only_identical_records() {
    let input = input();
    let whole = Collector::default();
    assert!(pipeline::run(timely::Config::process(2), job(&input, true, &whole)).is_ok());
    let reference: BTreeMap<String, Output> = whole
        .records()
        .into_iter()
        .map(|o| (o.event_id().to_string(), o))
        .collect();

    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::new(dir.path());
    let cfg = Arc::new(PipelineConfig {
        checkpoint_interval_ms: 1,
        ..PipelineConfig::default()
    });
    let mut emitted = Vec::new();
    let mut resumed: Option<i64> = None;
    // Lives that die (their checkpoint on stop is thrown away, as a SIGKILL would leave none,
    // and the next starts from the last cut they took while running), lives stopped at once
    // (before passing the cut they resumed from, or soon after start; the next starts from
    // their stop checkpoint), and a last one that reads to the end.
    let quarter = reference.len() / 4;
    let lives = [
        Life::Crash(quarter),
        Life::StopAtStart,
        Life::Stop,
        Life::Crash(quarter),
        Life::Stop,
        Life::Finish,
    ];
    for (life, kind) in lives.into_iter().enumerate() {
        let collector = Collector::default();
        let running = Job {
            cfg: Arc::clone(&cfg),
            checkpoints: Some(store.clone()),
            ..job(&input, kind == Life::Finish, &collector)
        };
        if kind == Life::Finish {
            assert!(pipeline::run(timely::Config::process(3), running).is_ok());
        } else {
            let crash = if kind == Life::StopAtStart {
                running.stop.store(true, Ordering::Relaxed);
                assert!(pipeline::run(timely::Config::process(2), running).is_ok());
                false
            } else {
                let (records, crash) = match kind {
                    Life::Crash(records) => (records, true),
                    _ => (1, false),
                };
                run_until(running, &collector, records, crash, dir.path());
                crash
            };
            if crash {
                // The newest generation is the one written on stop (`latest` would prune the
                // rest).
                let newest = generations(dir.path()).pop_last().expect("checkpoints");
                std::fs::remove_dir_all(newest).expect("the stop checkpoint removed");
            }
            // A resumed run never cuts before the state it resumed from: that state is already
            // past it.
            for g in generations(dir.path()) {
                let name = g.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let number = name.trim_start_matches("gen-").parse().unwrap_or(0);
                if let Ok(c) = store.load(number) {
                    assert!(
                        c.cut() >= resumed,
                        "life {life} cut at {:?} < {resumed:?}",
                        c.cut()
                    );
                }
            }
            resumed = store.latest().and_then(|c| c.cut());
            assert!(
                resumed.is_some(),
                "life {life} leaves a checkpoint that remembers the cut"
            );
        }
        emitted.extend(collector.records());
    }

    let mut seen: BTreeMap<String, Output> = BTreeMap::new();
    let mut repeated = 0;
    for o in emitted {
        let id = o.event_id().to_string();
        if let Some(before) = seen.get(&id) {
            assert!(*before == o, "{id} emitted with two payloads");
            repeated += 1;
        }
        seen.insert(id, o);
    }
    assert!(repeated > 0, "a resumed run repeats what followed its cut");
    let missing: Vec<_> = reference
        .keys()
        .filter(|k| !seen.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = seen
        .keys()
        .filter(|k| !reference.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert!(
        seen == reference,
        "a payload differs from the uninterrupted run"
    );
}
