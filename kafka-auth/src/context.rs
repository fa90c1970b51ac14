//! The librdkafka client context that supplies OAUTHBEARER tokens.

use std::error::Error;
use std::ffi::{CStr, CString, c_char};

use rdkafka::bindings::{rd_kafka_oauthbearer_set_token, rd_kafka_resp_err_t};
use rdkafka::client::{Client, ClientContext, OAuthToken};
use rdkafka::consumer::ConsumerContext;
use rdkafka::producer::{DeliveryResult, ProducerContext};

use crate::token::token;

/// A context with nothing but tokens, for clients that need no other: librdkafka's default
/// context has no way to answer a token refresh.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tokens;

impl ClientContext for Tokens {
    crate::answer_token_requests!();
}

impl ConsumerContext for Tokens {}

impl ProducerContext for Tokens {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// The two items of an `impl ClientContext` that make librdkafka ask [`oauth_token`] for
/// OAUTHBEARER tokens, for contexts that implement other parts of the trait themselves.
#[macro_export]
macro_rules! answer_token_requests {
    () => {
        const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

        fn generate_oauth_token(
            &self,
            config: Option<&str>,
        ) -> Result<::rdkafka::client::OAuthToken, Box<dyn ::std::error::Error>> {
            $crate::oauth_token(config)
        }
    };
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

/// Gives `client` the token `config` names, now. For clients that are never polled:
/// rust-rdkafka's admin client never serves librdkafka's token request
/// (fede1024/rust-rdkafka#757), so without this it would wait for a token for ever. Such a
/// client is short-lived (it creates topics), so the token is not renewed.
#[allow(unsafe_code)]
pub fn set_token<C: ClientContext>(
    client: &Client<C>,
    config: Option<&str>,
) -> Result<(), Box<dyn Error>> {
    let token = token(config)?;
    let value = CString::new(token.value)?;
    let principal = CString::new(token.principal)?;
    let mut reason: [c_char; 512] = [0; 512];
    // SAFETY: the handle is `client`'s own, alive for the borrow; both strings are
    // NUL-terminated and outlive the call, which copies them; no extensions (null, 0); the
    // error buffer's length is passed with it and librdkafka NUL-terminates what it writes.
    let code = unsafe {
        rd_kafka_oauthbearer_set_token(
            client.native_ptr(),
            value.as_ptr(),
            token.expires_ms,
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            reason.as_mut_ptr(),
            reason.len(),
        )
    };
    if code == rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Ok(());
    }
    // SAFETY: the buffer is zeroed and librdkafka writes a NUL-terminated string into it.
    let reason = unsafe { CStr::from_ptr(reason.as_ptr()) };
    Err(format!("librdkafka refused the token: {}", reason.to_string_lossy()).into())
}
