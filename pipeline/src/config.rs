//! `[pipeline]`: event-time settings, window sizes, presence, health and anomaly thresholds, with
//! overrides per tenant and device class.

use serde::{Deserialize, Serialize};

/// Settings of the dataflow. Times are milliseconds of event time unless named otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served; port 0 picks a free one.
    pub listen: std::net::SocketAddr,
    /// Where checkpoints are kept: the job resumes from the latest complete one, takes one every
    /// `checkpoint_interval_ms` and one when stopped (SIGTERM). Unset: no checkpoints.
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Wall-clock time between checkpoints while the job runs (with `checkpoint_dir`).
    pub checkpoint_interval_ms: i64,
    /// Tumbling window sizes; the largest is the periodic health check.
    pub windows_ms: Vec<i64>,
    /// How far behind its partition's clock truth a reading may be stamped and still count.
    pub out_of_orderness_ms: i64,
    /// Wall-clock time after which a silent partition stops holding the watermark back.
    pub idle_timeout_ms: i64,
    /// How far ahead of its partition's clock truth a reading may be stamped.
    pub max_future_skew_ms: i64,
    /// Take producers' Kafka record timestamps (`CreateTime`) as the clock truth, as broker
    /// timestamps (`LogAppendTime`) always are: for producers with a good clock, such as
    /// fleetpulse's own gateways. Otherwise the truth is a consensus of each partition's devices.
    pub trust_record_time: bool,
    /// A device whose clock is off its partition's clock truth by more than this has a wrong
    /// clock: a `clock_skew` anomaly, and its readings re-timed or dead-lettered.
    pub clock_tolerance_ms: i64,
    /// Re-time the readings of a device with a known clock offset by that offset (marked on
    /// their windows); `false` sends them to the DLQ as `clock_skew` instead.
    pub clock_correction: bool,
    /// A device silent for this long (event time) is retired: a last transition with reason
    /// `retired`, its state freed; its next reading is `first_seen` again.
    pub device_retention_ms: i64,
    /// Bounds on what a reading may hold; beyond them it is a dead letter `invalid_field`.
    pub limits: schemas::Limits,
    /// Read the device inventory (`topics.inventory`) beside the telemetry: registered devices
    /// that never report go offline as `never_seen`, their class and expected interval apply,
    /// and a decommissioned one is retired. Kafka input only.
    pub inventory: bool,
    /// A registered device with an expected reporting interval goes offline after this many
    /// intervals of silence, instead of after `thresholds.offline_timeout_ms`.
    pub expected_interval_multiple: f64,
    /// Where a reading's tenant comes from: its body, or only the header fleetpulse's gateways
    /// stamp from the credential it came with ([`schemas::headers`]).
    pub tenant_source: TenantSource,
    /// A device's last-seen time goes out at most once per this much event time (and at once
    /// when its status changes), so a fleet reporting every second costs one record per device
    /// per interval, not one per reading.
    pub lastseen_interval_ms: i64,
    /// Granularity of the sources' capabilities: progress is tracked in steps of this size.
    pub watermark_step_ms: i64,
    /// Share of a tenant's online devices that, going offline within `mass_offline_window_ms`,
    /// raises one tenant-level `mass_offline` anomaly.
    pub mass_offline_share: f64,
    /// The fewest devices going offline together that count as a mass offline.
    pub mass_offline_min_devices: u32,
    /// The period over which offline transitions count as simultaneous.
    pub mass_offline_window_ms: i64,
    /// Health score inputs.
    pub health: HealthConfig,
    /// Thresholds of every device unless an override matches.
    pub thresholds: Thresholds,
    /// Baseline (statistical) anomaly settings.
    pub baseline: BaselineConfig,
    /// Overrides of `thresholds` for a tenant, a device class, or both; the most specific match
    /// wins (tenant and class, then tenant, then class).
    pub overrides: Vec<Override>,
}

/// Where a reading's tenant comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantSource {
    /// The body's `tenant_id` (any producer may claim any tenant).
    #[default]
    Body,
    /// Only the `fleetpulse-tenant` header (and `fleetpulse-device`, when there is one) that
    /// fleetpulse's gateways stamp from the credential; a record without it is a dead letter.
    /// With Kafka ACLs that let only the gateways write the telemetry topic, no producer can
    /// claim another tenant.
    Header,
}

