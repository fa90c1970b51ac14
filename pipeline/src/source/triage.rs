//! Triage of one record: decoded and checked ([`Decoder`], unless the read-ahead thread did it),
//! judged by its partition's clock, and sent on as a compact reading, a dead letter, or both (a
//! reading whose clock cannot be trusted still says its device reported). An inventory record
//! becomes a reading of its own kind at its record time, which its partition's clock takes as
//! the truth (the inventory's producer stamps it); one behind its partition's watermark is taken
//! at the watermark, as a registration is never too late to count. An availability report is
//! judged as a reading is: an online one counts as its device's arrival (a sign of life, no
//! measurement), an offline one as [`ReadingKind::ReportedOffline`], and a late one of going
//! offline only as a dead letter. Plain state, no timely: the source operator hands it records
//! and sends what it gathers.

use std::sync::Arc;

use schemas::{Codec, DeadLetter, DeadLetterReason};

use super::decoder::{Decoder, Enrolment, Item, Unusable};
use super::joined::{is_inventory, source_partition};
use super::{RawRecord, SchemaFetcher};
use crate::clock::{Judged, RecordTime};
use crate::event_id;
use crate::events;
use crate::reading::{Reading, ReadingKind};
use crate::watermark::Watermarks;

/// The most of a rejected value a dead letter carries, so the dead letter itself stays within
/// the broker's message size limit.
const MAX_RAW: usize = 256 * 1024;

/// What triage sends on, gathered over a batch of records.
#[derive(Debug, Default)]
pub struct Triaged {
    /// Accepted readings (and the arrivals of rejected ones).
    pub readings: Vec<Reading>,
    /// Rejected records.
    pub dead: Vec<DeadLetter>,
}

/// Where a record came from, for its dead letter.
struct Source<'a> {
    partition: i32,
    offset: i64,
    record_time: crate::clock::RecordTime,
    key: Option<&'a [u8]>,
}

/// Decodes and judges the records of one worker's partitions.
pub struct Triage {
    topic: Arc<str>,
    inventory_topic: Arc<str>,
    decoder: Decoder,
    replay_below: Option<i64>,
}

impl Triage {
    /// Triage of records from `topic`. Accepted readings before `replay_below` were counted
    /// before the checkpoint the job resumed from: they are judged, so lateness stays as it was,
    /// but not sent again.
    pub fn new(
        topic: &str,
        inventory_topic: Option<&str>,
        codec: Codec,
        fetcher: Option<Arc<dyn SchemaFetcher>>,
        limits: schemas::Limits,
        replay_below: Option<i64>,
    ) -> Triage {
        Triage {
            topic: topic.into(),
            inventory_topic: inventory_topic.unwrap_or_default().into(),
            decoder: Decoder::new(codec, fetcher, limits),
            replay_below,
        }
    }

    fn fresh(&self, ts: i64) -> bool {
        self.replay_below.is_none_or(|c| ts >= c)
    }

    /// Takes one record read at wall time `now`; what it gives goes into `out`.
    pub fn take(&mut self, rec: RawRecord<'_>, wm: &mut Watermarks, now: i64, out: &mut Triaged) {
        let RawRecord {
            partition,
            offset,
            record_time,
            key,
            stamp,
            payload,
        } = rec;
        let source = Source {
            partition,
            offset,
            record_time,
            key,
        };
        let (decoded, raw) = self
            .decoder
            .check(is_inventory(partition), key, stamp, payload);
        let (t, report) = match decoded {
            Ok(Item::Reading(t)) => (t, None),
            Ok(Item::Report(t, online)) => (t, Some(online)),
            Ok(Item::Inventory(e)) => return self.enrolment(&source, raw, e, wm, now, out),
            Err(why) => {
                wm.touch(partition, offset);
                self.dead(&source, raw, why, out);
                return;
            }
        };
        let judged = wm.observe(
            partition,
            offset,
            &t.tenant_id,
            &t.device_id,
            t.ts,
            record_time,
            now,
        );
        match judged {
            Judged::Accept {
                ts,
                offset: clock_offset,
                retimed,
            } => {
                if self.fresh(ts) {
                    let kind = match report {
                        Some(false) => ReadingKind::ReportedOffline,
                        Some(true) => ReadingKind::Arrival,
                        None if retimed => {
                            events::retimed();
                            ReadingKind::Retimed
                        }
                        None => ReadingKind::Stamped,
                    };
                    let r = Reading::new(&t, partition, offset, ts, clock_offset, kind);
                    out.readings.push(r);
                }
            }
            Judged::Reject {
                reason,
                offset: clock_offset,
                skew,
                arrival,
            } => {
                let detail = rejection(reason, t.ts, skew, clock_offset);
                // A report of going offline says nothing of the device being there.
                let arrival = arrival.filter(|_| report != Some(false));
                if let Some(at) = arrival.filter(|at| self.fresh(*at)) {
                    let kind = ReadingKind::Arrival;
                    let r = Reading::new(&t, partition, offset, at, clock_offset, kind);
                    out.readings.push(r);
                }
                self.dead(&source, raw, (reason, detail), out);
            }
        }
    }

