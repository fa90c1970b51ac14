//! `fleetpulse bench pipeline`: the dataflow end to end (telemetry topic to derived topics) beside
//! a raw rdkafka consume and Avro decode of the same topic, in one run, plus the same with
//! checkpoints, a file replay of the same events, the memory the job holds per tracked device,
//! and the time a restarted job takes to catch up with a backlog.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use generator::{FileSink, GeneratorConfig};
use kafka_auth::Tokens;
use pipeline::checkpoint::Store;
use pipeline::sink::{SinkFactory, Topics};
use pipeline::source::kafka::KafkaSettings;
use pipeline::{InputSpec, Job};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::{Codec, InputFormat};

use crate::commands::KafkaArgs;
use crate::config::Config;

const START_MS: i64 = 1_700_000_000_000;

/// Flags of `bench pipeline`.
#[derive(Debug, Args)]
pub struct PipelineBench {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    /// Telemetry events to load.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Devices in the fleet.
    #[arg(long, default_value_t = 100_000)]
    devices: u32,
    /// How often each device reports, ms of event time.
    #[arg(long, default_value_t = 10_000)]
    interval_ms: u64,
    /// Partitions of the telemetry topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Worker counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// NDJSON file of the same events; written unless it exists.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Readings waiting for a restarted job.
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Only the file measurements (decode, replay to files, DuckDB): no Kafka needed.
    #[arg(long)]
    pub(crate) files_only: bool,
    /// Directory of `python-env.sh` and `duckdb_aggregate.py`, for DuckDB's time.
    #[arg(long, default_value = "scripts")]
    scripts: PathBuf,
}

fn fleet(args: &PipelineBench, config: &Config) -> GeneratorConfig {
    GeneratorConfig {
        devices: args.devices,
        tenants: config.generate.tenants.min(args.devices),
        events: args.events,
        rate: 0.0,
        start_ms: Some(START_MS),
        interval_ms: args.interval_ms,
        format: generator::MessageFormat::Avro,
        ..config.generate.clone()
    }
}

fn consumer(config: &Config) -> anyhow::Result<BaseConsumer<Tokens>> {
    crate::kafka::consumer(
        config,
        &[
            ("group.id", "fleetpulse-bench"),
            ("enable.auto.commit", "false"),
            // As the pipeline and the sink set it (see the pipeline's Kafka source): the
            // baseline is a consumer that is not left waiting a second for each refill.
            ("fetch.queue.backoff.ms", "10"),
        ],
    )
}

/// Messages on `topic` (sum of its partitions' offsets ranges), or 0 when it does not exist.
pub(crate) fn messages_on(config: &Config, topic: &str) -> anyhow::Result<u64> {
    let c = consumer(config)?;
    let metadata = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut total = 0;
    for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
        for p in t.partitions() {
            let (low, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            total += u64::try_from(high - low).unwrap_or(0);
        }
    }
    Ok(total)
}

