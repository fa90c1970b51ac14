//! `fleetpulse inventory`: the devices that should exist. `apply` makes the compacted inventory
//! topic say what a YAML or CSV file says, printing the plan before it writes; `list` prints
//! what the topic says.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use generator::{KafkaSink, MessageFormat, Sink};
use inventory::{Current, Format, Plan, Scope};
use schemas::{Codec, Record, RecordKind, Registration};

use super::KafkaArgs;
use crate::config::{Config, Override};

/// How long reading the topic to its end may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// `inventory` subcommands.
#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Make the inventory what FILE says: register new devices, change changed ones,
    /// decommission (tombstone) the devices of the file's tenants it no longer lists. Prints the
    /// plan first; a second apply of the same file writes nothing.
    Apply(ApplyArgs),
    /// Print the inventory: one device per line as JSON, or as CSV that `apply` takes back.
    List(ListArgs),
}

impl InventoryCommand {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        match self {
            InventoryCommand::Apply(a) => a.kafka.overrides(into),
            InventoryCommand::List(l) => l.kafka.overrides(into),
        }
    }
}

/// A file's format, when its extension does not say.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FileFormat {
    Yaml,
    Csv,
}

/// Flags of `inventory apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The inventory: YAML (`.yaml`, `.yml`) or CSV (`.csv`); config/inventory.example.yaml
    /// shows both forms' fields.
    file: PathBuf,
    /// Print the plan and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// The file's format, when its extension does not say.
    #[arg(long, value_enum)]
    format: Option<FileFormat>,
    /// Also speak for this tenant: its devices the file does not list are decommissioned (a
    /// tenant whose every device goes). May be repeated.
    #[arg(long = "tenant", value_name = "TENANT")]
    tenants: Vec<String>,
    /// The file is the whole inventory: every device of any tenant it does not list is
    /// decommissioned.
    #[arg(long, conflicts_with = "tenants")]
    all_tenants: bool,
    /// Partitions of the topic, if it has to be created.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
}

/// How `inventory list` prints.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ListFormat {
    Json,
    Csv,
}

/// Flags of `inventory list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Only this tenant's devices.
    #[arg(long)]
    tenant: Option<String>,
    /// `json` (a device per line) or `csv`.
    #[arg(long, value_enum, default_value = "json")]
    format: ListFormat,
}

pub(crate) async fn run(config: &Config, command: InventoryCommand) -> anyhow::Result<()> {
    crate::kafka::check_access(config).await?;
    let codec = super::codec(config, &[RecordKind::Registration]).await?;
    match command {
        InventoryCommand::Apply(args) => apply(config, codec, args).await,
        InventoryCommand::List(args) => list(config, codec, args).await,
    }
}

/// The topic's inventory, read to its end.
async fn current(config: &Config, codec: Codec) -> anyhow::Result<(Current, Codec)> {
    let topic = config.topics.inventory.to_string();
    let consumer = crate::kafka::consumer(
        config,
        &[
            ("group.id", "fleetpulse-inventory"),
            ("enable.auto.commit", "false"),
            ("allow.auto.create.topics", "false"),
        ],
    )?;
    tokio::task::spawn_blocking(move || {
        let current = inventory::topic::read_to_end(&consumer, &topic, &codec, READ_TIMEOUT)?;
        if current.unreadable > 0 {
            tracing::warn!(
                unreadable = current.unreadable,
                %topic,
                "records of the inventory that cannot be read; their devices count as unregistered"
            );
        }
        anyhow::Ok((current, codec))
    })
    .await
    .context("the inventory reader failed")?
}

async fn apply(config: &Config, codec: Codec, args: ApplyArgs) -> anyhow::Result<()> {
    let format = match args.format {
        Some(FileFormat::Yaml) => Format::Yaml,
        Some(FileFormat::Csv) => Format::Csv,
        None => Format::of_path(&args.file).with_context(|| {
            format!(
                "{}: cannot tell the format from the extension; use .yaml, .yml or .csv, or --format",
                args.file.display()
            )
        })?,
    };
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let desired = inventory::file::parse(&text, format)
        .with_context(|| format!("{} cannot be applied", args.file.display()))?;
    let scope = if args.all_tenants {
        Scope::All
    } else {
        let mut tenants = desired.tenants.clone();
        tenants.extend(args.tenants.iter().cloned());
        Scope::Tenants(tenants)
    };
    let topic = config.topics.inventory.as_str();
    if !args.dry_run {
        crate::kafka::ensure_compacted_topic(config, topic, args.partitions).await?;
    }
    let (current, codec) = current(config, codec).await?;
    let plan = Plan::between(&current.devices, &desired, &scope);
    println!("{plan}");
    if args.dry_run || plan.is_empty() {
        if args.dry_run {
            println!("Dry run: nothing written.");
        }
        return Ok(());
    }
    let summary = format!(
        "Applied: {} registered, {} changed, {} decommissioned.",
        plan.register.len(),
        plan.change.len(),
        plan.decommission.len()
    );
    written(config, codec, plan).await?;
    println!("{summary}");
    Ok(())
}

/// Registers `registrations` (the demo's polled devices), whatever the topic holds.
pub(crate) async fn register(
    config: &Config,
    registrations: Vec<Registration>,
) -> anyhow::Result<()> {
    let codec = super::codec(config, &[RecordKind::Registration]).await?;
    let plan = Plan {
        register: registrations,
        ..Plan::default()
    };
    written(config, codec, plan).await
}

/// Writes `plan` to the inventory topic, waiting until the brokers acknowledged all of it.
async fn written(config: &Config, codec: Codec, plan: Plan) -> anyhow::Result<()> {
    let mut sink = KafkaSink::new(
        config.brokers()?.as_str(),
        config.topics.inventory.as_str(),
        &config.kafka.properties,
        codec.clone(),
        MessageFormat::Avro,
    )?;
    tokio::task::spawn_blocking(move || write(&mut sink, &codec, &plan))
        .await
        .context("the inventory writer failed")?
}

/// Writes a plan and waits until the brokers acknowledged all of it.
fn write(sink: &mut KafkaSink, codec: &Codec, plan: &Plan) -> anyhow::Result<()> {
    // The record time is the registration's event time for the pipeline: when it was applied.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let records = plan
        .register
        .iter()
        .chain(plan.change.iter().map(|c| &c.after));
    for registration in records {
        let bytes = codec.encode(registration)?;
        sink.send_raw(registration.key().as_bytes(), &bytes, now)?;
    }
    for (tenant, device) in &plan.decommission {
        sink.send_tombstone(schemas::device_key(tenant, device).as_bytes(), now)?;
    }
    sink.finish()
        .context("the inventory was not fully written; apply the file again")?;
    Ok(())
}

async fn list(config: &Config, codec: Codec, args: ListArgs) -> anyhow::Result<()> {
    let (current, _) = current(config, codec).await?;
    let devices: Vec<&Registration> = current
        .devices
        .values()
        .filter(|r| args.tenant.as_ref().is_none_or(|t| &r.tenant_id == t))
        .collect();
    match args.format {
        ListFormat::Json => {
            for r in devices {
                println!("{}", serde_json::to_string(r)?);
            }
        }
        ListFormat::Csv => print!("{}", inventory::file::to_csv(devices.iter().copied())),
    }
    Ok(())
}
