//! The device operator: readings (exchanged by device) and the sources' marks in; every derived
//! record of the devices out, and, on a second output, the status transitions the tenant operator
//! counts. Two outputs rather than one stream read twice: timely copies every batch of a stream
//! for each reader but the last, and the statuses are a hundredth of the records.
//!
//! What to process when is [`Progress`]'s; what processing gives is the [`Engine`]'s; this is
//! the wiring between them and timely: capabilities, activations, checkpoint cuts.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use schemas::StatusTransition;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use super::{GAUGE_EVERY, as_ms, first, shrink};
use crate::checkpoint::{self, WorkerPart, owned};
use crate::config::PipelineConfig;
use crate::cut::Cuts;
use crate::engine::{Engine, EngineState};
use crate::events;
use crate::output::Output;
use crate::progress::{CutAt, Next, Progress};
use crate::reading::Reading;
use crate::source::Mark;
use crate::watermark::Watermarks;

/// The device operator's restored engines and where it leaves its state.
pub(super) struct Restored {
    pub(super) engines: Vec<EngineState>,
    pub(super) snapshot: Rc<RefCell<WorkerPart>>,
    pub(super) cuts: Rc<RefCell<Cuts>>,
    /// The worker's source positions at each cut.
    pub(super) clocks: Rc<RefCell<Watermarks>>,
    /// Everything before this event time is in the restored engines.
    pub(super) through: i64,
}

/// The operator's two outputs.
pub(super) struct Outputs<'s> {
    /// Every record.
    pub(super) all: StreamVec<'s, u64, Output>,
    /// The status transitions among them, for the tenant operator.
    pub(super) statuses: StreamVec<'s, u64, StatusTransition>,
}

pub(super) fn devices<'s>(
    readings: StreamVec<'s, u64, Reading>,
    marks: StreamVec<'s, u64, Mark>,
    cfg: Arc<PipelineConfig>,
    burst: usize,
    restored: Restored,
) -> Outputs<'s> {
    let scope = readings.scope();
    let (worker, peers) = (scope.index(), scope.peers());
    let mut builder = OperatorBuilder::new("Devices".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address);
    // The exchange is this input's pact, not timely's `exchange` operator: that operator sorts
    // what one activation received by time with an unstable sort, which can reorder a partition's
    // readings of one time, and the last-seen announcer needs each device's readings in the
    // order its partition holds them. An input pulls each sender's messages in the order sent.
    let mut readings_in = builder.new_input(readings, Exchange::new(|r: &Reading| r.route()));
    let mut marks_in = builder.new_input(marks, Pipeline);
    let (all_out, all) = builder.new_output();
    let (statuses_out, statuses) = builder.new_output();
    let mut all_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Output>>>::from(all_out);
    let mut statuses_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<StatusTransition>>>::from(statuses_out);
    builder.build(move |caps| {
        let mut caps = Some(caps);
        let mut engine = Engine::new(cfg);
        for state in restored.engines {
            engine.restore(state, |device| owned(device, worker, peers));
        }
        let (snapshot, cuts, clocks) = (restored.snapshot, restored.cuts, restored.clocks);
        let mut out = Vec::new();
        // Every source worker says when it is done; the protocol is in `Progress`.
        let mut progress = Progress::new(peers, restored.through);
        let mut gauges = Instant::now();
        move |frontiers| {
            readings_in.for_each(|_, data| {
                for r in data.drain(..) {
                    engine.push(r, &mut out);
                }
            });
            marks_in.for_each(|_, data| {
                for m in data.drain(..) {
                    match m {
                        Mark::Data(wm) => engine.data_watermark(wm),
                        Mark::Cut { at, generation } => {
                            cuts.borrow_mut().announce(at, generation);
                        }
                        Mark::Done {
                            hold,
                            finished,
                            last,
                        } => progress.source_done(hold, finished, last),
                    }
                }
            });
            let input = match (first(&frontiers[0]), first(&frontiers[1])) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let Some(held) = caps.as_mut() else {
                return;
            };
            let (mut all, mut statuses) = (all_out.activate(), statuses_out.activate());
            let mut emit = |out: &mut Vec<Output>, held: &[Capability<u64>]| {
                if out.is_empty() {
                    return;
                }
                let mut to_tenants = statuses.session(&held[1]);
                for o in out.iter() {
                    if let Output::Status(s) = o {
                        to_tenants.give(s.clone());
                    }
                }
                all.session(&held[0]).give_iterator(out.drain(..));
            };
            // Last-seen times announced as readings arrived go out now, at the time the
            // operator holds (before any cut it has yet to save: see Engine::state).
            emit(&mut out, held);
            let now = *held[0].time();
            match progress.next(input, now, |f| cuts.borrow().next_for_devices(f)) {
                Next::Wait => {}
                Next::Advance {
                    to,
                    timers,
                    cut,
                    more,
                } => {
                    let done = engine.advance(as_ms(to), timers, &mut out, burst);
                    emit(&mut out, held);
                    shrink(&mut out);
                    if !done {
                        activator.activate();
                    } else {
                        if let Some(cut) = cut {
                            save_cut(&engine, &cuts, &clocks, cut);
                        }
                        if to > now {
                            for c in held.iter_mut() {
                                c.downgrade(&to);
                            }
                        }
                        if more {
                            activator.activate();
                        }
                    }
                }
                Next::Finish { last } => {
                    // Finals arrive only when a bounded input ended; a stopped unbounded
                    // one leaves its windows open rather than emit partial ones.
                    let done = engine.finish(last, &mut out, burst);
                    emit(&mut out, held);
                    shrink(&mut out);
                    if done {
                        caps = None;
                    } else {
                        activator.activate();
                    }
                }
                Next::Stop => {
                    let mut part = snapshot.borrow_mut();
                    part.through = progress.stopped_through(now);
                    let mut bytes = Vec::new();
                    match checkpoint::encode_into(&mut bytes, &engine.state(false)) {
                        Ok(()) => part.engine = bytes,
                        Err(e) => part.broken = Some(format!("devices: {e}")),
                    }
                    caps = None;
                }
            }
            if gauges.elapsed() >= GAUGE_EVERY {
                gauges = Instant::now();
                events::worker_state(
                    worker,
                    engine.devices(),
                    engine.open_windows(),
                    engine.pending(),
                );
            }
        }
    });
    Outputs { all, statuses }
}

/// Saves the device operator's share of `cut`, which it has processed up to exactly (unless
/// the cut says otherwise: it is then given up rather than saved wrong).
fn save_cut(engine: &Engine, cuts: &RefCell<Cuts>, clocks: &RefCell<Watermarks>, cut: CutAt) {
    let saved = if cut.exact {
        cuts.borrow()
            .begin(cut.at)
            .map_err(|e| e.to_string())
            .and_then(|mut part| {
                checkpoint::encode_into(&mut part, &engine.state(true))
                    .map(|()| part)
                    .map_err(|e| e.to_string())
            })
    } else {
        Err("the device operator had already passed it".to_string())
    };
    match saved {
        Ok(part) => cuts
            .borrow_mut()
            .devices_done(cut.at, clocks.borrow().cut(cut.at), part),
        Err(e) => {
            tracing::error!(cut = cut.at, error = %e, "a checkpoint cut is given up");
            cuts.borrow_mut().abandon(cut.at);
        }
    }
}
