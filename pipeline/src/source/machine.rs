//! The source's protocol as a plain state machine: one [`SourceMachine::step`] per activation
//! says what to send, where the capabilities go and when to run again. Stop and snapshot, cut
//! proposals, backpressure, polling with backoff, end of input and capability downgrades live
//! here; the operator in `mod.rs` only hands its sessions what a step gathered, and tests drive
//! the machine without timely.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use schemas::retry::{Backoff, Delays, Retryable};

use super::triage::{Triage, Triaged};
use super::{Clock, Input, Mark};
use crate::checkpoint::WorkerPart;
use crate::events;
use crate::readiness::Readiness;
use crate::watermark::{Hold, Watermarks};

/// Records read per step at most, so one busy source cannot starve the other operators.
pub const BATCH: usize = 8_192;
/// How long a source with nothing to read waits before polling again.
const IDLE_POLL: Duration = Duration::from_millis(5);
/// How many capability steps a source may run ahead of what the device operators have
/// processed before it stops reading: without this bound a fast source fills memory with
/// readings the operators cannot take yet.
const MAX_STEPS_AHEAD: i64 = 8;
/// Checkpoints are cut at whole seconds of event time: each partition remembers where it stood
/// at each second it has reached and the job has not yet passed.
pub const CUT_GRID_MS: i64 = 1_000;

/// Where the capabilities go after a step's records are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capabilities {
    /// Stay where they are.
    Keep,
    /// Move to this time.
    Downgrade(u64),
    /// Drop them: the source sends nothing more.
    Release,
}

/// When the operator runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// At once: there may be more to read.
    Now,
    /// After a pause (nothing to read, too far ahead, or backing off).
    After(Duration),
    /// Never: the source is done.
    Never,
}

/// What one step gathered: records to send at the capabilities' current time, then what to do
/// with them.
#[derive(Debug)]
pub struct Step {
    /// Readings, dead letters.
    pub triaged: Triaged,
    /// Marks, in the order they are to go out.
    pub marks: Vec<Mark>,
    /// Where the capabilities go.
    pub capabilities: Capabilities,
    /// When to run again.
    pub wake: Wake,
}

impl Default for Step {
    fn default() -> Self {
        Step {
            triaged: Triaged::default(),
            marks: Vec::new(),
            capabilities: Capabilities::Keep,
            wake: Wake::Now,
        }
    }
}

/// Worker 0's checkpoint cut proposals: one every `every` of wall time, at the next whole second
/// of event time past the capability, never at or before the last cut (or the resumed state).
#[derive(Debug)]
pub struct CutProposer {
    every: Duration,
    since: Instant,
    generation: u64,
    last: u64,
}

impl CutProposer {
    /// Proposals every `every`, numbered on from `generation`, none at or before `through`.
    pub fn new(every: Duration, generation: u64, through: i64) -> CutProposer {
        CutProposer {
            every,
            since: Instant::now(),
            generation,
            last: u64::try_from(through).unwrap_or(0),
        }
    }

    /// A cut to announce, with the capability at `held`.
    pub fn propose(&mut self, held: u64) -> Option<Mark> {
        let at = (held as i64).div_euclid(CUT_GRID_MS) * CUT_GRID_MS + CUT_GRID_MS;
        if self.since.elapsed() < self.every || held == 0 || at as u64 <= self.last {
            return None;
        }
        self.since = Instant::now();
        self.generation += 1;
        self.last = at as u64;
        Some(Mark::Cut {
            at,
            generation: self.generation,
        })
    }
}

/// Settings of the machine beside its input and triage.
pub struct MachineSettings {
    /// Capability step, ms.
    pub step_ms: i64,
    /// Wall clock for idleness.
    pub clock: Clock,
    /// Set to stop an unbounded input (without closing windows).
    pub stop: Arc<AtomicBool>,
    /// Where the source reports whether it can read.
    pub readiness: Arc<Readiness>,
    /// Worker 0's cut proposals, when checkpoints are taken while running.
    pub cuts: Option<CutProposer>,
    /// Accepted readings before this time are not sent again (see [`Triage::new`]); a stopped
    /// source's checkpoint keeps skipping them.
    pub replay_below: Option<i64>,
}

/// One worker's source: its input, triage, partition clocks and progress.
pub struct SourceMachine {
    input: Box<dyn Input>,
    triage: Triage,
    wm: Rc<RefCell<Watermarks>>,
    snapshot: Rc<RefCell<WorkerPart>>,
    settings: MachineSettings,
    sent_data: Option<i64>,
    /// The waits of a run of failed reads; `None` while reads succeed.
    failing: Option<Delays>,
    read: u64,
    records_in: ::metrics::Counter,
    step: Step,
}

