-- Per device and hour, from the device's 1-minute windows (`clickhouse.rollup_window_ms`). The
-- sink writes these rows, not an insert trigger: a materialized view would count a record the
-- sink inserted twice (a retry, a restart, the pipeline repeating itself after a crash) twice.
-- The sink recomputes an hour from the deduplicated windows (FINAL) once the hour has closed, and
-- again whenever a late window lands in it; a recomputed row replaces the old one (the newest
-- `refreshed_ms` wins), so read with FINAL.
CREATE TABLE IF NOT EXISTS {database}.device_hourly
(
    tenant_id String,
    device_id String,
    hour DateTime('UTC'),
    windows UInt32,
    readings UInt64,
    errors UInt64,
    rt_max Nullable(Float64),
    health_min Float64,
    health_sum Float64,
    rt_quantiles AggregateFunction(quantilesTDigestWeighted(0.5, 0.95, 0.99), Float64, UInt64),
    refreshed_ms UInt64
)
ENGINE = ReplacingMergeTree(refreshed_ms)
PARTITION BY toYYYYMM(hour)
ORDER BY (tenant_id, device_id, hour)
