//! The WebSocket bridge: what operators' dashboards see. It reads every partition of the derived
//! topics, keeps the latest status and health of every device ([`store`]), and fans the records
//! out as JSON to WebSocket clients, each of which only ever receives its own tenant's events.
//!
//! [`auth`] checks the bearer token before a connection is upgraded, with the identity
//! provider's [`keys`] for RS256/ES256; [`protocol`] is the JSON both sides speak
//! (docs/websocket-protocol.md); [`feed`] turns the derived topics into [`Event`]s; [`hub`] hands
//! each (and, batched, the devices' last-seen times) to the connections that may see and want
//! it; [`server`] serves `/ws` and the REST endpoints, within the caps of [`limits`] and the
//! rates of [`rates`]; [`config`] is `[bridge]`. [`cursor`] is where a client is in the topics,
//! so it can resume on any bridge; [`cache`] keeps Redis current when configured, under the
//! device names of [`key`].

pub mod auth;
pub mod cache;
pub mod config;
pub mod cursor;
pub mod event;
pub mod events;
pub mod feed;
pub mod hub;
pub mod key;
pub mod keys;
pub mod limits;
pub mod protocol;
pub mod rates;
pub mod server;
pub mod service;
pub mod store;

pub use config::BridgeConfig;
pub use event::Event;
