//! ClickHouse for the end-to-end tests: a connection once the sink has made its tables, and a
//! table's rows as the documented queries see them.

use std::time::Duration;

use clickhouse::{RowOwned, RowRead};
use clickhouse_sink::Connection;
use clickhouse_sink::server::Target;

/// Connects to `database` on `url` once the sink has created its tables.
pub async fn connect(url: &str, database: &str) -> Connection {
    let target = Target {
        url: url.to_string(),
        database: database.to_string(),
        user: "default".into(),
        password: String::new(),
        ca_file: None,
        validation: None,
    };
    for _ in 0..300 {
        if let Ok(c) = Connection::open(&target).await
            && c.client
                // The last table the sink creates.
                .query("SELECT count() FROM device_last_seen")
                .fetch_one::<u64>()
                .await
                .is_ok()
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the sink did not create its tables");
}

/// The rows of `table` as queries see them (`FINAL`), by `event_id`.
pub async fn rows<T: RowOwned + RowRead>(c: &Connection, table: &str) -> Vec<T> {
    c.client
        .query(&format!(
            "SELECT ?fields FROM {table} FINAL ORDER BY event_id"
        ))
        .fetch_all::<T>()
        .await
        .unwrap()
}