/// The baseline: one consumer reads every partition to its end and decodes every value with
/// `decode` (which says whether it decoded). Returns the records read and the seconds taken.
pub(crate) fn raw_consume(
    config: &Config,
    topic: &str,
    mut decode: impl FnMut(&[u8]) -> bool,
) -> anyhow::Result<(u64, f64)> {
    let c = consumer(config)?;
    let metadata = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            let (_, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            ends.insert(p.id(), high);
        }
    }
    c.assign(&tpl)?;
    let started = Instant::now();
    let (mut read, mut decoded) = (0u64, 0u64);
    ends.retain(|_, end| *end > 0);
    while !ends.is_empty() {
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        read += 1;
        if decode(m.payload().unwrap_or_default()) {
            decoded += 1;
        }
        if ends
            .get(&m.partition())
            .is_some_and(|end| m.offset() + 1 >= *end)
        {
            ends.remove(&m.partition());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    tracing::debug!(decoded, "raw consume");
    Ok((read, seconds))
}

/// Loads `fleet` into its own topic unless it is there already; returns the topic.
async fn load(
    config: &Config,
    args: &PipelineBench,
    fleet: &GeneratorConfig,
) -> anyhow::Result<String> {
    let topic = format!(
        "bench-pipeline-{}-{}-{}",
        fleet.events, fleet.devices, fleet.interval_ms
    );
    crate::kafka::ensure_topic(config, &topic, args.partitions).await?;
    let present = messages_on(config, &topic)?;
    anyhow::ensure!(
        present == 0 || present >= fleet.events,
        "{topic} holds {present} of {} events (an interrupted load?): delete it and run again",
        fleet.events
    );
    if present < fleet.events {
        let started = Instant::now();
        tokio::task::block_in_place(|| super::recovery::produce(config, &topic, fleet))?;
        println!(
            "loaded {} events from {} devices into {topic} in {:.0} s",
            fleet.events,
            fleet.devices,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(topic)
}

/// Runs `fleetpulse pipeline --until-end` on `topic` as a child process and reads its resident set
/// when it has assigned its partitions and when its input has been read to the end (every device
/// tracked, its windows open, before the end of input closes them at once). A process of its
/// own, so nothing this benchmark did before counts.
fn child_memory(config: &Config, topic: &str) -> anyhow::Result<(u64, u64)> {
    use std::io::BufRead;
    let id = format!("bench-{}-memory", std::process::id());
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["pipeline", "--until-end", "--listen", "127.0.0.1:0"])
        .args(["--brokers", config.brokers()?.as_str()])
        .args(["--set", &format!("topics.telemetry={topic}")])
        .args(
            ["aggregates", "anomalies", "status", "dlq", "lastseen"]
                .iter()
                .flat_map(|k| ["--set".to_string(), format!("topics.{k}={id}-{k}")]),
        )
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run fleetpulse pipeline")?;
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    };
    let pid = child.id();
    let (mut start, mut tracked) = (0, 0);
    if let Some(stderr) = child.stderr.take() {
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line?;
            if line.contains(" reading ") && start == 0 {
                start = rss(pid);
            }
            if line.contains("input read to its end") {
                tracked = rss(pid);
            }
        }
    }
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "the measured pipeline failed: {status}");
    Ok((start, tracked))
}

/// Runs the job on `input` with `workers` threads into fresh derived topics, with checkpoints
/// in `checkpoints` if given; returns seconds.
async fn run_pipeline(
    config: &Config,
    input: InputSpec,
    workers: usize,
    tag: &str,
    checkpoints: Option<Store>,
) -> anyhow::Result<f64> {
    let id = format!("bench-{}-{tag}", std::process::id());
    let topics = Topics {
        aggregates: format!("{id}-aggregates"),
        anomalies: format!("{id}-anomalies"),
        status: format!("{id}-status"),
        dlq: format!("{id}-dlq"),
        lastseen: format!("{id}-lastseen"),
    };
    let codec = Arc::new(Codec::builtin());
    let output = crate::commands::pipeline::output(config, topics, Arc::clone(&codec)).await?;
    let sinks: SinkFactory = Arc::new(move |_| Ok(output.sink()));
    let job = Job {
        checkpoints,
        ..Job::new(Arc::new(config.pipeline.clone()), input, codec, sinks)
    };
    let timely = pipeline::timely_config(workers, 1, 0, None)?;
    let started = Instant::now();
    tokio::task::spawn_blocking(move || pipeline::run(timely, job))
        .await
        .context("the pipeline thread failed")??;
    Ok(started.elapsed().as_secs_f64())
}

