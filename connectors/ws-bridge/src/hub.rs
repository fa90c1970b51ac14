//! Who gets which event: every connection registers here with its tenant, its topics and a
//! bounded queue. The feed publishes each event once; the hub offers it to the connections of the
//! event's tenant (and to admins) whose topics want it. A connection whose queue is full is
//! struck off at once (its queue closes; it is told `slow_consumer` once it has sent what was
//! queued, or after 5 s if its socket takes nothing): publishing never waits, so one stuck
//! client slows nobody else down.
//!
//! The hub also keeps the last `resume_events` events (at most `resume_bytes` of them), in the
//! order published, so that a client that comes back with a cursor gets what it missed (see
//! [`crate::cursor`]). They are held in sealed chunks: a subscription takes the chunks (a copy of
//! a few pointers) under the lock publishing needs, and looks for its events after letting it go.
//!
//! Last-seen times are state, not events: each superseded by the next, one per device every few
//! seconds (the most frequent record by far). The hub keeps the latest per device that moved and,
//! every `last_seen_every`, hands each connection one `last_seen` message with those its topics
//! cover, queued like an event but without a cursor and outside the resume ring: they never
//! crowd status changes and anomalies out of a client's queue or of the ring.

mod recent;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::cursor::Position;
use crate::event::{Event, Kind};
use crate::events::{self, Dropped};
use crate::protocol::{Seen, ServerMessage, Topic};
use crate::store::DeviceKey;
use recent::Recent;
pub use recent::Replay;

struct Client {
    topics: BTreeSet<Topic>,
    queue: mpsc::Sender<Arc<Event>>,
    slow: Arc<AtomicBool>,
}

type Connections = HashMap<u64, Client>;

/// The registered connections: each tenant's, and the admins' apart, where no tenant id can name
/// them.
#[derive(Default)]
struct Clients {
    tenants: HashMap<String, Connections>,
    admins: Connections,
}

impl Clients {
    fn of(&mut self, key: &Option<String>) -> Option<&mut Connections> {
        match key {
            Some(tenant) => self.tenants.get_mut(tenant),
            None => Some(&mut self.admins),
        }
    }
}

/// Whether `topics` cover `e`.
pub fn wants(topics: &BTreeSet<Topic>, e: &Event) -> bool {
    topics.iter().any(|t| match t {
        Topic::Device(id) => e.device == *id,
        Topic::Class(class) => e.class.as_deref() == Some(class),
        Topic::Tenant => true,
        Topic::Status => e.kind == Kind::Status,
        Topic::Anomalies => e.kind == Kind::Anomaly,
        Topic::Aggregates => e.kind == Kind::Aggregate,
        Topic::LastSeen => e.kind == Kind::LastSeen,
    })
}

/// Whether `topics` cover every last-seen time of the tenant (not only some devices').
fn wants_every_last_seen(topics: &BTreeSet<Topic>) -> bool {
    topics.contains(&Topic::Tenant) || topics.contains(&Topic::LastSeen)
}

/// A `last_seen` message of `devices`, for connections of `tenant` (empty: the admins).
fn last_seen_event(tenant: &str, devices: Vec<&Seen>) -> Arc<Event> {
    Arc::new(Event {
        tenant: tenant.to_string(),
        device: String::new(),
        class: None,
        kind: Kind::LastSeen,
        json: ServerMessage::LastSeen { devices }.json().into(),
        cursor: Arc::from(""),
        source: None,
        read_at: std::time::Instant::now(),
    })
}

/// The registered connections, by tenant.
pub struct Hub {
    queue: usize,
    next: AtomicU64,
    clients: RwLock<Clients>,
    recent: Mutex<Recent>,
    /// The latest last-seen time of each device that moved since the last `last_seen` messages.
    seen: Mutex<HashMap<DeviceKey, Seen>>,
}

