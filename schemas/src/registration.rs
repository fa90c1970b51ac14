//! The registration record: one device that should exist, for the compacted `device-inventory`
//! topic that `fleetpulse inventory apply` writes and the pipeline and the poller read. A device
//! registered and silent is reported (`never_seen`); a device that does not push is polled.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::InvalidField;
use crate::last_seen::device_key;
use crate::limits::Limits;
use crate::record::{Record, RecordKind};

/// The most labels a device may carry.
pub const MAX_LABELS: usize = 64;
/// The most bytes of a label's value (its name is an id: `Limits::id_bytes`).
pub const MAX_LABEL_VALUE_BYTES: usize = 1_024;
/// The longest expected reporting interval: the default device retention. A device expected
/// less often than that would be retired between two of its reports.
pub const MAX_EXPECTED_INTERVAL_MS: i64 = 30 * 24 * 3_600_000;
/// The most bytes of a poll target's URL.
pub const MAX_URL_BYTES: usize = 2_048;

/// A device that should exist. Field docs are in `schemas/avro/registration.avsc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Tenant that owns the device.
    pub tenant_id: String,
    /// Device id, as its telemetry names it.
    pub device_id: String,
    /// Device class.
    #[serde(default)]
    pub device_class: Option<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How often the device is expected to report, ms.
    #[serde(default)]
    pub expected_interval_ms: Option<i64>,
    /// False: known but not watched.
    #[serde(default = "enabled")]
    pub monitoring_enabled: bool,
    /// How `fleetpulse poll` checks the device, for devices that do not push.
    #[serde(default)]
    pub poll: Option<PollTarget>,
}

fn enabled() -> bool {
    true
}

/// How `fleetpulse poll` checks a device. Field docs are in `schemas/avro/registration.avsc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollTarget {
    /// `http://`, `https://` (a GET) or `tcp://host:port` (a connect).
    pub url: String,
    /// Telemetry field to JSON pointer into an HTTP response's body.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// How a poll target is probed, by its URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// A GET: status code and response time, fields from the JSON body.
    Http,
    /// A TCP connect: whether it opens, and how fast.
    Tcp,
}

