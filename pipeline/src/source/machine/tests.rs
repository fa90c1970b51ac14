//! Tests of [`super`]: machine.rs's unit and property tests, kept apart so the module reads
//! as the code it is.

use std::collections::HashMap;

use schemas::{Codec, DeadLetterReason};

use super::*;
use crate::clock::{ClockRules, RecordTime};
use crate::source::memory::{MemoryInput, MemoryRecord};
use crate::source::{RawRecord, SourceError};
use crate::watermark::Bounds;

const BOUNDS: Bounds = Bounds {
    out_of_orderness_ms: 5,
    idle_timeout_ms: None,
    clock: ClockRules {
        tolerance_ms: 50,
        correction: true,
        trust_producer: false,
        max_future_skew_ms: 1_000,
    },
};

struct Fixture {
    machine: SourceMachine,
    stop: Arc<AtomicBool>,
    readiness: Arc<Readiness>,
    snapshot: Rc<RefCell<WorkerPart>>,
}

fn machine(input: Box<dyn Input>, cuts: Option<CutProposer>) -> Fixture {
    let stop = Arc::new(AtomicBool::new(false));
    let readiness = Arc::new(Readiness::default());
    let snapshot = Rc::new(RefCell::new(WorkerPart::default()));
    let wm = Rc::new(RefCell::new(Watermarks::new(BOUNDS, input.partitions(), 0)));
    let triage = Triage::new(
        input.topic(),
        None,
        Codec::builtin(),
        None,
        schemas::Limits::default(),
        None,
    );
    let machine = SourceMachine::new(
        input,
        triage,
        wm,
        Rc::clone(&snapshot),
        MachineSettings {
            step_ms: 10,
            clock: Arc::new(|| 0),
            stop: Arc::clone(&stop),
            readiness: Arc::clone(&readiness),
            cuts,
            replay_below: None,
        },
    );
    Fixture {
        machine,
        stop,
        readiness,
        snapshot,
    }
}

fn memory(partitions: Vec<Vec<MemoryRecord>>, bounded: bool) -> Box<dyn Input> {
    Box::new(MemoryInput::new(
        Arc::new(partitions),
        0,
        1,
        bounded,
        &HashMap::new(),
    ))
}

#[test]
fn a_bounded_input_is_read_marked_and_finished() {
    let mut f = machine(
        memory(
            vec![vec![
                MemoryRecord::json("a", 1_000),
                MemoryRecord::json("b", 1_020),
                MemoryRecord {
                    headers: Vec::new(),
                    record_time: RecordTime::None,
                    key: None,
                    value: b"{not json".to_vec(),
                },
            ]],
            true,
        ),
        None,
    );
    let step = f.machine.step(0, None);
    let readings: Vec<i64> = step.triaged.readings.iter().map(|r| r.ts).collect();
    assert_eq!(readings, [1_000, 1_020]);
    assert_eq!(step.triaged.dead.len(), 1);
    assert_eq!(step.triaged.dead[0].reason, DeadLetterReason::Undecodable);
    assert_eq!(step.triaged.dead[0].source_offset, 2);
    // The whole partition fit in one batch: read to its end in the same step, where the
    // data had taken its watermark (the first reading's time less the out-of-orderness).
    assert_eq!(
        step.marks,
        [
            Mark::Data(995),
            Mark::Done {
                hold: None,
                finished: true,
                last: Some(995),
            }
        ]
    );
    assert_eq!(step.capabilities, Capabilities::Release);
    assert_eq!(step.wake, Wake::Never);
}

#[test]
fn data_moves_the_capability_in_whole_steps_and_an_idle_input_polls_later() {
    let readings = ["a", "b", "c", "d"].map(|d| MemoryRecord::json(d, 1_017));
    let mut f = machine(memory(vec![readings.to_vec()], false), None);
    let step = f.machine.step(0, None);
    assert_eq!(step.marks, [Mark::Data(1_012)]);
    assert_eq!(step.capabilities, Capabilities::Downgrade(1_010));
    assert_eq!(step.wake, Wake::Now);
    let step = f.machine.step(1_010, Some(1_010));
    assert!(step.marks.is_empty(), "no new data: no new mark");
    assert_eq!(step.capabilities, Capabilities::Keep);
    assert_eq!(step.wake, Wake::After(IDLE_POLL));
}

