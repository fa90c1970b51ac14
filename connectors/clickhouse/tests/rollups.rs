//! The rollups against a real `clickhouse-server` (Debian's 18.16): daily uptime across midnight
//! checked against figures worked out by hand, hourly sums over the 1-minute windows only, and
//! neither moved by a batch written twice; a late transition rewrites its day and the days after.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use clickhouse::Row;
use clickhouse_sink::batch::Batch;
use clickhouse_sink::rollup::{DAY_MS, HOUR_MS, Rollups, Versions};
use clickhouse_sink::rows::StatusRow;
use clickhouse_sink::server::Target;
use clickhouse_sink::{Connection, ddl, sink};
use schemas::WindowAggregate;
use serde::Deserialize;
use testkit::{Kind, shared, unique};

/// 2025-11-30 00:00:00 UTC.
const D0: i64 = 1_764_460_800_000;
const D1: i64 = D0 + DAY_MS;
const D2: i64 = D1 + DAY_MS;
const MIN: i64 = 60_000;

async fn connect() -> Connection {
    let server = shared(Kind::ClickHouse);
    let database = unique("fp_rollups").replace('-', "_");
    let target = Target {
        url: server.address().to_string(),
        database: database.clone(),
        user: "default".into(),
        password: String::new(),
        validation: None,
    };
    let connection = Connection::open(&target).await.unwrap();
    ddl::apply(&connection, &database, 30).await.unwrap();
    connection
}

fn status(tenant: &str, device: &str, status: &str, ts_ms: i64) -> StatusRow {
    StatusRow {
        tenant_id: tenant.into(),
        device_id: device.into(),
        device_class: None,
        status: status.into(),
        previous: None,
        ts: u32::try_from(ts_ms / 1_000).unwrap(),
        ts_ms,
        last_seen_ms: ts_ms,
        reason: if status == "online" {
            "resumed"
        } else {
            "timeout"
        }
        .into(),
        time_in_previous_ms: None,
        event_id: format!("status/{tenant}/{device}/{ts_ms}"),
    }
}

fn window(
    device: &str,
    start_ms: i64,
    len_ms: i64,
    count: u32,
    errors: u32,
    rt: f64,
) -> WindowAggregate {
    WindowAggregate {
        tenant_id: "t1".into(),
        device_id: device.into(),
        device_class: None,
        window_start: start_ms,
        window_end: start_ms + len_ms,
        count: count.into(),
        errors: errors.into(),
        error_rate: f64::from(errors) / f64::from(count),
        rt_min: Some(rt),
        rt_mean: Some(rt),
        rt_p50: Some(rt),
        rt_p95: Some(rt),
        rt_p99: Some(rt),
        rt_max: Some(rt * 2.0),
        battery_last: None,
        battery_min: None,
        signal_mean: None,
        health_score: 90.0,
        event_id: format!("agg/t1/{device}/{len_ms}/{start_ms}"),
    }
}

#[derive(Debug, PartialEq, Row, Deserialize)]
struct DeviceDay {
    tenant_id: String,
    device_id: String,
    day: u16,
    observed_ms: u64,
    online_ms: u64,
    transitions: u32,
    end_status: String,
}

#[derive(Debug, PartialEq, Row, Deserialize)]
struct TenantDay {
    tenant_id: String,
    day: u16,
    devices: u32,
    observed_ms: u64,
    online_ms: u64,
}

fn day(ms: i64) -> u16 {
    u16::try_from(ms / DAY_MS).unwrap()
}

fn device_day(
    tenant: &str,
    device: &str,
    at: i64,
    observed_ms: u64,
    online_ms: u64,
    transitions: u32,
    end_status: &str,
) -> DeviceDay {
    DeviceDay {
        tenant_id: tenant.into(),
        device_id: device.into(),
        day: day(at),
        observed_ms,
        online_ms,
        transitions,
        end_status: end_status.into(),
    }
}

