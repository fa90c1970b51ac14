//! Serving a router over plain HTTP or, when the configuration names a certificate, over TLS
//! (HTTP/1.1 and HTTP/2 by ALPN, the system's OpenSSL): the bridge and the registry, for
//! deployments without a TLS proxy, and facing strangers: a connection that sends nothing, or
//! does not finish its request's headers, within the header timeout is closed (an idle
//! keep-alive connection too), so slow clients cannot hold sockets and memory for ever.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use axum_server::accept::Accept;
use axum_server::tls_openssl::{OpenSSLAcceptor, OpenSSLConfig};
use hyper_util::rt::TokioTimer;
use tokio::net::TcpStream;

/// A bound listener and how it serves.
pub(crate) struct Listener {
    listener: std::net::TcpListener,
    tls: Option<OpenSSLConfig>,
    header_timeout: Duration,
}

impl Listener {
    /// Binds `address` and loads the certificate and key, if given; errors name the keys of
    /// the configuration's `section` (`listen`, `tls_cert_file`, `tls_key_file`). A client has
    /// `header_timeout` for its first byte, its TLS handshake and each request's headers.
    pub(crate) fn bind(
        section: &str,
        address: SocketAddr,
        certificate: (&Option<PathBuf>, &Option<PathBuf>),
        header_timeout: Duration,
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
        Ok(Listener {
            tls,
            header_timeout,
            ..Listener::bind_plain(&format!("{section}.listen"), address)?
        })
    }

    /// Binds `address` for plain HTTP (a private listener: `/metrics`); errors name `key`.
    pub(crate) fn bind_plain(key: &str, address: SocketAddr) -> anyhow::Result<Listener> {
        let listener = std::net::TcpListener::bind(address)
            .with_context(|| format!("cannot listen on {address} ({key})"))?;
        listener.set_nonblocking(true)?;
        Ok(Listener {
            listener,
            tls: None,
            header_timeout: Duration::from_secs(10),
        })
    }

    /// The address clients use, `http://` or `https://`.
    pub(crate) fn url(&self) -> anyhow::Result<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.listener.local_addr()?))
    }

    /// Serves `app` until `shutdown` completes, then waits up to 5 s for requests in hand.
    /// Handlers can take the client's address (`ConnectInfo<SocketAddr>`).
    pub(crate) async fn serve(
        self,
        app: axum::Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopper.graceful_shutdown(Some(Duration::from_secs(5)));
        });
        let mut server = axum_server::from_tcp(self.listener)?.handle(handle);
        // hyper applies no header timeout without a timer; with one, it also closes a
        // keep-alive connection that starts no next request in time.
        server
            .http_builder()
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        server
            .http_builder()
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(self.header_timeout);
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let first_byte = FirstByte(self.header_timeout);
        match self.tls {
            Some(tls) => {
                server
                    .acceptor(
                        OpenSSLAcceptor::new(tls)
                            .handshake_timeout(self.header_timeout)
                            .acceptor(first_byte),
                    )
                    .serve(app)
                    .await?;
            }
            None => server.acceptor(first_byte).serve(app).await?,
        }
        Ok(())
    }
}

/// Hands a connection on once it has sent something: hyper's header timeout starts only when it
/// reads a request, and a client that connects and stays silent would otherwise keep its socket
/// for ever.
#[derive(Clone, Copy)]
struct FirstByte(Duration);

impl<S: Send + 'static> Accept<TcpStream, S> for FirstByte {
    type Stream = TcpStream;
    type Service = S;
    type Future = Pin<Box<dyn Future<Output = io::Result<(TcpStream, S)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let wait = self.0;
        Box::pin(async move {
            // peek waits for a byte (readiness alone can be spurious) and leaves it for hyper.
            match tokio::time::timeout(wait, stream.peek(&mut [0u8; 1])).await {
                Ok(Ok(_)) => Ok((stream, service)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent nothing in time",
                )),
            }
        })
    }
}
