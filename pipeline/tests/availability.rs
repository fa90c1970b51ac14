//! Availability reports as the pipeline takes them, case by case: an offline report takes an
//! online device offline at once (`reported_offline`), an online one brings it back
//! (`resumed`) without counting as a reading, and a report that finds nothing to change changes
//! nothing. The reference model covers them on random fleets (tests/model.rs); these are the
//! cases named.

mod support;

use pipeline::clock::RecordTime;
use pipeline::output::Output;
use pipeline::source::memory::MemoryRecord;
use schemas::{Codec, DeadLetterReason, DeviceStatus, Telemetry, TransitionReason};

const T0: i64 = 1_700_000_000_000;

fn record(device: &str, ts: i64, availability: Option<&str>) -> MemoryRecord {
    let t = Telemetry {
        tenant_id: "acme".into(),
        device_id: device.into(),
        ts,
        ok: availability != Some("offline"),
        ..Telemetry::example()
    };
    MemoryRecord {
        record_time: RecordTime::Producer(ts),
        key: None,
        value: Codec::builtin().encode(&t).unwrap_or_default(),
        headers: availability
            .map(|a| (schemas::headers::AVAILABILITY.to_string(), a.into()))
            .into_iter()
            .collect(),
    }
}

fn run(telemetry: Vec<MemoryRecord>) -> Vec<Output> {
    support::run(telemetry, Vec::new())
}

/// `(status, previous, ts - T0, last_seen - T0, reason)` of `device`'s transitions.
type Seen = (
    DeviceStatus,
    Option<DeviceStatus>,
    i64,
    i64,
    TransitionReason,
);

fn transitions(out: &[Output], device: &str) -> Vec<Seen> {
    let mut s: Vec<Seen> = out
        .iter()
        .filter_map(|o| match o {
            Output::Status(s) if s.device_id == device => {
                Some((s.status, s.previous, s.ts - T0, s.last_seen - T0, s.reason))
            }
            _ => None,
        })
        .collect();
    s.sort_by_key(|s| s.2);
    s
}

#[test]
fn an_offline_report_is_offline_at_once_and_an_online_one_resumes() {
    use DeviceStatus::{Offline, Online};
    let mut input = Vec::new();
    let mut lamp_readings = 0;
    for step in 0..20 {
        let ts = T0 + step * 10_000;
        // A device that keeps reporting moves event time on.
        input.push(record("clock", ts, None));
        match step {
            0..=2 | 11..=19 => {
                input.push(record("lamp", ts, None));
                lamp_readings += 1;
            }
            _ => {}
        }
        match step {
            2 => {
                input.push(record("lamp", ts + 5_000, Some("offline")));
                // Offline already: nothing changes.
                input.push(record("lamp", ts + 6_000, Some("offline")));
                // A device nobody knows is not taken offline, nor known after.
                input.push(record("ghost", ts + 5_000, Some("offline")));
            }
            10 => input.push(record("lamp", ts + 5_000, Some("online"))),
            _ => {}
        }
    }
    let out = run(input);
    assert_eq!(
        transitions(&out, "lamp"),
        [
            (Online, None, 0, 0, TransitionReason::FirstSeen),
            (
                Offline,
                Some(Online),
                25_000,
                20_000,
                TransitionReason::ReportedOffline
            ),
            (
                Online,
                Some(Offline),
                105_000,
                20_000,
                TransitionReason::Resumed
            ),
        ],
        "offline at the report, not at the 60 s timeout"
    );
    assert_eq!(transitions(&out, "ghost"), []);
    let counted: i64 = out
        .iter()
        .filter_map(|o| match o {
            Output::Aggregate(a)
                if a.device_id == "lamp" && a.window_end - a.window_start == 60_000 =>
            {
                Some(a.count)
            }
            _ => None,
        })
        .sum();
    assert_eq!(counted, lamp_readings, "a report is no reading");
    let last_seen: Vec<i64> = out
        .iter()
        .filter_map(|o| match o {
            Output::LastSeen(l) if l.device_id == "lamp" => Some(l.last_seen - T0),
            Output::LastSeen(l) if l.device_id == "ghost" => panic!("{l:?}"),
            _ => None,
        })
        .collect();
    assert!(
        last_seen.contains(&105_000),
        "the online report is a sign of life: {last_seen:?}"
    );
    assert!(
        !last_seen.contains(&25_000),
        "the offline report is none: {last_seen:?}"
    );
}

#[test]
fn a_late_offline_report_is_a_dead_letter_and_takes_nothing_offline() {
    let mut input: Vec<MemoryRecord> = (0..10)
        .map(|step| record("fan", T0 + step * 10_000, None))
        .collect();
    input.push(record("fan", T0 + 15_000, Some("offline")));
    input.push(record("fan", T0 + 100_000, Some("sideways")));
    let out = run(input);
    let reasons: Vec<_> = transitions(&out, "fan").into_iter().map(|s| s.4).collect();
    assert_eq!(
        reasons,
        [TransitionReason::FirstSeen],
        "no reported_offline, and no arrival of the late report either"
    );
    let dead: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::DeadLetter(d) => Some((d.reason, d.source_offset)),
            _ => None,
        })
        .collect();
    assert_eq!(
        dead,
        [
            (DeadLetterReason::Late, 10),
            (DeadLetterReason::InvalidField, 11)
        ]
    );
}
