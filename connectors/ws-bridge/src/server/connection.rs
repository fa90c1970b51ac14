//! One WebSocket client, as a state machine: the task that serves it from upgrade to close.
//! It answers the client's messages (subscribe, unsubscribe, ping) with what it is owed, sends
//! the events the [`Hub`](crate::hub::Hub) queues it, beats the heartbeat, and closes on the
//! token's expiry, on silence, on too many bad messages, or when the client falls behind: a
//! client whose queue overflows is told `slow_consumer` and closed, and so is one whose socket
//! does not take a message within [`SEND_TIMEOUT`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};

use super::{Bridge, now_ms};
use crate::auth::Claims;
use crate::cursor::Position;
use crate::events::{self, Dropped};
use crate::hub::{Owed, Registration};
use crate::limits::Slot;
use crate::protocol::{ClientMessage, ServerMessage, Topic};
use crate::rates::{self, Limited};

/// How long a client's socket may take to accept one message before it counts as too slow.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// One client: who it is and what it subscribed to.
pub(super) struct Connection {
    pub(super) bridge: Arc<Bridge>,
    pub(super) claims: Claims,
    pub(super) topics: BTreeSet<Topic>,
    errors: u32,
    registration: Registration,
    /// The cursor it resumed from: live events before it were seen elsewhere.
    seen: Option<Position>,
    /// Its place under the per-address and per-tenant caps, given back when it ends.
    _slot: Slot,
    /// Its own rate-limit buckets.
    rates: rates::Connection,
    /// Its tenant for the tenants' buckets; `None` for an admin.
    pub(super) tenant: rates::Tenant,
}

/// What to do after a client message.
enum Next {
    Go,
    Close,
}

impl Connection {
    pub(super) fn new(bridge: Arc<Bridge>, claims: Claims, slot: Slot) -> Connection {
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

    pub(super) async fn serve(mut self, mut socket: WebSocket) {
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
            role: self.claims.role.as_str(),
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
        replies.extend(
            self.snapshot_pages(&new, subscribed.published, &subscribed.cursor)
                .await,
        );
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
