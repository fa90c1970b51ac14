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

/// The five derived streams, one per topic (or file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Window aggregates.
    Aggregates,
    /// Anomalies.
    Anomalies,
    /// Status transitions.
    Status,
    /// Dead letters.
    Dlq,
    /// Last-seen times.
    LastSeen,
}

impl Stream {
    /// Every stream.
    pub const ALL: [Stream; 5] = [
        Stream::Aggregates,
        Stream::Anomalies,
        Stream::Status,
        Stream::Dlq,
        Stream::LastSeen,
    ];

    /// The stream's name, as in `[topics]` and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Aggregates => "aggregates",
            Stream::Anomalies => "anomalies",
            Stream::Status => "status",
            Stream::Dlq => "dlq",
            Stream::LastSeen => "lastseen",
        }
    }
}

impl Output {
    /// The stream the record belongs to.
    pub fn stream(&self) -> Stream {
        match self {
            Output::Aggregate(_) => Stream::Aggregates,
            Output::Anomaly(_) => Stream::Anomalies,
            Output::Status(_) => Stream::Status,
            Output::DeadLetter(_) => Stream::Dlq,
            Output::LastSeen(_) => Stream::LastSeen,
        }
    }

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
