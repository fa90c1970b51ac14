//! Running the job: one dataflow per timely worker, each with its share of the input and its own
//! sink, until a bounded input is consumed or the job is stopped.

mod resume;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use schemas::Codec;
use schemas::retry::{Backoff, Retryable};

use crate::checkpoint::{CheckpointError, PartWriter, Store, Unreadable, WorkerPart, Written};
use crate::clock::ClockRules;
use crate::config::PipelineConfig;
use crate::cut::Cuts;
use crate::dataflow;
use crate::readiness::Readiness;
use crate::sink::{Behind, SinkError, SinkFactory};
use crate::source::decoder::Decoder;
use crate::source::kafka::KafkaSettings;
use crate::source::memory::MemoryRecord;
use crate::source::{Clock, SchemaFetcher, SourceError, SourceSettings};
use crate::watermark::Bounds;
use resume::{Resumed, open, resume};

/// What the job reads.
#[derive(Clone)]
pub enum InputSpec {
    /// A Kafka topic.
    Kafka(KafkaSettings),
    /// An NDJSON or Avro object container file.
    File(PathBuf),
    /// In-memory partitions; `bounded: false` makes them behave like a topic that never ends.
    Memory {
        /// The records of each partition.
        partitions: Arc<Vec<Vec<MemoryRecord>>>,
        /// The records of each inventory partition (none: no inventory is read).
        inventory: Arc<Vec<Vec<MemoryRecord>>>,
        /// Whether the input ends after the last record.
        bounded: bool,
    },
}

/// Everything a run needs.
#[derive(Clone)]
pub struct Job {
    /// Dataflow settings.
    pub cfg: Arc<PipelineConfig>,
    /// The input.
    pub input: InputSpec,
    /// Decoder of wire values.
    pub codec: Arc<Codec>,
    /// Where unknown writer schemas come from, when a registry is configured.
    pub fetcher: Option<Arc<dyn SchemaFetcher>>,
    /// Wall clock (idleness).
    pub clock: Clock,
    /// Set to stop an unbounded run.
    pub stop: Arc<AtomicBool>,
    /// Per-worker sinks.
    pub sinks: SinkFactory,
    /// Shared with the HTTP server.
    pub readiness: Arc<Readiness>,
    /// Records the device operator emits per activation at most ([`dataflow::BURST`]).
    pub burst: usize,
    /// Where checkpoints live: the job resumes from the latest complete one, writes one every
    /// `cfg.checkpoint_interval_ms` and, stopped (SIGTERM), one more. `None`: no checkpoints.
    pub checkpoints: Option<Store>,
    /// Ignore existing checkpoints (they are still written on stop).
    pub from_scratch: bool,
}

impl Job {
    /// A job with the usual defaults: no registry, the system clock, its own stop flag and
    /// readiness, output in slices of [`dataflow::BURST`].
    pub fn new(
        cfg: Arc<PipelineConfig>,
        input: InputSpec,
        codec: Arc<Codec>,
        sinks: SinkFactory,
    ) -> Job {
        Job {
            cfg,
            input,
            codec,
            fetcher: None,
            clock: crate::source::system_clock(),
            stop: Arc::new(AtomicBool::new(false)),
            sinks,
            readiness: Arc::new(Readiness::default()),
            burst: dataflow::BURST,
            checkpoints: None,
            from_scratch: false,
        }
    }
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Timely could not start (bad worker or process settings).
    #[error("cannot start the workers: {0}")]
    Timely(String),
    /// The input could not be read.
    #[error("cannot read the input: {0}")]
    Input(String),
    /// A worker failed.
    #[error("worker {worker}: {source}")]
    Worker {
        /// Which.
        worker: usize,
        /// What happened.
        source: WorkerError,
    },
    /// A worker panicked (timely's message).
    #[error("worker {worker}: {detail}")]
    Panicked {
        /// Which.
        worker: usize,
        /// What it said.
        detail: String,
    },
}

