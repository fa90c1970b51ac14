//! What a device may cost: a reading over a size limit is a dead letter naming the field and
//! the limit, and nothing of it is kept; a device silent past the retention is retired, leaves
//! the state and its checkpoint, and is `first_seen` again on its next reading.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pipeline::checkpoint::Store;
use pipeline::clock::RecordTime;
use pipeline::output::Output;
use pipeline::sink::Collector;
use pipeline::source::memory::MemoryRecord;
use pipeline::{InputSpec, Job, PipelineConfig};
use schemas::{Codec, DeadLetterReason, DeviceStatus, Telemetry, TransitionReason};

const T0: i64 = 1_700_000_000_000;

fn job(
    input: Vec<Vec<MemoryRecord>>,
    cfg: PipelineConfig,
    bounded: bool,
    collector: &Collector,
) -> Job {
    Job {
        clock: Arc::new(|| 0),
        ..Job::new(
            Arc::new(cfg),
            InputSpec::Memory {
                partitions: Arc::new(input),
                inventory: Arc::default(),
                bounded,
            },
            Arc::new(Codec::builtin()),
            collector.factory(),
        )
    }
}

fn record(t: &Telemetry) -> MemoryRecord {
    MemoryRecord {
        headers: Vec::new(),
        record_time: RecordTime::Producer(t.ts),
        key: None,
        value: Codec::builtin().encode(t).unwrap_or_default(),
    }
}

fn reading(device: &str, ts: i64) -> Telemetry {
    Telemetry {
        device_id: device.into(),
        ts,
        ..Telemetry::example()
    }
}

/// Runs `input` as a live topic until `until` holds for what it emitted, then stops it (as
/// SIGTERM does) and returns the records, the devices of the checkpoint (tracked or with
/// readings pending) and its size.
fn run_and_stop(
    input: Vec<Vec<MemoryRecord>>,
    cfg: PipelineConfig,
    store: &Store,
    until: impl Fn(&[Output]) -> bool,
) -> (Vec<Output>, BTreeSet<String>, u64) {
    let collector = Collector::default();
    let stop = Arc::new(AtomicBool::new(false));
    let running = Job {
        stop: Arc::clone(&stop),
        checkpoints: Some(store.clone()),
        ..job(input, cfg, false, &collector)
    };
    let handle = std::thread::spawn(move || pipeline::run(timely::Config::process(2), running));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !until(&collector.records()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        handle.join().is_ok_and(|r| r.is_ok()),
        "the run stops cleanly"
    );
    let Some(Ok(engines)) = store.latest().map(|c| c.engines()) else {
        panic!("no checkpoint on stop");
    };
    let devices = engines
        .into_iter()
        .flat_map(|e| {
            let pending = e.pending.into_iter().map(|r| r.device_id.to_string());
            e.devices
                .into_iter()
                .map(|d| d.id().to_string())
                .chain(pending)
        })
        .collect();
    let bytes: u64 = std::fs::read_dir(store.dir())
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|g| std::fs::read_dir(g.path()).into_iter().flatten().flatten())
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum();
    (collector.records(), devices, bytes)
}

