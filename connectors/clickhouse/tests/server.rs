//! Against a real `clickhouse-server` (Debian's 18.16 in the tests): the tables apply, twice, and
//! every row type goes in and comes back as it was; a record inserted twice is seen once through
//! `FINAL`, as the documented queries read; of a device's last-seen times the newest wins, even
//! inserted before an older one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use clickhouse::{RowOwned, RowRead, RowWrite};
use clickhouse_sink::rows::{AggregateRow, AnomalyRow, DeadLetterRow, LastSeenRow, StatusRow};
use clickhouse_sink::server::Target;
use clickhouse_sink::{Connection, ddl};
use testkit::{Kind, shared, unique};

async fn connect(database: &str) -> Connection {
    let server = shared(Kind::ClickHouse);
    let target = Target {
        url: server.address().to_string(),
        database: database.to_string(),
        user: "default".into(),
        password: String::new(),
        ca_file: None,
        validation: None,
    };
    let connection = Connection::open(&target).await.unwrap();
    ddl::apply(&connection, database, 30).await.unwrap();
    ddl::apply(&connection, database, 30).await.unwrap();
    connection
}

/// Inserts `row` into `table` twice, in two inserts (a retry), and reads the table back.
async fn twice<T>(connection: &Connection, table: &str, row: &T) -> Vec<T>
where
    T: RowOwned + RowRead + RowWrite,
{
    for _ in 0..2 {
        let mut insert = connection.client.insert::<T>(table).await.unwrap();
        insert.write(row).await.unwrap();
        insert.end().await.unwrap();
    }
    connection
        .client
        .query(&format!("SELECT ?fields FROM {table} FINAL"))
        .fetch_all::<T>()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_row_goes_in_and_comes_back_once() {
    let connection = connect(&unique("fp_rows").replace('-', "_")).await;
    assert_eq!(
        (connection.version.major, connection.version.minor),
        (18, 16)
    );

    let aggregate = AggregateRow {
        tenant_id: "t1".into(),
        device_id: "d1".into(),
        device_class: Some("sensor".into()),
        window_ms: 60_000,
        window_start: 1_700_000_040,
        window_end: 1_700_000_100,
        count: 6,
        errors: 1,
        error_rate: 1.0 / 6.0,
        rt_min: Some(10.5),
        rt_mean: Some(20.25),
        rt_p50: Some(19.0),
        rt_p95: Some(30.0),
        rt_p99: Some(31.0),
        rt_max: Some(31.5),
        battery_last: None,
        battery_min: None,
        signal_mean: Some(-70.0),
        health_score: 91.5,
        event_id: "agg/t1/d1/60000/1700000040000".into(),
        clock_offset_ms: Some(-240_000),
    };
    assert_eq!(
        twice(&connection, "device_aggregates", &aggregate).await,
        vec![aggregate]
    );

    let anomaly = AnomalyRow {
        tenant_id: "t1".into(),
        device_id: "d1".into(),
        device_class: None,
        kind: "rt_mean_high".into(),
        state: "firing".into(),
        severity: "warning".into(),
        observed: 1500.0,
        threshold: 1000.0,
        baseline: None,
        ts: 1_700_000_100,
        ts_ms: 1_700_000_100_123,
        message: "mean response time 1500 ms".into(),
        event_id: "anomaly/x".into(),
    };
    assert_eq!(
        twice(&connection, "device_anomalies", &anomaly).await,
        vec![anomaly]
    );

    let status = StatusRow {
        tenant_id: "t1".into(),
        device_id: "d1".into(),
        device_class: Some("sensor".into()),
        status: "offline".into(),
        previous: Some("online".into()),
        ts: 1_700_000_160,
        ts_ms: 1_700_000_160_000,
        last_seen_ms: 1_700_000_100_000,
        reason: "timeout".into(),
        time_in_previous_ms: Some(60_000),
        event_id: "status/x".into(),
    };
    assert_eq!(
        twice(&connection, "device_status", &status).await,
        vec![status]
    );

    let dead = DeadLetterRow {
        source_topic: "telemetry".into(),
        source_partition: 3,
        source_offset: 42,
        key: Some(vec![0, 159, 146, 150]),
        raw: vec![0xff, 0, 1, 2],
        reason: "decode".into(),
        detail: "not Avro".into(),
        record_ts_ms: None,
        event_id: "dlq/telemetry/3/42".into(),
    };
    assert_eq!(twice(&connection, "dead_letters", &dead).await, vec![dead]);

    let seen = last_seen("d1", 1_700_000_100_250, Some("sensor"));
    assert_eq!(
        twice(&connection, "device_last_seen", &seen).await,
        vec![seen]
    );
}

fn last_seen(device: &str, ms: i64, class: Option<&str>) -> LastSeenRow {
    LastSeenRow {
        tenant_id: "t1".into(),
        device_id: device.into(),
        device_class: class.map(str::to_string),
        last_seen: u32::try_from(ms / 1_000).unwrap(),
        last_seen_ms: ms,
        event_id: format!("lastseen/t1/{device}/{ms}"),
    }
}

async fn insert_one(connection: &Connection, row: &LastSeenRow) {
    let mut insert = connection
        .client
        .insert::<LastSeenRow>("device_last_seen")
        .await
        .unwrap();
    insert.write(row).await.unwrap();
    insert.end().await.unwrap();
}

async fn final_last_seen(connection: &Connection) -> Vec<LastSeenRow> {
    connection
        .client
        .query("SELECT ?fields FROM device_last_seen FINAL ORDER BY tenant_id, device_id")
        .fetch_all()
        .await
        .unwrap()
}

/// A replay, or a partition read again after a rebalance, can bring a device's older last-seen
/// time after its newer one: the newer stays, through `FINAL` before the parts merge and in the
/// one row left after.
#[tokio::test]
async fn an_older_last_seen_inserted_after_a_newer_one_does_not_replace_it() {
    let connection = connect(&unique("fp_last_seen").replace('-', "_")).await;
    let client = &connection.client;
    // Kept apart, so that FINAL is what hides the older row.
    client
        .query("SYSTEM STOP MERGES device_last_seen")
        .execute()
        .await
        .unwrap();
    let newer = last_seen("d1", 1_700_000_200_000, Some("sensor"));
    let older = last_seen("d1", 1_700_000_100_000, Some("gateway"));
    let other = last_seen("d2", 1_700_000_000_000, None);
    insert_one(&connection, &newer).await;
    insert_one(&connection, &other).await;
    insert_one(&connection, &older).await;
    let parts: u64 = client
        .query(
            "SELECT count() FROM system.parts WHERE database = currentDatabase() \
             AND table = 'device_last_seen' AND active",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(parts, 3, "not merged yet");
    assert_eq!(
        final_last_seen(&connection).await,
        vec![newer.clone(), other.clone()]
    );

    client
        .query("SYSTEM START MERGES device_last_seen")
        .execute()
        .await
        .unwrap();
    client
        .query("OPTIMIZE TABLE device_last_seen FINAL")
        .execute()
        .await
        .unwrap();
    let stored: Vec<LastSeenRow> = client
        .query("SELECT ?fields FROM device_last_seen ORDER BY tenant_id, device_id")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        stored,
        vec![newer, other],
        "one row per device after the merge"
    );
}

/// The window aggregates are written as RowBinary the sink encodes itself; a table whose columns
/// no longer take those bytes stops the sink at start-up, naming the column.
#[tokio::test]
async fn a_changed_aggregates_table_fails_at_start_naming_the_column() {
    let database = unique("fp_changed").replace('-', "_");
    let connection = connect(&database).await;
    connection
        .client
        .query("ALTER TABLE device_aggregates MODIFY COLUMN count UInt64")
        .execute()
        .await
        .unwrap();
    let error = ddl::apply(&connection, &database, 30).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("device_aggregates.count is UInt64"),
        "{error}"
    );
}
