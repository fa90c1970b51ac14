//! Clock truth: the event time a partition's readings are judged against, which no single
//! device's clock can move, and each device's clock offset from it.
//!
//! Where the truth comes from:
//! - a record timestamp the broker stamped (`LogAppendTime`), or one configuration trusts
//!   (`pipeline.trust_record_time`, for producers with a good clock such as fleetpulse's own
//!   gateways): the truth at a record's arrival is its own timestamp;
//! - otherwise a consensus of the partition's devices: the lower median, over the devices that
//!   cast the partition's last [`WINDOW`] votes, of each one's newest vote among them. A device
//!   votes with a reading that agrees with the truth (within `clock_tolerance_ms`) and with its
//!   own clock; a device whose clock is off never votes, however often it reports, so fewer than
//!   half of a partition's active devices cannot move the truth, whatever their clocks do (unless
//!   one that voted sends a whole window of readings between two votes of the others).
//!   Until the partition has heard [`QUORUM`] devices (or [`BOOT_VOTES`] readings, for
//!   partitions of one or two devices) it has no truth: readings are taken as stamped, and the
//!   first median drops the devices further than the tolerance from it. When the partition moves
//!   on without a vote (a fleet back after a silence, devices that report less often than the
//!   tolerance, or the devices still reporting outnumbered in the votes by devices that fell
//!   silent), every reading is ahead of the old truth: a run of readings ahead of it (of devices
//!   that voted or whose offset is known, measured re-timed), with no vote in between, from more
//!   than half of the devices voting lately, or [`WINDOW`] readings long, makes the median of
//!   their devices' newest readings the truth.
//!
//! A device's offset is its reading time minus the truth at arrival. A reading within the
//! tolerance of the device's known offset (zero for most devices) agrees with its clock. A
//! reading that does not is an outlier, judged as stamped (late, future, or accepted as it is)
//! until the device keeps a new offset for [`CONFIRM_READINGS`] readings in a row, over at least
//! the tolerance of the truth's time, while other devices upheld the truth with
//! [`CONFIRM_SUPPORT`] votes (a trusted record time needs no support), the count starting again
//! whenever the truth moved on without votes: the offset is then the device's, its readings are re-timed by it (or dead-lettered as `clock_skew` without
//! correction), and the device operator raises a `clock_skew` anomaly. A burst of old readings
//! replayed at once spans no time and is never taken for a clock. A reading that agrees with the
//! truth itself puts the device's offset back to zero at once.
//!
//! A reading more than `max_future_skew_ms` ahead of the truth is `future`, unless its record
//! timestamp, stamped by its producer, vouches for it (a partition whose devices report rarely
//! has a truth that lags by up to a reporting interval).
//!
//! Everything here is state of the partition, checkpointed with it: the output is a function of
//! the input alone.

mod devices;
mod votes;

use std::collections::{HashMap, VecDeque};

use schemas::DeadLetterReason;
use serde::{Deserialize, Serialize};

use crate::reading::fnv1a;
use votes::{Window, lower_median, newest};

/// The maps here are looked up for every reading; foldhash costs a fraction of SipHash, and
/// nothing iterates them where the order could show in the output.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Votes the consensus looks back over: a device's vote is its newest among the partition's last
/// this many votes, and a run of this many readings ahead of the truth without a vote moves it.
pub const WINDOW: usize = 64;
/// Distinct devices a partition must have heard before it has a truth.
pub const QUORUM: usize = 3;
/// Readings after which a partition of fewer devices than [`QUORUM`] takes a truth anyway.
pub const BOOT_VOTES: u32 = 16;
/// Outlier readings in a row that make a new offset the device's.
pub const CONFIRM_READINGS: u32 = 3;
/// Votes of other devices while an outlier persists (consensus only): without them the device
/// may be the first of a partition that moved on, not a wrong clock.
pub const CONFIRM_SUPPORT: u64 = 3;
/// A device's clock state is forgotten after this long without a reading (event time of the
/// truth); its offset is confirmed again when it returns.
const FORGET_AFTER_MS: i64 = 86_400_000;

