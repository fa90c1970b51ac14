//! What the end-to-end tests share: running the `fleetpulse` binary and reading a topic back,
//! the bridge's, browser's, ClickHouse's and registry's helpers, and the reference model
//! ([`model`]) the dataflow's outputs are compared with. The tests themselves are the files
//! beside this folder (`tests/*.rs`), each against real services.

// Test support: every helper panics on what its test set up, and is documented where it is
// not plain from its name.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

pub mod bridge;
pub mod browser;
pub mod clickhouse;
pub mod model;
pub mod registry;
pub mod ws;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use generator::{Event, Fleet, GeneratorConfig, MessageFormat};
use pipeline::clock::RecordTime;
use pipeline::output::Output as Derived;
use pipeline::source::memory::MemoryRecord;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Timestamp;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use schemas::{Anomaly, Codec, DeadLetter, LastSeen, StatusTransition, WindowAggregate};

/// The binary under test, built once per test process by Cargo (a no-op when it is current),
/// with the profile and target directory this test was built with (no `--target`: that would
/// build every dependency again under a directory of its own).
pub fn fleetpulse() -> Command {
    static BINARY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let path = BINARY.get_or_init(|| {
        escargot::CargoBuild::new()
            .package("fleetpulse")
            .bin("fleetpulse")
            .current_release()
            .run()
            .expect("cargo builds the fleetpulse binary")
            .path()
            .to_path_buf()
    });
    let mut command = Command::new(path);
    command
        .env_remove("FLEETPULSE_CONFIG")
        .env("RUST_LOG", "warn");
    command
}

/// Runs the binary to completion; panics with its output if it fails.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .expect("run fleetpulse");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `fleetpulse generate`: `devices` devices of fleet `seed` sending `events` readings from
/// `start_ms` into `topic`, with `extra` flags.
pub fn generate_into(
    brokers: &str,
    topic: &str,
    (devices, events, seed): (&str, &str, &str),
    start_ms: i64,
    extra: &[&str],
) -> Output {
    run_ok(
        fleetpulse()
            .args(["generate", "--brokers", brokers, "--topic", topic])
            .args(["--devices", devices, "--events", events, "--seed", seed])
            .args(["--no-progress", "--start-ms", &start_ms.to_string()])
            .args(extra),
    )
}

/// [`generate_into`], some devices falling silent for a while.
pub fn generate_fleet(
    brokers: &str,
    topic: &str,
    fleet: (&str, &str, &str),
    start_ms: i64,
    extra: &[&str],
) -> Output {
    let silent = ["--set", "generate.silence_rate=0.003"];
    generate_into(
        brokers,
        topic,
        fleet,
        start_ms,
        &[&silent[..], extra].concat(),
    )
}

/// A message as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub timestamp: RecordTime,
    /// Headers, by name (as text).
    pub headers: BTreeMap<String, String>,
}

impl From<&rdkafka::message::BorrowedMessage<'_>> for Read {
    fn from(m: &rdkafka::message::BorrowedMessage<'_>) -> Read {
        use rdkafka::message::Headers;
        Read {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().unwrap_or_default().to_vec(),
            value: m.payload().unwrap_or_default().to_vec(),
            headers: m
                .headers()
                .into_iter()
                .flat_map(|h| h.iter())
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                    (h.key.to_string(), value)
                })
                .collect(),
            timestamp: match m.timestamp() {
                Timestamp::NotAvailable => RecordTime::None,
                Timestamp::CreateTime(t) => RecordTime::Producer(t),
                Timestamp::LogAppendTime(t) => RecordTime::Broker(t),
            },
        }
    }
}

/// A consumer of the test brokers and the partitions of `topic`.
fn consumer_on(brokers: &str, topic: &str) -> (BaseConsumer, Vec<i32>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "fleetpulse-tests")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .expect("metadata");
    let partitions = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    (consumer, partitions)
}

/// Assigns `partitions` of `topic` to `consumer`, each from its beginning.
fn assign_from_beginning(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
) {
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
}

