//! `fleetpulse token`: an HS256 token for the bridge, signed with `bridge.jwt_secret` and
//! written with the claim names and registered claims the bridge is configured to check, for
//! operators and tests (in production an identity provider issues them).

use clap::Args;
use serde_json::{Map, Value};
use ws_bridge::auth::{now, sign};

use crate::config::Config;

/// Flags of `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The tenant whose events the token shows (may be left out with `--role admin`).
    #[arg(long, default_value = "")]
    tenant: String,
    /// `admin` sees every tenant; any other role sees its own.
    #[arg(long, default_value = "viewer")]
    role: String,
    /// Who holds it (`sub`).
    #[arg(long, default_value = "operator")]
    subject: String,
    /// How long it is valid, seconds.
    #[arg(long, default_value_t = 3_600)]
    lifetime_s: u64,
}

/// Prints the token on stdout.
pub(crate) fn run(config: &Config, args: TokenArgs) -> anyhow::Result<()> {
    let c = &config.bridge;
    c.validate().map_err(|(key, expected)| {
        anyhow::anyhow!("configuration key `bridge.{key}`: expected {expected}")
    })?;
    anyhow::ensure!(
        !c.jwt_secret.is_empty(),
        "configuration key `bridge.jwt_secret`: expected the HS256 secret to sign with (tokens for a key set come from its identity provider)"
    );
    anyhow::ensure!(
        !args.tenant.is_empty() || args.role == "admin",
        "--tenant is needed unless --role admin"
    );
    let rules = c.token_rules();
    if let Some(max) = rules.max_lifetime_s {
        anyhow::ensure!(
            args.lifetime_s <= max,
            "--lifetime-s {} is longer than bridge.jwt_max_lifetime_s ({max}): the bridge would refuse the token",
            args.lifetime_s
        );
    }
    let at = now();
    let mut claims = Value::Object(Map::new());
    claims["sub"] = args.subject.into();
    claims["iat"] = at.into();
    claims["nbf"] = at.into();
    claims["exp"] = at.saturating_add(args.lifetime_s).into();
    if let Some(issuer) = rules.issuer {
        claims["iss"] = issuer.into();
    }
    if let Some(audience) = rules.audience {
        claims["aud"] = audience.into();
    }
    if !args.tenant.is_empty() {
        put(&mut claims, &rules.tenant_claim, args.tenant.into());
    }
    put(&mut claims, &rules.role_claim, args.role.into());
    println!("{}", sign(&claims, &c.jwt_secret)?);
    Ok(())
}

/// Sets the claim at a dotted `path`, making the objects on the way.
fn put(claims: &mut Value, path: &str, value: Value) {
    let mut at = claims;
    let mut keys = path.split('.').peekable();
    while let Some(key) = keys.next() {
        if keys.peek().is_none() {
            at[key] = value;
            return;
        }
        if !at[key].is_object() {
            at[key] = Value::Object(Map::new());
        }
        at = &mut at[key];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dotted_claim_is_written_inside_objects() {
        let mut claims = Value::Object(Map::new());
        put(&mut claims, "realm_access.role", "admin".into());
        put(&mut claims, "org", "acme".into());
        assert_eq!(
            claims,
            serde_json::json!({"realm_access": {"role": "admin"}, "org": "acme"})
        );
    }
}