/// A record's timestamp and who stamped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordTime {
    /// No timestamp (a file).
    None,
    /// Stamped by the producer (Kafka `CreateTime`).
    Producer(i64),
    /// Stamped by the broker on append (Kafka `LogAppendTime`).
    Broker(i64),
}

impl RecordTime {
    /// The timestamp, whoever stamped it.
    pub fn millis(self) -> Option<i64> {
        match self {
            RecordTime::None => None,
            RecordTime::Producer(t) | RecordTime::Broker(t) => Some(t),
        }
    }
}

/// The settings clocks are judged by.
#[derive(Debug, Clone, Copy)]
pub struct ClockRules {
    /// A device whose clock is off by more than this has a wrong clock, ms.
    pub tolerance_ms: i64,
    /// Re-time readings of a device with a known offset (else dead-letter them).
    pub correction: bool,
    /// Trust producers' record timestamps as brokers' are trusted.
    pub trust_producer: bool,
    /// How far ahead of the truth a reading may be stamped, ms.
    pub max_future_skew_ms: i64,
}

/// What became of one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// Use it at event time `ts`: its own, or re-timed by the device's clock offset.
    Accept {
        /// Event time to use.
        ts: i64,
        /// The device's known clock offset, ms (0: none).
        offset: i64,
        /// Whether `ts` is the reading's time re-timed by `offset`.
        retimed: bool,
    },
    /// A dead letter. `arrival`: the device's presence still counts the reading, at that time
    /// (a device that reports is never shown offline because its clock is wrong).
    Reject {
        /// Why.
        reason: DeadLetterReason,
        /// The device's known clock offset, ms (0: none).
        offset: i64,
        /// The reading's time minus the truth at its arrival, when there is a truth.
        skew: Option<i64>,
        /// When the device's presence counts the reading.
        arrival: Option<i64>,
    },
}

/// A device whose clock is or may be off.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DeviceClock {
    /// The confirmed offset; 0 when the clock agrees with the truth.
    offset: i64,
    /// A new offset its readings agree on, not yet confirmed.
    candidate: Option<Candidate>,
    /// The truth at its last reading.
    seen: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Candidate {
    offset: i64,
    readings: u32,
    /// Votes cast in the partition when the candidate began.
    since: u64,
    /// The truth at its first reading.
    from: i64,
    /// Rebases of the partition's truth when it began.
    rebases: u64,
}

/// A stable hash of a device (its tenant and id; `0xff` never occurs in UTF-8, so no two pairs
/// join to the same bytes).
pub fn device_hash(tenant: &str, device: &str) -> u64 {
    let fold = |h: u64, b: &u8| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    let h = fnv1a(tenant.as_bytes());
    let h = fold(h, &0xff);
    device.as_bytes().iter().fold(h, fold)
}

/// One partition's clock truth and the clocks of its devices that disagree with it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Truth {
    /// The truth data has established (monotone); `None` before the quorum.
    time: Option<i64>,
    /// Where idleness (the wall clock) has taken the truth; readings are judged against the
    /// later of the two, while only `time` counts as data.
    floor: Option<i64>,
    window: Window,
    /// Readings heard before the quorum.
    heard: u32,
    /// Ahead-of-truth readings since the last vote, `(device hash, time)`, the last [`WINDOW`].
    streak: VecDeque<(u64, i64)>,
    /// Votes cast so far.
    cast: u64,
    /// Times the truth moved on without votes.
    rebases: u64,
    /// Devices with a known offset or a candidate, by tenant and id.
    devices: Map<String, Map<String, DeviceClock>>,
    device_count: usize,
    /// When the device map next forgets silent devices (its size then).
    prune_at: usize,
}

impl Truth {
    /// The truth data has established, if any.
    pub fn time(&self) -> Option<i64> {
        self.time
    }

    /// The truth readings are judged against: data's, or the wall clock's when idleness took it
    /// further.
    pub fn judged(&self) -> Option<i64> {
        match (self.time, self.floor) {
            (Some(t), Some(f)) => Some(t.max(f)),
            (t, f) => t.or(f),
        }
    }

