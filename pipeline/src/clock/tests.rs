//! Tests of [`super`]: clock.rs's unit and property tests, kept apart so the module reads
//! as the code it is.

use super::*;

const RULES: ClockRules = ClockRules {
    tolerance_ms: 30_000,
    correction: true,
    trust_producer: false,
    max_future_skew_ms: 300_000,
};
const T0: i64 = 1_700_000_000_000;
const OOO: i64 = 5_000;

/// A partition's truth, driven the way its watermark tracker drives it.
struct Partition {
    truth: Truth,
    wm: Option<i64>,
    rules: ClockRules,
}

impl Partition {
    fn new(rules: ClockRules) -> Partition {
        Partition {
            truth: Truth::default(),
            wm: None,
            rules,
        }
    }

    fn read(&mut self, device: &str, ts: i64, record: RecordTime) -> Judged {
        let j = self
            .truth
            .judge("t", device, ts, record, self.wm, &self.rules);
        if let Some(t) = self.truth.time() {
            self.wm = Some(self.wm.map_or(t - OOO, |w| w.max(t - OOO)));
        }
        j
    }

    /// `n` honest devices each report once, at `at` plus a spread of under a second, their
    /// records stamped by their producers when `stamped`.
    fn honest(&mut self, n: usize, at: i64, stamped: bool) -> Vec<Judged> {
        (0..n)
            .map(|d| {
                let ts = at + (d as i64 * 37) % 1_000;
                let record = if stamped {
                    RecordTime::Producer(ts)
                } else {
                    RecordTime::None
                };
                self.read(&format!("h{d}"), ts, record)
            })
            .collect()
    }

    fn honest_second(&mut self, n: usize, at: i64) -> Vec<Judged> {
        self.honest(n, at, true)
    }
}

fn accepted(j: Judged) -> bool {
    matches!(j, Judged::Accept { .. })
}

#[test]
fn a_fast_clock_in_the_partition_costs_the_others_nothing() {
    let mut p = Partition::new(RULES);
    for s in 0..150 {
        let at = T0 + s * 1_000;
        assert!(
            p.honest_second(20, at).into_iter().all(accepted),
            "second {s}"
        );
        // Four minutes ahead, its record stamped by its own clock.
        let fast = at + 240_000;
        p.read("liar", fast, RecordTime::Producer(fast));
        let truth = p.truth.time().unwrap_or_default();
        assert!(
            (at - 1_000..=at + 1_000).contains(&truth),
            "{truth} at {at}"
        );
    }
}

#[test]
fn a_wrong_clock_is_recognised_then_retimed_and_put_right_at_once() {
    let mut p = Partition::new(RULES);
    let mut seen = Vec::new();
    for s in 0..40 {
        let at = T0 + s * 1_000;
        p.honest_second(10, at);
        seen.push(p.read("slow", at - 3_600_000, RecordTime::None));
    }
    // Its first readings are late (it cannot be told from a straggler yet) ...
    assert!(matches!(
        seen[0],
        Judged::Reject {
            reason: DeadLetterReason::Late,
            ..
        }
    ));
    // ... then, kept for the tolerance of the partition's time, its offset is its own, and
    // its readings come at the partition's time.
    assert!(
        seen[..30]
            .iter()
            .all(|j| !matches!(j, Judged::Accept { .. }))
    );
    let Judged::Accept {
        ts,
        offset,
        retimed: true,
    } = seen[39]
    else {
        panic!("{:?}", seen[39]);
    };
    assert!((offset + 3_600_000).abs() < 2_000, "{offset}");
    assert!((ts - (T0 + 39_000)).abs() < 2_000, "{ts}");
    // A reading that agrees with the truth puts it right at once.
    let right = p.read("slow", T0 + 40_500, RecordTime::None);
    assert_eq!(
        right,
        Judged::Accept {
            ts: T0 + 40_500,
            offset: 0,
            retimed: false
        }
    );
    assert_eq!(p.truth.device_count, 0, "nothing kept of a right clock");
}

#[test]
fn without_correction_a_wrong_clock_is_a_dead_letter_that_still_arrives() {
    let mut p = Partition::new(ClockRules {
        correction: false,
        ..RULES
    });
    let mut last = None;
    for s in 0..40 {
        let at = T0 + s * 1_000;
        p.honest_second(10, at);
        last = Some(p.read("fast", at + 120_000, RecordTime::None));
    }
    let Some(Judged::Reject {
        reason: DeadLetterReason::ClockSkew,
        offset,
        arrival: Some(arrival),
        ..
    }) = last
    else {
        panic!("{last:?}");
    };
    assert!((offset - 120_000).abs() < 2_000);
    assert!(
        (arrival - (T0 + 39_000)).abs() < 2_000,
        "arrives at the partition's time"
    );
}

#[test]
fn broker_time_is_the_truth_and_needs_no_consensus() {
    let mut p = Partition::new(RULES);
    let mut offsets = Vec::new();
    for s in 0..4 {
        let at = T0 + s * 20_000;
        let (Judged::Accept { offset, .. } | Judged::Reject { offset, .. }) =
            p.read("only", at - 600_000, RecordTime::Broker(at));
        offsets.push(offset);
    }
    assert_eq!(p.truth.time(), Some(T0 + 60_000));
    // Kept for three readings over the tolerance of the broker's time: no votes needed.
    assert_eq!(offsets, vec![0, 0, -600_000, -600_000]);
}