async fn device_days(c: &Connection) -> Vec<DeviceDay> {
    c.client
        .query("SELECT ?fields FROM device_uptime_daily FINAL ORDER BY tenant_id, device_id, day")
        .fetch_all()
        .await
        .unwrap()
}

async fn tenant_days(c: &Connection) -> Vec<TenantDay> {
    c.client
        .query("SELECT ?fields FROM tenant_uptime_daily FINAL ORDER BY tenant_id, day")
        .fetch_all()
        .await
        .unwrap()
}

fn with_status(status: Vec<StatusRow>) -> Batch {
    let mut batch = Batch::default();
    batch.status = status;
    batch
}

/// What the sink does with a batch before it commits it: insert the rows, write the rollup
/// periods they closed or touched.
async fn write(c: &Connection, rollups: &mut Rollups, batch: &Batch) {
    let plan = sink::insert_batch(&c.client, batch, rollups).await.unwrap();
    plan.write(&c.client, &mut Versions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn uptime_across_midnight_matches_the_hand_computed_figures() {
    let c = connect().await;
    let h = |hh: i64, mm: i64| hh * HOUR_MS + mm * MIN;
    let batch = with_status(vec![
        // d1: up at 22:00, down 23:30-23:45, over midnight, down 00:30-01:00, then up.
        status("t1", "d1", "online", D0 + h(22, 0)),
        status("t1", "d1", "offline", D0 + h(23, 30)),
        status("t1", "d1", "online", D0 + h(23, 45)),
        status("t1", "d1", "offline", D1 + h(0, 30)),
        status("t1", "d1", "online", D1 + h(1, 0)),
        // d2: up from 23:00 and never changes again.
        status("t1", "d2", "online", D0 + h(23, 0)),
        // d3, another tenant: up 12:00-18:00 on the second day.
        status("t2", "d3", "online", D1 + h(12, 0)),
        status("t2", "d3", "offline", D1 + h(18, 0)),
        // d4 only moves event time past the second day's end and the 5-minute grace.
        status("t3", "d4", "online", D2 + h(0, 6)),
    ]);
    let mut rollups = Rollups::new(60_000, 300_000);
    write(&c, &mut rollups, &batch).await;
    let hand = vec![
        // 22:00-24:00 observed; up 22:00-23:30 and 23:45-24:00.
        device_day("t1", "d1", D0, 2 * HOUR_MS as u64, 6_300_000, 3, "online"),
        // The whole day observed; down 00:30-01:00 only.
        device_day("t1", "d1", D1, DAY_MS as u64, 84_600_000, 2, "online"),
        device_day("t1", "d2", D0, HOUR_MS as u64, HOUR_MS as u64, 1, "online"),
        // No transition that day: it carries its status over midnight, up all day.
        device_day("t1", "d2", D1, DAY_MS as u64, DAY_MS as u64, 0, "online"),
        device_day(
            "t2",
            "d3",
            D1,
            12 * HOUR_MS as u64,
            6 * HOUR_MS as u64,
            2,
            "offline",
        ),
    ];
    assert_eq!(device_days(&c).await, hand, "the third day is still open");
    let tenants = vec![
        TenantDay {
            tenant_id: "t1".into(),
            day: day(D0),
            devices: 2,
            observed_ms: 10_800_000,
            online_ms: 9_900_000,
        },
        TenantDay {
            tenant_id: "t1".into(),
            day: day(D1),
            devices: 2,
            observed_ms: 172_800_000,
            online_ms: 171_000_000,
        },
        TenantDay {
            tenant_id: "t2".into(),
            day: day(D1),
            devices: 1,
            observed_ms: 43_200_000,
            online_ms: 21_600_000,
        },
    ];
    assert_eq!(tenant_days(&c).await, tenants);

    // The same batch again (a restart before the commit): nothing moves.
    write(&c, &mut rollups, &batch).await;
    assert_eq!(device_days(&c).await, hand);
    assert_eq!(tenant_days(&c).await, tenants);

    // A late device in the first day: that day is written again, and so is the next, which it
    // carries its status into.
    let late = with_status(vec![status("t1", "d5", "online", D0 + h(23, 50))]);
    write(&c, &mut rollups, &late).await;
    let days = device_days(&c).await;
    assert!(days.contains(&device_day("t1", "d5", D0, 600_000, 600_000, 1, "online")));
    assert!(days.contains(&device_day(
        "t1",
        "d5",
        D1,
        DAY_MS as u64,
        DAY_MS as u64,
        0,
        "online"
    )));
    let t1: Vec<(u32, u64)> = tenant_days(&c)
        .await
        .into_iter()
        .filter(|t| t.tenant_id == "t1")
        .map(|t| (t.devices, t.online_ms))
        .collect();
    assert_eq!(t1, vec![(3, 10_500_000), (3, 257_400_000)]);

    // A sink started afresh finds how far the days were written: a record of the open day
    // rewrites the last day written (in case a crash left it half written) and nothing else.
    let mut again = Rollups::new(60_000, 300_000);
    again.load(&c.client).await.unwrap();
    again.observe(&with_status(vec![status(
        "t3",
        "d4",
        "offline",
        D2 + h(0, 8),
    )]));
    assert_eq!(again.plan().days, vec![D1]);
    assert!(again.plan().hours.is_empty());
}

#[derive(Debug, PartialEq, Row, Deserialize)]
struct Hour {
    tenant_id: String,
    windows: u64,
    readings: u64,
    errors: u64,
    rt_max: Option<f64>,
    p50: f32,
}

#[tokio::test]
async fn hourly_rollups_add_up_the_minute_windows_once() {
    let c = connect().await;
    let hour = D0 + 22 * HOUR_MS;
    let mut batch = Batch::default();
    for w in [
        window("d1", hour, MIN, 10, 1, 100.0),
        window("d1", hour + MIN, MIN, 30, 0, 200.0),
        window("d1", hour + 59 * MIN, MIN, 5, 5, 50.0),
        // A 5-minute window of the same readings: not added again.
        window("d1", hour, 5 * MIN, 40, 1, 175.0),
        window("d2", hour + 30 * MIN, MIN, 7, 0, 400.0),
        // The next hour, closed by a window that ends past it and the grace.
        window("d2", hour + HOUR_MS, MIN, 1, 0, 10.0),
        window("d2", hour + 2 * HOUR_MS + 10 * MIN, MIN, 1, 0, 10.0),
    ] {
        batch.aggregates.push(&w.borrowed());
    }
    let mut rollups = Rollups::new(60_000, 300_000);
    for _ in 0..2 {
        write(&c, &mut rollups, &batch).await;
        let rows: Vec<Hour> = c
            .client
            .query(
                "SELECT tenant_id, windows, readings, errors, rt_max, \
                 quantilesTDigestWeightedMerge(0.5, 0.95, 0.99)(rt_quantiles)[1] AS p50 \
                 FROM tenant_hourly FINAL GROUP BY tenant_id, hour, windows, readings, errors, rt_max \
                 ORDER BY hour",
            )
            .fetch_all()
            .await
            .unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(
            (
                rows[0].windows,
                rows[0].readings,
                rows[0].errors,
                rows[0].rt_max
            ),
            (4, 52, 6, Some(800.0))
        );
        // Readings weigh: 30 of the 52 took 200 ms.
        assert!((100.0..=400.0).contains(&rows[0].p50), "{rows:?}");
        assert_eq!((rows[1].windows, rows[1].readings), (1, 1));
        let devices: Vec<(String, u32, u64)> = c
            .client
            .query("SELECT device_id, windows, readings FROM device_hourly FINAL WHERE hour = toDateTime(?) ORDER BY device_id")
            .bind(u32::try_from(hour / 1_000).unwrap())
            .fetch_all()
            .await
            .unwrap();
        assert_eq!(
            devices,
            vec![("d1".to_string(), 3, 45), ("d2".to_string(), 1, 7)]
        );
    }
}