    /// Lets the wall clock `now` carry the truth of an idle partition, which then also takes a
    /// truth from whatever votes it has.
    pub fn follow(&mut self, now: i64, rules: &ClockRules) {
        self.settle(rules);
        self.floor = Some(self.floor.map_or(now, |f| f.max(now)));
    }

    /// Takes a truth from the votes heard so far, if there is none yet (the input ended, or the
    /// partition went idle, before a quorum).
    pub fn settle(&mut self, rules: &ClockRules) {
        if self.time.is_none() && !self.window.sorted.is_empty() {
            self.commit(rules.tolerance_ms);
        }
    }

    fn raise(&mut self, t: Option<i64>) {
        if let Some(t) = t {
            self.time = Some(self.time.map_or(t, |x| x.max(t)));
        }
    }

    /// Judges a reading of `tenant`/`device` stamped `ts`, arriving with `record`, against the
    /// partition's watermark `wm` (event time behind which readings are late).
    pub fn judge(
        &mut self,
        tenant: &str,
        device: &str,
        ts: i64,
        record: RecordTime,
        wm: Option<i64>,
        rules: &ClockRules,
    ) -> Judged {
        let trusted = trusted_time(record, rules);
        self.raise(trusted);
        let hash = device_hash(tenant, device);
        let Some(mut truth) = trusted.or_else(|| self.judged()) else {
            // No truth yet: taken as stamped, and heard.
            self.window.push(hash, ts);
            self.heard += 1;
            if self.heard >= BOOT_VOTES || self.window.voters.len() >= QUORUM {
                self.commit(rules.tolerance_ms);
            }
            return Judged::Accept {
                ts,
                offset: 0,
                retimed: false,
            };
        };
        let tolerance = rules.tolerance_ms;
        // A device that votes, or whose wrong clock is known, ahead of the truth by its own
        // measure: the partition may have moved on.
        let known = self.offset_of(tenant, device);
        let corrected = ts.saturating_sub(known);
        if trusted.is_none()
            && corrected.saturating_sub(truth) > tolerance
            && (known != 0 || self.window.voters.contains_key(&hash))
        {
            self.streak.push_back((hash, corrected));
            if self.streak.len() > WINDOW {
                self.streak.pop_front();
            }
            if self.rebase() {
                truth = self.judged().unwrap_or(truth);
            }
        }
        let trusts = trusted.is_some();
        let (judged, votes) = self.verdict(tenant, device, ts, record, trusts, truth, wm, rules);
        if votes {
            self.cast += 1;
            self.streak.clear();
            if trusted.is_none() {
                self.window.push(hash, ts);
                self.raise(self.window.median());
            }
        }
        judged
    }

    /// What becomes of a reading judged against `truth` (its record's own time when `trusted`),
    /// and whether it votes (it agrees with the truth and its device's clock has no offset).
    #[allow(clippy::too_many_arguments)] // one reading and what it is judged by
    fn verdict(
        &mut self,
        tenant: &str,
        device: &str,
        ts: i64,
        record: RecordTime,
        trusted: bool,
        truth: i64,
        wm: Option<i64>,
        rules: &ClockRules,
    ) -> (Judged, bool) {
        let skew = ts.saturating_sub(truth);
        let (offset, agrees) = self.device(tenant, device, skew, truth, rules, trusted);
        // Whatever becomes of the reading, the device reported, at the truth of its arrival.
        let arrival = Some(wm.map_or(truth, |w| truth.max(w)));
        let reject = |reason| Judged::Reject {
            reason,
            offset,
            skew: Some(skew),
            arrival,
        };
        if agrees && offset != 0 {
            if !rules.correction {
                return (reject(DeadLetterReason::ClockSkew), false);
            }
            // The offset is known within the tolerance only: a re-timed reading is never late.
            let ts = ts.saturating_sub(offset).max(wm.unwrap_or(i64::MIN));
            let retimed = Judged::Accept {
                ts,
                offset,
                retimed: true,
            };
            return (retimed, false);
        }
        let vouched = record
            .millis()
            .is_some_and(|r| ts.saturating_sub(r) <= rules.max_future_skew_ms);
        if skew > rules.max_future_skew_ms && !vouched {
            return (reject(DeadLetterReason::Future), false);
        }
        if wm.is_some_and(|w| ts < w) {
            return (reject(DeadLetterReason::Late), false);
        }
        let accepted = Judged::Accept {
            ts,
            offset,
            retimed: false,
        };
        (accepted, agrees)
    }

