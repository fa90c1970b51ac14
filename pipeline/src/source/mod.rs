//! The source operator: reads a worker's partitions (Kafka, a file, or memory in tests), decodes
//! and judges each record, and sends accepted readings at the worker's event-time capability.
//!
//! It has three outputs: readings (to be exchanged by device), marks (broadcast: how far data has
//! moved event time, and, for bounded inputs, where the input ended), and dead letters.

pub mod file;
pub mod kafka;
pub mod memory;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use schemas::{Codec, DeadLetter, DeadLetterReason, DecodeError, InputFormat, Telemetry};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::probe::Handle;
use timely::dataflow::{Scope, StreamVec};

use crate::checkpoint::WorkerPart;
use crate::clock::{Judged, RecordTime};
use crate::event_id;
use crate::metrics;
use crate::readiness::Readiness;
use crate::reading::{Reading, ReadingKind};
use crate::watermark::{Bounds, PartitionClock, Watermarks};

/// Records read per activation at most, so one busy source cannot starve the other operators.
const BATCH: usize = 8_192;
/// How long a source with nothing to read waits before polling again.
const IDLE_POLL: Duration = Duration::from_millis(5);
/// How many capability steps a source may run ahead of what the device operators have
/// processed before it stops reading: without this bound a fast source fills memory with
/// readings the operators cannot take yet.
const MAX_STEPS_AHEAD: i64 = 8;
/// The most of a rejected value a dead letter carries, so the dead letter itself stays within
/// the broker's message size limit.
const MAX_RAW: usize = 256 * 1024;
/// Checkpoints are cut at whole seconds of event time: each partition remembers where it stood
/// at each second it has reached and the job has not yet passed.
const CUT_GRID_MS: i64 = 1_000;

/// The wall clock, in ms since the epoch; tests inject their own.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    })
}

/// A record's value as read.
#[derive(Debug)]
pub enum Payload {
    /// Wire bytes: Confluent-framed Avro or JSON.
    Wire(Vec<u8>),
    /// Already parsed by the reader (Avro object container files), with its bytes for the DLQ.
    Parsed {
        /// The reading, or why it is unusable.
        result: Result<Telemetry, (DeadLetterReason, String)>,
        /// What to keep in the DLQ.
        raw: Vec<u8>,
    },
}

/// One record of one partition.
#[derive(Debug)]
pub struct RawRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka record timestamp and who stamped it; files have none.
    pub record_time: RecordTime,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Payload,
}

/// Errors of an input.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Kafka refused or failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A file could not be read.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// The topic does not exist (yet).
    #[error("topic {0} does not exist")]
    NoTopic(String),
    /// The thread that watches the brokers could not start.
    #[error("cannot watch the brokers: {0}")]
    Watch(String),
}

impl SourceError {
    /// Whether retrying cannot help: a file that cannot be read (or whose Avro container is
    /// corrupt, which makes the rest of it unreadable) fails the job rather than end it early
    /// as if it were complete.
    pub fn is_fatal(&self) -> bool {
        matches!(self, SourceError::File { .. })
    }
}

/// What one worker reads.
pub trait Input {
    /// The topic (or file) name, for dead letters and metrics.
    fn topic(&self) -> &str;
    /// The partitions this worker owns.
    fn partitions(&self) -> &[i32];
    /// Whether the input ends (files, `--until-end`) rather than runs forever.
    fn bounded(&self) -> bool;
    /// Appends up to `max` records to `out`. A failure is returned only when nothing was
    /// appended (records already taken are never dropped); the caller retries with backoff.
    fn poll(&mut self, out: &mut Vec<RawRecord>, max: usize) -> Result<(), SourceError>;
    /// Partitions read to their end since the last call (bounded inputs only).
    fn take_finished(&mut self) -> Vec<i32>;
    /// The next offset to read in each partition, for a checkpoint.
    fn positions(&self) -> Vec<(i32, i64)>;
}

/// Broadcast progress information from a source worker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Mark {
    /// The largest watermark data has produced in this worker's partitions.
    Data(i64),
    /// This worker's source sends nothing more: its bounded input ended (`finished`), or the job
    /// is stopping. A stopped source gives `hold`, its last capability: operators must not take
    /// the frontier past it on the strength of this worker having dropped its capability (that
    /// would run ahead of partitions it did not read to the end). A finished one gives `last`,
    /// the least final data watermark of its partitions (if any had data): no timer may fire at
    /// or beyond it, since the input's last watermark can only be lower.
    Done {
        /// A stopped source's last capability.
        hold: Option<u64>,
        /// Read to the end, rather than stopped.
        finished: bool,
        /// The least final data watermark of its partitions.
        last: Option<i64>,
    },
    /// Take checkpoint `generation` at event time `at` (sent by worker 0 only, at a time no
    /// operator has passed, so every worker's operators see it before they reach `at`).
    Cut {
        /// Event time of the cut.
        at: i64,
        /// The checkpoint's generation.
        generation: u64,
    },
}

