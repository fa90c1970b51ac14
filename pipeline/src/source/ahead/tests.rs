//! Tests of [`super`]: records come in input order across batches, decoded; positions and
//! finished partitions follow what the worker took; a failing input is reported until it reads
//! again; a thread that stops for good says so.

use std::sync::Arc;

use schemas::{Codec, DeadLetterReason};

use super::*;
use crate::source::memory::{MemoryInput, MemoryRecord};

fn decoder() -> Decoder {
    Decoder::new(Codec::builtin(), None, schemas::Limits::default())
}

/// What the worker saw of one record: where, and the device or why it was unusable.
type Seen = (i32, i64, Result<String, DeadLetterReason>, Vec<u8>);

/// Polls `max` at a time until `seen` holds `n` records, noting how many it held when each
/// partition finished.
fn take(input: &mut Ahead, seen: &mut Vec<Seen>, n: usize, max: usize) -> Vec<(usize, i32)> {
    let mut finished = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < n && Instant::now() < deadline {
        input
            .poll(max, &mut |r| {
                let Payload::Checked { result, raw } = r.payload else {
                    panic!("not decoded ahead");
                };
                let device = result
                    .map(|item| match item {
                        Item::Reading(t) | Item::Report(t, _) => t.device_id.to_string(),
                        Item::Inventory(e) => e.device_id.to_string(),
                    })
                    .map_err(|e| e.0);
                seen.push((r.partition, r.offset, device, raw.to_vec()));
            })
            .unwrap();
        for p in input.take_finished() {
            finished.push((seen.len(), p));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    finished
}

#[test]
fn records_come_in_order_and_positions_follow_what_was_taken() {
    let mut p0: Vec<MemoryRecord> = (0..5_000).map(|i| MemoryRecord::json("a", i)).collect();
    p0[10].value = b"{not json".to_vec();
    let p1: Vec<MemoryRecord> = (0..3_000).map(|i| MemoryRecord::json("b", i)).collect();
    let partitions = Arc::new(vec![p0.clone(), p1]);
    let memory = MemoryInput::new(partitions, 0, 1, true, &Default::default());
    let mut input = Ahead::start(Box::new(memory), decoder()).unwrap();
    assert_eq!(input.partitions(), [0, 1]);
    assert!(input.bounded());
    assert_eq!(input.positions(), [(0, 0), (1, 0)]);

    let mut all = Vec::new();
    let finished = take(&mut input, &mut all, 100, 100);
    let seen = &all;
    assert_eq!(seen.len(), 100);
    assert!(finished.is_empty(), "nothing finished yet: {finished:?}");
    let last = |p: i32| seen.iter().filter(|s| s.0 == p).map(|s| s.1 + 1).max();
    let positions = input.positions();
    assert_eq!(positions[0], (0, last(0).unwrap()));
    assert_eq!(positions[1].1, last(1).unwrap_or(0));

    let finished = take(&mut input, &mut all, 8_000, 1_000);
    assert_eq!(all.len(), 8_000);
    for p in [0, 1] {
        let offsets: Vec<i64> = all.iter().filter(|s| s.0 == p).map(|s| s.1).collect();
        let n = if p == 0 { 5_000 } else { 3_000 };
        assert_eq!(
            offsets,
            (0..n).collect::<Vec<i64>>(),
            "partition {p} in order"
        );
    }
    let bad = all.iter().find(|s| s.0 == 0 && s.1 == 10).unwrap();
    assert_eq!(bad.2, Err(DeadLetterReason::Undecodable));
    assert_eq!(bad.3, b"{not json", "the dead letter keeps the raw value");
    let good = all.iter().find(|s| s.0 == 0 && s.1 == 11).unwrap();
    assert_eq!(good.2, Ok("a".to_string()));
    assert_eq!(good.3, p0[11].value);
    let mut ends: Vec<i32> = finished.iter().map(|(_, p)| *p).collect();
    ends.sort_unstable();
    assert_eq!(ends, [0, 1]);
    // A partition finishes once its last record was taken, not when the thread read it.
    for (taken, p) in finished {
        let n = if p == 0 { 5_000 } else { 3_000 };
        let before = all[..taken].iter().filter(|s| s.0 == p).count();
        assert_eq!(before, n, "partition {p} finished after all its records");
    }
    assert_eq!(input.positions(), [(0, 5_000), (1, 3_000)]);
}

/// An input that fails `failures` times, then gives one record, then fails for good.
struct Failing {
    failures: usize,
    gave: bool,
    partitions: Vec<i32>,
}

impl Input for Failing {
    fn topic(&self) -> &str {
        "failing"
    }

    fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    fn bounded(&self) -> bool {
        false
    }

    fn poll(
        &mut self,
        _: usize,
        each: &mut dyn FnMut(RawRecord<'_>),
    ) -> Result<usize, SourceError> {
        if self.failures > 0 {
            self.failures -= 1;
            return Err(SourceError::NoTopic("failing".into()));
        }
        if self.gave {
            return Err(SourceError::File {
                path: "failing".into(),
                detail: "gone for good".into(),
            });
        }
        self.gave = true;
        let value = MemoryRecord::json("a", 1).value;
        each(RawRecord {
            partition: 0,
            offset: 7,
            record_time: RecordTime::None,
            key: Some(b"k"),
            stamp: Default::default(),
            payload: Payload::Wire(&value),
        });
        Ok(1)
    }

    fn take_finished(&mut self) -> Vec<i32> {
        Vec::new()
    }

    fn positions(&self) -> Vec<(i32, i64)> {
        vec![(0, if self.gave { 8 } else { 0 })]
    }
}

#[test]
fn a_failing_input_is_reported_until_it_reads_again_and_a_fatal_error_stays() {
    let failing = Failing {
        failures: 2,
        gave: false,
        partitions: vec![0],
    };
    let mut input = Ahead::start(Box::new(failing), decoder()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut errors = Vec::new();
    let mut keys = Vec::new();
    while keys.is_empty() && Instant::now() < deadline {
        match input.poll(10, &mut |r| keys.push(r.key.map(<[u8]>::to_vec))) {
            Ok(_) => {}
            Err(e) => errors.push(e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(keys, [Some(b"k".to_vec())], "the record after the failures");
    assert!(
        errors.iter().any(|e| e.contains("does not exist")),
        "the failures were reported: {errors:?}"
    );
    assert_eq!(input.positions(), [(0, 8)]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let fatal = loop {
        match input.poll(10, &mut |_| panic!("no more records")) {
            Err(e) if !e.is_retryable() => break Some(e),
            _ if Instant::now() > deadline => break None,
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    assert!(fatal.is_some_and(|e| e.to_string().contains("gone for good")));
    let again = input.poll(10, &mut |_| panic!("no more records"));
    assert!(
        again.is_err_and(|e| !e.is_retryable()),
        "a thread that stopped for good stays failed"
    );
}

#[test]
fn dropping_it_stops_a_thread_that_waits_on_a_full_channel() {
    let records: Vec<MemoryRecord> = (0..100_000).map(|i| MemoryRecord::json("a", i)).collect();
    let memory = MemoryInput::new(Arc::new(vec![records]), 0, 1, false, &Default::default());
    let input = Ahead::start(Box::new(memory), decoder()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(input);
}
