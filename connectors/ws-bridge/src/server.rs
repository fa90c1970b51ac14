//! What the bridge serves: `GET /ws` (upgraded only with a valid token), the tenant-scoped REST
//! endpoints (`/api/devices`, `/api/devices/{id}`), the live dashboard at `/`, and `/healthz`,
//! `/readyz`, `/metrics`.
//!
//! Each connection is one task, registered with the [`Hub`], which queues it the events of its
//! tenant and topics: a client whose queue overflows is told `slow_consumer` and closed, and so
//! is one whose socket does not take a message within [`SEND_TIMEOUT`]; publishing never waits
//! for anyone, so nobody else slows down.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Json;
use axum::extract::ws::{
    Message, Utf8Bytes, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use metrics::{counter, gauge, histogram};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::auth::{AuthError, Claims, Verifier};
use crate::cache::{Cache, Devices};
use crate::config::BridgeConfig;
use crate::cursor::Position;
use crate::hub::{Hub, Owed, Registration};
use crate::limits::{Capped, Limits, Slot};
use crate::protocol::{ClientMessage, Seen, ServerMessage, Topic};
use crate::store::{DeviceState, Store};

/// How long a client's socket may take to accept one message before it counts as too slow.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a snapshot waits for Redis to have the events the subscriber will not get live;
/// after that it is taken from memory.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

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

/// The bridge's routes.
pub fn router(bridge: Arc<Bridge>) -> axum::Router {
    axum::Router::new()
        .route("/", get(dashboard))
        .route("/ws", get(ws))
        .route("/api/devices", get(devices))
        .route("/api/devices/{id}", get(device))
        .route("/healthz", get(|| std::future::ready("ok")))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(b): State<Arc<Bridge>>| std::future::ready((b.metrics)())),
        )
        .layer(axum::middleware::map_response(protective_headers))
        .with_state(bridge)
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

/// The claims of the request's valid token: every route that needs one takes this first, so a
/// request without one is answered 401 before anything else is looked at.
struct Authorized(Claims);

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
        b.verifier
            .verify(crate::auth::token(header, parts.uri.query()))
            .map(Authorized)
            .map_err(|e: AuthError| {
                counter!("fleetpulse_bridge_refused_total", "reason" => "auth").increment(1);
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
    Authorized(claims): Authorized,
    State(b): State<Arc<Bridge>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    if b.connections.load(Ordering::Relaxed) >= b.config.max_connections {
        counter!("fleetpulse_bridge_refused_total", "reason" => "connections").increment(1);
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
                    "address",
                    format!(
                        "{} connections from this address already",
                        b.config.max_connections_per_address
                    ),
                ),
                Capped::Tenant => (
                    "tenant",
                    format!(
                        "{} connections for this tenant already",
                        b.config.max_connections_per_tenant
                    ),
                ),
            };
            counter!("fleetpulse_bridge_refused_total", "reason" => reason).increment(1);
            return refuse(StatusCode::TOO_MANY_REQUESTS, "limit", message);
        }
    };
    upgrade
        .max_message_size(b.config.max_message_bytes)
        .max_frame_size(b.config.max_message_bytes)
        .on_upgrade(move |socket| Connection::new(b, claims, slot).serve(socket))
}

/// One client: who it is and what it subscribed to.
struct Connection {
    bridge: Arc<Bridge>,
    claims: Claims,
    topics: BTreeSet<Topic>,
    errors: u32,
    registration: Registration,
    /// The cursor it resumed from: live events before it were seen elsewhere.
    seen: Option<Position>,
    /// Its place under the per-address and per-tenant caps, given back when it ends.
    _slot: Slot,
}

/// What to do after a client message.
enum Next {
    Go,
    Close,
}

impl Connection {
    fn new(bridge: Arc<Bridge>, claims: Claims, slot: Slot) -> Connection {
        bridge.connections.fetch_add(1, Ordering::Relaxed);
        gauge!("fleetpulse_bridge_clients").increment(1.0);
        let registration = bridge.hub.register(&claims.tenant, claims.is_admin());
        Connection {
            bridge,
            claims,
            topics: BTreeSet::new(),
            errors: 0,
            registration,
            seen: None,
            _slot: slot,
        }
    }

