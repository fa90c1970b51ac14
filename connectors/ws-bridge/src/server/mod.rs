//! What the bridge serves: `GET /ws` (upgraded only with a valid token and within the
//! connection caps), the tenant-scoped REST endpoints ([`rest`]), the live dashboard at `/`, and
//! `/healthz`, `/readyz`, `/metrics` (or that on a listener of its own, [`metrics_router`]).
//! This module is the router and the admission (tokens, caps, headers); each connection is a
//! [`connection::Connection`], and what a subscriber is owed on subscribing is [`snapshot`].
//!
//! What clients ask for is limited by [`crate::rates`]: messages and snapshots per connection
//! and per tenant, REST requests per token. Snapshots and cursor replays are read a page at a
//! time on blocking threads, so that neither the async workers nor the feed wait for them.
//! Publishing never waits for any connection, so a slow client slows down nobody else.

mod connection;
mod rest;
mod snapshot;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::auth::{AuthError, Claims, Verifier};
use crate::cache::Cache;
use crate::config::BridgeConfig;
use crate::events::{self, Refusal};
use crate::hub::Hub;
use crate::limits::{Capped, Limits};
use crate::protocol::ServerMessage;
use crate::rates::Rates;
use crate::store::Store;
use connection::Connection;
pub use connection::SEND_TIMEOUT;

/// Each connection's read buffer, bytes.
const READ_BUFFER: usize = 4 * 1024;

/// Renders `/metrics`.
pub type Render = Box<dyn Fn() -> String + Send + Sync>;
/// Why the bridge is not ready, or `None`.
pub type Problem = Box<dyn Fn() -> Option<&'static str> + Send + Sync>;

/// Everything the handlers share.
pub struct Bridge {
    /// `[bridge]`.
    pub config: BridgeConfig,
    /// Checks tokens.
    pub verifier: Verifier,
    /// The devices' latest state.
    pub store: Arc<Store>,
    /// Redis, when configured: snapshots are read from it.
    pub cache: Option<Arc<Cache>>,
    /// Where the feed publishes events and connections take theirs.
    pub hub: Arc<Hub>,
    /// Open WebSocket connections.
    pub connections: AtomicUsize,
    /// Open WebSocket connections per client address and per tenant.
    pub limits: Arc<Limits>,
    /// Rate limits on client messages, snapshots and REST requests.
    pub rates: Rates,
    /// Reads of the store and the resume ring (snapshots, replays, REST pages) running at once
    /// on blocking threads: a few, so that ten thousand dashboards reconnecting together queue
    /// for them instead of each getting a thread of its own.
    pub readers: tokio::sync::Semaphore,
    /// `/metrics`.
    pub metrics: Render,
    /// `/readyz`.
    pub ready: Problem,
}

/// The dashboard page: its one script and one style sheet are inline, allowed by their hashes.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The dashboard's Content-Security-Policy: nothing but its own inline script and style (by
/// hash), connections back to this bridge, and no framing, forms or base changes.
static DASHBOARD_POLICY: LazyLock<String> = LazyLock::new(|| {
    let hash = |tag: &str| {
        let inline = DASHBOARD
            .split_once(&format!("<{tag}>"))
            .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
            .map_or("", |(inline, _)| inline);
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(inline.as_bytes()))
        )
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("script"),
        hash("style")
    )
});

/// Headers on every answer: not to be framed, content-sniffed, or named in a referrer.
async fn protective_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The bridge's routes; `/metrics` among them unless `bridge.metrics_listen` gives it a
/// listener of its own.
pub fn router(bridge: Arc<Bridge>) -> axum::Router {
    let mut routes = axum::Router::new()
        .route("/", get(dashboard))
        .route("/ws", get(ws))
        .route("/api/devices", get(rest::devices))
        .route("/api/devices/{id}", get(rest::device))
        .route("/healthz", get(|| std::future::ready("ok")))
        .route("/readyz", get(readyz));
    if bridge.config.metrics_listen.is_none() {
        routes = routes.route("/metrics", get(metrics));
    }
    routes
        .layer(axum::middleware::map_response(protective_headers))
        .with_state(bridge)
}

/// `/metrics` alone, for `bridge.metrics_listen`.
pub fn metrics_router(bridge: Arc<Bridge>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .with_state(bridge)
}