/// Fetches a writer schema the codec does not know, by id, from a schema registry, so telemetry
/// from a producer with an older or newer schema is resolved instead of dead-lettered.
pub trait SchemaFetcher: Send + Sync {
    /// Adds schema `id` to `codec`, or says why it could not.
    fn fetch_into(&self, codec: &mut Codec, id: u32) -> Result<(), String>;
}

/// How long an id the registry could not give is not asked for again (its records go to the
/// DLQ meanwhile, with reason `schema`).
const REFETCH_AFTER: Duration = Duration::from_secs(60);

/// Settings of the source operator.
#[derive(Clone)]
pub struct SourceSettings {
    /// Event-time bounds.
    pub bounds: Bounds,
    /// Capability step, ms.
    pub step_ms: i64,
    /// Wall clock for idleness.
    pub clock: Clock,
    /// Decoder of wire values.
    pub codec: Arc<Codec>,
    /// Where unknown writer schemas come from, when a registry is configured.
    pub fetcher: Option<Arc<dyn SchemaFetcher>>,
    /// Set to stop an unbounded input (without closing windows).
    pub stop: Arc<AtomicBool>,
    /// Where the source reports whether it can read.
    pub readiness: Arc<Readiness>,
    /// Partition clocks restored from a checkpoint.
    pub clocks: Vec<PartitionClock>,
    /// Accepted readings before this event time were counted before the checkpoint the job
    /// resumed from (it was cut there): they are judged, so lateness stays as it was, but not
    /// sent again.
    pub replay_below: Option<i64>,
    /// How often worker 0 asks for a checkpoint, on the wall clock; `None`: only on stop.
    pub checkpoint_every: Option<Duration>,
    /// The generation the job resumed from (0 without one); cuts number on from it.
    pub generation: u64,
    /// Everything before this event time is in the state the job resumed from: no cut may be
    /// at or before it.
    pub through: i64,
    /// Bounds on what a reading may hold.
    pub limits: schemas::Limits,
}

/// The three streams of a source.
pub struct SourceStreams<'scope> {
    /// Accepted readings.
    pub readings: StreamVec<'scope, u64, Reading>,
    /// Progress marks.
    pub marks: StreamVec<'scope, u64, Mark>,
    /// Rejected records.
    pub dead: StreamVec<'scope, u64, DeadLetter>,
    /// The worker's partition clocks: the device operator reads the source's positions at a
    /// checkpoint cut from them.
    pub clocks: Rc<RefCell<Watermarks>>,
}

