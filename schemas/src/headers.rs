//! The Kafka record headers fleetpulse's own gateways (`fleetpulse ingest`, `fleetpulse mqtt`)
//! stamp on the telemetry they produce: who sent it, from the credential that was checked, not
//! from the body. The pipeline takes the tenant only from here with `pipeline.tenant_source =
//! "header"`, so that, with Kafka ACLs that let only the gateways write the telemetry topic, no
//! producer can write into another tenant's fleet.

/// The tenant of the credential (or mapping) a reading came in with.
pub const TENANT: &str = "fleetpulse-tenant";

/// The device, when the credential was the device's own.
pub const DEVICE: &str = "fleetpulse-device";

/// On a record that is an availability report rather than a reading: `online` or `offline`.
/// The record's body is a reading of the device at the report's time (`ok` the same as the
/// header); the pipeline takes an `offline` as the device going offline at once
/// (`reported_offline`), and an `online` as a sign of life that counts in no aggregate.
pub const AVAILABILITY: &str = "fleetpulse-availability";
