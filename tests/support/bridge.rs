//! What the bridge's end-to-end tests share: tokens, derived records, a producer of them, a
//! bridge process on their topics, and a WebSocket client.

use std::time::Duration;

use futures_util::SinkExt;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use schemas::{
    Anomaly, AnomalyKind, AnomalyState, Codec, DeviceStatus, LastSeen, Record, Severity,
    StatusTransition, TransitionReason, WindowAggregate,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use ws_bridge::auth::{Claims, issue};

use super::ws::{Ws, message};
use super::{Running, derived_topics, fleetpulse, http_text, spawn_serving};

pub const SECRET: &str = "Bt7rK2vQ9mW4zX1nP6yL3cH8fJ0dG5sA7eU2iO9kR4tV1wZ6";

pub fn token(tenant: &str, role: &str, exp: u64, secret: &str) -> String {
    issue(
        &Claims {
            sub: format!("{tenant}-user"),
            tenant: tenant.into(),
            role: role.into(),
            exp,
        },
        secret,
    )
    .unwrap()
}

/// An operator's admin token (`ops`), signed with `secret`, valid for an hour.
pub fn admin_token(secret: &str) -> String {
    issue(
        &Claims {
            sub: "ops".into(),
            tenant: "ops".into(),
            role: "admin".into(),
            exp: ws_bridge::auth::now() + 3_600,
        },
        secret,
    )
    .unwrap()
}

pub fn status(tenant: &str, device: &str, status: DeviceStatus, ts: i64) -> StatusTransition {
    StatusTransition {
        tenant_id: tenant.into(),
        device_id: device.into(),
        device_class: Some("sensor".into()),
        status,
        previous: None,
        ts,
        last_seen: ts,
        reason: TransitionReason::FirstSeen,
        time_in_previous_ms: None,
        event_id: format!("status/{tenant}/{device}/{ts}"),
    }
}

pub fn aggregate(tenant: &str, device: &str, start: i64) -> WindowAggregate {
    WindowAggregate {
        tenant_id: tenant.into(),
        device_id: device.into(),
        device_class: Some("sensor".into()),
        window_start: start,
        window_end: start + 60_000,
        count: 6,
        errors: 1,
        error_rate: 1.0 / 6.0,
        rt_min: Some(10.0),
        rt_mean: Some(20.0),
        rt_p50: Some(20.0),
        rt_p95: Some(30.0),
        rt_p99: Some(31.0),
        rt_max: Some(32.0),
        battery_last: None,
        battery_min: None,
        signal_mean: None,
        health_score: 80.0,
        event_id: format!("agg/{tenant}/{device}/{start}"),
        clock_offset_ms: None,
    }
}

pub fn anomaly(tenant: &str, device: &str, ts: i64) -> Anomaly {
    Anomaly {
        tenant_id: tenant.into(),
        device_id: device.into(),
        device_class: Some("sensor".into()),
        kind: AnomalyKind::ErrorRateHigh,
        state: AnomalyState::Firing,
        severity: Severity::Warning,
        observed: 0.5,
        threshold: 0.1,
        baseline: None,
        ts,
        message: "error rate 50 %".into(),
        event_id: format!("anomaly/{tenant}/{device}/{ts}"),
    }
}

pub fn last_seen(tenant: &str, device: &str, class: Option<&str>, at: i64) -> LastSeen {
    LastSeen {
        tenant_id: tenant.into(),
        device_id: device.into(),
        device_class: class.map(str::to_string),
        last_seen: at,
        event_id: format!("lastseen/{tenant}/{device}/{at}"),
    }
}

pub struct Producing {
    producer: BaseProducer,
    codec: Codec,
    prefix: String,
}

impl Producing {
    pub fn new(brokers: &str, prefix: &str) -> Producing {
        Producing {
            producer: ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .create()
                .unwrap(),
            codec: Codec::builtin(),
            prefix: prefix.into(),
        }
    }

    pub fn send<R: Record>(&self, kind: &str, record: &R) {
        let value = self.codec.encode(record).unwrap();
        let topic = format!("{}-{kind}", self.prefix);
        let key = record.key();
        let mut r = BaseRecord::to(&topic).key(key.as_ref()).payload(&value);
        loop {
            match self.producer.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    self.producer.poll(Duration::from_millis(10));
                }
            }
        }
        self.producer.poll(Duration::ZERO);
    }

    pub fn flush(&self) {
        self.producer.flush(Duration::from_secs(30)).unwrap();
    }
}

/// Connects to `/ws` with `token` in the header; the HTTP status on refusal.
pub async fn connect(http: &str, token: Option<&str>) -> Result<Ws, u16> {
    let url = format!("{}/ws", http.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    if let Some(t) = token {
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// The next server message that is not a heartbeat.
pub async fn next(ws: &mut Ws) -> serde_json::Value {
    message(ws, Duration::from_secs(30))
        .await
        .expect("a JSON message within 30 s on an open connection")
}

pub async fn say(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

/// Starts a bridge on the derived topics of `prefix` and waits until it reads them.
pub fn bridge(brokers: &str, prefix: &str, extra: &[&str]) -> (Running, String) {
    let (child, base) = spawn_serving(
        fleetpulse()
            .args(["bridge", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .args(["--set", &format!("bridge.jwt_secret={SECRET}")])
            .args(["--set", "bridge.heartbeat_ms=1000"])
            // The fixtures are from 2023: kept for ten years, not let go as silent.
            .args(["--set", "bridge.device_retention_ms=315360000000"])
            .args(derived_topics(prefix))
            .args(extra),
    );
    let running = Running(child);
    assert!(
        testkit::wait_for(Duration::from_secs(30), || {
            http_text(&base, "GET", "/readyz", None).0 == 200
        }),
        "the bridge reads its topics"
    );
    (running, base)
}

/// Milliseconds since the epoch.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A Redis command's answer, as `redis-cli` prints it.
pub fn redis_cli(url: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-u", url])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
