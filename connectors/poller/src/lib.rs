//! `fleetpulse poll`: the devices that do not push telemetry, checked from outside. The poller
//! follows the device inventory, probes each poll target it owns (an HTTP GET or a TCP connect)
//! on the interval of its class and probe kind, under a global and a per-host cap on probes in
//! flight, and turns every probe into one telemetry record: event time the probe's start, the
//! answer's status, response time and mapped fields, or why there was none.
//!
//! A device that keeps failing is left alone by its [`breaker`] for a while; several instances
//! split the inventory between them by a hash of each device's key ([`target::instance_of`]).
//! What is due when is the [`schedule`]'s; the loop that runs it all is [`poller::Poller`].

pub mod breaker;
pub mod config;
pub mod events;
pub mod poller;
pub mod probe;
pub mod schedule;
pub mod target;

pub use config::PollerConfig;
pub use poller::{Clock, Poller};

/// A device's identity: its tenant and its id.
pub type DeviceId = inventory::DeviceId;
