//! `device_aggregates` rows written into RowBinary as they are consumed, straight from the
//! message's bytes: the table takes most of the sink's rows, and building an [`AggregateRow`]
//! for each (four strings allocated, a 280-byte struct stored, then serialized at insert time)
//! was most of the sink's own work. The bytes are what the `clickhouse` crate writes for the
//! same [`AggregateRow`] (a test compares them through the crate's reader), sent with the
//! columns named, so the table's column order does not matter.
//!
//! Written by hand because the crate's RowBinary serializer is private; the format is a few
//! rules (little-endian numbers, a varint before a string, a null byte before a `Nullable`).

use clickhouse::Client;
use schemas::WindowAggregateRef;

#[cfg(doc)]
use crate::rows::AggregateRow;
use crate::rows::{count, seconds, window_ms};
use crate::server::SinkError;

/// The columns of `device_aggregates` the rows hold, in their order, with the type each is
/// written as.
pub const AGGREGATE_COLUMNS: [(&str, &str); 21] = [
    ("tenant_id", "String"),
    ("device_id", "String"),
    ("device_class", "Nullable(String)"),
    ("window_ms", "UInt32"),
    ("window_start", "DateTime"),
    ("window_end", "DateTime"),
    ("count", "UInt32"),
    ("errors", "UInt32"),
    ("error_rate", "Float64"),
    ("rt_min", "Nullable(Float64)"),
    ("rt_mean", "Nullable(Float64)"),
    ("rt_p50", "Nullable(Float64)"),
    ("rt_p95", "Nullable(Float64)"),
    ("rt_p99", "Nullable(Float64)"),
    ("rt_max", "Nullable(Float64)"),
    ("battery_last", "Nullable(Float64)"),
    ("battery_min", "Nullable(Float64)"),
    ("signal_mean", "Nullable(Float64)"),
    ("health_score", "Float64"),
    ("event_id", "String"),
    ("clock_offset_ms", "Nullable(Int64)"),
];

/// Checks that `database.device_aggregates` has every column the rows hold, of a type they are
/// written as. The crate validates the rows it serializes itself against the table (on servers
/// that support it); these bytes bypass it, so a table changed by hand fails here, at start-up,
/// naming the column, and not at the first insert.
pub async fn check(client: &Client, database: &str) -> Result<(), SinkError> {
    let columns: Vec<(String, String, String)> = client
        .query(
            "SELECT name, type, default_kind FROM system.columns \
             WHERE database = ? AND table = 'device_aggregates'",
        )
        .bind(database)
        .fetch_all()
        .await?;
    let table = format!("{database}.device_aggregates");
    for (name, wanted) in AGGREGATE_COLUMNS {
        let Some((_, found, kind)) = columns.iter().find(|(n, _, _)| n == name) else {
            return Err(SinkError::Ddl(format!("{table} has no column {name}")));
        };
        if written_as(found) != wanted {
            return Err(SinkError::Ddl(format!(
                "{table}.{name} is {found}; the sink writes it as {wanted}"
            )));
        }
        // MATERIALIZED and ALIAS columns cannot be inserted into.
        if !matches!(kind.as_str(), "" | "DEFAULT") {
            return Err(SinkError::Ddl(format!(
                "{table}.{name} is {kind}; the sink inserts into it"
            )));
        }
    }
    Ok(())
}

/// The type a column's values are sent as in RowBinary: `LowCardinality` is the server's storage
/// and a `DateTime`'s time zone is its display, neither changes the bytes.
fn written_as(column_type: &str) -> &str {
    let t = column_type
        .strip_prefix("LowCardinality(")
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(column_type);
    if t.starts_with("DateTime(") {
        "DateTime"
    } else {
        t
    }
}

/// What the rollups need of a row: its window's start and end (s) and length (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start, s.
    pub start: u32,
    /// End, s.
    pub end: u32,
    /// Length, ms.
    pub window_ms: u32,
}

/// `device_aggregates` rows in RowBinary.
#[derive(Debug, Default)]
pub struct AggregateRows {
    bytes: Vec<u8>,
    windows: Vec<Window>,
}

impl AggregateRows {
    /// Room for `rows` rows (about 200 bytes each) without growing.
    pub fn with_capacity(rows: usize) -> AggregateRows {
        AggregateRows {
            bytes: Vec::with_capacity(rows.saturating_mul(200)),
            windows: Vec::with_capacity(rows),
        }
    }

