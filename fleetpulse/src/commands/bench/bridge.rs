//! `fleetpulse bench bridge`: N WebSocket clients of a `fleetpulse bridge` (a child process, so
//! each side has its own file descriptors and runtime) on loopback, status transitions produced
//! at a fixed rate; the delay from the produce call to a client holding the event (p50, p99,
//! max) and the messages delivered per second, beside a raw Kafka consumer of the same topic in
//! the same run (the part of the delay that is Kafka's). And the bridge's memory: its resident
//! set before and after it holds `--devices` devices, and after the clients subscribed, per
//! device and per client.

mod clients;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use schemas::{DeviceStatus, RecordKind, StatusTransition, TransitionReason};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use ws_bridge::auth::{Claims, issue};

use crate::commands::KafkaArgs;
use crate::config::Config;
use clients::{client, micros, percentiles};

/// Flags of `bench bridge`.
#[derive(Debug, Args)]
pub struct BridgeBench {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    /// Clients; one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    clients: Vec<usize>,
    /// Events produced per second (with 100 tenants, 100 a second is one message a second to
    /// every client: a dashboard's pace).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Tenants: each client subscribes to one tenant's status transitions, so an event reaches
    /// clients / tenants clients.
    #[arg(long, default_value_t = 100)]
    tenants: usize,
    /// Seconds of events per run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Devices the bridge holds before the clients connect (one status transition each), for
    /// its memory per device.
    #[arg(long, default_value_t = 100_000)]
    devices: u64,
}

const SECRET: &str = "Bb9rT4vK1mW6qX8nP3yL5cH7fJ2dG0sA9eU1iO5kR3tV6wZ2";
/// Starts `fleetpulse bridge` on the topics; returns it and its address once it is ready.
async fn start_bridge(
    config: &Config,
    status: &str,
    prefix: &str,
) -> anyhow::Result<(tokio::process::Child, String)> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bridge", "--listen", "127.0.0.1:0"])
        .args(["--brokers", config.brokers()?.as_str()])
        .args(["--set", &format!("topics.status={status}")])
        .args(["--set", &format!("topics.aggregates={prefix}-aggregates")])
        .args(["--set", &format!("topics.anomalies={prefix}-anomalies")])
        .env("FLEETPULSE_BRIDGE__JWT_SECRET", SECRET)
        .env("FLEETPULSE_BRIDGE__MAX_CONNECTIONS", "100000")
        // Every client of the bench comes from this machine, to one tenant of a few.
        .env("FLEETPULSE_BRIDGE__MAX_CONNECTIONS_PER_ADDRESS", "100000")
        .env("FLEETPULSE_BRIDGE__MAX_CONNECTIONS_PER_TENANT", "100000")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run fleetpulse bridge")?;
    let stdout = child.stdout.take().context("the bridge's stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut address = None;
    while let Some(line) = lines.next_line().await? {
        let said: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if said["listening"] == "bridge"
            && let Some(url) = said["url"].as_str()
        {
            address = Some(url.trim_start_matches("http://").to_string());
            break;
        }
    }
    let address = address.context("the bridge did not say where it listens")?;
    // Its stdout is drained so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(&address).await {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the bridge is not ready after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((child, address))
}

async fn ready(address: &str) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(address).await else {
        return false;
    };
    if s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer).await;
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

/// A raw consumer of `topic` from its end: the delay Kafka alone adds.
fn raw_consumer(
    config: &Config,
    topic: &str,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<Vec<u64>>> {
    let consumer = crate::kafka::consumer(
        config,
        &[
            ("group.id", "fleetpulse-bench-bridge"),
            ("enable.auto.commit", "false"),
            ("fetch.queue.backoff.ms", "10"),
            ("fetch.wait.max.ms", "100"),
        ],
    )?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut list = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            list.add_partition_offset(topic, p.id(), Offset::End)?;
        }
    }
    consumer.assign(&list)?;
    Ok(std::thread::spawn(move || {
        let mut delays = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let now = micros();
                // The id is the last field's text in the Avro record; the stamp is found in the
                // raw bytes without decoding, as the bridge's clients find it in JSON.
                let payload = m.payload().unwrap_or_default();
                let text = String::from_utf8_lossy(payload);
                if let Some(at) = text.find("bench/") {
                    let digits: String = text[at + 6..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    if let Ok(t) = digits.parse::<u64>() {
                        delays.push(now.saturating_sub(t));
                    }
                }
            }
        }
        delays
    }))
}

