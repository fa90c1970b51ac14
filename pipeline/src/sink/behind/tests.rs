//! Tests of [`super`]: records are written in the order given, a flush waits for them, a record
//! no retry can write is passed over and one that can is written once.

use std::sync::{Arc, Mutex};

use schemas::LastSeen;

use super::*;
use crate::sink::Collector;

fn seen(t: i64) -> Output {
    Output::LastSeen(LastSeen {
        tenant_id: "t".into(),
        device_id: "d".into(),
        device_class: None,
        last_seen: t,
        event_id: format!("e{t}"),
    })
}

fn times(records: &[Output]) -> Vec<i64> {
    records
        .iter()
        .map(|o| match o {
            Output::LastSeen(l) => l.last_seen,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn records_are_written_in_order_and_a_flush_waits_for_them() {
    let collector = Collector::default();
    let mut behind = Behind::start(Box::new(collector.clone())).unwrap();
    for start in (0..10_000).step_by(7) {
        let mut batch: Vec<Output> = (start..(start + 7).min(10_000)).map(seen).collect();
        behind.write(&mut batch).unwrap();
        assert!(batch.is_empty(), "taken");
        if start % 700 == 0 {
            behind.hand_over().unwrap();
        }
    }
    behind.flush().unwrap();
    assert_eq!(times(&collector.records()), (0..10_000).collect::<Vec<_>>());
}

#[test]
fn what_is_gathered_is_written_when_it_is_dropped() {
    let collector = Collector::default();
    let mut behind = Behind::start(Box::new(collector.clone())).unwrap();
    behind.write(&mut vec![seen(1), seen(2)]).unwrap();
    drop(behind);
    assert_eq!(times(&collector.records()), [1, 2]);
}

/// Refuses record 3 for good and record 5 twice, then takes it.
#[derive(Clone, Default)]
struct Picky {
    written: Arc<Mutex<Vec<i64>>>,
    refusals: Arc<Mutex<usize>>,
}

impl OutputSink for Picky {
    fn write(&mut self, record: &Output) -> Result<(), SinkError> {
        let t = times(std::slice::from_ref(record))[0];
        if t == 3 {
            return Err(SinkError::Encode(schemas::EncodeError {
                kind: "test",
                detail: "never".into(),
            }));
        }
        let mut refusals = self.refusals.lock().unwrap();
        if t == 5 && *refusals < 2 {
            *refusals += 1;
            return Err(SinkError::File {
                path: "test".into(),
                source: std::io::Error::other("not yet"),
            });
        }
        self.written.lock().unwrap().push(t);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[test]
fn a_record_no_retry_can_write_is_passed_over_and_a_retried_one_written_once() {
    let picky = Picky::default();
    let mut behind = Behind::start(Box::new(picky.clone())).unwrap();
    behind.write(&mut (1..=7).map(seen).collect()).unwrap();
    behind.flush().unwrap();
    assert_eq!(*picky.written.lock().unwrap(), [1, 2, 4, 5, 6, 7]);
    assert_eq!(*picky.refusals.lock().unwrap(), 2);
}