/// What a client that just subscribed is owed before its live events.
#[derive(Debug)]
pub enum Owed {
    /// The state of the devices its topics cover (it gave no cursor).
    Snapshot,
    /// The events after its cursor (it gave one, and this bridge still holds them): found by
    /// [`Replay::scan`].
    Missed(Replay),
    /// It gave a cursor this bridge cannot serve from: a snapshot instead, with the reason.
    Resync(&'static str),
}

/// The outcome of [`Hub::subscribe`].
#[derive(Debug)]
pub struct Subscribed {
    /// The position after the last event published before the subscription.
    pub cursor: Arc<str>,
    /// How many events had been published then.
    pub published: u64,
    /// What to send before the live events.
    pub owed: Owed,
}

/// A connection's end of the hub: its events, and how it learns it was struck off.
pub struct Registration {
    /// The connection's id in the hub.
    pub id: u64,
    /// Its tenant; `None` for an admin.
    key: Option<String>,
    /// Its events, in order.
    pub events: mpsc::Receiver<Arc<Event>>,
    /// Set when its queue overflowed.
    pub slow: Arc<AtomicBool>,
}

impl Hub {
    /// A hub whose connections may each have `queue` events waiting and which keeps the last
    /// `recent` events, taking at most `recent_bytes`, for clients that resume.
    pub fn new(queue: usize, recent: usize, recent_bytes: usize) -> Hub {
        let (held_gauge, bytes_gauge) = events::resume_gauges();
        Hub {
            queue: queue.max(1),
            next: AtomicU64::new(0),
            clients: RwLock::new(Clients::default()),
            recent: Mutex::new(Recent {
                capacity: recent,
                max_bytes: recent_bytes,
                // Small enough that the ring holds nearly `recent` events, large enough that a
                // subscription copies few pointers.
                chunk: (recent / 16).clamp(1, 1_024),
                sealed: VecDeque::new(),
                skip: 0,
                open: Vec::new(),
                held: 0,
                bytes: 0,
                held_gauge,
                bytes_gauge,
                floor: Position::default(),
                cursor: Position::default().encode().into(),
                published: 0,
            }),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Where the feed starts reading: events before it were never seen by this bridge.
    pub fn start_at(&self, position: &Position) {
        let _clients = self.write();
        let mut recent = self.recent();
        recent.floor = position.clone();
        recent.cursor = position.encode().into();
    }

    /// Registers a connection of `tenant` (every tenant for an admin), subscribed to nothing yet.
    pub fn register(&self, tenant: &str, admin: bool) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (queue, events) = mpsc::channel(self.queue);
        let slow = Arc::new(AtomicBool::new(false));
        let key = (!admin).then(|| tenant.to_string());
        let client = Client {
            topics: BTreeSet::new(),
            queue,
            slow: Arc::clone(&slow),
        };
        let mut clients = self.write();
        match &key {
            Some(tenant) => clients.tenants.entry(tenant.clone()).or_default(),
            None => &mut clients.admins,
        }
        .insert(id, client);
        drop(clients);
        Registration {
            id,
            key,
            events,
            slow,
        }
    }

    /// Sets the topics of a registered connection. Events published from here on are queued to
    /// it; with `resume`, the held events after that position that the topics it did not have
    /// before want are handed back (the live queue then goes on exactly where they end).
    pub fn subscribe(
        &self,
        r: &Registration,
        topics: &BTreeSet<Topic>,
        resume: Option<&Position>,
    ) -> Subscribed {
        let mut clients = self.write();
        let recent = self.recent();
        let old = clients
            .of(&r.key)
            .and_then(|m| m.get_mut(&r.id))
            .map(|c| std::mem::replace(&mut c.topics, topics.clone()))
            .unwrap_or_default();
        drop(clients);
        let owed = match resume {
            None => Owed::Snapshot,
            Some(from) => match recent.chunks_after(from) {
                Err(why) => Owed::Resync(why),
                Ok(chunks) => Owed::Missed(Replay {
                    chunks,
                    from: from.clone(),
                    tenant: r.key.clone(),
                    topics: topics.clone(),
                    old,
                    limit: self.queue,
                }),
            },
        };
        Subscribed {
            cursor: Arc::clone(&recent.cursor),
            published: recent.published,
            owed,
        }
    }

    /// Removes a connection.
    pub fn leave(&self, r: &Registration) {
        let mut clients = self.write();
        if let Some(m) = clients.of(&r.key) {
            m.remove(&r.id);
        }
        if let Some(tenant) = &r.key
            && clients.tenants.get(tenant).is_some_and(HashMap::is_empty)
        {
            clients.tenants.remove(tenant);
        }
    }

    /// Offers `e` to every connection that may see it and wants it; strikes off those whose
    /// queue is full.
    pub fn publish(&self, e: &Arc<Event>) {
        let mut full = Vec::new();
        {
            let clients = self.clients.read().unwrap_or_else(|p| p.into_inner());
            // Under the read lock: a subscription (write lock) sees the event either held here
            // or queued to it, never neither nor both. `recent` stays locked until it is queued
            // everywhere, so a connection that finds its queue empty under that lock has every
            // event up to the cursor held there (see `Hub::quiet_cursor`).
            let mut recent = self.recent();
            recent.push(e);
            let tenant = clients.tenants.get(&e.tenant).into_iter().flatten();
            let admins = clients.admins.iter();
            for (key, (id, c)) in tenant
                .map(|c| (Some(&e.tenant), c))
                .chain(admins.map(|c| (None, c)))
            {
                if wants(&c.topics, e)
                    && let Err(mpsc::error::TrySendError::Full(_)) = c.queue.try_send(Arc::clone(e))
                {
                    c.slow.store(true, Ordering::Relaxed);
                    full.push((key.cloned(), *id));
                }
            }
            drop(recent);
        }
        self.strike_off(full);
    }

    /// Notes a device's new last-seen time for the next `last_seen` messages; dropped at once if
    /// no connection of its tenant (nor an admin) is registered: one that subscribes later gets
    /// it from its snapshot, which reads the store, updated before this.
    pub fn note_last_seen(&self, s: Seen) {
        {
            let clients = self.clients.read().unwrap_or_else(|p| p.into_inner());
            if !clients.tenants.contains_key(&s.tenant_id) && clients.admins.is_empty() {
                return;
            }
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let key = (s.tenant_id.clone(), s.device_id.clone());
        match seen.get_mut(&key) {
            Some(held) if held.last_seen >= s.last_seen => {}
            Some(held) => *held = s,
            None => {
                seen.insert(key, s);
            }
        }
    }

    /// Hands every connection a `last_seen` message with the noted times its topics cover (one
    /// message per tenant, serialized once, for connections that take all of the tenant's);
    /// strikes off those whose queue is full.
    pub fn send_last_seen(&self) {
        let noted = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()));
        if noted.is_empty() {
            return;
        }
        let mut by_tenant: HashMap<&str, Vec<&Seen>> = HashMap::new();
        for s in noted.values() {
            by_tenant.entry(&s.tenant_id).or_default().push(s);
        }
        let everyone: Vec<&Seen> = noted.values().collect();
        let mut full = Vec::new();
        {
            let clients = self.clients.read().unwrap_or_else(|p| p.into_inner());
            let tenants = clients.tenants.iter().map(|(t, c)| (Some(t), c));
            for (key, connections) in tenants.chain([(None, &clients.admins)]) {
                let entries = match key {
                    None => &everyone,
                    Some(tenant) => match by_tenant.get(tenant.as_str()) {
                        Some(entries) => entries,
                        None => continue,
                    },
                };
                let tenant = key.map_or("", String::as_str);
                let mut shared = None;
                let mut index = None;
                for (id, c) in connections {
                    let event = if wants_every_last_seen(&c.topics) {
                        Arc::clone(
                            shared.get_or_insert_with(|| last_seen_event(tenant, entries.clone())),
                        )
                    } else {
                        let index = index.get_or_insert_with(|| Index::new(entries));
                        let mine = index.covered(&c.topics);
                        if mine.is_empty() {
                            continue;
                        }
                        last_seen_event(tenant, mine)
                    };
                    if let Err(mpsc::error::TrySendError::Full(_)) = c.queue.try_send(event) {
                        c.slow.store(true, Ordering::Relaxed);
                        full.push((key.cloned(), *id));
                    }
                }
            }
        }
        self.strike_off(full);
    }

