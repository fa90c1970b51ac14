//! Tests of [`super`]: bridge.rs's unit and property tests, kept apart so the module reads
//! as the code it is.

use super::*;

#[test]
fn a_stamp_is_read_back_and_percentiles_pick_ranks() {
    let then = micros() - 5_000;
    let text = format!(r#"{{"type":"device_status","data":{{{STAMP}{then}"}}}}"#);
    let d = delay(&text).unwrap_or(0);
    assert!((5_000..1_000_000).contains(&d), "{d}");
    assert_eq!(delay(r#"{"type":"heartbeat"}"#), None);
    let mut v: Vec<u64> = (1..=100).map(|ms| ms * 1_000).collect();
    assert_eq!(percentiles(&mut v), (50.0, 99.0, 100.0));
}
