//! `[bridge]`: where the bridge listens, how it checks tokens, and its limits.

use serde::{Deserialize, Serialize};

/// Settings of `fleetpulse bridge`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// Where `/ws`, the REST endpoints, `/metrics`, `/healthz` and `/readyz` are served; port 0
    /// picks a free one.
    pub listen: std::net::SocketAddr,
    /// The certificate chain (PEM) to serve `https://` and `wss://` with, for deployments without
    /// a TLS proxy; with `tls_key_file`. Unset: plain `http://` and `ws://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// The HS256 secret tokens are signed with, at least 256 bits as written. Empty: HS256
    /// tokens are refused, and without a key set (`jwks_file`, `jwks_url`) the bridge does not
    /// start.
    pub jwt_secret: String,
    /// The `iss` tokens must carry; empty: not checked.
    pub jwt_issuer: String,
    /// An `aud` tokens must carry; empty: not checked.
    pub jwt_audience: String,
    /// The longest a token may be valid for, seconds (its `exp` at most this far from now and
    /// from its `iat`); 0: no limit.
    pub jwt_max_lifetime_s: u64,
    /// The claim naming the tenant; a dotted path reaches into objects.
    pub jwt_tenant_claim: String,
    /// The claim naming the role: a string, or an array of roles (one of them `admin` for an
    /// admin); a dotted path reaches into objects (`realm_access.roles`).
    pub jwt_role_claim: String,
    /// A file holding the secret (read at start-up into `jwt_secret`, which it wins over).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret_file: Option<std::path::PathBuf>,
    /// A JSON Web Key Set file with the public keys RS256 and ES256 tokens are checked against
    /// (an identity provider's keys, saved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<std::path::PathBuf>,
    /// The URL of an identity provider's JSON Web Key Set (its `jwks_uri`), fetched at start-up
    /// and again every `jwks_refresh_s`, or sooner for a key id it does not hold.
    pub jwks_url: String,
    /// How often the key set at `jwks_url` is fetched again, seconds.
    pub jwks_refresh_s: u64,
    /// Connections served at once; more are refused with 503.
    pub max_connections: usize,
    /// WebSocket connections served at once from one client address (behind a proxy, the
    /// proxy's address: raise it there).
    pub max_connections_per_address: usize,
    /// WebSocket connections served at once for one tenant (admins count under their own).
    pub max_connections_per_tenant: usize,
    /// How long a client has for its first byte, its TLS handshake and each request's headers,
    /// ms; an idle keep-alive connection is closed after it too.
    pub header_timeout_ms: u64,
    /// How long a WebSocket client has after the upgrade to send its first message, ms.
    pub first_message_ms: u64,
    /// Client messages one connection may send per second (twice as many, at least 10, in a
    /// burst); past that it is answered `rate_limited`, and closed if it goes on. 0: no limit.
    pub messages_per_s: u32,
    /// Client messages all the connections of one tenant may send per second. 0: no limit.
    pub tenant_messages_per_s: u32,
    /// Snapshots and cursor replays one connection may ask for per second (at least 10 in a
    /// burst). 0: no limit.
    pub snapshots_per_s: u32,
    /// Snapshots and cursor replays all the connections of one tenant may ask for per second.
    /// 0: no limit.
    pub tenant_snapshots_per_s: u32,
    /// `/api/devices` requests one token may make per second (answered 429 past it). 0: no limit.
    pub api_requests_per_s: u32,
    /// Devices per `snapshot` message: a larger snapshot comes in several, all but the last
    /// marked `more`. A connection keeps a send buffer as large as the largest message it was
    /// sent: a page of 100 devices is about 25 KiB.
    pub snapshot_page: usize,
    /// Topics one client may subscribe to.
    pub max_subscriptions: usize,
    /// The largest client message, bytes.
    pub max_message_bytes: usize,
    /// Events a client may have waiting; one that falls further behind is told `slow_consumer`
    /// and disconnected.
    pub client_queue: usize,
    /// Bad client messages answered with `error` before the connection is closed.
    pub max_errors: u32,
    /// How often the server sends `heartbeat`, ms; a client silent for three of these is closed.
    pub heartbeat_ms: u64,
    /// `redis://[user@]host:port[/db]` (or `rediss://` for TLS) of the status cache; empty: the
    /// in-process store only.
    pub redis_url: String,
    /// The password of the URL's user (ACL) or of `requirepass`, when it is not in the URL.
    pub redis_password: String,
    /// A file holding that password (read at start-up into `redis_password`, which it wins over).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password_file: Option<std::path::PathBuf>,
    /// The CA of a `rediss://` server's certificate, PEM, when the system does not trust it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Recent events kept for clients that resume from a cursor; one whose cursor is older gets
    /// `resync` and a snapshot.
    pub resume_events: usize,
    /// The most those recent events may take, bytes (their JSON and cursors): whichever bound
    /// is met first lets the oldest go.
    pub resume_bytes: usize,
    /// A device no record has mentioned for this long (by the records' times) leaves the store
    /// and Redis, whose keys for it expire after this too, ms. The pipeline retires silent
    /// devices itself (`pipeline.device_retention_ms`); this bounds what its retirements miss.
    pub device_retention_ms: u64,
    /// Where `/metrics` is served instead of `listen`, to keep it off the public listener; unset:
    /// on `listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How often a client gets one `last_seen` message with the devices' last-seen times that
    /// moved, ms: the most a last-seen time waits in the bridge before it is sent.
    pub last_seen_every_ms: u64,
}

