//! `fleetpulse sink clickhouse`: the derived topics into ClickHouse, with `/metrics`, `/healthz`
//! and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Args, Subcommand};
use clickhouse_sink::batch::Table;
use clickhouse_sink::sink::{Health, Sink};
use clickhouse_sink::{Connection, ddl};
use schemas::RecordKind;
use schemas::retry::{Backoff, Retryable};

use super::KafkaArgs;
use crate::config::{Config, Override};

/// The sinks.
#[derive(Debug, Subcommand)]
pub enum SinkCommand {
    /// Consume the derived topics into ClickHouse tables (created if missing).
    Clickhouse(ClickhouseArgs),
}

/// Flags of `sink clickhouse`.
#[derive(Debug, Args)]
pub struct ClickhouseArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The HTTP interface, `http://host:port` (`clickhouse.url`).
    #[arg(long)]
    url: Option<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz` (`clickhouse.listen`).
    #[arg(long)]
    listen: Option<String>,
}

impl SinkCommand {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        let SinkCommand::Clickhouse(args) = self;
        args.kafka.overrides(into);
        for (key, value) in [
            ("clickhouse.url", &args.url),
            ("clickhouse.listen", &args.listen),
        ] {
            if let Some(v) = value {
                into.push((key.into(), toml::Value::String(v.clone())));
            }
        }
    }
}

/// Connects and creates the tables, retrying with backoff while ClickHouse is not there yet.
async fn connect(config: &Config, stop: &AtomicBool) -> anyhow::Result<Connection> {
    let c = &config.clickhouse;
    let target = c.target();
    let mut delays = Backoff::Unavailable.delays();
    loop {
        let attempt = async {
            let connection = Connection::open(&target).await?;
            ddl::apply(&connection, &c.database, c.dead_letter_days).await?;
            Ok::<_, clickhouse_sink::SinkError>(connection)
        };
        match attempt.await {
            Ok(connection) => return Ok(connection),
            // A table that does not take the sink's rows stays that way: retrying would only
            // hide it.
            Err(e @ clickhouse_sink::SinkError::Ddl(_)) => {
                return Err(e).context("the sink's tables do not match what it writes");
            }
            Err(e @ clickhouse_sink::SinkError::CaFile { .. }) => return Err(e.into()),
            Err(e) if e.refusal().is_some() => {
                let cause = e.refusal().unwrap_or_default();
                anyhow::bail!("ClickHouse at {}: {cause}: {e}", c.url);
            }
            Err(e) if !e.is_retryable() => {
                return Err(e).context(format!("ClickHouse at {}", c.url));
            }
            Err(e) if !stop.load(Ordering::Relaxed) => {
                let wait = delays.next_wait();
                tracing::warn!(error = %e, url = %c.url, retry_in_ms = wait.as_millis() as u64, "ClickHouse not ready; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e).context("stopped before ClickHouse was reachable"),
        }
    }
}

pub(crate) async fn run(config: &Config, command: SinkCommand) -> anyhow::Result<()> {
    let SinkCommand::Clickhouse(_) = command;
    crate::kafka::check_access(config).await?;
    let health = Arc::new(Health::default());
    // Not ready until ClickHouse has answered and the tables are there.
    health.clickhouse(false);
    let ready = Arc::clone(&health);
    crate::observability::serve(
        config.clickhouse.listen,
        "clickhouse.listen",
        "sink",
        Box::new(move || ready.problem()),
    )
    .await?;
    let stop = super::stop_on_signal();
    let connection = connect(config, &stop).await?;
    let kinds = [
        RecordKind::WindowAggregate,
        RecordKind::Anomaly,
        RecordKind::StatusTransition,
        RecordKind::DeadLetter,
        RecordKind::LastSeen,
        RecordKind::Registration,
    ];
    let codec = Arc::new(super::codec(config, &kinds).await?);
    let t = &config.topics;
    let sink = Sink {
        config: config.clickhouse.clone(),
        kafka: crate::kafka::properties(config)?.into_iter().collect(),
        topics: vec![
            (t.aggregates.as_str().into(), Table::Aggregates),
            (t.anomalies.as_str().into(), Table::Anomalies),
            (t.status.as_str().into(), Table::Status),
            (t.dlq.as_str().into(), Table::DeadLetters),
            (t.lastseen.as_str().into(), Table::LastSeen),
            (t.inventory.as_str().into(), Table::Inventory),
        ],
        codec,
        stop,
        health,
    };
    let runtime = tokio::runtime::Handle::current();
    let summary = tokio::task::spawn_blocking(move || sink.run(&connection, &runtime))
        .await
        .context("the sink thread failed")??;
    println!(
        "{}",
        serde_json::json!({
            "rows": summary.rows,
            "retries": summary.retries,
            "undecodable": summary.undecodable,
        })
    );
    Ok(())
}
