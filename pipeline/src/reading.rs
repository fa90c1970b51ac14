//! The reading as the operators see it: the fields they use, where it was read, and nothing
//! else, so the exchange between workers (and processes) moves as few bytes as possible. Its ids
//! are held inline up to 24 bytes, so taking a reading from a message allocates nothing.

use compact_str::CompactString;
use schemas::TelemetryRef;
use serde::{Deserialize, Serialize};
use twox_hash::{XxHash3_64, XxHash3_128};

/// An accepted reading and its source position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Event time, ms.
    pub ts: i64,
    /// Source partition (0 for a file).
    pub partition: i32,
    /// Offset within it (record number for a file).
    pub offset: i64,
    /// Tenant.
    pub tenant_id: CompactString,
    /// Device.
    pub device_id: CompactString,
    /// Device class, when sent.
    pub device_class: Option<CompactString>,
    /// Tenant and device as one number ([`device_key`]), worked out once for the operators that
    /// look the device up.
    pub key: u128,
    /// Response time, ms.
    pub response_time_ms: Option<f64>,
    /// Success.
    pub ok: bool,
    /// Battery, percent.
    pub battery_pct: Option<f64>,
    /// Signal, dBm.
    pub signal_dbm: Option<f64>,
    /// The device's known clock offset from its partition's clock truth, ms (0: none).
    pub clock_offset_ms: i64,
    /// What the reading is to the device.
    pub kind: ReadingKind,
    /// Its time went out as the device's last seen when it arrived ([`crate::lastseen`]).
    pub announced: bool,
}

/// How the device operator takes a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadingKind {
    /// A reading at the time it was stamped with.
    Stamped,
    /// A reading re-timed by the device's clock offset (`ts` is its stamp minus the offset).
    Retimed,
    /// A reading the DLQ took (its clock could not be trusted); it only says the device
    /// reported, at `ts`, the partition's clock truth when it arrived. An availability report
    /// of being online is taken the same way: a sign of life, no measurement.
    Arrival,
    /// The device's registration in the inventory, at its record's time; `device_class` is the
    /// registered class.
    Registered {
        /// Expected reporting interval, ms (0: none). 32 bits hold the longest allowed (30
        /// days) and keep the reading as small as it was.
        interval_ms: u32,
        /// Watched: expected to report (`never_seen` if it does not), with the interval's
        /// timeout.
        monitored: bool,
    },
    /// The device's registration was removed (a tombstone), at its record's time.
    Decommissioned,
    /// The device, or the bridge it speaks through, reported it offline: no sign of life.
    ReportedOffline,
}

impl ReadingKind {
    /// Whether the reading comes from the inventory rather than from the device.
    pub fn is_inventory(self) -> bool {
        matches!(
            self,
            ReadingKind::Registered { .. } | ReadingKind::Decommissioned
        )
    }
}

impl Reading {
    /// The reading of `t`, read at `partition`/`offset`, to be taken at `ts` as `kind`.
    pub fn new(
        t: &TelemetryRef<'_>,
        partition: i32,
        offset: i64,
        ts: i64,
        clock_offset_ms: i64,
        kind: ReadingKind,
    ) -> Reading {
        Reading {
            ts,
            partition,
            offset,
            tenant_id: CompactString::from(t.tenant_id.as_ref()),
            device_id: CompactString::from(t.device_id.as_ref()),
            device_class: t.device_class.as_deref().map(CompactString::from),
            key: device_key(&t.tenant_id, &t.device_id),
            response_time_ms: t.response_time_ms,
            ok: t.ok,
            battery_pct: t.battery_pct,
            signal_dbm: t.signal_dbm,
            clock_offset_ms,
            kind,
            announced: false,
        }
    }

    /// An inventory record of `tenant`'s `device` (`class`, when registered) read at
    /// `partition`/`offset`, taken at `ts`: `kind` is [`ReadingKind::Registered`] or
    /// [`ReadingKind::Decommissioned`].
    pub fn inventory(
        tenant: &str,
        device: &str,
        class: Option<&str>,
        (partition, offset): (i32, i64),
        ts: i64,
        kind: ReadingKind,
    ) -> Reading {
        Reading {
            ts,
            partition,
            offset,
            tenant_id: CompactString::from(tenant),
            device_id: CompactString::from(device),
            device_class: class.map(CompactString::from),
            key: device_key(tenant, device),
            response_time_ms: None,
            ok: true,
            battery_pct: None,
            signal_dbm: None,
            clock_offset_ms: 0,
            kind,
            announced: false,
        }
    }

    /// A bare reading of tenant `t`'s `device` at `ts` (read at `partition`/`offset`), for the
    /// tests of the operators that take readings.
    #[cfg(test)]
    pub(crate) fn bare(device: &str, ts: i64, partition: i32, offset: i64) -> Reading {
        Reading {
            ts,
            partition,
            offset,
            tenant_id: "t".into(),
            device_id: device.into(),
            device_class: None,
            key: device_key("t", device),
            response_time_ms: None,
            ok: true,
            battery_pct: None,
            signal_dbm: None,
            clock_offset_ms: 0,
            kind: ReadingKind::Stamped,
            announced: false,
        }
    }

    /// The processing order of readings: event time, then source position.
    pub fn order_key(&self) -> (i64, i32, i64) {
        (self.ts, self.partition, self.offset)
    }

    /// Which worker owns the reading's device.
    pub fn route(&self) -> u64 {
        route(&self.device_id)
    }
}

/// A device's identity as one number: the 128-bit XXH3 of its id, seeded with the 64-bit XXH3 of
/// its tenant. Stable across runs, processes and versions (checkpoints keep it); at 128 bits no
/// fleet sees two devices share one, which lets the engine and the last-seen announcer key
/// their maps by it instead of by two strings.
pub fn device_key(tenant: &str, device: &str) -> u128 {
    XxHash3_128::oneshot_with_seed(XxHash3_64::oneshot(tenant.as_bytes()), device.as_bytes())
}

/// A stable hash of a device id (FNV-1a): the routing must not change between runs, processes or
/// Rust versions, as the standard hasher may.
pub fn route(key: &str) -> u64 {
    fnv1a(key.as_bytes())
}

/// FNV-1a over bytes: stable everywhere, which the routing and the checkpoint checksum need.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
