//! Who gets which event: every connection registers here with its tenant, its topics and a
//! bounded queue. The feed publishes each event once; the hub offers it to the connections of the
//! event's tenant (and to admins) whose topics want it. A connection whose queue is full is
//! struck off at once (its queue closes; it is told `slow_consumer` once it has sent what was
//! queued, or after 5 s if its socket takes nothing): publishing never waits, so one stuck
//! client slows nobody else down.
//!
//! The hub also keeps the last `resume_events` events, in the order published, so that a client
//! that comes back with a cursor gets what it missed (see [`crate::cursor`]).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use metrics::counter;
use tokio::sync::mpsc;

use crate::cursor::Position;
use crate::feed::{Event, Kind};
use crate::protocol::Topic;

/// The key admins are filed under: they see every tenant. No tenant id can be it (a token
/// without a tenant is refused, and ids hold no control characters).
const ADMINS: &str = "\u{0}admins";

struct Client {
    topics: BTreeSet<Topic>,
    queue: mpsc::Sender<Arc<Event>>,
    slow: Arc<AtomicBool>,
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
    })
}

/// The registered connections, by tenant.
pub struct Hub {
    queue: usize,
    next: AtomicU64,
    clients: RwLock<HashMap<String, HashMap<u64, Client>>>,
    recent: Mutex<Recent>,
}

/// The events a resuming client may be owed.
struct Recent {
    capacity: usize,
    events: VecDeque<Arc<Event>>,
    /// Per partition, the offset from which `events` holds every record: the feed's first offset,
    /// raised as events fall off the end.
    floor: Position,
    /// The position after the last event published.
    cursor: Arc<str>,
    /// Events published so far.
    published: u64,
}

/// What a client that just subscribed is owed before its live events.
#[derive(Debug)]
pub enum Owed {
    /// The state of the devices its topics cover (it gave no cursor).
    Snapshot,
    /// The events after its cursor (it gave one, and this bridge still holds them), oldest first.
    Missed(Vec<Arc<Event>>),
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
    /// Its tenant key (`tenant`, or the admins' key).
    key: String,
    /// Its events, in order.
    pub events: mpsc::Receiver<Arc<Event>>,
    /// Set when its queue overflowed.
    pub slow: Arc<AtomicBool>,
}

