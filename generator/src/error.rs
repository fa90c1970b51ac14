//! Errors of the generator.

use std::path::PathBuf;

/// What stops a generator run.
#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    /// Kafka refused the producer's configuration or a message; check the broker and settings.
    #[error("kafka: {0}")]
    Kafka(String),
    /// Kafka did not acknowledge every message before the timeout; retrying may help.
    #[error("kafka did not acknowledge {unacked} messages within {timeout_s} s")]
    Unacknowledged {
        /// Messages still in flight.
        unacked: u64,
        /// How long we waited.
        timeout_s: u64,
    },
    /// Kafka reported failed deliveries.
    #[error("kafka failed to deliver {failed} messages; first error: {first}")]
    Delivery {
        /// How many failed.
        failed: u64,
        /// The first error reported.
        first: String,
    },
    /// The output file could not be written.
    #[error("cannot write {path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O or Avro error.
        detail: String,
    },
    /// A reading could not be encoded (a bug: the generator builds only encodable records).
    #[error(transparent)]
    Encode(#[from] schemas::EncodeError),
}
