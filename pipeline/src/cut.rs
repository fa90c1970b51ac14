//! Checkpoints taken while the job runs. Worker 0's source announces a cut at an event time `C`
//! no operator has passed; each worker's device operator, on reaching `C`, saves its devices and
//! the source's positions at `C`; its tenant operator saves its tenants; once the worker's sink
//! has seen everything before `C` and Kafka has acknowledged it, the worker writes its part.
//! This keeps one worker's parts of every cut in flight until they are written.

use std::collections::BTreeMap;

use crate::checkpoint::WorkerPart;
use crate::tenant::Tenants;
use crate::watermark::Resume;

/// One cut's part as the operators fill it in.
#[derive(Debug, Default)]
struct Partial {
    generation: u64,
    /// Positions and clocks, and the encoded devices (see [`crate::engine::Engine::encode`]).
    source_and_engine: Option<(Vec<Resume>, Vec<u8>)>,
    tenants: Option<Tenants>,
}

/// The cuts one worker has been told of and not yet written.
#[derive(Debug, Default)]
pub struct Cuts {
    pending: BTreeMap<i64, Partial>,
    last_generation: u64,
}

impl Cuts {
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
    pub fn devices_done(&mut self, at: i64, positions: Vec<Resume>, engine: Vec<u8>) {
        if let Some(p) = self.pending.get_mut(&at) {
            p.source_and_engine = Some((positions, engine));
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
    /// sink has: its generation and part, removed from the cuts in flight.
    pub fn take_ready(&mut self, written: impl Fn(i64) -> bool) -> Option<(u64, WorkerPart)> {
        let (&at, first) = self.pending.iter().next()?;
        if first.source_and_engine.is_none() || first.tenants.is_none() || !written(at) {
            return None;
        }
        let p = self.pending.remove(&at)?;
        let (resume, engine) = p.source_and_engine?;
        Some((
            p.generation,
            WorkerPart {
                cut: Some(at),
                through: at,
                positions: resume
                    .iter()
                    .filter_map(|r| r.next.map(|n| (r.partition, n)))
                    .collect(),
                clocks: resume.into_iter().map(|r| r.clock).collect(),
                engine,
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
        let mut cuts = Cuts::default();
        cuts.announce(1_000, 4);
        cuts.announce(2_000, 5);
        assert_eq!(cuts.last_generation(), 5);
        assert_eq!(cuts.next_for_devices(1_000), None, "not passed yet");
        assert_eq!(cuts.next_for_devices(1_001), Some(1_000));
        assert_eq!(cuts.next_for_tenants(None), None, "the devices first");
        cuts.devices_done(1_000, Vec::new(), vec![1, 2]);
        assert_eq!(cuts.next_for_devices(5_000), Some(2_000));
        assert_eq!(cuts.next_for_tenants(Some(999)), None);
        assert_eq!(cuts.next_for_tenants(Some(1_000)), Some(1_000));
        assert!(cuts.take_ready(|_| true).is_none(), "tenants missing");
        cuts.tenants_done(1_000, Tenants::default());
        assert!(cuts.take_ready(|_| false).is_none(), "sink behind");
        let (generation, part) = cuts.take_ready(|at| at <= 1_000).expect("ready");
        assert_eq!(
            (generation, part.cut, part.engine),
            (4, Some(1_000), vec![1, 2])
        );
        assert!(cuts.take_ready(|_| true).is_none());
    }
}