/// Reads `topic` from the beginning until `expected` messages arrived or `timeout` passed.
pub fn read_topic(brokers: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<Read> {
    let (consumer, partitions) = consumer_on(brokers, topic);
    assign_from_beginning(&consumer, topic, partitions);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(expected);
    while out.len() < expected && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            out.push(Read::from(&message.expect("consume")));
        }
    }
    // Anything beyond what was expected would be a duplicate: give it a moment to show up.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            out.push(Read::from(&message.expect("consume")));
        }
    }
    out
}

/// The messages a fleet sends, as (key, value, record timestamp), in order.
pub fn expected_messages(
    config: &GeneratorConfig,
    start_ms: i64,
    codec: &Codec,
) -> Vec<(Event, Vec<u8>)> {
    Fleet::new(config, start_ms)
        .take(config.events as usize)
        .map(|event| {
            let mut value = Vec::new();
            generator::encode(&event, config.format, codec, &mut value).expect("encode");
            (event, value)
        })
        .collect()
}

/// Groups values by key, keeping order.
pub fn by_key<'a>(
    items: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    let mut map: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for (k, v) in items {
        map.entry(k.to_vec()).or_default().push(v.to_vec());
    }
    map
}

/// The default fleet with a fixed start, as tests use it.
pub fn fleet(events: u64, devices: u32, seed: u64, format: MessageFormat) -> GeneratorConfig {
    GeneratorConfig {
        events,
        devices,
        seed,
        format,
        start_ms: Some(START_MS),
        ..GeneratorConfig::default()
    }
}

/// A minimal HTTP/1.1 exchange, so the tests do not need an HTTP client of their own: the
/// status and the body as text.
pub fn http_text(url: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let address = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let text = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, text)
}

/// The same, with the body as JSON (`Null` when it is not JSON).
pub fn http(url: &str, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (status, text) = http_text(url, method, path, body);
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// The JSON summary a command prints on the last line of its stdout (after anything else it
/// printed, such as timely's cluster set-up).
pub fn summary(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("a JSON summary");
    serde_json::from_str(last).unwrap()
}

/// Event time of the first reading in tests.
pub const START_MS: i64 = 1_700_000_000_000;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `--set` flags naming the derived topics, and the inventory the sink also reads, after
/// `prefix`: no two tests share a topic.
pub fn derived_topics(prefix: &str) -> Vec<String> {
    DERIVED
        .iter()
        .chain(&[INVENTORY])
        .flat_map(|k| ["--set".to_string(), format!("topics.{k}={prefix}-{k}")])
        .collect()
}

/// The inventory topic's key in `[topics]`, as `derived_topics` names it.
pub const INVENTORY: &str = "inventory";

/// The kinds of derived topic, as `derived_topics` names them.
pub const DERIVED: [&str; 5] = ["aggregates", "anomalies", "status", "dlq", "lastseen"];

/// A derived record read from the topic of `kind`.
pub fn decode_output(codec: &Codec, kind: &str, value: &[u8]) -> Derived {
    match kind {
        "aggregates" => Derived::Aggregate(codec.decode::<WindowAggregate>(value).unwrap()),
        "anomalies" => Derived::Anomaly(codec.decode::<Anomaly>(value).unwrap()),
        "status" => Derived::Status(codec.decode::<StatusTransition>(value).unwrap()),
        "lastseen" => Derived::LastSeen(codec.decode::<LastSeen>(value).unwrap()),
        _ => Derived::DeadLetter(codec.decode::<DeadLetter>(value).unwrap()),
    }
}

/// Everything in `topic` now: read from the beginning to each partition's end offset.
pub fn read_all(brokers: &str, topic: &str) -> Vec<Read> {
    let (consumer, partitions) = consumer_on(brokers, topic);
    let mut ends = BTreeMap::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .expect("watermarks");
        if high > low {
            ends.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    assign_from_beginning(&consumer, topic, ends.keys().copied());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ends.is_empty() && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let read = Read::from(&message.expect("consume"));
            if ends
                .get(&read.partition)
                .is_some_and(|end| read.offset + 1 >= *end)
            {
                ends.remove(&read.partition);
            }
            out.push(read);
        }
    }
    assert!(ends.is_empty(), "{topic}: not read to its end in time");
    out
}

