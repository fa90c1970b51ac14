//! ClickHouse for the end-to-end tests: a connection once the sink has made its tables, a
//! table's rows as the documented queries see them, and the documented queries themselves.

use std::collections::BTreeMap;
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
                .query("SELECT count() FROM device_inventory")
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

/// The queries of docs/queries.md, by the name in the `<!-- query: name -->` before each.
pub fn documented_queries() -> BTreeMap<String, String> {
    let text = include_str!("../../docs/queries.md");
    text.split("<!-- query: ")
        .skip(1)
        .map(|part| {
            let (name, rest) = part.split_once(" -->").unwrap();
            let sql = rest.split("```sql\n").nth(1).unwrap();
            let sql = sql.split("```").next().unwrap();
            (name.to_string(), sql.to_string())
        })
        .collect()
}

/// Runs a documented query against `database`, with `now()` pinned to `now_s`: its rows as JSON.
pub fn ask(
    rt: &tokio::runtime::Runtime,
    c: &Connection,
    database: &str,
    sql: &str,
    now_s: i64,
) -> Vec<serde_json::Value> {
    let sql = sql
        .replace("fleetpulse.", &format!("{database}."))
        .replace("now()", &format!("toDateTime({now_s}, 'UTC')"));
    let body = rt
        .block_on(async {
            c.client
                .query(&sql)
                .fetch_bytes("JSONEachRow")?
                .collect()
                .await
        })
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
