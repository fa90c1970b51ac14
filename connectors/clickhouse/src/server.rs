//! Connecting to ClickHouse and learning what it can do from `SELECT version()`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clickhouse::Client;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use schemas::retry::Retryable;

/// Errors of the ClickHouse side.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// ClickHouse refused a query or could not be reached.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// The server's version string could not be read.
    #[error("cannot read the server version {0:?}")]
    Version(String),
    /// A table definition is malformed.
    #[error("table definitions: {0}")]
    Ddl(String),
    /// The CA file cannot be read or used.
    #[error("the ClickHouse CA file {path}: {detail}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

/// Server error codes no retry can get past: the sink's identity or rights, or tables and
/// columns that are not what it writes. 192 UNKNOWN_USER, 193 WRONG_PASSWORD, 194
/// REQUIRED_PASSWORD (18.16), 516 AUTHENTICATION_FAILED (from 20.x), 497 ACCESS_DENIED, 164
/// READONLY, 81 UNKNOWN_DATABASE, 60 UNKNOWN_TABLE, 16 NO_SUCH_COLUMN_IN_TABLE, 47
/// UNKNOWN_IDENTIFIER, 53 TYPE_MISMATCH, 62 SYNTAX_ERROR. Any other (a server that is away,
/// busy, out of memory, with too many parts, restarting) may pass, and is retried.
const PERMANENT_CODES: [u32; 12] = [192, 193, 194, 516, 497, 164, 81, 60, 16, 47, 53, 62];

/// The credential codes among [`PERMANENT_CODES`].
const CREDENTIAL_CODES: [u32; 4] = [192, 193, 194, 516];

/// The whole text of an error and its sources, where ClickHouse's `Code: N` and TLS's
/// complaints are found.
fn chain_text(e: &clickhouse::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The server's error code in `text` (`Code: 60. DB::Exception: ...`), if it names one.
fn server_code(text: &str) -> Option<u32> {
    let after = &text[text.find("Code: ")? + "Code: ".len()..];
    let digits = after
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after.len());
    after[..digits].parse().ok()
}

impl Retryable for SinkError {
    fn is_retryable(&self) -> bool {
        let SinkError::ClickHouse(e) = self else {
            return false;
        };
        let text = chain_text(e);
        if text.contains("certificate verify failed") {
            return false;
        }
        server_code(&text).is_none_or(|code| !PERMANENT_CODES.contains(&code))
    }
}

impl SinkError {
    /// Whether the server refused who the sink says it is, or its certificate did not verify,
    /// and the cause: what an operator has to fix before the sink can start.
    pub fn refusal(&self) -> Option<&'static str> {
        let SinkError::ClickHouse(e) = self else {
            return None;
        };
        let text = chain_text(e);
        if server_code(&text).is_some_and(|code| CREDENTIAL_CODES.contains(&code)) {
            Some("the credentials are refused")
        } else if text.contains("certificate verify failed") {
            Some(
                "TLS failed: the server's certificate does not verify (set clickhouse.ca_file to its CA)",
            )
        } else {
            None
        }
    }
}

/// A server version, major and minor (`18.16.1` is 18.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl Version {
    /// Reads `18.16.1`, `24.8.4.13` and the like.
    pub fn parse(text: &str) -> Result<Version, SinkError> {
        let mut parts = text.trim().split('.').map(str::parse::<u32>);
        match (parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor))) => Ok(Version { major, minor }),
            _ => Err(SinkError::Version(text.to_string())),
        }
    }

    /// Whether the server understands RowBinaryWithNamesAndTypes, which the `clickhouse`
    /// crate's row validation needs (18.16 does not: docs/clickhouse.md, "ClickHouse
    /// versions"). Validation is on for the releases users run, from 24.1 on.
    pub fn validates_rows(self) -> bool {
        self >= Version {
            major: 24,
            minor: 1,
        }
    }
}

/// Where the sink connects.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `http://host:port` of the HTTP interface.
    pub url: String,
    /// The database the tables live in (created if missing).
    pub database: String,
    /// User.
    pub user: String,
    /// Password.
    pub password: String,
    /// The CA of an HTTPS server's certificate, when the system does not trust it.
    pub ca_file: Option<PathBuf>,
    /// Row validation: `None` follows the server's version ([`Version::validates_rows`]).
    pub validation: Option<bool>,
}

/// A client of one server, set up for its version.
#[derive(Clone)]
pub struct Connection {
    /// The client, with the database selected and validation as the version allows.
    pub client: Client,
    /// The server's version.
    pub version: Version,
}

impl Connection {
    /// Connects to `target` and asks the server its version.
    pub async fn open(target: &Target) -> Result<Connection, SinkError> {
        let base = match &target.ca_file {
            Some(ca) => https_client(ca)?,
            None => Client::default(),
        }
        .with_url(&target.url)
        .with_user(&target.user)
        .with_password(&target.password)
        .with_validation(false);
        let text: String = base.query("SELECT version()").fetch_one().await?;
        let version = Version::parse(&text)?;
        let validation = target.validation.unwrap_or(version.validates_rows());
        Ok(Connection {
            client: base
                .with_database(&target.database)
                .with_validation(validation),
            version,
        })
    }
}

/// Mirrors the keep-alive and pool settings of the crate's default client (0.15), with `ca`
/// trusted besides the system's CAs.
fn https_client(ca: &Path) -> Result<Client, SinkError> {
    let fail = |detail: String| SinkError::CaFile {
        path: ca.to_path_buf(),
        detail,
    };
    let pem = std::fs::read(ca).map_err(|e| fail(e.to_string()))?;
    let certificate = native_tls::Certificate::from_pem(&pem).map_err(|e| fail(e.to_string()))?;
    let tls = native_tls::TlsConnector::builder()
        .add_root_certificate(certificate)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    let connector = hyper_tls::HttpsConnector::from((http, tls.into()));
    Ok(Client::with_http_client(
        HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(2))
            .build(connector),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_and_compared() -> Result<(), SinkError> {
        let old = Version::parse("18.16.1")?;
        assert_eq!(
            old,
            Version {
                major: 18,
                minor: 16
            }
        );
        assert!(!old.validates_rows());
        assert!(Version::parse("24.8.4.13")?.validates_rows());
        assert!(Version::parse("banana").is_err());
        Ok(())
    }

    fn refused(text: &str) -> SinkError {
        SinkError::ClickHouse(clickhouse::error::Error::BadResponse(text.to_string()))
    }

    #[test]
    fn what_a_retry_cannot_fix_is_told_from_what_may_pass() {
        let unknown_table =
            refused("Code: 60. DB::Exception: Table fp.device_aggregates doesn't exist");
        assert!(!unknown_table.is_retryable());
        assert_eq!(unknown_table.refusal(), None);
        let password = refused("Code: 516. DB::Exception: default: Authentication failed");
        assert!(!password.is_retryable());
        assert_eq!(password.refusal(), Some("the credentials are refused"));
        for passing in [
            "Code: 241. DB::Exception: Memory limit (total) exceeded",
            "Code: 252. DB::Exception: Too many parts (300)",
            "Code: 202. DB::Exception: Too many simultaneous queries",
            "connection closed before message completed",
        ] {
            assert!(refused(passing).is_retryable(), "{passing}");
        }
        assert!(SinkError::ClickHouse(clickhouse::error::Error::TimedOut).is_retryable());
        assert!(!SinkError::Ddl("count".into()).is_retryable());
    }
}
