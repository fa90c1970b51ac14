//! Readings waiting for the frontier, taken in processing order ([`Reading::order_key`]).
//!
//! Readings arrive roughly in event-time order and are taken in batches: everything before the
//! frontier, each time it moves. So they wait unsorted in buckets of [`BUCKET_MS`] of event time,
//! and when the frontier moves, the buckets it passed are sorted once and taken from the sorted
//! run; a reading that arrives behind the frontier already released (which timely's guarantees
//! rule out, but which costs nothing to honour) is put into the run in its place. A binary heap
//! did the same with scattered memory accesses at every level for every reading, and was a
//! seventh of the job's time with the hundred thousand readings a large fleet keeps waiting. The
//! readings themselves stay in a slab and only their keys move.

use std::collections::BTreeMap;

use crate::reading::Reading;

type Key = (i64, i32, i64);

/// Event time a bucket of waiting readings spans, ms.
const BUCKET_MS: i64 = 100;

/// A queue of readings, taken earliest first up to a limit.
#[derive(Debug, Default)]
pub struct PendingQueue {
    /// Readings at or after `released`, as they came, by `ts / BUCKET_MS`.
    waiting: BTreeMap<i64, Vec<(Key, u32)>>,
    /// How many `waiting` holds.
    waiting_len: usize,
    /// Readings before `released`, sorted with the earliest last.
    ready: Vec<(Key, u32)>,
    /// Every reading before this is in `ready`.
    released: Option<i64>,
    slab: Vec<Option<Reading>>,
    /// Empty places in `slab`.
    free: Vec<u32>,
    /// The vector `ready` was before the last release, kept for the next.
    scratch: Vec<(Key, u32)>,
}

impl PendingQueue {
    /// Queues `r`.
    pub fn push(&mut self, r: Reading) {
        let key = r.order_key();
        let place = match self.free.pop() {
            Some(place) => {
                self.slab[place as usize] = Some(r);
                place
            }
            None => {
                self.slab.push(Some(r));
                u32::try_from(self.slab.len() - 1).unwrap_or(u32::MAX)
            }
        };
        if self.released.is_some_and(|limit| key.0 < limit) {
            let at = self.ready.partition_point(|(k, _)| *k > key);
            self.ready.insert(at, (key, place));
        } else {
            self.waiting
                .entry(key.0.div_euclid(BUCKET_MS))
                .or_default()
                .push((key, place));
            self.waiting_len += 1;
        }
    }

    /// Makes every reading before `limit` available to [`PendingQueue::peek_ts`] and
    /// [`PendingQueue::pop`], in order.
    pub fn release(&mut self, limit: i64) {
        if self.released.is_some_and(|r| limit <= r) {
            return;
        }
        self.released = Some(limit);
        let mut taken = std::mem::take(&mut self.scratch);
        // In i128: the first and last buckets reach past i64's ends.
        let limit_wide = i128::from(limit);
        while let Some(mut bucket) = self.waiting.first_entry() {
            let start = i128::from(*bucket.key()) * i128::from(BUCKET_MS);
            if start >= limit_wide {
                break;
            }
            if start + i128::from(BUCKET_MS) <= limit_wide {
                taken.append(&mut bucket.remove());
            } else {
                bucket.get_mut().retain(|entry| {
                    let before = entry.0.0 < limit;
                    if before {
                        taken.push(*entry);
                    }
                    !before
                });
                break;
            }
        }
        self.waiting_len -= taken.len();
        // Everything already released is earlier than what is released now.
        taken.sort_unstable_by(|a, b| b.cmp(a));
        taken.extend_from_slice(&self.ready);
        self.scratch = std::mem::replace(&mut self.ready, taken);
        self.scratch.clear();
    }

    /// The event time of the earliest released reading.
    pub fn peek_ts(&self) -> Option<i64> {
        self.ready.last().map(|((ts, _, _), _)| *ts)
    }

    /// Takes the earliest released reading.
    pub fn pop(&mut self) -> Option<Reading> {
        let (_, place) = self.ready.pop()?;
        let r = self.slab.get_mut(place as usize).and_then(Option::take);
        self.free.push(place);
        r
    }

