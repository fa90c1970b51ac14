//! Who is asking: a bearer token (JWT) from the `Authorization` header or the `token` query
//! parameter, checked before a connection is upgraded or a REST request is answered: signature
//! (HS256 with the shared secret, or RS256/ES256 with an identity provider's [`KeySet`]),
//! expiry, `nbf`, and, when configured, issuer, audience and the longest lifetime a token may
//! have; the tenant and role are read from the claims an identity provider uses.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::KeySet;

/// What a token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who (a user or a service).
    pub sub: String,
    /// The tenant whose events the holder may see.
    pub tenant: String,
    /// `admin` sees every tenant; anything else sees its own.
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// A holder's role, as the token names it: `admin` sees every tenant, any other role (`viewer`,
/// `operator`, whatever the identity provider calls it) its own tenant only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Role {
    /// Sees every tenant.
    Admin,
    /// Sees its own tenant, under the name the token gives the role.
    Tenant(String),
}

impl Role {
    /// The role's name, as in the token.
    pub fn as_str(&self) -> &str {
        match self {
            Role::Admin => "admin",
            Role::Tenant(name) => name,
        }
    }
}

impl From<String> for Role {
    fn from(name: String) -> Role {
        if name == "admin" {
            Role::Admin
        } else {
            Role::Tenant(name)
        }
    }
}

impl From<&str> for Role {
    fn from(name: &str) -> Role {
        Role::from(name.to_string())
    }
}

impl From<Role> for String {
    fn from(role: Role) -> String {
        role.as_str().to_string()
    }
}

impl PartialEq<&str> for Role {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Claims {
    /// Whether the holder sees every tenant.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether the holder may see `tenant`'s events.
    pub fn sees(&self, tenant: &str) -> bool {
        self.is_admin() || self.tenant == tenant
    }
}

/// Why a request was refused (all of them answer 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token in the header or the query.
    #[error("a bearer token is required")]
    Missing,
    /// The token is expired, badly signed or malformed.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// What a token must say besides a valid signature, `exp` and `sub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The `iss` it must carry, if any.
    pub issuer: Option<String>,
    /// An `aud` it must carry, if any.
    pub audience: Option<String>,
    /// The longest a token may be valid for, seconds: its `exp` no further than this from now
    /// (and from its `iat`).
    pub max_lifetime_s: Option<u64>,
    /// The claim that names the tenant (a dotted path reaches into objects).
    pub tenant_claim: String,
    /// The claim that names the role: a string, or an array of roles (`admin` among them makes
    /// an admin).
    pub role_claim: String,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            issuer: None,
            audience: None,
            max_lifetime_s: None,
            tenant_claim: "tenant".into(),
            role_claim: "role".into(),
        }
    }
}

/// Clocks of the issuer and the bridge may differ a little; not by minutes.
const LEEWAY_S: u64 = 5;

/// Checks tokens against a secret, a key set, or both, and the [`Rules`].
#[derive(Clone)]
pub struct Verifier {
    /// HS256's key; `None` when no secret is configured.
    secret: Option<DecodingKey>,
    keys: Option<Arc<KeySet>>,
    validation: Validation,
    rules: Rules,
}

impl Verifier {
    /// A verifier of tokens signed with `secret` (none when empty), under `rules`.
    pub fn new(secret: &str, rules: Rules) -> Result<Verifier, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &rules.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &rules.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // A token made for several services may name them; without an audience of ours
            // there is nothing to check it against.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let secret = match secret {
            "" => None,
            secret => Some(
                DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| AuthError::Invalid(e.to_string()))?,
            ),
        };
        Ok(Verifier {
            secret,
            keys: None,
            validation,
            rules,
        })
    }

    /// Also accepts RS256 and ES256 tokens signed with the keys of `keys`.
    pub fn with_keys(self, keys: Arc<KeySet>) -> Verifier {
        Verifier {
            keys: Some(keys),
            ..self
        }
    }

    /// Whether a key set, if there is one, holds keys (a URL's may not have been fetched yet).
    pub fn ready(&self) -> bool {
        self.keys.as_ref().is_none_or(|k| k.ready())
    }

    /// The key to check `token`'s signature with, and its algorithm: the token's header says
    /// which, and a key is only ever used with its own algorithm.
    fn key_of(&self, token: &str) -> Result<(DecodingKey, Algorithm), AuthError> {
        let invalid = |why: &str| AuthError::Invalid(why.to_string());
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        match header.alg {
            Algorithm::HS256 => self
                .secret
                .clone()
                .map(|k| (k, Algorithm::HS256))
                .ok_or_else(|| invalid("HS256 tokens are not accepted here")),
            alg @ (Algorithm::HS384 | Algorithm::HS512) => Err(AuthError::Invalid(format!(
                "{alg:?} tokens are not accepted here"
            ))),
            alg => {
                let keys = self
                    .keys
                    .as_ref()
                    .ok_or_else(|| invalid("only HS256 tokens are accepted here"))?;
                match keys.find(header.kid.as_deref(), alg) {
                    Some(key) => Ok((key, alg)),
                    None => {
                        keys.missed();
                        Err(invalid(
                            "no key of the key set fits the token's kid and alg",
                        ))
                    }
                }
            }
        }
    }

    /// The claims of `token`, if it is valid now.
    pub fn verify(&self, token: Option<&str>) -> Result<Claims, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let (key, algorithm) = self.key_of(token)?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![algorithm];
        let all = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let invalid = |why: &str| AuthError::Invalid(why.to_string());
        let exp = all["exp"]
            .as_u64()
            .ok_or_else(|| invalid("exp is not a number"))?;
        if let Some(max) = self.rules.max_lifetime_s {
            let from = all["iat"].as_u64().unwrap_or(0).max(now());
            if exp > from.saturating_add(max).saturating_add(LEEWAY_S) {
                return Err(invalid(
                    "the token is valid for longer than this bridge allows",
                ));
            }
        }
        let claims = Claims {
            sub: all["sub"].as_str().unwrap_or_default().to_string(),
            tenant: claim(&all, &self.rules.tenant_claim)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            role: role(claim(&all, &self.rules.role_claim)).into(),
            exp,
        };
        if claims.tenant.is_empty() && !claims.is_admin() {
            return Err(invalid("the token names no tenant"));
        }
        Ok(claims)
    }
}

