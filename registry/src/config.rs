//! Configuration of both sides: `[registry]` for the server, `[schema_registry]` for the client.
//! Values are checked as they are parsed, so a mistake names its key at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

/// `[registry]`: the `fleetpulse registry` server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// File that keeps schemas registered by clients across restarts. Without one they live in
    /// memory only; the built-in schemas are always there.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// A bearer token registrations (`POST /subjects/{subject}/versions`) must carry; reads stay
    /// open to consumers. Unset: anyone who reaches the registry may register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_token: Option<String>,
    /// A file holding that token (read at start-up into `write_token`, which it wins over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_token_file: Option<PathBuf>,
    /// The certificate chain (PEM) to serve `https://` with; with `tls_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// How many subjects the registry holds; a registration under a new subject past it is
    /// refused.
    #[serde(default = "default_max_subjects")]
    pub max_subjects: usize,
    /// How many versions one subject holds.
    #[serde(default = "default_max_versions")]
    pub max_versions: usize,
    /// The largest schema, bytes.
    #[serde(default = "default_max_schema_bytes")]
    pub max_schema_bytes: usize,
}

fn default_max_subjects() -> usize {
    1_000
}

fn default_max_versions() -> usize {
    100
}

fn default_max_schema_bytes() -> usize {
    64 * 1024
}

impl ServerConfig {
    /// The bounds on what the registry holds.
    pub fn limits(&self) -> crate::subjects::Limits {
        crate::subjects::Limits {
            subjects: self.max_subjects,
            versions: self.max_versions,
            schema_bytes: self.max_schema_bytes,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            state_file: None,
            write_token: None,
            write_token_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            max_subjects: default_max_subjects(),
            max_versions: default_max_versions(),
            max_schema_bytes: default_max_schema_bytes(),
        }
    }
}

/// `[schema_registry]`: a Confluent-compatible registry to take schema ids from. Without this
/// section fleetpulse uses its built-in schema ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Base URL of the registry, for example `http://127.0.0.1:8081`.
    #[serde(deserialize_with = "http_url")]
    pub url: url::Url,
    /// Timeout of one registry request, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// User for HTTP basic authentication, if the registry asks for it.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for HTTP basic authentication.
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (read at start-up into `password`, which it wins over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// A bearer token, for registries that take one instead of basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding the token (read at start-up into `token`, which it wins over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The CA of an `https://` registry's certificate, PEM, when the system does not trust it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<url::Url, D::Error> {
    let text = String::deserialize(d)?;
    match url::Url::parse(&text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(u),
        _ => Err(serde::de::Error::invalid_value(
            serde::de::Unexpected::Str(&text),
            &"an http:// or https:// URL such as http://127.0.0.1:8081",
        )),
    }
}
