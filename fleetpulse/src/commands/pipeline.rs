//! `fleetpulse pipeline`: the dataflow from the telemetry topic (or a file) to the derived topics,
//! with `/metrics`, `/healthz` and `/readyz`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use pipeline::checkpoint::Store;
use pipeline::sink::{FileOutput, KafkaOutput, SinkFactory, Topics, Written};
use pipeline::source::SchemaFetcher;
use pipeline::source::kafka::KafkaSettings;
use pipeline::{InputSpec, Job, Readiness};
use schemas::{Codec, RecordKind};

use crate::config::{Config, Override};

/// Flags of `pipeline`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    #[command(flatten)]
    kafka: super::KafkaArgs,
    /// Replay this file (NDJSON, or Avro object container when it ends in `.avro`) instead of
    /// reading the telemetry topic; the run ends with the file.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Write the derived streams as NDJSON files in this directory (one per stream, the lines
    /// `fleetpulse tail` prints) instead of to Kafka; with `--input`, no Kafka is needed. A
    /// replay to files starts from scratch and takes no checkpoints.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Read the telemetry topic up to the end offsets it has at start-up, then finish (close
    /// every window and exit), as a file replay does.
    #[arg(long)]
    until_end: bool,
    /// Worker threads per process.
    #[arg(short = 'w', long, default_value_t = 1)]
    workers: usize,
    /// Number of processes.
    #[arg(short = 'n', long, default_value_t = 1)]
    processes: usize,
    /// This process's number, 0 to n-1.
    #[arg(short = 'p', long, default_value_t = 0)]
    process: usize,
    /// File with one `host:port` per process (default: 127.0.0.1 from port 2101 on).
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Address of `/metrics`, `/healthz` and `/readyz` (`pipeline.listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Directory of checkpoints (`pipeline.checkpoint_dir`).
    #[arg(long)]
    checkpoint_dir: Option<String>,
    /// Ignore existing checkpoints and read the input from its beginning.
    #[arg(long)]
    from_scratch: bool,
}

impl PipelineArgs {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        self.kafka.overrides(into);
        if let Some(l) = &self.listen {
            into.push(("pipeline.listen".into(), toml::Value::String(l.clone())));
        }
        if let Some(d) = &self.checkpoint_dir {
            into.push((
                "pipeline.checkpoint_dir".into(),
                toml::Value::String(d.clone()),
            ));
        }
    }
}

/// Fetches unknown writer schemas from the configured registry, from the timely worker threads
/// (plain threads, so blocking on the runtime is allowed there).
struct RegistryFetcher {
    client: registry::client::RegistryClient,
    runtime: tokio::runtime::Handle,
}

impl SchemaFetcher for RegistryFetcher {
    fn fetch_into(
        &self,
        codec: &mut Codec,
        id: u32,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.runtime
            .block_on(self.client.fetch_into(codec, id))
            .map(|_| ())
            .map_err(Into::into)
    }
}

fn fetcher(config: &Config) -> anyhow::Result<Option<Arc<dyn SchemaFetcher>>> {
    let Some(registry) = &config.schema_registry else {
        return Ok(None);
    };
    Ok(Some(Arc::new(RegistryFetcher {
        client: registry::client::RegistryClient::new(registry)?,
        runtime: tokio::runtime::Handle::current(),
    })))
}

/// Creates the derived topics (4 partitions; the last-seen one compacted) and the (compacted)
/// inventory topic unless they exist, and the producer that writes the derived ones. The
/// inventory is created here too so that its consumers find it where no inventory was ever
/// applied: an empty inventory is the default, not an error.
pub(crate) async fn output(
    config: &Config,
    topics: Topics,
    codec: Arc<Codec>,
) -> anyhow::Result<Arc<KafkaOutput>> {
    for topic in [
        &topics.aggregates,
        &topics.anomalies,
        &topics.status,
        &topics.dlq,
    ] {
        crate::kafka::ensure_topic(config, topic, 4).await?;
    }
    crate::kafka::ensure_compacted_topic(config, &topics.lastseen, 4).await?;
    crate::kafka::ensure_compacted_topic(config, config.topics.inventory.as_str(), 4).await?;
    let properties = crate::kafka::properties(config)?;
    Ok(KafkaOutput::new(&properties, codec, topics)?)
}

/// Where the run's derived records go.
enum Destination {
    Kafka(Arc<KafkaOutput>),
    Files(Arc<FileOutput>),
}

impl Destination {
    fn sinks(&self) -> SinkFactory {
        match self {
            Destination::Kafka(output) => {
                let output = Arc::clone(output);
                Arc::new(move |_| Ok(output.sink()))
            }
            Destination::Files(output) => {
                let output = Arc::clone(output);
                Arc::new(move |_| Ok(output.sink()))
            }
        }
    }

    fn written(&self) -> &Written {
        match self {
            Destination::Kafka(output) => &output.written,
            Destination::Files(output) => &output.written,
        }
    }
}

pub(crate) async fn run(config: &Config, args: PipelineArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.output.is_none() || args.processes == 1,
        "--output writes one directory for the whole job: run it as one process (-w for more \
         threads), not -n {}",
        args.processes
    );
    // A file replayed to files needs no broker.
    let kafka = args.input.is_none() || args.output.is_none();
    if kafka {
        crate::kafka::check_access(config).await?;
    }
    let addresses = match &args.hostfile {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the hostfile {}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        None => None,
    };
    let timely = pipeline::timely_config(args.workers, args.processes, args.process, addresses)?;
    let input = match &args.input {
        Some(path) => InputSpec::File(path.clone()),
        None => InputSpec::Kafka(KafkaSettings {
            properties: crate::kafka::properties(config)?,
            topic: config.topics.telemetry.as_str().into(),
            inventory: config
                .pipeline
                .inventory
                .then(|| config.topics.inventory.as_str().into()),
            until_end: args.until_end,
            // A bounded run has nothing to wait for; a long-running job outwaits a late broker.
            topic_wait: args.until_end.then_some(Duration::from_secs(30)),
        }),
    };
    let topics = Topics {
        aggregates: config.topics.aggregates.as_str().into(),
        anomalies: config.topics.anomalies.as_str().into(),
        status: config.topics.status.as_str().into(),
        dlq: config.topics.dlq.as_str().into(),
        lastseen: config.topics.lastseen.as_str().into(),
    };
    let codec = Arc::new(super::codec(config, &RecordKind::ALL).await?);
    let destination = match &args.output {
        Some(dir) => Destination::Files(
            FileOutput::create(dir)
                .with_context(|| format!("cannot write to --output {}", dir.display()))?,
        ),
        None => Destination::Kafka(output(config, topics, Arc::clone(&codec)).await?),
    };
    let readiness = Arc::new(Readiness::default());
    let ready = Arc::clone(&readiness);
    crate::observability::serve(
        config.pipeline.listen,
        "pipeline.listen",
        "pipeline",
        Box::new(move || (!ready.ready()).then_some("source not reading")),
    )
    .await?;

    let stop = super::stop_on_signal();
    let sinks = destination.sinks();
    let checkpoints = match (&args.output, &config.pipeline.checkpoint_dir) {
        (None, Some(dir)) => Some(Store::new(dir)),
        (Some(_), Some(_)) => {
            tracing::info!("a replay to files starts from scratch and takes no checkpoints");
            None
        }
        (_, None) => None,
    };
    let job = Job {
        fetcher: fetcher(config)?,
        stop,
        readiness,
        checkpoints,
        from_scratch: args.from_scratch,
        ..Job::new(Arc::new(config.pipeline.clone()), input, codec, sinks)
    };
    let started = Instant::now();
    tokio::task::spawn_blocking(move || pipeline::run(timely, job))
        .await
        .context("the pipeline thread failed")??;
    if let Destination::Kafka(output) = &destination {
        let undelivered = output.undelivered();
        anyhow::ensure!(
            undelivered == 0,
            "{undelivered} derived records were not acknowledged by Kafka (see the log)"
        );
    }
    let mut summary = destination.written().summary();
    summary["seconds"] = started.elapsed().as_secs_f64().into();
    println!("{summary}");
    Ok(())
}
