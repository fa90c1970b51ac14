//! `[ingest]`: where `fleetpulse ingest` listens, whose keys it takes, and what one request may
//! hold.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What to do with a line whose body names another tenant (or, under a device key, another
/// device) than the key's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnForeignClaim {
    /// Refuse the line (`foreign_tenant`, `foreign_device`).
    #[default]
    Reject,
    /// Take the key's tenant (and device) instead, as if the body had named none.
    Override,
}

/// Settings of `fleetpulse ingest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Where `POST /v1/telemetry` is served; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (kept off the public listener).
    pub metrics_listen: SocketAddr,
    /// The API keys (`fleetpulse api-key` writes it); required to serve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate (PEM) and `tls_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// The largest request body, bytes (413 beyond).
    pub max_body_bytes: usize,
    /// The most lines one request may hold (413 beyond).
    pub max_lines: usize,
    /// Readings per second one key may send, on average; a batch may take up to a second's worth
    /// or `max_lines`, whichever is more, at once (429 beyond, with `Retry-After`).
    pub readings_per_s: u32,
    /// A body that names another tenant or device than its key's.
    pub on_foreign_claim: OnForeignClaim,
    /// How long a request waits for Kafka's acknowledgement of its readings, ms; after it, the
    /// lines not yet acknowledged are answered `unavailable` (they may be written all the same:
    /// a client that sends them again may have them counted twice).
    pub timeout_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> IngestConfig {
        IngestConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9467)),
            keys_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            max_body_bytes: 1 << 20,
            max_lines: 10_000,
            readings_per_s: 1_000,
            on_foreign_claim: OnForeignClaim::Reject,
            timeout_ms: 30_000,
        }
    }
}

impl IngestConfig {
    /// Checks the values; the error names the key (within `[ingest]`) and what it expects.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, why: &str| Err((key.to_string(), why.to_string()));
        if !(1_024..=256 << 20).contains(&self.max_body_bytes) {
            return fail("max_body_bytes", "from 1024 bytes to 256 MiB");
        }
        if !(1..=1_000_000).contains(&self.max_lines) {
            return fail("max_lines", "from 1 to 1000000");
        }
        if self.readings_per_s == 0 {
            return fail("readings_per_s", "at least 1");
        }
        if !(100..=600_000).contains(&self.timeout_ms) {
            return fail("timeout_ms", "from 100 ms to 10 minutes (600000)");
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return fail(
                "tls_cert_file",
                "both tls_cert_file and tls_key_file, or neither",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mistake_names_its_key() {
        assert_eq!(IngestConfig::default().validate(), Ok(()));
        type Breaker = fn(&mut IngestConfig);
        let cases: [(&str, Breaker); 4] = [
            ("max_body_bytes", |c| c.max_body_bytes = 10),
            ("max_lines", |c| c.max_lines = 0),
            ("readings_per_s", |c| c.readings_per_s = 0),
            ("tls_cert_file", |c| c.tls_key_file = Some("k.pem".into())),
        ];
        for (key, break_it) in cases {
            let mut c = IngestConfig::default();
            break_it(&mut c);
            assert_eq!(c.validate().map_err(|(k, _)| k), Err(key.to_string()));
        }
    }
}