    async fn serve(mut self, mut socket: WebSocket) {
        let heartbeat_every = Duration::from_millis(self.bridge.config.heartbeat_ms);
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        let mut heard = Instant::now();
        // The connection lasts as long as its token: a dashboard reconnects with a fresh one.
        let left = Duration::from_secs(self.claims.exp.saturating_sub(crate::auth::now()) + 5);
        let expiry = tokio::time::sleep(left);
        tokio::pin!(expiry);
        // A client that upgraded says what it wants in time, or makes room for one that will.
        let first_message =
            tokio::time::sleep(Duration::from_millis(self.bridge.config.first_message_ms));
        tokio::pin!(first_message);
        let mut spoken = false;
        let hello = ServerMessage::Connected {
            subject: &self.claims.sub,
            tenant: &self.claims.tenant,
            role: &self.claims.role,
            heartbeat_ms: self.bridge.config.heartbeat_ms,
        }
        .json();
        if !send(&mut socket, hello).await {
            return;
        }
        loop {
            tokio::select! {
                incoming = socket.recv() => {
                    let text = match incoming {
                        Some(Ok(Message::Text(t))) => t.as_str().to_string(),
                        Some(Ok(Message::Binary(_))) => String::new(),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                            heard = Instant::now();
                            continue;
                        }
                        Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    };
                    heard = Instant::now();
                    spoken = true;
                    let (replies, next) = self.answer(&text).await;
                    for reply in replies {
                        if !send(&mut socket, reply).await {
                            return;
                        }
                    }
                    if matches!(next, Next::Close) {
                        break;
                    }
                }
                event = self.registration.events.recv() => match event {
                    // The hub chose it; the tenant is checked once more all the same. A
                    // `last_seen` batch has no place in the topics: it is never owed or skipped.
                    Some(e) if self.claims.sees(&e.tenant)
                        && e.source.is_none_or(|s| self.seen.as_ref().is_none_or(|p| p.owes(s))) => {
                        if !send(&mut socket, e.json.clone()).await {
                            counter!("fleetpulse_bridge_drops_total", "reason" => "slow_consumer").increment(1);
                            slow(&mut socket, "the socket did not take a message in time").await;
                            return;
                        }
                        counter!("fleetpulse_bridge_messages_sent_total").increment(1);
                        if e.source.is_some() {
                            histogram!("fleetpulse_bridge_lag_seconds").record(e.read_at.elapsed().as_secs_f64());
                        }
                    }
                    Some(_) => {}
                    None if self.registration.slow.load(Ordering::Relaxed) => {
                        let queue = self.bridge.config.client_queue;
                        slow(&mut socket, &format!("more than {queue} events waiting")).await;
                        return;
                    }
                    None => break,
                },
                () = &mut first_message, if !spoken => {
                    counter!("fleetpulse_bridge_drops_total", "reason" => "no_first_message").increment(1);
                    let timeout = ServerMessage::Error {
                        code: "timeout",
                        message: format!(
                            "no message within {} ms of connecting",
                            self.bridge.config.first_message_ms
                        ),
                    }
                    .json();
                    let _ = send(&mut socket, timeout).await;
                    break;
                }
                () = &mut expiry => {
                    let expired = ServerMessage::Error {
                        code: "unauthorized",
                        message: "the token has expired".into(),
                    }
                    .json();
                    let _ = send(&mut socket, expired).await;
                    break;
                }
                _ = heartbeat.tick() => {
                    if heard.elapsed() > 3 * heartbeat_every {
                        counter!("fleetpulse_bridge_drops_total", "reason" => "silent").increment(1);
                        break;
                    }
                    let beat = self.heartbeat();
                    if !send(&mut socket, beat).await {
                        return;
                    }
                    // Browsers and WebSocket libraries answer a ping frame by themselves: a
                    // client that only listens still counts as alive.
                    let ping = socket.send(Message::Ping(Default::default()));
                    if !matches!(tokio::time::timeout(SEND_TIMEOUT, ping).await, Ok(Ok(()))) {
                        return;
                    }
                }
            }
        }
        let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(None))).await;
    }

    /// The replies to a client message, and whether to go on.
    async fn answer(&mut self, text: &str) -> (Vec<String>, Next) {
        let message = match serde_json::from_str::<ClientMessage>(text) {
            Ok(m) => m,
            Err(e) => return self.error("bad_message", format!("not a client message: {e}")),
        };
        match message {
            ClientMessage::Ping => (vec![self.heartbeat()], Next::Go),
            ClientMessage::Unsubscribe { topics } => {
                for t in topics.iter().filter_map(|t| Topic::parse(t)) {
                    if self.topics.remove(&t) {
                        gauge!("fleetpulse_bridge_subscriptions").decrement(1.0);
                    }
                }
                self.bridge
                    .hub
                    .subscribe(&self.registration, &self.topics, None);
                (vec![self.subscribed()], Next::Go)
            }
            ClientMessage::Subscribe { topics, cursor } => {
                let parsed: Vec<Option<Topic>> = topics.iter().map(|t| Topic::parse(t)).collect();
                if let Some(bad) = topics.iter().zip(&parsed).find(|(_, p)| p.is_none()) {
                    return self.error("bad_topic", format!("unknown topic {:?}", bad.0));
                }
                let new: BTreeSet<Topic> = parsed
                    .into_iter()
                    .flatten()
                    .filter(|t| !self.topics.contains(t))
                    .collect();
                if self.topics.len() + new.len() > self.bridge.config.max_subscriptions {
                    return self.error(
                        "limit",
                        format!("at most {} topics", self.bridge.config.max_subscriptions),
                    );
                }
                gauge!("fleetpulse_bridge_subscriptions").increment(new.len() as f64);
                let resume = cursor.as_deref().map(Position::decode);
                // Events from here on are queued behind what is owed now: none is missed.
                self.topics.extend(new.iter().cloned());
                let subscribed = self.bridge.hub.subscribe(
                    &self.registration,
                    &self.topics,
                    resume.clone().flatten().as_ref(),
                );
                let mut replies = vec![self.subscribed()];
                let resync = match (resume, subscribed.owed) {
                    (Some(Some(from)), Owed::Missed(events)) => {
                        counter!("fleetpulse_bridge_resumes_total", "outcome" => "resumed")
                            .increment(1);
                        replies.extend(
                            events
                                .iter()
                                .filter(|e| self.claims.sees(&e.tenant))
                                .map(|e| e.json.to_string()),
                        );
                        // Last-seen times are not replayed: the current ones stand for every
                        // one it missed.
                        replies.extend(self.last_seen_now(&new));
                        self.seen = Some(from);
                        return (replies, Next::Go);
                    }
                    (Some(None), _) => Some("not a cursor of this bridge"),
                    (_, Owed::Resync(why)) => Some(why),
                    _ => None,
                };
                if let Some(why) = resync {
                    counter!("fleetpulse_bridge_resumes_total", "outcome" => "resync").increment(1);
                    replies.push(
                        ServerMessage::Error {
                            code: "resync",
                            message: format!("{why}: the snapshot follows"),
                        }
                        .json(),
                    );
                }
                let devices = self.snapshot(&new, subscribed.published).await;
                replies.push(
                    ServerMessage::Snapshot {
                        cursor: &subscribed.cursor,
                        devices,
                    }
                    .json(),
                );
                (replies, Next::Go)
            }
        }
    }

    /// A `heartbeat`, with the cursor the client is at when nothing is waiting for it (not
    /// after a resume from a bridge that read further: the client's own cursor is ahead).
    fn heartbeat(&self) -> String {
        let cursor = (self.seen.is_none() && !self.topics.is_empty())
            .then(|| self.bridge.hub.quiet_cursor(&self.registration))
            .flatten();
        ServerMessage::Heartbeat {
            ts: now_ms(),
            cursor: cursor.as_deref(),
        }
        .json()
    }

    fn subscribed(&self) -> String {
        ServerMessage::Subscribed {
            topics: self.topics.iter().map(Topic::name).collect(),
        }
        .json()
    }

    /// A `last_seen` message with the store's last-seen times of the visible devices whose
    /// times `topics` cover, if there are any.
    fn last_seen_now(&self, topics: &BTreeSet<Topic>) -> Option<String> {
        let covered = |d: &DeviceState| {
            d.last_seen.is_some()
                && topics.iter().any(|t| match t {
                    Topic::Device(id) => d.device_id == *id,
                    Topic::Class(class) => d.device_class.as_deref() == Some(class),
                    Topic::Tenant | Topic::LastSeen => true,
                    Topic::Status | Topic::Anomalies | Topic::Aggregates => false,
                })
        };
        let seen: Vec<Seen> = self
            .bridge
            .store
            .select(|tenant| self.claims.sees(tenant), covered)
            .into_iter()
            .filter_map(|d| {
                Some(Seen {
                    last_seen: d.last_seen?,
                    tenant_id: d.tenant_id,
                    device_id: d.device_id,
                    device_class: d.device_class,
                })
            })
            .collect();
        (!seen.is_empty()).then(|| {
            ServerMessage::LastSeen {
                devices: seen.iter().collect(),
            }
            .json()
        })
    }

    /// The state of the visible devices that `topics` cover: from Redis when it is configured
    /// and has the first `published` events, else from memory.
    async fn snapshot(&self, topics: &BTreeSet<Topic>, published: u64) -> Vec<DeviceState> {
        if topics.is_empty() {
            return Vec::new();
        }
        let wanted = |d: &DeviceState| {
            self.claims.sees(&d.tenant_id)
                && topics.iter().any(|t| match t {
                    Topic::Device(id) => d.device_id == *id,
                    Topic::Class(class) => d.device_class.as_deref() == Some(class),
                    Topic::Tenant
                    | Topic::Status
                    | Topic::Anomalies
                    | Topic::Aggregates
                    | Topic::LastSeen => true,
                })
        };
        if let Some(cache) = &self.bridge.cache {
            let ids: Option<Vec<String>> = topics
                .iter()
                .map(|t| match t {
                    Topic::Device(id) => Some(id.clone()),
                    _ => None,
                })
                .collect();
            let admin = self.claims.is_admin();
            let devices = match ids {
                Some(ids) if !admin => Devices::Keys(
                    ids.into_iter()
                        .map(|id| (self.claims.tenant.clone(), id))
                        .collect(),
                ),
                _ if admin => Devices::Tenants(Vec::new()),
                _ => Devices::Tenants(vec![self.claims.tenant.clone()]),
            };
            if let Some(mut held) = cache.snapshot(&devices, published, SNAPSHOT_WAIT).await {
                held.retain(|d| wanted(d));
                // Redis waits for the events published, not for last-seen times, which it may
                // trail by a write; the store has every time the hub may already have sent.
                let now = self.bridge.store.last_seen_of(
                    held.iter()
                        .map(|d| (d.tenant_id.as_str(), d.device_id.as_str())),
                );
                for (d, last_seen) in held.iter_mut().zip(now) {
                    d.last_seen = d.last_seen.max(last_seen);
                }
                held.sort_by(|a, b| {
                    (&a.tenant_id, &a.device_id).cmp(&(&b.tenant_id, &b.device_id))
                });
                return held;
            }
        }
        self.bridge
            .store
            .select(|tenant| self.claims.sees(tenant), |d| wanted(d))
    }

    /// An `error` reply; past `max_errors` of them the connection closes.
    fn error(&mut self, code: &str, message: String) -> (Vec<String>, Next) {
        self.errors += 1;
        counter!("fleetpulse_bridge_client_errors_total").increment(1);
        let reply = ServerMessage::Error { code, message }.json();
        if self.errors > self.bridge.config.max_errors {
            let last = ServerMessage::Error {
                code: "limit",
                message: "too many bad messages".into(),
            }
            .json();
            return (vec![reply, last], Next::Close);
        }
        (vec![reply], Next::Go)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.bridge.hub.leave(&self.registration);
        self.bridge.connections.fetch_sub(1, Ordering::Relaxed);
        gauge!("fleetpulse_bridge_clients").decrement(1.0);
        gauge!("fleetpulse_bridge_subscriptions").decrement(self.topics.len() as f64);
    }
}

