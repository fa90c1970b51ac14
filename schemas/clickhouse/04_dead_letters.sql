-- Input the pipeline could not use, with why and where it came from. One partition: the natural
-- key (the source record) says nothing about time, and duplicates must meet to be replaced.
CREATE TABLE IF NOT EXISTS {database}.dead_letters
(
    source_topic String,
    source_partition Int32,
    source_offset Int64,
    key Nullable(String),
    raw String,
    reason String,
    detail String,
    record_ts_ms Nullable(Int64),
    event_id String,
    inserted_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree(inserted_at)
ORDER BY (source_topic, source_partition, source_offset)