fn to_time(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

/// Builds the source operator over `input`.
pub fn source<'scope>(
    scope: Scope<'scope, u64>,
    mut input: Box<dyn Input>,
    settings: SourceSettings,
    processed: Handle<u64>,
    snapshot: Rc<RefCell<WorkerPart>>,
) -> SourceStreams<'scope> {
    let mut builder = OperatorBuilder::new("Source".to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address);
    let (readings_out, readings) = builder.new_output();
    let (marks_out, marks) = builder.new_output();
    let (dead_out, dead) = builder.new_output();
    let mut readings_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<Reading>>>::from(readings_out);
    let mut marks_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Mark>>>::from(marks_out);
    let mut dead_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(dead_out);
    let clock = settings.clock;
    let clocks = {
        let mut wm = Watermarks::new(settings.bounds, input.partitions(), clock());
        wm.restore(&settings.clocks, clock());
        if settings.checkpoint_every.is_some() {
            wm.record_cuts(CUT_GRID_MS, &input.positions());
        }
        Rc::new(RefCell::new(wm))
    };
    let shared = Rc::clone(&clocks);
    // Worker 0 alone proposes cuts, so every worker cuts at the same event times.
    let mut cuts = settings
        .checkpoint_every
        .filter(|_| scope.index() == 0)
        .map(|every| {
            let through = u64::try_from(settings.through).unwrap_or(0);
            (every, Instant::now(), settings.generation, through)
        });

    builder.build(move |caps| {
        let mut caps = Some(caps);
        let wm = shared;
        let mut buf = Vec::with_capacity(BATCH);
        let mut sent_data: Option<i64> = None;
        let mut failures = 0u32;
        let mut read = 0u64;
        let topic = input.topic().to_string();
        let in_counter = metrics::records_in(&topic);
        let mut codec = (*settings.codec).clone();
        let mut refused: HashMap<u32, Instant> = HashMap::new();
        settings.readiness.started();
        move |_frontiers| {
            let Some(held) = caps.as_mut() else {
                return;
            };
            if settings.stop.load(Ordering::Relaxed) {
                // Where this worker stopped, for the checkpoint the job writes on its way out.
                let mut part = snapshot.borrow_mut();
                part.positions = input.positions();
                part.clocks = wm.borrow().export();
                // Readings before the cut this run resumed from are still to be skipped.
                part.cut = settings.replay_below;
                let done = Mark::Done {
                    hold: Some(*held[0].time()),
                    finished: false,
                    last: None,
                };
                marks_out.activate().session(&held[1]).give(done);
                caps = None;
                return;
            }
            let ahead_limit = (MAX_STEPS_AHEAD * settings.step_ms).unsigned_abs();
            let behind = processed.with_frontier(|f| f.first().copied());
            if let Some(b) = behind {
                wm.borrow_mut().prune(b as i64);
            }
            if let Some((every, since, generation, last)) = cuts.as_mut() {
                let at = (*held[1].time() as i64).div_euclid(CUT_GRID_MS) * CUT_GRID_MS
                    + CUT_GRID_MS;
                if since.elapsed() >= *every && *held[1].time() > 0 && at as u64 > *last {
                    *since = Instant::now();
                    *generation += 1;
                    *last = at as u64;
                    let cut = Mark::Cut {
                        at,
                        generation: *generation,
                    };
                    marks_out.activate().session(&held[1]).give(cut);
                }
            }
            if behind.is_some_and(|b| *held[0].time() > b.saturating_add(ahead_limit)) {
                activator.activate_after(Duration::from_millis(1));
                return;
            }
            let now = clock();
            buf.clear();
            if let Err(e) = input.poll(&mut buf, BATCH) {
                if e.is_fatal() {
                    tracing::error!(error = %e, "the input cannot be read");
                    settings.readiness.fatal(e.to_string());
                    settings.stop.store(true, Ordering::Relaxed);
                    caps = None;
                    return;
                }
                if failures == 0 {
                    settings.readiness.failing(true);
                }
                failures = failures.saturating_add(1);
                let backoff = Duration::from_millis(100 * 2u64.saturating_pow(failures.min(6)));
                tracing::warn!(
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "source cannot read"
                );
                metrics::source_up(false);
                activator.activate_after(backoff);
                return;
            }
            if failures > 0 {
                failures = 0;
                settings.readiness.failing(false);
                metrics::source_up(true);
            }
            let got = buf.len();
            in_counter.increment(got as u64);
            let mut wm = wm.borrow_mut();
            {
                let mut readings = readings_out.activate();
                let mut dead = dead_out.activate();
                let mut readings = readings.session(&held[0]);
                let mut dead = dead.session(&held[2]);
                for rec in buf.drain(..) {
                    let invalid = |e: schemas::InvalidField| {
                        (DeadLetterReason::InvalidField, e.to_string())
                    };
                    let (result, raw) = match rec.payload {
                        Payload::Wire(bytes) => (
                            settings
                                .limits
                                .check_message(bytes.len())
                                .map_err(invalid)
                                .and_then(|()| {
                                    decode(
                                        &mut codec,
                                        &bytes,
                                        settings.fetcher.as_deref(),
                                        &mut refused,
                                    )
                                    .map_err(|e| (e.reason(), e.to_string()))
                                }),
                            bytes,
                        ),
                        Payload::Parsed { result, raw } => (
                            settings
                                .limits
                                .check_message(raw.len())
                                .map_err(invalid)
                                .and(result),
                            raw,
                        ),
                    };
                    let result = result
                        .and_then(|t| settings.limits.check(&t).map(|()| t).map_err(invalid));
                    // Counted before the checkpoint this run resumed from.
                    let fresh = |ts: i64| settings.replay_below.is_none_or(|c| ts >= c);
                    let rejected = match result {
                        Ok(t) => {
                            let judged = wm.observe(
                                rec.partition,
                                rec.offset,
                                &t.tenant_id,
                                &t.device_id,
                                t.ts,
                                rec.record_time,
                                now,
                            );
                            match judged {
                                Judged::Accept {
                                    ts,
                                    offset,
                                    retimed,
                                } => {
                                    if fresh(ts) {
                                        let kind = if retimed {
                                            metrics::retimed();
                                            ReadingKind::Retimed
                                        } else {
                                            ReadingKind::Stamped
                                        };
                                        readings.give(Reading::new(
                                            t,
                                            rec.partition,
                                            rec.offset,
                                            ts,
                                            offset,
                                            kind,
                                        ));
                                    }
                                    None
                                }
                                Judged::Reject {
                                    reason,
                                    offset,
                                    skew,
                                    arrival,
                                } => {
                                    let detail = rejection(reason, t.ts, skew, offset);
                                    if let Some(at) = arrival.filter(|at| fresh(*at)) {
                                        readings.give(Reading::new(
                                            t,
                                            rec.partition,
                                            rec.offset,
                                            at,
                                            offset,
                                            ReadingKind::Arrival,
                                        ));
                                    }
                                    Some((reason, detail))
                                }
                            }
                        }
                        Err(why) => {
                            wm.touch(rec.partition, rec.offset);
                            Some(why)
                        }
                    };
                    if let Some((reason, mut detail)) = rejected {
                        metrics::dead_letter(reason);
                        let mut raw = raw;
                        if raw.len() > MAX_RAW {
                            detail.push_str(&format!(
                                " (raw value truncated from {} bytes; the source offset has it whole)",
                                raw.len()
                            ));
                            raw.truncate(MAX_RAW);
                        }
                        dead.give(DeadLetter {
                            event_id: event_id::dead_letter(&topic, rec.partition, rec.offset),
                            source_topic: topic.clone(),
                            source_partition: rec.partition,
                            source_offset: rec.offset,
                            key: rec.key,
                            raw,
                            reason,
                            detail,
                            record_ts: rec.record_time.millis(),
                        });
                    }
                }
            }
            for p in input.take_finished() {
                wm.finish(p);
            }
            wm.tick(now);
            // Every increase is sent, before the capability moves past it: a device operator must
            // know, for any deadline the frontier passes, whether data got there first.
            if let Some(d) = wm.data_max()
                && sent_data.is_none_or(|s| d > s)
            {
                sent_data = Some(d);
                marks_out.activate().session(&held[1]).give(Mark::Data(d));
            }
            read = read.saturating_add(got as u64);
            if input.bounded() && wm.all_finished() {
                tracing::info!(records = read, topic = %topic, "input read to its end");
                let done = Mark::Done {
                    hold: None,
                    finished: true,
                    last: wm.data_min(),
                };
                marks_out.activate().session(&held[1]).give(done);
                caps = None;
                return;
            }
            match wm.hold() {
                None => {
                    caps = None;
                    return;
                }
                Some(Some(w)) => {
                    let step = settings.step_ms;
                    let t = to_time(w.div_euclid(step) * step);
                    if t > *held[0].time() {
                        for c in held.iter_mut() {
                            c.downgrade(&t);
                        }
                        metrics::watermark(w, now);
                    }
                }
                Some(None) => {}
            }
            if got > 0 {
                activator.activate();
            } else {
                activator.activate_after(IDLE_POLL);
            }
        }
    });
    SourceStreams {
        readings,
        marks,
        dead,
        clocks,
    }
}

