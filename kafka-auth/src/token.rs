//! Where an OAUTHBEARER token comes from, and what librdkafka must know of it (its expiry and a
//! principal to log).
//!
//! `sasl.oauthbearer.config` holds space-separated `key=value` pairs, the form librdkafka's own
//! unsecured-token builder reads:
//!
//! - `token_file=PATH`: the token is the file's content, read again at every refresh;
//! - `token=TOKEN`: the token itself (set from the environment or `kafka.property_files`, both
//!   kept off command lines and redacted by `fleetpulse config`);
//! - `principal=NAME`: the name librdkafka logs, by default the JWT's `sub`;
//! - `lifetime_s=N`: for a token that is not a JWT with an `exp` claim, how long it is taken to
//!   last (default 900 s), so a rotated token file is read again after 80 % of it.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// The property librdkafka passes to the token refresh.
const CONFIG: &str = "sasl.oauthbearer.config";

/// How long a token without an expiry of its own is taken to last.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(900);

/// A token for librdkafka.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The token as the broker receives it.
    pub value: String,
    /// The name librdkafka logs for it.
    pub principal: String,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires_ms: i64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("principal", &self.principal)
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
}

/// Why no token could be given. No variant carries the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The configuration names no token.
    #[error(
        "kafka.properties.\"{CONFIG}\" names no token: set it to \"token_file=PATH\" (or \"token=TOKEN\" from the environment or kafka.property_files)"
    )]
    NoSource,
    /// A key fleetpulse does not know (a typo, or one of librdkafka's unsecured-token keys).
    #[error(
        "kafka.properties.\"{CONFIG}\": unknown key {0:?} (known: token_file, token, principal, lifetime_s)"
    )]
    UnknownKey(String),
    /// `lifetime_s` is not a positive number of seconds.
    #[error("kafka.properties.\"{CONFIG}\": lifetime_s must be a positive number of seconds")]
    Lifetime,
    /// The token file cannot be read.
    #[error("cannot read the Kafka OAUTHBEARER token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token is empty.
    #[error("the Kafka OAUTHBEARER token{} is empty", from(.0))]
    Empty(Option<PathBuf>),
    /// The token is a JWT that has already expired.
    #[error("the Kafka OAUTHBEARER token{} expired {seconds} s ago", from(path))]
    Expired {
        /// The file it is in, if any.
        path: Option<PathBuf>,
        /// How long ago.
        seconds: i64,
    },
    /// librdkafka's own unsecured tokens cannot be renewed through fleetpulse's refresh.
    #[error(
        "kafka.properties.\"enable.sasl.oauthbearer.unsecure.jwt\" is not supported: fleetpulse renews OAUTHBEARER tokens itself; give one with \"{CONFIG}\" = \"token_file=PATH\""
    )]
    Unsecured,
}

fn from(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

/// Whether librdkafka will ask this project's contexts for tokens with these client properties:
/// SASL OAUTHBEARER, other than librdkafka's own OIDC client.
pub fn refreshes_token<K: AsRef<str>, V: AsRef<str>>(
    properties: impl IntoIterator<Item = (K, V)>,
) -> bool {
    let mut oauthbearer = false;
    let mut oidc = false;
    for (k, v) in properties {
        match k.as_ref() {
            "sasl.mechanism" | "sasl.mechanisms" => {
                oauthbearer = v.as_ref().trim().eq_ignore_ascii_case("OAUTHBEARER");
            }
            "sasl.oauthbearer.method" => oidc = v.as_ref().trim().eq_ignore_ascii_case("oidc"),
            _ => {}
        }
    }
    oauthbearer && !oidc
}

/// Checks at start-up that client properties which make librdkafka ask for tokens name one that
/// can be read, so a missing file or an expired token is said before any client waits for it.
pub fn check<K: AsRef<str>, V: AsRef<str>>(
    properties: impl IntoIterator<Item = (K, V)>,
) -> Result<(), TokenError> {
    let properties: Vec<(K, V)> = properties.into_iter().collect();
    let get = |key: &str| {
        properties
            .iter()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v.as_ref())
    };
    if !refreshes_token(properties.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))) {
        return Ok(());
    }
    if get("enable.sasl.oauthbearer.unsecure.jwt").is_some_and(|v| v.trim() == "true") {
        return Err(TokenError::Unsecured);
    }
    token(get(CONFIG)).map(|_| ())
}