/// What the health score compares a window with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Response-time objective: a window whose p95 is within it scores full marks for speed.
    pub rt_slo_ms: f64,
}

/// Per-device limits; every field may be overridden per tenant and device class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Silence after the last reading before a device is offline.
    pub offline_timeout_ms: i64,
    /// `rt_mean_high` fires when the mean of the last readings exceeds this.
    pub rt_mean_ms: f64,
    /// How many recent readings `rt_mean_high` averages.
    pub rt_mean_readings: u32,
    /// The fewest readings `rt_mean_high` judges.
    pub rt_mean_min_readings: u32,
    /// `error_rate_high` fires when a window's error rate exceeds this (0 to 1).
    pub error_rate: f64,
    /// `battery_low` fires below this percentage.
    pub battery_low_pct: f64,
    /// A firing threshold rule resolves only once the value is back past the threshold by this
    /// share of it (hysteresis), so a value hovering at the limit does not flap.
    pub resolve_margin: f64,
    /// After an anomaly resolves, the same kind cannot fire again on the device for this long.
    pub cooldown_ms: i64,
    /// `flapping` fires at this many status transitions within `flapping_period_ms`.
    pub flapping_transitions: u32,
    /// Period over which transitions count towards `flapping`.
    pub flapping_period_ms: i64,
    /// `prolonged_offline` fires after this long offline.
    pub prolonged_offline_ms: i64,
}

/// Per-device baselines: an EWMA of window p95 and error rate and of their variance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// EWMA weight of the newest window (0 to 1).
    pub alpha: f64,
    /// Fire when a window is more than `k` deviations above the baseline...
    pub k: f64,
    /// ...for this many consecutive windows.
    pub m: u32,
    /// Windows observed before the baseline is trusted.
    pub warmup_windows: u32,
}

/// Threshold overrides for devices of a tenant and/or class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Tenant the override applies to; unset means every tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Device class the override applies to; unset means every class.
    #[serde(default)]
    pub device_class: Option<String>,
    /// See [`Thresholds::offline_timeout_ms`].
    #[serde(default)]
    pub offline_timeout_ms: Option<i64>,
    /// See [`Thresholds::rt_mean_ms`].
    #[serde(default)]
    pub rt_mean_ms: Option<f64>,
    /// See [`Thresholds::error_rate`].
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// See [`Thresholds::battery_low_pct`].
    #[serde(default)]
    pub battery_low_pct: Option<f64>,
    /// See [`Thresholds::prolonged_offline_ms`].
    #[serde(default)]
    pub prolonged_offline_ms: Option<i64>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9464)),
            checkpoint_dir: None,
            checkpoint_interval_ms: 10_000,
            windows_ms: vec![60_000, 300_000],
            out_of_orderness_ms: 5_000,
            idle_timeout_ms: 10_000,
            max_future_skew_ms: 300_000,
            trust_record_time: false,
            clock_tolerance_ms: 30_000,
            clock_correction: true,
            device_retention_ms: 30 * DAY_MS,
            limits: schemas::Limits::default(),
            inventory: true,
            expected_interval_multiple: 3.0,
            tenant_source: TenantSource::Body,
            lastseen_interval_ms: 5_000,
            watermark_step_ms: 100,
            mass_offline_share: 0.5,
            mass_offline_min_devices: 20,
            mass_offline_window_ms: 60_000,
            health: HealthConfig::default(),
            thresholds: Thresholds::default(),
            baseline: BaselineConfig::default(),
            overrides: Vec::new(),
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { rt_slo_ms: 500.0 }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            offline_timeout_ms: 60_000,
            rt_mean_ms: 1_000.0,
            rt_mean_readings: 10,
            rt_mean_min_readings: 5,
            error_rate: 0.10,
            battery_low_pct: 20.0,
            resolve_margin: 0.2,
            cooldown_ms: 300_000,
            flapping_transitions: 6,
            flapping_period_ms: 600_000,
            prolonged_offline_ms: 900_000,
        }
    }
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            alpha: 0.2,
            k: 3.0,
            m: 3,
            warmup_windows: 5,
        }
    }
}

