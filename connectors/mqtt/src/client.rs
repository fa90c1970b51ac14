//! The MQTT client of either protocol version (`mqtt.protocol`: 3.1.1 or 5) as the gateway uses
//! it: a persistent session with acknowledgements by hand, subscriptions at QoS 1, what happens
//! on the connection, and a message's acknowledgement. rumqttc has a module per version with
//! types of their own; this is the one place that tells them apart.

use std::borrow::Cow;
use std::time::Duration;

use rumqttc::v5;
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};

use crate::config::MqttConfig;

/// The MQTT protocol version the gateway speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// MQTT 3.1.1, which every broker speaks.
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5: the session's expiry and the gateway's receive maximum are the broker's to keep.
    #[serde(rename = "5")]
    V5,
}

/// Messages the broker may send before the gateway acknowledged them, under MQTT 5 (3.1.1 has no
/// such limit; the broker's own `max_inflight_messages` holds there).
const RECEIVE_MAXIMUM: u16 = 1_000;

/// Why the connection cannot be made from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    /// The key within `[mqtt]`.
    pub key: &'static str,
    /// Why.
    pub why: String,
}

/// The client side: subscribes and acknowledges.
#[derive(Clone)]
pub enum Client {
    /// MQTT 3.1.1.
    V311(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(v5::AsyncClient),
}

/// The connection: polled, it sends what the client asked and says what came.
pub enum Connection {
    /// MQTT 3.1.1.
    V311(Box<rumqttc::EventLoop>),
    /// MQTT 5.
    V5(Box<v5::EventLoop>),
}

/// A message the broker delivered.
#[derive(Debug, Clone)]
pub enum Message {
    /// MQTT 3.1.1.
    V311(rumqttc::Publish),
    /// MQTT 5 (boxed: its properties make it three times the size).
    V5(Box<v5::mqttbytes::v5::Publish>),
}

impl Message {
    /// Its topic.
    pub fn topic(&self) -> Cow<'_, str> {
        match self {
            Message::V311(p) => Cow::Borrowed(&p.topic),
            Message::V5(p) => String::from_utf8_lossy(&p.topic),
        }
    }

    /// Its payload.
    pub fn payload(&self) -> &[u8] {
        match self {
            Message::V311(p) => &p.payload,
            Message::V5(p) => &p.payload,
        }
    }
}

/// What polling the connection gave.
#[derive(Debug)]
pub enum Happened {
    /// The broker accepted the connection.
    Connected,
    /// The broker confirmed the subscriptions.
    Subscribed,
    /// A message.
    Message(Message),
    /// The gateway's disconnect went out.
    Disconnected,
    /// Anything else (pings, acknowledgements going out).
    Other,
}

/// Why polling failed.
#[derive(Debug)]
pub enum Failure {
    /// The broker refused the credentials (its answer).
    Refused(String),
    /// TLS failed.
    Tls(String),
    /// The broker is away or the connection broke.
    Away(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(code) => write!(f, "the credentials are refused ({code})"),
            Failure::Tls(e) => write!(f, "TLS failed: {e}"),
            Failure::Away(e) => f.write_str(e),
        }
    }
}

/// The broker's host, port and whether it speaks TLS, from `mqtt://` or `mqtts://` URLs.
pub fn address(url: &str) -> Result<(String, u16, bool), Unusable> {
    let unusable = |why: String| Unusable { key: "url", why };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(unusable("mqtt://host:port or mqtts://host:port".into()));
    };
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| unusable(format!("{port:?} is not a port")))?;
            Ok((host.to_string(), port, tls))
        }
        None => Ok((rest.to_string(), if tls { 8883 } else { 1883 }, tls)),
    }
}

/// The password: `password_file`'s first line, else `password`.
fn password(c: &MqttConfig) -> Result<Option<String>, Unusable> {
    match &c.password_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|p| Some(p.trim_end().to_string()))
            .map_err(|e| Unusable {
                key: "password_file",
                why: format!("{}: {e}", path.display()),
            }),
        None => Ok(c.password.clone()),
    }
}

/// TLS towards the broker, checked against `ca_file` (else the system's CAs).
fn tls(c: &MqttConfig) -> Result<Transport, Unusable> {
    Ok(match &c.ca_file {
        Some(path) => Transport::tls_with_config(TlsConfiguration::SimpleNative {
            ca: std::fs::read(path).map_err(|e| Unusable {
                key: "ca_file",
                why: format!("{}: {e}", path.display()),
            })?,
            client_auth: None,
        }),
        None => Transport::tls_with_config(TlsConfiguration::Native),
    })
}