impl PollTarget {
    /// The probe its URL asks for, if its scheme is one fleetpulse probes.
    pub fn kind(&self) -> Option<ProbeKind> {
        let scheme = self.url.split_once("://")?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "http" | "https" => Some(ProbeKind::Http),
            "tcp" => Some(ProbeKind::Tcp),
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), InvalidField> {
        let field = "poll.url";
        if self.url.len() > MAX_URL_BYTES {
            return Err(InvalidField::new(
                field,
                format!("{} bytes, over {MAX_URL_BYTES}", self.url.len()),
            ));
        }
        let kind = self.kind().ok_or_else(|| {
            InvalidField::new(
                field,
                format!("{:?}: expected http://, https:// or tcp://", self.url),
            )
        })?;
        let rest = self.url.split_once("://").map_or("", |(_, rest)| rest);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() || authority.contains(char::is_whitespace) {
            return Err(InvalidField::new(
                field,
                format!("{:?} names no host", self.url),
            ));
        }
        if kind == ProbeKind::Tcp {
            let port = authority.rsplit_once(':').map(|(_, port)| port);
            if authority != rest || !port.is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0)) {
                return Err(InvalidField::new(
                    field,
                    format!("{:?}: a TCP target is tcp://host:port", self.url),
                ));
            }
            if !self.fields.is_empty() {
                return Err(InvalidField::new(
                    "poll.fields",
                    "a TCP connect has no body to take fields from",
                ));
            }
        }
        for (name, pointer) in &self.fields {
            let known = matches!(name.as_str(), "ok" | "battery_pct" | "signal_dbm")
                || name
                    .strip_prefix("attributes.")
                    .is_some_and(|a| !a.is_empty());
            if !known {
                return Err(InvalidField::new(
                    "poll.fields",
                    format!("{name:?}: expected ok, battery_pct, signal_dbm or attributes.<name>"),
                ));
            }
            if !is_json_pointer(pointer) {
                return Err(InvalidField::new(
                    "poll.fields",
                    format!("{name}: {pointer:?} is not a JSON pointer (\"\" or \"/a/0/b\")"),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `text` is an RFC 6901 JSON pointer: empty, or `/`-separated tokens whose `~` is
/// always `~0` or `~1`.
fn is_json_pointer(text: &str) -> bool {
    if text.is_empty() {
        return true;
    }
    text.starts_with('/')
        && text
            .split('~')
            .skip(1)
            .all(|after| after.starts_with(['0', '1']))
}

/// The tenant and device of a [`device_key`], as a tombstone carries them.
pub fn device_of_key(key: &[u8]) -> Option<(String, String)> {
    let [tenant, device]: [String; 2] = serde_json::from_slice(key).ok()?;
    Some((tenant, device))
}

impl Registration {
    /// A registration with only its ids: monitored, no class, labels, interval or poll target.
    pub fn new(tenant_id: impl Into<String>, device_id: impl Into<String>) -> Registration {
        Registration {
            tenant_id: tenant_id.into(),
            device_id: device_id.into(),
            device_class: None,
            labels: BTreeMap::new(),
            expected_interval_ms: None,
            monitoring_enabled: true,
            poll: None,
        }
    }
}

impl Record for Registration {
    const KIND: RecordKind = RecordKind::Registration;

    fn key(&self) -> Cow<'_, str> {
        Cow::Owned(device_key(&self.tenant_id, &self.device_id))
    }

    fn validate(&self) -> Result<(), InvalidField> {
        let id_bytes = Limits::default().id_bytes;
        let ids = [
            ("tenant_id", Some(&self.tenant_id)),
            ("device_id", Some(&self.device_id)),
            ("device_class", self.device_class.as_ref()),
        ];
        for (field, value) in ids {
            match value {
                Some(v) if v.is_empty() => {
                    return Err(InvalidField::new(field, "must not be empty"));
                }
                Some(v) if v.len() > id_bytes => {
                    return Err(InvalidField::new(
                        field,
                        format!("{} bytes, over {id_bytes}", v.len()),
                    ));
                }
                _ => {}
            }
        }
        if self.labels.len() > MAX_LABELS {
            return Err(InvalidField::new(
                "labels",
                format!("{} labels, over {MAX_LABELS}", self.labels.len()),
            ));
        }
        for (name, value) in &self.labels {
            if name.is_empty() || name.len() > id_bytes {
                return Err(InvalidField::new(
                    "labels",
                    format!("label name {name:?}: 1 to {id_bytes} bytes"),
                ));
            }
            if value.len() > MAX_LABEL_VALUE_BYTES {
                return Err(InvalidField::new(
                    "labels",
                    format!(
                        "label {name}: {} bytes, over {MAX_LABEL_VALUE_BYTES}",
                        value.len()
                    ),
                ));
            }
        }
        if let Some(ms) = self
            .expected_interval_ms
            .filter(|ms| !(1..=MAX_EXPECTED_INTERVAL_MS).contains(ms))
        {
            return Err(InvalidField::new(
                "expected_interval_ms",
                format!("{ms} is outside 1..={MAX_EXPECTED_INTERVAL_MS} (30 days)"),
            ));
        }
        self.poll.as_ref().map_or(Ok(()), PollTarget::validate)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::Codec;

    fn example() -> Registration {
        Registration {
            device_class: Some("router".into()),
            labels: BTreeMap::from([("site".into(), "berlin".into())]),
            expected_interval_ms: Some(30_000),
            poll: Some(PollTarget {
                url: "http://10.0.0.7:8080/health".into(),
                fields: BTreeMap::from([
                    ("battery_pct".into(), "/power/battery".into()),
                    ("attributes.fw".into(), "/firmware~1version".into()),
                ]),
            }),
            ..Registration::new("acme", "rt-1")
        }
    }

    fn with(f: impl FnOnce(&mut Registration)) -> Result<(), &'static str> {
        let mut r = example();
        f(&mut r);
        r.validate().map_err(|e| e.field)
    }

    fn target(url: &str) -> Option<PollTarget> {
        Some(PollTarget {
            url: url.into(),
            fields: BTreeMap::new(),
        })
    }

    #[test]
    fn the_example_and_edges_are_valid() {
        assert_eq!(with(|_| {}), Ok(()));
        assert_eq!(with(|r| r.poll = target("tcp://plc-7.local:502")), Ok(()));
        assert_eq!(with(|r| r.poll = target("HTTPS://[::1]:8443")), Ok(()));
        assert_eq!(
            with(|r| r.expected_interval_ms = Some(MAX_EXPECTED_INTERVAL_MS)),
            Ok(())
        );
        assert_eq!(with(|r| r.expected_interval_ms = Some(1)), Ok(()));
    }

    #[test]
    fn each_rule_names_its_field() {
        type Breaker = fn(&mut Registration);
        let cases: [(&str, Breaker); 14] = [
            ("tenant_id", |r| r.tenant_id.clear()),
            ("device_id", |r| r.device_id = "d".repeat(257)),
            ("device_class", |r| r.device_class = Some(String::new())),
            ("labels", |r| {
                r.labels.insert(String::new(), "x".into());
            }),
            ("labels", |r| {
                r.labels = (0..=MAX_LABELS)
                    .map(|i| (i.to_string(), "v".into()))
                    .collect();
            }),
            ("expected_interval_ms", |r| r.expected_interval_ms = Some(0)),
            ("expected_interval_ms", |r| {
                r.expected_interval_ms = Some(MAX_EXPECTED_INTERVAL_MS + 1)
            }),
            ("poll.url", |r| r.poll = target("ftp://host/x")),
            ("poll.url", |r| r.poll = target("http:///health")),
            ("poll.url", |r| r.poll = target("tcp://host")),
            ("poll.url", |r| r.poll = target("tcp://host:502/path")),
            ("poll.fields", |r| {
                if let Some(p) = r.poll.as_mut() {
                    p.fields.insert("humidity".into(), "/h".into());
                }
            }),
            ("poll.fields", |r| {
                if let Some(p) = r.poll.as_mut() {
                    p.fields.insert("ok".into(), "/a~2".into());
                }
            }),
            ("poll.fields", |r| {
                r.poll = Some(PollTarget {
                    url: "tcp://h:1".into(),
                    fields: BTreeMap::from([("ok".into(), "/up".into())]),
                })
            }),
        ];
        for (field, break_it) in cases {
            assert_eq!(with(break_it), Err(field), "{field}");
        }
    }

    #[test]
    fn a_key_gives_back_its_tenant_and_device() {
        let r = example();
        assert_eq!(
            device_of_key(r.key().as_bytes()),
            Some(("acme".into(), "rt-1".into()))
        );
        assert_eq!(device_of_key(b"rt-1"), None);
        assert_eq!(device_of_key(br#"["a","b","c"]"#), None);
    }

    proptest! {
        #[test]
        fn registrations_round_trip_through_avro(
            class in proptest::option::of("[a-z]{1,8}"),
            labels in proptest::collection::btree_map("[a-z]{1,6}", "\\PC{0,10}", 0..4),
            interval in proptest::option::of(1i64..1_000_000),
            enabled in any::<bool>(),
            fields in proptest::option::of(proptest::collection::btree_map("attributes\\.[a-z]{1,4}", "/[a-z]{0,5}", 0..3)),
        ) {
            let registration = Registration {
                device_class: class,
                labels,
                expected_interval_ms: interval,
                monitoring_enabled: enabled,
                poll: fields.map(|fields| PollTarget { url: "https://d.example/h".into(), fields }),
                ..Registration::new("t", "d")
            };
            let codec = Codec::builtin();
            let bytes = codec.encode(&registration).unwrap();
            prop_assert_eq!(codec.decode::<Registration>(&bytes).unwrap(), registration);
        }
    }
}
