//! Per-partition event time: which readings are late or from the future, each partition's
//! watermark, and the capability a source worker may hold given all its partitions.
//!
//! A partition's watermark is its clock truth ([`crate::clock`]: the broker's or a trusted
//! producer's record time, or a consensus of its devices that no minority of wrong clocks can
//! move) minus the allowed out-of-orderness. A reading behind it is late; judging per partition
//! makes lateness a function of the partition's own order, not of how partitions interleave. A
//! partition whose truth has not moved for longer than the idle timeout of wall-clock time
//! (silent, or sending only records that do not move it) follows the wall clock instead, so it
//! stops holding the frontier back;
//! in bounded runs (files, `--until-end`) there is no idleness, and a partition that has been read
//! to its end holds its last watermark until every partition has, so the frontier, and hence the
//! output, never depends on which partition finished first.
//!
//! For checkpoints taken while running, each partition also remembers where it stood when its
//! event time first reached each point of a grid (see [`Watermarks::cut`]).
//!
//! Inventory partitions ([`crate::source::joined`]) are partitions here too, with two
//! differences: their watermark is not data (a registration says nothing of how far the fleet's
//! time has moved), so it counts neither in [`Watermarks::data_max`] nor where a bounded input
//! ends ([`Watermarks::data_min`]); and one read to its end holds nothing back, as every record
//! it had was sent and it bounds no timer.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::clock::{ClockRules, Judged, RecordTime, Truth};
use crate::source::joined::is_inventory;

/// The event-time settings a tracker needs.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Allowed out-of-orderness, ms.
    pub out_of_orderness_ms: i64,
    /// Wall-clock silence after which a partition is idle, ms; `None` disables idleness.
    pub idle_timeout_ms: Option<i64>,
    /// How clocks are judged.
    pub clock: ClockRules,
}

/// One partition's event-time state; checkpoints keep it so lateness is judged after a restart
/// exactly as it would have been.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionClock {
    id: i32,
    /// The partition's clock truth and its devices' clocks.
    truth: Truth,
    /// Effective watermark: data or idleness, whichever is further.
    wm: Option<i64>,
    last_activity: i64,
    finished: bool,
}

impl PartitionClock {
    /// The watermark from data alone.
    fn data(&self, bounds: &Bounds) -> Option<i64> {
        self.truth
            .time()
            .map(|t| t.saturating_sub(bounds.out_of_orderness_ms))
    }

    /// Raises the effective watermark to what data has established.
    fn follow_data(&mut self, bounds: &Bounds) {
        if let Some(d) = self.data(bounds) {
            self.wm = Some(self.wm.map_or(d, |w| w.max(d)));
        }
    }
}

/// Where one partition stood at a checkpoint cut: the offset to read from on resume (`None`:
/// the beginning) and the event-time state to judge those records with.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The partition.
    pub partition: i32,
    /// The first offset to replay.
    pub next: Option<i64>,
    /// The partition's state just before that offset.
    pub clock: PartitionClock,
}

/// A partition's progress through the cut grid.
#[derive(Debug, Clone, Default)]
struct History {
    /// The offset after the last record read.
    next: Option<i64>,
    /// The largest grid point reached so far.
    level: Option<i64>,
    /// `(grid point, where the partition stood just before reaching it)`, oldest first.
    points: VecDeque<(i64, Option<i64>, PartitionClock)>,
}

/// The partitions one source worker reads.
#[derive(Debug, Clone)]
pub struct Watermarks {
    bounds: Bounds,
    partitions: Vec<PartitionClock>,
    history: Vec<History>,
    /// Spacing of the cut grid, ms; `None` when the job takes no checkpoints while running.
    grid: Option<i64>,
}

/// What a source may still send at, by its partitions' watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Nothing: a partition has no watermark yet, so everything is held back.
    Back,
    /// The least partition watermark.
    At(i64),
    /// Nothing is held: every partition finished without data, or none is assigned.
    Release,
}

impl Hold {
    /// The time held at, if any.
    pub fn at(self) -> Option<i64> {
        match self {
            Hold::At(t) => Some(t),
            Hold::Back | Hold::Release => None,
        }
    }
}

