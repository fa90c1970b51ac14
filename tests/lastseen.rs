//! Last seen within seconds, end to end against real Kafka, ClickHouse and Redis: a fleet reports
//! every second in real time through `fleetpulse pipeline`, with `fleetpulse bridge` (Redis) and
//! `fleetpulse sink clickhouse` beside it. Sampled every couple of seconds for about two minutes,
//! the newest last-seen time of every device is no older than the interval plus two seconds on
//! `/api/devices`, in Redis and in ClickHouse; and the `device-lastseen` topic holds at most one
//! record per device per interval (besides the one a device that falls silent gets).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::clickhouse::connect;
use e2e::*;
use schemas::LastSeen;
use testkit::{Kind, shared, unique};

const SECRET: &str = "Ls4rT9vK2mW7qX3nB8yP1cH6fJ0dG5sA4eU7iO2kR9tV3wZ8";
const DEVICES: u64 = 300;
const INTERVAL_MS: i64 = 5_000;
/// How long the fleet reports.
const REPORTING: Duration = Duration::from_secs(130);
/// Before sampling: the first round of every device through every part.
const WARM_UP: Duration = Duration::from_secs(20);

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Ages (now minus last seen, ms) over one sample of a store: the stalest device's, and how
/// many devices it had.
#[derive(Debug, Clone, Copy)]
struct Sample {
    stalest: i64,
    devices: usize,
}

fn sample(now: i64, last_seen: impl Iterator<Item = i64>) -> Sample {
    let ages: Vec<i64> = last_seen.map(|t| now - t).collect();
    Sample {
        stalest: ages.iter().copied().max().unwrap_or(i64::MAX),
        devices: ages.len(),
    }
}

