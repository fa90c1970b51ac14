//! One probe of one device: an HTTP GET (its status, how long the answer took, and its body for
//! the mapped fields) or a TCP connect. Each attempt is bounded by the timeout; an attempt that got
//! no answer is retried with backoff within the probe, and only the probe's result counts.

use std::time::{Duration, Instant};

use schemas::ProbeKind;
use schemas::retry::Backoff;

/// The most bytes of a response body read for its fields: a health answer is small, and a
/// device that streams megabytes must not fill the poller's memory.
pub const MAX_BODY_BYTES: usize = 65_536;

/// Why a device did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing within the timeout.
    Timeout,
    /// The connection was refused or reset.
    Refused,
    /// Anything else: no route, a TLS handshake that failed, a broken answer.
    Error,
}

impl Failure {
    /// The telemetry `error_code` of the failure.
    pub fn code(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Refused => "refused",
            Failure::Error => "unreachable",
        }
    }
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The device answered: its HTTP status (none for a TCP connect), how long the last attempt
    /// took, and the start of an HTTP body.
    Answered {
        /// HTTP status code.
        status: Option<u16>,
        /// ms.
        elapsed_ms: f64,
        /// Up to [`MAX_BODY_BYTES`] of the body.
        body: Vec<u8>,
    },
    /// It did not, on any attempt.
    Failed {
        /// Why (the last attempt's reason).
        failure: Failure,
    },
}

impl Outcome {
    /// Whether the device answered (what its circuit breaker counts; an HTTP error status is an
    /// answer, from a device that is up and failing).
    pub fn answered(&self) -> bool {
        matches!(self, Outcome::Answered { .. })
    }
}

/// Probes devices; one per poller, shared by its probe tasks.
#[derive(Debug, Clone)]
pub struct Prober {
    http: reqwest::Client,
    timeout: Duration,
    retries: u32,
}

/// Why the prober could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProberError {
    /// The HTTP client refused its settings.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The CA file cannot be read or holds no certificate.
    #[error("poller.ca_file {path}: {detail}")]
    Ca {
        /// The file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
}

impl Prober {
    /// A prober whose attempts take at most `timeout`, retrying `retries` times, trusting the
    /// CA in the PEM file `ca_file` besides the system's (devices with certificates of the
    /// fleet's own CA).
    pub fn new(
        timeout: Duration,
        retries: u32,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Prober, ProberError> {
        let mut builder = reqwest::Client::builder();
        if let Some(path) = ca_file {
            let ca = |detail: String| ProberError::Ca {
                path: path.display().to_string(),
                detail,
            };
            let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
            let certificate =
                reqwest::Certificate::from_pem(&pem).map_err(|e| ca(e.to_string()))?;
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder
            // A probe asks one URL: a redirect is the device's answer, not a second device.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("fleetpulse-poll/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Prober {
            http,
            timeout,
            retries,
        })
    }

    /// Probes `url` by `kind`.
    pub async fn probe(&self, kind: ProbeKind, url: &str) -> Outcome {
        let mut delays = Backoff::Unavailable.delays();
        let mut attempt = 0;
        loop {
            let outcome = match kind {
                ProbeKind::Http => self.http_once(url).await,
                ProbeKind::Tcp => self.tcp_once(url).await,
            };
            if outcome.answered() || attempt >= self.retries {
                return outcome;
            }
            attempt += 1;
            tokio::time::sleep(delays.next_wait()).await;
        }
    }

    async fn http_once(&self, url: &str) -> Outcome {
        let started = Instant::now();
        let failed = |e: reqwest::Error| Outcome::Failed {
            failure: if e.is_timeout() {
                Failure::Timeout
            } else if e.is_connect() && is_refusal(&e) {
                Failure::Refused
            } else {
                Failure::Error
            },
        };
        let mut response = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while body.len() < MAX_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY_BYTES - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                Err(e) => return failed(e),
            }
        }
        Outcome::Answered {
            status: Some(status),
            elapsed_ms: started.elapsed().as_secs_f64() * 1_000.0,
            body,
        }
    }

    async fn tcp_once(&self, url: &str) -> Outcome {
        let address = url
            .split_once("://")
            .map_or(url, |(_, rest)| rest)
            .trim_end_matches('/');
        let started = Instant::now();
        match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_)) => Outcome::Answered {
                status: None,
                elapsed_ms: started.elapsed().as_secs_f64() * 1_000.0,
                body: Vec::new(),
            },
            Ok(Err(e)) => Outcome::Failed {
                failure: match e.kind() {
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset => {
                        Failure::Refused
                    }
                    _ => Failure::Error,
                },
            },
            Err(_) => Outcome::Failed {
                failure: Failure::Timeout,
            },
        }
    }
}

/// Whether a connect error was a refusal (the host is there, nothing listens).
fn is_refusal(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = s.source();
    }
    false
}

/// The host a probe of `url` goes to, for the per-host cap: a gateway in front of many devices
/// is one host whatever their paths and ports.
pub fn host(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_else(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_cannot_be_used_is_named() {
        let missing = Prober::new(
            Duration::from_secs(1),
            0,
            Some(std::path::Path::new("/nonexistent/ca.pem")),
        );
        assert!(
            matches!(missing, Err(ProberError::Ca { path, .. }) if path == "/nonexistent/ca.pem")
        );
    }

    #[test]
    fn hosts_ignore_ports_paths_and_case() {
        assert_eq!(host("http://GW.local:8080/a/health"), "gw.local");
        assert_eq!(host("tcp://10.0.0.2:502"), "10.0.0.2");
        assert_eq!(host("https://[::1]:8443/"), "[::1]");
    }
}
