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

use crate::config::PipelineConfig;
use crate::engine::Engine;
use crate::metrics;
use crate::output::Output;
use crate::reading::{Reading, route};
use crate::sink::OutputSink;
use crate::source::{Input, Mark, SourceSettings, source};
use crate::tenant::Tenants;

const GAUGE_EVERY: Duration = Duration::from_secs(1);
/// Records the device operator emits per activation at most, unless a job says otherwise. When
/// every device's window ends at the same time, one frontier step releases a window per device;
/// emitting them in slices lets the sink drain each before the next is made, instead of holding
/// them all in memory at once.
pub const BURST: usize = 8_192;

/// Builds the whole graph in `scope` and returns the probe that tells when the sink is done.
pub fn build(
    scope: Scope<'_, u64>,
    input: Box<dyn Input>,
    settings: SourceSettings,
    cfg: Arc<PipelineConfig>,
    sink: Rc<RefCell<Box<dyn OutputSink>>>,
    burst: usize,
) -> Handle<u64> {
    let processed = Handle::new();
    let streams = source(scope, input, settings, processed.clone());
    let readings = streams.readings.exchange(|r: &Reading| r.route());
    let marks = streams.marks.broadcast();
    let devices =
        devices(readings, marks, Arc::clone(&cfg), scope.index(), burst).probe_with(&processed);
    let statuses = devices
        .clone()
        .flat_map(|o| match o {
            Output::Status(s) => Some(s),
            _ => None,
        })
        .exchange(|s: &StatusTransition| route(&s.tenant_id));
    let tenants = tenants(statuses, cfg);
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

fn devices<'s>(
    readings: StreamVec<'s, u64, Reading>,
    marks: StreamVec<'s, u64, Mark>,
    cfg: Arc<PipelineConfig>,
    worker: usize,
    burst: usize,
) -> StreamVec<'s, u64, Output> {
    let scope = readings.scope();
    readings.binary_frontier::<_, CapacityContainerBuilder<Vec<Output>>, _, _, _, _>(
        marks,
        Pipeline,
        Pipeline,
        "Devices",
        move |cap, info| {
            let activator = scope.activator_for(info.address);
            let mut cap = Some(cap);
            let mut engine = Engine::new(cfg);
            let mut out = Vec::new();
            // Every source worker sends one final mark when its bounded input ends; a worker
            // stopped by an error sends none, and then nothing is finished.
            let sources = scope.peers();
            let mut finals: (usize, Option<i64>) = (0, None);
            let mut gauges = Instant::now();
            move |(readings, f1), (marks, f2), output| {
                readings.for_each(|_, data| {
                    for r in data.drain(..) {
                        engine.push(r);
                    }
                });
                marks.for_each(|_, data| {
                    for m in data.drain(..) {
                        match m {
                            Mark::Data(wm) => engine.data_watermark(wm),
                            Mark::Final(wm) => {
                                finals.0 += 1;
                                if let Some(wm) = wm {
                                    finals.1 = Some(finals.1.map_or(wm, |s: i64| s.min(wm)));
                                }
                            }
                        }
                    }
                });
                let frontier = match (first(f1), first(f2)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let Some(held) = cap.as_mut() else {
                    return;
                };
                match frontier {
                    Some(f) if f > *held.time() => {
                        let done = engine.advance(as_ms(f), &mut out, burst);
                        output.session(held).give_iterator(out.drain(..));
                        shrink(&mut out);
                        if done {
                            held.downgrade(&f);
                        } else {
                            activator.activate();
                        }
                    }
                    Some(_) => {}
                    None => {
                        // Finals arrive only when a bounded input ended; a stopped unbounded
                        // one leaves its windows open rather than emit partial ones.
                        let done = match finals {
                            (n, last) if n == sources => {
                                let done = engine.finish(last, &mut out, burst);
                                output.session(held).give_iterator(out.drain(..));
                                shrink(&mut out);
                                done
                            }
                            _ => true,
                        };
                        if done {
                            cap = None;
                        } else {
                            activator.activate();
                        }
                    }
                }
                if gauges.elapsed() >= GAUGE_EVERY {
                    gauges = Instant::now();
                    metrics::worker_state(
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

fn tenants<'s>(
    statuses: StreamVec<'s, u64, StatusTransition>,
    cfg: Arc<PipelineConfig>,
) -> StreamVec<'s, u64, Output> {
    statuses.unary_frontier::<CapacityContainerBuilder<Vec<Output>>, _, _, _>(
        Pipeline,
        "Tenants",
        move |cap, _info| {
            let mut cap = Some(cap);
            let mut tenants = Tenants::default();
            let mut pending: BTreeMap<i64, Vec<StatusTransition>> = BTreeMap::new();
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
                    None => cap = None,
                }
            }
        },
    )
}

fn write<'s>(
    all: StreamVec<'s, u64, Output>,
    sink: Rc<RefCell<Box<dyn OutputSink>>>,
) -> StreamVec<'s, u64, ()> {
    all.unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "Sink", move |_, _| {
        move |input, _output| {
            input.for_each(|_, data| {
                let mut sink = sink.borrow_mut();
                for record in data.iter() {
                    let mut backoff = Duration::from_millis(100);
                    while let Err(e) = sink.write(record) {
                        if e.is_permanent() {
                            metrics::write_error();
                            tracing::error!(
                                error = %e,
                                event_id = record.event_id(),
                                "a derived record cannot be written"
                            );
                            break;
                        }
                        tracing::warn!(error = %e, "cannot write a derived record; retrying");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            });
        }
    })
}
