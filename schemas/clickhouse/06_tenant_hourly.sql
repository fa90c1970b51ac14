-- Per tenant and hour: the tenant's devices' hourly rows added up, recomputed with them. The
-- response-time state merges the devices' states, so quantiles over a tenant, or over several
-- hours, are one quantilesTDigestWeightedMerge away.
CREATE TABLE IF NOT EXISTS {database}.tenant_hourly
(
    tenant_id String,
    hour DateTime('UTC'),
    devices UInt32,
    windows UInt64,
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
ORDER BY (tenant_id, hour)
