//! The dataflow graph: source, then per-device operators (exchanged by device), then tenant-level
//! presence (exchanged by tenant), then the sink.
//!
//! Timely timestamps are event-time milliseconds. Every operator holds a capability at the last
//! frontier it processed and emits what the frontier's advance released at that time; records
//! released then are stamped at or after it, so downstream operators may again process in event-
//! time order as their frontier passes.

mod devices;
mod tenants;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use schemas::StatusTransition;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::Concatenate;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::probe::Handle;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Exchange, Probe};
use timely::dataflow::{Scope, StreamVec};

use crate::checkpoint::WorkerPart;
use crate::config::PipelineConfig;
use crate::cut::Cuts;
use crate::engine::EngineState;
use crate::events;
use crate::output::Output;
use crate::reading::route;
use crate::sink::Behind;
use crate::source::{Input, SourceSettings, source};
use crate::tenant::Tenants;
use devices::{Outputs, Restored, devices};
use tenants::{TenantsRestored, tenants};

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
    let readings = streams.readings;
    let marks = streams.marks.broadcast();
    let restored = Restored {
        engines: state.engines,
        snapshot: Rc::clone(&snapshot),
        cuts: Rc::clone(&state.cuts),
        clocks: streams.clocks,
        through: state.through,
    };
    let Outputs { all, statuses } = devices(readings, marks, Arc::clone(&cfg), burst, restored);
    let devices = all.probe_with(&processed);
    let statuses = statuses.exchange(|s: &StatusTransition| route(&s.tenant_id));
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
