//! Serving a router over plain HTTP or, when the configuration names a certificate, over TLS
//! (HTTP/1.1 and HTTP/2 by ALPN, the system's OpenSSL): the bridge and the registry, for
//! deployments without a TLS proxy.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use axum_server::tls_openssl::{OpenSSLAcceptor, OpenSSLConfig};

/// A bound listener and how it serves.
pub(crate) struct Listener {
    listener: std::net::TcpListener,
    tls: Option<OpenSSLConfig>,
}

impl Listener {
    /// Binds `address` and loads the certificate and key, if given; errors name the keys of
    /// the configuration's `section` (`listen`, `tls_cert_file`, `tls_key_file`).
    pub(crate) fn bind(
        section: &str,
        address: SocketAddr,
        certificate: (&Option<PathBuf>, &Option<PathBuf>),
    ) -> anyhow::Result<Listener> {
        let tls = match certificate {
            (Some(cert), Some(private)) => Some(
                OpenSSLConfig::from_pem_file(cert, private).with_context(|| {
                    format!(
                        "{section}.tls_cert_file {} and {section}.tls_key_file {} cannot be served",
                        cert.display(),
                        private.display()
                    )
                })?,
            ),
            (None, None) => None,
            _ => anyhow::bail!(
                "configuration key `{section}.tls_cert_file`: expected both {section}.tls_cert_file and {section}.tls_key_file, or neither"
            ),
        };
        let listener = std::net::TcpListener::bind(address)
            .with_context(|| format!("cannot listen on {address} ({section}.listen)"))?;
        listener.set_nonblocking(true)?;
        Ok(Listener { listener, tls })
    }

    /// The address clients use, `http://` or `https://`.
    pub(crate) fn url(&self) -> anyhow::Result<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.listener.local_addr()?))
    }

    /// Serves `app` until `shutdown` completes.
    pub(crate) async fn serve(
        self,
        app: axum::Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        match self.tls {
            Some(tls) => {
                let handle = axum_server::Handle::new();
                let stopper = handle.clone();
                tokio::spawn(async move {
                    shutdown.await;
                    // As axum's graceful shutdown does for plain HTTP, with a limit.
                    stopper.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
                });
                axum_server::from_tcp(self.listener)?
                    .acceptor(OpenSSLAcceptor::new(tls))
                    .handle(handle)
                    .serve(app.into_make_service())
                    .await?;
            }
            None => {
                axum::serve(tokio::net::TcpListener::from_std(self.listener)?, app)
                    .with_graceful_shutdown(shutdown)
                    .await?;
            }
        }
        Ok(())
    }
}
