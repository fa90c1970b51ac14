-- The status history of every device: one row per online/offline transition.
CREATE TABLE IF NOT EXISTS {database}.device_status
(
    tenant_id String,
    device_id String,
    device_class {since 20.3: LowCardinality(Nullable(String)) else Nullable(String)},
    status {since 20.3: LowCardinality(String) else String},
    previous {since 20.3: LowCardinality(Nullable(String)) else Nullable(String)},
    ts DateTime('UTC'),
    ts_ms Int64,
    last_seen_ms Int64,
    reason {since 20.3: LowCardinality(String) else String},
    time_in_previous_ms Nullable(Int64),
    event_id String,
    inserted_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant_id, device_id, ts_ms, status)
