//! The Redis status cache (`bridge.redis_url`): every bridge writes the devices that changed in
//! its [`Store`] to Redis, each field only if it is newer than what Redis holds (a Lua script
//! compares and sets in one step), so several bridges, each reading every partition, agree; and
//! a client's snapshot is read from it.
//!
//! Keys, per device (`{id}` is [`crate::key::encode`] of tenant and device: the pipeline keys
//! devices by tenant and id, so two tenants may both have a `pump-1`, and either id may hold a
//! `/`): `device:status:{id}` (hash: tenant, device, class, status, since), `device:lastseen:{id}`
//! (ms; written by a script of its own when only it changed, the frequent case),
//! `device:health:{id}` (hash: at, health, error_rate), `device:anomalies:{id}` (hash: kind ->
//! `ts|open|since|severity`); per tenant `tenant:devices:{tenant_id}` (its device ids), and
//! `tenants`. Every key of a device expires `bridge.device_retention_ms` after the latest record
//! of it (a key's expiry only moves forward, in steps of an eighth of that, so the frequent
//! last-seen write rarely pays for it); a device the store lets go (retired, or swept) is deleted.
//!
//! Redis going away does not stop anything: events still flow from the in-process store, the
//! devices that changed meanwhile stay noted, and once Redis answers again every device is
//! written once more (a restarted Redis may have lost them all). fred reconnects with
//! exponential backoff.

mod rows;
mod scripts;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::error::ErrorKind;
use fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy};
use fred::types::config::TlsConnector;
use fred::types::scripts::Script;
use serde::Serialize;
use tokio::sync::watch;

use crate::events;
use crate::hub::Hub;
use crate::key;
use crate::store::{Change, DeviceState, OpenAnomaly, Store};
use rows::{Write, last_seen_args, parse, slack, to_write};
use scripts::{DELETE, LAST_SEEN, READ, REFRESH, WRITE};

/// Devices per script call: big enough to amortise the round trip, small enough that Redis,
/// single-threaded, is never blocked for long.
const CHUNK: usize = 500;

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis refused, failed or is not there.
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// Redis refused the bridge's credentials, or its certificate did not verify: retrying
    /// cannot help.
    #[error("Redis at {url}: {cause}")]
    Refused {
        /// The server, without the password.
        url: String,
        /// What was refused, and Redis' or OpenSSL's words.
        cause: String,
    },
    /// The CA file cannot be read or used.
    #[error("the Redis CA file {path}: {detail}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Redis answered something the bridge did not write.
    #[error("redis holds an unreadable device: {0}")]
    Unreadable(String),
}

/// Which devices a snapshot reads.
#[derive(Debug, Clone)]
pub enum Devices {
    /// Every device of these tenants (all tenants when empty).
    Tenants(Vec<String>),
    /// These devices, by tenant and id.
    Keys(Vec<(String, String)>),
}

/// The Redis connection and what the writer has done.
pub struct Cache {
    client: fred::clients::Client,
    write: Script,
    last_seen: Script,
    delete: Script,
    read: Script,
    up: AtomicBool,
    /// How many of the hub's events Redis reflects.
    written: watch::Sender<u64>,
}

