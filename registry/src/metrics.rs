//! Names of the registry's metrics, in one place so dashboards and code agree.

/// Requests served, labelled by `route` and `status`.
pub(crate) const REQUESTS: &str = "fleetpulse_registry_requests_total";
/// Schemas the server knows.
pub(crate) const SCHEMAS: &str = "fleetpulse_registry_schemas";
