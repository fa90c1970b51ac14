//! `fleetpulse registry`: serves the file-backed schema registry until Ctrl-C or SIGTERM.

use anyhow::Context;
use clap::Args;
use registry::Subjects;

use crate::config::{Config, Override};

/// How long a client of the registry has for its first byte, its TLS handshake and each
/// request's headers (as the bridge's `header_timeout_ms` default).
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Flags of `registry`.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Address to listen on (`registry.listen`); port 0 picks a free one.
    #[arg(long)]
    listen: Option<String>,
    /// File that keeps registrations (`registry.state_file`).
    #[arg(long)]
    state_file: Option<String>,
}

impl RegistryArgs {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        if let Some(l) = &self.listen {
            into.push(("registry.listen".into(), toml::Value::String(l.clone())));
        }
        if let Some(f) = &self.state_file {
            into.push(("registry.state_file".into(), toml::Value::String(f.clone())));
        }
    }
}

pub(crate) async fn run(config: &Config) -> anyhow::Result<()> {
    let metrics = crate::observability::metrics()?;
    let subjects = match &config.registry.state_file {
        Some(path) => Subjects::open(path)?,
        None => Subjects::builtin(),
    }
    .with_limits(config.registry.limits());
    let mut app = registry::server::router(subjects, move || metrics.render());
    let r = &config.registry;
    if let Some(token) = &r.write_token {
        app = registry::server::require_write_token(app, token);
    }
    let listener = crate::serve::Listener::bind(
        "registry",
        r.listen,
        (&r.tls_cert_file, &r.tls_key_file),
        HEADER_TIMEOUT,
    )?;
    let url = listener.url()?;
    tracing::info!(%url, "schema registry listening");
    // Scripts and tests read the address from here when they asked for port 0.
    crate::observability::announce("registry", &url);
    println!("fleetpulse registry listening on {url}");
    listener
        .serve(app, super::shutdown_signal())
        .await
        .context("the registry server failed")
}
