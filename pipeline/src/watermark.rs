//! Per-partition event time: which readings are late or from the future, each partition's
//! watermark, and the capability a source worker may hold given all its partitions.
//!
//! A partition's watermark is its largest accepted `ts` minus the allowed out-of-orderness. A
//! reading behind it is late; judging per partition makes lateness a function of the partition's
//! own order, not of how partitions interleave. A partition silent (on the wall clock) for longer
//! than the idle timeout follows the wall clock instead, so it stops holding the frontier back;
//! in bounded runs (files, `--until-end`) there is no idleness, and a partition that has been read
//! to its end holds its last watermark until every partition has, so the frontier, and hence the
//! output, never depends on which partition finished first.

use schemas::DeadLetterReason;
use serde::{Deserialize, Serialize};

/// The event-time settings a tracker needs.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Allowed out-of-orderness, ms.
    pub out_of_orderness_ms: i64,
    /// Wall-clock silence after which a partition is idle, ms; `None` disables idleness.
    pub idle_timeout_ms: Option<i64>,
    /// Allowed skew of `ts` ahead of the record timestamp, ms.
    pub max_future_skew_ms: i64,
}

/// One partition's event-time state; checkpoints keep it so lateness is judged after a restart
/// exactly as it would have been.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionClock {
    id: i32,
    /// Watermark from data alone.
    data: Option<i64>,
    /// Effective watermark: data or idleness, whichever is further.
    wm: Option<i64>,
    last_activity: i64,
    finished: bool,
}

/// The verdict on one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Use it.
    Accept,
    /// Reject it with this reason.
    Reject(DeadLetterReason),
}

