//! When each device is probed next. A device's probes keep its interval's cadence at a phase its
//! key fixes, counted from the epoch (so a fleet registered at once is spread evenly over the
//! interval, never all at the top of the minute, and the same on every restart), each moved by
//! up to `jitter` of the interval at random so that devices that share a phase drift apart.
//!
//! Devices live in a slab (an index each, reused) and the queue holds 16-byte entries, so a
//! million devices cost a few tens of megabytes; a device removed or rescheduled leaves its old
//! queue entry behind, which is skipped by its generation when it comes up.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use twox_hash::XxHash3_64;

use crate::DeviceId;

struct Slot<T> {
    key: DeviceId,
    target: T,
    interval_ms: i64,
    /// When it is due next, its cadence before jitter.
    next: i64,
    generation: u32,
}

/// The schedule of every device this instance probes, each with its value `T` (what the poller
/// keeps of it).
pub struct Schedule<T> {
    slots: Vec<Option<Slot<T>>>,
    free: Vec<u32>,
    index: HashMap<DeviceId, u32>,
    /// (due, slot, generation), earliest first.
    queue: BinaryHeap<Reverse<(i64, u32, u32)>>,
    jitter: f64,
    rng: ChaCha8Rng,
}

/// A device's phase within its interval, from its key alone.
fn phase(key: &DeviceId, interval_ms: i64) -> i64 {
    let hash = XxHash3_64::oneshot(schemas::device_key(&key.0, &key.1).as_bytes());
    (hash % interval_ms.max(1) as u64) as i64
}