/// `topic` as the reference model's input: each partition's records in offset order, with their
/// keys (an inventory's tombstones are only a key) and headers.
pub fn topic_as_partitions(brokers: &str, topic: &str) -> Vec<Vec<MemoryRecord>> {
    let mut read = read_all(brokers, topic);
    read.sort_by_key(|m| (m.partition, m.offset));
    let partitions = read.iter().map(|m| m.partition).max().unwrap_or(0) as usize + 1;
    let mut out = vec![Vec::new(); partitions];
    for m in read {
        out[m.partition as usize].push(MemoryRecord {
            headers: m
                .headers
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect(),
            record_time: m.timestamp,
            key: Some(m.key),
            value: m.value,
        });
    }
    out
}

/// Every record in the derived topics of `prefix`.
pub fn derived_all(brokers: &str, prefix: &str) -> Vec<Derived> {
    let codec = Codec::builtin();
    DERIVED
        .iter()
        .flat_map(|kind| {
            read_all(brokers, &format!("{prefix}-{kind}"))
                .into_iter()
                .map(|m| decode_output(&codec, kind, &m.value))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A service process, killed when dropped: a failed assertion must not leave it running.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns a service command (`pipeline`, `sink ...`) with its stdout piped, and returns it with
/// the address of its `/metrics`, `/healthz` and `/readyz`, which it prints first; the rest of its
/// stdout is drained so it never blocks on a full pipe.
pub fn spawn_serving(command: &mut Command) -> (Child, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn fleetpulse");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let http = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("metrics on ").nth(1).map(str::to_string))
        .unwrap_or_default();
    std::thread::spawn(move || lines.for_each(drop));
    (child, http)
}

/// `fleetpulse sink clickhouse` on the derived topics of `prefix`, into `database` at `url`
/// (its consumer group named after it), with `extra` flags; and its HTTP address.
pub fn sink(
    brokers: &str,
    url: &str,
    prefix: &str,
    database: &str,
    extra: &[&str],
) -> (Running, String) {
    let (child, http) = spawn_serving(
        fleetpulse()
            .args(["sink", "clickhouse", "--brokers", brokers, "--url", url])
            .args(["--listen", "127.0.0.1:0"])
            .args(["--set", &format!("clickhouse.database={database}")])
            .args(["--set", &format!("clickhouse.group_id={database}")])
            .args(derived_topics(prefix))
            .args(extra),
    );
    (Running(child), http)
}

/// The shared broker, and derived topics of a fresh prefix made of `name`, created with
/// `partitions` partitions each.
pub async fn fresh_derived(name: &str, partitions: i32) -> (&'static str, String) {
    let brokers = testkit::shared(testkit::Kind::Kafka).address();
    let prefix = testkit::unique(name);
    create_derived(brokers, &prefix, partitions).await;
    (brokers, prefix)
}

/// Creates the derived topics (and the inventory) of `prefix` with `partitions` partitions each,
/// as the pipeline would: a cursor then spans several partitions per topic.
pub async fn create_derived(brokers: &str, prefix: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let names: Vec<String> = DERIVED
        .iter()
        .chain(&[INVENTORY])
        .map(|k| format!("{prefix}-{k}"))
        .collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// Devices (as the bridge serves them) without `last_seen`: Redis lets it go 24 h after the
/// reading, and test fleets read in 2023; the bridge's memory keeps it.
pub fn without_last_seen(devices: &serde_json::Value) -> serde_json::Value {
    let mut devices = devices.clone();
    for d in devices.as_array_mut().into_iter().flatten() {
        if let Some(d) = d.as_object_mut() {
            d.remove("last_seen");
        }
    }
    devices
}
