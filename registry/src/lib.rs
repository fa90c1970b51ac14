//! Schema ids for fleetpulse, from either side of the Confluent Schema Registry API.
//!
//! - [`server`]: `fleetpulse registry`, which serves the built-in (file-backed) schemas, and any a
//!   client registers, over the subset of the Confluent REST API that producers and consumers use,
//!   so Confluent clients in any language work against it.
//! - [`client`]: registers fleetpulse's schemas with a Confluent-compatible registry and fetches
//!   the writer schemas of ids the codec does not know, through `schema_registry_converter`.
//!
//! [`Subjects`] is the registry itself, as plain data with no I/O but its optional state file.

pub mod client;
pub mod config;
mod error;
mod events;
pub mod server;
mod subjects;

pub use config::{ClientConfig, ServerConfig};
pub use error::RegistryError;
pub use subjects::{Compatibility, Registered, Subjects};
