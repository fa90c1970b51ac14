-- Per device and UTC day: how long the device was observed (from the start of the day, or from
-- its first reading) and how much of that it was online, as its status transitions imply. A day
-- starts in the status the previous day ended in (`end_status`), so a device that stays online
-- for a week has a row, 100 % up, for every day of it. Written by the sink once the day has
-- closed, and again, with every day after it, when a late transition lands in it; read with FINAL.
CREATE TABLE IF NOT EXISTS {database}.device_uptime_daily
(
    tenant_id String,
    device_id String,
    day Date,
    observed_ms UInt64,
    online_ms UInt64,
    transitions UInt32,
    end_status String,
    refreshed_ms UInt64
)
ENGINE = ReplacingMergeTree(refreshed_ms)
PARTITION BY toYYYYMM(day)
ORDER BY (tenant_id, device_id, day)
