//! Who is asking: a bearer token (JWT, HS256) from the `Authorization` header or the `token`
//! query parameter, checked before a connection is upgraded or a REST request is answered.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who (a user or a service).
    pub sub: String,
    /// The tenant whose events the holder may see.
    pub tenant: String,
    /// `admin` sees every tenant; anything else sees its own.
    pub role: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

impl Claims {
    /// Whether the holder may see `tenant`'s events.
    pub fn sees(&self, tenant: &str) -> bool {
        self.role == "admin" || self.tenant == tenant
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

/// Checks tokens against one secret.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// A verifier of tokens signed with `secret`.
    pub fn new(secret: &str) -> Result<Verifier, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Clocks of the issuer and the bridge may differ a little; not by minutes.
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Verifier {
            key: DecodingKey::from_secret(secret.as_bytes())
                .map_err(|e| AuthError::Invalid(e.to_string()))?,
            validation,
        })
    }

    /// The claims of `token`, if it is valid now.
    pub fn verify(&self, token: Option<&str>) -> Result<Claims, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        if claims.tenant.is_empty() && claims.role != "admin" {
            return Err(AuthError::Invalid("the token names no tenant".into()));
        }
        Ok(claims)
    }
}

/// Signs `claims` with `secret` (for the demo's printed token and for tests).
pub fn issue(claims: &Claims, secret: &str) -> Result<String, AuthError> {
    let invalid = |e: jsonwebtoken::errors::Error| AuthError::Invalid(e.to_string());
    let key = EncodingKey::from_secret(secret.as_bytes()).map_err(invalid)?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).map_err(invalid)
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
mod tests {
    use super::*;

    const SECRET: &str = "a-secret-of-some-length";

    fn claims(tenant: &str, role: &str, exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            tenant: tenant.into(),
            role: role.into(),
            exp,
        }
    }

    #[test]
    fn a_valid_token_passes_and_a_bad_one_names_why() -> Result<(), AuthError> {
        let v = Verifier::new(SECRET)?;
        let good = issue(&claims("t1", "viewer", now() + 60), SECRET)?;
        assert_eq!(v.verify(Some(&good))?.tenant, "t1");
        assert_eq!(v.verify(None), Err(AuthError::Missing));
        let forged = issue(
            &claims("t1", "admin", now() + 60),
            "another-secret-entirely",
        )?;
        assert!(matches!(
            v.verify(Some(&forged)),
            Err(AuthError::Invalid(_))
        ));
        let expired = issue(&claims("t1", "viewer", now() - 60), SECRET)?;
        assert!(matches!(
            v.verify(Some(&expired)),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            v.verify(Some("not.a.token")),
            Err(AuthError::Invalid(_))
        ));
        Ok(())
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        assert_eq!(token(Some("Bearer abc"), Some("token=def")), Some("abc"));
        assert_eq!(token(None, Some("x=1&token=def")), Some("def"));
        assert_eq!(token(Some("Basic abc"), None), None);
    }

    #[test]
    fn admins_see_every_tenant() {
        assert!(claims("t1", "admin", 0).sees("t2"));
        assert!(claims("t1", "viewer", 0).sees("t1"));
        assert!(!claims("t1", "viewer", 0).sees("t2"));
    }
}
