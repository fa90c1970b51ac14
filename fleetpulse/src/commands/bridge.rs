//! `fleetpulse bridge`: live device status, anomalies and health for dashboards over WebSocket,
//! with the tenant-scoped REST endpoints, `/metrics`, `/healthz` and `/readyz` on the same port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use schemas::RecordKind;
use ws_bridge::auth::Verifier;
use ws_bridge::feed::{self, Topics};
use ws_bridge::hub::Hub;
use ws_bridge::server::{Bridge, router};
use ws_bridge::store::Store;

use crate::cli::KafkaArgs;
use crate::config::{Config, ConfigError, Override};

/// Flags of `bridge`.
#[derive(Debug, Args)]
pub struct BridgeArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Address of `/ws`, the REST endpoints and `/metrics` (`bridge.listen`).
    #[arg(long)]
    listen: Option<String>,
}

impl BridgeArgs {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        self.kafka.overrides(into);
        if let Some(l) = &self.listen {
            into.push(("bridge.listen".into(), toml::Value::String(l.clone())));
        }
    }
}

pub(crate) async fn run(config: &Config) -> anyhow::Result<()> {
    let c = &config.bridge;
    if let Err((key, expected)) = c.validate() {
        return Err(ConfigError::invalid(&format!("bridge.{key}"), &expected).into());
    }
    let metrics = crate::observability::metrics()?;
    let stop = super::stop_on_signal();
    let store = Arc::new(Store::default());
    let hub = Arc::new(Hub::new(c.client_queue));
    let kafka_up = Arc::new(AtomicBool::new(false));
    let kinds = [
        RecordKind::WindowAggregate,
        RecordKind::Anomaly,
        RecordKind::StatusTransition,
    ];
    let codec = super::codec(config, &kinds).await?;
    let topics = Topics {
        aggregates: config.topics.aggregates.as_str().into(),
        anomalies: config.topics.anomalies.as_str().into(),
        status: config.topics.status.as_str().into(),
    };
    let kafka: Vec<(String, String)> = crate::kafka::properties(config)?.into_iter().collect();
    let feed = {
        let (store, hub, stop, up) = (
            Arc::clone(&store),
            Arc::clone(&hub),
            Arc::clone(&stop),
            Arc::clone(&kafka_up),
        );
        tokio::task::spawn_blocking(move || {
            feed::run(&kafka, &topics, &codec, &store, &hub, &stop, &up)
        })
    };
    let ready = Arc::clone(&kafka_up);
    let bridge = Arc::new(Bridge {
        config: c.clone(),
        verifier: Verifier::new(&c.jwt_secret).context("bridge.jwt_secret")?,
        store,
        hub,
        connections: AtomicUsize::new(0),
        metrics: Box::new(move || metrics.render()),
        ready: Box::new(move || {
            (!ready.load(Ordering::Relaxed)).then_some("kafka is not answering")
        }),
    });
    let listener = tokio::net::TcpListener::bind(c.listen)
        .await
        .with_context(|| format!("cannot listen on {} (bridge.listen)", c.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "bridge listening");
    println!("fleetpulse bridge: /ws, /api/devices on http://{address}");
    println!("fleetpulse bridge metrics on http://{address}");
    let stopped = {
        let stop = Arc::clone(&stop);
        async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Open WebSocket connections end with the process; clients reconnect elsewhere.
    tokio::select! {
        served = axum::serve(listener, router(bridge)) => served.context("the bridge server failed")?,
        () = stopped => {}
    }
    stop.store(true, Ordering::Relaxed);
    feed.await.context("the feed thread failed")??;
    Ok(())
}