#[test]
fn each_oversized_field_is_a_dead_letter_naming_it_and_nothing_of_it_is_kept() {
    let mega = "x".repeat(1 << 20);
    let mut oversized: Vec<(&str, &str, MemoryRecord)> = Vec::new();
    let at = |i: i64| T0 + 5_000 + i * 100;
    let mut t = reading("dev-ok", at(0));
    t.tenant_id = mega[..300].to_string();
    oversized.push(("tenant_id", "id_bytes", record(&t)));
    oversized.push((
        "device_id",
        "id_bytes",
        record(&reading(&mega[..300], at(1))),
    ));
    let mut t = reading("dev-class", at(2));
    t.device_class = Some(mega[..257].to_string());
    oversized.push(("device_class", "id_bytes", record(&t)));
    let mut t = reading("dev-many", at(3));
    t.attributes = (0..1_000).map(|i| (i.to_string(), "v".into())).collect();
    oversized.push(("attributes", "limits.attributes)", record(&t)));
    let mut t = reading("dev-bytes", at(4));
    t.attributes = [("k".to_string(), mega[..70_000].to_string())].into();
    oversized.push(("attributes", "attribute_bytes", record(&t)));
    // Over the message limit before it is even decoded.
    let mut t = reading("dev-huge", at(5));
    t.attributes = (0..8)
        .map(|i| (i.to_string(), mega[..60_000].to_string()))
        .collect();
    let limits = schemas::Limits {
        attribute_bytes: 1 << 20,
        ..schemas::Limits::default()
    };
    oversized.push(("message", "message_bytes", record(&t)));

    let mut partition = Vec::new();
    for i in 0..60 {
        partition.push(record(&reading("dev-ok", T0 + i * 1_000)));
        if let Some((_, _, r)) = oversized.get(i as usize) {
            partition.push(r.clone());
        }
    }
    let cfg = PipelineConfig {
        limits,
        ..PipelineConfig::default()
    };
    // With the attribute bytes raised, the 70 kB attribute passes; it is checked on its own.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::new(dir.path());
    let (out, devices, bytes) = run_and_stop(vec![partition.clone()], cfg, &store, |out| {
        out.iter()
            .filter(|o| matches!(o, Output::DeadLetter(_)))
            .count()
            >= 5
    });
    let dead: Vec<(String, String)> = out
        .iter()
        .filter_map(|o| match o {
            Output::DeadLetter(d) => {
                assert_eq!(d.reason, DeadLetterReason::InvalidField, "{}", d.detail);
                Some((d.detail.clone(), d.event_id.clone()))
            }
            _ => None,
        })
        .collect();
    for (field, key, _) in oversized
        .iter()
        .filter(|(_, key, _)| *key != "attribute_bytes")
    {
        assert!(
            dead.iter()
                .any(|(detail, _)| detail.contains(&format!("`{field}`")) && detail.contains(key)),
            "no dead letter names {field} and {key}: {dead:?}"
        );
    }
    assert_eq!(
        devices,
        BTreeSet::from(["dev-bytes".to_string(), "dev-ok".to_string()]),
        "only readings within the limits are tracked"
    );
    assert!(bytes < 200_000, "the checkpoint holds {bytes} bytes");

    // With the default limits the 70 kB attribute is refused too.
    let out = {
        let collector = Collector::default();
        let bounded = job(vec![partition], PipelineConfig::default(), true, &collector);
        assert!(pipeline::run(timely::Config::thread(), bounded).is_ok());
        collector.records()
    };
    assert!(out.iter().any(|o| matches!(o, Output::DeadLetter(d)
        if d.detail.contains("`attributes`") && d.detail.contains("attribute_bytes"))));
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Status(s) if s.device_id == "dev-bytes"))
    );
}

#[test]
fn a_device_silent_past_retention_is_retired_forgotten_and_first_seen_again() {
    let cfg = PipelineConfig {
        windows_ms: vec![60_000],
        device_retention_ms: 120_000,
        checkpoint_interval_ms: 1,
        ..PipelineConfig::default()
    };
    assert_eq!(cfg.validate(), Ok(()));
    // `quiet` reports for 30 s and is silent for five minutes; `steady` moves event time on.
    let mut before = Vec::new();
    for i in 0..400 {
        let ts = T0 + i * 1_000;
        before.push(record(&reading("steady", ts)));
        if i < 30 {
            before.push(record(&reading("quiet", ts + 500)));
        }
    }
    let mut after = before.clone();
    for i in 400..420 {
        let ts = T0 + i * 1_000;
        after.push(record(&reading("steady", ts)));
        after.push(record(&reading("quiet", ts + 500)));
    }

    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::new(dir.path());
    let retired = |out: &[Output]| {
        out.iter().any(|o| {
            matches!(o, Output::Status(s) if s.device_id == "quiet"
                && s.reason == TransitionReason::Retired)
        })
    };
    let (first, devices, _) = run_and_stop(vec![before], cfg.clone(), &store, retired);
    let quiet: Vec<_> = first
        .iter()
        .filter_map(|o| match o {
            Output::Status(s) if s.device_id == "quiet" => Some(s.clone()),
            _ => None,
        })
        .collect();
    let last_seen = T0 + 29_500;
    let retire = quiet
        .iter()
        .find(|s| s.reason == TransitionReason::Retired)
        .expect("retired");
    assert_eq!(
        (retire.status, retire.previous, retire.ts, retire.last_seen),
        (
            DeviceStatus::Offline,
            Some(DeviceStatus::Offline),
            last_seen + 120_000,
            last_seen
        )
    );
    assert_eq!(
        devices,
        BTreeSet::from(["steady".to_string()]),
        "the retired device is gone from the checkpoint"
    );

    let second = Collector::default();
    let resumed = Job {
        checkpoints: Some(store),
        ..job(vec![after], cfg, true, &second)
    };
    assert!(pipeline::run(timely::Config::process(3), resumed).is_ok());
    let back = second
        .records()
        .into_iter()
        .find_map(|o| match o {
            Output::Status(s) if s.device_id == "quiet" => Some(s),
            _ => None,
        })
        .expect("quiet back");
    assert_eq!(
        (back.status, back.previous, back.reason, back.ts),
        (
            DeviceStatus::Online,
            None,
            TransitionReason::FirstSeen,
            T0 + 400_500
        )
    );
}
