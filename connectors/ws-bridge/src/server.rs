//! What the bridge serves: `GET /ws` (upgraded only with a valid token), the tenant-scoped REST
//! endpoints (`/api/devices`, `/api/devices/{id}`), the live dashboard at `/`, and `/healthz`,
//! `/readyz`, `/metrics` (or that on a listener of its own, [`metrics_router`]).
//!
//! What clients ask for is limited by [`crate::rates`]: messages and snapshots per connection
//! and per tenant, REST requests per token. Snapshots and cursor replays are read a page at a
//! time on blocking threads, so that neither the async workers nor the feed wait for them.
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

use crate::events::{self, Dropped, Refusal};
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
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::auth::{AuthError, Claims, Verifier};
use crate::cache::{Cache, Devices};
use crate::config::BridgeConfig;
use crate::cursor::Position;
use crate::hub::{Hub, Owed, Registration};
use crate::key;
use crate::limits::{Capped, Limits, Slot};
use crate::protocol::{ClientMessage, Seen, ServerMessage, Topic};
use crate::rates::{self, Limited, Rates};
use crate::store::{DeviceKey, DeviceState, Store};

/// How long a client's socket may take to accept one message before it counts as too slow.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Each connection's read buffer, bytes.
const READ_BUFFER: usize = 4 * 1024;
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
        .route("/api/devices", get(devices))
        .route("/api/devices/{id}", get(device))
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
    /// Its own rate-limit buckets.
    rates: rates::Connection,
    /// Its tenant for the tenants' buckets; `None` for an admin.
    tenant: rates::Tenant,
}

/// What to do after a client message.
enum Next {
    Go,
    Close,
}

impl Connection {
    fn new(bridge: Arc<Bridge>, claims: Claims, slot: Slot) -> Connection {
        bridge.connections.fetch_add(1, Ordering::Relaxed);
        events::client_connected();
        let registration = bridge.hub.register(&claims.tenant, claims.is_admin());
        let rates = bridge.rates.connection();
        let tenant = (!claims.is_admin()).then(|| claims.tenant.clone());
        Connection {
            bridge,
            claims,
            topics: BTreeSet::new(),
            errors: 0,
            registration,
            seen: None,
            _slot: slot,
            rates,
            tenant,
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
                    // Boxed: answering (a snapshot from Redis, a replay) is a large future, and
                    // inline it would make every idle connection's task as large.
                    let (replies, next) = Box::pin(self.answer(&text)).await;
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
                            events::dropped(Dropped::SlowConsumer);
                            slow(&mut socket, "the socket did not take a message in time").await;
                            return;
                        }
                        events::message_sent(e.source.is_some().then(|| e.read_at.elapsed().as_secs_f64()));
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
                    events::dropped(Dropped::NoFirstMessage);
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
                        events::dropped(Dropped::Silent);
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
        if let Err(limited) = self.bridge.rates.message(&self.rates, &self.tenant) {
            return self.limited(limited, "messages", self.bridge.config.messages_per_s);
        }
        let message = match serde_json::from_str::<ClientMessage>(text) {
            Ok(m) => m,
            Err(e) => return self.error("bad_message", format!("not a client message: {e}")),
        };
        match message {
            ClientMessage::Ping => (vec![self.heartbeat()], Next::Go),
            ClientMessage::Unsubscribe { topics } => {
                for t in topics.iter().filter_map(|t| Topic::parse(t)) {
                    if self.topics.remove(&t) {
                        events::subscriptions(-1);
                    }
                }
                self.bridge
                    .hub
                    .subscribe(&self.registration, &self.topics, None);
                (vec![self.subscribed()], Next::Go)
            }
            ClientMessage::Subscribe { topics, cursor } => self.subscribe(&topics, cursor).await,
        }
    }