/// The largest window size: a window's offline time is kept in 32 bits.
const DAY_MS: i64 = 86_400_000;

fn positive(key: &'static str, v: i64) -> Result<(), (String, &'static str)> {
    if v > 0 {
        Ok(())
    } else {
        Err((key.to_string(), "a positive number of milliseconds"))
    }
}

fn share(key: &'static str, v: f64) -> Result<(), (String, &'static str)> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err((key.to_string(), "a share between 0 and 1"))
    }
}

impl Thresholds {
    fn validate(&self, prefix: &str) -> Result<(), (String, &'static str)> {
        let key = |k: &str| format!("{prefix}{k}");
        let ms = |k: &str, v: i64| {
            if v > 0 {
                Ok(())
            } else {
                Err((key(k), "a positive number of milliseconds"))
            }
        };
        ms("offline_timeout_ms", self.offline_timeout_ms)?;
        ms("cooldown_ms", self.cooldown_ms)?;
        ms("flapping_period_ms", self.flapping_period_ms)?;
        ms("prolonged_offline_ms", self.prolonged_offline_ms)?;
        if !(self.rt_mean_ms.is_finite() && self.rt_mean_ms > 0.0) {
            return Err((key("rt_mean_ms"), "a positive number of milliseconds"));
        }
        if self.rt_mean_readings == 0 || self.rt_mean_readings > 1_000 {
            return Err((key("rt_mean_readings"), "between 1 and 1000"));
        }
        if self.rt_mean_min_readings == 0 || self.rt_mean_min_readings > self.rt_mean_readings {
            return Err((
                key("rt_mean_min_readings"),
                "between 1 and rt_mean_readings",
            ));
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err((key("error_rate"), "a share between 0 and 1"));
        }
        if !(0.0..=100.0).contains(&self.battery_low_pct) {
            return Err((key("battery_low_pct"), "a percentage between 0 and 100"));
        }
        if !(0.0..1.0).contains(&self.resolve_margin) {
            return Err((key("resolve_margin"), "a share between 0 and 1 (exclusive)"));
        }
        if self.flapping_transitions < 2 {
            return Err((key("flapping_transitions"), "at least 2"));
        }
        Ok(())
    }

    /// These thresholds with the fields an override sets replaced.
    fn with(mut self, o: &Override) -> Thresholds {
        if let Some(v) = o.offline_timeout_ms {
            self.offline_timeout_ms = v;
        }
        if let Some(v) = o.rt_mean_ms {
            self.rt_mean_ms = v;
        }
        if let Some(v) = o.error_rate {
            self.error_rate = v;
        }
        if let Some(v) = o.battery_low_pct {
            self.battery_low_pct = v;
        }
        if let Some(v) = o.prolonged_offline_ms {
            self.prolonged_offline_ms = v;
        }
        self
    }
}

