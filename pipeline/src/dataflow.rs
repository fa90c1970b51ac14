//! The dataflow graph: source, then per-device operators (exchanged by device), then tenant-level
//! presence (exchanged by tenant), then the sink.
//!
//! Timely timestamps are event-time milliseconds. Every operator holds a capability at the last
//! frontier it processed and emits what the frontier's advance released at that time; records
//! released then are stamped at or after it, so downstream operators may again process in event-
//! time order as their frontier passes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemas::StatusTransition;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::Concatenate;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::probe::Handle;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Exchange, Probe};
use timely::dataflow::{Scope, StreamVec};

use crate::checkpoint::{self, WorkerPart, owned};
use crate::config::PipelineConfig;
use crate::cut::Cuts;
use crate::engine::{Engine, EngineState};
use crate::events;
use crate::output::Output;
use crate::progress::{CutAt, Next, Progress};
use crate::reading::{Reading, route};
use crate::sink::Behind;
use crate::source::{Input, Mark, SourceSettings, source};
use crate::tenant::Tenants;
use crate::watermark::Watermarks;

const GAUGE_EVERY: Duration = Duration::from_secs(1);
/// Records the device operator emits per activation at most, unless a job says otherwise. When
/// every device's window ends at the same time, one frontier step releases a window per device;
/// emitting them in slices lets the sink drain each before the next is made, instead of holding
/// them all in memory at once.
pub const BURST: usize = 8_192;

/// What a worker's operators start from (a checkpoint's parts: each operator keeps its share)
/// and where they leave their state when the job stops.
#[derive(Default)]
pub struct WorkerState {
    /// Every part's devices and pending readings.
    pub engines: Vec<EngineState>,
    /// Every part's tenants.
    pub tenants: Vec<Tenants>,
    /// Every part's unapplied status transitions.
    pub transitions: Vec<StatusTransition>,
    /// Filled by the operators as they stop.
    pub snapshot: Rc<RefCell<WorkerPart>>,
    /// Checkpoints cut while running, filled by the operators as they pass each cut.
    pub cuts: Rc<RefCell<Cuts>>,
    /// Everything before this event time is in the restored state.
    pub through: i64,
}

/// Builds the whole graph in `scope` and returns the probe that tells when the sink is done.
pub fn build(
    scope: Scope<'_, u64>,
    input: Box<dyn Input>,
    settings: SourceSettings,
    cfg: Arc<PipelineConfig>,
    sink: Rc<RefCell<Behind>>,
    burst: usize,
    state: WorkerState,
) -> Handle<u64> {
    let processed = Handle::new();
    let snapshot = Rc::clone(&state.snapshot);
    let streams = source(
        scope,
        input,
        settings,
        processed.clone(),
        Rc::clone(&snapshot),
    );
    let readings = streams.readings.exchange(|r: &Reading| r.route());
    let marks = streams.marks.broadcast();
    let restored = Restored {
        engines: state.engines,
        snapshot: Rc::clone(&snapshot),
        cuts: Rc::clone(&state.cuts),
        clocks: streams.clocks,
        through: state.through,
    };
    let devices =
        devices(readings, marks, Arc::clone(&cfg), burst, restored).probe_with(&processed);
    let statuses = devices
        .clone()
        .flat_map(|o| match o {
            Output::Status(s) => Some(s),
            _ => None,
        })
        .exchange(|s: &StatusTransition| route(&s.tenant_id));
    let tenants = tenants(
        statuses,
        cfg,
        TenantsRestored {
            tenants: state.tenants,
            transitions: state.transitions,
            snapshot,
            cuts: state.cuts,
        },
    );
    let dead = streams.dead.map(Output::DeadLetter);
    let all = scope.concatenate([devices, tenants, dead]);
    let (probe, _) = write(all, sink).probe();
    probe
}

fn first(f: &timely::progress::frontier::MutableAntichain<u64>) -> Option<u64> {
    f.frontier().first().copied()
}

/// Gives back the memory of a burst (every device's first status, every window at once) so the
/// job does not keep its peak for ever.
fn shrink(out: &mut Vec<Output>) {
    const KEEP: usize = 4_096;
    if out.capacity() > 4 * KEEP {
        out.shrink_to(KEEP);
    }
}

