//! The source operator: reads a worker's partitions (Kafka, a file, or memory in tests), decodes
//! and judges each record, and sends accepted readings at the worker's event-time capability.
//!
//! It has three outputs: readings (to be exchanged by device), marks (broadcast: how far data has
//! moved event time, and, for bounded inputs, where the input ended), and dead letters. What to
//! send when is decided by [`machine::SourceMachine`]; each record is decoded and judged by
//! [`triage::Triage`]; this module is the wiring.

pub mod ahead;
pub mod decoder;
pub mod file;
pub mod joined;
pub mod kafka;
pub mod machine;
pub mod memory;
pub mod triage;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use schemas::retry::Retryable;
use schemas::{Codec, DeadLetter, DeadLetterReason, Telemetry};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::probe::Handle;
use timely::dataflow::{Scope, StreamVec};

use crate::checkpoint::WorkerPart;
use crate::clock::RecordTime;
use crate::readiness::Readiness;
use crate::reading::Reading;
use crate::watermark::{Bounds, PartitionClock, Watermarks};
use machine::{CUT_GRID_MS, Capabilities, CutProposer, MachineSettings, SourceMachine, Wake};
use triage::Triage;

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

/// A record's value as read, borrowed from where the input holds it.
#[derive(Debug)]
pub enum Payload<'a> {
    /// Wire bytes: Confluent-framed Avro or JSON.
    Wire(&'a [u8]),
    /// Already parsed by the reader (Avro object container files), with its bytes for the DLQ.
    Parsed {
        /// The reading, or why it is unusable.
        result: Result<Telemetry, (DeadLetterReason, String)>,
        /// What to keep in the DLQ.
        raw: &'a [u8],
    },
    /// Decoded and checked already, by the read-ahead thread ([`ahead::Ahead`]).
    Checked {
        /// What the record holds, or why it is unusable.
        result: Result<decoder::Item<'a>, decoder::Unusable>,
        /// What to keep in the DLQ.
        raw: &'a [u8],
    },
}

/// What fleetpulse's gateways stamped on a record in its headers ([`schemas::headers`]): the
/// tenant of the credential it came with, and the device for a device's own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stamp<'a> {
    /// `fleetpulse-tenant`.
    pub tenant: Option<&'a [u8]>,
    /// `fleetpulse-device`.
    pub device: Option<&'a [u8]>,
    /// `fleetpulse-availability`: the record is an availability report, not a reading.
    pub availability: Option<&'a [u8]>,
}

/// One record of one partition, borrowed from the input for as long as it is looked at.
#[derive(Debug)]
pub struct RawRecord<'a> {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka record timestamp and who stamped it; files have none.
    pub record_time: RecordTime,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Headers fleetpulse reads.
    pub stamp: Stamp<'a>,
    /// Value.
    pub payload: Payload<'a>,
}

/// Errors of an input.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The thread that reads ahead could not start, or stopped.
    #[error("the read-ahead thread: {0}")]
    Ahead(String),
}

impl Retryable for SourceError {
    /// A file that cannot be read (or whose Avro container is corrupt, which makes the rest of
    /// it unreadable) fails the job rather than end it early as if it were complete; so does a
    /// read-ahead thread that is gone.
    fn is_retryable(&self) -> bool {
        !matches!(self, SourceError::File { .. } | SourceError::Ahead(_))
    }
}

/// What one worker reads.
pub trait Input {
    /// The topic (or file) name, for dead letters and metrics.
    fn topic(&self) -> &str;
    /// The inventory topic, when the input reads one ([`joined`]).
    fn inventory_topic(&self) -> Option<&str> {
        None
    }
    /// The partitions this worker owns.
    fn partitions(&self) -> &[i32];
    /// Whether the input ends (files, `--until-end`) rather than runs forever.
    fn bounded(&self) -> bool;
    /// Hands up to `max` records to `each`, where they lie; returns how many. A failure is
    /// returned only when none was handed over (records already taken are never dropped); the
    /// caller retries with backoff.
    fn poll(
        &mut self,
        max: usize,
        each: &mut dyn FnMut(RawRecord<'_>),
    ) -> Result<usize, SourceError>;
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
    /// Adds schema `id` to `codec`, or says why it could not (the registry client's own error).
    fn fetch_into(
        &self,
        codec: &mut Codec,
        id: u32,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

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

/// Builds the source operator over `input`.
pub fn source<'scope>(
    scope: Scope<'scope, u64>,
    input: Box<dyn Input>,
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
    // Worker 0 alone proposes cuts, so every worker cuts at the same event times.
    let cuts = settings
        .checkpoint_every
        .filter(|_| scope.index() == 0)
        .map(|every| CutProposer::new(every, settings.generation, settings.through));
    let triage = Triage::new(
        input.topic(),
        input.inventory_topic(),
        (*settings.codec).clone(),
        settings.fetcher,
        settings.limits,
        settings.replay_below,
    );
    let mut machine = SourceMachine::new(
        input,
        triage,
        Rc::clone(&clocks),
        snapshot,
        MachineSettings {
            step_ms: settings.step_ms,
            clock,
            stop: settings.stop,
            readiness: settings.readiness,
            cuts,
            replay_below: settings.replay_below,
        },
    );

    builder.build(move |caps| {
        let mut caps = Some(caps);
        move |_frontiers| {
            let Some(held) = caps.as_mut() else {
                return;
            };
            let processed = processed.with_frontier(|f| f.first().copied());
            let step = machine.step(*held[0].time(), processed);
            if !step.marks.is_empty() {
                marks_out
                    .activate()
                    .session(&held[1])
                    .give_iterator(step.marks.drain(..));
            }
            if !step.triaged.readings.is_empty() {
                readings_out
                    .activate()
                    .session(&held[0])
                    .give_container(&mut step.triaged.readings);
            }
            if !step.triaged.dead.is_empty() {
                dead_out
                    .activate()
                    .session(&held[2])
                    .give_container(&mut step.triaged.dead);
            }
            match step.capabilities {
                Capabilities::Keep => {}
                Capabilities::Downgrade(t) => {
                    for c in held.iter_mut() {
                        c.downgrade(&t);
                    }
                }
                Capabilities::Release => caps = None,
            }
            match step.wake {
                Wake::Now => activator.activate(),
                Wake::After(pause) => activator.activate_after(pause),
                Wake::Never => {}
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
