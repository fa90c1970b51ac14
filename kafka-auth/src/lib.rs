//! SASL OAUTHBEARER for every Kafka client of fleetpulse.
//!
//! librdkafka asks the application for a token and hands it the `sasl.oauthbearer.config`
//! property verbatim; [`token`] reads a token from where that property says (a file re-read at
//! each refresh, as Kubernetes and Docker mount rotating tokens, or the value itself), and
//! [`Tokens`] is the client context that answers librdkafka with it. Clients with a context of
//! their own put [`answer_token_requests!`] in its `impl ClientContext`; the admin client, which
//! rust-rdkafka never polls for it, is handed one with [`set_token`].
//!
//! librdkafka asks when the client is created and again at 80 % of the token's lifetime, and the
//! question is answered when the client is polled: a client must be polled (even with a zero
//! timeout) before it asks the brokers anything, or it waits for a token that never comes.

mod context;
mod token;

pub use context::{Tokens, oauth_token, set_token};
pub use token::{Token, TokenError, check, refreshes_token, token};
