//! What the feed publishes and connections send: one derived record as an [`Event`], its
//! server message already serialized once, shared by every connection that sends it.

use std::sync::Arc;

use schemas::{Anomaly, StatusTransition, WindowAggregate};
use serde::Serialize;

use crate::cursor::Source;

/// Which kind of record an event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A status transition (`device_status`).
    Status,
    /// A window aggregate (`aggregate`).
    Aggregate,
    /// An anomaly change (`anomaly`).
    Anomaly,
    /// Devices' last-seen times (`last_seen`), batched by the hub.
    LastSeen,
}

/// One derived record, ready to send.
#[derive(Debug, Clone)]
pub struct Event {
    /// Whose.
    pub tenant: String,
    /// Which device (empty for tenant-level anomalies).
    pub device: String,
    /// The device's class, when known.
    pub class: Option<String>,
    /// What it is.
    pub kind: Kind,
    /// The server message, JSON: shared, not copied, by every connection that sends it.
    pub json: axum::extract::ws::Utf8Bytes,
    /// The feed's position right after it, as in the JSON.
    pub cursor: Arc<str>,
    /// Where the record is; `None` for a `last_seen` batch, state outside the topics' sequence
    /// (no cursor, never replayed).
    pub source: Option<Source>,
    /// When the feed read it, for the lag from Kafka to the client.
    pub read_at: std::time::Instant,
}

#[derive(Serialize)]
struct Wire<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    cursor: &'a str,
    data: &'a T,
}

/// Whose a derived record is: what the hub routes its event by.
pub(crate) trait Owned {
    /// Tenant, device and (when known) the device's class.
    fn owner(&self) -> (&str, &str, &Option<String>);
}

/// The three records carry their owner in the same fields.
macro_rules! owned_by_their_fields {
    ($($record:ty),*) => {$(
        impl Owned for $record {
            fn owner(&self) -> (&str, &str, &Option<String>) {
                (&self.tenant_id, &self.device_id, &self.device_class)
            }
        }
    )*};
}

owned_by_their_fields!(StatusTransition, Anomaly, WindowAggregate);

/// The event of one record read from `source`, its JSON written once here.
pub(crate) fn event<T: Serialize + Owned>(
    kind: Kind,
    source: Source,
    cursor: Arc<str>,
    record: &T,
) -> Event {
    let (tenant, device, class) = record.owner();
    let name = match kind {
        Kind::Status => "device_status",
        Kind::Aggregate => "aggregate",
        Kind::Anomaly => "anomaly",
        Kind::LastSeen => "last_seen",
    };
    let json = serde_json::to_string(&Wire {
        kind: name,
        cursor: &cursor,
        data: record,
    })
    .unwrap_or_default();
    Event {
        tenant: tenant.into(),
        device: device.into(),
        class: class.clone(),
        kind,
        json: json.into(),
        cursor,
        source: Some(source),
        read_at: std::time::Instant::now(),
    }
}
