//! Errors of the registry, each saying whether a retry can help.

use std::path::PathBuf;

use schemas::retry::Retryable;

/// What went wrong talking to, or being, a schema registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached or answered with a server error; retrying may help.
    #[error("schema registry at {url} unavailable: {detail}")]
    Unavailable {
        /// The registry's URL.
        url: String,
        /// What the client saw.
        detail: String,
    },
    /// The registry's certificate does not verify; retrying will not help.
    #[error("schema registry at {url}: TLS failed: {detail}")]
    Untrusted {
        /// The registry's URL.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// The registry refused the request (unknown id, incompatible schema, bad input); retrying
    /// the same request will not help.
    #[error("schema registry refused: {0}")]
    Refused(String),
    /// A schema it returned cannot be used by fleetpulse.
    #[error(transparent)]
    Schema(#[from] schemas::SchemaError),
    /// No subject of that name.
    #[error("subject {0:?} not found")]
    SubjectNotFound(String),
    /// The subject has no such version.
    #[error("version {version} of subject {subject:?} not found")]
    VersionNotFound {
        /// The subject.
        subject: String,
        /// The version asked for.
        version: String,
    },
    /// No schema with that id, or not under that subject.
    #[error("schema not found: {0}")]
    SchemaNotFound(String),
    /// The schema text is not a valid Avro schema, or not Avro at all.
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    /// The schema cannot read data written with the subject's latest version.
    #[error("schema is incompatible with the latest version of {subject:?} (BACKWARD): {detail}")]
    Incompatible {
        /// The subject.
        subject: String,
        /// Why.
        detail: String,
    },
    /// A registration past the registry's bounds (subjects, versions, schema size).
    #[error("the registry holds no more: {0}")]
    Full(String),
    /// The server's state file could not be read or written.
    #[error("registry state file {path}: {detail}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// The I/O or parse error.
        detail: String,
    },
}

impl Retryable for RegistryError {
    /// A registry that is not up yet (started beside us) may answer later; one that refuses
    /// gives the same answer again.
    fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}
