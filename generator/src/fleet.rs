//! The fleet model: devices with their own response times, error habits, batteries, radios and
//! silences, reporting every `interval_ms` of event time in a fixed phase order. One seeded RNG
//! drives everything, in one order, so a seed names one stream of messages.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use schemas::Telemetry;

use crate::config::GeneratorConfig;

const CLASSES: [&str; 4] = ["sensor", "gateway", "tracker", "meter"];
const ERROR_CODES: [&str; 4] = ["E_TIMEOUT", "E_CONN_RESET", "E_HTTP_500", "E_SENSOR"];
/// A timeout is reported at the device's own request timeout.
const TIMEOUT_RT_MS: f64 = 5_000.0;
const SILENCE_MS: std::ops::Range<i64> = 120_000..600_000;
/// A flapping device reports for the first `FLAP_CYCLE_MS - FLAP_QUIET_MS` of each cycle and is
/// silent for the rest: longer than the pipeline's 60 s offline timeout, so each cycle is two
/// transitions, and the pipeline's default (6 within 10 min) calls it flapping after 5 minutes.
const FLAP_CYCLE_MS: i64 = 100_000;
const FLAP_QUIET_MS: i64 = 70_000;
const LATE_BY_MS: std::ops::Range<i64> = 30_000..90_000;
const FUTURE_BY_MS: i64 = 600_000;

/// What a message is, as the generator meant it. The pipeline judges for itself; this is what a
/// test expects it to conclude.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tag {
    /// An ordinary reading.
    Normal,
    /// Stamped earlier than sent, within the allowed out-of-orderness.
    OutOfOrder,
    /// Stamped 30-90 s in the past.
    Late,
    /// Stamped 10 minutes ahead of its record timestamp.
    Future,
    /// Not a usable reading.
    Malformed,
}

/// How a malformed message is broken.
#[derive(Debug, Clone, PartialEq)]
pub enum Malformation {
    /// Random bytes.
    Garbage(Vec<u8>),
    /// A reading with a broken header (Avro) or trailing junk (JSON).
    BadFraming(Telemetry),
    /// A reading cut in half.
    Truncated(Telemetry),
    /// A reading under a schema id no registry has (Avro), or with a field of the wrong type
    /// (JSON).
    WrongSchema(Telemetry),
    /// A well-formed reading with a value out of range.
    InvalidField(Telemetry),
}

/// The content of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A reading (possibly stamped out of order, late or in the future).
    Reading(Telemetry),
    /// A broken message.
    Malformed(Malformation),
}

/// One message of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Kafka key: the device id.
    pub key: String,
    /// Kafka record timestamp: when the message was really sent, ms since the epoch.
    pub record_ts: i64,
    /// What the generator meant it to be.
    pub tag: Tag,
    /// The message.
    pub body: Body,
}

struct Device {
    tenant_id: String,
    device_id: String,
    class: &'static str,
    phase_ms: i64,
    rt_mu: f64,
    rt_sigma: f64,
    base_error: f64,
    battery: Option<f64>,
    drain: f64,
    signal_mean: Option<f64>,
    attributes: BTreeMap<String, String>,
    burst_left: u32,
    silent_until: i64,
    /// Reports in the first half of every flap cycle only.
    flapping: bool,
}

/// A seeded synthetic fleet; an endless iterator of messages.
pub struct Fleet {
    config: GeneratorConfig,
    rng: ChaCha8Rng,
    devices: Vec<Device>,
    /// Device indices by phase, so each round's readings come in event-time order.
    order: Vec<usize>,
    start_ms: i64,
    round: i64,
    next: usize,
}

/// The tenant and id of device number `i` of a fleet of `tenants` tenants.
fn ids(i: u32, tenants: u32) -> (String, String) {
    let tenant = i % tenants.max(1);
    (
        format!("tenant-{tenant:02}"),
        format!("t{tenant:02}-dev-{i:07}"),
    )
}

/// The tenant and id of every device of a fleet of `config`, as its readings name them (to
/// register the fleet in the inventory).
pub fn device_ids(config: &GeneratorConfig) -> impl Iterator<Item = (String, String)> + use<> {
    let tenants = config.tenants;
    (0..config.devices).map(move |i| ids(i, tenants))
}

