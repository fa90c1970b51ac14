//! The public keys RS256 and ES256 tokens are checked against, as identity providers publish
//! them: a JSON Web Key Set from a file, or from the provider's `jwks_uri`, fetched at start-up,
//! again every `bridge.jwks_refresh_s`, and at once (at most every [`SOONEST`]) when a token
//! names a key id the set does not hold, which is how a provider's key rotation shows.

use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// The most often an unknown key id makes the set be fetched again.
pub const SOONEST: Duration = Duration::from_secs(10);
/// The largest key set taken, bytes.
const MAX_BYTES: usize = 1 << 20;

/// Why a key set cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error("the key set file {path}: {detail}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The URL did not answer with a key set.
    #[error("the key set at {url}: {detail}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// Not a JSON Web Key Set, or none of its keys can check signatures.
    #[error("not a usable JSON Web Key Set: {0}")]
    Unusable(String),
}

/// One signing key of the set.
struct Key {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Where the set comes from.
enum Source {
    /// Read once, at start-up.
    File,
    Url {
        url: String,
        client: reqwest::Client,
    },
}

/// A key set, kept current.
pub struct KeySet {
    source: Source,
    keys: RwLock<Vec<Key>>,
    /// When it was last fetched (or tried), for the refresh an unknown key id asks for.
    tried: Mutex<Option<Instant>>,
}

#[derive(Deserialize)]
struct Keys {
    keys: Vec<serde_json::Value>,
}

/// The signature algorithm a key is for: the one it names, else the usual one for its kind.
/// Secret (`oct`) keys are never taken from a key set: a public document holds no secrets, and
/// taking one would let a token signed with a public key's bytes pass as HS256.
fn algorithm(jwk: &Jwk) -> Option<Algorithm> {
    // A key naming an algorithm that signs nothing here (RSA-OAEP, an encryption key) is not
    // taken for the usual one of its kind.
    let named = match jwk.common.key_algorithm {
        Some(a) => Some(Algorithm::from_str(&a.to_string()).ok()?),
        None => None,
    };
    let algorithm = match (&jwk.algorithm, named) {
        (AlgorithmParameters::OctetKey(_), _) => return None,
        (_, Some(named)) => named,
        (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(ec), None) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        (AlgorithmParameters::OctetKeyPair(_), None) => Algorithm::EdDSA,
        _ => return None,
    };
    (!matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ))
    .then_some(algorithm)
}

/// The signing keys of a JWKS document; keys for encryption or of unknown kinds are passed over.
fn parse(document: &[u8]) -> Result<Vec<Key>, KeyError> {
    let set: Keys =
        serde_json::from_slice(document).map_err(|e| KeyError::Unusable(e.to_string()))?;
    let mut keys = Vec::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let (Some(algorithm), Ok(key)) = (algorithm(&jwk), DecodingKey::from_jwk(&jwk)) else {
            continue;
        };
        keys.push(Key {
            id: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    if keys.is_empty() {
        return Err(KeyError::Unusable(
            "no RSA or elliptic-curve signing key in it".into(),
        ));
    }
    Ok(keys)
}

impl KeySet {
    /// The keys of a file, read now.
    pub fn file(path: &std::path::Path) -> Result<Arc<KeySet>, KeyError> {
        let fail = |detail: String| KeyError::File {
            path: path.to_path_buf(),
            detail,
        };
        let document = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let keys = parse(&document).map_err(|e| fail(e.to_string()))?;
        Ok(Arc::new(KeySet {
            source: Source::File,
            keys: RwLock::new(keys),
            tried: Mutex::new(Some(Instant::now())),
        }))
    }

    /// The keys at `url`, not fetched yet ([`KeySet::refresh`], [`KeySet::keep_fresh`]).
    pub fn url(url: &str) -> Result<Arc<KeySet>, KeyError> {
        if url.starts_with("http://") {
            tracing::warn!(
                url,
                "the key set is fetched over plain HTTP: anyone on the way can sign tokens; use https:// outside a trusted network"
            );
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            // A redirect could take an https:// set to a plain one, or elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| KeyError::Fetch {
                url: url.to_string(),
                detail: e.to_string(),
            })?;
        Ok(Arc::new(KeySet {
            source: Source::Url {
                url: url.to_string(),
                client,
            },
            keys: RwLock::new(Vec::new()),
            tried: Mutex::new(None),
        }))
    }

    /// Whether it holds any key (a URL's set may not have been fetched yet).
    pub fn ready(&self) -> bool {
        !self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The key for a token's `kid` and `alg`: the key with that id, or, for a token without an
    /// id, the one key of that algorithm if there is only one.
    pub fn find(&self, id: Option<&str>, algorithm: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let mut fitting = keys.iter().filter(|k| {
            k.algorithm == algorithm && id.is_none_or(|id| k.id.as_deref() == Some(id))
        });
        let first = fitting.next()?;
        (id.is_some() || fitting.next().is_none()).then(|| first.key.clone())
    }

    /// Fetches a URL's set again, in the background, unless it was tried within [`SOONEST`]:
    /// a token named a key the set does not hold.
    pub fn missed(self: &Arc<Self>) {
        if matches!(self.source, Source::File) {
            return;
        }
        {
            let mut tried = self.tried.lock().unwrap_or_else(|e| e.into_inner());
            if tried.is_some_and(|t| t.elapsed() < SOONEST) {
                return;
            }
            *tried = Some(Instant::now());
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let set = Arc::clone(self);
            runtime.spawn(async move {
                if let Err(e) = set.refresh().await {
                    tracing::warn!(error = %e, "the key set could not be fetched again");
                }
            });
        }
    }

    /// Fetches a URL's set (a file's is read once); keeps the keys it had if that fails.
    pub async fn refresh(&self) -> Result<(), KeyError> {
        let Source::Url { url, client } = &self.source else {
            return Ok(());
        };
        *self.tried.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let fail = |detail: String| KeyError::Fetch {
            url: url.clone(),
            detail,
        };
        let mut response = client
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| fail(e.to_string()))?;
        let mut document = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
            if document.len() + chunk.len() > MAX_BYTES {
                return Err(fail(format!("larger than {MAX_BYTES} bytes")));
            }
            document.extend_from_slice(&chunk);
        }
        let keys = parse(&document).map_err(|e| fail(e.to_string()))?;
        tracing::info!(url = %url, keys = keys.len(), "key set fetched");
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    /// Fetches a URL's set every `every` (every [`SOONEST`] until a fetch works), for ever.
    pub async fn keep_fresh(self: Arc<Self>, every: Duration) {
        if matches!(self.source, Source::File) {
            return;
        }
        loop {
            let wait = match self.refresh().await {
                Ok(()) => every,
                Err(e) => {
                    tracing::warn!(error = %e, "the key set could not be fetched; tokens signed with its keys are refused until it is");
                    SOONEST
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_and_encryption_keys_are_passed_over_and_an_empty_set_refused() {
        let set = br#"{"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "alg": "HS256", "kid": "s"},
            {"kty": "EC", "crv": "P-256", "use": "enc", "kid": "e",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "p",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "RSA", "alg": "RSA-OAEP", "kid": "o", "e": "AQAB",
             "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"},
            {"kty": "made-up"}
        ]}"#;
        let keys = parse(set).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].id.as_deref(), Some("p"));
        assert_eq!(keys[0].algorithm, Algorithm::ES256);
        assert!(parse(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).is_err());
        assert!(parse(b"[]").is_err());
    }
}