    /// Sends the `last_seen` messages every `every`, until `stop`.
    pub async fn send_last_seen_every(&self, every: Duration, stop: &AtomicBool) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            self.send_last_seen();
        }
    }

    fn strike_off(&self, full: Vec<(Option<String>, u64)>) {
        if full.is_empty() {
            return;
        }
        let mut clients = self.write();
        for (key, id) in full {
            events::dropped(Dropped::SlowConsumer);
            // Dropping its sender closes the queue: the connection drains it and ends.
            if let Some(m) = clients.of(&key) {
                m.remove(&id);
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Clients> {
        self.clients.write().unwrap_or_else(|p| p.into_inner())
    }

    /// How many events have been published.
    pub fn published(&self) -> u64 {
        self.recent().published
    }

    /// The cursor of the last event published, if the connection has no event waiting: it has
    /// then been sent every event up to there that it wants, and a quiet client (one device, the
    /// anomalies) can resume from there instead of from its last event, long gone from the ring.
    pub fn quiet_cursor(&self, r: &Registration) -> Option<Arc<str>> {
        let recent = self.recent();
        // Struck off, its queue drained: it was not sent what came after, whatever is waiting.
        (r.events.is_empty() && !r.slow.load(Ordering::Relaxed)).then(|| Arc::clone(&recent.cursor))
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The noted last-seen times of one tenant (or all, for admins) by device and by class, built
/// only when a connection takes some devices' times and not all: looking each of its topics up
/// costs what it receives, not what the tenant has.
struct Index<'a> {
    by_device: HashMap<&'a str, Vec<usize>>,
    by_class: HashMap<&'a str, Vec<usize>>,
    entries: &'a [&'a Seen],
}

impl<'a> Index<'a> {
    fn new(entries: &'a [&'a Seen]) -> Index<'a> {
        let mut by_device: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut by_class: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, s) in entries.iter().enumerate() {
            by_device.entry(&s.device_id).or_default().push(i);
            if let Some(class) = &s.device_class {
                by_class.entry(class).or_default().push(i);
            }
        }
        Index {
            by_device,
            by_class,
            entries,
        }
    }

    /// The entries `topics` cover through device and class topics, each once.
    fn covered(&self, topics: &BTreeSet<Topic>) -> Vec<&'a Seen> {
        let mut at: Vec<usize> = topics
            .iter()
            .filter_map(|t| match t {
                Topic::Device(id) => self.by_device.get(id.as_str()),
                Topic::Class(class) => self.by_class.get(class.as_str()),
                _ => None,
            })
            .flatten()
            .copied()
            .collect();
        at.sort_unstable();
        at.dedup();
        at.into_iter()
            .filter_map(|i| self.entries.get(i).copied())
            .collect()
    }
}

#[cfg(test)]
mod tests;