impl Hub {
    /// A hub whose connections may each have `queue` events waiting and which keeps the last
    /// `recent` events for clients that resume.
    pub fn new(queue: usize, recent: usize) -> Hub {
        Hub {
            queue: queue.max(1),
            next: AtomicU64::new(0),
            clients: RwLock::new(HashMap::new()),
            recent: Mutex::new(Recent {
                capacity: recent,
                events: VecDeque::new(),
                floor: Position::default(),
                cursor: Position::default().encode().into(),
                published: 0,
            }),
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
        let key = if admin { ADMINS } else { tenant }.to_string();
        let client = Client {
            topics: BTreeSet::new(),
            queue,
            slow: Arc::clone(&slow),
        };
        self.write()
            .entry(key.clone())
            .or_default()
            .insert(id, client);
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
            .get_mut(&r.key)
            .and_then(|m| m.get_mut(&r.id))
            .map(|c| std::mem::replace(&mut c.topics, topics.clone()))
            .unwrap_or_default();
        drop(clients);
        let owed = match resume {
            None => Owed::Snapshot,
            Some(from) => recent.missed(from, self.queue, |e| {
                (r.key == ADMINS || e.tenant == r.key) && wants(topics, e) && !wants(&old, e)
            }),
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
        if let Some(m) = clients.get_mut(&r.key) {
            m.remove(&r.id);
            if m.is_empty() {
                clients.remove(&r.key);
            }
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
            let keys = if e.tenant == ADMINS {
                vec![ADMINS]
            } else {
                vec![e.tenant.as_str(), ADMINS]
            };
            for key in keys {
                for (id, c) in clients.get(key).into_iter().flatten() {
                    if wants(&c.topics, e)
                        && let Err(mpsc::error::TrySendError::Full(_)) =
                            c.queue.try_send(Arc::clone(e))
                    {
                        c.slow.store(true, Ordering::Relaxed);
                        full.push((key.to_string(), *id));
                    }
                }
            }
            drop(recent);
        }
        if !full.is_empty() {
            let mut clients = self.write();
            for (key, id) in full {
                counter!("fleetpulse_bridge_drops_total", "reason" => "slow_consumer").increment(1);
                // Dropping its sender closes the queue: the connection drains it and ends.
                if let Some(m) = clients.get_mut(&key) {
                    m.remove(&id);
                }
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, HashMap<u64, Client>>> {
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
        r.events.is_empty().then(|| Arc::clone(&recent.cursor))
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Recent {
    fn push(&mut self, e: &Arc<Event>) {
        self.published += 1;
        self.cursor = Arc::clone(&e.cursor);
        if self.capacity == 0 {
            let s = e.source;
            self.floor.set(s.topic, s.partition, s.offset + 1);
            return;
        }
        if self.events.len() == self.capacity
            && let Some(old) = self.events.pop_front()
        {
            let s = old.source;
            self.floor.set(s.topic, s.partition, s.offset + 1);
        }
        self.events.push_back(Arc::clone(e));
    }

    /// The held events after `from` that `wanted` selects, if nothing after `from` has fallen
    /// off (or was never read).
    fn missed(&self, from: &Position, limit: usize, wanted: impl Fn(&Event) -> bool) -> Owed {
        if self
            .floor
            .partitions()
            .any(|(topic, partition, floor)| from.next(topic, partition) < floor)
        {
            return Owed::Resync("the cursor is older than the events this bridge holds");
        }
        let mut missed = Vec::new();
        for e in self
            .events
            .iter()
            .filter(|e| from.owes(e.source) && wanted(e))
        {
            // More than a client may have waiting would strike it off as it resumes.
            if missed.len() == limit {
                return Owed::Resync("more events were missed than a client may have waiting");
            }
            missed.push(Arc::clone(e));
        }
        Owed::Missed(missed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tenant: &str, kind: Kind) -> Arc<Event> {
        Arc::new(Event {
            tenant: tenant.into(),
            device: "d".into(),
            class: None,
            kind,
            json: "{}".into(),
            cursor: "".into(),
            source: crate::cursor::Source {
                topic: 0,
                partition: 0,
                offset: 0,
            },
            read_at: std::time::Instant::now(),
        })
    }

    #[test]
    fn tenants_topics_and_a_full_queue() {
        let hub = Hub::new(2, 0);
        let mut t1 = hub.register("t1", false);
        let mut admin = hub.register("ops", true);
        let everything: BTreeSet<Topic> = [Topic::Tenant].into();
        hub.subscribe(&t1, &[Topic::Status].into(), None);
        hub.subscribe(&admin, &everything, None);
        hub.publish(&event("t2", Kind::Status));
        hub.publish(&event("t1", Kind::Aggregate));
        hub.publish(&event("t1", Kind::Status));
        assert_eq!(
            t1.events.try_recv().map(|e| e.tenant.clone()).ok(),
            Some("t1".into())
        );
        assert!(
            t1.events.try_recv().is_err(),
            "t2's and the aggregate did not come"
        );
        // The admin got all three but has room for two: struck off, its queue closed.
        assert!(admin.slow.load(Ordering::Relaxed));
        assert_eq!(
            admin.events.try_recv().map(|e| e.tenant.clone()).ok(),
            Some("t2".into())
        );
        assert!(admin.events.try_recv().is_ok());
        assert!(matches!(
            admin.events.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        hub.leave(&t1);
        hub.publish(&event("t1", Kind::Status));
        assert!(!t1.slow.load(Ordering::Relaxed));
    }

    fn at(tenant: &str, partition: i32, offset: i64, after: &mut Position) -> Arc<Event> {
        after.set(0, partition, offset + 1);
        Arc::new(Event {
            tenant: tenant.into(),
            device: format!("d{partition}"),
            class: None,
            kind: Kind::Status,
            json: format!("{partition}/{offset}").into(),
            cursor: after.encode().into(),
            source: crate::cursor::Source {
                topic: 0,
                partition,
                offset,
            },
            read_at: std::time::Instant::now(),
        })
    }

    #[test]
    fn a_cursor_gets_what_came_after_it_or_a_resync() {
        let hub = Hub::new(100, 4);
        let mut position = Position::default();
        position.set(0, 0, 5);
        position.set(0, 1, 0);
        hub.start_at(&position);
        let mut cursors = Vec::new();
        for (tenant, p, o) in [("t1", 0, 5), ("t1", 1, 0), ("t2", 1, 1), ("t1", 0, 6)] {
            let e = at(tenant, p, o, &mut position);
            hub.publish(&e);
            cursors.push(e.cursor.to_string());
        }
        let r = hub.register("t1", false);
        let topics: BTreeSet<Topic> = [Topic::Tenant].into();
        // Seen up to and with the first event: owed t1's second and fourth.
        let from = Position::decode(&cursors[0]).unwrap_or_default();
        let s = hub.subscribe(&r, &topics, Some(&from));
        assert_eq!(s.cursor.as_ref(), cursors[3]);
        let Owed::Missed(missed) = s.owed else {
            panic!("{:?}", s.owed)
        };
        let got: Vec<&str> = missed.iter().map(|e| e.json.as_str()).collect();
        assert_eq!(got, ["1/0", "0/6"]);
        // Topics it already had are live, not owed again.
        let again = hub.subscribe(&r, &topics, Some(&from));
        assert!(matches!(again.owed, Owed::Missed(m) if m.is_empty()));
        // Before where the feed started: never read here.
        let r2 = hub.register("t1", false);
        let mut early = from.clone();
        early.set(0, 0, 4);
        let s = hub.subscribe(&r2, &topics, Some(&early));
        assert!(matches!(s.owed, Owed::Resync(_)), "{:?}", s.owed);
        // One more event pushes 0/5 out: the first cursor still works (it saw 0/5), the
        // starting position does not.
        hub.publish(&at("t1", 1, 2, &mut position));
        let r3 = hub.register("t1", false);
        let s = hub.subscribe(&r3, &topics, Some(&from));
        assert!(
            matches!(s.owed, Owed::Missed(ref m) if m.len() == 3),
            "{:?}",
            s.owed
        );
        let r4 = hub.register("t1", false);
        let mut start = Position::default();
        start.set(0, 0, 5);
        let s = hub.subscribe(&r4, &topics, Some(&start));
        assert!(matches!(s.owed, Owed::Resync(_)), "{:?}", s.owed);
    }
}