    /// The replies to a `subscribe`: the topics, then what the client is owed (the events it
    /// missed, or a snapshot).
    async fn subscribe(
        &mut self,
        topics: &[String],
        cursor: Option<String>,
    ) -> (Vec<String>, Next) {
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
        if (!new.is_empty() || cursor.is_some())
            && let Err(limited) = self
                .bridge
                .rates
                .snapshot(&self.rates, &self.tenant, self.topics.is_empty())
                .await
        {
            return self.limited(limited, "snapshots", self.bridge.config.snapshots_per_s);
        }
        events::subscriptions(new.len() as isize);
        let resume = cursor.as_deref().map(Position::decode);
        // Events from here on are queued behind what is owed now: none is missed.
        self.topics.extend(new.iter().cloned());
        let subscribed = self.bridge.hub.subscribe(
            &self.registration,
            &self.topics,
            resume.clone().flatten().as_ref(),
        );
        let mut replies = vec![self.subscribed()];
        let owed = match subscribed.owed {
            Owed::Missed(replay) => match self.bridge.read(move || replay.scan()).await {
                Some(Ok(events)) => Ok(events),
                Some(Err(why)) => Err(Some(why)),
                None => Err(Some("the replay failed")),
            },
            Owed::Resync(why) => Err(Some(why)),
            Owed::Snapshot => Err(None),
        };
        let resync = match (resume, owed) {
            (Some(Some(from)), Ok(events)) => {
                events::resumed(true);
                replies.extend(
                    events
                        .iter()
                        .filter(|e| self.claims.sees(&e.tenant))
                        .map(|e| e.json.to_string()),
                );
                // Last-seen times are not replayed: the current ones stand for every one it
                // missed.
                replies.extend(self.last_seen_now(&new).await);
                self.seen = Some(from);
                return (replies, Next::Go);
            }
            (Some(None), _) => Some("not a cursor of this bridge"),
            (_, Err(why)) => why,
            (None, Ok(_)) => None,
        };
        if let Some(why) = resync {
            events::resumed(false);
            replies.push(
                ServerMessage::Error {
                    code: "resync",
                    message: format!("{why}: the snapshot follows"),
                }
                .json(),
            );
        }
        let devices = self.snapshot(&new, subscribed.published).await;
        let mut pages = devices.chunks(self.bridge.config.snapshot_page).peekable();
        if pages.peek().is_none() {
            replies.push(snapshot_page(&subscribed.cursor, &[], false));
        }
        while let Some(page) = pages.next() {
            let more = pages.peek().is_some();
            replies.push(snapshot_page(&subscribed.cursor, page, more));
        }
        (replies, Next::Go)
    }

