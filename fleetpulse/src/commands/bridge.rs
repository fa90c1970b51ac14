//! `fleetpulse bridge`: live device status, anomalies and health for dashboards over WebSocket,
//! with the tenant-scoped REST endpoints, `/healthz` and `/readyz` on the same port, and
//! `/metrics` there too or on `bridge.metrics_listen`.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use schemas::RecordKind;
use ws_bridge::feed::Topics;
use ws_bridge::server::router;
use ws_bridge::service::{self, Setup};

use super::KafkaArgs;
use crate::config::{Config, ConfigError, Override};

/// Flags of `bridge`.
#[derive(Debug, Args)]
pub struct BridgeArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Address of `/ws`, the REST endpoints and `/metrics` (`bridge.listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Redis for the status cache, `redis://host:port` (`bridge.redis_url`).
    #[arg(long)]
    redis_url: Option<String>,
}

impl BridgeArgs {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        self.kafka.overrides(into);
        if let Some(l) = &self.listen {
            into.push(("bridge.listen".into(), toml::Value::String(l.clone())));
        }
        if let Some(r) = &self.redis_url {
            into.push(("bridge.redis_url".into(), toml::Value::String(r.clone())));
        }
    }
}

pub(crate) async fn run(config: &Config) -> anyhow::Result<()> {
    let c = &config.bridge;
    if let Err((key, expected)) = c.validate() {
        return Err(ConfigError::invalid(&format!("bridge.{key}"), &expected).into());
    }
    crate::kafka::check_access(config).await?;
    let metrics = crate::observability::metrics()?;
    // One file per connection: the soft limit (often 1,024) goes up to the hard one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(files) => tracing::info!(files, "open files allowed"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let stop = super::stop_on_signal();
    let kinds = [
        RecordKind::WindowAggregate,
        RecordKind::Anomaly,
        RecordKind::StatusTransition,
        RecordKind::LastSeen,
    ];
    let t = &config.topics;
    let running = service::start(Setup {
        config: c.clone(),
        kafka: crate::kafka::properties(config)?.into_iter().collect(),
        topics: Topics {
            aggregates: t.aggregates.as_str().into(),
            anomalies: t.anomalies.as_str().into(),
            status: t.status.as_str().into(),
            lastseen: t.lastseen.as_str().into(),
        },
        codec: super::codec(config, &kinds).await?,
        metrics: Box::new(move || metrics.render()),
        stop,
    })
    .await?;
    let listener = crate::serve::Listener::bind(
        "bridge",
        c.listen,
        (&c.tls_cert_file, &c.tls_key_file),
        std::time::Duration::from_millis(c.header_timeout_ms),
    )?;
    let url = listener.url()?;
    tracing::info!(%url, "bridge listening");
    crate::observability::announce("bridge", url.as_str());
    println!("fleetpulse bridge: /ws, /api/devices on {url}");
    let metrics_server = match c.metrics_listen {
        None => {
            crate::observability::announce("bridge.metrics", url.as_str());
            println!("fleetpulse bridge metrics on {url}");
            None
        }
        Some(address) => {
            let own = crate::serve::Listener::bind_plain("bridge.metrics_listen", address)?;
            let url = own.url()?;
            crate::observability::announce("bridge.metrics", url.as_str());
            println!("fleetpulse bridge metrics on {url}");
            let app = ws_bridge::server::metrics_router(Arc::clone(&running.bridge));
            Some(tokio::spawn(own.serve(app, std::future::pending())))
        }
    };
    // Open WebSocket connections end with the process; clients reconnect elsewhere.
    tokio::select! {
        served = listener.serve(router(Arc::clone(&running.bridge)), std::future::pending()) => served.context("the bridge server failed")?,
        () = running.stopped() => {}
    }
    if let Some(metrics) = metrics_server {
        metrics.abort();
    }
    running.stop().await?;
    Ok(())
}
