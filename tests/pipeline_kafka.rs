//! `fleetpulse pipeline` against a real Apache Kafka broker: `generate`, then the pipeline (one
//! worker, four workers, two processes of two workers), then the derived topics read back and
//! compared with the reference model's output for the telemetry actually on the topic, dead
//! letters for the malformed, late and future readings included. And a file replay gives what a
//! one-partition topic holding the same records gives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::model;

use std::process::Stdio;
use std::time::Duration;

use e2e::*;
use pipeline::PipelineConfig;
use pipeline::output::Output;
use schemas::Codec;
use testkit::{Kind, shared, unique};

const EVENTS: u64 = 40_000;

fn generate(brokers: &str, topic: &str, extra: &[&str]) {
    let mut args = vec![
        "generate",
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--devices",
        "400",
        "--seed",
        "11",
        "--no-progress",
        "--set",
        "generate.silence_rate=0.003",
    ];
    args.extend_from_slice(extra);
    let start = START_MS.to_string();
    args.extend_from_slice(&["--start-ms", &start]);
    run_ok(fleetpulse().args(&args));
}

/// Records written, from the JSON summary.
fn total(stdout: &[u8]) -> usize {
    let summary = summary(stdout);
    [
        "aggregates",
        "anomalies",
        "status",
        "dead_letters",
        "last_seen",
    ]
    .iter()
    .map(|k| summary[k].as_u64().unwrap() as usize)
    .sum()
}

fn pipeline(brokers: &str, telemetry: &str, prefix: &str, extra: &[&str]) -> usize {
    let output = run_ok(
        fleetpulse()
            .args(["pipeline", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .args(["--set", &format!("topics.telemetry={telemetry}")])
            .args(derived_topics(prefix))
            .args(extra),
    );
    total(&output.stdout)
}

/// Reads the five derived topics of `prefix` back as outputs.
fn derived(brokers: &str, prefix: &str, expected: usize) -> Vec<Output> {
    let codec = Codec::builtin();
    let mut out = Vec::new();
    for kind in DERIVED {
        let topic = format!("{prefix}-{kind}");
        let remaining = expected - out.len();
        for m in read_topic(brokers, &topic, remaining, Duration::from_secs(5)) {
            out.push(decode_output(&codec, kind, &m.value));
        }
    }
    out
}

fn assert_same(got: Vec<Output>, want: &[Output], what: &str) {
    let got = model::normalise(got);
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: as many records as the model"
    );
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, w, "{what}");
    }
}

