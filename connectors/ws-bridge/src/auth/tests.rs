//! Tests of [`super`]: auth.rs's unit and property tests, kept apart so the module reads
//! as the code it is.

use super::*;

const SECRET: &str = "kR7v2Qx9mT4wZ8pL3nB6yC1dF5gH0jS7aE2uV9iO4tY8rW3qX6";

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
    let v = Verifier::new(SECRET, Rules::default())?;
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

fn signed(claims: serde_json::Value) -> String {
    sign(&claims, SECRET).unwrap()
}

#[test]
fn issuer_audience_not_before_and_lifetime_are_checked_when_configured() -> Result<(), AuthError> {
    let rules = Rules {
        issuer: Some("https://idp.example".into()),
        audience: Some("fleetpulse".into()),
        max_lifetime_s: Some(3_600),
        ..Rules::default()
    };
    let v = Verifier::new(SECRET, rules)?;
    let good = serde_json::json!({
        "sub": "alice", "tenant": "t1", "role": "viewer", "exp": now() + 600,
        "iss": "https://idp.example", "aud": "fleetpulse", "iat": now(), "nbf": now(),
    });
    assert_eq!(v.verify(Some(&signed(good.clone())))?.tenant, "t1");
    let with = |key: &str, value: serde_json::Value| {
        let mut claims = good.clone();
        claims[key] = value;
        v.verify(Some(&signed(claims))).is_err()
    };
    assert!(with("iss", "https://elsewhere".into()), "another issuer");
    assert!(with("aud", "someone-else".into()), "another audience");
    assert!(with("aud", serde_json::Value::Null), "no audience");
    assert!(with("nbf", (now() + 600).into()), "not valid yet");
    assert!(with("exp", (now() + 86_400).into()), "valid for a day");
    // Without rules, an audience or a long life are not held against a token.
    let open = Verifier::new(SECRET, Rules::default())?;
    let mut long = good.clone();
    long["exp"] = (now() + 86_400).into();
    assert!(open.verify(Some(&signed(long))).is_ok());
    Ok(())
}

#[test]
fn tenant_and_role_come_from_the_claims_an_identity_provider_names() -> Result<(), AuthError> {
    let v = Verifier::new(
        SECRET,
        Rules {
            tenant_claim: "org".into(),
            role_claim: "realm_access.roles".into(),
            ..Rules::default()
        },
    )?;
    let keycloak = signed(serde_json::json!({
        "sub": "bob", "exp": now() + 60, "org": "acme",
        "realm_access": {"roles": ["offline_access", "admin"]},
    }));
    let c = v.verify(Some(&keycloak))?;
    assert_eq!((c.tenant.as_str(), c.role.as_str()), ("acme", "admin"));
    let viewer = signed(serde_json::json!({
        "sub": "eve", "exp": now() + 60, "org": "acme",
        "realm_access": {"roles": ["viewer"]},
    }));
    assert_eq!(v.verify(Some(&viewer))?.role, "viewer");
    // The default claim names are not looked at once others are configured.
    let plain = issue(&claims("t1", "admin", now() + 60), SECRET)?;
    assert!(v.verify(Some(&plain)).is_err(), "no org, no admin role");
    Ok(())
}

#[test]
fn weak_secrets_are_named_and_random_ones_pass() {
    assert!(weakness("a-secret-of-some-length").is_some(), "short");
    assert!(weakness(&"a".repeat(64)).is_some(), "one letter");
    assert!(weakness(&"ab".repeat(40)).is_some(), "two letters");
    assert!(
        weakness(&"0123456789abcdef".repeat(4)).is_some(),
        "a pattern"
    );
    assert!(weakness("9f2c4e0b7a1d3f5e8c6b2a4d0f1e3c5b7a9d8e6f4c2b0a1d3e5f7c9b8a6d4e2f").is_none());
    assert!(weakness("q8Zr3K0vXw2LpN7bT5yH1mJ4cF6gD9sA0eU3iO8kR2t").is_none());
    assert!(weakness(SECRET).is_none());
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
