//! The librdkafka client context that supplies OAUTHBEARER tokens.

use std::error::Error;

use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::consumer::ConsumerContext;
use rdkafka::producer::{DeliveryResult, ProducerContext};

use crate::token::token;

/// A context with nothing but tokens, for clients that need no other: librdkafka's default
/// context has no way to answer a token refresh.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tokens;

impl ClientContext for Tokens {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(&self, config: Option<&str>) -> Result<OAuthToken, Box<dyn Error>> {
        oauth_token(config)
    }
}

impl ConsumerContext for Tokens {}

impl ProducerContext for Tokens {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// The answer to librdkafka's token refresh, for a context's
/// [`ClientContext::generate_oauth_token`] (with `ENABLE_REFRESH_OAUTH_TOKEN` set).
pub fn oauth_token(config: Option<&str>) -> Result<OAuthToken, Box<dyn Error>> {
    let token = token(config)?;
    Ok(OAuthToken {
        token: token.value,
        principal_name: token.principal,
        lifetime_ms: token.expires_ms,
    })
}