#[test]
fn the_pipeline_agrees_with_the_model_on_one_four_and_two_by_two_workers() {
    let kafka = shared(Kind::Kafka);
    let brokers = kafka.address();
    let telemetry = unique("telemetry");
    generate(brokers, &telemetry, &["--events", &EVENTS.to_string()]);

    let input = topic_as_partitions(brokers, &telemetry);
    let want = model::normalise(model::model(&telemetry, &input, &PipelineConfig::default()));
    let kinds = |f: fn(&Output) -> bool| want.iter().filter(|o| f(o)).count();
    assert!(
        kinds(|o| matches!(o, Output::DeadLetter(_))) > 50,
        "malformed, late and future readings"
    );
    assert!(
        kinds(|o| matches!(o, Output::Status(s) if s.previous.is_some())) > 10,
        "silences"
    );
    assert!(kinds(|o| matches!(o, Output::Anomaly(_))) > 10, "anomalies");

    let one = unique("one");
    let n = pipeline(brokers, &telemetry, &one, &["--until-end"]);
    assert_same(derived(brokers, &one, n), &want, "one worker");

    let four = unique("four");
    let n = pipeline(brokers, &telemetry, &four, &["--until-end", "-w", "4"]);
    assert_same(derived(brokers, &four, n), &want, "four workers");

    let two = unique("two-by-two");
    let hostfile = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        hostfile.path(),
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .unwrap();
    let children: Vec<_> = (0..2)
        .map(|p| {
            fleetpulse()
                .args([
                    "pipeline",
                    "--brokers",
                    brokers,
                    "--listen",
                    "127.0.0.1:0",
                    "--until-end",
                ])
                .args(["-w", "2", "-n", "2", "-p", &p.to_string()])
                .arg("--hostfile")
                .arg(hostfile.path())
                .args(["--set", &format!("topics.telemetry={telemetry}")])
                .args(derived_topics(&two))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut n = 0;
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        n += total(&output.stdout);
    }
    assert_same(
        derived(brokers, &two, n),
        &want,
        "two processes of two workers",
    );
}

#[test]
fn a_file_gives_what_a_one_partition_topic_gives() {
    let brokers = shared(Kind::Kafka).address();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.ndjson");
    // A file has no record timestamps to judge "future" by: the fleet sends none.
    let fleet = [
        "--events",
        "20000",
        "--format",
        "json",
        "--set",
        "generate.future_fraction=0",
    ];
    let mut args = fleet.to_vec();
    args.extend(["--output", file.to_str().unwrap()]);
    generate(brokers, "unused", &args);
    let telemetry = unique("telemetry-one");
    let mut args = fleet.to_vec();
    args.extend(["--partitions", "1"]);
    generate(brokers, &telemetry, &args);

    let from_topic = unique("from-topic");
    let n = pipeline(
        brokers,
        &telemetry,
        &from_topic,
        &["--until-end", "-w", "2"],
    );
    let topic_out = derived(brokers, &from_topic, n);
    let from_file = unique("from-file");
    let n = pipeline(
        brokers,
        &telemetry,
        &from_file,
        &["--input", file.to_str().unwrap()],
    );
    let file_out = derived(brokers, &from_file, n);

    // Dead letters name their source; everything else must be identical.
    let rename = |mut out: Vec<Output>| {
        for o in &mut out {
            if let Output::DeadLetter(d) = o {
                d.source_topic = "source".into();
                d.record_ts = None;
                d.event_id =
                    pipeline::event_id::dead_letter("source", d.source_partition, d.source_offset);
            }
        }
        model::normalise(out)
    };
    let topic_out = rename(topic_out);
    assert!(topic_out.iter().any(|o| matches!(o, Output::DeadLetter(_))));
    assert_same(rename(file_out), &topic_out, "file against topic");

    // The topic replayed to files, where no inventory topic exists (nothing creates one for a
    // replay to files): the telemetry is read alone, and gives the same records.
    let out = tempfile::tempdir().unwrap();
    let summary_out = run_ok(
        fleetpulse()
            .args(["pipeline", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .args(["--until-end", "--output", out.path().to_str().unwrap()])
            .args(["--set", &format!("topics.telemetry={telemetry}")])
            .args([
                "--set",
                &format!("topics.inventory={}", unique("no-inventory")),
            ]),
    );
    let aggregates = topic_out
        .iter()
        .filter(|o| matches!(o, Output::Aggregate(_)))
        .count();
    assert_eq!(
        summary(&summary_out.stdout)["aggregates"].as_u64(),
        Some(aggregates as u64)
    );
}

/// The records of the files `--output` wrote into `dir`, as (key, record), in a fixed order.
fn from_files(dir: &std::path::Path) -> Vec<(String, Output)> {
    let mut out = Vec::new();
    for kind in DERIVED {
        let text = std::fs::read_to_string(dir.join(format!("{kind}.ndjson"))).unwrap();
        for line in text.lines() {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            let record = line["record"].clone();
            let record = match kind {
                "aggregates" => Output::Aggregate(serde_json::from_value(record).unwrap()),
                "anomalies" => Output::Anomaly(serde_json::from_value(record).unwrap()),
                "status" => Output::Status(serde_json::from_value(record).unwrap()),
                "lastseen" => Output::LastSeen(serde_json::from_value(record).unwrap()),
                _ => Output::DeadLetter(serde_json::from_value(record).unwrap()),
            };
            out.push((line["key"].as_str().unwrap().to_string(), record));
        }
    }
    // A device may repeat a last-seen record (see pipeline::lastseen): ordered by all of it.
    out.sort_by_cached_key(|r| format!("{r:?}"));
    out
}

#[test]
fn a_replay_to_files_writes_what_the_same_replay_writes_to_kafka() {
    let kafka = shared(Kind::Kafka);
    let brokers = kafka.address();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.ndjson");
    generate(
        brokers,
        "unused",
        &[
            "--events",
            "20000",
            "--format",
            "json",
            "--output",
            file.to_str().unwrap(),
        ],
    );
    let prefix = unique("replay-kafka");
    let n = pipeline(
        brokers,
        "unused",
        &prefix,
        &["--input", file.to_str().unwrap()],
    );
    let codec = Codec::builtin();
    let mut topics = Vec::new();
    for kind in DERIVED {
        for m in read_topic(
            brokers,
            &format!("{prefix}-{kind}"),
            n,
            Duration::from_secs(5),
        ) {
            if topics.len() == n {
                break;
            }
            let key = String::from_utf8(m.key.clone()).unwrap();
            topics.push((key, decode_output(&codec, kind, &m.value)));
        }
    }
    topics.sort_by_cached_key(|r| format!("{r:?}"));

    // No broker given: a replay to files must not need one.
    let out = dir.path().join("out");
    let summary = run_ok(fleetpulse().args([
        "pipeline",
        "--input",
        file.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]));
    assert_eq!(total(&summary.stdout), n);
    let files = from_files(&out);
    assert_eq!(files.len(), topics.len());
    assert!(
        files
            .iter()
            .any(|(_, o)| matches!(o, Output::DeadLetter(_)))
    );
    assert!(files.iter().any(|(_, o)| matches!(o, Output::Anomaly(_))));
    for (f, t) in files.iter().zip(&topics) {
        assert_eq!(f, t);
    }

    // Files are one directory per job: several processes are refused, naming the flag.
    let refused = fleetpulse()
        .args(["pipeline", "--input", file.to_str().unwrap(), "--output"])
        .arg(dir.path().join("two"))
        .args(["-n", "2", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--output"));
}

#[test]
fn serves_metrics_and_readiness_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};

    let kafka = shared(Kind::Kafka);
    let brokers = kafka.address();
    let telemetry = unique("telemetry-live");
    generate(brokers, &telemetry, &["--events", "3000"]);
    let mut child = fleetpulse()
        .args(["pipeline", "--brokers", brokers, "--listen", "127.0.0.1:0"])
        .args(["--set", &format!("topics.telemetry={telemetry}")])
        .args(derived_topics(&unique("live")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = stdout
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("metrics on"))
        .expect("the pipeline says where its metrics are");
    let url = line.rsplit(' ').next().unwrap().to_string();

    assert!(
        testkit::wait_for(Duration::from_secs(30), || {
            http_text(&url, "GET", "/readyz", None).0 == 200
        }),
        "ready once its source reads"
    );
    assert_eq!(http_text(&url, "GET", "/healthz", None).0, 200);
    let metrics_show = |name: &str| http_text(&url, "GET", "/metrics", None).1.contains(name);
    assert!(
        testkit::wait_for(Duration::from_secs(30), || {
            metrics_show("fleetpulse_pipeline_records_in_total")
                && metrics_show("fleetpulse_pipeline_watermark_ms")
                && metrics_show("fleetpulse_pipeline_devices_tracked")
        }),
        "records in, watermark and devices tracked are exported"
    );

    // SIGTERM: the job stops cleanly and says what it wrote.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = stdout.map_while(Result::ok).collect();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "a clean exit on SIGTERM: {exit}");
    assert!(
        summary(rest.join("\n").as_bytes())["status"]
            .as_u64()
            .is_some()
    );
}

/// The issue that brought the clock truth, end to end: thirty honest devices of tenant `t1`
/// report every second for about a minute on a topic whose record timestamps the broker stamps
/// (`LogAppendTime`), each reading written at the same moment to a second such topic, where two
/// devices of tenant `t2` with wrong clocks (four minutes ahead, an hour behind) report too.
/// The pipeline gives every honest device the same records on both topics, no honest reading is
/// late, and each wrong clock gets its `clock_skew` anomaly with its offset.
#[test]
fn wrong_clocks_on_a_broker_stamped_topic_cost_honest_devices_nothing() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use schemas::{AnomalyKind, AnomalyState, DeadLetterReason, Telemetry};

    let kafka = shared(Kind::Kafka);
    let brokers = kafka.address();
    let (honest, mixed) = (unique("stamped-honest"), unique("stamped-mixed"));
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let topics: Vec<NewTopic<'_>> = [&honest, &mixed]
        .iter()
        .map(|t| {
            NewTopic::new(t, 2, TopicReplication::Fixed(1))
                .set("message.timestamp.type", "LogAppendTime")
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for r in runtime
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let codec = Codec::builtin();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let send = |topic: &str, t: &Telemetry| {
        let value = codec.encode(t).unwrap();
        producer
            .send(
                BaseRecord::to(topic)
                    .key(t.device_id.as_bytes())
                    .payload(&value),
            )
            .unwrap();
    };
    let reading = |tenant: &str, device: String, ts: i64, i: i64| Telemetry {
        tenant_id: tenant.into(),
        device_id: device,
        ts,
        response_time_ms: Some(30.0 + (i % 13) as f64 * 11.0),
        ok: i % 17 != 0,
        error_code: None,
        battery_pct: Some(80.0),
        signal_dbm: Some(-70.0),
        device_class: Some("sensor".into()),
        attributes: Default::default(),
    };
    // A minute or more, ending between seconds 25 and 45 of a minute, well inside every window:
    // the two topics' last broker times differ by milliseconds, and no window ends between them.
    let start = now();
    let ending = || now() >= start + 60_000 && (25..45).contains(&((now() / 1_000) % 60));
    let mut i = 0;
    let mut liars = true;
    while !ending() {
        let second = now();
        for d in 0..30 {
            // Up to 400 ms in transit: well within the allowed out-of-orderness.
            let t = reading("t1", format!("h{d}"), second - (d * 37) % 400, i);
            send(&honest, &t);
            send(&mixed, &t);
        }
        // The wrong clocks stop at least five seconds before, so both topics end with honest
        // records.
        liars &= now() < start + 55_000 || !(20..50).contains(&((now() / 1_000) % 60));
        if liars {
            send(&mixed, &reading("t2", "ahead".into(), second + 240_000, i));
            send(
                &mixed,
                &reading("t2", "behind".into(), second - 3_600_000, i),
            );
        }
        producer.poll(Duration::ZERO);
        i += 1;
        std::thread::sleep(Duration::from_millis((second + 1_000 - now()).max(0) as u64));
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let run = |topic: &str| {
        let prefix = unique("stamped-out");
        let n = pipeline(brokers, topic, &prefix, &["--until-end", "-w", "2"]);
        derived(brokers, &prefix, n)
    };
    let honest_only = |out: &[Output]| {
        let kept: Vec<Output> = out
            .iter()
            .filter(|o| match o {
                Output::Aggregate(a) => a.tenant_id == "t1",
                Output::Anomaly(a) => a.tenant_id == "t1",
                Output::Status(s) => s.tenant_id == "t1",
                Output::LastSeen(l) => l.tenant_id == "t1",
                Output::DeadLetter(_) => false,
            })
            .cloned()
            .collect();
        model::normalise(kept)
    };
    let (without, with) = (run(&honest), run(&mixed));
    let want = honest_only(&without);
    assert!(want.len() > 100, "{} honest records", want.len());
    assert_same(
        honest_only(&with),
        &want,
        "honest devices beside wrong clocks",
    );
    let honest_late = with
        .iter()
        .filter(|o| {
            matches!(o, Output::DeadLetter(d) if d.reason == DeadLetterReason::Late
                && codec.decode_telemetry(&d.raw, schemas::InputFormat::Auto)
                    .is_ok_and(|t| t.tenant_id == "t1"))
        })
        .count();
    assert_eq!(honest_late, 0, "no honest reading is late");
    for (device, offset) in [("ahead", 240_000.0), ("behind", -3_600_000.0)] {
        let observed = with.iter().find_map(|o| match o {
            Output::Anomaly(a)
                if a.device_id == device
                    && a.kind == AnomalyKind::ClockSkew
                    && a.state == AnomalyState::Firing =>
            {
                Some(a.observed)
            }
            _ => None,
        });
        assert!(
            observed.is_some_and(|o: f64| (o - offset).abs() < 2_000.0),
            "{device}: {observed:?}"
        );
    }
}

/// A bounded run resumed exactly where a partition ends (a checkpoint taken after its last
/// record) knows at once that the partition is done: no record will say so, and librdkafka's
/// end-of-partition event comes before the consumer has a position. It used to wait for ever.
#[test]
fn a_bounded_input_resumed_at_a_partition_s_end_is_done_with_it() {
    use pipeline::source::Input;
    use pipeline::source::kafka::{KafkaInput, KafkaSettings};
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let brokers = shared(Kind::Kafka).address();
    let topic = unique("resumed-at-end");
    generate_into(
        brokers,
        &topic,
        ("20", "200", "5"),
        START_MS,
        &["--partitions", "2"],
    );
    let asking: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let end = |p: i32| {
        asking
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .unwrap()
            .1
    };
    let ends = [end(0), end(1)];
    assert!(ends.iter().all(|e| *e > 0), "{ends:?}");
    let settings = KafkaSettings {
        properties: [("bootstrap.servers".to_string(), brokers.to_string())].into(),
        topic: topic.clone(),
        inventory: None,
        until_end: true,
        topic_wait: Some(Duration::from_secs(30)),
    };
    // Partition 0 resumed at its end, partition 1 from its beginning.
    let start = [(0, ends[0])].into();
    let mut input = KafkaInput::new(&settings, 0, 1, &start).unwrap();
    let mut finished = input.take_finished();
    let mut records = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while finished.len() < 2 && std::time::Instant::now() < deadline {
        records += input
            .poll(1_000, &mut |r| assert_eq!(r.partition, 1))
            .unwrap();
        finished.extend(input.take_finished());
        std::thread::sleep(Duration::from_millis(20));
    }
    finished.sort_unstable();
    assert_eq!(finished, [0, 1], "both partitions done");
    assert_eq!(
        records as i64, ends[1],
        "partition 1 read whole, partition 0 not again"
    );
}