/// The client and connection `c` describes, with room for `requests` requests queued (the
/// connection sends them when polled). Nothing is sent before the connection is polled.
pub fn connect(c: &MqttConfig, requests: usize) -> Result<(Client, Connection), Unusable> {
    let (host, port, secure) = address(&c.url)?;
    let password = password(c)?;
    let transport = secure.then(|| tls(c)).transpose()?;
    let keep_alive = Duration::from_secs(30);
    Ok(match c.protocol {
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(c.client_id.clone(), host, port);
            o.set_keep_alive(keep_alive)
                .set_clean_session(false)
                .set_manual_acks(true)
                .set_inflight(100);
            if let Some(user) = &c.username {
                o.set_credentials(user.clone(), password.unwrap_or_default());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (client, connection) = rumqttc::AsyncClient::new(o, requests);
            (Client::V311(client), Connection::V311(Box::new(connection)))
        }
        Protocol::V5 => {
            let mut o = v5::MqttOptions::new(c.client_id.clone(), host, port);
            // A session that never expires: the broker keeps what it accepted while the gateway
            // is away, as a 3.1.1 persistent session does.
            o.set_keep_alive(keep_alive)
                .set_clean_start(false)
                .set_session_expiry_interval(Some(u32::MAX))
                .set_receive_maximum(Some(RECEIVE_MAXIMUM))
                .set_manual_acks(true)
                .set_outgoing_inflight_upper_limit(100);
            if let Some(user) = &c.username {
                o.set_credentials(user.clone(), password.unwrap_or_default());
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (client, connection) = v5::AsyncClient::new(o, requests);
            (Client::V5(client), Connection::V5(Box::new(connection)))
        }
    })
}

impl Client {
    /// Subscribes to `filters` at QoS 1.
    pub async fn subscribe(&self, filters: &[String]) -> Result<(), String> {
        match self {
            Client::V311(c) => c
                .subscribe_many(
                    filters.iter().map(|f| {
                        rumqttc::SubscribeFilter::new(f.clone(), rumqttc::QoS::AtLeastOnce)
                    }),
                )
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe_many(filters.iter().map(|f| {
                    v5::mqttbytes::v5::Filter::new(f.clone(), v5::mqttbytes::QoS::AtLeastOnce)
                }))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Acknowledges `m` (queued; sent when the connection is polled).
    pub async fn ack(&self, m: &Message) -> Result<(), String> {
        match (self, m) {
            (Client::V311(c), Message::V311(p)) => c.ack(p).await.map_err(|e| e.to_string()),
            (Client::V5(c), Message::V5(p)) => c.ack(p).await.map_err(|e| e.to_string()),
            _ => Err("a message of the other protocol version".into()),
        }
    }

    /// Asks for a clean disconnect.
    pub async fn disconnect(&self) {
        let _ = match self {
            Client::V311(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

impl Connection {
    /// Sends what is queued and takes what comes, until something happens.
    pub async fn poll(&mut self) -> Result<Happened, Failure> {
        use rumqttc::ConnectReturnCode as Code4;
        use v5::mqttbytes::v5::ConnectReturnCode as Code5;
        match self {
            Connection::V311(l) => match l.poll().await {
                Ok(rumqttc::Event::Incoming(p)) => Ok(match p {
                    rumqttc::Packet::ConnAck(_) => Happened::Connected,
                    rumqttc::Packet::SubAck(_) => Happened::Subscribed,
                    rumqttc::Packet::Publish(p) => Happened::Message(Message::V311(p)),
                    _ => Happened::Other,
                }),
                Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect)) => Ok(Happened::Disconnected),
                Ok(rumqttc::Event::Outgoing(_)) => Ok(Happened::Other),
                Err(rumqttc::ConnectionError::ConnectionRefused(
                    code @ (Code4::BadUserNamePassword | Code4::NotAuthorized),
                )) => Err(Failure::Refused(format!("{code:?}"))),
                Err(rumqttc::ConnectionError::Tls(e)) => Err(Failure::Tls(e.to_string())),
                Err(e) => Err(Failure::Away(e.to_string())),
            },
            Connection::V5(l) => match l.poll().await {
                Ok(v5::Event::Incoming(p)) => Ok(match p {
                    v5::mqttbytes::v5::Packet::ConnAck(_) => Happened::Connected,
                    v5::mqttbytes::v5::Packet::SubAck(_) => Happened::Subscribed,
                    v5::mqttbytes::v5::Packet::Publish(p) => {
                        Happened::Message(Message::V5(Box::new(p)))
                    }
                    _ => Happened::Other,
                }),
                Ok(v5::Event::Outgoing(Outgoing::Disconnect)) => Ok(Happened::Disconnected),
                Ok(v5::Event::Outgoing(_)) => Ok(Happened::Other),
                Err(v5::ConnectionError::ConnectionRefused(
                    code @ (Code5::BadUserNamePassword | Code5::NotAuthorized),
                )) => Err(Failure::Refused(format!("{code:?}"))),
                Err(v5::ConnectionError::Tls(e)) => Err(Failure::Tls(e.to_string())),
                Err(e) => Err(Failure::Away(e.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_and_tls() {
        assert_eq!(
            address("mqtt://broker:1884"),
            Ok(("broker".into(), 1884, false))
        );
        assert_eq!(
            address("mqtts://broker/"),
            Ok(("broker".into(), 8883, true))
        );
        assert_eq!(address("mqtt://broker"), Ok(("broker".into(), 1883, false)));
        assert_eq!(address("http://broker").map_err(|e| e.key), Err("url"));
        assert_eq!(address("mqtt://broker:x").map_err(|e| e.key), Err("url"));
    }

    #[test]
    fn the_protocol_is_named_as_its_version() {
        let said = |s: &str| serde_json::from_str::<Protocol>(s).ok();
        assert_eq!(said("\"5\""), Some(Protocol::V5));
        assert_eq!(said("\"3.1.1\""), Some(Protocol::V311));
        assert_eq!(said("\"4\""), None);
    }
}
