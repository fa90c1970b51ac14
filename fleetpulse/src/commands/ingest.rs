//! `fleetpulse ingest`: readings POSTed over HTTP under API keys, into the telemetry topic with
//! the key's tenant stamped in a header (`[ingest]`); `/metrics`, `/healthz` and `/readyz` on
//! `ingest.metrics_listen`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ingest::lines::Rules;
use ingest::{App, Keys, Producer, router};
use schemas::RecordKind;

use super::KafkaArgs;
use crate::config::{Config, Override};

/// How often the keys file is read again for new and revoked keys.
const RELOAD: Duration = Duration::from_secs(1);

/// Flags of `ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Where `POST /v1/telemetry` is served (`ingest.listen`).
    #[arg(long)]
    listen: Option<String>,
    /// The API keys file (`ingest.keys_file`).
    #[arg(long)]
    keys_file: Option<String>,
}

impl IngestArgs {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        self.kafka.overrides(into);
        for (key, value) in [
            ("ingest.listen", &self.listen),
            ("ingest.keys_file", &self.keys_file),
        ] {
            if let Some(v) = value {
                into.push((key.into(), toml::Value::String(v.clone())));
            }
        }
    }
}

/// The keys file `ingest.keys_file` names, which `ingest` and `api-key` need.
pub(crate) fn keys_file(config: &Config) -> anyhow::Result<&std::path::Path> {
    config.ingest.keys_file.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "configuration key `ingest.keys_file`: expected the path of the API keys file (fleetpulse api-key create makes it)"
        )
    })
}

pub(crate) async fn run(config: &Config) -> anyhow::Result<()> {
    let c = &config.ingest;
    let path = keys_file(config)?;
    let keys =
        Arc::new(Keys::open(path).with_context(|| format!("ingest.keys_file {}", path.display()))?);
    ingest::events::keys(keys.active());
    crate::kafka::check_access(config).await?;
    crate::kafka::ensure_topic(config, config.topics.telemetry.as_str(), 4).await?;
    let codec = super::codec(config, &[RecordKind::Telemetry]).await?;
    let producer = Arc::new(Producer::new(
        &crate::kafka::properties(config)?,
        config.topics.telemetry.as_str(),
        codec.clone(),
        Duration::from_millis(c.timeout_ms),
    )?);
    let keys_read = Arc::new(AtomicBool::new(true));
    let (taking, readable) = (Arc::clone(&producer), Arc::clone(&keys_read));
    crate::observability::serve(
        c.metrics_listen,
        "ingest.metrics_listen",
        "ingest",
        Box::new(move || {
            if !readable.load(Ordering::Relaxed) {
                Some("the keys file cannot be read; the keys read last are in use")
            } else if !taking.taking() {
                Some("Kafka is not acknowledging readings")
            } else {
                None
            }
        }),
    )
    .await?;
    let reloading = Arc::clone(&keys);
    tokio::spawn(async move {
        let mut said = None;
        loop {
            tokio::time::sleep(RELOAD).await;
            match reloading.reload() {
                Ok(changed) => {
                    if changed {
                        tracing::info!(active = reloading.active(), "API keys read again");
                    }
                    keys_read.store(true, Ordering::Relaxed);
                    said = None;
                }
                Err(e) => {
                    let why = e.to_string();
                    if said.as_ref() != Some(&why) {
                        tracing::error!(error = %why, "the API keys file cannot be read; keeping the keys read last");
                        said = Some(why);
                    }
                    keys_read.store(false, Ordering::Relaxed);
                }
            }
            ingest::events::keys(reloading.active());
        }
    });
    let rules = Rules {
        codec,
        limits: config.pipeline.limits,
        on_foreign_claim: c.on_foreign_claim,
    };
    let app = Arc::new(App::new(c, keys, rules, producer, super::now_ms));
    let listener = crate::serve::Listener::bind(
        "ingest",
        c.listen,
        (&c.tls_cert_file, &c.tls_key_file),
        Duration::from_secs(10),
    )?;
    let url = listener.url()?;
    tracing::info!(%url, "ingest listening");
    crate::observability::announce("ingest", url.as_str());
    println!("fleetpulse ingest: POST {url}/v1/telemetry");
    let stop = super::stop_on_signal();
    let stopped = async move {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    listener
        .serve(router(app, c.max_body_bytes), stopped)
        .await
        .context("the ingest server failed")
}
