//! What a subscriber is owed on subscribing when no replay can serve it: the state of the
//! devices its topics cover, from Redis when it has caught up with the feed, else from memory,
//! in pages; and on a resume, the current last-seen times.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::connection::Connection;
use crate::cache::Devices;
use crate::protocol::{Seen, ServerMessage, Topic};
use crate::store::DeviceState;

/// How long a snapshot waits for Redis to have the events the subscriber will not get live;
/// after that it is taken from memory.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

impl Connection {
    /// The `snapshot` messages of the devices `topics` cover, in pages, at `cursor`: one empty
    /// page when there are none.
    pub(super) async fn snapshot_pages(
        &self,
        topics: &BTreeSet<Topic>,
        published: u64,
        cursor: &str,
    ) -> Vec<String> {
        let devices = self.snapshot(topics, published).await;
        let mut pages = devices.chunks(self.bridge.config.snapshot_page).peekable();
        if pages.peek().is_none() {
            return vec![snapshot_page(cursor, &[], false)];
        }
        let mut messages = Vec::new();
        while let Some(page) = pages.next() {
            messages.push(snapshot_page(cursor, page, pages.peek().is_some()));
        }
        messages
    }

    /// A `last_seen` message with the store's last-seen times of the visible devices whose
    /// times `topics` cover, if there are any.
    pub(super) async fn last_seen_now(&self, topics: &BTreeSet<Topic>) -> Option<String> {
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