/// The partitions one source worker reads.
#[derive(Debug, Clone)]
pub struct Watermarks {
    bounds: Bounds,
    partitions: Vec<PartitionClock>,
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
                    data: None,
                    wm: None,
                    last_activity: now,
                    finished: false,
                })
                .collect(),
        }
    }

    fn partition(&mut self, id: i32) -> Option<&mut PartitionClock> {
        self.partitions.iter_mut().find(|p| p.id == id)
    }

    /// Judges a reading stamped `ts` in partition `id` whose record timestamp is `record_ts`, and
    /// moves the partition's watermark if it is accepted.
    pub fn observe(&mut self, id: i32, ts: i64, record_ts: Option<i64>, now: i64) -> Verdict {
        let bounds = self.bounds;
        let Some(p) = self.partition(id) else {
            return Verdict::Accept;
        };
        p.last_activity = now;
        // Without a record timestamp (files), the partition's newest reading is the reference.
        let reference = record_ts.or(p.data.map(|d| d + bounds.out_of_orderness_ms));
        if reference.is_some_and(|r| ts > r.saturating_add(bounds.max_future_skew_ms)) {
            return Verdict::Reject(DeadLetterReason::Future);
        }
        if p.wm.is_some_and(|wm| ts < wm) {
            return Verdict::Reject(DeadLetterReason::Late);
        }
        let data = ts - bounds.out_of_orderness_ms;
        p.data = Some(p.data.map_or(data, |d| d.max(data)));
        p.wm = Some(p.wm.map_or(data, |w| w.max(data)));
        Verdict::Accept
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
                p.data = s.data;
                p.wm = s.wm;
                p.last_activity = now;
            }
        }
    }

    /// Counts a record that was not a usable reading as activity: the partition is not idle.
    pub fn touch(&mut self, id: i32, now: i64) {
        if let Some(p) = self.partition(id) {
            p.last_activity = now;
        }
    }

    /// Marks partition `id` as read to its end (bounded runs).
    pub fn finish(&mut self, id: i32) {
        if let Some(p) = self.partition(id) {
            p.finished = true;
        }
    }

    /// Whether every partition has been read to its end.
    pub fn all_finished(&self) -> bool {
        self.partitions.iter().all(|p| p.finished)
    }

    /// Lets idle partitions follow the wall clock `now`.
    pub fn tick(&mut self, now: i64) {
        let Some(idle) = self.bounds.idle_timeout_ms else {
            return;
        };
        let follow = now - self.bounds.out_of_orderness_ms;
        for p in &mut self.partitions {
            if !p.finished && now - p.last_activity >= idle {
                p.wm = Some(p.wm.map_or(follow, |w| w.max(follow)));
            }
        }
    }

    /// The time a worker reading these partitions may still send at: the least partition
    /// watermark. `Some(None)` means "hold everything back" (a partition has no watermark yet),
    /// `None` means nothing is held (every partition finished without data, or none assigned).
    pub fn hold(&self) -> Option<Option<i64>> {
        let mut least: Option<Option<i64>> = None;
        for p in &self.partitions {
            if p.finished && p.wm.is_none() {
                continue;
            }
            let wm = p.wm;
            least = Some(match (least, wm) {
                (None, w) => w,
                (Some(None), _) | (_, None) => None,
                (Some(Some(a)), Some(b)) => Some(a.min(b)),
            });
        }
        least
    }

    /// The largest watermark data alone has produced in any partition.
    pub fn data_max(&self) -> Option<i64> {
        self.partitions.iter().filter_map(|p| p.data).max()
    }

    /// The least data watermark over partitions that had data: where a bounded input ends.
    pub fn data_min(&self) -> Option<i64> {
        self.partitions.iter().filter_map(|p| p.data).min()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const B: Bounds = Bounds {
        out_of_orderness_ms: 5,
        idle_timeout_ms: Some(100),
        max_future_skew_ms: 1_000,
    };

    #[test]
    fn late_and_future_readings_are_rejected_per_partition() {
        let mut w = Watermarks::new(B, &[0, 1], 0);
        assert_eq!(w.observe(0, 100, None, 0), Verdict::Accept);
        assert_eq!(w.observe(0, 95, None, 0), Verdict::Accept);
        assert_eq!(
            w.observe(0, 94, None, 0),
            Verdict::Reject(DeadLetterReason::Late)
        );
        // Partition 1 is judged on its own.
        assert_eq!(w.observe(1, 10, None, 0), Verdict::Accept);
        assert_eq!(
            w.observe(1, 2_000, Some(999), 0),
            Verdict::Reject(DeadLetterReason::Future)
        );
        assert_eq!(
            w.hold(),
            Some(Some(5)),
            "a future reading never moves the watermark"
        );
        assert_eq!(w.data_max(), Some(95));
    }

    #[test]
    fn idle_partitions_follow_the_clock_and_finished_ones_hold() {
        let mut w = Watermarks::new(B, &[0, 1], 0);
        assert_eq!(w.hold(), Some(None));
        w.observe(0, 1_000, None, 50);
        w.tick(120);
        // Partition 1 never spoke and is idle: it follows the clock (120 - 5).
        assert_eq!(w.hold(), Some(Some(115)));
        w.tick(1_000);
        assert_eq!(w.hold(), Some(Some(995)));
        let mut b = Watermarks::new(
            Bounds {
                idle_timeout_ms: None,
                ..B
            },
            &[0, 1, 2],
            0,
        );
        b.observe(0, 50, None, 0);
        b.finish(0);
        b.finish(2);
        b.tick(10_000);
        assert_eq!(
            b.hold(),
            Some(None),
            "partition 1 still holds everything back"
        );
        b.observe(1, 90, None, 0);
        assert_eq!(b.hold(), Some(Some(45)));
        b.finish(1);
        assert!(b.all_finished());
        assert_eq!(b.data_min(), Some(45));
    }

    proptest! {
        /// Whatever the order, an accepted reading is never behind the worker's hold, and the
        /// hold never goes back.
        #[test]
        fn accepted_readings_are_never_behind_the_hold(
            events in prop::collection::vec((0i32..3, 0i64..10_000, 0i64..50), 1..300)
        ) {
            let mut w = Watermarks::new(B, &[0, 1, 2], 0);
            let mut now = 0;
            let mut last = i64::MIN;
            for (p, ts, step) in events {
                now += step;
                w.tick(now);
                let hold = w.hold().flatten().unwrap_or(i64::MIN);
                prop_assert!(hold >= last);
                last = hold;
                if w.observe(p, ts, None, now) == Verdict::Accept {
                    prop_assert!(ts >= hold);
                }
            }
        }
    }
}