/// Where the cache lives and how the bridge logs in.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `redis://[user[:password]@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// The password, when it is not in the URL.
    pub password: Option<String>,
    /// The CA of a TLS server's certificate, when the system does not trust it.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Target {
    /// A server the URL says everything about.
    pub fn url(url: &str) -> Target {
        Target {
            url: url.to_string(),
            password: None,
            ca_file: None,
        }
    }

    fn config(&self) -> Result<Config, CacheError> {
        let mut config = Config::from_url(&self.url)?;
        if let Some(password) = &self.password {
            config.password = Some(password.clone());
        }
        if let (Some(path), Some(tls)) = (&self.ca_file, config.tls.as_mut()) {
            let fail = |detail: String| CacheError::CaFile {
                path: path.clone(),
                detail,
            };
            let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            let ca = native_tls::Certificate::from_pem(&pem).map_err(|e| fail(e.to_string()))?;
            let mut builder = native_tls::TlsConnector::builder();
            builder.add_root_certificate(ca);
            tls.connector = TlsConnector::try_from(builder)?;
        }
        Ok(config)
    }

    /// The URL without its password, for messages.
    fn shown(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("<redacted>"));
                url.to_string()
            }
            _ => self.url.clone(),
        }
    }

    /// Connects once, for up to `wait`: a refused login or certificate is an error, a server
    /// that is not there is not (the cache retries for it and `/readyz` shows it).
    pub async fn check(&self, wait: Duration) -> Result<(), CacheError> {
        let client = Builder::from_config(self.config()?)
            .with_connection_config(|c| c.connection_timeout = wait)
            .build()?;
        let error = match tokio::time::timeout(wait, client.init()).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) | Err(_) => {
                let _ = client.quit().await;
                return Ok(());
            }
        };
        let details = error.details();
        let cause = if details.contains("certificate verify failed") {
            "TLS failed: the server's certificate does not verify (set bridge.redis_ca_file to its CA)"
                .to_string()
        } else if *error.kind() == ErrorKind::Auth
            // Redis answers a wrong ACL password with an error reply, not an `Auth` kind.
            || ["WRONGPASS", "NOAUTH", "NOPERM"].iter().any(|w| details.contains(w))
        {
            format!("the credentials are refused: {details}")
        } else {
            // Anything else, other TLS errors too (a reset during the handshake while Redis
            // restarts, say), is retried.
            return Ok(());
        };
        Err(CacheError::Refused {
            url: self.shown(),
            cause,
        })
    }
}

