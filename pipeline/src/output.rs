//! What the dataflow emits: one enum over the five derived records, so one sink writes them all.

use schemas::{Anomaly, DeadLetter, LastSeen, StatusTransition, WindowAggregate};
use serde::{Deserialize, Serialize};

/// A derived record bound for its topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Output {
    /// To `device-aggregates`.
    Aggregate(WindowAggregate),
    /// To `device-anomalies`.
    Anomaly(Anomaly),
    /// To `device-status`.
    Status(StatusTransition),
    /// To `telemetry-dlq`.
    DeadLetter(DeadLetter),
    /// To `device-lastseen`.
    LastSeen(LastSeen),
}

impl Output {
    /// The record's deterministic id.
    pub fn event_id(&self) -> &str {
        match self {
            Output::Aggregate(r) => &r.event_id,
            Output::Anomaly(r) => &r.event_id,
            Output::Status(r) => &r.event_id,
            Output::DeadLetter(r) => &r.event_id,
            Output::LastSeen(r) => &r.event_id,
        }
    }
}
