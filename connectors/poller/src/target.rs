//! What the poller probes: the registrations of the inventory that have a poll target, are
//! monitored, and fall to this instance; and the telemetry record each probe becomes.

use std::collections::BTreeMap;

use schemas::{ProbeKind, Registration, Telemetry};
use serde_json::Value;
use twox_hash::XxHash3_64;

use crate::DeviceId;
use crate::probe::{Outcome, host};

/// A device to probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Tenant.
    pub tenant_id: String,
    /// Device.
    pub device_id: String,
    /// Class, for the interval and the records.
    pub device_class: Option<String>,
    /// HTTP or TCP.
    pub kind: ProbeKind,
    /// What to probe.
    pub url: String,
    /// Host of the URL, for the per-host cap.
    pub host: String,
    /// Telemetry field to JSON pointer. A slice rather than the registration's map: a map's
    /// first node costs half a kilobyte, as much as the rest of the device.
    pub fields: Box<[(String, String)]>,
}

/// Which instance of `instances` probes the device `key`: by a hash of the key alone, so every
/// instance agrees without talking, and adding an inventory entry moves no other device.
pub fn instance_of(key: &DeviceId, instances: u32) -> u32 {
    // Seeded apart from the schedule's phase hash, so that an instance's devices are not all of
    // one phase parity.
    let hash =
        XxHash3_64::oneshot_with_seed(0x706f_6c6c, schemas::device_key(&key.0, &key.1).as_bytes());
    (hash % u64::from(instances.max(1))) as u32
}

impl Target {
    /// The target of `r`, if this instance probes it.
    pub fn of(r: &Registration, instance: u32, instances: u32) -> Option<Target> {
        if !r.monitoring_enabled {
            return None;
        }
        let poll = r.poll.as_ref()?;
        let kind = poll.kind()?;
        let key = (r.tenant_id.clone(), r.device_id.clone());
        if instance_of(&key, instances) != instance {
            return None;
        }
        Some(Target {
            tenant_id: r.tenant_id.clone(),
            device_id: r.device_id.clone(),
            device_class: r.device_class.clone(),
            kind,
            url: poll.url.clone(),
            host: host(&poll.url),
            fields: poll
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// The device's key.
    pub fn key(&self) -> DeviceId {
        (self.tenant_id.clone(), self.device_id.clone())
    }

    /// The telemetry record of a probe of this target that started at `started_ms` (the event
    /// time) and found `outcome`.
    pub fn record(&self, started_ms: i64, outcome: &Outcome) -> Telemetry {
        let mut t = Telemetry {
            tenant_id: self.tenant_id.clone(),
            device_id: self.device_id.clone(),
            ts: started_ms,
            response_time_ms: None,
            ok: false,
            error_code: None,
            battery_pct: None,
            signal_dbm: None,
            device_class: self.device_class.clone(),
            attributes: BTreeMap::new(),
        };
        match outcome {
            Outcome::Failed { failure } => t.error_code = Some(failure.code().to_string()),
            Outcome::Answered {
                status,
                elapsed_ms,
                body,
            } => {
                t.response_time_ms = Some(*elapsed_ms);
                t.ok = status.is_none_or(|s| s < 400);
                if let Some(s) = status.filter(|s| *s >= 400) {
                    t.error_code = Some(format!("http_{s}"));
                }
                if !self.fields.is_empty() {
                    self.map_fields(body, &mut t);
                }
            }
        }
        t
    }

    /// Takes the mapped fields from a JSON body; a body that is not JSON, or a pointer that
    /// finds nothing of the field's type, leaves the field out.
    fn map_fields(&self, body: &[u8], t: &mut Telemetry) {
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        for (field, pointer) in self.fields.iter() {
            let Some(value) = json.pointer(pointer) else {
                continue;
            };
            match field.as_str() {
                "ok" => {
                    if let Some(ok) = value.as_bool() {
                        t.ok = t.ok && ok;
                        if !ok && t.error_code.is_none() {
                            t.error_code = Some("reported_unhealthy".into());
                        }
                    }
                }
                "battery_pct" => t.battery_pct = value.as_f64(),
                "signal_dbm" => t.signal_dbm = value.as_f64(),
                other => {
                    if let Some(name) = other.strip_prefix("attributes.") {
                        let text = match value {
                            Value::String(s) => s.clone(),
                            Value::Null => continue,
                            v => v.to_string(),
                        };
                        t.attributes.insert(name.to_string(), text);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use schemas::PollTarget;

    use super::*;
    use crate::probe::Failure;

    fn registration(url: &str) -> Registration {
        Registration {
            device_class: Some("camera".into()),
            poll: Some(PollTarget {
                url: url.into(),
                fields: BTreeMap::from([
                    ("ok".into(), "/healthy".into()),
                    ("battery_pct".into(), "/power/battery".into()),
                    ("attributes.fw".into(), "/fw".into()),
                    ("signal_dbm".into(), "/missing".into()),
                ]),
            }),
            ..Registration::new("acme", "cam-1")
        }
    }

    #[test]
    fn only_monitored_devices_with_a_target_of_this_instance_are_probed() {
        let r = registration("http://10.0.0.7:8080/status");
        let t = Target::of(&r, 0, 1).unwrap();
        assert_eq!((t.kind, t.host.as_str()), (ProbeKind::Http, "10.0.0.7"));
        let off = Registration {
            monitoring_enabled: false,
            ..r.clone()
        };
        assert!(Target::of(&off, 0, 1).is_none());
        assert!(Target::of(&Registration::new("acme", "push-only"), 0, 1).is_none());
        let owner = instance_of(&t.key(), 3);
        assert!((0..3).all(|i| Target::of(&r, i, 3).is_some() == (i == owner)));
    }

    #[test]
    fn instances_share_a_fleet_about_evenly() {
        let mut counts = [0u32; 4];
        for n in 0..4_000 {
            counts[instance_of(&("t".into(), format!("d{n}")), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|c| (850..=1_150).contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn a_probe_becomes_one_reading() {
        let t = Target::of(&registration("http://cam/status"), 0, 1).unwrap();
        let body = br#"{"healthy": true, "power": {"battery": 71.5}, "fw": "2.1"}"#.to_vec();
        let answered = Outcome::Answered {
            status: Some(200),
            elapsed_ms: 12.5,
            body,
        };
        let r = t.record(1_700_000_000_000, &answered);
        assert_eq!(r.ts, 1_700_000_000_000);
        assert!(r.ok);
        assert_eq!(
            (r.response_time_ms, r.battery_pct, r.signal_dbm),
            (Some(12.5), Some(71.5), None)
        );
        assert_eq!(r.attributes.get("fw").map(String::as_str), Some("2.1"));
        assert_eq!(r.device_class.as_deref(), Some("camera"));

        let unhealthy = Outcome::Answered {
            status: Some(200),
            elapsed_ms: 3.0,
            body: br#"{"healthy": false}"#.to_vec(),
        };
        let r = t.record(0, &unhealthy);
        assert_eq!(
            (r.ok, r.error_code.as_deref()),
            (false, Some("reported_unhealthy"))
        );

        let erroring = Outcome::Answered {
            status: Some(503),
            elapsed_ms: 3.0,
            body: b"not json".to_vec(),
        };
        let r = t.record(0, &erroring);
        assert_eq!((r.ok, r.error_code.as_deref()), (false, Some("http_503")));

        let r = t.record(
            0,
            &Outcome::Failed {
                failure: Failure::Timeout,
            },
        );
        assert_eq!(
            (r.ok, r.error_code.as_deref(), r.response_time_ms),
            (false, Some("timeout"), None)
        );
    }
}