/// Decodes a wire value, fetching its writer schema first when the id is unknown and a registry
/// is configured.
fn decode(
    codec: &mut Codec,
    bytes: &[u8],
    fetcher: Option<&dyn SchemaFetcher>,
    refused: &mut HashMap<u32, Instant>,
) -> Result<Telemetry, DecodeError> {
    let result = codec.decode_telemetry(bytes, InputFormat::Auto);
    let (Err(DecodeError::UnknownSchemaId(id)), Some(fetcher)) = (&result, fetcher) else {
        return result;
    };
    let id = *id;
    if refused
        .get(&id)
        .is_some_and(|at| at.elapsed() < REFETCH_AFTER)
    {
        return result;
    }
    match fetcher.fetch_into(codec, id) {
        Ok(()) => {
            tracing::info!(id, "fetched a writer schema from the registry");
            codec.decode_telemetry(bytes, InputFormat::Auto)
        }
        Err(e) => {
            tracing::warn!(
                id,
                error = %e,
                "cannot fetch a writer schema; its records go to the DLQ"
            );
            refused.insert(id, Instant::now());
            result
        }
    }
}

/// The detail of a dead letter the clocks rejected: the reading's time, how far it was off the
/// partition's clock truth, and the device's known offset.
fn rejection(reason: DeadLetterReason, ts: i64, skew: Option<i64>, offset: i64) -> String {
    let off = skew.map_or(String::new(), |s| {
        format!(" ({s} ms off the partition's clock truth)")
    });
    match reason {
        DeadLetterReason::Future => {
            format!("ts {ts}{off} is more than the allowed skew ahead of it")
        }
        DeadLetterReason::ClockSkew => format!(
            "ts {ts}{off} comes from a device whose clock is {offset} ms off, and clock \
             correction is off"
        ),
        _ if offset != 0 => format!(
            "ts {ts}{off} is behind its partition's watermark, and off the device's known clock \
             offset of {offset} ms"
        ),
        _ => format!("ts {ts}{off} is behind its partition's watermark"),
    }
}
