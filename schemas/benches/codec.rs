//! Encode and decode throughput of the Confluent-framed Avro codec and of JSON input, one core.
//! Run with `cargo bench -p schemas --bench codec`; criterion prints records/s as "elem/s".

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use schemas::{Codec, InputFormat, Telemetry};

fn readings(n: usize) -> Vec<Telemetry> {
    (0..n)
        .map(|i| {
            let mut t = Telemetry::example();
            t.device_id = format!("dev-{i:06}");
            t.ts += i as i64;
            t.response_time_ms = Some(10.0 + (i % 97) as f64);
            t
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    const N: usize = 1000;
    let codec = Codec::builtin();
    let records = readings(N);
    let encoded: Vec<Vec<u8>> = records
        .iter()
        .map(|r| codec.encode(r))
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    let json: Vec<Vec<u8>> = records
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    assert_eq!(encoded.len(), N, "encoding the benchmark input failed");

    let mut group = c.benchmark_group("telemetry");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("avro_encode", |b| {
        let mut buf = Vec::with_capacity(256);
        b.iter(|| {
            for r in &records {
                buf.clear();
                let _ = codec.encode_into(black_box(r), &mut buf);
            }
        })
    });
    group.bench_function("avro_decode", |b| {
        b.iter(|| {
            for bytes in &encoded {
                let _ = black_box(codec.decode_telemetry(black_box(bytes), InputFormat::Avro));
            }
        })
    });
    group.bench_function("json_decode", |b| {
        b.iter(|| {
            for bytes in &json {
                let _ = black_box(codec.decode_telemetry(black_box(bytes), InputFormat::Json));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