impl Fleet {
    /// A fleet whose first round starts at `start_ms` of event time.
    pub fn new(config: &GeneratorConfig, start_ms: i64) -> Fleet {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let interval = config.interval_ms.max(1) as i64;
        let devices: Vec<Device> = (0..config.devices)
            .map(|i| {
                let (tenant_id, device_id) = ids(i, config.tenants);
                let slow = rng.random_bool(config.slow_fraction);
                let median_ms: f64 = rng.random_range(20.0..120.0) * if slow { 10.0 } else { 1.0 };
                let mains_powered = rng.random_bool(0.2);
                Device {
                    tenant_id,
                    device_id,
                    class: CLASSES[rng.random_range(0..CLASSES.len())],
                    phase_ms: rng.random_range(0..interval),
                    rt_mu: median_ms.ln(),
                    rt_sigma: rng.random_range(0.25..0.6),
                    base_error: rng.random_range(0.0..0.01),
                    battery: (!mains_powered).then(|| rng.random_range(5.0..100.0)),
                    drain: rng.random_range(0.000_5..0.01),
                    signal_mean: rng
                        .random_bool(0.9)
                        .then(|| rng.random_range(-105.0..-55.0)),
                    attributes: BTreeMap::from([
                        (
                            "fw".to_string(),
                            format!("2.{}.{}", rng.random_range(0..4), rng.random_range(0..10)),
                        ),
                        (
                            "site".to_string(),
                            format!("site-{}", rng.random_range(0..50)),
                        ),
                    ]),
                    burst_left: 0,
                    silent_until: i64::MIN,
                    // By index, not by a draw: a fleet without flapping keeps its stream.
                    flapping: f64::from(i) < f64::from(config.devices) * config.flapping_fraction,
                }
            })
            .collect();
        let mut order: Vec<usize> = (0..devices.len()).collect();
        order.sort_by_key(|&i| (devices[i].phase_ms, i));
        Fleet {
            config: config.clone(),
            rng,
            devices,
            order,
            start_ms,
            round: 0,
            next: 0,
        }
    }

    /// The next message.
    pub fn next_event(&mut self) -> Event {
        loop {
            if self.next == self.order.len() {
                self.next = 0;
                self.round += 1;
            }
            let index = self.order[self.next];
            self.next += 1;
            let sent_at = self.start_ms
                + self.round * self.config.interval_ms as i64
                + self.devices[index].phase_ms;
            if self.devices[index].silent_until > sent_at {
                continue;
            }
            if self.devices[index].flapping
                && (sent_at - self.start_ms).rem_euclid(FLAP_CYCLE_MS)
                    >= FLAP_CYCLE_MS - FLAP_QUIET_MS
            {
                continue;
            }
            if self.rng.random_bool(self.config.silence_rate) {
                let quiet = self.rng.random_range(SILENCE_MS);
                self.devices[index].silent_until = sent_at + quiet;
                continue;
            }
            return self.message(index, sent_at);
        }
    }

    fn tag(&mut self) -> Tag {
        let c = &self.config;
        let u: f64 = self.rng.random();
        let mut edge = 0.0;
        for (share, tag) in [
            (c.malformed_fraction, Tag::Malformed),
            (c.out_of_order_fraction, Tag::OutOfOrder),
            (c.late_fraction, Tag::Late),
            (c.future_fraction, Tag::Future),
        ] {
            edge += share;
            if u < edge {
                return tag;
            }
        }
        Tag::Normal
    }

    fn message(&mut self, index: usize, sent_at: i64) -> Event {
        let tag = self.tag();
        let ts = match tag {
            Tag::OutOfOrder => {
                sent_at
                    - self
                        .rng
                        .random_range(1..=self.config.max_out_of_order_ms.max(1))
                        as i64
            }
            Tag::Late => sent_at - self.rng.random_range(LATE_BY_MS),
            Tag::Future => sent_at + FUTURE_BY_MS,
            Tag::Normal | Tag::Malformed => sent_at,
        };
        let reading = self.reading(index, ts);
        let key = self.devices[index].device_id.clone();
        let body = if tag == Tag::Malformed {
            Body::Malformed(self.break_it(reading))
        } else {
            Body::Reading(reading)
        };
        Event {
            key,
            record_ts: sent_at,
            tag,
            body,
        }
    }

    fn reading(&mut self, index: usize, ts: i64) -> Telemetry {
        let rng = &mut self.rng;
        let d = &mut self.devices[index];
        let error_p = if d.burst_left > 0 {
            d.burst_left -= 1;
            0.5
        } else if rng.random_bool(self.config.error_burst_rate) {
            d.burst_left = rng.random_range(20..100);
            0.5
        } else {
            d.base_error
        };
        let ok = !rng.random_bool(error_p);
        let error_code = (!ok).then(|| ERROR_CODES[rng.random_range(0..ERROR_CODES.len())]);
        let normal: f64 = StandardNormal.sample(rng);
        let rt = if error_code == Some("E_TIMEOUT") {
            TIMEOUT_RT_MS
        } else {
            (d.rt_mu + d.rt_sigma * normal).exp()
        };
        if let Some(b) = d.battery.as_mut() {
            *b -= d.drain;
            if *b < 3.0 {
                // Someone charged it.
                *b = 100.0;
            }
        }
        let noise: f64 = StandardNormal.sample(rng);
        Telemetry {
            tenant_id: d.tenant_id.clone(),
            device_id: d.device_id.clone(),
            ts,
            response_time_ms: Some(rt),
            ok,
            error_code: error_code.map(str::to_string),
            battery_pct: d.battery,
            signal_dbm: d.signal_mean.map(|m| m + 3.0 * noise),
            device_class: Some(d.class.to_string()),
            attributes: d.attributes.clone(),
        }
    }