    fn enrolment(
        &self,
        rec: &Source<'_>,
        raw: &[u8],
        e: Enrolment,
        wm: &mut Watermarks,
        now: i64,
        out: &mut Triaged,
    ) {
        let Some(at) = rec.record_time.millis() else {
            wm.touch(rec.partition, rec.offset);
            let why = "an inventory record needs its record timestamp: it is its event time";
            return self.dead(rec, raw, (DeadLetterReason::InvalidField, why.into()), out);
        };
        let judged = wm.observe(
            rec.partition,
            rec.offset,
            &e.tenant_id,
            &e.device_id,
            at,
            RecordTime::Broker(at),
            now,
        );
        let ts = match judged {
            Judged::Accept { ts, .. } => ts,
            Judged::Reject { arrival, .. } => arrival.unwrap_or(at),
        };
        if !self.fresh(ts) {
            return;
        }
        let (class, kind) = match &e.registered {
            Some(r) => (
                r.class.as_deref(),
                ReadingKind::Registered {
                    interval_ms: r.interval_ms,
                    monitored: r.monitored,
                },
            ),
            None => (None, ReadingKind::Decommissioned),
        };
        let at = (rec.partition, rec.offset);
        out.readings.push(Reading::inventory(
            &e.tenant_id,
            &e.device_id,
            class,
            at,
            ts,
            kind,
        ));
    }

    fn dead(
        &self,
        rec: &Source<'_>,
        raw: &[u8],
        (reason, mut detail): Unusable,
        out: &mut Triaged,
    ) {
        events::dead_letter(reason);
        let mut raw = raw;
        if raw.len() > MAX_RAW {
            detail.push_str(&format!(
                " (raw value truncated from {} bytes; the source offset has it whole)",
                raw.len()
            ));
            raw = &raw[..MAX_RAW];
        }
        let (topic, partition) = if is_inventory(rec.partition) {
            (&self.inventory_topic, source_partition(rec.partition))
        } else {
            (&self.topic, rec.partition)
        };
        out.dead.push(DeadLetter {
            event_id: event_id::dead_letter(topic, partition, rec.offset),
            source_topic: topic.to_string(),
            source_partition: partition,
            source_offset: rec.offset,
            key: rec.key.map(<[u8]>::to_vec),
            raw: raw.to_vec(),
            reason,
            detail,
            record_ts: rec.record_time.millis(),
        });
    }
}

/// The detail of a dead letter the clocks rejected: the reading's time, how far it was off the
/// partition's clock truth, and the device's known offset.
fn rejection(reason: DeadLetterReason, ts: i64, skew: Option<i64>, offset: i64) -> String {
    let off = skew.map_or(String::new(), |s| {
        format!(" ({s} ms off the partition's clock truth)")
    });
    match reason {
        DeadLetterReason::Future => {
            format!("ts {ts}{off} is more than the allowed skew ahead of it")
        }
        DeadLetterReason::ClockSkew => format!(
            "ts {ts}{off} comes from a device whose clock is {offset} ms off, and clock \
             correction is off"
        ),
        _ if offset != 0 => format!(
            "ts {ts}{off} is behind its partition's watermark, and off the device's known clock \
             offset of {offset} ms"
        ),
        _ => format!("ts {ts}{off} is behind its partition's watermark"),
    }
}
