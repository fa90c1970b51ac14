//! Tests of [`super`]: watermark.rs's unit and property tests, kept apart so the module reads
//! as the code it is.

use proptest::prelude::*;
use schemas::DeadLetterReason;

use super::*;

const B: Bounds = Bounds {
    out_of_orderness_ms: 5,
    idle_timeout_ms: Some(100),
    clock: ClockRules {
        tolerance_ms: 50,
        correction: true,
        trust_producer: false,
        max_future_skew_ms: 1_000,
    },
};

/// Broker-stamped: the record time is the truth at arrival.
fn at(t: i64) -> RecordTime {
    RecordTime::Broker(t)
}

fn verdict(j: Judged) -> Option<DeadLetterReason> {
    match j {
        Judged::Accept { .. } => None,
        Judged::Reject { reason, .. } => Some(reason),
    }
}

#[test]
fn late_and_future_readings_are_rejected_per_partition() {
    let mut w = Watermarks::new(B, &[0, 1], 0);
    assert_eq!(verdict(w.observe(0, 0, "t", "a", 100, at(100), 0)), None);
    assert_eq!(verdict(w.observe(0, 1, "t", "a", 95, at(100), 0)), None);
    assert_eq!(
        verdict(w.observe(0, 2, "t", "b", 94, at(100), 0)),
        Some(DeadLetterReason::Late)
    );
    // Partition 1 is judged on its own.
    assert_eq!(verdict(w.observe(1, 0, "t", "c", 10, at(10), 0)), None);
    assert_eq!(
        verdict(w.observe(1, 1, "t", "c", 2_000, at(10), 0)),
        Some(DeadLetterReason::Future)
    );
    assert_eq!(
        w.hold(),
        Hold::At(5),
        "a future reading never moves the watermark"
    );
    assert_eq!(w.data_max(), Some(95));
}

#[test]
fn idle_partitions_follow_the_clock_and_finished_ones_hold() {
    let mut w = Watermarks::new(B, &[0, 1], 0);
    assert_eq!(w.hold(), Hold::Back);
    w.observe(0, 0, "t", "a", 1_000, at(1_000), 50);
    w.tick(120);
    // Partition 1 never spoke and is idle: it follows the clock (120 - 5).
    assert_eq!(w.hold(), Hold::At(115));
    w.tick(1_000);
    assert_eq!(w.hold(), Hold::At(995));
    let mut b = Watermarks::new(
        Bounds {
            idle_timeout_ms: None,
            ..B
        },
        &[0, 1, 2],
        0,
    );
    b.observe(0, 0, "t", "a", 50, at(50), 0);
    b.finish(0);
    b.finish(2);
    b.tick(10_000);
    assert_eq!(
        b.hold(),
        Hold::Back,
        "partition 1 still holds everything back"
    );
    b.observe(1, 0, "t", "a", 90, at(90), 0);
    assert_eq!(b.hold(), Hold::At(45));
    b.finish(1);
    assert!(b.all_finished());
    assert_eq!(b.data_min(), Some(45));
}

#[test]
fn a_partition_that_ends_before_a_quorum_takes_its_truth_from_what_it_heard() {
    let mut w = Watermarks::new(
        Bounds {
            idle_timeout_ms: None,
            ..B
        },
        &[0],
        0,
    );
    for (o, ts) in [(0, 100), (1, 80), (2, 120)] {
        assert_eq!(
            verdict(w.observe(0, o, "t", "a", ts, RecordTime::None, 0)),
            None
        );
    }
    assert_eq!(w.hold(), Hold::Back, "one device is no quorum yet");
    w.finish(0);
    assert_eq!(
        w.data_min(),
        Some(115),
        "its one device's newest reading, less 5"
    );
}

