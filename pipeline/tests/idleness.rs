//! Idleness on an injected clock: a topic that stops receiving data still closes its windows and
//! declares its devices offline once the wall clock passes the idle timeout, with the reason
//! `input_idle`; and not before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use pipeline::clock::RecordTime;
use pipeline::output::Output;
use pipeline::sink::Collector;
use pipeline::source::memory::MemoryRecord;
use pipeline::{InputSpec, Job, PipelineConfig};
use schemas::{Codec, DeviceStatus, Telemetry, TransitionReason};

const T0: i64 = 1_700_000_000_000;

fn wait_for(collector: &Collector, what: impl Fn(&[Output]) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if what(&collector.records()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn an_idle_input_follows_the_clock_and_says_so() {
    let codec = Codec::builtin();
    // Partition 0: one device, 30 s of readings; partition 1: nothing, ever.
    let readings: Vec<MemoryRecord> = (0..30)
        .map(|i| {
            let t = Telemetry {
                ts: T0 + i * 1_000,
                ..Telemetry::example()
            };
            MemoryRecord {
                headers: Vec::new(),
                record_time: RecordTime::Producer(t.ts),
                key: None,
                value: codec.encode(&t).expect("encodes"),
            }
        })
        .collect();
    let clock = Arc::new(AtomicI64::new(T0 + 30_000));
    let stop = Arc::new(AtomicBool::new(false));
    let collector = Collector::default();
    let now = Arc::clone(&clock);
    let job = Job {
        clock: Arc::new(move || now.load(Ordering::Relaxed)),
        stop: Arc::clone(&stop),
        ..Job::new(
            Arc::new(PipelineConfig::default()),
            InputSpec::Memory {
                partitions: Arc::new(vec![readings, Vec::new()]),
                inventory: Arc::default(),
                bounded: false,
            },
            Arc::new(Codec::builtin()),
            collector.factory(),
        )
    };
    let run = std::thread::spawn(move || pipeline::run(timely::Config::process(2), job));

    // The clock stands still: the empty partition holds the frontier back, nothing is released
    // but the last-seen times announced as the readings arrived (every 5 s of them).
    std::thread::sleep(Duration::from_millis(500));
    let early: Vec<i64> = collector
        .records()
        .iter()
        .map(|o| match o {
            Output::LastSeen(l) => l.last_seen - T0,
            other => panic!("released while the clock stands still: {other:?}"),
        })
        .collect();
    assert_eq!(early, [0, 5_000, 10_000, 15_000, 20_000, 25_000]);

    // Ten minutes later on the wall clock both partitions are idle and follow it.
    clock.store(T0 + 600_000, Ordering::Relaxed);
    let offline = |v: &[Output]| {
        v.iter().any(|o| {
            matches!(o, Output::Status(s) if s.status == DeviceStatus::Offline
                && s.reason == TransitionReason::InputIdle
                && s.ts == T0 + 29_000 + 60_000)
        })
    };
    assert!(
        wait_for(&collector, offline),
        "the device went offline, input_idle"
    );
    let windows = collector
        .0
        .lock()
        .map(|v| {
            v.iter()
                .filter(|o| matches!(o, Output::Aggregate(_)))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(windows, 2, "its 1 min and 5 min windows closed");
    stop.store(true, Ordering::Relaxed);
    assert!(run.join().is_ok_and(|r| r.is_ok()));
}
