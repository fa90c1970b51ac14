//! The fleetpulse dataflow: telemetry in, per-device window aggregates with health scores,
//! anomalies and online/offline transitions out, in event time, on timely-dataflow.
//!
//! Data flows one way: a [`source`] judges each record (dead letter, late, future or accepted)
//! and tracks its partitions' watermarks; accepted readings are exchanged by device to the
//! [`engine`], which holds them in its [`pending`] queue until the frontier passes them and
//! drives each [`device`] through readings and timers in event-time order;
//! status transitions are exchanged by tenant to the [`tenant`] operator (mass offline); each
//! device's latest reading time goes out within seconds ([`lastseen`]); every derived record goes
//! to a [`sink`]. The semantics are those of the design the parts share (docs/architecture.md
//! links it); docs/pipeline.md records the decisions the design left open.

pub mod anomaly;
pub mod checkpoint;
pub mod chunked;
pub mod clock;
pub mod config;
pub mod cut;
pub mod dataflow;
pub mod device;
pub mod digest;
pub mod engine;
pub mod event_id;
pub mod events;
pub mod health;
pub mod lastseen;
pub mod output;
pub mod pending;
pub mod progress;
pub mod readiness;
pub mod reading;
pub mod run;
pub mod sink;
pub mod source;
pub mod tenant;
pub mod watermark;
pub mod window;

pub use config::PipelineConfig;
pub use output::Output;
pub use readiness::Readiness;
pub use run::{InputSpec, Job, RunError, run, timely_config};