/// Sends `text`; false if the client is gone or did not take it within [`SEND_TIMEOUT`].
async fn send(socket: &mut WebSocket, text: impl Into<Utf8Bytes>) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

/// Tells a client it fell behind, if its socket still takes anything.
async fn slow(socket: &mut WebSocket, why: &str) {
    tracing::info!(why, "dropping a slow client");
    let told = ServerMessage::Error {
        code: "slow_consumer",
        message: format!("disconnected: {why}"),
    }
    .json();
    let _ = tokio::time::timeout(
        Duration::from_millis(100),
        socket.send(Message::Text(told.into())),
    )
    .await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Filters and a page of `/api/devices`.
#[derive(Debug, Deserialize)]
struct DeviceQuery {
    status: Option<String>,
    class: Option<String>,
    /// `tenant/device` of the last device of the previous page.
    after: Option<String>,
    limit: Option<usize>,
}

async fn devices(
    Authorized(claims): Authorized,
    State(b): State<Arc<Bridge>>,
    Query(q): Query<DeviceQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, 1_000);
    let after = q.after.as_deref().and_then(|a| a.split_once('/'));
    let mut page: Vec<DeviceState> = b.store.select(
        |tenant| claims.sees(tenant),
        |d| {
            q.status
                .as_ref()
                .is_none_or(|s| d.status.as_ref() == Some(s))
                && q.class
                    .as_ref()
                    .is_none_or(|c| d.device_class.as_ref() == Some(c))
                && after
                    .is_none_or(|(t, id)| (d.tenant_id.as_str(), d.device_id.as_str()) > (t, id))
        },
    );
    let more = page.len() > limit;
    page.truncate(limit);
    let next = more
        .then(|| {
            page.last()
                .map(|d| format!("{}/{}", d.tenant_id, d.device_id))
        })
        .flatten();
    Json(serde_json::json!({ "devices": page, "next": next })).into_response()
}

async fn device(
    Authorized(claims): Authorized,
    State(b): State<Arc<Bridge>>,
    Path(id): Path<String>,
) -> Response {
    match b
        .store
        .select(|tenant| claims.sees(tenant), |d| d.device_id == id)
        .into_iter()
        .next()
    {
        Some(d) => Json(d).into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no device {id}"),
        ),
    }
}
