//! Checkpoints taken while the job runs. Worker 0's source announces a cut at an event time `C`
//! no operator has passed; each worker's device operator, on reaching `C`, encodes its devices
//! into the part's writer (a thread writes them while the job runs on) and saves the source's
//! positions at `C`; its tenant operator saves its tenants; once the worker's sink has seen
//! everything before `C` and Kafka has acknowledged it, the worker finishes its part. This keeps
//! one worker's parts of every cut in flight until they are finished.

use std::collections::BTreeMap;

use crate::checkpoint::{CheckpointError, PartWriter, Store, WorkerPart};
use crate::tenant::Tenants;
use crate::watermark::Resume;

/// One cut's part as the operators fill it in.
#[derive(Debug, Default)]
struct Partial {
    generation: u64,
    /// Positions and clocks, and the writer holding the devices (see
    /// [`crate::engine::Engine::state`]).
    source_and_engine: Option<(Vec<Resume>, PartWriter)>,
    tenants: Option<Tenants>,
}

/// Where one worker's parts go.
#[derive(Debug, Clone)]
struct Target {
    store: Store,
    worker: usize,
    workers: usize,
}

/// The cuts one worker has been told of and not yet written.
#[derive(Debug, Default)]
pub struct Cuts {
    pending: BTreeMap<i64, Partial>,
    last_generation: u64,
    target: Option<Target>,
}

impl Cuts {
    /// The cuts of worker `worker` of `workers`, whose parts go to `store`.
    pub fn new(store: Store, worker: usize, workers: usize) -> Cuts {
        Cuts {
            target: Some(Target {
                store,
                worker,
                workers,
            }),
            ..Cuts::default()
        }
    }

    /// Starts the part of cut `at`, for the device operator to encode its devices into.
    pub fn begin(&self, at: i64) -> Result<PartWriter, CheckpointError> {
        let (Some(t), Some(p)) = (&self.target, self.pending.get(&at)) else {
            return Err(CheckpointError::NoCut(at));
        };
        t.store.begin(p.generation, t.worker, t.workers)
    }

    /// Notes cut `generation` at event time `at`.
    pub fn announce(&mut self, at: i64, generation: u64) {
        self.last_generation = self.last_generation.max(generation);
        self.pending.insert(
            at,
            Partial {
                generation,
                ..Partial::default()
            },
        );
    }

    /// The highest generation announced: a checkpoint written on stop takes the next one.
    pub fn last_generation(&self) -> u64 {
        self.last_generation
    }

    /// The earliest cut the device operator has yet to save, if it is before `frontier`.
    pub fn next_for_devices(&self, frontier: i64) -> Option<i64> {
        self.pending
            .iter()
            .find(|(_, p)| p.source_and_engine.is_none())
            .map(|(at, _)| *at)
            .filter(|at| *at < frontier)
    }

    /// The device operator's share of cut `at`.
    pub fn devices_done(&mut self, at: i64, positions: Vec<Resume>, devices: PartWriter) {
        if let Some(p) = self.pending.get_mut(&at) {
            p.source_and_engine = Some((positions, devices));
        }
    }

    /// Gives up cut `at` (its state could not be encoded): the previous checkpoint stays the
    /// latest until the next cut.
    pub fn abandon(&mut self, at: i64) {
        self.pending.remove(&at);
    }

    /// The earliest cut the tenant operator has yet to save, if it is at or before `frontier`
    /// (the device operators emit what precedes a cut strictly before it) and the device
    /// operator has saved it.
    pub fn next_for_tenants(&self, frontier: Option<i64>) -> Option<i64> {
        self.pending
            .iter()
            .find(|(_, p)| p.tenants.is_none() && p.source_and_engine.is_some())
            .map(|(at, _)| *at)
            .filter(|at| frontier.is_none_or(|f| *at <= f))
    }

    /// The tenant operator's share of cut `at`.
    pub fn tenants_done(&mut self, at: i64, tenants: Tenants) {
        if let Some(p) = self.pending.get_mut(&at) {
            p.tenants = Some(tenants);
        }
    }

    /// The earliest cut whose part is complete and whose preceding outputs `written` says the
    /// sink has: the writer holding its devices and the rest of its part, removed from the cuts
    /// in flight.
    pub fn take_ready(
        &mut self,
        written: impl Fn(i64) -> bool,
    ) -> Option<(PartWriter, WorkerPart)> {
        let (&at, first) = self.pending.iter().next()?;
        if first.source_and_engine.is_none() || first.tenants.is_none() || !written(at) {
            return None;
        }
        let p = self.pending.remove(&at)?;
        let (resume, devices) = p.source_and_engine?;
        Some((
            devices,
            WorkerPart {
                cut: Some(at),
                through: at,
                positions: resume
                    .iter()
                    .filter_map(|r| r.next.map(|n| (r.partition, n)))
                    .collect(),
                clocks: resume.into_iter().map(|r| r.clock).collect(),
                engine: Vec::new(),
                tenants: p.tenants.unwrap_or_default(),
                transitions: Vec::new(),
                broken: None,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_is_ready_once_both_operators_and_the_sink_are_past_its_cut() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut cuts = Cuts::new(Store::new(dir.path()), 0, 1);
        cuts.announce(1_000, 4);
        cuts.announce(2_000, 5);
        assert_eq!(cuts.last_generation(), 5);
        assert_eq!(cuts.next_for_devices(1_000), None, "not passed yet");
        assert_eq!(cuts.next_for_devices(1_001), Some(1_000));
        assert_eq!(cuts.next_for_tenants(None), None, "the devices first");
        let devices = cuts.begin(1_000).expect("a writer");
        cuts.devices_done(1_000, Vec::new(), devices);
        assert_eq!(cuts.next_for_devices(5_000), Some(2_000));
        assert_eq!(cuts.next_for_tenants(Some(999)), None);
        assert_eq!(cuts.next_for_tenants(Some(1_000)), Some(1_000));
        assert!(cuts.take_ready(|_| true).is_none(), "tenants missing");
        cuts.tenants_done(1_000, Tenants::default());
        assert!(cuts.take_ready(|_| false).is_none(), "sink behind");
        let (devices, part) = cuts.take_ready(|at| at <= 1_000).expect("ready");
        assert_eq!((devices.generation(), part.cut), (4, Some(1_000)));
        assert!(cuts.take_ready(|_| true).is_none());
        assert!(
            Cuts::default().begin(2_000).is_err(),
            "no store, no part to write"
        );
    }
}
