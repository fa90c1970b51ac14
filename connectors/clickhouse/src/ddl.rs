//! The sink's tables: `schemas/clickhouse/*.sql`, in file order, each statement `CREATE ... IF
//! NOT EXISTS` in the subset ClickHouse 18.16 and current releases both accept, with the
//! database name filled in. Applying them again changes nothing.

use crate::server::{Connection, SinkError};

/// The table definitions, in the order they are applied.
pub const TABLES: [(&str, &str); 4] = [
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
];

/// The statements that create `database` and its tables.
pub fn statements(database: &str) -> Vec<String> {
    let quoted = format!("`{}`", database.replace('`', ""));
    std::iter::once(format!("CREATE DATABASE IF NOT EXISTS {quoted}"))
        .chain(TABLES.iter().map(|(_, sql)| {
            // The comments before a statement are for readers of the file.
            let body: String = sql
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            body.replace("{database}", &quoted)
        }))
        .collect()
}

/// Creates the database and the tables that are missing.
pub async fn apply(connection: &Connection, database: &str) -> Result<(), SinkError> {
    // The database may not exist yet: run the statements from `default` (they name theirs).
    let client = connection.client.clone().with_database("default");
    for statement in statements(database) {
        client.query(&statement).execute().await?;
    }
    tracing::info!(database, version = ?connection.version, "tables in place");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_is_idempotent_and_names_the_database() {
        let all = statements("fp`x");
        assert_eq!(all.len(), TABLES.len() + 1);
        for s in &all {
            assert!(s.contains("IF NOT EXISTS `fpx`"), "{s}");
            assert!(!s.contains("--"), "comments are stripped: {s}");
        }
    }
}
