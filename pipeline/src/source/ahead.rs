//! Read-ahead: a worker's input is read, and each record decoded and checked, on a thread of its
//! own, so the worker's thread spends its time in the dataflow. Reading and decoding are a third
//! of a job's time and need nothing the dataflow holds; judging a record by its partition's
//! clock stays with the worker, in source order (Flink's Kafka source reads on a fetcher thread
//! for the same reason).
//!
//! The thread hands over batches of decoded records (ids held inline, no allocation per record)
//! with the bytes their dead letters would keep, through a channel of a few batches: a worker
//! that falls behind stops the thread, which stops reading. Spent batches go back to be filled
//! again. Positions and finished partitions follow the records the worker has taken, not the
//! ones read ahead, so a checkpoint or the end of a bounded input is where the worker is.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use compact_str::CompactString;
use schemas::retry::{Backoff, Delays, Retryable};
use schemas::{AttributeCount, TelemetryRef};

use super::decoder::{Decoder, Enrolment, Item, Unusable};
use super::joined::is_inventory;
use super::{Input, Payload, RawRecord, SourceError};
use crate::clock::RecordTime;

/// Records the thread reads into one batch at most.
const BATCH: usize = 4_096;
/// Batches read ahead of the worker at most.
const AHEAD: usize = 4;
/// How long the thread waits before reading again when the input had nothing.
const IDLE: Duration = Duration::from_millis(5);

/// A decoded record that owns its ids.
#[derive(Debug)]
enum Decoded {
    Reading(Owned),
    Report(Owned, bool),
    Inventory(Enrolment),
}

impl Decoded {
    fn of(item: &Item<'_>) -> Decoded {
        match item {
            Item::Reading(t) => Decoded::Reading(Owned::of(t)),
            Item::Report(t, online) => Decoded::Report(Owned::of(t), *online),
            Item::Inventory(e) => Decoded::Inventory(e.clone()),
        }
    }

    fn as_ref(&self) -> Item<'_> {
        match self {
            Decoded::Reading(t) => Item::Reading(t.as_ref()),
            Decoded::Report(t, online) => Item::Report(t.as_ref(), *online),
            Decoded::Inventory(e) => Item::Inventory(e.clone()),
        }
    }
}

/// A decoded reading that owns its ids, inline up to 24 bytes.
#[derive(Debug)]
struct Owned {
    tenant_id: CompactString,
    device_id: CompactString,
    device_class: Option<CompactString>,
    error_code: Option<CompactString>,
    ts: i64,
    response_time_ms: Option<f64>,
    ok: bool,
    battery_pct: Option<f64>,
    signal_dbm: Option<f64>,
    attributes: AttributeCount,
}

impl Owned {
    fn of(t: &TelemetryRef<'_>) -> Owned {
        let inline = |s: &str| CompactString::from(s);
        Owned {
            tenant_id: inline(&t.tenant_id),
            device_id: inline(&t.device_id),
            device_class: t.device_class.as_deref().map(inline),
            error_code: t.error_code.as_deref().map(inline),
            ts: t.ts,
            response_time_ms: t.response_time_ms,
            ok: t.ok,
            battery_pct: t.battery_pct,
            signal_dbm: t.signal_dbm,
            attributes: t.attributes,
        }
    }

    fn as_ref(&self) -> TelemetryRef<'_> {
        use std::borrow::Cow::Borrowed;
        TelemetryRef {
            tenant_id: Borrowed(&self.tenant_id),
            device_id: Borrowed(&self.device_id),
            ts: self.ts,
            response_time_ms: self.response_time_ms,
            ok: self.ok,
            error_code: self.error_code.as_deref().map(Borrowed),
            battery_pct: self.battery_pct,
            signal_dbm: self.signal_dbm,
            device_class: self.device_class.as_deref().map(Borrowed),
            attributes: self.attributes,
        }
    }
}

/// One record read ahead; its key and raw value are ranges of its batch's bytes.
#[derive(Debug)]
struct Record {
    partition: i32,
    offset: i64,
    record_time: RecordTime,
    key: Option<Range<usize>>,
    raw: Range<usize>,
    result: Result<Decoded, Unusable>,
}