/// Why one worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The checkpoint it was to resume from could not be read.
    #[error("{0}")]
    Resume(#[from] Unreadable),
    /// Its input could not be opened.
    #[error("{0}")]
    Input(#[from] SourceError),
    /// Its sink could not be made.
    #[error("{0}")]
    Sink(#[from] SinkError),
    /// A checkpoint part could not be written.
    #[error("{0}")]
    Checkpoint(#[from] CheckpointError),
    /// A checkpoint's state could not be captured (the devices operator said why).
    #[error("checkpoint {generation} cannot be written: {why}")]
    Broken {
        /// The checkpoint.
        generation: u64,
        /// What the operator said.
        why: String,
    },
}

/// Waits until Kafka has acknowledged everything written so far: a checkpoint must not get
/// ahead of the outputs that precede it. A broker that is away is waited for; a sink that is
/// gone fails the worker.
fn flush(sink: &RefCell<Behind>) -> Result<(), SinkError> {
    let mut delays = Backoff::Unavailable.delays();
    loop {
        match sink.borrow_mut().flush() {
            Ok(()) => return Ok(()),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "outputs not yet acknowledged; the checkpoint waits");
                std::thread::sleep(delays.next_wait());
            }
        }
    }
}

/// Runs `job` on the workers `timely` describes and waits for them.
pub fn run(timely: timely::Config, job: Job) -> Result<(), RunError> {
    let job_readiness = Arc::clone(&job.readiness);
    // One place decides which checkpoint the workers resume from; each worker then reads it
    // for itself and keeps its share.
    // `base`: the generation new checkpoints number on from, above any already there.
    let (generation, base) = match (&job.checkpoints, job.from_scratch) {
        (Some(store), false) => {
            let g = store.latest().map(|c| c.generation);
            (g, g.unwrap_or(0))
        }
        (Some(store), true) => (None, store.highest()),
        (None, _) => (None, 0),
    };
    if let (Some(g), Some(store)) = (generation, &job.checkpoints) {
        tracing::info!(generation = g, dir = %store.dir().display(), "resuming from a checkpoint");
    }
    let finished = Arc::new(AtomicBool::new(false));
    let watch = match &job.input {
        InputSpec::Kafka(settings) => Some(
            crate::source::kafka::watch_brokers(
                settings,
                Arc::clone(&job.readiness),
                Arc::clone(&finished),
            )
            .map_err(|e| RunError::Input(e.to_string()))?,
        ),
        _ => None,
    };
    let guards = timely::execute(timely, move |worker| -> Result<(), WorkerError> {
        let index = worker.index();
        let peers = worker.peers();
        let checkpoint = match (generation, &job.checkpoints) {
            (Some(g), Some(store)) => Some(store.load(g)?),
            _ => None,
        };
        let Resumed {
            positions: start,
            clocks,
            cut,
            state,
        } = resume(checkpoint)?;
        let snapshot = Rc::clone(&state.snapshot);
        if let Some(store) = &job.checkpoints {
            *state.cuts.borrow_mut() = Cuts::new(store.clone(), index, peers);
        }
        let cuts = Rc::clone(&state.cuts);
        let decoder = Decoder::new((*job.codec).clone(), job.fetcher.clone(), job.cfg.limits)
            .with_tenant_source(job.cfg.tenant_source);
        let input = match open(&job.input, index, peers, &start, decoder) {
            Ok(input) => input,
            Err(e) => {
                // The other workers would wait for this one's partitions for ever: stop them.
                job.readiness.fatal(e.to_string());
                job.stop.store(true, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        let bounded = input.bounded();
        let settings = SourceSettings {
            bounds: Bounds {
                out_of_orderness_ms: job.cfg.out_of_orderness_ms,
                idle_timeout_ms: (!bounded).then_some(job.cfg.idle_timeout_ms),
                clock: ClockRules {
                    tolerance_ms: job.cfg.clock_tolerance_ms,
                    correction: job.cfg.clock_correction,
                    trust_producer: job.cfg.trust_record_time,
                    max_future_skew_ms: job.cfg.max_future_skew_ms,
                },
            },
            limits: job.cfg.limits,
            step_ms: job.cfg.watermark_step_ms,
            clock: Arc::clone(&job.clock),
            codec: Arc::clone(&job.codec),
            fetcher: job.fetcher.clone(),
            stop: Arc::clone(&job.stop),
            readiness: Arc::clone(&job.readiness),
            clocks,
            replay_below: cut,
            through: state.through,
            checkpoint_every: job
                .checkpoints
                .as_ref()
                .map(|_| Duration::from_millis(job.cfg.checkpoint_interval_ms.unsigned_abs())),
            generation: base,
        };
        let sink = Rc::new(RefCell::new(Behind::start((job.sinks)(index)?)?));
        let cfg = Arc::clone(&job.cfg);
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            dataflow::build(
                scope,
                input,
                settings,
                cfg,
                Rc::clone(&sink),
                job.burst,
                state,
            )
        });
        // Parts handed to their threads and not yet known to be on disk.
        let mut in_flight: Vec<Written> = Vec::new();
        // Outputs first: a checkpoint is only written once what preceded it is acknowledged.
        let before_writing = |generation: u64, part: &WorkerPart| -> Result<(), WorkerError> {
            if let Some(why) = &part.broken {
                return Err(WorkerError::Broken {
                    generation,
                    why: why.clone(),
                });
            }
            flush(&sink)?;
            Ok(())
        };
        let finish = |devices: PartWriter, part: &WorkerPart| -> Result<Written, WorkerError> {
            let generation = devices.generation();
            before_writing(generation, part)?;
            let written = devices.finish(part, index == 0)?;
            tracing::debug!(
                generation,
                worker = index,
                cut = part.cut,
                "checkpoint part handed to its writer"
            );
            Ok(written)
        };
        // A part that could not be written fails the job, as the checkpoint it belongs to is
        // then never complete.
        let settle = |in_flight: &mut Vec<Written>, all: bool| -> Result<(), WorkerError> {
            let (done, left) = std::mem::take(in_flight)
                .into_iter()
                .partition(|w| all || w.is_done());
            *in_flight = left;
            Ok(done.into_iter().try_for_each(Written::wait)?)
        };
        while !probe.done() {
            worker.step_or_park(None);
            loop {
                // Past the cut, not only at it: the device operator may hold the cut's own time
                // when it saves its part, and last-seen times it announces then are stamped there.
                let ready = cuts
                    .borrow_mut()
                    .take_ready(|at| !probe.less_equal(&u64::try_from(at).unwrap_or(0)));
                let Some((devices, part)) = ready else {
                    break;
                };
                in_flight.push(finish(devices, &part)?);
            }
            settle(&mut in_flight, false)?;
        }
        flush(&sink)?;
        settle(&mut in_flight, true)?;
        let stopped = job.stop.load(Ordering::Relaxed) && job.readiness.fatal_error().is_none();
        if let (true, Some(store)) = (stopped, &job.checkpoints) {
            let next = base.max(cuts.borrow().last_generation()) + 1;
            let part = snapshot.borrow();
            before_writing(next, &part)?;
            store.write_part(next, index, peers, &part, index == 0)?;
            tracing::info!(
                generation = next,
                worker = index,
                "checkpoint written on stop"
            );
        }
        Ok(())
    });
    let guards = match guards {
        Ok(guards) => guards,
        Err(e) => {
            finished.store(true, Ordering::Relaxed);
            return Err(RunError::Timely(e));
        }
    };
    let readiness = Arc::clone(&job_readiness);
    let results = guards.join();
    finished.store(true, Ordering::Relaxed);
    if let Some(watch) = watch {
        let _ = watch.join();
    }
    for (worker, result) in results.into_iter().enumerate() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(RunError::Worker { worker, source }),
            Err(detail) => return Err(RunError::Panicked { worker, detail }),
        }
    }
    match readiness.fatal_error() {
        Some(detail) => Err(RunError::Input(detail)),
        None => Ok(()),
    }
}

