//! The sink's tables: `schemas/clickhouse/*.sql`, in file order, each statement `CREATE ... IF
//! NOT EXISTS`, with the database name filled in. Applying them again changes nothing.
//!
//! The files are written for ClickHouse 18.16 (what Debian ships and the tests run) and current
//! releases at once: what older servers lack stands in a gate, `{since 20.3: NEW else OLD}` (the
//! `else` part is optional), which the server's version decides. The gates hold
//! `LowCardinality` for the enum-like columns and the dead letters' TTL.

use crate::server::{Connection, SinkError, Version};

/// The table definitions, in the order they are applied (file order): raw tables, the rollups,
/// then the devices' last-seen times and the inventory.
pub const TABLES: [(&str, &str); 10] = [
    (
        "device_aggregates",
        include_str!("../../../schemas/clickhouse/01_device_aggregates.sql"),
    ),
    (
        "device_anomalies",
        include_str!("../../../schemas/clickhouse/02_device_anomalies.sql"),
    ),
    (
        "device_status",
        include_str!("../../../schemas/clickhouse/03_device_status.sql"),
    ),
    (
        "dead_letters",
        include_str!("../../../schemas/clickhouse/04_dead_letters.sql"),
    ),
    (
        "device_hourly",
        include_str!("../../../schemas/clickhouse/05_device_hourly.sql"),
    ),
    (
        "tenant_hourly",
        include_str!("../../../schemas/clickhouse/06_tenant_hourly.sql"),
    ),
    (
        "device_uptime_daily",
        include_str!("../../../schemas/clickhouse/07_device_uptime_daily.sql"),
    ),
    (
        "tenant_uptime_daily",
        include_str!("../../../schemas/clickhouse/08_tenant_uptime_daily.sql"),
    ),
    (
        "device_last_seen",
        include_str!("../../../schemas/clickhouse/09_device_last_seen.sql"),
    ),
    (
        "device_inventory",
        include_str!("../../../schemas/clickhouse/10_device_inventory.sql"),
    ),
];

/// Columns added to a table after its first release: `(table, column, type, after)`. A table
/// created by an older release lacks them, and `CREATE ... IF NOT EXISTS` leaves it as it is;
/// [`apply`] adds what is missing.
const ADDED_COLUMNS: [(&str, &str, &str, &str); 1] = [(
    "device_aggregates",
    "clock_offset_ms",
    "Nullable(Int64)",
    "event_id",
)];

/// What the statements are made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The database of the tables.
    pub database: &'a str,
    /// The server's version, which opens the gates.
    pub version: Version,
    /// Days a dead letter is kept where TTL exists; 0 keeps them.
    pub dead_letter_days: u32,
}

