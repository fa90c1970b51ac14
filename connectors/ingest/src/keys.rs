//! API keys: who may send readings, for which tenant, and for which device if the key is a
//! device's own.
//!
//! A key is `fpk_<id>_<secret>`: `id` (8 hex digits) finds its entry, `secret` (32 random bytes,
//! base64url) proves it. The keys file holds each entry's SHA-256 of the secret, never the
//! secret, which is shown once, when the key is made. A fast hash is enough here: the secret is
//! 256 random bits, not a password, so no dictionary shortens a search of it (GitHub's and
//! Stripe's tokens are kept the same way). The comparison takes the same time whatever matches.
//!
//! The file is JSON, written to a temporary file and renamed over the old one, so a server that
//! re-reads it ([`Keys::reload`]) sees the old keys or the new ones, never half of them.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every key starts with, so a leaked one is recognised by secret scanners.
pub const PREFIX: &str = "fpk_";

/// Errors of the keys file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a keys file.
    #[error("{path}: not a keys file: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// No key has this id.
    #[error("no key {0}")]
    NoSuchKey(String),
    /// A key for an empty tenant or device.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// The system gave no random bytes.
    #[error("no random bytes for a key: {0}")]
    Random(String),
}

/// One key, as the file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// Finds the key; part of the key itself.
    pub id: String,
    /// The tenant every reading sent with it belongs to.
    pub tenant: String,
    /// The one device it may send for; `None`: any device of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// What it is for, as its maker named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// SHA-256 of the secret, hex.
    pub sha256: String,
    /// When it was made, ms since the epoch.
    pub created_ms: i64,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
}

/// Who sent a request, from the key it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The key's id (for rate limits, metrics and logs; never the secret).
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its device, for a device's own key.
    pub device: Option<String>,
}

/// Why a presented key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No key came with the request.
    Missing,
    /// What came is not a fleetpulse key, or no key matches it.
    Wrong,
    /// The key matched, and was revoked.
    Revoked,
}

impl Refused {
    /// What the answer says.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Missing => "no API key: send Authorization: Bearer fpk_... or X-Api-Key",
            Refused::Wrong => "the API key is not valid",
            Refused::Revoked => "the API key was revoked",
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(bytes)
}

/// Every key: the keys file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// The keys, oldest first.
    pub keys: Vec<KeyEntry>,
}

/// The bytes of `path`; a file that does not exist holds none.
fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    match std::fs::read(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(KeyError::Io {
            path: path.into(),
            source,
        }),
    }
}

impl KeyFile {
    /// Reads `path`; a file that does not exist holds no keys.
    pub fn load(path: &Path) -> Result<KeyFile, KeyError> {
        KeyFile::parse(path, &read(path)?)
    }

    fn parse(path: &Path, text: &[u8]) -> Result<KeyFile, KeyError> {
        if text.is_empty() {
            return Ok(KeyFile::default());
        }
        serde_json::from_slice(text).map_err(|e| KeyError::Corrupt {
            path: path.into(),
            detail: e.to_string(),
        })
    }

    /// Writes `path` whole: to a temporary file beside it, then renamed over it.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.into(),
            source,
        };
        let text = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        let temp = path.with_extension("tmp");
        std::fs::write(&temp, text).map_err(io)?;
        std::fs::rename(&temp, path).map_err(io)
    }

    /// Makes a key for `tenant` (and only `device`, if given), made at `now_ms`; returns the key,
    /// which is shown once and kept nowhere.
    pub fn create(
        &mut self,
        tenant: &str,
        device: Option<&str>,
        name: Option<&str>,
        now_ms: i64,
    ) -> Result<String, KeyError> {
        if tenant.is_empty() {
            return Err(KeyError::Empty("the tenant"));
        }
        if device.is_some_and(str::is_empty) {
            return Err(KeyError::Empty("the device"));
        }
        let id = loop {
            let id: String = random::<4>()?.iter().map(|b| format!("{b:02x}")).collect();
            if !self.keys.iter().any(|k| k.id == id) {
                break id;
            }
        };
        let secret = URL_SAFE_NO_PAD.encode(random::<32>()?);
        self.keys.push(KeyEntry {
            id: id.clone(),
            tenant: tenant.into(),
            device: device.map(Into::into),
            name: name.map(Into::into),
            sha256: sha256_hex(secret.as_bytes()),
            created_ms: now_ms,
            revoked_ms: None,
        });
        Ok(format!("{PREFIX}{id}_{secret}"))
    }

    /// Revokes key `id` at `now_ms` (a key revoked already keeps its first time).
    pub fn revoke(&mut self, id: &str, now_ms: i64) -> Result<(), KeyError> {
        let key = self
            .keys
            .iter_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| KeyError::NoSuchKey(id.into()))?;
        key.revoked_ms.get_or_insert(now_ms);
        Ok(())
    }

    /// The credential `presented` (a whole key) stands for.
    pub fn verify(&self, presented: &str) -> Result<Credential, Refused> {
        let (id, secret) = presented
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .ok_or(Refused::Wrong)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(Refused::Wrong)?;
        let matches: bool = sha256_hex(secret.as_bytes())
            .as_bytes()
            .ct_eq(key.sha256.as_bytes())
            .into();
        if !matches {
            return Err(Refused::Wrong);
        }
        if key.revoked_ms.is_some() {
            return Err(Refused::Revoked);
        }
        Ok(Credential {
            id: key.id.clone(),
            tenant: key.tenant.clone(),
            device: key.device.clone(),
        })
    }
}

