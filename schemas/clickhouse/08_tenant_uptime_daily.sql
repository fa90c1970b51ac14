-- Per tenant and UTC day: its devices' daily uptime added up (device time online over device time
-- observed), recomputed with them; read with FINAL.
CREATE TABLE IF NOT EXISTS {database}.tenant_uptime_daily
(
    tenant_id String,
    day Date,
    devices UInt32,
    observed_ms UInt64,
    online_ms UInt64,
    transitions UInt64,
    refreshed_ms UInt64
)
ENGINE = ReplacingMergeTree(refreshed_ms)
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, day)