/// What one read of the input gave.
#[derive(Debug, Default)]
struct Batch {
    records: Vec<Record>,
    bytes: Vec<u8>,
    /// The input's positions after this read.
    positions: Vec<(i32, i64)>,
    /// Partitions this read finished.
    finished: Vec<i32>,
    /// The read failed (and gave no record).
    error: Option<SourceError>,
}

impl Batch {
    fn push(&mut self, rec: RawRecord<'_>, decoder: &mut Decoder) {
        let (result, raw) =
            decoder.check(is_inventory(rec.partition), rec.key, rec.stamp, rec.payload);
        let mut keep = |bytes: &[u8]| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(bytes);
            start..self.bytes.len()
        };
        let key = rec.key.map(&mut keep);
        let raw = keep(raw);
        self.records.push(Record {
            partition: rec.partition,
            offset: rec.offset,
            record_time: rec.record_time,
            key,
            raw,
            result: result.map(|item| Decoded::of(&item)),
        });
    }

    fn clear(&mut self) {
        self.records.clear();
        self.bytes.clear();
        self.positions.clear();
        self.finished.clear();
        self.error = None;
    }
}

/// A worker's input, read on a thread of its own.
pub struct Ahead {
    topic: String,
    inventory_topic: Option<String>,
    partitions: Vec<i32>,
    bounded: bool,
    batches: Receiver<Batch>,
    spent: SyncSender<Batch>,
    /// The batch being taken, and how much of it is.
    current: Batch,
    taken: usize,
    /// Where the input stood after the last batch taken whole.
    positions: BTreeMap<i32, i64>,
    /// Partitions finished by the batches taken whole, not yet asked for.
    finished: Vec<i32>,
    /// The last read failed, and none has succeeded since.
    failing: Option<SourceError>,
    thread: Option<JoinHandle<()>>,
}

impl Ahead {
    /// Starts reading `input` ahead, decoding with `decoder`.
    pub fn start(input: Box<dyn Input + Send>, decoder: Decoder) -> Result<Ahead, SourceError> {
        let (to_worker, batches) = sync_channel(AHEAD);
        let (spent, returned) = sync_channel(AHEAD + 1);
        let topic = input.topic().to_string();
        let inventory_topic = input.inventory_topic().map(str::to_string);
        let partitions = input.partitions().to_vec();
        let bounded = input.bounded();
        let positions = input.positions().into_iter().collect();
        let thread = std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || read(input, decoder, &to_worker, &returned))
            .map_err(|e| SourceError::Ahead(e.to_string()))?;
        Ok(Ahead {
            topic,
            inventory_topic,
            partitions,
            bounded,
            batches,
            spent,
            current: Batch::default(),
            taken: 0,
            positions,
            finished: Vec::new(),
            failing: None,
            thread: Some(thread),
        })
    }

    /// Makes the next batch current, if one is there; `Err` when the read failed or the thread
    /// is gone.
    fn next_batch(&mut self) -> Result<bool, SourceError> {
        let batch = match self.batches.try_recv() {
            Ok(batch) => batch,
            Err(TryRecvError::Empty) => return self.failing.clone().map_or(Ok(false), Err),
            Err(TryRecvError::Disconnected) => return self.ended(),
        };
        let mut spent = std::mem::replace(&mut self.current, batch);
        spent.clear();
        // The thread is gone when this fails; the next read says so.
        let _ = self.spent.try_send(spent);
        self.taken = 0;
        self.settle();
        match self.current.error.take() {
            Some(e) => {
                self.failing = Some(e.clone());
                Err(e)
            }
            None => {
                self.failing = None;
                Ok(true)
            }
        }
    }

    /// Once every record of the current batch is taken, the input's positions and finished
    /// partitions after it are the worker's.
    fn settle(&mut self) {
        if self.taken < self.current.records.len() {
            return;
        }
        self.positions.extend(self.current.positions.drain(..));
        self.finished.append(&mut self.current.finished);
    }

    /// The thread stopped: at the end of a bounded input (or of a fatal error it sent), or by a
    /// panic.
    fn ended(&mut self) -> Result<bool, SourceError> {
        if let Some(Err(panic)) = self.thread.take().map(JoinHandle::join) {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            self.failing = Some(SourceError::Ahead(format!("it panicked: {why}")));
        }
        self.failing.clone().map_or(Ok(false), Err)
    }
}

