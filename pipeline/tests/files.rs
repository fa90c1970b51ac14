//! File replay: an Avro object container file and an NDJSON file of the same fleet give the same
//! outputs (the malformed messages, which the two formats break differently, give dead letters
//! at the same positions).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use generator::{FileSink, GeneratorConfig};
use pipeline::output::Output;
use pipeline::sink::Collector;
use pipeline::{InputSpec, Job, PipelineConfig};
use schemas::Codec;

fn replay(path: &Path) -> Vec<Output> {
    let collector = Collector::default();
    let job = Job::new(
        Arc::new(PipelineConfig::default()),
        InputSpec::File(path.to_path_buf()),
        Arc::new(Codec::builtin()),
        collector.factory(),
    );
    if let Err(e) = pipeline::run(timely::Config::process(2), job) {
        panic!("the replay of {} failed: {e}", path.display());
    }
    let mut out = collector.records();
    for o in &mut out {
        if let Output::DeadLetter(d) = o {
            // Where it came from and how the format broke it differ; the position does not.
            *d = schemas::DeadLetter {
                source_topic: String::new(),
                raw: Vec::new(),
                detail: String::new(),
                reason: schemas::DeadLetterReason::Undecodable,
                event_id: pipeline::event_id::dead_letter("file", 0, d.source_offset),
                ..d.clone()
            };
        }
    }
    out.sort_by(|a, b| a.event_id().cmp(b.event_id()));
    out
}

#[test]
fn avro_and_ndjson_files_of_one_fleet_give_the_same_outputs() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fleet = GeneratorConfig {
        devices: 200,
        events: 20_000,
        start_ms: Some(1_700_000_000_000),
        silence_rate: 0.003,
        malformed_fraction: 0.01,
        ..GeneratorConfig::default()
    };
    let stop = AtomicBool::new(false);
    for name in ["fleet.avro", "fleet.ndjson"] {
        let mut sink = FileSink::create(&dir.path().join(name)).expect("a file sink");
        generator::run(&fleet, &mut sink, &stop, false).expect("the fleet is written");
    }
    let avro = replay(&dir.path().join("fleet.avro"));
    let ndjson = replay(&dir.path().join("fleet.ndjson"));
    let dead = avro
        .iter()
        .filter(|o| matches!(o, Output::DeadLetter(_)))
        .count();
    assert!(dead > 100, "malformed, late and future readings: {dead}");
    assert!(avro.iter().any(|o| matches!(o, Output::Anomaly(_))));
    assert_eq!(avro.len(), ndjson.len());
    for (a, n) in avro.iter().zip(&ndjson) {
        assert_eq!(a, n);
    }
}
