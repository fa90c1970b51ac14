//! `fleetpulse ingest`: the way in for devices and gateways that speak HTTP, not Kafka.
//!
//! `POST /v1/telemetry` takes one JSON reading or an NDJSON batch under an API key (`Authorization:
//! Bearer fpk_...` or `X-Api-Key`), of a tenant or of one device. Each line becomes a reading
//! under that credential ([`lines`]): the tenant (and a device key's device) is the key's, a body
//! that claims another is refused (or, configured so, overruled), and the reading is checked as
//! the pipeline would. Accepted readings are produced to the telemetry topic, Avro, keyed by
//! device, with the key's tenant in a record header ([`schemas::headers`]); the answer comes once
//! Kafka has acknowledged them and says per line what was accepted and why not ([`server`]).
//! Keys live hashed in a file that `fleetpulse api-key` manages and the server re-reads when it
//! changes, so a revoked key stops working without a restart ([`keys`]).

pub mod config;
pub mod events;
pub mod keys;
pub mod lines;
pub mod produce;
pub mod server;

pub use config::{IngestConfig, OnForeignClaim};
pub use keys::{Credential, KeyError, KeyFile, Keys};
pub use produce::Producer;
pub use server::{App, router};