    /// Readings queued, released or not.
    pub fn len(&self) -> usize {
        self.ready.len() + self.waiting_len
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The readings, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Reading> {
        self.slab.iter().flatten()
    }

    /// Gives memory back once the queue has drained to a quarter of what it holds room for: it
    /// swells while a partition has yet to deliver its first record (nothing can be processed
    /// until it does).
    pub fn shrink(&mut self) {
        let (len, room) = (self.len(), self.slab.len());
        if room <= 65_536 || len >= room / 4 {
            return;
        }
        let mut slab = Vec::with_capacity(len * 2);
        for entry in self
            .ready
            .iter_mut()
            .chain(self.waiting.values_mut().flatten())
        {
            if let Some(r) = self.slab.get_mut(entry.1 as usize).and_then(Option::take) {
                entry.1 = u32::try_from(slab.len()).unwrap_or(u32::MAX);
                slab.push(Some(r));
            }
        }
        self.slab = slab;
        self.free = Vec::new();
        self.scratch = Vec::new();
        self.ready.shrink_to(len);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn reading(ts: i64, partition: i32, offset: i64) -> Reading {
        Reading::bare(&format!("d{offset}"), ts, partition, offset)
    }

    #[test]
    fn readings_come_out_in_order_up_to_the_limit_and_places_are_reused() {
        let mut q = PendingQueue::default();
        for (ts, p, o) in [(5, 0, 1), (3, 1, 9), (5, 0, 0), (1, 2, 2)] {
            q.push(reading(ts, p, o));
        }
        assert_eq!(q.peek_ts(), None, "nothing released yet");
        q.release(5);
        assert_eq!(q.peek_ts(), Some(1));
        assert_eq!(q.pop().map(|r| r.order_key()), Some((1, 2, 2)));
        // Behind what was released: put in its place.
        q.push(reading(4, 0, 7));
        assert_eq!(q.slab.len(), 4, "the freed place is taken again");
        let before: Vec<_> = std::iter::from_fn(|| q.pop().map(|r| r.order_key())).collect();
        assert_eq!(before, vec![(3, 1, 9), (4, 0, 7)]);
        assert_eq!(q.len(), 2);
        q.release(i64::MAX);
        let rest: Vec<_> = std::iter::from_fn(|| q.pop().map(|r| r.order_key())).collect();
        assert_eq!(rest, vec![(5, 0, 0), (5, 0, 1)]);
        assert!(q.is_empty() && q.pop().is_none());
    }

    #[test]
    fn shrinking_keeps_every_reading_and_the_order() {
        let mut q = PendingQueue::default();
        for i in 0..100_000 {
            q.push(reading(100_000 - i, 0, i));
        }
        q.release(90_001);
        for _ in 0..80_000 {
            q.pop();
        }
        q.shrink();
        assert!(q.slab.len() == 20_000 && q.free.is_empty());
        assert_eq!(q.iter().count(), 20_000);
        q.release(i64::MAX);
        let order: Vec<i64> = std::iter::from_fn(|| q.pop().map(|r| r.ts)).collect();
        assert_eq!(order, (80_001..=100_000).collect::<Vec<i64>>());
    }

    #[test]
    fn the_ends_of_event_time_keep_their_order() {
        let mut q = PendingQueue::default();
        for (ts, o) in [
            (i64::MIN + 10, 0),
            (i64::MIN, 1),
            (i64::MAX, 2),
            (i64::MAX - 1, 3),
        ] {
            q.push(reading(ts, 0, o));
        }
        q.release(i64::MIN + 50);
        q.push(reading(i64::MIN + 20, 0, 4));
        let low: Vec<i64> = std::iter::from_fn(|| q.pop().map(|r| r.ts)).collect();
        assert_eq!(low, vec![i64::MIN, i64::MIN + 10, i64::MIN + 20]);
        q.release(i64::MAX);
        let high: Vec<i64> = std::iter::from_fn(|| q.pop().map(|r| r.ts)).collect();
        assert_eq!(
            high,
            vec![i64::MAX - 1],
            "nothing is before i64::MAX but what is"
        );
        assert_eq!(q.len(), 1);
    }

    proptest! {
        /// Whatever the pushes, limits and pops, readings come out as a heap ordered by key would
        /// give them: the released ones, earliest first.
        #[test]
        fn agrees_with_a_heap(ops in proptest::collection::vec((0u8..3, -500i64..1_000, 0i32..3), 1..300)) {
            let mut q = PendingQueue::default();
            let mut model = std::collections::BTreeSet::new();
            let mut limit = i64::MIN;
            for (i, (op, ts, partition)) in ops.into_iter().enumerate() {
                match op {
                    0 => {
                        let offset = i as i64;
                        q.push(reading(ts, partition, offset));
                        model.insert((ts, partition, offset));
                    }
                    1 => {
                        limit = limit.max(ts);
                        q.release(limit);
                    }
                    _ => {
                        let want = model.first().copied().filter(|k| k.0 < limit);
                        if let Some(k) = want {
                            model.remove(&k);
                        }
                        prop_assert_eq!(q.pop().map(|r| r.order_key()), want);
                    }
                }
                prop_assert_eq!(q.len(), model.len());
            }
        }
    }
}