fn to_time(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

impl SourceMachine {
    /// A machine reading `input` into the partition clocks `wm`; a stop leaves its positions
    /// in `snapshot`.
    pub fn new(
        input: Box<dyn Input>,
        triage: Triage,
        wm: Rc<RefCell<Watermarks>>,
        snapshot: Rc<RefCell<WorkerPart>>,
        settings: MachineSettings,
    ) -> SourceMachine {
        settings.readiness.started();
        let records_in = events::records_in(input.topic());
        SourceMachine {
            input,
            triage,
            wm,
            snapshot,
            settings,
            sent_data: None,
            failing: None,
            read: 0,
            records_in,
            step: Step::default(),
        }
    }

    /// One activation with the capabilities at `held` and the device operators' frontier at
    /// `processed`: what to send and do. The caller sends the step's records at `held`, then
    /// moves the capabilities.
    pub fn step(&mut self, held: u64, processed: Option<u64>) -> &mut Step {
        // Sent records are taken out of these by the operator; clearing does not rely on it.
        self.step.triaged.readings.clear();
        self.step.triaged.dead.clear();
        self.step.marks.clear();
        self.step.capabilities = Capabilities::Keep;
        self.step.wake = Wake::Now;
        if self.settings.stop.load(Ordering::Relaxed) {
            self.stopped(held);
            return &mut self.step;
        }
        if let Some(b) = processed {
            self.wm.borrow_mut().prune(b as i64);
        }
        if let Some(cut) = self.settings.cuts.as_mut().and_then(|c| c.propose(held)) {
            self.step.marks.push(cut);
        }
        let ahead_limit = (MAX_STEPS_AHEAD * self.settings.step_ms).unsigned_abs();
        if processed.is_some_and(|b| held > b.saturating_add(ahead_limit)) {
            self.step.wake = Wake::After(Duration::from_millis(1));
            return &mut self.step;
        }
        let now = (self.settings.clock)();
        let got = match self.poll(now) {
            Ok(got) => got,
            Err(wake) => {
                self.step.wake = wake;
                return &mut self.step;
            }
        };
        self.progress(held, now, got);
        &mut self.step
    }

    /// Stopped: where this worker stands goes into the checkpoint the job writes on its way out.
    fn stopped(&mut self, held: u64) {
        let mut part = self.snapshot.borrow_mut();
        part.positions = self.input.positions();
        part.clocks = self.wm.borrow().export();
        // Readings before the cut this run resumed from are still to be skipped.
        part.cut = self.settings.replay_below;
        self.step.marks.push(Mark::Done {
            hold: Some(held),
            finished: false,
            last: None,
        });
        self.step.capabilities = Capabilities::Release;
        self.step.wake = Wake::Never;
    }

    /// Reads and triages up to a batch; how many records, or when to try again.
    fn poll(&mut self, now: i64) -> Result<usize, Wake> {
        let mut wm = self.wm.borrow_mut();
        let (triage, out) = (&mut self.triage, &mut self.step.triaged);
        let polled = self
            .input
            .poll(BATCH, &mut |rec| triage.take(rec, &mut wm, now, out));
        match polled {
            Ok(got) => {
                self.records_in.increment(got as u64);
                if self.failing.take().is_some() {
                    self.settings.readiness.failing(false);
                    events::source_up(true);
                }
                Ok(got)
            }
            Err(e) if !e.is_retryable() => {
                tracing::error!(error = %e, "the input cannot be read");
                self.settings.readiness.fatal(e.to_string());
                self.settings.stop.store(true, Ordering::Relaxed);
                self.step.capabilities = Capabilities::Release;
                Err(Wake::Never)
            }
            Err(e) => {
                let backoff = self
                    .failing
                    .get_or_insert_with(|| {
                        self.settings.readiness.failing(true);
                        Backoff::Unavailable.delays()
                    })
                    .next_wait();
                tracing::warn!(
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "source cannot read"
                );
                events::source_up(false);
                Err(Wake::After(backoff))
            }
        }
    }

    /// After reading `got` records: finished partitions, the data mark, the end of a bounded
    /// input, and where the capabilities go.
    fn progress(&mut self, held: u64, now: i64, got: usize) {
        let mut wm = self.wm.borrow_mut();
        for p in self.input.take_finished() {
            wm.finish(p);
        }
        wm.tick(now);
        // Every increase is sent, before the capability moves past it: a device operator must
        // know, for any deadline the frontier passes, whether data got there first.
        if let Some(d) = wm.data_max()
            && self.sent_data.is_none_or(|s| d > s)
        {
            self.sent_data = Some(d);
            self.step.marks.push(Mark::Data(d));
        }
        self.read = self.read.saturating_add(got as u64);
        if self.input.bounded() && wm.all_finished() {
            tracing::info!(records = self.read, topic = %self.input.topic(), "input read to its end");
            self.step.marks.push(Mark::Done {
                hold: None,
                finished: true,
                last: wm.data_min(),
            });
            self.step.capabilities = Capabilities::Release;
            self.step.wake = Wake::Never;
            return;
        }
        match wm.hold() {
            Hold::Release => {
                self.step.capabilities = Capabilities::Release;
                self.step.wake = Wake::Never;
                return;
            }
            Hold::At(w) => {
                let step = self.settings.step_ms;
                let t = to_time(w.div_euclid(step) * step);
                if t > held {
                    self.step.capabilities = Capabilities::Downgrade(t);
                    events::watermark(w, now);
                }
            }
            Hold::Back => {}
        }
        self.step.wake = if got > 0 {
            Wake::Now
        } else {
            Wake::After(IDLE_POLL)
        };
    }
}

#[cfg(test)]
mod tests;
