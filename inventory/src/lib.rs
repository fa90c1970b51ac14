//! The device inventory: which devices should exist, with their class, labels, expected
//! reporting interval and poll target. Operators keep it in a YAML or CSV file ([`file`]);
//! `fleetpulse inventory apply` turns the compacted `device-inventory` topic into what the file
//! says with the smallest [`plan`] (a record per new or changed device, a tombstone per removed
//! one); the pipeline and the poller read the topic ([`topic`]), the poller following it as it
//! changes.
//!
//! This crate holds no Kafka client of its own: [`topic::read_to_end`] takes the caller's
//! consumer, configured (brokers, TLS, credentials) where the binary configures every client.

pub mod file;
pub mod plan;
pub mod topic;

pub use file::{Desired, FileError, Format};
pub use plan::{Plan, Scope, Update};
pub use topic::{Change, Current, TopicError};

/// A device's identity in the inventory: its tenant and its id.
pub type DeviceId = (String, String);