async fn metrics(State(b): State<Arc<Bridge>>) -> String {
    (b.metrics)()
}

/// How many reads of the store run at once on blocking threads: one a core, at least two.
pub fn readers() -> tokio::sync::Semaphore {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    tokio::sync::Semaphore::new(cores.max(2))
}

impl Bridge {
    /// Runs `read` on a blocking thread, once one of [`Bridge::readers`] is free; `None` if it
    /// panicked.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let _permit = self.readers.acquire().await.ok()?;
        tokio::task::spawn_blocking(read).await.ok()
    }

    /// Every second: the devices gauge; and every minute (or quarter of the retention, if
    /// shorter) lets go of the devices silent past `bridge.device_retention_ms` and of the
    /// rate-limit buckets of tenants and tokens gone quiet. Runs until the task is dropped.
    pub async fn tidy(&self) {
        let sweep_every = Duration::from_millis((self.config.device_retention_ms / 4).min(60_000));
        let mut swept = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            events::devices(self.store.len());
            if swept.elapsed() < sweep_every {
                continue;
            }
            swept = Instant::now();
            let retention = i64::try_from(self.config.device_retention_ms).unwrap_or(i64::MAX);
            let oldest = i64::try_from(now_ms())
                .unwrap_or(i64::MAX)
                .saturating_sub(retention);
            // A pass over every device: on a blocking thread.
            let store = Arc::clone(&self.store);
            let gone = tokio::task::spawn_blocking(move || store.sweep(oldest))
                .await
                .unwrap_or(0);
            if gone > 0 {
                tracing::info!(
                    gone,
                    "devices silent past bridge.device_retention_ms let go"
                );
                events::devices_expired(gone);
            }
            self.rates.forget_idle();
        }
    }
}

/// The live dashboard: one page, its script inline; the token is its business (it asks for one).
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_POLICY.as_str()),
        ],
        DASHBOARD,
    )
        .into_response()
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        ServerMessage::Error { code, message }.json(),
    )
        .into_response()
}

/// The claims of the request's valid token, and the token: every route that needs one takes this
/// first, so a request without one is answered 401 before anything else is looked at.
struct Authorized(Claims, String);

impl FromRequestParts<Arc<Bridge>> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        b: &Arc<Bridge>,
    ) -> Result<Authorized, Response> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = crate::auth::token(header, parts.uri.query());
        b.verifier
            .verify(token)
            .map(|claims| Authorized(claims, token.unwrap_or_default().to_string()))
            .map_err(|e: AuthError| {
                events::refused(Refusal::Auth);
                refuse(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
            })
    }
}

async fn readyz(State(b): State<Arc<Bridge>>) -> Response {
    match (b.ready)() {
        None => (StatusCode::OK, "ready").into_response(),
        Some(p) => (StatusCode::SERVICE_UNAVAILABLE, p).into_response(),
    }
}

async fn ws(
    // The token is checked first: a stranger learns nothing else about the endpoint.
    Authorized(claims, _): Authorized,
    State(b): State<Arc<Bridge>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    if b.connections.load(Ordering::Relaxed) >= b.config.max_connections {
        events::refused(Refusal::Connections);
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "limit",
            format!("{} connections already", b.config.max_connections),
        );
    }
    let address = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let tenant = (!claims.is_admin()).then_some(claims.tenant.as_str());
    let slot = match b.limits.admit(address, tenant) {
        Ok(slot) => slot,
        Err(capped) => {
            let (reason, message) = match capped {
                Capped::Address => (
                    Refusal::Address,
                    format!(
                        "{} connections from this address already",
                        b.config.max_connections_per_address
                    ),
                ),
                Capped::Tenant => (
                    Refusal::Tenant,
                    format!(
                        "{} connections for this tenant already",
                        b.config.max_connections_per_tenant
                    ),
                ),
            };
            events::refused(reason);
            return refuse(StatusCode::TOO_MANY_REQUESTS, "limit", message);
        }
    };
    upgrade
        // tungstenite's read buffer is allocated whole per connection (128 KiB by default):
        // clients send small messages, so 4 KiB, grown when one needs more.
        .read_buffer_size(READ_BUFFER)
        .max_message_size(b.config.max_message_bytes)
        .max_frame_size(b.config.max_message_bytes)
        .on_upgrade(move |socket| Connection::new(b, claims, slot).serve(socket))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
