//! The JSON both sides speak over `/ws` (docs/websocket-protocol.md has examples): what a client
//! may send, what the server sends, and the topics a client subscribes to.

use serde::{Deserialize, Serialize};

use crate::store::DeviceState;

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Start receiving `topics` (a snapshot of their devices first).
    Subscribe {
        /// `devices.<id>`, `classes.<class>`, `tenant`, `status`, `anomalies`, `aggregates`,
        /// `last_seen`.
        topics: Vec<String>,
        /// The last cursor the client saw, to resume from.
        #[serde(default)]
        cursor: Option<String>,
    },
    /// Stop receiving `topics`.
    Unsubscribe {
        /// As subscribed.
        topics: Vec<String>,
    },
    /// Are you there? Answered with a `heartbeat`.
    Ping,
}

/// A message from the server. Events (`device_status`, `aggregate`, `anomaly`) are serialized once
/// by the feed and sent to every client as they are; see [`crate::event::Event`]. `last_seen` is
/// state, not an event: the hub batches the times that moved, without a cursor.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// The connection is open; who it belongs to.
    Connected {
        /// The token's subject.
        subject: &'a str,
        /// The token's tenant.
        tenant: &'a str,
        /// The token's role.
        role: &'a str,
        /// How often the server sends `heartbeat`, ms.
        heartbeat_ms: u64,
    },
    /// The topics now subscribed, all of them.
    Subscribed {
        /// Every topic of the connection.
        topics: Vec<String>,
    },
    /// The current state of the devices the new topics cover: in pages of at most
    /// `bridge.snapshot_page` devices, each but the last marked `more`.
    Snapshot {
        /// Where the live events that follow begin: a client that has seen none of them yet
        /// resumes from here.
        cursor: &'a str,
        /// One entry per device.
        devices: &'a [DeviceState],
        /// More pages of this snapshot follow.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// Devices' latest reading times that moved since the last such message (every
    /// `bridge.last_seen_every_ms`), or, after a resume, those of the devices the new topics
    /// cover. No cursor: each supersedes the last, and a client keeps the latest per device.
    LastSeen {
        /// One entry per device.
        devices: Vec<&'a Seen>,
    },
    /// The server is alive (every `heartbeat_ms`, and in answer to `ping`).
    Heartbeat {
        /// Server time, ms since the epoch.
        ts: u64,
        /// When the client has been sent everything up to it: where it may resume from.
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<&'a str>,
    },
    /// Something went wrong (docs/websocket-protocol.md says which codes close the connection).
    Error {
        /// `bad_message`, `bad_topic`, `limit`, `rate_limited`, `resync`, `slow_consumer`,
        /// `timeout`, `unauthorized`, `not_found`.
        code: &'a str,
        /// For people.
        message: String,
    },
}

/// One device's last-seen time, as a `last_seen` message carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// Tenant.
    pub tenant_id: String,
    /// Device.
    pub device_id: String,
    /// Device class, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    /// The device's latest reading, ms.
    pub last_seen: i64,
}

impl ServerMessage<'_> {
    /// The message as JSON text.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What a subscription covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Every event of one device.
    Device(String),
    /// Every event of the devices of one class.
    Class(String),
    /// Every event of the tenant.
    Tenant,
    /// Status transitions.
    Status,
    /// Anomalies.
    Anomalies,
    /// Window aggregates.
    Aggregates,
    /// Last-seen times.
    LastSeen,
}

impl Topic {
    /// Reads `devices.<id>`, `classes.<class>`, `tenant`, `status`, `anomalies`, `aggregates`,
    /// `last_seen`.
    pub fn parse(text: &str) -> Option<Topic> {
        match text {
            "tenant" => Some(Topic::Tenant),
            "status" => Some(Topic::Status),
            "anomalies" => Some(Topic::Anomalies),
            "aggregates" => Some(Topic::Aggregates),
            "last_seen" => Some(Topic::LastSeen),
            _ => match text.split_once('.') {
                Some(("devices", id)) if !id.is_empty() => Some(Topic::Device(id.into())),
                Some(("classes", class)) if !class.is_empty() => Some(Topic::Class(class.into())),
                _ => None,
            },
        }
    }

    /// The topic as a client writes it.
    pub fn name(&self) -> String {
        match self {
            Topic::Device(id) => format!("devices.{id}"),
            Topic::Class(class) => format!("classes.{class}"),
            Topic::Tenant => "tenant".into(),
            Topic::Status => "status".into(),
            Topic::Anomalies => "anomalies".into(),
            Topic::Aggregates => "aggregates".into(),
            Topic::LastSeen => "last_seen".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_and_junk_does_not() {
        let m: Result<ClientMessage, _> =
            serde_json::from_str(r#"{"type":"subscribe","topics":["status","devices.d-1"]}"#);
        assert_eq!(
            m.ok(),
            Some(ClientMessage::Subscribe {
                topics: vec!["status".into(), "devices.d-1".into()],
                cursor: None
            })
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"ping"}"#).is_ok());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"shout"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>("[1,2]").is_err());
    }

    #[test]
    fn topics_parse_and_print_back() {
        for name in [
            "devices.d-1",
            "classes.sensor",
            "tenant",
            "status",
            "anomalies",
            "aggregates",
            "last_seen",
        ] {
            assert_eq!(Topic::parse(name).map(|t| t.name()), Some(name.to_string()));
        }
        assert_eq!(Topic::parse("devices."), None);
        assert_eq!(Topic::parse("everything"), None);
    }

    #[test]
    fn server_messages_carry_their_type() {
        let text = ServerMessage::Error {
            code: "bad_topic",
            message: "x".into(),
        }
        .json();
        assert_eq!(text, r#"{"type":"error","code":"bad_topic","message":"x"}"#);
        let seen = Seen {
            tenant_id: "t".into(),
            device_id: "d".into(),
            device_class: None,
            last_seen: 5,
        };
        let text = ServerMessage::LastSeen {
            devices: vec![&seen],
        }
        .json();
        assert_eq!(
            text,
            r#"{"type":"last_seen","devices":[{"tenant_id":"t","device_id":"d","last_seen":5}]}"#
        );
    }
}
