//! An in-memory input: partitions of records held in memory, for tests that must not depend on a
//! broker. Bounded (each partition ends after its last record) or, to exercise idleness, not.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Input, Payload, RawRecord, SourceError, Stamp};
use crate::clock::RecordTime;

/// One record of an in-memory partition.
#[derive(Debug, Clone)]
pub struct MemoryRecord {
    /// Record timestamp, and who stamped it.
    pub record_time: RecordTime,
    /// Key (inventory records are keyed by their device, and a tombstone is only its key).
    pub key: Option<Vec<u8>>,
    /// Wire bytes.
    pub value: Vec<u8>,
    /// Headers, by name; those fleetpulse reads are taken as a Kafka record's are.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl MemoryRecord {
    /// What fleetpulse reads of the record's headers.
    fn stamp(&self) -> Stamp<'_> {
        let mut stamp = Stamp::default();
        for (name, value) in &self.headers {
            let value = Some(value.as_slice());
            match name.as_str() {
                schemas::headers::TENANT => stamp.tenant = value,
                schemas::headers::DEVICE => stamp.device = value,
                schemas::headers::AVAILABILITY => stamp.availability = value,
                _ => {}
            }
        }
        stamp
    }
}

#[cfg(test)]
impl MemoryRecord {
    /// A JSON reading of `device` at `ts` (the example's other fields), with no record time.
    pub(crate) fn json(device: &str, ts: i64) -> MemoryRecord {
        let t = schemas::Telemetry {
            device_id: device.into(),
            ts,
            ..schemas::Telemetry::example()
        };
        MemoryRecord {
            headers: Vec::new(),
            record_time: RecordTime::None,
            key: None,
            value: serde_json::to_vec(&t).unwrap_or_default(),
        }
    }
}

/// A worker's share of in-memory partitions (partition `p` belongs to worker `p % peers`).
pub struct MemoryInput {
    topic: &'static str,
    partitions: Arc<Vec<Vec<MemoryRecord>>>,
    mine: Vec<i32>,
    next: Vec<usize>,
    finished: Vec<i32>,
    reported: Vec<bool>,
    bounded: bool,
}

impl MemoryInput {
    /// The share of worker `index` of `peers`; an unbounded input never ends, like a topic.
    pub fn new(
        partitions: Arc<Vec<Vec<MemoryRecord>>>,
        index: usize,
        peers: usize,
        bounded: bool,
        start: &HashMap<i32, i64>,
    ) -> MemoryInput {
        let mine: Vec<i32> = (0..partitions.len())
            .filter(|p| p % peers.max(1) == index)
            .filter_map(|p| i32::try_from(p).ok())
            .collect();
        let n = mine.len();
        let next = mine
            .iter()
            .map(|p| start.get(p).map_or(0, |o| usize::try_from(*o).unwrap_or(0)))
            .collect();
        MemoryInput {
            topic: "memory",
            partitions,
            mine,
            next,
            finished: Vec::new(),
            reported: vec![false; n],
            bounded,
        }
    }
}

impl MemoryInput {
    /// The input under another topic name (for dead letters).
    pub fn named(self, topic: &'static str) -> MemoryInput {
        MemoryInput { topic, ..self }
    }
}

impl Input for MemoryInput {
    fn topic(&self) -> &str {
        self.topic
    }

    fn partitions(&self) -> &[i32] {
        &self.mine
    }

    fn bounded(&self) -> bool {
        self.bounded
    }

    /// Reads partitions round-robin, a few records at a time, so they interleave.
    fn poll(
        &mut self,
        max: usize,
        each: &mut dyn FnMut(RawRecord<'_>),
    ) -> Result<usize, SourceError> {
        const CHUNK: usize = 7;
        let mut taken = 0;
        while taken < max {
            let mut progressed = false;
            for (i, p) in self.mine.iter().enumerate() {
                let records = &self.partitions[*p as usize];
                let end = (self.next[i] + CHUNK).min(records.len());
                for (offset, r) in records.iter().enumerate().take(end).skip(self.next[i]) {
                    each(RawRecord {
                        partition: *p,
                        offset: offset as i64,
                        record_time: r.record_time,
                        key: r.key.as_deref(),
                        stamp: r.stamp(),
                        payload: Payload::Wire(&r.value),
                    });
                    taken += 1;
                    progressed = true;
                }
                self.next[i] = end;
                if self.bounded && end == records.len() && !self.reported[i] {
                    self.reported[i] = true;
                    self.finished.push(*p);
                }
            }
            if !progressed {
                break;
            }
        }
        Ok(taken)
    }

    fn take_finished(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.finished)
    }

    fn positions(&self) -> Vec<(i32, i64)> {
        self.mine
            .iter()
            .zip(&self.next)
            .map(|(p, n)| (*p, *n as i64))
            .collect()
    }
}