impl PipelineConfig {
    /// Checks what serde cannot; returns the offending key (relative to `[pipeline]`) and what it
    /// should be.
    pub fn validate(&self) -> Result<(), (String, &'static str)> {
        if self.windows_ms.is_empty() || self.windows_ms.iter().any(|w| !(1..=DAY_MS).contains(w)) {
            return Err((
                "windows_ms".into(),
                "a non-empty list of window sizes in milliseconds, each at most a day",
            ));
        }
        let mut sorted = self.windows_ms.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.windows_ms.len() {
            return Err(("windows_ms".into(), "window sizes without repeats"));
        }
        if self.out_of_orderness_ms < 0 {
            return Err((
                "out_of_orderness_ms".into(),
                "zero or a positive number of milliseconds",
            ));
        }
        positive("idle_timeout_ms", self.idle_timeout_ms)?;
        positive("max_future_skew_ms", self.max_future_skew_ms)?;
        if self.clock_tolerance_ms <= self.out_of_orderness_ms {
            return Err((
                "clock_tolerance_ms".into(),
                "more milliseconds than out_of_orderness_ms (an honest reading may be that late)",
            ));
        }
        if self.max_future_skew_ms <= self.clock_tolerance_ms {
            return Err((
                "max_future_skew_ms".into(),
                "more milliseconds than clock_tolerance_ms",
            ));
        }
        if let Some(key) = self.limits.zero() {
            return Err((format!("limits.{key}"), "a positive size"));
        }
        let longest_timeout = self
            .overrides
            .iter()
            .filter_map(|o| o.offline_timeout_ms)
            .chain([self.thresholds.offline_timeout_ms])
            .max()
            .unwrap_or(0);
        let longest_window = self.windows_ms.iter().copied().max().unwrap_or(0);
        if self.device_retention_ms <= longest_timeout.max(longest_window) {
            return Err((
                "device_retention_ms".into(),
                "more milliseconds than every offline timeout and window size",
            ));
        }
        if !(self.expected_interval_multiple.is_finite() && self.expected_interval_multiple >= 1.0)
        {
            return Err((
                "expected_interval_multiple".into(),
                "a number of intervals, at least 1",
            ));
        }
        positive("watermark_step_ms", self.watermark_step_ms)?;
        positive("lastseen_interval_ms", self.lastseen_interval_ms)?;
        positive("checkpoint_interval_ms", self.checkpoint_interval_ms)?;
        positive("mass_offline_window_ms", self.mass_offline_window_ms)?;
        share("mass_offline_share", self.mass_offline_share)?;
        if !(self.health.rt_slo_ms.is_finite() && self.health.rt_slo_ms > 0.0) {
            return Err((
                "health.rt_slo_ms".into(),
                "a positive number of milliseconds",
            ));
        }
        if !(self.baseline.alpha > 0.0 && self.baseline.alpha <= 1.0) {
            return Err(("baseline.alpha".into(), "a weight in (0, 1]"));
        }
        if !(self.baseline.k.is_finite() && self.baseline.k > 0.0) {
            return Err(("baseline.k".into(), "a positive number of deviations"));
        }
        if self.baseline.m == 0 {
            return Err(("baseline.m".into(), "at least 1"));
        }
        self.thresholds.validate("thresholds.")?;
        for (i, o) in self.overrides.iter().enumerate() {
            if o.tenant.is_none() && o.device_class.is_none() {
                return Err((
                    format!("overrides[{i}]"),
                    "an override naming a tenant, a device_class or both",
                ));
            }
            self.thresholds
                .with(o)
                .validate(&format!("overrides[{i}]."))?;
        }
        Ok(())
    }

    /// The thresholds of a device of `tenant` and `class`.
    pub fn thresholds_for(&self, tenant: &str, class: Option<&str>) -> Thresholds {
        let rank = |o: &Override| -> Option<u8> {
            let tenant_ok = o.tenant.as_deref().is_none_or(|t| t == tenant);
            let class_ok = o.device_class.as_deref().is_none_or(|c| Some(c) == class);
            if !(tenant_ok && class_ok) {
                return None;
            }
            Some(match (&o.tenant, &o.device_class) {
                (Some(_), Some(_)) => 3,
                (Some(_), None) => 2,
                _ => 1,
            })
        };
        let mut matching: Vec<(u8, usize)> = self
            .overrides
            .iter()
            .enumerate()
            .filter_map(|(i, o)| rank(o).map(|r| (r, i)))
            .collect();
        // Less specific first, so more specific overrides are applied last and win; among equals
        // the later one in the file wins, as in every layered configuration.
        matching.sort_unstable();
        matching
            .into_iter()
            .fold(self.thresholds, |t, (_, i)| t.with(&self.overrides[i]))
    }

    /// How long a registered device expected every `interval_ms` may be silent before it is
    /// offline.
    pub fn expected_timeout_ms(&self, interval_ms: u32) -> i64 {
        (f64::from(interval_ms) * self.expected_interval_multiple).ceil() as i64
    }

    /// The smallest window size: the one threshold and baseline rules judge.
    pub fn rule_window_ms(&self) -> i64 {
        self.windows_ms.iter().copied().min().unwrap_or(60_000)
    }
}

#[cfg(test)]
mod tests;