fn as_ms(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// The device operator's restored engines and where it leaves its state.
struct Restored {
    engines: Vec<EngineState>,
    snapshot: Rc<RefCell<WorkerPart>>,
    cuts: Rc<RefCell<Cuts>>,
    /// The worker's source positions at each cut.
    clocks: Rc<RefCell<Watermarks>>,
    /// Everything before this event time is in the restored engines.
    through: i64,
}

fn devices<'s>(
    readings: StreamVec<'s, u64, Reading>,
    marks: StreamVec<'s, u64, Mark>,
    cfg: Arc<PipelineConfig>,
    burst: usize,
    restored: Restored,
) -> StreamVec<'s, u64, Output> {
    let scope = readings.scope();
    let (worker, peers) = (scope.index(), scope.peers());
    readings.binary_frontier::<_, CapacityContainerBuilder<Vec<Output>>, _, _, _, _>(
        marks,
        Pipeline,
        Pipeline,
        "Devices",
        move |cap, info| {
            let activator = scope.activator_for(info.address);
            let mut cap = Some(cap);
            let mut engine = Engine::new(cfg);
            for state in restored.engines {
                engine.restore(state, |device| owned(device, worker, peers));
            }
            let (snapshot, cuts, clocks) = (restored.snapshot, restored.cuts, restored.clocks);
            let mut out = Vec::new();
            // Every source worker says when it is done; the protocol is in `Progress`.
            let mut progress = Progress::new(scope.peers(), restored.through);
            let mut gauges = Instant::now();
            move |(readings, f1), (marks, f2), output| {
                readings.for_each(|_, data| {
                    for r in data.drain(..) {
                        engine.push(r, &mut out);
                    }
                });
                marks.for_each(|_, data| {
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
                let input = match (first(f1), first(f2)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let Some(held) = cap.as_mut() else {
                    return;
                };
                // Last-seen times announced as readings arrived go out now, at the time the
                // operator holds (before any cut it has yet to save: see Engine::state).
                if !out.is_empty() {
                    output.session(held).give_iterator(out.drain(..));
                }
                let next =
                    progress.next(input, *held.time(), |f| cuts.borrow().next_for_devices(f));
                match next {
                    Next::Wait => {}
                    Next::Advance {
                        to,
                        timers,
                        cut,
                        more,
                    } => {
                        let done = engine.advance(as_ms(to), timers, &mut out, burst);
                        output.session(held).give_iterator(out.drain(..));
                        shrink(&mut out);
                        if !done {
                            activator.activate();
                        } else {
                            if let Some(cut) = cut {
                                save_cut(&engine, &cuts, &clocks, cut);
                            }
                            if to > *held.time() {
                                held.downgrade(&to);
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
                        output.session(held).give_iterator(out.drain(..));
                        shrink(&mut out);
                        if done {
                            cap = None;
                        } else {
                            activator.activate();
                        }
                    }
                    Next::Stop => {
                        let mut part = snapshot.borrow_mut();
                        part.through = progress.stopped_through(*held.time());
                        let mut bytes = Vec::new();
                        match checkpoint::encode_into(&mut bytes, &engine.state(false)) {
                            Ok(()) => part.engine = bytes,
                            Err(e) => part.broken = Some(format!("devices: {e}")),
                        }
                        cap = None;
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
        },
    )
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

/// The tenant operator's restored state and where it leaves its state.
struct TenantsRestored {
    tenants: Vec<Tenants>,
    transitions: Vec<StatusTransition>,
    snapshot: Rc<RefCell<WorkerPart>>,
    cuts: Rc<RefCell<Cuts>>,
}

fn tenants<'s>(
    statuses: StreamVec<'s, u64, StatusTransition>,
    cfg: Arc<PipelineConfig>,
    restored: TenantsRestored,
) -> StreamVec<'s, u64, Output> {
    let scope = statuses.scope();
    let (worker, peers) = (scope.index(), scope.peers());
    statuses.unary_frontier::<CapacityContainerBuilder<Vec<Output>>, _, _, _>(
        Pipeline,
        "Tenants",
        move |cap, _info| {
            let mut cap = Some(cap);
            let TenantsRestored {
                tenants: restored,
                transitions,
                snapshot,
                cuts,
            } = restored;
            let mut tenants = Tenants::default();
            for mut t in restored {
                t.retain(|name| owned(name, worker, peers));
                tenants.absorb(t);
            }
            let mut pending: BTreeMap<i64, Vec<StatusTransition>> = BTreeMap::new();
            for s in transitions
                .into_iter()
                .filter(|s| owned(&s.tenant_id, worker, peers))
            {
                pending.entry(s.ts).or_default().push(s);
            }
            let mut out = Vec::new();
            move |(input, frontier), output| {
                input.for_each(|_, data| {
                    for s in data.drain(..) {
                        pending.entry(s.ts).or_default().push(s);
                    }
                });
                let Some(held) = cap.as_mut() else {
                    return;
                };
                let limit = first(frontier);
                let next_cut = || cuts.borrow().next_for_tenants(limit.map(as_ms));
                while let Some(at) = next_cut() {
                    let later = pending.split_off(&at);
                    for (ts, batch) in std::mem::replace(&mut pending, later) {
                        tenants.apply(ts, &batch, &cfg, &mut out);
                    }
                    output.session(held).give_iterator(out.drain(..));
                    cuts.borrow_mut().tenants_done(at, tenants.clone());
                    let at = u64::try_from(at).unwrap_or(0);
                    if at > *held.time() {
                        held.downgrade(&at);
                    }
                }
                if limit.is_some_and(|f| f <= *held.time()) {
                    return;
                }
                let ready = match limit {
                    Some(f) => {
                        let later = pending.split_off(&as_ms(f));
                        std::mem::replace(&mut pending, later)
                    }
                    None => std::mem::take(&mut pending),
                };
                for (ts, batch) in ready {
                    tenants.apply(ts, &batch, &cfg, &mut out);
                }
                output.session(held).give_iterator(out.drain(..));
                shrink(&mut out);
                match limit {
                    Some(f) => held.downgrade(&f),
                    None => {
                        // All transitions before the devices' last frontier are in and applied;
                        // what a checkpoint needs is the counts.
                        snapshot.borrow_mut().tenants = std::mem::take(&mut tenants);
                        cap = None;
                    }
                }
            }
        },
    )
}

fn write<'s>(all: StreamVec<'s, u64, Output>, sink: Rc<RefCell<Behind>>) -> StreamVec<'s, u64, ()> {
    all.unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "Sink", move |_, _| {
        move |input, _output| {
            let mut sink = sink.borrow_mut();
            let mut written = Ok(());
            input.for_each(|_, data| {
                if written.is_ok() {
                    written = sink.write(data);
                }
            });
            // Handed over once per activation, so a record waits for no more than the batch it
            // came with.
            if let Err(e) = written.and_then(|()| sink.hand_over()) {
                // Only a thread that panicked refuses; the worker's next flush fails the job.
                events::write_error();
                tracing::error!(error = %e, "derived records cannot be written");
            }
        }
    })
}