impl Cache {
    /// A cache on `target`; connects in the background and keeps reconnecting.
    pub fn connect(target: &Target) -> Result<Arc<Cache>, CacheError> {
        let client = Builder::from_config(target.config()?)
            .with_config(|c| c.fail_fast = false)
            .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2))
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()?;
        client.connect();
        Ok(Arc::new(Cache {
            client,
            write: Script::from_lua(format!("{REFRESH}{WRITE}")),
            last_seen: Script::from_lua(format!("{REFRESH}{LAST_SEEN}")),
            delete: Script::from_lua(DELETE),
            read: Script::from_lua(READ),
            up: AtomicBool::new(false),
            written: watch::channel(0).0,
        }))
    }

    /// Whether the last write reached Redis.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Writes what changed in `store`, every `every`, until `stop`; every key of a device
    /// expires `retention` after its latest record.
    pub async fn write_behind(
        &self,
        store: &Store,
        hub: &Hub,
        every: Duration,
        retention: Duration,
        stop: &AtomicBool,
    ) {
        // Whether Redis holds every device: not at first, nor after it was away.
        let mut whole = false;
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(every).await;
            if !self.client.is_connected() {
                self.set_up(false);
                whole = false;
                continue;
            }
            if !whole {
                store.mark_changed(None);
            }
            // Read before taking the changes: every event counted was in the store by then.
            let published = hub.published();
            let changed = store.take_changed();
            events::redis_pending(changed.len());
            let keys: Vec<_> = changed.into_iter().collect();
            let mut failed = None;
            for (i, chunk) in keys.chunks(CHUNK).enumerate() {
                if let Err(e) = self.write_chunk(store, chunk, retention).await {
                    failed = Some((i, e));
                    break;
                }
                events::redis_written(chunk.len());
            }
            match failed {
                None => {
                    whole = true;
                    self.set_up(true);
                    self.written.send_replace(published);
                    events::redis_pending(0);
                }
                Some((i, e)) => {
                    tracing::warn!(error = %e, "redis write failed; the devices stay noted");
                    store.mark_changed(Some(keys[i * CHUNK..].iter().cloned().collect()));
                    // Redis may have restarted empty in between: everything is written again.
                    whole = false;
                    self.set_up(false);
                }
            }
        }
    }

    /// Writes one chunk of changed devices: those wholly changed with the general script, those
    /// whose last-seen time alone moved with the cheaper one; deletes those gone.
    async fn write_chunk(
        &self,
        store: &Store,
        chunk: &[(crate::store::DeviceKey, Change)],
        retention: Duration,
    ) -> Result<(), CacheError> {
        let (mut gone, held): (Vec<_>, Vec<_>) =
            chunk.iter().partition(|(_, c)| *c == Change::Gone);
        let devices = store.get(held.iter().map(|(k, c)| (k, c)));
        // A device noted changed that the store no longer holds left it since: deleted too.
        if devices.len() < held.len() {
            let present: std::collections::HashSet<(&str, &str)> = devices
                .iter()
                .map(|(d, _)| (d.tenant_id.as_str(), d.device_id.as_str()))
                .collect();
            gone.extend(
                held.iter()
                    .filter(|((t, d), _)| !present.contains(&(t.as_str(), d.as_str()))),
            );
        }
        let (whole, seen): (Vec<_>, Vec<_>) = devices.iter().partition(|(_, c)| *c == Change::All);
        if !whole.is_empty() {
            let writes: Vec<Write<'_>> =
                whole.iter().map(|(d, _)| to_write(d, retention)).collect();
            let json = serde_json::to_string(&writes).unwrap_or_default();
            let args = vec![json, slack(retention)];
            self.write
                .evalsha_with_reload::<i64, _, _>(&self.client, (), args)
                .await?;
        }
        let seen = last_seen_args(seen.iter().map(|(d, _)| d), retention);
        if !seen.is_empty() {
            let mut args = Vec::with_capacity(seen.len() + 1);
            args.push(slack(retention));
            args.extend(seen);
            self.last_seen
                .evalsha_with_reload::<i64, _, _>(&self.client, (), args)
                .await?;
        }
        if !gone.is_empty() {
            let args: Vec<String> = gone
                .iter()
                .flat_map(|((t, d), _)| [t.clone(), d.clone(), key::encode(t, d)])
                .collect();
            self.delete
                .evalsha_with_reload::<i64, _, _>(&self.client, (), args)
                .await?;
        }
        Ok(())
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("redis is up");
            } else {
                tracing::warn!(
                    "redis is not answering; events still flow, the cache catches up later"
                );
            }
        }
        events::redis_up(up);
    }

    /// The devices Redis holds, once it reflects the first `published` events of the hub (so a
    /// snapshot is never older than the events a subscriber did not get live); `None` if it does
    /// not within `wait` or is down.
    pub async fn snapshot(
        &self,
        devices: &Devices,
        published: u64,
        wait: Duration,
    ) -> Option<Vec<DeviceState>> {
        if !self.up() {
            return None;
        }
        let mut written = self.written.subscribe();
        let caught_up = tokio::time::timeout(wait, written.wait_for(|w| *w >= published));
        if !matches!(caught_up.await, Ok(Ok(_))) {
            return None;
        }
        match self.read(devices).await {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "snapshot from redis failed; from memory instead");
                None
            }
        }
    }

    /// Reads devices from Redis, a chunk of them per call so that Redis, single-threaded, is
    /// never held for long.
    pub async fn read(&self, devices: &Devices) -> Result<Vec<DeviceState>, CacheError> {
        let keys = match devices {
            Devices::Keys(keys) => keys.clone(),
            Devices::Tenants(tenants) => {
                let mut args = vec!["members".to_string()];
                args.extend(tenants.iter().cloned());
                let flat: Vec<String> = self
                    .read
                    .evalsha_with_reload(&self.client, (), args)
                    .await?;
                flat.chunks_exact(2)
                    .map(|p| (p[0].clone(), p[1].clone()))
                    .collect()
            }
        };
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(CHUNK) {
            let mut args = vec!["read".to_string()];
            for (tenant, device) in chunk {
                args.extend([tenant.clone(), device.clone(), key::encode(tenant, device)]);
            }
            let json: String = self
                .read
                .evalsha_with_reload(&self.client, (), args)
                .await?;
            let rows: Vec<Vec<serde_json::Value>> =
                serde_json::from_str(&json).map_err(|e| CacheError::Unreadable(e.to_string()))?;
            for row in &rows {
                out.push(parse(row)?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
