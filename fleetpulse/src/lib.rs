//! The `fleetpulse` command: configuration, logging and metrics set-up, and one module per
//! subcommand, each wiring a library crate (`generator`, `registry`, ...) to its configuration.

pub mod cli;
mod commands;
pub mod config;
mod kafka;
mod observability;
mod serve;