    /// A `rate_limited` reply, which counts as a bad message: a client that keeps on is closed.
    fn limited(&mut self, limited: Limited, what: &str, per_s: u32) -> (Vec<String>, Next) {
        let whose = match limited {
            Limited::Connection => format!("{per_s} a second on a connection"),
            Limited::Tenant => "the tenant's share".to_string(),
        };
        events::rate_limited(limited == Limited::Connection);
        self.error("rate_limited", format!("too many {what}: {whose}"))
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
    async fn last_seen_now(&self, topics: &BTreeSet<Topic>) -> Option<String> {
        let ids = topics_of_devices(topics);
        let topics = topics.clone();
        let covered = move |d: &DeviceState| d.last_seen.is_some() && covers(&topics, d, false);
        let seen: Vec<Seen> = self
            .devices(ids, covered)
            .await
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

    /// The visible devices that `wanted` selects: looked up by id when the topics name only
    /// devices (`ids`) of one tenant, else from the store a page at a time, the first page here
    /// (a page is bounded work, and most snapshots are one), the rest on a blocking thread.
    async fn devices(
        &self,
        ids: Option<Vec<String>>,
        wanted: impl Fn(&DeviceState) -> bool + Send + 'static,
    ) -> Vec<DeviceState> {
        let store = Arc::clone(&self.bridge.store);
        let tenant = self.tenant.clone();
        if let (Some(ids), Some(tenant)) = (&ids, &tenant) {
            return ids
                .iter()
                .filter_map(|id| store.device(tenant, id))
                .filter(|d| wanted(d))
                .collect();
        }
        let page = self.bridge.config.snapshot_page;
        let (mut all, next) = store.page(tenant.as_deref(), None, page, &wanted);
        if next.is_some() {
            let rest = self
                .bridge
                .read(move || store.pages(tenant.as_deref(), next, page, wanted));
            all.extend(rest.await.unwrap_or_default());
        }
        all
    }

    /// The state of the visible devices that `topics` cover: from Redis when it is configured
    /// and has the first `published` events, else from memory.
    async fn snapshot(&self, topics: &BTreeSet<Topic>, published: u64) -> Vec<DeviceState> {
        if topics.is_empty() {
            return Vec::new();
        }
        let wanted = {
            let topics = topics.clone();
            move |d: &DeviceState| covers(&topics, d, true)
        };
        let ids = topics_of_devices(topics);
        if let Some(cache) = &self.bridge.cache {
            let devices = match (ids.clone(), &self.tenant) {
                (Some(ids), Some(tenant)) => {
                    Devices::Keys(ids.into_iter().map(|id| (tenant.clone(), id)).collect())
                }
                (_, None) => Devices::Tenants(Vec::new()),
                (_, Some(tenant)) => Devices::Tenants(vec![tenant.clone()]),
            };
            if let Some(mut held) = cache.snapshot(&devices, published, SNAPSHOT_WAIT).await {
                held.retain(|d| self.claims.sees(&d.tenant_id) && wanted(d));
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
        self.devices(ids, wanted).await
    }

    /// An `error` reply; past `max_errors` of them the connection closes.
    fn error(&mut self, code: &str, message: String) -> (Vec<String>, Next) {
        self.errors += 1;
        events::client_error();
        let reply = ServerMessage::Error { code, message }.json();
        if self.errors > self.bridge.config.max_errors {
            events::dropped(Dropped::Errors);
            let last = ServerMessage::Error {
                code: "limit",
                message: "too many bad or rate-limited messages".into(),
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
        events::client_gone(self.topics.len());
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

/// Whether `topics` cover device `d`: by its id, its class or its tenant, and, when
/// `every_kind`, through a kind of event any device has (status, anomalies, aggregates, last
/// seen); otherwise only `last_seen` stands for every device.
fn covers(topics: &BTreeSet<Topic>, d: &DeviceState, every_kind: bool) -> bool {
    topics.iter().any(|t| match t {
        Topic::Device(id) => d.device_id == *id,
        Topic::Class(class) => d.device_class.as_deref() == Some(class),
        Topic::Tenant | Topic::LastSeen => true,
        Topic::Status | Topic::Anomalies | Topic::Aggregates => every_kind,
    })
}

/// The device ids `topics` name, if they name nothing but devices.
fn topics_of_devices(topics: &BTreeSet<Topic>) -> Option<Vec<String>> {
    topics
        .iter()
        .map(|t| match t {
            Topic::Device(id) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// One page of a snapshot.
fn snapshot_page(cursor: &str, devices: &[DeviceState], more: bool) -> String {
    ServerMessage::Snapshot {
        cursor,
        devices,
        more,
    }
    .json()
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
    /// The `next` of the previous page.
    after: Option<String>,
    limit: Option<usize>,
}

/// A 429 for a token past `bridge.api_requests_per_s`.
fn api_limited(b: &Bridge) -> Response {
    events::refused(Refusal::ApiRate);
    refuse(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "at most {} requests a second per token",
            b.config.api_requests_per_s
        ),
    )
}

async fn devices(
    Authorized(claims, token): Authorized,
    State(b): State<Arc<Bridge>>,
    Query(q): Query<DeviceQuery>,
) -> Response {
    if !b.rates.api(&token) {
        return api_limited(&b);
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1_000);
    let after: Option<DeviceKey> = match q.after.as_deref().map(key::decode) {
        None => None,
        Some(Some(after)) => Some(after),
        Some(None) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "`after` is not a `next` of this endpoint".into(),
            );
        }
    };
    let tenant = (!claims.is_admin()).then_some(claims.tenant);
    // One page: bounded work (see `Store::page`), done here.
    let (page, next) = b.store.page(tenant.as_deref(), after.as_ref(), limit, |d| {
        q.status
            .as_ref()
            .is_none_or(|s| d.status.as_ref() == Some(s))
            && q.class
                .as_ref()
                .is_none_or(|c| d.device_class.as_ref() == Some(c))
    });
    let next = next.map(|(t, d)| key::encode(&t, &d));
    Json(serde_json::json!({ "devices": page, "next": next })).into_response()
}

async fn device(
    Authorized(claims, token): Authorized,
    State(b): State<Arc<Bridge>>,
    Path(id): Path<String>,
) -> Response {
    if !b.rates.api(&token) {
        return api_limited(&b);
    }
    let found = if claims.is_admin() {
        // Admins name a device by its id alone: the first tenant's that has one.
        let store = Arc::clone(&b.store);
        let (wanted, page) = (id.clone(), b.config.snapshot_page);
        b.read(move || store.pages(None, None, page, |d| d.device_id == wanted))
            .await
            .and_then(|found| found.into_iter().next())
    } else {
        b.store.device(&claims.tenant, &id)
    };
    match found {
        Some(d) => Json(d).into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no device {id}"),
        ),
    }
}