/// How events are produced.
#[derive(Debug, Clone, Copy)]
struct Load {
    /// Events a second; 0: as fast as the producer takes them.
    rate: u64,
    events: u64,
    tenants: usize,
    /// Distinct devices the events go round.
    devices: u64,
}

/// The resident set of process `pid`, bytes (Linux).
fn resident(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Waits until the bridge's `fleetpulse_bridge_devices` gauge says `n`.
async fn holds(address: &str, n: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let wanted = format!("fleetpulse_bridge_devices {n}");
    loop {
        let mut s = tokio::net::TcpStream::connect(address).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        if answer.lines().any(|l| l.trim() == wanted) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the bridge does not hold {n} devices after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Produces `events` status transitions at `rate` a second, each stamped when produced.
fn produce(
    config: &Config,
    codec: &schemas::Codec,
    topic: &str,
    args: Load,
) -> anyhow::Result<u64> {
    let linger = if args.rate == 0 { "5" } else { "0" };
    let producer = crate::kafka::producer(config, &[("linger.ms", linger)])?;
    let total = args.events;
    let start = Instant::now();
    for i in 0..total {
        if let Some(at) = (i * 1_000_000).checked_div(args.rate)
            && let Some(wait) =
                (start + Duration::from_micros(at)).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
        let tenant = i as usize % args.tenants.max(1);
        let ts = i64::try_from(micros() / 1_000).unwrap_or(i64::MAX);
        let record = StatusTransition {
            tenant_id: format!("tenant-{tenant:03}"),
            device_id: format!("dev-{:06}", i % args.devices.max(1)),
            device_class: Some("sensor".into()),
            status: if i % 2 == 0 {
                DeviceStatus::Online
            } else {
                DeviceStatus::Offline
            },
            previous: None,
            ts,
            last_seen: ts,
            reason: TransitionReason::Resumed,
            time_in_previous_ms: None,
            event_id: format!("bench/{}", micros()),
        };
        let value = codec.encode(&record)?;
        let mut r = BaseRecord::to(topic)
            .key(record.device_id.as_bytes())
            .payload(&value);
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(total)
}

pub(crate) async fn run(config: &Config, args: BridgeBench) -> anyhow::Result<()> {
    // Every client is a socket here (and one in the bridge, which raises its own limit).
    let files = rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit")?;
    let codec = crate::commands::codec(config, &[RecordKind::StatusTransition]).await?;
    println!(
        "bench bridge: {} ev/s for {} s over {} tenants; open files up to {files}",
        args.rate, args.seconds, args.tenants
    );
    for &clients in &args.clients {
        anyhow::ensure!(
            clients as u64 + 1_000 < files,
            "{clients} clients need about {} open files; the limit is {files}",
            clients + 1_000
        );
        let prefix = format!("bench-bridge-{}-{clients}", std::process::id());
        let status = format!("{prefix}-status");
        for topic in [
            &status,
            &format!("{prefix}-aggregates"),
            &format!("{prefix}-anomalies"),
        ] {
            crate::kafka::ensure_topic(config, topic, 4).await?;
        }
        let (mut bridge, address) = start_bridge(config, &status, &prefix).await?;
        let pid = bridge.id();
        let empty = resident(pid);
        let fill = {
            let (config, codec, status) = (config.clone(), codec.clone(), status.clone());
            let load = Load {
                rate: 0,
                events: args.devices,
                tenants: args.tenants,
                devices: args.devices,
            };
            tokio::task::spawn_blocking(move || produce(&config, &codec, &status, load))
        };
        fill.await??;
        holds(&address, args.devices).await?;
        let filled = resident(pid);

        let stop = Arc::new(AtomicBool::new(false));
        let subscribed = Arc::new(AtomicUsize::new(0));
        let connecting = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let limit = Arc::new(tokio::sync::Semaphore::new(200));
        for i in 0..clients {
            let claims = Claims {
                sub: format!("bench-{i}"),
                tenant: format!("tenant-{:03}", i % args.tenants.max(1)),
                role: "viewer".into(),
                exp: ws_bridge::auth::now() + 3_600,
            };
            let token = issue(&claims, SECRET)?;
            let (address, subscribed, stop) =
                (address.clone(), Arc::clone(&subscribed), Arc::clone(&stop));
            // At most 200 clients connecting at a time: the listen backlog holds no more.
            let permit = Arc::clone(&limit).acquire_owned().await?;
            tasks.spawn(client(address, token, permit, subscribed, stop));
        }
        while subscribed.load(Ordering::Relaxed) < clients {
            anyhow::ensure!(
                connecting.elapsed() < Duration::from_secs(300),
                "only {} of {clients} clients subscribed in 300 s",
                subscribed.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let connected_in = connecting.elapsed();
        let serving = resident(pid);

        let raw = raw_consumer(config, &status, Arc::clone(&stop))?;
        let started = Instant::now();
        let produced = {
            let (config, codec, status) = (config.clone(), codec.clone(), status.clone());
            let load = Load {
                rate: args.rate,
                events: args.rate * args.seconds,
                tenants: args.tenants,
                devices: 10_000,
            };
            tokio::task::spawn_blocking(move || produce(&config, &codec, &status, load)).await??
        };
        let producing = started.elapsed();
        // The last events' way through, then the bridge goes, and with it every connection.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let _ = bridge.start_kill();
        let _ = bridge.wait().await;
        let mut delays = Vec::new();
        let mut failed = 0;
        while let Some(done) = tasks.join_next().await {
            match done? {
                Ok(d) => delays.extend(d),
                Err(e) => {
                    failed += 1;
                    tracing::warn!(error = %e, "a client failed");
                }
            }
        }
        let mut raw = raw
            .join()
            .map_err(|_| anyhow::anyhow!("the raw consumer panicked"))?;

        let expected = produced * clients as u64 / args.tenants.max(1) as u64;
        let delivered = delays.len() as u64;
        let (r50, r99, rmax) = percentiles(&mut raw);
        let (b50, b99, bmax) = percentiles(&mut delays);
        println!(
            "  {clients} clients (connected and subscribed in {:.1} s, {failed} failed):",
            connected_in.as_secs_f64()
        );
        println!(
            "    raw consume  p50 {r50:.1} ms  p99 {r99:.1} ms  max {rmax:.1} ms  ({} events)",
            raw.len()
        );
        println!(
            "    bridge       p50 {b50:.1} ms  p99 {b99:.1} ms  max {bmax:.1} ms  ({delivered} of {expected} messages, {:.0} msg/s delivered)",
            delivered as f64 / producing.as_secs_f64()
        );
        if let (Some(empty), Some(filled), Some(serving)) = (empty, filled, serving) {
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            let per_device = match args.devices {
                0 => String::new(),
                n => format!(
                    " ({:.0} bytes a device)",
                    filled.saturating_sub(empty) as f64 / n as f64
                ),
            };
            println!(
                "    memory (resident): {:.0} MiB at start, {:.0} MiB with {} devices{per_device}, {:.0} MiB with {clients} clients too ({:.1} KiB a client)",
                mib(empty),
                mib(filled),
                args.devices,
                mib(serving),
                serving.saturating_sub(filled) as f64 / 1024.0 / clients.max(1) as f64
            );
        }
        // A client that failed took its delays with it: the figure only counts when every
        // client stayed and every message arrived.
        let whole = failed == 0 && delivered == expected;
        println!(
            "    p99 bridge - raw: {:.1} ms; target p99 < 100 ms: {}",
            b99 - r99,
            match (whole, b99 < 100.0) {
                (false, _) => "NOT met (clients failed or messages missing)",
                (true, true) => "met",
                (true, false) => "NOT met",
            }
        );
    }
    Ok(())
}
