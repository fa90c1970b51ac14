//! The tenant operator: the device operator's status transitions (exchanged by tenant) in, the
//! tenant-level records (mass outages) out, applied in event-time order as the frontier passes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use schemas::StatusTransition;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use super::{as_ms, first, shrink};
use crate::checkpoint::{WorkerPart, owned};
use crate::config::PipelineConfig;
use crate::cut::Cuts;
use crate::output::Output;
use crate::tenant::Tenants;

/// The tenant operator's restored state and where it leaves its state.
pub(super) struct TenantsRestored {
    pub(super) tenants: Vec<Tenants>,
    pub(super) transitions: Vec<StatusTransition>,
    pub(super) snapshot: Rc<RefCell<WorkerPart>>,
    pub(super) cuts: Rc<RefCell<Cuts>>,
}

pub(super) fn tenants<'s>(
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
