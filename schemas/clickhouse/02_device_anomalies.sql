-- Anomaly state changes (firing, resolved), per device or per tenant (mass_offline: empty
-- device_id). Natural key: who, which kind, when, which state.
CREATE TABLE IF NOT EXISTS {database}.device_anomalies
(
    tenant_id String,
    device_id String,
    device_class {since 20.3: LowCardinality(Nullable(String)) else Nullable(String)},
    kind {since 20.3: LowCardinality(String) else String},
    state {since 20.3: LowCardinality(String) else String},
    severity {since 20.3: LowCardinality(String) else String},
    observed Float64,
    threshold Float64,
    baseline Nullable(Float64),
    ts DateTime('UTC'),
    ts_ms Int64,
    message String,
    event_id String,
    inserted_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant_id, device_id, kind, ts_ms, state)