#[test]
fn too_far_ahead_of_the_devices_it_waits_without_reading() {
    let mut f = machine(
        memory(vec![vec![MemoryRecord::json("a", 5_000)]], false),
        None,
    );
    let step = f.machine.step(1_000, Some(0));
    assert!(step.triaged.readings.is_empty());
    assert_eq!(step.wake, Wake::After(Duration::from_millis(1)));
    let step = f.machine.step(1_000, Some(1_000));
    assert_eq!(step.triaged.readings.len(), 1);
}

#[test]
fn a_stop_leaves_the_positions_and_holds_at_the_capability() {
    let mut f = machine(
        memory(vec![vec![MemoryRecord::json("a", 1_000)]], false),
        None,
    );
    f.machine.step(0, None);
    f.stop.store(true, Ordering::Relaxed);
    let step = f.machine.step(990, None);
    assert_eq!(
        step.marks,
        [Mark::Done {
            hold: Some(990),
            finished: false,
            last: None,
        }]
    );
    assert_eq!(step.capabilities, Capabilities::Release);
    assert!(step.triaged.readings.is_empty());
    assert_eq!(f.snapshot.borrow().positions, [(0, 1)]);
    assert_eq!(f.snapshot.borrow().clocks.len(), 1);
}

#[test]
fn cuts_are_proposed_at_the_next_second_once_each() {
    let cuts = CutProposer::new(Duration::ZERO, 4, 1_000);
    let mut f = machine(
        memory(vec![vec![MemoryRecord::json("a", 1_500)]], false),
        Some(cuts),
    );
    assert!(
        f.machine
            .step(0, None)
            .marks
            .iter()
            .all(|m| !matches!(m, Mark::Cut { .. })),
        "no cut before the capability has moved"
    );
    let cut = |m: &[Mark]| m.iter().find(|m| matches!(m, Mark::Cut { .. })).copied();
    let first = cut(&f.machine.step(1_490, Some(1_490)).marks);
    assert_eq!(
        first,
        Some(Mark::Cut {
            at: 2_000,
            generation: 5
        })
    );
    assert_eq!(cut(&f.machine.step(1_490, Some(1_490)).marks), None);
    assert_eq!(
        cut(&f.machine.step(2_000, Some(2_000)).marks),
        Some(Mark::Cut {
            at: 3_000,
            generation: 6
        })
    );
}

/// An input that fails as told.
struct Failing(Option<SourceError>);

impl Input for Failing {
    fn topic(&self) -> &str {
        "failing"
    }
    fn partitions(&self) -> &[i32] {
        &[0]
    }
    fn bounded(&self) -> bool {
        false
    }
    fn poll(&mut self, _: usize, _: &mut dyn FnMut(RawRecord<'_>)) -> Result<usize, SourceError> {
        self.0.take().map_or(Ok(0), Err)
    }
    fn take_finished(&mut self) -> Vec<i32> {
        Vec::new()
    }
    fn positions(&self) -> Vec<(i32, i64)> {
        Vec::new()
    }
}

#[test]
fn a_passing_failure_backs_off_and_a_fatal_one_stops_the_job() {
    let passing = SourceError::NoTopic("t".into());
    let mut f = machine(Box::new(Failing(Some(passing))), None);
    let step = f.machine.step(0, None);
    // The first wait of `Backoff::Unavailable`: 100 ms and up to as much again of jitter.
    assert!(
        matches!(step.wake, Wake::After(d) if (99..=201).contains(&d.as_millis())),
        "{:?}",
        step.wake
    );
    assert_eq!(step.capabilities, Capabilities::Keep);
    assert!(!f.readiness.ready());
    assert_eq!(f.machine.step(0, None).wake, Wake::After(IDLE_POLL));
    assert!(f.readiness.ready(), "reading again");

    let fatal = SourceError::File {
        path: "f".into(),
        detail: "gone".into(),
    };
    let mut f = machine(Box::new(Failing(Some(fatal))), None);
    let step = f.machine.step(0, None);
    assert_eq!(step.capabilities, Capabilities::Release);
    assert_eq!(step.wake, Wake::Never);
    assert!(f.stop.load(Ordering::Relaxed));
    assert!(f.readiness.fatal_error().is_some());
}