impl Default for BridgeConfig {
    fn default() -> BridgeConfig {
        BridgeConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert_file: None,
            tls_key_file: None,
            jwt_secret: String::new(),
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            jwt_max_lifetime_s: 0,
            jwt_tenant_claim: "tenant".into(),
            jwt_role_claim: "role".into(),
            jwt_secret_file: None,
            jwks_file: None,
            jwks_url: String::new(),
            jwks_refresh_s: 300,
            max_connections: 20_000,
            max_connections_per_address: 1_000,
            max_connections_per_tenant: 10_000,
            header_timeout_ms: 10_000,
            first_message_ms: 10_000,
            messages_per_s: 20,
            tenant_messages_per_s: 2_000,
            snapshots_per_s: 1,
            tenant_snapshots_per_s: 50,
            api_requests_per_s: 10,
            snapshot_page: 100,
            max_subscriptions: 64,
            max_message_bytes: 16 * 1024,
            client_queue: 1_024,
            max_errors: 10,
            heartbeat_ms: 15_000,
            redis_url: String::new(),
            redis_password: String::new(),
            redis_password_file: None,
            redis_ca_file: None,
            resume_events: 100_000,
            resume_bytes: 64 * 1024 * 1024,
            device_retention_ms: 30 * 24 * 3_600_000,
            metrics_listen: None,
            last_seen_every_ms: 500,
        }
    }
}

impl BridgeConfig {
    /// The Redis these settings name, if any.
    pub fn redis(&self) -> Option<crate::cache::Target> {
        (!self.redis_url.is_empty()).then(|| crate::cache::Target {
            url: self.redis_url.clone(),
            password: (!self.redis_password.is_empty()).then(|| self.redis_password.clone()),
            ca_file: self.redis_ca_file.clone(),
        })
    }

    /// What tokens must say, from the `jwt_*` keys.
    pub fn token_rules(&self) -> crate::auth::Rules {
        let set = |s: &String| (!s.is_empty()).then(|| s.clone());
        crate::auth::Rules {
            issuer: set(&self.jwt_issuer),
            audience: set(&self.jwt_audience),
            max_lifetime_s: (self.jwt_max_lifetime_s > 0).then_some(self.jwt_max_lifetime_s),
            tenant_claim: self.jwt_tenant_claim.clone(),
            role_claim: self.jwt_role_claim.clone(),
        }
    }