#[test]
fn the_first_truth_drops_a_wrong_clock_among_the_first_devices() {
    let mut p = Partition::new(RULES);
    p.read("liar", T0 + 7_200_000, RecordTime::None);
    p.read("a", T0, RecordTime::None);
    assert_eq!(p.truth.time(), None, "two devices are no quorum");
    p.read("b", T0 + 500, RecordTime::None);
    assert_eq!(p.truth.time(), Some(T0), "the lower median of the two left");
    assert_eq!(p.truth.window.sorted, vec![T0, T0 + 500]);
}

#[test]
fn a_partition_that_moved_on_together_takes_a_new_truth() {
    for stamped in [false, true] {
        let mut p = Partition::new(RULES);
        for s in 0..10 {
            p.honest(6, T0 + s * 1_000, stamped);
        }
        // All six fall silent for ten minutes (a replay of an outage), then come back.
        let back = T0 + 610_000;
        let judged = p.honest(6, back, stamped);
        let future = judged
            .iter()
            .filter(|j| {
                matches!(
                    j,
                    Judged::Reject {
                        reason: DeadLetterReason::Future,
                        ..
                    }
                )
            })
            .count();
        // In a file, the first three are more than the allowed skew ahead of the old truth
        // (records stamped by their producers vouch for them); the fourth makes more than
        // half of the devices heard, and the truth follows.
        assert_eq!(future, if stamped { 0 } else { 3 });
        assert!(judged[3..].iter().copied().all(accepted));
        assert!(p.truth.time().is_some_and(|t| t >= back));
    }
}

#[test]
fn the_devices_still_reporting_take_the_truth_when_the_others_fall_silent() {
    let mut p = Partition::new(RULES);
    for s in 0..20 {
        p.read("a", T0 + s * 1_000, RecordTime::None);
        p.read("b", T0 + s * 1_000 + 500, RecordTime::None);
    }
    // `a` falls silent: its last votes pin the median until `b` is out of tolerance, and
    // a window's worth of readings of `b` without a vote moves the truth on.
    for s in 20..200 {
        let ts = T0 + s * 1_000 + 500;
        let j = p.read("b", ts, RecordTime::None);
        assert!(accepted(j), "{s}: {j:?}");
    }
    assert!(
        p.truth
            .time()
            .is_some_and(|t| t >= T0 + 190_000 - RULES.tolerance_ms),
        "{:?}",
        p.truth.time()
    );
    assert_eq!(p.truth.device_count, 0, "b's clock was not taken for wrong");
}

#[test]
fn a_burst_from_a_device_that_never_voted_cannot_take_the_truth() {
    let mut p = Partition::new(RULES);
    for s in 0..60 {
        p.honest_second(5, T0 + s * 1_000);
    }
    // A device an hour ahead reconnects and flushes two hundred buffered readings at once.
    for i in 0..200 {
        let ts = T0 + 3_600_000 + i * 1_000;
        p.read("tz", ts, RecordTime::Producer(ts));
    }
    assert!(p.truth.time().is_some_and(|t| t < T0 + 61_000));
}

#[test]
fn a_known_wrong_clock_left_alone_keeps_the_truth_moving() {
    let mut p = Partition::new(RULES);
    let mut offset = 0;
    for s in 0..60 {
        let at = T0 + s * 1_000;
        p.honest_second(3, at);
        if let Judged::Accept { offset: o, .. } = p.read("slow", at - 3_600_000, RecordTime::None) {
            offset = o;
        }
    }
    assert!((offset + 3_600_000).abs() < 2_000, "{offset}");
    // The honest devices fall silent, their last votes pinning the median: the wrong clock's
    // readings, measured by its offset, carry the truth on after a window of them. Every
    // reading meanwhile still counts as an arrival.
    let mut last = None;
    for s in 60..300 {
        let at = T0 + s * 1_000;
        let j = p.read("slow", at - 3_600_000, RecordTime::None);
        assert!(
            matches!(
                j,
                Judged::Accept { .. }
                    | Judged::Reject {
                        arrival: Some(_),
                        ..
                    }
            ),
            "{s}: {j:?}"
        );
        last = Some(j);
    }
    assert!(
        matches!(last, Some(Judged::Accept { retimed: true, .. })),
        "{last:?}"
    );
    assert!(
        p.truth.time().is_some_and(|t| t > T0 + 200_000),
        "{:?}",
        p.truth.time()
    );
}

#[test]
fn devices_that_report_less_often_than_the_tolerance_keep_their_readings() {
    let mut p = Partition::new(RULES);
    // Three devices every five minutes, a minute and a half apart: each reading is ahead of
    // the others' newest by more than the tolerance.
    for round in 0..20 {
        for d in 0..3 {
            let ts = T0 + round * 300_000 + d * 90_000;
            let j = p.read(&format!("s{d}"), ts, RecordTime::None);
            assert_eq!(
                j,
                Judged::Accept {
                    ts,
                    offset: 0,
                    retimed: false
                },
                "{round}/{d}: taken as stamped, no clock taken for wrong"
            );
        }
    }
    assert!(p.truth.time().is_some_and(|t| t >= T0 + 19 * 300_000));
}

#[test]
fn a_minority_with_the_same_wrong_clock_cannot_take_the_truth() {
    let mut p = Partition::new(RULES);
    for s in 0..60 {
        let at = T0 + s * 1_000;
        p.honest_second(10, at);
        // Four devices an hour ahead (one wrong time zone), always reporting together.
        for d in 0..4 {
            let ts = at + 3_600_000 + d;
            p.read(&format!("tz{d}"), ts, RecordTime::Producer(ts));
        }
    }
    let truth = p.truth.time().unwrap_or_default();
    assert!(truth < T0 + 61_000, "{truth}");
}
