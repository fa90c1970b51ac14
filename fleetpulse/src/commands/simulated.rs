//! HTTP devices simulated on loopback, for the demo's poller and `bench poll`: one server per
//! address, answering each GET by its path, on kept-alive connections.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A device's answer to a GET of a path: its status and JSON body, or `None` for a device that
/// never answers (it holds the connection until the prober gives up).
pub(crate) type Answer = Arc<dyn Fn(&str) -> Option<(u16, String)> + Send + Sync>;

/// How long a device that never answers holds a connection: longer than any probe waits.
const HANG: Duration = Duration::from_secs(60);

/// Serves GETs on `ip`, port chosen by the system, with `answer`; returns the port.
pub(crate) async fn serve(ip: [u8; 4], answer: Answer) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind(std::net::SocketAddr::from((ip, 0)))
        .await
        .context("binding a simulated device")?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = 0;
                loop {
                    match socket.read(&mut buf[seen..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen += n,
                    }
                    while let Some(end) = buf[..seen].windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let path = head.split_whitespace().nth(1).unwrap_or("/");
                        let Some((status, body)) = answer(path) else {
                            tokio::time::sleep(HANG).await;
                            return;
                        };
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if socket.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..seen, 0);
                        seen -= end + 4;
                    }
                    if seen == buf.len() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}
