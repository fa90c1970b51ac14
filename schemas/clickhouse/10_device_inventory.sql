-- The device inventory, for joining any table on a device's class and labels ("error rate per
-- site"). One row per record of the device-inventory topic: a registration, or a decommission (a
-- tombstone, `decommissioned = 1`, ids only). The newest row of a device (by the record's time,
-- `version`, ms) replaces the others on merge, whatever order they arrived in. Read with FINAL
-- and `decommissioned = 0` for the devices that should exist now (docs/queries.md). Labels are
-- two parallel arrays (`label_values[indexOf(label_names, 'site')]`): a Map column is newer
-- than the oldest server the sink supports. No partition and no TTL: a device's rows must meet
-- to be replaced, and the table holds a row per device, not per reading.
CREATE TABLE IF NOT EXISTS {database}.device_inventory
(
    tenant_id String,
    device_id String,
    device_class Nullable(String),
    label_names Array(String),
    label_values Array(String),
    expected_interval_ms Nullable(Int64),
    monitoring_enabled UInt8,
    poll_url Nullable(String),
    decommissioned UInt8,
    changed DateTime('UTC'),
    version UInt64,
    inserted_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant_id, device_id)
