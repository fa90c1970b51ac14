//! `[poller]`: how often each kind of device is probed, how many probes may run at once, and
//! how a device that keeps failing is left alone.

use std::collections::BTreeMap;

use schemas::ProbeKind;
use serde::{Deserialize, Serialize};

/// Intervals of one device class; an absent one falls back to the kind's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassIntervals {
    /// HTTP probes, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_interval_ms: Option<u64>,
    /// TCP probes, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_interval_ms: Option<u64>,
}

/// Settings of `fleetpulse poll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollerConfig {
    /// HTTP probes of a device, ms apart, unless its class says otherwise.
    pub http_interval_ms: u64,
    /// TCP probes of a device, ms apart, unless its class says otherwise.
    pub tcp_interval_ms: u64,
    /// Intervals per device class (`[poller.classes.camera]`).
    pub classes: BTreeMap<String, ClassIntervals>,
    /// Probes in flight at once, over all devices.
    pub max_in_flight: usize,
    /// Probes in flight at once to one host (a gateway in front of many devices).
    pub max_per_host: usize,
    /// How long one attempt may take, connect and answer, ms.
    pub timeout_ms: u64,
    /// Attempts after a failed one within a probe, with backoff.
    pub retries: u32,
    /// Failed probes in a row that open a device's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker stops a device's probes, ms; then one trial probe decides.
    pub breaker_open_ms: u64,
    /// How far each probe may move from its device's cadence, as a share of the interval.
    pub jitter: f64,
    /// This instance's share of the inventory: devices whose key hashes to it (0-based).
    pub instance: u32,
    /// How many instances share the inventory.
    pub instances: u32,
    /// A CA (PEM) whose certificates HTTPS devices are trusted with, besides the system's: the
    /// fleet's own CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; port 0 picks a free one.
    pub listen: std::net::SocketAddr,
}

impl Default for PollerConfig {
    fn default() -> PollerConfig {
        PollerConfig {
            // The source documents' cadences: 30 s for what answers HTTP (containers and their
            // health endpoints), 5 minutes for a connect check (system-level reachability);
            // slow checks such as drive health belong in a class (1 h in the example).
            http_interval_ms: 30_000,
            tcp_interval_ms: 300_000,
            classes: BTreeMap::new(),
            max_in_flight: 256,
            max_per_host: 4,
            timeout_ms: 5_000,
            retries: 1,
            breaker_failures: 3,
            breaker_open_ms: 300_000,
            jitter: 0.1,
            instance: 0,
            instances: 1,
            ca_file: None,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9466)),
        }
    }
}

/// The longest interval: a day. A device checked less often than that is not watched.
const MAX_INTERVAL_MS: u64 = 86_400_000;

impl PollerConfig {
    /// The interval of a device of `class` probed by `kind`.
    pub fn interval_ms(&self, class: Option<&str>, kind: ProbeKind) -> u64 {
        let own = class.and_then(|c| self.classes.get(c));
        match kind {
            ProbeKind::Http => own
                .and_then(|c| c.http_interval_ms)
                .unwrap_or(self.http_interval_ms),
            ProbeKind::Tcp => own
                .and_then(|c| c.tcp_interval_ms)
                .unwrap_or(self.tcp_interval_ms),
        }
    }

    /// Checks the values; the error names the key (within `[poller]`) and what it expects.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: String, why: &str| Err((key, why.to_string()));
        let interval = |ms: u64| (100..=MAX_INTERVAL_MS).contains(&ms);
        let why = "an interval from 100 ms to a day (86400000)";
        if !interval(self.http_interval_ms) {
            return fail("http_interval_ms".into(), why);
        }
        if !interval(self.tcp_interval_ms) {
            return fail("tcp_interval_ms".into(), why);
        }
        for (class, c) in &self.classes {
            for (name, ms) in [
                ("http_interval_ms", c.http_interval_ms),
                ("tcp_interval_ms", c.tcp_interval_ms),
            ] {
                if ms.is_some_and(|ms| !interval(ms)) {
                    return fail(format!("classes.{class}.{name}"), why);
                }
            }
        }
        if self.max_in_flight == 0 {
            return fail("max_in_flight".into(), "at least 1");
        }
        if self.max_per_host == 0 {
            return fail("max_per_host".into(), "at least 1");
        }
        if !(10..=600_000).contains(&self.timeout_ms) {
            return fail("timeout_ms".into(), "from 10 ms to 10 minutes (600000)");
        }
        if self.retries > 10 {
            return fail("retries".into(), "at most 10");
        }
        if self.breaker_failures == 0 {
            return fail("breaker_failures".into(), "at least 1");
        }
        if !interval(self.breaker_open_ms) {
            return fail("breaker_open_ms".into(), why);
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return fail("jitter".into(), "a share of the interval from 0 to 0.5");
        }
        if self.instances == 0 {
            return fail("instances".into(), "at least 1");
        }
        if self.instance >= self.instances {
            return fail("instance".into(), "less than instances (it counts from 0)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_override_the_kind_s_interval() {
        let mut c = PollerConfig::default();
        c.classes.insert(
            "disk".into(),
            ClassIntervals {
                http_interval_ms: Some(3_600_000),
                tcp_interval_ms: None,
            },
        );
        assert_eq!(c.interval_ms(Some("disk"), ProbeKind::Http), 3_600_000);
        assert_eq!(c.interval_ms(Some("disk"), ProbeKind::Tcp), 300_000);
        assert_eq!(c.interval_ms(None, ProbeKind::Http), 30_000);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn each_mistake_names_its_key() {
        type Breaker = fn(&mut PollerConfig);
        let cases: [(&str, Breaker); 6] = [
            ("http_interval_ms", |c| c.http_interval_ms = 0),
            ("classes.cam.tcp_interval_ms", |c| {
                c.classes.insert(
                    "cam".into(),
                    ClassIntervals {
                        http_interval_ms: None,
                        tcp_interval_ms: Some(1),
                    },
                );
            }),
            ("max_per_host", |c| c.max_per_host = 0),
            ("jitter", |c| c.jitter = 0.9),
            ("instance", |c| c.instance = 2),
            ("breaker_failures", |c| c.breaker_failures = 0),
        ];
        for (key, break_it) in cases {
            let mut c = PollerConfig {
                instances: 2,
                ..PollerConfig::default()
            };
            break_it(&mut c);
            assert_eq!(c.validate().map_err(|(k, _)| k), Err(key.to_string()));
        }
    }
}
