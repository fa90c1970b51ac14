//! `[generate]`: the shape of the synthetic fleet and how fast it sends.

use serde::{Deserialize, Serialize};

/// How messages are encoded on the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageFormat {
    /// Confluent-framed Avro.
    Avro,
    /// One JSON object per message.
    Json,
}

/// The synthetic fleet. Every share is a probability per message, 0 to 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Number of devices.
    #[serde(default = "defaults::devices")]
    pub devices: u32,
    /// Number of tenants the devices are spread over.
    #[serde(default = "defaults::tenants")]
    pub tenants: u32,
    /// Messages to send in all (malformed ones included); 0 sends until stopped.
    #[serde(default = "defaults::events")]
    pub events: u64,
    /// Messages per second; 0 sends as fast as the sink takes them.
    #[serde(default)]
    pub rate: f64,
    /// Seed of the fleet: the same seed and settings give the same messages.
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Encoding of Kafka messages.
    #[serde(default = "defaults::format")]
    pub format: MessageFormat,
    /// Event time of the first reading, ms since the epoch; unset means now.
    #[serde(default)]
    pub start_ms: Option<i64>,
    /// How often each device reports, in ms of event time.
    #[serde(default = "defaults::interval_ms")]
    pub interval_ms: u64,
    /// Share of devices that are slow (ten times the usual response time).
    #[serde(default = "defaults::slow_fraction")]
    pub slow_fraction: f64,
    /// Chance per reading that a device starts an error burst.
    #[serde(default = "defaults::error_burst_rate")]
    pub error_burst_rate: f64,
    /// Chance per reading that a device goes silent for 2 to 10 minutes of event time.
    #[serde(default = "defaults::silence_rate")]
    pub silence_rate: f64,
    /// Share of devices that flap: 30 s reporting, 70 s silent (offline, then back), over and
    /// over. 0 keeps a seed's stream as it was before flapping existed.
    #[serde(default)]
    pub flapping_fraction: f64,
    /// Share of readings stamped earlier than sent, within `max_out_of_order_ms`.
    #[serde(default = "defaults::out_of_order_fraction")]
    pub out_of_order_fraction: f64,
    /// How far back an out-of-order reading may be stamped, ms; keep it within the pipeline's
    /// allowed out-of-orderness so these readings are accepted.
    #[serde(default = "defaults::max_out_of_order_ms")]
    pub max_out_of_order_ms: u64,
    /// Share of readings stamped 30 to 90 s in the past: late for the pipeline.
    #[serde(default = "defaults::late_fraction")]
    pub late_fraction: f64,
    /// Share of readings from a broken clock, stamped 10 minutes ahead.
    #[serde(default = "defaults::future_fraction")]
    pub future_fraction: f64,
    /// Share of messages that are malformed (garbage, bad header, unknown schema, bad values).
    #[serde(default = "defaults::malformed_fraction")]
    pub malformed_fraction: f64,
}

mod defaults {
    use super::MessageFormat;
    pub(super) fn devices() -> u32 {
        1_000
    }
    pub(super) fn tenants() -> u32 {
        4
    }
    pub(super) fn events() -> u64 {
        100_000
    }
    pub(super) fn seed() -> u64 {
        42
    }
    pub(super) fn format() -> MessageFormat {
        MessageFormat::Avro
    }
    pub(super) fn interval_ms() -> u64 {
        1_000
    }
    pub(super) fn slow_fraction() -> f64 {
        0.05
    }
    pub(super) fn error_burst_rate() -> f64 {
        0.000_5
    }
    pub(super) fn silence_rate() -> f64 {
        0.000_2
    }
    pub(super) fn out_of_order_fraction() -> f64 {
        0.01
    }
    pub(super) fn max_out_of_order_ms() -> u64 {
        4_000
    }
    pub(super) fn late_fraction() -> f64 {
        0.001
    }
    pub(super) fn future_fraction() -> f64 {
        0.000_5
    }
    pub(super) fn malformed_fraction() -> f64 {
        0.001
    }
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            devices: defaults::devices(),
            tenants: defaults::tenants(),
            events: defaults::events(),
            rate: 0.0,
            seed: defaults::seed(),
            format: defaults::format(),
            start_ms: None,
            interval_ms: defaults::interval_ms(),
            slow_fraction: defaults::slow_fraction(),
            error_burst_rate: defaults::error_burst_rate(),
            silence_rate: defaults::silence_rate(),
            flapping_fraction: 0.0,
            out_of_order_fraction: defaults::out_of_order_fraction(),
            max_out_of_order_ms: defaults::max_out_of_order_ms(),
            late_fraction: defaults::late_fraction(),
            future_fraction: defaults::future_fraction(),
            malformed_fraction: defaults::malformed_fraction(),
        }
    }
}

impl GeneratorConfig {
    /// Checks what serde cannot: returns the offending key (relative to `[generate]`) and what
    /// it should be.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.devices == 0 {
            return Err(("devices", "at least 1"));
        }
        if self.tenants == 0 || self.tenants > self.devices {
            return Err(("tenants", "between 1 and `devices`"));
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return Err(("rate", "a number of messages per second >= 0"));
        }
        if self.interval_ms == 0 {
            return Err(("interval_ms", "at least 1"));
        }
        let shares = [
            ("slow_fraction", self.slow_fraction),
            ("error_burst_rate", self.error_burst_rate),
            ("silence_rate", self.silence_rate),
            ("flapping_fraction", self.flapping_fraction),
            ("out_of_order_fraction", self.out_of_order_fraction),
            ("late_fraction", self.late_fraction),
            ("future_fraction", self.future_fraction),
            ("malformed_fraction", self.malformed_fraction),
        ];
        for (key, share) in shares {
            if !(0.0..=1.0).contains(&share) {
                return Err((key, "a share between 0 and 1"));
            }
        }
        if self.out_of_order_fraction
            + self.late_fraction
            + self.future_fraction
            + self.malformed_fraction
            > 1.0
        {
            return Err((
                "malformed_fraction",
                "out_of_order, late, future and malformed shares adding up to at most 1",
            ));
        }
        Ok(())
    }
}