/// Timely's configuration for `workers` threads in each of `processes` processes, this one being
/// number `process`; `addresses` lists every process's `host:port` (default: consecutive ports
/// from 2101 on localhost, as timely's own examples use).
pub fn timely_config(
    workers: usize,
    processes: usize,
    process: usize,
    addresses: Option<Vec<String>>,
) -> Result<timely::Config, RunError> {
    let workers = workers.max(1);
    if process >= processes.max(1) {
        return Err(RunError::Timely(format!(
            "process number {process} (-p) must be below the number of processes {processes} (-n)"
        )));
    }
    let communication = if processes <= 1 {
        if workers == 1 {
            timely::CommunicationConfig::Thread
        } else {
            timely::CommunicationConfig::Process(workers)
        }
    } else {
        let addresses = addresses.unwrap_or_else(|| {
            (0..processes)
                .map(|i| format!("127.0.0.1:{}", 2101 + i))
                .collect()
        });
        if addresses.len() != processes || process >= processes {
            return Err(RunError::Timely(format!(
                "{} addresses for {processes} processes, this one number {process}",
                addresses.len()
            )));
        }
        timely::CommunicationConfig::Cluster {
            threads: workers,
            process,
            addresses,
            report: false,
            zerocopy: false,
        }
    };
    Ok(timely::Config {
        communication,
        worker: timely::WorkerConfig::default(),
    })
}
