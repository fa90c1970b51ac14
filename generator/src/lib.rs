//! A synthetic fleet for demos, tests and benchmarks: `fleetpulse generate`.
//!
//! [`Fleet`] is a seeded model of N devices across T tenants: lognormal response times with some
//! slow devices, error bursts, battery drain, devices that go silent for minutes and come back,
//! and configurable shares of out-of-order, late, future-stamped and malformed messages. The
//! same configuration and seed always give the same messages in the same order.
//!
//! [`run`] drives a fleet into a [`Sink`]: Kafka ([`KafkaSink`], keyed by device id), an NDJSON
//! file or an Avro object container file ([`FileSink`]).

mod config;
mod encode;
mod error;
mod fleet;
mod kafka;
mod run;
mod sink;

pub use config::{GeneratorConfig, MessageFormat};
pub use encode::encode;
pub use error::GeneratorError;
pub use fleet::{Body, Event, Fleet, Malformation, Tag, device_ids};
pub use kafka::KafkaSink;
pub use run::{Summary, run};
pub use sink::{FileSink, Sink};
