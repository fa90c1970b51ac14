//! `bench bridge`'s clients: each a WebSocket connection that subscribes to its tenant's status
//! and keeps the delay of every event from the produce call (stamped in the event id) to its
//! arrival.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Marks the produce time, µs since the epoch, inside the event id.
pub(super) const STAMP: &str = "\"event_id\":\"bench/";

pub(super) fn micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The delay of a message carrying a stamp, µs.
pub(super) fn delay(text: &str) -> Option<u64> {
    let at = text.find(STAMP)? + STAMP.len();
    let digits: &str = text[at..].split('"').next()?;
    Some(micros().saturating_sub(digits.parse().ok()?))
}

/// p50, p99 and max of `delays` (µs), in ms.
pub(super) fn percentiles(delays: &mut [u64]) -> (f64, f64, f64) {
    if delays.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    delays.sort_unstable();
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize] as f64 / 1e3;
    (at(0.5), at(0.99), at(1.0))
}

/// One client: connects, subscribes to its tenant's status, and records the delay of every
/// event until the bridge goes away (`stop` set, the bench stops it): no timer per message.
pub(super) async fn client(
    address: String,
    token: String,
    permit: tokio::sync::OwnedSemaphorePermit,
    subscribed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<u64>> {
    let mut permit = Some(permit);
    let url = format!("ws://{address}/ws?token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    ws.send(WsMessage::Text(
        r#"{"type":"subscribe","topics":["status"]}"#.into(),
    ))
    .await?;
    let mut delays = Vec::new();
    let mut counted = false;
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(text))) => {
                if let Some(d) = delay(&text) {
                    delays.push(d);
                } else if !counted && text.contains("\"type\":\"snapshot\"") {
                    counted = true;
                    permit.take();
                    subscribed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None if stop.load(Ordering::Relaxed) => break,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the bridge closed the connection"),
        }
    }
    Ok(delays)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_read_back_and_percentiles_pick_ranks() {
        let then = micros() - 5_000;
        let text = format!(r#"{{"type":"device_status","data":{{{STAMP}{then}"}}}}"#);
        let d = delay(&text).unwrap_or(0);
        assert!((5_000..1_000_000).contains(&d), "{d}");
        assert_eq!(delay(r#"{"type":"heartbeat"}"#), None);
        let mut v: Vec<u64> = (1..=100).map(|ms| ms * 1_000).collect();
        assert_eq!(percentiles(&mut v), (50.0, 99.0, 100.0));
    }
}