impl Watermarks {
    /// A tracker over `partitions`, at wall time `now`.
    pub fn new(bounds: Bounds, partitions: &[i32], now: i64) -> Watermarks {
        Watermarks {
            bounds,
            partitions: partitions
                .iter()
                .map(|id| PartitionClock {
                    id: *id,
                    truth: Truth::default(),
                    wm: None,
                    last_activity: now,
                    finished: false,
                })
                .collect(),
            history: vec![History::default(); partitions.len()],
            grid: None,
        }
    }

    /// Starts remembering, every `grid_ms` of event time, where each partition stood, so that a
    /// checkpoint can be cut at any grid point the job has not yet passed; `positions` are the
    /// offsets the partitions start reading at.
    pub fn record_cuts(&mut self, grid_ms: i64, positions: &[(i32, i64)]) {
        self.grid = Some(grid_ms.max(1));
        for (p, h) in self.partitions.iter().zip(&mut self.history) {
            h.next = positions
                .iter()
                .find(|(id, _)| *id == p.id)
                .map(|(_, o)| *o);
        }
    }

    fn index(&self, id: i32) -> Option<usize> {
        self.partitions.iter().position(|p| p.id == id)
    }

    /// The grid point event time `at` reaches in the partition at `i`, if it is a new one.
    fn new_point(&self, i: usize, at: i64) -> Option<i64> {
        let grid = self.grid?;
        let point = at.div_euclid(grid) * grid;
        self.history[i]
            .level
            .is_none_or(|l| point > l)
            .then_some(point)
    }

    /// Notes that the partition at `i` reached grid point `point` with its state `clock` and its
    /// next offset `next`.
    fn reach(&mut self, i: usize, point: i64, next: Option<i64>, clock: PartitionClock) {
        let h = &mut self.history[i];
        h.level = Some(point);
        h.points.push_back((point, next, clock));
    }

    /// Judges a reading of `tenant`/`device` stamped `ts` at `offset` in partition `id`, which
    /// arrived with `record`, and moves the partition's clock truth and watermark.
    #[allow(clippy::too_many_arguments)] // one reading's coordinates, passed as read
    pub fn observe(
        &mut self,
        id: i32,
        offset: i64,
        tenant: &str,
        device: &str,
        ts: i64,
        record: RecordTime,
        now: i64,
    ) -> Judged {
        let bounds = self.bounds;
        let Some(i) = self.index(id) else {
            return Judged::Accept {
                ts,
                offset: 0,
                retimed: false,
            };
        };
        // The state before this record, kept only when the record may reach a new grid point.
        let before = self.grid.and_then(|_| {
            let p = &self.partitions[i];
            let bound = p
                .truth
                .reach(tenant, device, ts, record, p.wm, &bounds.clock);
            self.new_point(i, bound).map(|_| p.clone())
        });
        let p = &mut self.partitions[i];
        let data = p.data(&bounds);
        let judged = p
            .truth
            .judge(tenant, device, ts, record, p.wm, &bounds.clock);
        p.follow_data(&bounds);
        // Progress is what keeps a partition from idling: records that do not move its truth
        // (garbage, late readings, a clock stuck in the past) do not hold the frontier back.
        if data.is_none() || p.data(&bounds) > data {
            p.last_activity = now;
        }
        let at = match judged {
            Judged::Accept { ts, .. } => Some(ts),
            Judged::Reject { arrival, .. } => arrival,
        };
        if let (Some(at), Some(before)) = (at, before)
            && let Some(point) = self.new_point(i, at)
        {
            self.reach(i, point, Some(offset), before);
        }
        self.history[i].next = Some(offset + 1);
        judged
    }

    /// Where every partition stood when its event time first reached `at` (a grid point the job
    /// has not passed): the first record at or after `at`, or, for a partition not there yet,
    /// where it stands now. Replaying from there, and skipping accepted readings before `at`,
    /// gives what followed the cut exactly as it came the first time.
    pub fn cut(&self, at: i64) -> Vec<Resume> {
        self.partitions
            .iter()
            .zip(&self.history)
            .map(|(p, h)| {
                let (next, clock) = h
                    .points
                    .iter()
                    .find(|(point, _, _)| *point >= at)
                    .map_or((h.next, p), |(_, next, clock)| (*next, clock));
                Resume {
                    partition: p.id,
                    next,
                    clock: clock.clone(),
                }
            })
            .collect()
    }