    /// The first truth: the lower median of the voters' newest votes, after dropping the devices
    /// further than the tolerance from it (a wrong clock among the first devices heard).
    fn commit(&mut self, tolerance: i64) {
        let Some(m0) = self.window.median() else {
            return;
        };
        let far: Vec<u64> = self
            .window
            .voters
            .iter()
            .filter(|(_, (_, newest))| newest.abs_diff(m0) > tolerance.unsigned_abs())
            .map(|(d, _)| *d)
            .collect();
        self.window.retain(|d, _| !far.contains(&d));
        self.raise(self.window.median());
    }

    /// After a run of readings ahead of the truth with no vote in between (the last of them the
    /// one being judged): if they come from more than half of the devices voting lately (those
    /// of the votes and of the run), or the run is as long as the window of votes (the devices
    /// still voting fell silent), the partition has moved on: the run's readings are its votes,
    /// and the median of their devices' newest its truth. Returns whether it moved.
    fn rebase(&mut self) -> bool {
        let run = newest(self.streak.iter().copied());
        if self.streak.len() < WINDOW {
            // Most runs are one wrong clock between votes: too short to be a majority.
            if 2 * self.streak.len() <= self.window.voters.len() {
                return false;
            }
            let others = self
                .window
                .voters
                .keys()
                .filter(|d| !run.iter().any(|(r, _)| r == *d))
                .count();
            if run.len() <= others {
                return false;
            }
        }
        // The reading being judged (the run's last) votes for itself if it agrees with the new
        // truth.
        self.window = Window::default();
        let earlier = self.streak.len().saturating_sub(1);
        for (d, t) in self.streak.iter().take(earlier) {
            self.window.push(*d, *t);
        }
        self.streak.clear();
        self.rebases += 1;
        let mut times: Vec<i64> = run.iter().map(|(_, t)| *t).collect();
        times.sort_unstable();
        self.raise(lower_median(&times));
        true
    }

    /// The latest event time a reading of `tenant`/`device` stamped `ts` can be taken at, for the
    /// cut bookkeeping: its stamp; an arrival at the truth, which a trusted record time, a vote
    /// or a rebase (to the run's times, this one's re-timed by its known offset) can move first;
    /// or, re-timed by a known offset, within the tolerance above that truth.
    pub fn reach(
        &self,
        tenant: &str,
        device: &str,
        ts: i64,
        record: RecordTime,
        wm: Option<i64>,
        rules: &ClockRules,
    ) -> i64 {
        let known = self.offset_of(tenant, device);
        let streak = self.streak.iter().map(|(_, t)| *t).max();
        let corrected = Some(ts.saturating_sub(known));
        let truth = [self.judged(), record.millis(), wm, streak, corrected]
            .into_iter()
            .flatten()
            .fold(ts, i64::max);
        if known == 0 {
            truth
        } else {
            truth.saturating_add(rules.tolerance_ms)
        }
    }
}

/// The truth a record's timestamp gives, if it is trusted: the broker's always, a producer's when
/// configured, and neither outside the range a reading may have (a timestamp in microseconds
/// would set the partition's truth for good).
fn trusted_time(record: RecordTime, rules: &ClockRules) -> Option<i64> {
    let t = match record {
        RecordTime::Broker(t) => t,
        RecordTime::Producer(t) if rules.trust_producer => t,
        _ => return None,
    };
    (schemas::TS_MIN_MS..schemas::TS_MAX_MS)
        .contains(&t)
        .then_some(t)
}

#[cfg(test)]
mod tests;
