//! `[clickhouse]`: where the sink writes and how it batches.

use serde::{Deserialize, Serialize};

/// Settings of `fleetpulse sink clickhouse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// The HTTP interface, `http://host:port` or `https://host:port`.
    pub url: String,
    /// The CA that signed the server's certificate, PEM, when it is not one the system trusts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// The database of the tables (created if missing).
    pub database: String,
    /// User.
    pub user: String,
    /// Password.
    pub password: String,
    /// A file holding the password (read at start-up into `password`, which it wins over).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
    /// The `clickhouse` crate's row validation; unset: on for servers from 24.1, off before
    /// (18.16 cannot do it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<bool>,
    /// Kafka consumer group.
    pub group_id: String,
    /// A batch is inserted once it holds this many rows...
    pub batch_rows: usize,
    /// ...or this many bytes of records...
    pub batch_bytes: usize,
    /// ...or its first record has waited this long, ms.
    pub batch_ms: u64,
    /// The window length, ms, whose aggregates the hourly rollups add up (a length the
    /// pipeline emits; 1 min by default).
    pub rollup_window_ms: u32,
    /// How far past its end, ms of event time, an hour or a day is taken as closed and written
    /// to the rollups (records that come later still correct it).
    pub rollup_grace_ms: u64,
    /// Days a dead letter is kept, on servers with TTL (20.3 and later); 0 keeps them for good.
    pub dead_letter_days: u32,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; port 0 picks a free one.
    pub listen: std::net::SocketAddr,
}

impl SinkConfig {
    /// Where these settings connect.
    pub fn target(&self) -> crate::server::Target {
        crate::server::Target {
            url: self.url.clone(),
            database: self.database.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            ca_file: self.ca_file.clone(),
            validation: self.validation,
        }
    }
}

impl Default for SinkConfig {
    fn default() -> SinkConfig {
        SinkConfig {
            url: "http://127.0.0.1:8123".into(),
            ca_file: None,
            database: "fleetpulse".into(),
            user: "default".into(),
            password: String::new(),
            password_file: None,
            validation: None,
            group_id: "fleetpulse-clickhouse".into(),
            batch_rows: 100_000,
            batch_bytes: 32 * 1024 * 1024,
            batch_ms: 500,
            rollup_window_ms: 60_000,
            rollup_grace_ms: 300_000,
            dead_letter_days: 30,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9465)),
        }
    }
}

impl SinkConfig {
    /// Checks the values; the error names the key (within `[clickhouse]`) and what it expects.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, why: &str| Err((key.to_string(), why.to_string()));
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return fail("url", "an http:// or https:// URL of the HTTP interface");
        }
        if self.ca_file.is_some() && !self.url.starts_with("https://") {
            return fail("ca_file", "unset, unless url is an https:// URL");
        }
        let valid_name =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name(&self.database) {
            return fail("database", "letters, digits and underscores");
        }
        if self.group_id.is_empty() {
            return fail("group_id", "a consumer group name");
        }
        if self.batch_rows == 0 {
            return fail("batch_rows", "at least 1");
        }
        if self.batch_bytes == 0 {
            return fail("batch_bytes", "at least 1");
        }
        if self.batch_ms == 0 {
            return fail("batch_ms", "at least 1");
        }
        if self.rollup_window_ms == 0 || self.rollup_window_ms > 3_600_000 {
            return fail(
                "rollup_window_ms",
                "a window length of the pipeline, from 1 to 3600000",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_key() {
        assert!(SinkConfig::default().validate().is_ok());
        let bad = SinkConfig {
            database: "drop table".into(),
            ..SinkConfig::default()
        };
        assert_eq!(bad.validate().map_err(|e| e.0), Err("database".into()));
        let bad = SinkConfig {
            batch_rows: 0,
            ..SinkConfig::default()
        };
        assert_eq!(bad.validate().map_err(|e| e.0), Err("batch_rows".into()));
        let bad = SinkConfig {
            ca_file: Some("/etc/ca.pem".into()),
            ..SinkConfig::default()
        };
        assert_eq!(bad.validate().map_err(|e| e.0), Err("ca_file".into()));
    }
}
