//! Last seen: each device's latest reading time, for the compacted `device-lastseen` topic, out
//! within seconds of the reading and at most once per device per `lastseen_interval_ms`.
//!
//! Two halves, each deterministic:
//! - On arrival, before the frontier passes it (which takes the out-of-orderness and more), a
//!   reading is *announced* when it is a device's first or at least an interval after the last
//!   one announced, in the order its partition holds it (a device's readings all come from one
//!   partition, and the device operator's input keeps each sender's order: see
//!   `dataflow/devices.rs` for why that is not timely's `exchange` operator). [`Announcer`]
//!   keeps only the time of each device's last announcement.
//! - In event-time order, the device ([`crate::device`]) makes sure its latest reading goes out:
//!   announced already, or at once when its status changes, or an interval after it when no later
//!   reading came (so a device that falls silent has its final time on the topic long before it
//!   is declared offline), or when a bounded input ends.
//!
//! A device reporting every second thus costs one record per interval, a device reporting less
//! often than the interval one per reading, and the latest record of a device is never older
//! than its latest reading by more than an interval.
//!
//! The two halves write at different moments: a time the device tells in event time may follow
//! the announcement of a newer reading that arrived ahead of the frontier. On a compacted topic
//! the later record is the one kept, so the device then repeats that newer announcement after
//! its own (the same `event_id`: a duplicate consumers drop, and the topic's latest record per
//! device is its newest time).

use foldhash::HashMap;
use schemas::LastSeen;
use serde::{Deserialize, Serialize};

use crate::event_id;
use crate::output::Output;
use crate::reading::Reading;
#[cfg(doc)]
use crate::reading::device_key;

/// The time of each device's last announcement.
///
/// Devices are known by their [`device_key`] rather than by their ids: this map holds every
/// device active within an interval, and ids would double its size (a key two devices shared
/// would hold one back, or repeat another's time for it; at 128 bits no fleet sees one).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Announcer {
    last: HashMap<u128, i64>,
    /// When the map is next rid of stale entries: at this size...
    #[serde(skip)]
    prune_at: usize,
    /// ...or an interval after the frontier it was last rid of them at.
    #[serde(skip)]
    pruned_at: Option<i64>,
}

impl Announcer {
    /// Whether reading `r` is announced (and if so, notes it), with announcements at least
    /// `interval_ms` apart per device.
    pub fn arrive(&mut self, r: &Reading, interval_ms: i64) -> bool {
        match self.last.get_mut(&r.key) {
            Some(last) if r.ts < last.saturating_add(interval_ms) => false,
            Some(last) => {
                *last = r.ts;
                true
            }
            None => {
                self.last.insert(r.key, r.ts);
                true
            }
        }
    }

    /// The time of the last announcement of the device with `key` ([`device_key`]), if one is
    /// kept.
    pub fn last_of(&self, key: u128) -> Option<i64> {
        self.last.get(&key).copied()
    }

    /// Forgets announcements an interval or more before `frontier`, once the map has doubled
    /// or the frontier moved an interval since the last look (so the map holds about the devices
    /// heard within two intervals, and entries of devices another worker owns, taken over from
    /// a checkpoint, go within one). Called once every reading before `frontier` is processed:
    /// every reading still to arrive is at or after the frontier, so such an entry can hold none
    /// back, and no device still to tell an older time needs it; dropping it changes no output.
    pub fn prune(&mut self, frontier: i64, interval_ms: i64) {
        let grown = self.last.len() > self.prune_at.max(1_024);
        let moved = self
            .pruned_at
            .is_none_or(|p| frontier >= p.saturating_add(interval_ms));
        if !(grown || moved) {
            return;
        }
        self.last
            .retain(|_, t| t.saturating_add(interval_ms) > frontier);
        self.prune_at = 2 * self.last.len();
        self.pruned_at = Some(frontier);
    }

    /// Takes over another announcer's entries (a checkpoint's parts, whichever worker wrote
    /// them: an entry of a device this worker does not own is never looked up, and is pruned
    /// within an interval).
    pub fn absorb(&mut self, other: Announcer) {
        for (key, t) in other.last {
            let last = self.last.entry(key).or_insert(t);
            *last = (*last).max(t);
        }
    }

    /// Devices with an announcement kept.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// The record saying device `tenant`/`device` was last seen at `ts`.
pub fn record(tenant: &str, device: &str, class: Option<&str>, ts: i64) -> Output {
    Output::LastSeen(LastSeen {
        tenant_id: tenant.to_owned(),
        device_id: device.to_owned(),
        device_class: class.map(str::to_owned),
        last_seen: ts,
        event_id: event_id::last_seen(tenant, device, ts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(device: &str, ts: i64) -> Reading {
        Reading::bare(device, ts, 0, 0)
    }

    #[test]
    fn a_device_is_announced_first_and_then_at_most_once_an_interval() {
        let mut a = Announcer::default();
        let announced: Vec<i64> = [0, 1_000, 4_999, 5_000, 3_000, 9_000, 10_500, 30_000]
            .into_iter()
            .filter(|ts| a.arrive(&at("d", *ts), 5_000))
            .collect();
        assert_eq!(announced, [0, 5_000, 10_500, 30_000]);
        assert!(
            a.arrive(&at("other", 1_000), 5_000),
            "each device on its own"
        );
    }

    /// A device told an older time (the final one before a silence) after a newer reading was
    /// announced: the newer announcement follows again, so the compacted topic keeps it.
    #[test]
    fn the_newest_time_is_the_last_a_device_writes() {
        use std::sync::Arc;

        use crate::config::PipelineConfig;
        use crate::engine::Engine;

        let mut engine = Engine::new(Arc::new(PipelineConfig::default()));
        let mut out = Vec::new();
        // 0 is announced, 3 is not (within 5 s of it), 9 arrives ahead of the frontier.
        for ts in [0, 3_000, 9_000] {
            engine.push(at("d", ts), &mut out);
        }
        // The frontier passes 8,000: no reading followed 3,000 within the interval.
        engine.advance(8_500, 8_500, &mut out, usize::MAX);
        let times: Vec<i64> = out
            .iter()
            .filter_map(|o| match o {
                Output::LastSeen(l) => Some(l.last_seen),
                _ => None,
            })
            .collect();
        assert_eq!(times, [0, 9_000, 3_000, 9_000]);
    }

    #[test]
    fn pruning_forgets_only_what_no_reading_can_be_held_back_by() {
        let mut a = Announcer::default();
        for d in 0..3_000 {
            assert!(a.arrive(&at(&format!("d{d}"), i64::from(d)), 5_000));
        }
        // Readings still to come are at or after 6,000: entries at or before 1,000 hold none
        // back.
        a.prune(6_000, 5_000);
        assert_eq!(a.len(), 1_999);
        assert!(!a.arrive(&at("d1500", 6_000), 5_000));
        assert!(a.arrive(&at("d999", 6_000), 5_000));
    }
}