    /// Forgets grid points before `time`: no checkpoint can be cut there any more.
    pub fn prune(&mut self, time: i64) {
        for h in &mut self.history {
            while h.points.front().is_some_and(|(point, _, _)| *point < time) {
                h.points.pop_front();
            }
        }
    }

    /// The partitions' states, for a checkpoint.
    pub fn export(&self) -> Vec<PartitionClock> {
        self.partitions.clone()
    }

    /// Takes over the saved states of this tracker's partitions (others are not ours now); the
    /// partitions read on from where they stopped, active as of `now`.
    pub fn restore(&mut self, saved: &[PartitionClock], now: i64) {
        for p in &mut self.partitions {
            if let Some(s) = saved.iter().find(|s| s.id == p.id) {
                p.truth = s.truth.clone();
                p.wm = s.wm;
                p.last_activity = now;
            }
        }
    }

    /// Notes that the record at `offset` was not a usable reading: read, but no progress.
    pub fn touch(&mut self, id: i32, offset: i64) {
        if let Some(i) = self.index(id) {
            self.history[i].next = Some(offset + 1);
        }
    }

    /// Marks partition `id` as read to its end (bounded runs); a partition that ended before it
    /// heard enough devices for a clock truth takes one from what it heard.
    pub fn finish(&mut self, id: i32) {
        let bounds = self.bounds;
        if let Some(i) = self.index(id) {
            let p = &mut self.partitions[i];
            p.finished = true;
            p.truth.settle(&bounds.clock);
            p.follow_data(&bounds);
        }
    }

    /// Whether every partition has been read to its end.
    pub fn all_finished(&self) -> bool {
        self.partitions.iter().all(|p| p.finished)
    }

    /// Lets idle partitions follow the wall clock `now`: their watermark, and the truth later
    /// readings are judged against.
    pub fn tick(&mut self, now: i64) {
        let bounds = self.bounds;
        let Some(idle) = bounds.idle_timeout_ms else {
            return;
        };
        let follow = now - bounds.out_of_orderness_ms;
        for i in 0..self.partitions.len() {
            let p = &mut self.partitions[i];
            if !p.finished && now - p.last_activity >= idle && p.wm.is_none_or(|w| follow > w) {
                p.truth.follow(now, &bounds.clock);
                p.follow_data(&bounds);
                p.wm = Some(p.wm.map_or(follow, |w| w.max(follow)));
                if let Some(point) = self.new_point(i, follow) {
                    let (after, next) = (self.partitions[i].clone(), self.history[i].next);
                    self.reach(i, point, next, after);
                }
            }
        }
    }

    /// The time a worker reading these partitions may still send at: the least partition
    /// watermark.
    pub fn hold(&self) -> Hold {
        let mut least = Hold::Release;
        for p in &self.partitions {
            if p.finished && (p.wm.is_none() || is_inventory(p.id)) {
                continue;
            }
            least = match (least, p.wm) {
                (Hold::Release, Some(w)) => Hold::At(w),
                (Hold::At(a), Some(b)) => Hold::At(a.min(b)),
                (_, None) | (Hold::Back, _) => Hold::Back,
            };
        }
        least
    }

    /// The largest watermark data alone has produced in any partition.
    pub fn data_max(&self) -> Option<i64> {
        self.data().max()
    }

    /// The least data watermark over partitions that had data: where a bounded input ends.
    pub fn data_min(&self) -> Option<i64> {
        self.data().min()
    }

    /// The data watermarks of the telemetry partitions that had data.
    fn data(&self) -> impl Iterator<Item = i64> + '_ {
        self.partitions
            .iter()
            .filter(|p| !is_inventory(p.id))
            .filter_map(|p| p.data(&self.bounds))
    }
}

#[cfg(test)]
mod tests;
