//! Property tests: every record survives Avro and JSON round trips, older writer schemas still
//! decode, and no byte string makes a decoder panic.

use apache_avro::types::Value;
use proptest::prelude::*;
use schemas::{
    Anomaly, AnomalyKind, AnomalyState, Codec, DeadLetter, DeadLetterReason, DecodeError,
    DeviceStatus, InputFormat, Record, Severity, StatusTransition, TS_MAX_MS, Telemetry,
    TransitionReason, WindowAggregate,
};

fn id() -> impl Strategy<Value = String> {
    "[a-z0-9-]{1,24}"
}

fn text() -> impl Strategy<Value = String> {
    any::<String>()
}

fn num() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1.0e9..1.0e9f64,
        Just(0.0),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE)
    ]
}

fn ts() -> impl Strategy<Value = i64> {
    0..TS_MAX_MS
}

prop_compose! {
    fn telemetry()(
        tenant_id in id(), device_id in id(), ts in ts(),
        response_time_ms in proptest::option::of(0.0..1.0e7f64),
        ok in any::<bool>(), error_code in proptest::option::of(text()),
        battery_pct in proptest::option::of(0.0..=100.0f64),
        signal_dbm in proptest::option::of(-150.0..0.0f64),
        device_class in proptest::option::of(id()),
        attributes in proptest::collection::btree_map(text(), text(), 0..4),
    ) -> Telemetry {
        Telemetry { tenant_id, device_id, ts, response_time_ms, ok, error_code, battery_pct,
            signal_dbm, device_class, attributes }
    }
}

prop_compose! {
    fn aggregate()(
        tenant_id in id(), device_id in id(), device_class in proptest::option::of(id()),
        window_start in ts(), count in 0..i64::MAX, errors in 0..i64::MAX, error_rate in num(),
        rts in proptest::collection::vec(proptest::option::of(num()), 6),
        battery_last in proptest::option::of(num()), battery_min in proptest::option::of(num()),
        signal_mean in proptest::option::of(num()), health_score in num(), event_id in text(),
        clock_offset_ms in proptest::option::of(any::<i64>()),
    ) -> WindowAggregate {
        WindowAggregate { tenant_id, device_id, device_class, window_start,
            window_end: window_start + 60_000, count, errors, error_rate,
            rt_min: rts[0], rt_mean: rts[1], rt_p50: rts[2], rt_p95: rts[3], rt_p99: rts[4],
            rt_max: rts[5], battery_last, battery_min, signal_mean, health_score, event_id,
            clock_offset_ms }
    }
}

fn anomaly_kind() -> impl Strategy<Value = AnomalyKind> {
    prop_oneof![
        Just(AnomalyKind::RtMeanHigh),
        Just(AnomalyKind::ErrorRateHigh),
        Just(AnomalyKind::BatteryLow),
        Just(AnomalyKind::RtP95Baseline),
        Just(AnomalyKind::ErrorRateBaseline),
        Just(AnomalyKind::Flapping),
        Just(AnomalyKind::ProlongedOffline),
        Just(AnomalyKind::MassOffline),
        Just(AnomalyKind::Unknown),
    ]
}

prop_compose! {
    fn anomaly()(
        tenant_id in id(), device_id in prop_oneof![Just(String::new()), id()],
        device_class in proptest::option::of(id()), kind in anomaly_kind(),
        firing in any::<bool>(),
        severity in prop_oneof![Just(Severity::Info), Just(Severity::Warning), Just(Severity::Critical)],
        observed in num(), threshold in num(), baseline in proptest::option::of(num()),
        ts in ts(), message in text(), event_id in text(),
    ) -> Anomaly {
        let state = if firing { AnomalyState::Firing } else { AnomalyState::Resolved };
        Anomaly { tenant_id, device_id, device_class, kind, state, severity, observed, threshold,
            baseline, ts, message, event_id }
    }
}

fn status() -> impl Strategy<Value = DeviceStatus> {
    prop_oneof![Just(DeviceStatus::Online), Just(DeviceStatus::Offline)]
}

prop_compose! {
    fn transition()(
        tenant_id in id(), device_id in id(), device_class in proptest::option::of(id()),
        status in status(), previous in proptest::option::of(status()), ts in ts(),
        last_seen in ts(),
        reason in prop_oneof![Just(TransitionReason::FirstSeen), Just(TransitionReason::Resumed),
            Just(TransitionReason::Timeout), Just(TransitionReason::InputIdle),
            Just(TransitionReason::Retired), Just(TransitionReason::NeverSeen),
            Just(TransitionReason::Decommissioned)],
        time_in_previous_ms in proptest::option::of(0..i64::MAX), event_id in text(),
    ) -> StatusTransition {
        StatusTransition { tenant_id, device_id, device_class, status, previous, ts, last_seen,
            reason, time_in_previous_ms, event_id }
    }
}

prop_compose! {
    fn dead_letter()(
        source_topic in id(), source_partition in 0..1024i32, source_offset in 0..i64::MAX,
        key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
        raw in proptest::collection::vec(any::<u8>(), 0..256),
        reason in proptest::sample::select(DeadLetterReason::ALL.to_vec()),
        detail in text(), record_ts in proptest::option::of(ts()), event_id in text(),
    ) -> DeadLetter {
        DeadLetter { source_topic, source_partition, source_offset, key, raw, reason, detail,
            record_ts, event_id }
    }
}

