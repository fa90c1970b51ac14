//! One module per subcommand, plus what several of them share.

pub(crate) mod api_key;
pub(crate) mod bench;
pub(crate) mod bridge;
pub(crate) mod demo;
pub(crate) mod generate;
pub(crate) mod ingest;
pub(crate) mod inventory;
pub(crate) mod mqtt;
pub(crate) mod pipeline;
pub(crate) mod poll;
pub(crate) mod registry;
pub(crate) mod simulated;
pub(crate) mod sink;
pub(crate) mod tail;
pub(crate) mod token;

use clap::Args;
use schemas::retry::{Backoff, Retryable};
use schemas::{Codec, RecordKind};

use crate::config::{Config, Override};

/// Flags shared by the commands that talk to Kafka.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap brokers (`kafka.brokers`).
    #[arg(long)]
    pub brokers: Option<String>,
}

impl KafkaArgs {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        if let Some(b) = &self.brokers {
            into.push(("kafka.brokers".into(), toml::Value::String(b.clone())));
        }
    }
}

/// A codec for the given record kinds: with a configured registry, their schemas are registered
/// there (under `<topic>-value`) and written with its ids; otherwise the built-in ids are used.
pub(crate) async fn codec(config: &Config, kinds: &[RecordKind]) -> anyhow::Result<Codec> {
    let Some(registry) = &config.schema_registry else {
        return Ok(Codec::builtin());
    };
    let client = ::registry::client::RegistryClient::new(registry)?;
    let subjects: Vec<(RecordKind, String)> = kinds
        .iter()
        .map(|k| (*k, format!("{}-value", config.topics.of(*k))))
        .collect();
    let mut delays = Backoff::Unavailable.delays();
    loop {
        match client.codec(&subjects).await {
            Ok(codec) => return Ok(codec),
            Err(e) if e.is_retryable() => {
                let wait = delays.next_wait();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "waiting for the schema registry");
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot register schemas with {}", registry.url)));
            }
        }
    }
}

/// The wall clock, ms since the epoch: when keys are made and revoked, and what a reading
/// without a time of its own is stamped with.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A flag set on Ctrl-C or SIGTERM: how a long-running command learns it should stop. A second
/// signal exits at once: a stop waits for Kafka or ClickHouse to acknowledge what is in hand,
/// which never happens if they are gone for good. Nothing is lost by it: what was not
/// acknowledged is not committed (or checkpointed), and is read again on the next start.
pub(crate) fn stop_on_signal() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopper = std::sync::Arc::clone(&stop);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping (a second Ctrl-C or SIGTERM exits at once)");
        stopper.store(true, std::sync::atomic::Ordering::Relaxed);
        shutdown_signal().await;
        tracing::warn!(
            "second signal: exiting without waiting; what was not acknowledged is read again on the next start"
        );
        std::process::exit(130);
    });
    stop
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