impl Input for Ahead {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn inventory_topic(&self) -> Option<&str> {
        self.inventory_topic.as_deref()
    }

    fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    fn bounded(&self) -> bool {
        self.bounded
    }

    fn poll(
        &mut self,
        max: usize,
        each: &mut dyn FnMut(RawRecord<'_>),
    ) -> Result<usize, SourceError> {
        let mut taken = 0;
        while taken < max {
            if self.taken == self.current.records.len() {
                match self.next_batch() {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) if taken == 0 => return Err(e),
                    // Records already taken are processed first; the error is reported next poll.
                    Err(_) => break,
                }
            }
            let Batch { records, bytes, .. } = &mut self.current;
            let Some(r) = records.get_mut(self.taken) else {
                break;
            };
            self.taken += 1;
            let result = match &mut r.result {
                Ok(t) => Ok(t.as_ref()),
                Err((reason, detail)) => Err((*reason, std::mem::take(detail))),
            };
            each(RawRecord {
                partition: r.partition,
                offset: r.offset,
                record_time: r.record_time,
                key: r.key.clone().and_then(|k| bytes.get(k)),
                // Applied by the decoder already.
                stamp: Default::default(),
                payload: Payload::Checked {
                    result,
                    raw: bytes.get(r.raw.clone()).unwrap_or_default(),
                },
            });
            taken += 1;
            self.settle();
        }
        Ok(taken)
    }

    fn take_finished(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.finished)
    }

    /// Where the input stood after the batches taken whole, with the records taken so far of
    /// one taken in part laid over it: asked for at a checkpoint, not worked out per record.
    fn positions(&self) -> Vec<(i32, i64)> {
        let mut at = self.positions.clone();
        if self.taken < self.current.records.len() {
            for r in &self.current.records[..self.taken] {
                at.insert(r.partition, r.offset + 1);
            }
        }
        at.into_iter().collect()
    }
}

impl Drop for Ahead {
    /// The thread stops at its next send, or wait, once its channels are gone.
    fn drop(&mut self) {
        let (dead, gone) = sync_channel(0);
        drop(std::mem::replace(&mut self.batches, gone));
        drop(std::mem::replace(&mut self.spent, dead));
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(topic = %self.topic, "the read-ahead thread panicked");
        }
    }
}

/// The thread: reads batches until the worker is gone, a bounded input ended, or a read failed
/// for good; retries a failed read with backoff, telling the worker each time.
fn read(
    mut input: Box<dyn Input + Send>,
    mut decoder: Decoder,
    to_worker: &SyncSender<Batch>,
    spent: &Receiver<Batch>,
) {
    let mut failing: Option<Delays> = None;
    let mut finished = 0;
    let mut spare = None;
    loop {
        let mut batch = spare
            .take()
            .or_else(|| spent.try_recv().ok())
            .unwrap_or_default();
        let polled = input.poll(BATCH, &mut |rec| batch.push(rec, &mut decoder));
        batch.finished = input.take_finished();
        batch.positions = input.positions();
        finished += batch.finished.len();
        let (wait, fatal) = match polled {
            Err(e) => {
                let fatal = !e.is_retryable();
                batch.error = Some(e);
                let delays = failing.get_or_insert_with(|| Backoff::Unavailable.delays());
                (Some(delays.next_wait()), fatal)
            }
            // A read that worked after failures says so even with nothing in it.
            Ok(0) if batch.finished.is_empty() && failing.is_none() => (Some(IDLE), false),
            Ok(_) => {
                failing = None;
                (None, false)
            }
        };
        let said = batch.error.is_some() || !batch.records.is_empty() || wait.is_none();
        if said && to_worker.send(batch).is_err() {
            return;
        }
        let done = input.bounded() && finished >= input.partitions().len();
        if fatal || done {
            return;
        }
        // Waiting on the spent batches: a worker that is gone ends the wait at once.
        let until = wait.map(|w| Instant::now() + w);
        while let Some(left) = until.and_then(|u| u.checked_duration_since(Instant::now())) {
            match spent.recv_timeout(left) {
                Ok(batch) => spare = Some(batch),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
