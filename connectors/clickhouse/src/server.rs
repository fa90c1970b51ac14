//! Connecting to ClickHouse and learning what it can do from `SELECT version()`.

use clickhouse::Client;

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
    /// crate's row validation needs (18.16 does not: notes/clickhouse-18.16.md). Validation is
    /// on for the releases users run, from 24.1 on.
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
        let base = Client::default()
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
}
