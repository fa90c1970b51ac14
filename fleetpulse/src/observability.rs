//! Logs and metrics for every command: `tracing` to stderr (text or JSON), and a Prometheus
//! recorder whose rendering services expose at `/metrics`.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Starts logging. `RUST_LOG`, when set, wins over the configured level.
pub(crate) fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests calling the CLI twice) keeps the first subscriber.
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Installs the process-wide metrics recorder and returns what renders it.
pub(crate) fn metrics() -> anyhow::Result<PrometheusHandle> {
    // One recorder per process: `demo` runs every service in one, and they share it.
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Why a service is not ready, or `None` when it is.
pub(crate) type Problem = Box<dyn Fn() -> Option<&'static str> + Send + Sync>;

/// Prints where a listener of `what` (`bridge`, `pipeline.metrics`, ...) serves, as one JSON
/// line (`{"listening":"bridge","url":"http://127.0.0.1:8080"}`) before the human message:
/// what scripts and `bench bridge` read, so the message can change without breaking them. A
/// reader that went away after the line it wanted costs nothing (no panic on a closed pipe).
pub(crate) fn announce(what: &str, url: &str) {
    use std::io::Write;
    let line = serde_json::json!({ "listening": what, "url": url });
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Serves `/metrics`, `/healthz` and `/readyz` (503 with `problem`'s answer) on `listen`, which
/// the configuration key `key` set, and prints `fleetpulse <service> metrics on http://ADDR` for
/// people and [`announce`]s it for scripts and tests that asked for port 0.
pub(crate) async fn serve(
    listen: std::net::SocketAddr,
    key: &str,
    service: &str,
    problem: Problem,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use axum::http::StatusCode;
    use axum::routing::get;

    let metrics = metrics()?;
    let problem = std::sync::Arc::new(problem);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .route("/healthz", get(|| std::future::ready("ok")))
        .route(
            "/readyz",
            get(move || {
                std::future::ready(match problem() {
                    None => (StatusCode::OK, "ready"),
                    Some(p) => (StatusCode::SERVICE_UNAVAILABLE, p),
                })
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} ({key})"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "{service} metrics listening");
    announce(&format!("{service}.metrics"), &format!("http://{address}"));
    println!("fleetpulse {service} metrics on http://{address}");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server failed");
        }
    });
    Ok(())
}
