//! A partition's recent votes: the last [`WINDOW`](super::WINDOW) readings that agreed with the
//! truth, by device, and the lower median of each voter's newest vote, which is the truth.

use super::*;

/// The partition's last [`WINDOW`] votes, and each voting device's newest vote among them,
/// sorted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Window {
    /// `(device hash, time)`, oldest first.
    pub(super) ring: VecDeque<(u64, i64)>,
    /// The voting devices: their votes in the ring, and the newest.
    pub(super) voters: Map<u64, (u32, i64)>,
    /// The voters' newest votes, sorted.
    pub(super) sorted: Vec<i64>,
}

impl Window {
    pub(super) fn push(&mut self, device: u64, ts: i64) {
        self.ring.push_back((device, ts));
        self.add_vote(device, ts);
        if self.ring.len() > WINDOW
            && let Some((d, t)) = self.ring.pop_front()
        {
            self.drop_vote(d, t);
        }
    }

    pub(super) fn add_vote(&mut self, device: u64, ts: i64) {
        match self.voters.get_mut(&device) {
            Some((n, newest)) => {
                *n += 1;
                if ts > *newest {
                    let old = std::mem::replace(newest, ts);
                    self.unsort(old);
                    self.sort_in(ts);
                }
            }
            None => {
                self.voters.insert(device, (1, ts));
                self.sort_in(ts);
            }
        }
    }

    /// A vote left the ring: its device's newest is the newest of its votes still there.
    pub(super) fn drop_vote(&mut self, device: u64, ts: i64) {
        let Some((n, newest)) = self.voters.get(&device).copied() else {
            return;
        };
        if n <= 1 {
            self.voters.remove(&device);
            self.unsort(newest);
        } else if ts >= newest {
            let fresh = self
                .ring
                .iter()
                .filter(|(d, _)| *d == device)
                .map(|(_, t)| *t)
                .max()
                .unwrap_or(newest);
            self.voters.insert(device, (n - 1, fresh));
            self.unsort(newest);
            self.sort_in(fresh);
        } else {
            self.voters.insert(device, (n - 1, newest));
        }
    }

    pub(super) fn sort_in(&mut self, t: i64) {
        let at = self.sorted.partition_point(|x| *x < t);
        self.sorted.insert(at, t);
    }

    pub(super) fn unsort(&mut self, t: i64) {
        if let Ok(i) = self.sorted.binary_search(&t) {
            self.sorted.remove(i);
        }
    }

    /// Keeps only the votes `keep` accepts.
    pub(super) fn retain(&mut self, keep: impl Fn(u64, i64) -> bool) {
        let kept: Vec<(u64, i64)> = self
            .ring
            .iter()
            .copied()
            .filter(|(d, t)| keep(*d, *t))
            .collect();
        *self = Window::default();
        for (d, t) in kept {
            self.push(d, t);
        }
    }

    pub(super) fn median(&self) -> Option<i64> {
        lower_median(&self.sorted)
    }
}

/// The lower median of sorted values: fewer than half of them cannot move it beyond the range
/// of the rest.
pub(super) fn lower_median(sorted: &[i64]) -> Option<i64> {
    sorted.get(sorted.len().checked_sub(1)? / 2).copied()
}

/// Each device's newest time among `(device, time)` pairs, in the order each last appears.
pub(super) fn newest(pairs: impl Iterator<Item = (u64, i64)>) -> Vec<(u64, i64)> {
    let mut out: Vec<(u64, i64)> = Vec::new();
    for (d, t) in pairs {
        let mut t = t;
        if let Some(i) = out.iter().position(|(e, _)| *e == d) {
            t = t.max(out.remove(i).1);
        }
        out.push((d, t));
    }
    out
}