impl<T> Schedule<T> {
    /// An empty schedule; `jitter` is a share of the interval, `seed` the jitter's random seed.
    pub fn new(jitter: f64, seed: u64) -> Schedule<T> {
        Schedule {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            queue: BinaryHeap::new(),
            jitter,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Devices scheduled.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no device is scheduled.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Adds a device, or changes one: a new value with the same interval keeps the device's
    /// cadence; a new interval starts again from its phase after `now`.
    pub fn upsert(&mut self, key: DeviceId, target: T, interval_ms: i64, now: i64) {
        let interval_ms = interval_ms.max(1);
        if let Some(&i) = self.index.get(&key)
            && let Some(slot) = self.slots[i as usize].as_mut()
        {
            slot.target = target;
            if slot.interval_ms == interval_ms {
                return;
            }
            slot.interval_ms = interval_ms;
            slot.generation = slot.generation.wrapping_add(1);
            slot.next = first_due(&slot.key, interval_ms, now);
            let entry = (slot.next, i, slot.generation);
            self.queue.push(Reverse(entry));
            return;
        }
        let next = first_due(&key, interval_ms, now);
        let slot = Slot {
            key: key.clone(),
            target,
            interval_ms,
            next,
            generation: 0,
        };
        let i = match self.free.pop() {
            Some(i) => {
                let generation = self.slots[i as usize]
                    .as_ref()
                    .map_or(0, |s| s.generation.wrapping_add(1));
                self.slots[i as usize] = Some(Slot { generation, ..slot });
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        let generation = self.slots[i as usize].as_ref().map_or(0, |s| s.generation);
        self.queue.push(Reverse((next, i, generation)));
    }

    /// Removes a device; whether it was scheduled.
    pub fn remove(&mut self, key: &DeviceId) -> bool {
        let Some(i) = self.index.remove(key) else {
            return false;
        };
        // The slot keeps its generation (bumped) so that its queue entry is skipped.
        if let Some(slot) = self.slots[i as usize].as_mut() {
            slot.generation = slot.generation.wrapping_add(1);
        }
        self.free.push(i);
        true
    }

    /// A device's value.
    pub fn get_mut(&mut self, key: &DeviceId) -> Option<&mut T> {
        let i = *self.index.get(key)?;
        self.slots[i as usize].as_mut().map(|slot| &mut slot.target)
    }

    /// When the earliest probe is due, if any device is scheduled.
    pub fn next_due(&mut self) -> Option<i64> {
        self.skip_stale();
        self.queue.peek().map(|Reverse((due, _, _))| *due)
    }

    /// The next device due at or before `now`, its key and value, rescheduled one interval on.
    pub fn pop_due(&mut self, now: i64) -> Option<(&DeviceId, &mut T)> {
        self.skip_stale();
        let Reverse((due, i, _)) = *self.queue.peek().filter(|Reverse((d, _, _))| *d <= now)?;
        self.queue.pop();
        let spread = self.jitter;
        let slot = self.slots[i as usize].as_mut()?;
        // Keep the cadence; a device that fell more than an interval behind (a stalled poller)
        // starts again from now rather than probing to catch up.
        slot.next += slot.interval_ms;
        if slot.next <= now {
            slot.next = now + slot.interval_ms;
        }
        let jitter = if spread > 0.0 {
            let most = (slot.interval_ms as f64 * spread) as i64;
            self.rng.random_range(-most..=most)
        } else {
            0
        };
        let again = (slot.next + jitter).max(due + 1);
        self.queue.push(Reverse((again, i, slot.generation)));
        Some((&slot.key, &mut slot.target))
    }

    /// Drops queue entries of removed or rescheduled devices from the front.
    fn skip_stale(&mut self) {
        while let Some(Reverse((_, i, generation))) = self.queue.peek() {
            let live = self.slots[*i as usize]
                .as_ref()
                .is_some_and(|s| s.generation == *generation && self.index.get(&s.key) == Some(i));
            if live {
                return;
            }
            self.queue.pop();
        }
    }
}

/// The first time at or after `now` that is the device's phase in its interval, counted from
/// the epoch: the cadence is the same whenever the device was scheduled, so a restarted poller,
/// or another instance taking the device over, probes it when the last one would have.
fn first_due(key: &DeviceId, interval_ms: i64, now: i64) -> i64 {
    now + (phase(key, interval_ms) - now).rem_euclid(interval_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> DeviceId {
        ("t".into(), format!("d{n}"))
    }

    /// Every probe of every device due up to `until`, as (time, device number).
    fn run(s: &mut Schedule<u32>, from: i64, until: i64, step: i64) -> Vec<(i64, u32)> {
        let mut probes = Vec::new();
        let mut now = from;
        while now <= until {
            while let Some((_, n)) = s.pop_due(now) {
                probes.push((now, *n));
            }
            now += step;
        }
        probes
    }

    #[test]
    fn devices_keep_their_cadence_spread_over_the_interval() {
        let mut s = Schedule::new(0.0, 1);
        for n in 0..1_000 {
            s.upsert(key(n), n, 10_000, 0);
        }
        let probes = run(&mut s, 0, 99_999, 1);
        // Ten probes each in 100 s, ten seconds apart.
        assert_eq!(probes.len(), 10_000);
        let mut per_device: HashMap<u32, Vec<i64>> = HashMap::new();
        for (t, n) in &probes {
            per_device.entry(*n).or_default().push(*t);
        }
        assert!(
            per_device
                .values()
                .all(|ts| ts.len() == 10
                    && ts.windows(2).all(|w| (w[1] - w[0] - 10_000).abs() <= 10))
        );
        // No herd: every second of the interval gets about a tenth of the first round.
        let mut per_second = [0u32; 10];
        for (t, _) in probes.iter().filter(|(t, _)| *t < 10_000) {
            per_second[(*t / 1_000) as usize] += 1;
        }
        assert!(
            per_second.iter().all(|n| (60..=140).contains(n)),
            "{per_second:?}"
        );
    }

    #[test]
    fn jitter_moves_probes_within_its_share_without_drift() {
        let mut s = Schedule::new(0.1, 7);
        s.upsert(key(1), 1, 10_000, 0);
        let times: Vec<i64> = run(&mut s, 0, 1_000_000, 1)
            .iter()
            .map(|(t, _)| *t)
            .collect();
        let first = times[0];
        for (k, t) in times.iter().enumerate() {
            let cadence = first + 10_000 * k as i64;
            assert!(
                (t - cadence).abs() <= 1_000,
                "probe {k} at {t}, cadence {cadence}"
            );
        }
        assert!(times.len() >= 99, "{}", times.len());
    }

    #[test]
    fn changes_and_removals_take_effect_at_once() {
        let mut s = Schedule::new(0.0, 1);
        s.upsert(key(1), 1, 1_000, 0);
        s.upsert(key(2), 2, 1_000, 0);
        assert!(s.remove(&key(2)));
        assert!(!s.remove(&key(2)));
        // A new target with the same interval keeps the cadence.
        s.upsert(key(1), 10, 1_000, 0);
        let probes = run(&mut s, 0, 2_999, 1);
        assert_eq!(probes.iter().map(|p| p.1).collect::<Vec<_>>(), [10, 10, 10]);
        // A new interval; the freed slot taken by another device.
        s.upsert(key(1), 10, 500, 3_000);
        s.upsert(key(3), 3, 1_000, 3_000);
        let probes = run(&mut s, 3_000, 4_999, 1);
        assert_eq!(probes.iter().filter(|p| p.1 == 10).count(), 4);
        assert_eq!(probes.iter().filter(|p| p.1 == 3).count(), 2);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_device_s_cadence_is_the_same_whenever_it_is_scheduled() {
        let due = |now| {
            let mut s = Schedule::new(0.0, 1);
            s.upsert(key(7), 7, 30_000, now);
            s.next_due().unwrap()
        };
        let first = due(1_700_000_000_000);
        assert!((0..30_000).contains(&(first - 1_700_000_000_000)));
        // Scheduled again 4.5 intervals later (a restart): the same cadence.
        let again = due(1_700_000_135_000);
        assert_eq!((again - first).rem_euclid(30_000), 0);
        assert!((0..30_000).contains(&(again - 1_700_000_135_000)));
    }

    #[test]
    fn a_stalled_poller_does_not_catch_up_with_a_burst() {
        let mut s = Schedule::new(0.0, 1);
        s.upsert(key(1), 1, 1_000, 0);
        let first = s.next_due().unwrap();
        assert!(s.pop_due(first).is_some());
        // Asked again only ten intervals later: one probe, then the cadence from there.
        assert!(s.pop_due(first + 10_000).is_some());
        assert!(s.pop_due(first + 10_000).is_none());
        assert_eq!(s.next_due(), Some(first + 11_000));
    }
}