    /// Checks the values; the error names the key (within `[bridge]`) and what it expects.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, why: &str| Err((key.to_string(), why.to_string()));
        let key_set = self.jwks_file.is_some() || !self.jwks_url.is_empty();
        if (!key_set || !self.jwt_secret.is_empty())
            && let Some(why) = crate::auth::weakness(&self.jwt_secret)
        {
            return fail(
                "jwt_secret",
                &format!("a random HS256 secret of at least 256 bits; this one has {why}"),
            );
        }
        for (key, claim) in [
            ("jwt_tenant_claim", &self.jwt_tenant_claim),
            ("jwt_role_claim", &self.jwt_role_claim),
        ] {
            if claim.is_empty() {
                return fail(key, "a claim name");
            }
        }
        for (key, value) in [
            ("max_connections", self.max_connections),
            (
                "max_connections_per_address",
                self.max_connections_per_address,
            ),
            (
                "max_connections_per_tenant",
                self.max_connections_per_tenant,
            ),
            ("max_subscriptions", self.max_subscriptions),
            ("max_message_bytes", self.max_message_bytes),
            ("client_queue", self.client_queue),
            ("snapshot_page", self.snapshot_page),
            ("resume_bytes", self.resume_bytes),
        ] {
            if value == 0 {
                return fail(key, "at least 1");
            }
        }
        for (key, value) in [
            ("heartbeat_ms", self.heartbeat_ms),
            ("header_timeout_ms", self.header_timeout_ms),
            ("first_message_ms", self.first_message_ms),
        ] {
            if value < 100 {
                return fail(key, "at least 100");
            }
        }
        if self.device_retention_ms < 60_000 {
            return fail("device_retention_ms", "at least 60000 (a minute)");
        }
        if !self.jwks_url.is_empty()
            && !self.jwks_url.starts_with("https://")
            && !self.jwks_url.starts_with("http://")
        {
            return fail(
                "jwks_url",
                "empty, or the https:// (or http://) URL of a JSON Web Key Set",
            );
        }
        if !self.jwks_url.is_empty() && self.jwks_file.is_some() {
            return fail("jwks_file", "unset when jwks_url is set (one key set)");
        }
        if self.jwks_refresh_s < 10 {
            return fail("jwks_refresh_s", "at least 10");
        }
        if !(10..=60_000).contains(&self.last_seen_every_ms) {
            return fail("last_seen_every_ms", "from 10 to 60000");
        }
        if self.redis_ca_file.is_some() && !self.redis_url.starts_with("rediss://") {
            return fail(
                "redis_ca_file",
                "unset, unless redis_url is a rediss:// (TLS) URL",
            );
        }
        if !self.redis_url.is_empty()
            && !self.redis_url.starts_with("redis://")
            && !self.redis_url.starts_with("rediss://")
        {
            return fail(
                "redis_url",
                "empty (no Redis) or a URL like redis://127.0.0.1:6379 or rediss://user@host:6380",
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
        let good = BridgeConfig {
            jwt_secret: "9f2c4e0b7a1d3f5e8c6b2a4d0f1e3c5b7a9d8e6f4c2b0a1d3e5f7c9b8a6d4e2f".into(),
            ..BridgeConfig::default()
        };
        let weak = BridgeConfig {
            jwt_secret: "aaaaaaaaaaaaaaaa".into(),
            ..good.clone()
        };
        assert_eq!(weak.validate().map_err(|e| e.0), Err("jwt_secret".into()));
        assert!(good.validate().is_ok());
        assert_eq!(
            BridgeConfig::default().validate().map_err(|e| e.0),
            Err("jwt_secret".into())
        );
        let ca_without_tls = BridgeConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_ca_file: Some("/etc/ca.pem".into()),
            ..good.clone()
        };
        assert_eq!(
            ca_without_tls.validate().map_err(|e| e.0),
            Err("redis_ca_file".into())
        );
        let tls = BridgeConfig {
            redis_url: "rediss://fleet@127.0.0.1:6380".into(),
            ..ca_without_tls
        };
        assert!(tls.validate().is_ok());
        let bad = BridgeConfig {
            client_queue: 0,
            ..good
        };
        assert_eq!(bad.validate().map_err(|e| e.0), Err("client_queue".into()));
    }
}
