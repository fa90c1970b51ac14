//! The ClickHouse sink: the pipeline's derived records (window aggregates, anomalies, status
//! transitions, dead letters, last-seen times) as rows of tables analysts query.
//!
//! [`ddl`] owns the tables (`schemas/clickhouse/*.sql`) and applies them idempotently; [`rows`]
//! maps each record to its row ([`encoded`] writes the bulk of them, window aggregates, straight
//! into RowBinary); [`rollup`] keeps the hourly and daily rollups exact; [`server`] connects and tells what the server can do (its
//! version gates the crate's row validation); [`batch`] and [`sink`] consume, batch, insert and
//! commit; [`config`] is `[clickhouse]`. ClickHouse 18.16 (what Debian ships, and what the tests run) and
//! current releases are both targets: the DDL is their common subset.

pub mod batch;
pub mod config;
pub mod ddl;
pub mod encoded;
pub mod events;
pub mod rollup;
pub mod rows;
pub mod server;
pub mod sink;

pub use config::SinkConfig;
pub use server::{Connection, SinkError, Version};
