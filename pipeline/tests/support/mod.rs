//! What the case-by-case tests of the pipeline share: a bounded run of the dataflow over one
//! telemetry and one inventory partition in memory.

use std::sync::Arc;

use pipeline::output::Output;
use pipeline::sink::Collector;
use pipeline::source::memory::MemoryRecord;
use pipeline::{InputSpec, Job, PipelineConfig};
use schemas::Codec;

/// Runs the dataflow over one telemetry and one inventory partition, record times taken as the
/// truth: with a few devices in a partition, a consensus of their clocks would wait for the
/// silent ones.
pub fn run(telemetry: Vec<MemoryRecord>, inventory: Vec<MemoryRecord>) -> Vec<Output> {
    let collector = Collector::default();
    let cfg = PipelineConfig {
        out_of_orderness_ms: 1_000,
        trust_record_time: true,
        ..PipelineConfig::default()
    };
    let job = Job {
        clock: Arc::new(|| 0),
        ..Job::new(
            Arc::new(cfg),
            InputSpec::Memory {
                partitions: Arc::new(vec![telemetry]),
                inventory: Arc::new(vec![inventory]),
                bounded: true,
            },
            Arc::new(Codec::builtin()),
            collector.factory(),
        )
    };
    if let Err(e) = pipeline::run(timely::Config::thread(), job) {
        panic!("the dataflow failed: {e}");
    }
    collector.records()
}
