-- One row per device and window (1 and 5 min by default), as the pipeline emits it. A record the
-- sink inserts twice (a retry, a restart) has the same sorting key and payload: the
-- ReplacingMergeTree keeps one on merge, and queries read with FINAL (or argMax) before that.
CREATE TABLE IF NOT EXISTS {database}.device_aggregates
(
    tenant_id String,
    device_id String,
    device_class {since 20.3: LowCardinality(Nullable(String)) else Nullable(String)},
    window_ms UInt32,
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    count UInt32,
    errors UInt32,
    error_rate Float64,
    rt_min Nullable(Float64),
    rt_mean Nullable(Float64),
    rt_p50 Nullable(Float64),
    rt_p95 Nullable(Float64),
    rt_p99 Nullable(Float64),
    rt_max Nullable(Float64),
    battery_last Nullable(Float64),
    battery_min Nullable(Float64),
    signal_mean Nullable(Float64),
    health_score Float64,
    event_id String,
    clock_offset_ms Nullable(Int64),
    inserted_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (tenant_id, device_id, window_ms, window_start)