/// Every sample has the whole fleet; in at least 90 % of them the stalest device was last seen
/// no longer than the interval plus two seconds ago, and never more than twice that: seven
/// processes and three servers share two cores here, and one of them stalls now and then (in
/// four runs 0 to 8 of 68 samples were over, by at most 0.9 s), while a path that lags by design
/// (a time waiting for the frontier, 5 s more) fails every sample.
fn judge(store: &str, samples: &[Sample]) {
    let bound = INTERVAL_MS + 2_000;
    let mut stalest: Vec<i64> = samples.iter().map(|s| s.stalest).collect();
    stalest.sort_unstable();
    let within = stalest.iter().filter(|a| **a <= bound).count();
    println!(
        "{store}: {} samples, stalest device's age median {} ms, 95th {} ms, max {} ms; {within} within {bound} ms",
        stalest.len(),
        stalest[stalest.len() / 2],
        stalest[stalest.len() * 95 / 100],
        stalest[stalest.len() - 1],
    );
    assert!(
        samples.iter().all(|s| s.devices == DEVICES as usize),
        "{store}: every device in every sample: {samples:?}"
    );
    assert!(
        within * 100 >= samples.len() * 90,
        "{store}: the stalest device within {bound} ms in 90 % of samples: {stalest:?}"
    );
    assert!(
        stalest.last().is_some_and(|a| *a <= 2 * bound),
        "{store}: never beyond {} ms: {stalest:?}",
        2 * bound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_s_last_seen_is_current_within_the_interval_everywhere() {
    let brokers = shared(Kind::Kafka).address();
    let clickhouse = shared(Kind::ClickHouse).address();
    let redis = testkit::Service::start(Kind::Redis);
    let telemetry = unique("lastseen-telemetry");
    let prefix = unique("lastseen");
    create_derived(brokers, &prefix, 4).await;
    let interval = format!("pipeline.lastseen_interval_ms={INTERVAL_MS}");

    let database = unique("fp_lastseen").replace('-', "_");
    let (_sink, _) = sink(brokers, clickhouse, &prefix, &database, &[]);
    let (bridge, base) = spawn_serving(
        fleetpulse()
            .args(["bridge", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .args(["--redis-url", redis.address()])
            .args(["--set", &format!("bridge.jwt_secret={SECRET}")])
            .args(derived_topics(&prefix)),
    );
    let _bridge = Running(bridge);

    // A fleet that reports every second of real time, stamped with the wall clock, honest: no
    // silences, no late, future or malformed readings (their devices are not current by design).
    let rounds = REPORTING.as_secs();
    let generator = fleetpulse()
        .args(["generate", "--brokers", brokers, "--topic", &telemetry])
        .args(["--devices", &DEVICES.to_string(), "--tenants", "3"])
        .args(["--rate", &DEVICES.to_string()])
        .args(["--events", &(DEVICES * rounds).to_string()])
        .args(["--seed", "26", "--no-progress"])
        .args(["--set", "generate.interval_ms=1000"])
        .args(["--set", "generate.silence_rate=0"])
        .args(["--set", "generate.late_fraction=0"])
        .args(["--set", "generate.future_fraction=0"])
        .args(["--set", "generate.malformed_fraction=0"])
        .args(["--set", "generate.flapping_fraction=0"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _generator = Running(generator);
    let (pipeline, _) = spawn_serving(
        fleetpulse()
            .args(["pipeline", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .args(["--set", &format!("topics.telemetry={telemetry}")])
            .args(["--set", &interval])
            .args(derived_topics(&prefix)),
    );
    let _pipeline = Running(pipeline);

    let admin = bridge::admin_token(SECRET);
    let cache =
        ws_bridge::cache::Cache::connect(&ws_bridge::cache::Target::url(redis.address())).unwrap();
    let c = connect(clickhouse, &database).await;

    let started = Instant::now();
    tokio::time::sleep(WARM_UP).await;
    let (mut api, mut cached, mut analysts) = (Vec::new(), Vec::new(), Vec::new());
    // Sampling stops a few seconds before the fleet does.
    while started.elapsed() + Duration::from_secs(8) < REPORTING {
        let (_, body) = http(
            &base,
            "GET",
            &format!("/api/devices?limit=1000&token={admin}"),
            None,
        );
        let t = wall_ms();
        api.push(sample(
            t,
            body["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["last_seen"].as_i64()),
        ));

        let held = cache
            .read(&ws_bridge::cache::Devices::Tenants(Vec::new()))
            .await
            .unwrap_or_default();
        let t = wall_ms();
        cached.push(sample(t, held.iter().filter_map(|d| d.last_seen)));

        let rows: Vec<(String, String, i64)> = c
            .client
            .query(
                "SELECT tenant_id, device_id, max(last_seen_ms) FROM device_last_seen \
                 GROUP BY tenant_id, device_id",
            )
            .fetch_all()
            .await
            .unwrap();
        let t = wall_ms();
        analysts.push(sample(t, rows.iter().map(|r| r.2)));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    // Each store is judged after all three have printed their figures.
    let judged = [
        ("/api/devices", &api),
        ("redis", &cached),
        ("clickhouse", &analysts),
    ];
    let verdicts: Vec<_> = judged
        .iter()
        .map(|(store, samples)| std::panic::catch_unwind(|| judge(store, samples)))
        .collect();

    // The topic: per device, records at least an interval apart, but for the one that a device
    // falling silent gets (the fleet stops as sampling ends; it may not be there yet).
    let mut times: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    let codec = schemas::Codec::builtin();
    // How old each time was when the pipeline wrote it (the record's producer timestamp).
    let mut at_write = Vec::new();
    for m in read_all(brokers, &format!("{prefix}-lastseen")) {
        let l: LastSeen = codec.decode(&m.value).unwrap();
        if let Some(t) = m.timestamp.millis() {
            at_write.push(t - l.last_seen);
        }
        times
            .entry((l.tenant_id, l.device_id))
            .or_default()
            .push(l.last_seen);
    }
    at_write.sort_unstable();
    println!(
        "age of a last-seen time when written: median {} ms, 95th {} ms, max {} ms",
        at_write[at_write.len() / 2],
        at_write[at_write.len() * 95 / 100],
        at_write[at_write.len() - 1]
    );
    assert_eq!(times.len(), DEVICES as usize, "every device");
    let dead: BTreeMap<String, usize> =
        read_all(brokers, &format!("{prefix}-dlq"))
            .iter()
            .fold(BTreeMap::new(), |mut m, r| {
                let d: schemas::DeadLetter = codec.decode(&r.value).unwrap();
                *m.entry(schemas::wire_name(&d.reason)).or_default() += 1;
                m
            });
    println!("dead letters: {dead:?}");
    // A repeated time is one record to consumers (the same event_id). Besides the records an
    // interval apart, a device may tell its latest time after a silence of an interval: at the
    // end, and at the start if the clock truth took some of its first readings as late.
    let most = (REPORTING.as_millis() as i64 / INTERVAL_MS) as usize + 3;
    let mut busiest = 0;
    for (device, mut t) in times {
        t.sort_unstable();
        t.dedup();
        busiest = busiest.max(t.len());
        let close = t.windows(2).filter(|w| w[1] - w[0] < INTERVAL_MS).count();
        assert!(
            close <= 2 && t.len() <= most,
            "{device:?}: {} records, {close} closer than the interval: {t:?}",
            t.len()
        );
    }
    println!(
        "at most {busiest} last-seen times per device in {} s",
        REPORTING.as_secs()
    );
    assert!(verdicts.iter().all(Result::is_ok), "a store lagged");
}