/// Resolves every `{since X.Y: NEW else OLD}` gate of `sql` for `version`.
fn gates(sql: &str, version: Version) -> Result<String, SinkError> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find("{since ") {
        out.push_str(&rest[..at]);
        let gate = &rest[at + "{since ".len()..];
        let bad = || SinkError::Ddl(format!("a gate without its closing brace: {gate:.40}"));
        let (head, body) = gate.split_once(':').ok_or_else(bad)?;
        let end = body.find('}').ok_or_else(bad)?;
        let (new, old) = body[..end]
            .split_once(" else ")
            .unwrap_or((&body[..end], ""));
        out.push_str(
            if version >= Version::parse(head)? {
                new
            } else {
                old
            }
            .trim(),
        );
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The statements that create the database and its tables.
pub fn statements(target: Target<'_>) -> Result<Vec<String>, SinkError> {
    let quoted = format!("`{}`", target.database.replace('`', ""));
    let ttl = match target.dead_letter_days {
        0 => String::new(),
        days => format!("TTL inserted_at + INTERVAL {days} DAY"),
    };
    let mut all = vec![format!("CREATE DATABASE IF NOT EXISTS {quoted}")];
    for (_, sql) in TABLES {
        // The comments before a statement are for readers of the file.
        let body: String = sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        let body = body
            .replace("{database}", &quoted)
            .replace("{dead_letter_ttl}", &ttl);
        all.push(gates(&body, target.version)?);
    }
    Ok(all)
}

/// Creates `database` and the tables that are missing, as the connected server's version allows.
pub async fn apply(
    connection: &Connection,
    database: &str,
    dead_letter_days: u32,
) -> Result<(), SinkError> {
    let target = Target {
        database,
        version: connection.version,
        dead_letter_days,
    };
    // The database may not exist yet: run the statements from `default` (they name theirs).
    let client = connection.client.clone().with_database("default");
    for statement in statements(target)? {
        client.query(&statement).execute().await?;
    }
    add_missing_columns(&client, database).await?;
    crate::encoded::check(&client, database).await?;
    tracing::info!(database, version = ?connection.version, "tables in place");
    Ok(())
}

/// Adds the [`ADDED_COLUMNS`] a table made by an older release lacks (18.16 has no
/// `ADD COLUMN IF NOT EXISTS`, so the server's own list of columns decides).
async fn add_missing_columns(client: &clickhouse::Client, database: &str) -> Result<(), SinkError> {
    let quoted = format!("`{}`", database.replace('`', ""));
    for (table, column, kind, after) in ADDED_COLUMNS {
        let present: Vec<String> = client
            .query("SELECT name FROM system.columns WHERE database = ? AND table = ? AND name = ?")
            .bind(database)
            .bind(table)
            .bind(column)
            .fetch_all()
            .await?;
        if present.is_empty() {
            tracing::info!(table, column, "adding a column this release writes");
            client
                .query(&format!(
                    "ALTER TABLE {quoted}.{table} ADD COLUMN {column} {kind} AFTER {after}"
                ))
                .execute()
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(version: &str) -> Result<Target<'static>, SinkError> {
        Ok(Target {
            database: "fp`x",
            version: Version::parse(version)?,
            dead_letter_days: 30,
        })
    }

    #[test]
    fn every_statement_is_idempotent_and_names_the_database() -> Result<(), SinkError> {
        let all = statements(target("18.16.1")?)?;
        assert_eq!(all.len(), TABLES.len() + 1);
        for s in &all {
            assert!(s.contains("IF NOT EXISTS `fpx`"), "{s}");
            assert!(!s.contains("--"), "comments are stripped: {s}");
            assert!(!s.contains('{'), "every placeholder is filled: {s}");
        }
        Ok(())
    }

    #[test]
    fn gates_open_with_the_version() -> Result<(), SinkError> {
        let old = statements(target("18.16.1")?)?.join("\n");
        assert!(!old.contains("LowCardinality") && !old.contains("TTL"));
        assert!(old.contains("kind String,"));
        let new = statements(target("24.8.4.13")?)?.join("\n");
        assert!(new.contains("kind LowCardinality(String),"));
        assert!(new.contains("previous LowCardinality(Nullable(String)),"));
        assert!(new.contains("TTL inserted_at + INTERVAL 30 DAY"));
        let keep = Target {
            dead_letter_days: 0,
            ..target("24.8")?
        };
        assert!(!statements(keep)?.join("\n").contains("TTL"));
        assert!(gates("a {since 20.3: b", Version::parse("21.1")?).is_err());
        Ok(())
    }

    #[test]
    fn every_file_of_the_ddl_directory_is_applied() -> Result<(), std::io::Error> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/clickhouse");
        let mut files: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let tables: Vec<&str> = TABLES.iter().map(|(name, _)| *name).collect();
        assert_eq!(files.len(), tables.len(), "{files:?}");
        for (file, table) in files.iter().zip(tables) {
            assert!(
                file.ends_with(&format!("_{table}.sql")),
                "{file} vs {table}"
            );
        }
        Ok(())
    }

    /// The newest reading must win on merge whatever order rows arrived in, and a device silent
    /// for months must keep its row: no partition by time for duplicates to miss each other in,
    /// and no TTL, on any server.
    #[test]
    fn last_seen_is_replaced_by_time_and_never_expires() -> Result<(), SinkError> {
        for version in ["18.16.1", "24.8.4.13"] {
            let all = statements(target(version)?)?;
            let last_seen = all
                .iter()
                .find(|s| s.contains(".device_last_seen"))
                .ok_or_else(|| SinkError::Ddl("no device_last_seen".into()))?;
            assert!(
                last_seen.contains("ENGINE = ReplacingMergeTree(last_seen_ms)"),
                "{last_seen}"
            );
            assert!(
                last_seen
                    .trim_end()
                    .ends_with("ORDER BY (tenant_id, device_id)"),
                "{last_seen}"
            );
            assert!(!last_seen.contains("PARTITION BY"), "{last_seen}");
            assert!(!last_seen.contains("TTL"), "{last_seen}");
        }
        Ok(())
    }
}
