-- When each device was last heard from, for "which devices have not reported since ..." questions.
-- The pipeline sends a last-seen record per device at most every `pipeline.lastseen_interval_ms`;
-- the sink inserts every one, and the row with the newest `last_seen_ms` replaces the others on
-- merge, whatever order they arrived in (a replay, or a partition read again, can bring an older
-- one after a newer). Before merges, read with max/argMax per device (docs/queries.md) or FINAL.
-- One partition and no TTL: the key says nothing about time, a device's rows must meet to be
-- replaced, and a device silent for months is exactly what the table must still show (it holds a
-- row per device ever seen, not a row per reading).
CREATE TABLE IF NOT EXISTS {database}.device_last_seen
(
    tenant_id String,
    device_id String,
    device_class {since 20.3: LowCardinality(Nullable(String)) else Nullable(String)},
    last_seen DateTime('UTC'),
    last_seen_ms Int64,
    event_id String,
    inserted_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree(last_seen_ms)
ORDER BY (tenant_id, device_id)
