//! A dashboard's WebSocket client for the end-to-end tests: a token of one tenant, a
//! subscription to status, and the snapshot that answers it, over `ws://` or `wss://`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use ws_bridge::auth::{Claims, issue, now};

/// An open connection to the bridge.
pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to the bridge at `base` (`http://` or `https://`, then through `tls`) as a viewer of
/// `tenant` with a token signed by `secret`, subscribes to status, and returns the connection past
/// its snapshot, with the snapshot (its pages joined); or why it could not.
pub async fn subscribed(
    base: &str,
    tenant: &str,
    secret: &str,
    tls: Option<Connector>,
) -> Result<(Ws, serde_json::Value), String> {
    let token = issue(
        &Claims {
            sub: "operator".into(),
            tenant: tenant.into(),
            role: "viewer".into(),
            exp: now() + 3_600,
        },
        secret,
    )
    .map_err(|e| e.to_string())?;
    let url = format!(
        "{}/ws?token={token}",
        base.replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(url, None, false, tls)
        .await
        .map_err(|e| format!("{e:?}"))?;
    ws.send(Message::Text(
        r#"{"type":"subscribe","topics":["status"]}"#.into(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    // A snapshot comes in pages (all but the last marked `more`): one, with every device.
    let mut snapshot: Option<serde_json::Value> = None;
    loop {
        match message(&mut ws, Duration::from_secs(30)).await {
            Some(mut m) if m["type"] == "snapshot" => {
                let more = m.get("more").is_some();
                if let Some(s) = snapshot.as_mut() {
                    let devices = m["devices"].as_array_mut().map(std::mem::take);
                    if let Some(held) = s["devices"].as_array_mut() {
                        held.extend(devices.unwrap_or_default());
                    }
                } else {
                    snapshot = Some(m);
                }
                if !more {
                    return snapshot
                        .ok_or_else(|| "no snapshot".into())
                        .map(|s| (ws, s));
                }
            }
            Some(_) => {}
            None => return Err("no snapshot".into()),
        }
    }
}

/// The next message that is not a heartbeat, if one comes within `wait`.
pub async fn message(ws: &mut Ws, wait: Duration) -> Option<serde_json::Value> {
    loop {
        let m = tokio::time::timeout(wait, ws.next()).await.ok()??.ok()?;
        if let Message::Text(t) = m {
            let v: serde_json::Value = serde_json::from_str(&t).ok()?;
            if v["type"] != "heartbeat" {
                return Some(v);
            }
        }
    }
}