#[test]
fn a_cut_resumes_each_partition_where_it_first_reached_the_cut() {
    let mut w = Watermarks::new(B, &[0, 1, 2], 0);
    w.record_cuts(100, &[(0, 7)]);
    w.observe(0, 7, "t", "a", 150, at(150), 0);
    w.observe(0, 8, "t", "a", 320, at(320), 0);
    w.observe(0, 9, "t", "b", 318, at(320), 0);
    w.observe(1, 0, "t", "a", 90, at(90), 0);
    let cut = w.cut(200);
    // Partition 0 first reached 200 at offset 8, with the state 150 had left.
    assert_eq!(cut[0].next, Some(8));
    assert_eq!(cut[0].clock.data(&B), Some(145));
    // Partition 1 is not there yet: it resumes after what it read; 2 read nothing.
    assert_eq!(cut[1].next, Some(1));
    assert_eq!(cut[2].next, None);
    // An idle partition reaches the cut by the clock.
    w.tick(400);
    assert_eq!(w.cut(300)[2].clock.wm, Some(395));
    w.prune(300);
    assert_eq!(
        w.cut(200)[0].next,
        Some(8),
        "still the first point at or after 200"
    );
}

proptest! {
    /// Replaying each partition from where a cut says, with the state it gives, judges every
    /// replayed record as the first pass did, and replays every reading accepted at or after
    /// the cut: nothing after a cut is lost, nothing is judged differently. The devices'
    /// clocks are random, some far off, so offsets are confirmed and readings re-timed.
    #[test]
    fn replay_from_a_cut_judges_as_the_first_pass(
        events in prop::collection::vec((0i32..3, 0usize..6, 0i64..5_000, 0u8..4), 1..300),
        at in 0i64..60,
    ) {
        let bounds = Bounds { idle_timeout_ms: None, ..B };
        let devices = ["a", "b", "c", "d", "e", "f"];
        let skews = [0, 0, 0, 0, 400, -3_000];
        let mut w = Watermarks::new(bounds, &[0, 1, 2], 0);
        w.record_cuts(100, &[]);
        let mut offsets = [0i64; 3];
        let mut first = Vec::new();
        for (p, d, ts, stamp) in &events {
            let o = offsets[*p as usize];
            offsets[*p as usize] += 1;
            let stamped = ts + skews[*d];
            let record = match stamp {
                0 => RecordTime::None,
                1 => RecordTime::Broker(*ts),
                _ => RecordTime::Producer(stamped),
            };
            let judged = w.observe(*p, o, "t", devices[*d], stamped, record, 0);
            first.push((*p, o, *d, stamped, record, judged));
        }
        let at = at * 100;
        let cut = w.cut(at);
        let mut replay = Watermarks::new(bounds, &[0, 1, 2], 0);
        replay.restore(&cut.iter().map(|r| r.clock.clone()).collect::<Vec<_>>(), 0);
        for (p, o, d, stamped, record, judged) in &first {
            let from = cut[*p as usize].next.unwrap_or(0);
            if *o < from {
                let kept = match judged {
                    Judged::Accept { ts, .. } => Some(*ts),
                    Judged::Reject { arrival, .. } => *arrival,
                };
                prop_assert!(kept.is_none_or(|t| t < at), "lost {p}/{o}");
                continue;
            }
            prop_assert_eq!(replay.observe(*p, *o, "t", devices[*d], *stamped, *record, 0), *judged);
        }
    }

    /// Whatever the order and the clocks, an accepted reading (and the arrival of a rejected
    /// one) is never behind the worker's hold, and the hold never goes back.
    #[test]
    fn accepted_readings_are_never_behind_the_hold(
        events in prop::collection::vec((0i32..3, 0usize..4, 0i64..10_000, 0i64..50, any::<bool>()), 1..300)
    ) {
        let devices = ["a", "b", "c", "d"];
        let mut w = Watermarks::new(B, &[0, 1, 2], 0);
        let mut now = 0;
        let mut last = i64::MIN;
        for (p, d, ts, step, broker) in events {
            now += step;
            w.tick(now);
            let hold = w.hold().at().unwrap_or(i64::MIN);
            prop_assert!(hold >= last);
            last = hold;
            let record = if broker { RecordTime::Broker(ts / 2 + now) } else { RecordTime::None };
            let kept = match w.observe(p, 0, "t", devices[d], ts, record, now) {
                Judged::Accept { ts, .. } => Some(ts),
                Judged::Reject { arrival, .. } => arrival,
            };
            if let Some(t) = kept {
                prop_assert!(t >= hold);
            }
        }
    }
}