/// The token `config` (the value of `sasl.oauthbearer.config`) names, read now.
pub fn token(config: Option<&str>) -> Result<Token, TokenError> {
    let mut file = None;
    let mut inline = None;
    let mut principal = None;
    let mut lifetime = DEFAULT_LIFETIME;
    for pair in config.unwrap_or_default().split_whitespace() {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "token_file" => file = Some(PathBuf::from(value)),
            "token" => inline = Some(value.to_string()),
            "principal" => principal = Some(value.to_string()),
            "lifetime_s" => {
                lifetime = value
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs)
                    .ok_or(TokenError::Lifetime)?;
            }
            other => return Err(TokenError::UnknownKey(other.to_string())),
        }
    }
    let value = match (&file, inline) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|source| TokenError::Read {
                path: path.clone(),
                source,
            })?
            .trim()
            .to_string(),
        (None, Some(value)) => value,
        (None, None) => return Err(TokenError::NoSource),
    };
    if value.is_empty() {
        return Err(TokenError::Empty(file));
    }
    let claims = claims(&value);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let expires_ms = match claims.as_ref().and_then(|c| c.exp) {
        // A fraction of a second is allowed by the JWT format and meaningless here.
        #[allow(clippy::cast_possible_truncation)]
        Some(exp) => (exp * 1000.0) as i64,
        None => now_ms.saturating_add(i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX)),
    };
    if expires_ms <= now_ms {
        return Err(TokenError::Expired {
            path: file,
            seconds: (now_ms - expires_ms) / 1000,
        });
    }
    let principal = principal
        .or_else(|| claims.and_then(|c| c.sub))
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "fleetpulse".to_string());
    Ok(Token {
        value,
        principal,
        expires_ms,
    })
}

/// What a JWT says of itself.
#[derive(serde::Deserialize)]
struct Claims {
    exp: Option<f64>,
    sub: Option<String>,
}

/// The claims of `token` if it is a JWT (three dot-separated parts, the second base64url JSON),
/// `None` for an opaque token.
fn claims(token: &str) -> Option<Claims> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    // JWTs leave the padding out; some issuers put it in.
    let engine = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let json = engine.decode(payload).ok()?;
    serde_json::from_slice(&json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &serde_json::Value) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            engine.encode(br#"{"alg":"none"}"#),
            engine.encode(claims.to_string())
        )
    }

    fn now_s() -> i64 {
        i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
    }

    #[test]
    fn a_jwt_gives_its_expiry_and_subject() {
        let exp = now_s() + 600;
        let value = jwt(&serde_json::json!({"sub": "fleet", "exp": exp}));
        let token = token(Some(&format!("token={value}"))).unwrap();
        assert_eq!(token.value, value);
        assert_eq!(token.principal, "fleet");
        assert_eq!(token.expires_ms, exp * 1000);
    }

    #[test]
    fn an_opaque_token_lasts_the_configured_lifetime() {
        let before = now_s() * 1000;
        let token = token(Some("token=abc lifetime_s=60 principal=svc")).unwrap();
        assert_eq!(token.principal, "svc");
        assert!(token.expires_ms >= before + 60_000 && token.expires_ms <= before + 62_000);
        let default = super::token(Some("token=abc")).unwrap();
        assert!(default.expires_ms >= before + 900_000);
        assert_eq!(default.principal, "fleetpulse");
    }

    #[test]
    fn a_token_file_is_read_again_at_every_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let config = format!("token_file={}", path.display());
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(token(Some(&config)).unwrap().value, "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(token(Some(&config)).unwrap().value, "second");
    }

    #[test]
    fn what_cannot_give_a_token_says_why_without_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = token(Some(&format!("token_file={}", missing.display()))).unwrap_err();
        assert!(matches!(err, TokenError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = token(Some(&format!("token_file={}", empty.display()))).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let expired = jwt(&serde_json::json!({"sub": "fleet", "exp": now_s() - 100}));
        let err = token(Some(&format!("token={expired}"))).unwrap_err();
        assert!(
            matches!(err, TokenError::Expired { path: None, seconds } if seconds >= 99),
            "{err}"
        );
        assert!(!err.to_string().contains(&expired));
        assert!(matches!(token(None), Err(TokenError::NoSource)));
        assert!(matches!(
            token(Some("principal=admin")),
            Err(TokenError::NoSource)
        ));
        assert!(matches!(
            token(Some("token=x scope=all")),
            Err(TokenError::UnknownKey(k)) if k == "scope"
        ));
        assert!(matches!(
            token(Some("token=x lifetime_s=0")),
            Err(TokenError::Lifetime)
        ));
    }

    #[test]
    fn only_oauthbearer_without_oidc_asks_for_tokens() {
        let scram = [("sasl.mechanism", "SCRAM-SHA-256")];
        assert!(!refreshes_token(scram));
        assert!(check(scram).is_ok());
        let bearer = [("sasl.mechanisms", "OAUTHBEARER")];
        assert!(refreshes_token(bearer));
        assert!(matches!(check(bearer), Err(TokenError::NoSource)));
        let oidc = [
            ("sasl.mechanism", "OAUTHBEARER"),
            ("sasl.oauthbearer.method", "oidc"),
        ];
        assert!(!refreshes_token(oidc));
        let unsecured = [
            ("sasl.mechanism", "OAUTHBEARER"),
            ("enable.sasl.oauthbearer.unsecure.jwt", "true"),
            ("sasl.oauthbearer.config", "principal=admin"),
        ];
        assert!(matches!(check(unsecured), Err(TokenError::Unsecured)));
        let given = [
            ("sasl.mechanism", "OAUTHBEARER"),
            ("sasl.oauthbearer.config", "token=abc"),
        ];
        assert!(check(given).is_ok());
    }
}
