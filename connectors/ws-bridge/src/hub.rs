//! Who gets which event: every connection registers here with its tenant, its topics and a
//! bounded queue. The feed publishes each event once; the hub offers it to the connections of the
//! event's tenant (and to admins) whose topics want it. A connection whose queue is full is
//! struck off at once (its queue closes; it is told `slow_consumer` once it has sent what was
//! queued, or after 5 s if its socket takes nothing): publishing never waits, so one stuck
//! client slows nobody else down.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use metrics::counter;
use tokio::sync::mpsc;

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
    /// A hub whose connections may each have `queue` events waiting.
    pub fn new(queue: usize) -> Hub {
        Hub {
            queue: queue.max(1),
            next: AtomicU64::new(0),
            clients: RwLock::new(HashMap::new()),
        }
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

    /// Sets the topics of a registered connection.
    pub fn subscribe(&self, r: &Registration, topics: &BTreeSet<Topic>) {
        if let Some(c) = self.write().get_mut(&r.key).and_then(|m| m.get_mut(&r.id)) {
            c.topics.clone_from(topics);
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
            read_at: std::time::Instant::now(),
        })
    }

    #[test]
    fn tenants_topics_and_a_full_queue() {
        let hub = Hub::new(2);
        let mut t1 = hub.register("t1", false);
        let mut admin = hub.register("ops", true);
        let everything: BTreeSet<Topic> = [Topic::Tenant].into();
        hub.subscribe(&t1, &[Topic::Status].into());
        hub.subscribe(&admin, &everything);
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
}
