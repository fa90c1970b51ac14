-- Input the pipeline could not use, with why and where it came from. One partition: the natural
-- key (the source record) says nothing about time, and duplicates must meet to be replaced. Servers
-- with TTL drop them `clickhouse.dead_letter_days` after they arrived.
CREATE TABLE IF NOT EXISTS {database}.dead_letters
(
    source_topic String,
    source_partition Int32,
    source_offset Int64,
    key Nullable(String),
    raw String,
    reason {since 20.3: LowCardinality(String) else String},
    detail String,
    record_ts_ms Nullable(Int64),
    event_id String,
    inserted_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree(inserted_at)
ORDER BY (source_topic, source_partition, source_offset)
{since 20.3: {dead_letter_ttl}}