/// The keys a server checks requests against, re-read when the file changes.
#[derive(Debug)]
pub struct Keys {
    path: PathBuf,
    /// The keys, and the SHA-256 of the text they were read from.
    held: RwLock<(KeyFile, String)>,
}

impl Keys {
    /// The keys of `path`, read now; a file that cannot be read fails start-up.
    pub fn open(path: &Path) -> Result<Keys, KeyError> {
        let text = read(path)?;
        let file = KeyFile::parse(path, &text)?;
        Ok(Keys {
            path: path.into(),
            held: RwLock::new((file, sha256_hex(&text))),
        })
    }

    /// Reads the file again and takes its keys if its text changed; a file that cannot be read
    /// now leaves the keys as they were (and says why). Compared by content, not by modification
    /// time, which some file systems keep to the second.
    pub fn reload(&self) -> Result<bool, KeyError> {
        let text = read(&self.path)?;
        let digest = sha256_hex(&text);
        if self.held.read().is_ok_and(|held| held.1 == digest) {
            return Ok(false);
        }
        let file = KeyFile::parse(&self.path, &text)?;
        if let Ok(mut held) = self.held.write() {
            *held = (file, digest);
        }
        Ok(true)
    }

    /// The credential `presented` stands for, by the keys held now.
    pub fn verify(&self, presented: &str) -> Result<Credential, Refused> {
        self.held
            .read()
            .map_err(|_| Refused::Wrong)
            .and_then(|held| held.0.verify(presented))
    }

    /// Keys held that are not revoked.
    pub fn active(&self) -> usize {
        self.held.read().map_or(0, |held| {
            held.0
                .keys
                .iter()
                .filter(|k| k.revoked_ms.is_none())
                .count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_verifies_until_revoked_and_nothing_else_does() {
        let mut file = KeyFile::default();
        let key = file
            .create("acme", None, Some("gateway"), 1)
            .unwrap_or_default();
        let device = file.create("acme", Some("d1"), None, 2).unwrap_or_default();
        assert!(key.starts_with("fpk_") && key.len() > 50, "{key}");
        assert!(
            !file.keys[0].sha256.contains(&key[13..]),
            "no secret at rest"
        );
        let credential = file.verify(&key);
        assert_eq!(
            credential
                .as_ref()
                .map(|c| (c.tenant.as_str(), c.device.as_deref())),
            Ok(("acme", None))
        );
        assert_eq!(
            file.verify(&device).map(|c| c.device),
            Ok(Some("d1".to_string()))
        );
        let mut wrong = key.clone();
        wrong.pop();
        for presented in [wrong.as_str(), "fpk_", "nonsense", "fpk_00000000_x", ""] {
            assert_eq!(file.verify(presented), Err(Refused::Wrong), "{presented}");
        }
        let id = file.keys[0].id.clone();
        assert!(file.revoke(&id, 3).is_ok());
        assert_eq!(file.verify(&key), Err(Refused::Revoked));
        assert!(matches!(
            file.revoke("nope", 3),
            Err(KeyError::NoSuchKey(_))
        ));
        assert!(matches!(
            file.create("", None, None, 4),
            Err(KeyError::Empty(_))
        ));
    }

    #[test]
    fn a_server_sees_a_revocation_once_the_file_changes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("keys.json");
        let mut file = KeyFile::default();
        let key = file.create("acme", None, None, 1).unwrap_or_default();
        assert!(file.save(&path).is_ok());
        let keys = Keys::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(keys.verify(&key).is_ok());
        assert_eq!(keys.active(), 1);
        assert!(keys.reload().is_ok_and(|changed| !changed));
        let id = file.keys[0].id.clone();
        assert!(file.revoke(&id, 2).is_ok());
        assert!(file.save(&path).is_ok());
        assert!(keys.reload().is_ok_and(|changed| changed));
        assert_eq!(keys.verify(&key), Err(Refused::Revoked));
        std::fs::write(&path, "not json").unwrap_or_default();
        assert!(keys.reload().is_err(), "a broken file is reported");
        assert_eq!(
            keys.verify(&key),
            Err(Refused::Revoked),
            "and the keys stay"
        );
    }
}