pub(crate) async fn run(config: &Config, args: PipelineBench) -> anyhow::Result<()> {
    let fleet = fleet(&args, config);
    if args.files_only {
        let file = args.file.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "bench-pipeline-{}-{}-{}.ndjson",
                fleet.events, fleet.devices, fleet.interval_ms
            ))
        });
        if !file.exists() {
            let mut sink = FileSink::create(&file)?;
            let stop = AtomicBool::new(false);
            tokio::task::block_in_place(|| generator::run(&fleet, &mut sink, &stop, false))?;
        }
        return tokio::task::block_in_place(|| super::files::file_replays(&args.scripts, &file));
    }
    let topic = load(config, &args, &fleet).await?;
    // A fleet a hundred times smaller, for the memory a device adds beyond fixed buffers.
    let small = GeneratorConfig {
        devices: (args.devices / 100).max(1),
        events: (args.events / 10).max(1),
        tenants: fleet.tenants.min((args.devices / 100).max(1)),
        ..fleet.clone()
    };
    let small_topic = load(config, &args, &small).await?;
    let file = args
        .file
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("{topic}.ndjson")));
    if !file.exists() {
        let mut sink = FileSink::create(&file)?;
        let stop = AtomicBool::new(false);
        tokio::task::block_in_place(|| generator::run(&fleet, &mut sink, &stop, false))?;
    }
    let events = messages_on(config, &topic)?;
    println!(
        "bench pipeline: {events} events, {} devices reporting every {} s, {} partitions",
        args.devices,
        args.interval_ms / 1000,
        args.partitions
    );

    let (read, raw_s) = tokio::task::block_in_place(|| {
        let codec = Codec::builtin();
        raw_consume(config, &topic, |value| {
            codec.decode_telemetry(value, InputFormat::Auto).is_ok()
        })
    })?;
    let raw_rate = read as f64 / raw_s;
    println!("raw consume + Avro decode       {raw_rate:>10.0} events/s");
    let input = InputSpec::Kafka(KafkaSettings {
        properties: crate::kafka::properties(config)?,
        topic: topic.clone(),
        // The benchmark compares the telemetry path with a raw consume of the same topic.
        inventory: None,
        until_end: true,
        topic_wait: Some(Duration::from_secs(30)),
    });
    let mut one_worker = None;
    for workers in &args.workers {
        let tag = format!("w{workers}");
        let seconds = run_pipeline(config, input.clone(), *workers, &tag, None).await?;
        let rate = events as f64 / seconds;
        if *workers == 1 {
            one_worker = Some(rate);
        }
        println!(
            "pipeline, {workers} worker(s)            {rate:>10.0} events/s   ratio b/a {:.2}",
            rate / raw_rate,
        );
    }
    // The same job with last-seen times only at each device's first reading and at the end:
    // what the records at the default interval (one per reading of this fleet) cost.
    let mut rarely = config.clone();
    rarely.pipeline.lastseen_interval_ms = i64::MAX / 4;
    let seconds = run_pipeline(&rarely, input.clone(), 1, "w1-rarely", None).await?;
    let rate = events as f64 / seconds;
    println!(
        "pipeline, 1 worker, last seen once     {rate:>10.0} events/s   ratio b/a {:.2}, every {} s / once {:.3}",
        rate / raw_rate,
        config.pipeline.lastseen_interval_ms / 1000,
        one_worker.map_or(f64::NAN, |w| w / rate),
    );
    // The same job taking a checkpoint every `pipeline.checkpoint_interval_ms`.
    let dir = std::env::temp_dir().join(format!("bench-{}-checkpoints", std::process::id()));
    let store = Store::new(&dir);
    let seconds = run_pipeline(config, input, 1, "w1-checkpoints", Some(store.clone())).await?;
    let rate = events as f64 / seconds;
    let taken = store.latest().map_or(0, |c| c.generation);
    let size: u64 = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|g| std::fs::read_dir(g.path()).into_iter().flatten().flatten())
        .filter_map(|f| f.metadata().ok().map(|m| m.len()))
        .sum();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "pipeline, 1 worker, checkpoint every {} s {rate:>7.0} events/s   ratio b/a {:.2}, with/without {:.2}; {taken} checkpoints of {:.0} MB",
        config.pipeline.checkpoint_interval_ms / 1000,
        rate / raw_rate,
        one_worker.map_or(f64::NAN, |w| rate / w),
        size as f64 / 1e6,
    );
    let seconds = run_pipeline(config, InputSpec::File(file.clone()), 1, "file", None).await?;
    println!(
        "pipeline from {} (1 worker) {:>10.0} events/s",
        file.display(),
        args.events as f64 / seconds
    );
    tokio::task::block_in_place(|| super::files::file_replays(&args.scripts, &file))?;
    let (start_kb, tracked_kb) = tokio::task::block_in_place(|| child_memory(config, &topic))?;
    let (_, small_kb) = tokio::task::block_in_place(|| child_memory(config, &small_topic))?;
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "resident memory of a `fleetpulse pipeline` process: {:.0} MB at start, {:.0} MB with {} devices tracked, {:.0} MB with {}",
        mb(start_kb),
        mb(tracked_kb),
        args.devices,
        mb(small_kb),
        small.devices
    );
    println!(
        "memory per tracked device: {:.0} B (difference between the two fleets), {:.0} B (all growth over start / devices)",
        (tracked_kb.saturating_sub(small_kb) * 1024) as f64
            / f64::from(args.devices.saturating_sub(small.devices)).max(1.0),
        (tracked_kb.saturating_sub(start_kb) * 1024) as f64 / f64::from(args.devices)
    );
    let seconds = tokio::task::block_in_place(|| {
        super::recovery::restart_to_caught_up(config, &fleet, args.partitions, args.backlog)
    })?;
    println!(
        "restart to caught up, {} readings behind a checkpoint of {} devices: {seconds:.1} s ({:.0} events/s, start-up and restore included)",
        args.backlog,
        args.devices,
        args.backlog as f64 / seconds
    );
    Ok(())
}