fn round_trips<R: Record + Clone + PartialEq + std::fmt::Debug>(
    record: R,
) -> Result<(), TestCaseError> {
    let codec = Codec::builtin();
    let bytes = codec
        .encode(&record)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(codec.decode::<R>(&bytes), Ok(record.clone()));
    let json = serde_json::to_vec(&record).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: R = serde_json::from_slice(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(back, record);
    Ok(())
}

/// Encodes a reading with version 1 of the telemetry schema (no `signal_dbm`), by hand, the way
/// a producer built before that field existed would.
fn encode_v1(t: &Telemetry) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(include_str!("../avro/telemetry.v1.avsc"));
    let Ok(schema) = schema else {
        return Vec::new();
    };
    let opt = |v: Option<Value>| match v {
        Some(v) => Value::Union(1, Box::new(v)),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let record = Value::Record(vec![
        ("tenant_id".into(), Value::String(t.tenant_id.clone())),
        ("device_id".into(), Value::String(t.device_id.clone())),
        ("ts".into(), Value::Long(t.ts)),
        (
            "response_time_ms".into(),
            opt(t.response_time_ms.map(Value::Double)),
        ),
        ("ok".into(), Value::Boolean(t.ok)),
        (
            "error_code".into(),
            opt(t.error_code.clone().map(Value::String)),
        ),
        ("battery_pct".into(), opt(t.battery_pct.map(Value::Double))),
        (
            "device_class".into(),
            opt(t.device_class.clone().map(Value::String)),
        ),
        (
            "attributes".into(),
            Value::Map(
                t.attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        ),
    ]);
    let mut bytes = vec![0, 0, 0, 0, 1];
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .and_then(|w| w.write_value_to_vec(record));
    bytes.extend(body.unwrap_or_default());
    bytes
}

proptest! {
    #[test]
    fn telemetry_round_trips(t in telemetry()) { round_trips(t)?; }

    #[test]
    fn aggregate_round_trips(a in aggregate()) { round_trips(a)?; }

    #[test]
    fn anomaly_round_trips(a in anomaly()) { round_trips(a)?; }

    #[test]
    fn transition_round_trips(t in transition()) { round_trips(t)?; }

    #[test]
    fn dead_letter_round_trips(d in dead_letter()) { round_trips(d)?; }

    #[test]
    fn json_telemetry_decodes_like_avro(t in telemetry()) {
        let codec = Codec::builtin();
        let json = serde_json::to_vec(&t).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let avro = codec.encode(&t).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(codec.decode_telemetry(&json, InputFormat::Auto), Ok(t.clone()));
        prop_assert_eq!(codec.decode_telemetry(&avro, InputFormat::Auto), Ok(t));
    }

    #[test]
    fn older_writer_schema_decodes_with_the_current_one(t in telemetry()) {
        let codec = Codec::builtin();
        let expected = Telemetry { signal_dbm: None, ..t.clone() };
        prop_assert_eq!(codec.decode::<Telemetry>(&encode_v1(&t)), Ok(expected));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let codec = Codec::builtin();
        for format in [InputFormat::Avro, InputFormat::Json, InputFormat::Auto] {
            let _ = codec.decode_telemetry(&bytes, format);
        }
        let _ = codec.decode::<DeadLetter>(&bytes);
    }

    #[test]
    fn valid_header_with_garbage_body_is_an_error_not_a_panic(
        id in 1u32..=6, body in proptest::collection::vec(any::<u8>(), 0..256)
    ) {
        let mut bytes = vec![0];
        bytes.extend(id.to_be_bytes());
        bytes.extend(body);
        let _ = Codec::builtin().decode::<Telemetry>(&bytes);
    }
}

#[test]
fn each_decode_error_has_its_own_variant() {
    let codec = Codec::builtin();
    let good = codec.encode(&Telemetry::example()).unwrap_or_default();
    let decode = |b: &[u8]| codec.decode::<Telemetry>(b).err();

    assert_eq!(decode(&[]), Some(DecodeError::Truncated { len: 0 }));
    assert_eq!(decode(&good[..3]), Some(DecodeError::Truncated { len: 3 }));
    let mut bad_magic = good.clone();
    bad_magic[0] = 7;
    assert_eq!(decode(&bad_magic), Some(DecodeError::BadMagicByte(7)));
    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&999u32.to_be_bytes());
    assert_eq!(decode(&unknown), Some(DecodeError::UnknownSchemaId(999)));
    let mut wrong = good.clone();
    wrong[1..5].copy_from_slice(&3u32.to_be_bytes());
    assert!(matches!(
        decode(&wrong),
        Some(DecodeError::WrongRecord { id: 3, .. })
    ));
    assert!(matches!(
        decode(&good[..good.len() - 4]),
        Some(DecodeError::Avro(_))
    ));
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(decode(&trailing), Some(DecodeError::Avro(_))));

    type Breaker = fn(&mut Telemetry);
    let invalid: [(&str, Breaker); 4] = [
        ("ts", |t| t.ts = TS_MAX_MS + 1),
        ("response_time_ms", |t| t.response_time_ms = Some(-3.0)),
        ("battery_pct", |t| t.battery_pct = Some(150.0)),
        ("device_id", |t| t.device_id.clear()),
    ];
    for (field, break_it) in invalid {
        let mut t = Telemetry::example();
        break_it(&mut t);
        let bytes = codec.encode(&t).unwrap_or_default();
        match decode(&bytes) {
            Some(DecodeError::Invalid(e)) => assert_eq!(e.field, field),
            other => panic!("{field}: expected an invalid field, got {other:?}"),
        }
    }
}

#[test]
fn rfc3339_and_millis_mean_the_same_reading() {
    let codec = Codec::builtin();
    let a = br#"{"tenant_id":"t","device_id":"d","ts":"2023-11-14T22:13:20Z"}"#;
    let b = br#"{"tenant_id":"t","device_id":"d","ts":1700000000000,"attributes":{}}"#;
    let a = codec.decode_telemetry(a, InputFormat::Json);
    assert!(a.is_ok());
    assert_eq!(a, codec.decode_telemetry(b, InputFormat::Json));
}