    fn break_it(&mut self, mut reading: Telemetry) -> Malformation {
        match self.rng.random_range(0..5) {
            0 => {
                let len = self.rng.random_range(1..64);
                Malformation::Garbage((0..len).map(|_| self.rng.random()).collect())
            }
            1 => Malformation::BadFraming(reading),
            2 => Malformation::Truncated(reading),
            3 => Malformation::WrongSchema(reading),
            _ => {
                match self.rng.random_range(0..4) {
                    0 => reading.battery_pct = Some(150.0),
                    1 => reading.response_time_ms = Some(-5.0),
                    2 => reading.ts = -1,
                    _ => reading.device_id.clear(),
                }
                Malformation::InvalidField(reading)
            }
        }
    }
}

impl Iterator for Fleet {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        Some(self.next_event())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::Record;

    fn config() -> GeneratorConfig {
        GeneratorConfig {
            devices: 200,
            tenants: 3,
            malformed_fraction: 0.05,
            late_fraction: 0.02,
            silence_rate: 0.01,
            ..GeneratorConfig::default()
        }
    }

    #[test]
    fn flapping_devices_are_quiet_for_most_of_every_cycle() {
        let flapping = GeneratorConfig {
            devices: 4,
            tenants: 1,
            silence_rate: 0.0,
            flapping_fraction: 0.5,
            ..GeneratorConfig::default()
        };
        let in_second_half = |e: &Event| {
            (e.record_ts - 1_000_000).rem_euclid(FLAP_CYCLE_MS) >= FLAP_CYCLE_MS - FLAP_QUIET_MS
        };
        let events: Vec<Event> = Fleet::new(&flapping, 1_000_000).take(4_000).collect();
        for device in ["t00-dev-0000000", "t00-dev-0000001"] {
            assert!(
                !events.iter().any(|e| e.key == device && in_second_half(e)),
                "{device} flaps"
            );
        }
        assert!(
            events
                .iter()
                .any(|e| e.key == "t00-dev-0000003" && in_second_half(e)),
            "the others do not"
        );
        // No flapping: the stream a seed gave before flapping existed.
        let none = GeneratorConfig {
            flapping_fraction: 0.0,
            ..flapping.clone()
        };
        let plain = GeneratorConfig {
            silence_rate: 0.0,
            ..GeneratorConfig {
                devices: 4,
                tenants: 1,
                ..GeneratorConfig::default()
            }
        };
        let a: Vec<Event> = Fleet::new(&none, 1_000_000).take(500).collect();
        let b: Vec<Event> = Fleet::new(&plain, 1_000_000).take(500).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let a: Vec<Event> = Fleet::new(&config(), 1_000_000).take(2_000).collect();
        let b: Vec<Event> = Fleet::new(&config(), 1_000_000).take(2_000).collect();
        assert_eq!(a, b);
        let other = GeneratorConfig {
            seed: 7,
            ..config()
        };
        let c: Vec<Event> = Fleet::new(&other, 1_000_000).take(2_000).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn readings_are_valid_and_in_order_per_device_unless_tagged() {
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        let mut tags: BTreeMap<String, usize> = BTreeMap::new();
        for e in Fleet::new(&config(), 1_000_000).take(20_000) {
            *tags.entry(format!("{:?}", e.tag)).or_default() += 1;
            let Body::Reading(t) = &e.body else { continue };
            assert_eq!(t.validate(), Ok(()));
            assert_eq!(t.device_id, e.key);
            if e.tag == Tag::Normal {
                let previous = last.insert(e.key.clone(), e.record_ts);
                assert!(previous.is_none_or(|p| p < e.record_ts));
                assert_eq!(t.ts, e.record_ts);
            }
        }
        for tag in ["Normal", "Malformed", "Late", "OutOfOrder"] {
            assert!(
                tags.get(tag).is_some_and(|n| *n > 0),
                "no {tag} in {tags:?}"
            );
        }
    }

    #[test]
    fn devices_go_silent_and_come_back() {
        let config = GeneratorConfig {
            devices: 20,
            tenants: 1,
            silence_rate: 0.02,
            ..config()
        };
        let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for e in Fleet::new(&config, 0).take(20_000) {
            seen.entry(e.key).or_default().push(e.record_ts);
        }
        let gaps = seen
            .values()
            .flat_map(|ts| ts.windows(2).map(|w| w[1] - w[0]))
            .filter(|gap| *gap >= SILENCE_MS.start)
            .count();
        assert!(
            gaps > 0,
            "no device went silent for two minutes and came back"
        );
    }
}