    /// Appends the row of `a`, as [`AggregateRow::from`] maps it.
    pub fn push(&mut self, a: &WindowAggregateRef<'_>) {
        let window = Window {
            start: seconds(a.window_start),
            end: seconds(a.window_end),
            window_ms: window_ms(a.window_start, a.window_end),
        };
        let out = &mut self.bytes;
        string(out, a.tenant_id);
        string(out, a.device_id);
        match a.device_class {
            Some(class) => {
                out.push(0);
                string(out, class);
            }
            None => out.push(1),
        }
        for v in [
            window.window_ms,
            window.start,
            window.end,
            count(a.count),
            count(a.errors),
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&a.error_rate.to_le_bytes());
        for v in a.measures() {
            match v {
                Some(v) => {
                    out.push(0);
                    out.extend_from_slice(&v.to_le_bytes());
                }
                None => out.push(1),
            }
        }
        out.extend_from_slice(&a.health_score.to_le_bytes());
        string(out, a.event_id);
        match a.clock_offset_ms {
            Some(v) => {
                out.push(0);
                out.extend_from_slice(&v.to_le_bytes());
            }
            None => out.push(1),
        }
        self.windows.push(window);
    }

    /// The rows, back to back.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Each row's window, in order.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Empties, keeping the memory.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.windows.clear();
    }
}

/// A string: its length as an unsigned LEB128 varint, then its bytes.
fn string(out: &mut Vec<u8>, s: &str) {
    let mut len = s.len();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use clickhouse::Client;
    use clickhouse::test::{Mock, handlers};
    use schemas::WindowAggregate;

    use super::*;
    use crate::rows::AggregateRow;

    fn aggregate(i: i64, long_id: bool) -> WindowAggregate {
        let some = |v: f64| (i % 3 != 0).then_some(v);
        WindowAggregate {
            tenant_id: format!("tenant-{i}"),
            device_id: if long_id {
                "d".repeat(300 + i as usize)
            } else {
                format!("dev-{i}")
            },
            device_class: (i % 2 == 0).then(|| "sensor".into()),
            window_start: 1_700_000_000_000 + i * 60_000,
            window_end: 1_700_000_060_000 + i * 60_000,
            count: if i == 4 { i64::MAX } else { 6 },
            errors: i - 2,
            error_rate: 0.25,
            rt_min: some(1.5),
            rt_mean: some(20.0),
            rt_p50: some(19.0),
            rt_p95: None,
            rt_p99: some(f64::MAX),
            rt_max: some(-0.0),
            battery_last: some(80.0),
            battery_min: None,
            signal_mean: some(-70.0),
            health_score: 97.5,
            event_id: format!("agg/{i}/é"),
            clock_offset_ms: (i % 2 == 1).then_some(-i * 3_600_000),
        }
    }

    #[test]
    fn the_columns_are_the_rows_fields_in_order() {
        // The crate's list is not a stable interface; a test that fails after an upgrade is
        // the right place to learn it changed.
        let names: Vec<&str> = AGGREGATE_COLUMNS.iter().map(|(n, _)| *n).collect();
        assert_eq!(<AggregateRow as clickhouse::Row>::COLUMN_NAMES, names);
    }

    #[test]
    fn storage_and_time_zones_do_not_change_what_is_written() {
        assert_eq!(
            written_as("LowCardinality(Nullable(String))"),
            "Nullable(String)"
        );
        assert_eq!(written_as("DateTime('UTC')"), "DateTime");
        assert_eq!(written_as("DateTime"), "DateTime");
        assert_eq!(written_as("DateTime64(3)"), "DateTime64(3)");
        assert_eq!(written_as("Nullable(Float32)"), "Nullable(Float32)");
    }

    /// What `push` writes, the crate reads back as the row `AggregateRow::from` makes, for
    /// strings longer than one varint byte, clamped counts, nulls and negative zero.
    #[tokio::test]
    async fn the_bytes_read_back_as_the_crates_rows() -> Result<(), clickhouse::error::Error> {
        let records: Vec<WindowAggregate> = (0..8).map(|i| aggregate(i, i == 5)).collect();
        let mut rows = AggregateRows::default();
        for r in &records {
            rows.push(&r.borrowed());
        }
        assert_eq!(rows.len(), 8);
        assert_eq!(rows.windows()[1].window_ms, 60_000);
        let mock = Mock::new();
        let client = Client::default()
            .with_mock(&mock)
            .with_compression(clickhouse::Compression::None);
        let recording = mock.add(handlers::record::<AggregateRow>());
        let mut insert = client.insert_formatted_with("INSERT INTO t FORMAT RowBinary");
        insert
            .send(bytes::Bytes::copy_from_slice(rows.bytes()))
            .await?;
        insert.end().await?;
        let got: Vec<AggregateRow> = recording.collect().await;
        let want: Vec<AggregateRow> = records.into_iter().map(AggregateRow::from).collect();
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
        Ok(())
    }
}