/// The claim at a dotted `path` (`realm_access.roles`).
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(claims, |value, key| value.get(key))
}

/// A role claim as one role: a string as it is, an array as `admin` if it holds it, else its
/// first string.
fn role(claim: Option<&Value>) -> String {
    match claim {
        Some(Value::String(role)) => role.clone(),
        Some(Value::Array(roles)) => {
            let mut names = roles.iter().filter_map(Value::as_str);
            if roles.iter().any(|r| r == "admin") {
                "admin".into()
            } else {
                names.next().unwrap_or_default().to_string()
            }
        }
        _ => String::new(),
    }
}

/// Signs `claims` with `secret` (for the demo's printed token and for tests).
pub fn issue(claims: &Claims, secret: &str) -> Result<String, AuthError> {
    let claims = serde_json::to_value(claims).map_err(|e| AuthError::Invalid(e.to_string()))?;
    sign(&claims, secret)
}

/// Signs any claims with `secret` (`fleetpulse token`, which writes the configured claim
/// names and registered claims).
pub fn sign(claims: &Value, secret: &str) -> Result<String, AuthError> {
    let invalid = |e: jsonwebtoken::errors::Error| AuthError::Invalid(e.to_string());
    let key = EncodingKey::from_secret(secret.as_bytes()).map_err(invalid)?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).map_err(invalid)
}

/// Why `secret` is too weak to sign tokens with, if it is: fewer than 256 bits as written (each
/// character counted at the size of the smallest usual alphabet that holds them all: hex,
/// base64, printable ASCII, bytes), little variety (the characters' own entropy under 128 bits),
/// or a repeated pattern. Hand-written because password estimators (zxcvbn) cap a character at
/// ten guesses and would refuse a random 256-bit hex key.
pub fn weakness(secret: &str) -> Option<String> {
    let chars: Vec<char> = secret.chars().collect();
    let n = chars.len();
    let hex = chars.iter().all(char::is_ascii_hexdigit);
    let base64 = chars
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || "+/=-_".contains(*c));
    let printable = chars.iter().all(|c| c.is_ascii_graphic() || *c == ' ');
    let per_char = if hex {
        4.0
    } else if base64 {
        6.0
    } else if printable {
        95f64.log2()
    } else {
        8.0
    };
    let nominal = n as f64 * per_char;
    if nominal < 256.0 {
        return Some(format!(
            "{} bits as written; at least 256 (64 random hex digits, or 43 random base64 characters: openssl rand -hex 32)",
            nominal.floor()
        ));
    }
    let mut counts = std::collections::HashMap::new();
    for c in &chars {
        *counts.entry(*c).or_insert(0usize) += 1;
    }
    let spread: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n as f64;
            -p * p.log2()
        })
        .sum::<f64>()
        * n as f64;
    let repeats = (1..=n / 2).any(|period| chars[period..] == chars[..n - period]);
    if spread < 128.0 || repeats {
        return Some("too repetitive to be a random secret".into());
    }
    None
}

/// The token of a request: `Authorization: Bearer ...`, else the `token` query parameter.
pub fn token<'a>(authorization: Option<&'a str>, query: Option<&'a str>) -> Option<&'a str> {
    authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .or_else(|| {
            query?
                .split('&')
                .find_map(|pair| pair.strip_prefix("token="))
        })
}

/// Seconds since the epoch, for expiry times.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
