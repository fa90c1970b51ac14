//! `fleetpulse bridge`: live device status, anomalies and health for dashboards over WebSocket,
//! with the tenant-scoped REST endpoints, `/healthz` and `/readyz` on the same port, and
//! `/metrics` there too or on `bridge.metrics_listen`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use schemas::RecordKind;
use ws_bridge::auth::Verifier;
use ws_bridge::cache::Cache;
use ws_bridge::feed::{self, Topics};
use ws_bridge::hub::Hub;
use ws_bridge::keys::KeySet;
use ws_bridge::server::{Bridge, router};
use ws_bridge::store::Store;

use crate::cli::KafkaArgs;
use crate::config::{Config, ConfigError, Override};

/// How often the devices that changed are written to Redis: the cache trails the live events by
/// about this much.
const WRITE_EVERY: Duration = Duration::from_millis(100);

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
    let cache = match c.redis() {
        None => None,
        Some(redis) => {
            redis.check(Duration::from_secs(5)).await?;
            Some(Cache::connect(&redis).context("bridge.redis_url")?)
        }
    };
    let store = Arc::new(if cache.is_some() {
        Store::noting_changes()
    } else {
        Store::default()
    });
    let hub = Arc::new(Hub::new(c.client_queue, c.resume_events, c.resume_bytes));
    let kafka_up = Arc::new(AtomicBool::new(false));
    let kinds = [
        RecordKind::WindowAggregate,
        RecordKind::Anomaly,
        RecordKind::StatusTransition,
        RecordKind::LastSeen,
    ];
    let codec = super::codec(config, &kinds).await?;
    let topics = Topics {
        aggregates: config.topics.aggregates.as_str().into(),
        anomalies: config.topics.anomalies.as_str().into(),
        status: config.topics.status.as_str().into(),
        lastseen: config.topics.lastseen.as_str().into(),
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
    let writer = cache.as_ref().map(|cache| {
        let (cache, store, hub, stop) = (
            Arc::clone(cache),
            Arc::clone(&store),
            Arc::clone(&hub),
            Arc::clone(&stop),
        );
        let retention = Duration::from_millis(c.device_retention_ms);
        tokio::spawn(async move {
            cache
                .write_behind(&store, &hub, WRITE_EVERY, retention, &stop)
                .await;
        })
    });
    let last_seen = {
        let (hub, stop) = (Arc::clone(&hub), Arc::clone(&stop));
        let every = Duration::from_millis(c.last_seen_every_ms);
        tokio::spawn(async move { hub.send_last_seen_every(every, &stop).await })
    };
    let mut verifier =
        Verifier::new(&c.jwt_secret, c.token_rules()).context("bridge.jwt_secret")?;
    let mut key_refresh = None;
    if let Some(path) = &c.jwks_file {
        verifier = verifier.with_keys(KeySet::file(path).context("bridge.jwks_file")?);
    } else if !c.jwks_url.is_empty() {
        let keys = KeySet::url(&c.jwks_url).context("bridge.jwks_url")?;
        let every = Duration::from_secs(c.jwks_refresh_s);
        key_refresh = Some(tokio::spawn(Arc::clone(&keys).keep_fresh(every)));
        verifier = verifier.with_keys(keys);
    }
    let ready = Arc::clone(&kafka_up);
    let redis = cache.clone();
    let keys_ready = verifier.clone();
    let bridge = Arc::new(Bridge {
        config: c.clone(),
        verifier,
        store,
        cache,
        hub,
        connections: AtomicUsize::new(0),
        limits: ws_bridge::limits::Limits::new(
            c.max_connections_per_address,
            c.max_connections_per_tenant,
        ),
        rates: ws_bridge::rates::Rates::new(c),
        readers: ws_bridge::server::readers(),
        metrics: Box::new(move || metrics.render()),
        ready: Box::new(move || {
            if !ready.load(Ordering::Relaxed) {
                Some("kafka is not answering, or the bridge has not read the topics yet")
            } else if redis.as_ref().is_some_and(|r| !r.up()) {
                Some("redis is not answering")
            } else if !keys_ready.ready() {
                Some("the key set at bridge.jwks_url has not been fetched yet")
            } else {
                None
            }
        }),
    });
    let listener = crate::serve::Listener::bind(
        "bridge",
        c.listen,
        (&c.tls_cert_file, &c.tls_key_file),
        std::time::Duration::from_millis(c.header_timeout_ms),
    )?;
    let url = listener.url()?;
    tracing::info!(%url, "bridge listening");
    println!("fleetpulse bridge: /ws, /api/devices on {url}");
    let metrics_server = match c.metrics_listen {
        None => {
            println!("fleetpulse bridge metrics on {url}");
            None
        }
        Some(address) => {
            let own = crate::serve::Listener::bind_plain("bridge.metrics_listen", address)?;
            let url = own.url()?;
            println!("fleetpulse bridge metrics on {url}");
            let app = ws_bridge::server::metrics_router(Arc::clone(&bridge));
            Some(tokio::spawn(own.serve(app, std::future::pending())))
        }
    };
    let tidy = {
        let bridge = Arc::clone(&bridge);
        tokio::spawn(async move { bridge.tidy().await })
    };
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
        served = listener.serve(router(bridge), std::future::pending()) => served.context("the bridge server failed")?,
        () = stopped => {}
    }
    stop.store(true, Ordering::Relaxed);
    feed.await.context("the feed thread failed")??;
    if let Some(writer) = writer {
        writer.await.context("the redis writer failed")?;
    }
    // Connections end with the process: no batch is owed to anyone.
    last_seen.abort();
    tidy.abort();
    if let Some(refresh) = key_refresh {
        refresh.abort();
    }
    if let Some(metrics) = metrics_server {
        metrics.abort();
    }
    Ok(())
}
