//! The gateway: subscribed to the broker under a persistent session (QoS 1; MQTT 3.1.1 with clean
//! session off, or MQTT 5 with a session that never expires; acknowledgements by hand; the
//! protocol's differences are [`client`]'s), each message mapped ([`Mapper`]) and written to
//! Kafka (readings to the telemetry topic with the mapping's tenant in the `fleetpulse-tenant`
//! header, what cannot be mapped to the dead-letter topic with its MQTT topic), and acknowledged
//! to the broker only once Kafka acknowledged what it became. MQTT wants acknowledgements in the order messages came, so
//! they go out in that order, each after its own Kafka acknowledgement. A gateway that crashes,
//! or waits on a Kafka that is down, leaves messages unacknowledged, and the broker sends them
//! again: nothing it accepted at QoS 1 is lost, and a message sent twice is the same reading
//! twice. An availability report goes to the telemetry topic as a reading of its device at the
//! gateway's time with the `fleetpulse-availability` header (`online` or `offline`), which the
//! pipeline takes as a report, not a measurement.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kafka_auth::Tokens;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use schemas::{Codec, DeadLetter, Limits, Telemetry};
use tokio::sync::mpsc;

use crate::client::{self, Failure, Happened, Message};
use crate::config::MqttConfig;
use crate::events;
use crate::mapping::{Mapper, Outcome};

/// Messages taken and not yet acknowledged, at most: past it, the gateway stops taking more
/// (and the broker holds them).
const IN_FLIGHT: usize = 10_000;

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration cannot be used.
    #[error("configuration key `mqtt.{key}`: {why}")]
    Config {
        /// The key.
        key: String,
        /// Why.
        why: String,
    },
    /// The Kafka producer could not be made.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The broker refused the gateway's credentials before it ever connected: a configuration
    /// to mend, not an outage to wait out.
    #[error("the MQTT broker at {url}: the credentials are refused ({code})")]
    Refused {
        /// The broker.
        url: String,
        /// What it answered.
        code: String,
    },
    /// TLS with the broker failed before the gateway ever connected (an untrusted or wrong
    /// certificate, a broker that speaks no TLS).
    #[error("the MQTT broker at {url}: TLS failed: {detail}")]
    Tls {
        /// The broker.
        url: String,
        /// Why.
        detail: String,
    },
}

/// What the gateway needs.
pub struct Setup {
    /// `[mqtt]`.
    pub config: MqttConfig,
    /// librdkafka properties (brokers, TLS, SASL).
    pub kafka: HashMap<String, String>,
    /// Where readings go.
    pub telemetry: String,
    /// Where what cannot be mapped goes.
    pub dlq: String,
    /// Encodes readings and dead letters.
    pub codec: Codec,
    /// The pipeline's limits, which readings are checked against.
    pub limits: Limits,
    /// Set to stop: the gateway stops taking messages, waits for those in hand to be written and
    /// acknowledged, and disconnects.
    pub stop: Arc<AtomicBool>,
}

/// What `/readyz` looks at.
#[derive(Debug, Default)]
pub struct Health {
    /// Connected to the broker and subscribed.
    pub connected: AtomicBool,
    /// The last Kafka answer was an acknowledgement.
    pub kafka_failing: AtomicBool,
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Messages acknowledged to the broker.
    pub acknowledged: u64,
}

/// How a taken message is settled before it is acknowledged.
enum Settle {
    /// Nothing to write.
    Now,
    /// Once this record is acknowledged.
    After(DeliveryFuture),
    /// Never: what it became could not be produced; the broker sends it again.
    Never,
}

fn producer(kafka: &HashMap<String, String>) -> Result<FutureProducer<Tokens>, KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("client.id", "fleetpulse-mqtt")
        // A record waits for the brokers for as long as they are away; its message stays
        // unacknowledged at the MQTT broker meanwhile.
        .set("message.timeout.ms", "0");
    for (k, v) in kafka {
        config.set(k, v);
    }
    config.create_with_context(Tokens)
}

/// Runs the gateway until `setup.stop` is set.
pub async fn run(setup: Setup, health: Arc<Health>) -> Result<Counts, GatewayError> {
    let rules = setup
        .config
        .rules()
        .map_err(|(key, why)| GatewayError::Config { key, why })?;
    let mapper = Mapper::new(rules, setup.codec.clone(), setup.limits);
    let filters = mapper.filters();
    if filters.is_empty() {
        return Err(GatewayError::Config {
            key: "mappings".into(),
            why: "at least one mapping that takes messages".into(),
        });
    }
    let kafka = producer(&setup.kafka)?;
    // Room for an acknowledgement of every message in hand, and more: the acknowledger must
    // never wait for the event loop, which waits for it when IN_FLIGHT messages are in hand
    // (a deadlock a broker sending ten thousand messages unacknowledged reached).
    let (client, mut connection) = client::connect(&setup.config, IN_FLIGHT + 1_024).map_err(
        |client::Unusable { key, why }| GatewayError::Config {
            key: key.into(),
            why,
        },
    )?;
    let (to_acker, mut settling) = mpsc::channel::<(Message, Settle)>(IN_FLIGHT);
    let acked = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicU64::new(0));
    let acker = {
        let (client, acked, in_flight, health) = (
            client.clone(),
            Arc::clone(&acked),
            Arc::clone(&in_flight),
            Arc::clone(&health),
        );
        tokio::spawn(async move {
            while let Some((message, settle)) = settling.recv().await {
                let written = match settle {
                    Settle::Now => true,
                    Settle::Never => false,
                    Settle::After(delivery) => match delivery.await {
                        Ok(Ok(_)) => {
                            health.kafka_failing.store(false, Ordering::Relaxed);
                            true
                        }
                        // Not acknowledged: the broker sends it again when the gateway reconnects.
                        Ok(Err((e, _))) => {
                            health.kafka_failing.store(true, Ordering::Relaxed);
                            tracing::error!(error = %e, topic = %message.topic(), "a record was not written; the message stays unacknowledged");
                            false
                        }
                        Err(_) => false,
                    },
                };
                if written {
                    if client.ack(&message).await.is_err() {
                        break;
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                    events::acknowledged();
                }
                let left = in_flight.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
                events::in_flight(usize::try_from(left).unwrap_or(usize::MAX));
            }
        })
    };
    let mut sequence = 0u64;
    let mut said_down = false;
    let mut ever_connected = false;
    loop {
        if setup.stop.load(Ordering::Relaxed) {
            break;
        }
        let happened =
            match tokio::time::timeout(Duration::from_millis(200), connection.poll()).await {
                Err(_) => continue,
                Ok(happened) => happened,
            };
        match happened {
            Ok(Happened::Connected) => {
                said_down = false;
                ever_connected = true;
                if let Err(e) = client.subscribe(&filters).await {
                    tracing::error!(error = %e, "cannot subscribe");
                }
            }
            // Ready once the broker confirmed the subscriptions: before that, what is published
            // may not reach the gateway's session.
            Ok(Happened::Subscribed) => {
                tracing::info!(filters = ?filters, "connected to the MQTT broker and subscribed");
                health.connected.store(true, Ordering::Relaxed);
                events::connected(true);
            }
            Ok(Happened::Message(message)) => {
                sequence += 1;
                let now = now_ms();
                let settle = take(&mapper, &kafka, &setup, &message, now, sequence).await;
                in_flight.fetch_add(1, Ordering::Relaxed);
                if to_acker.send((message, settle)).await.is_err() {
                    break;
                }
            }
            Ok(Happened::Disconnected | Happened::Other) => {}
            Err(e) => {
                // Refused credentials or TLS that fails before the gateway ever connected is a
                // configuration to mend, not a broker away to wait for.
                let url = setup.config.url.clone();
                match e {
                    Failure::Refused(code) if !ever_connected => {
                        return Err(GatewayError::Refused { url, code });
                    }
                    Failure::Tls(detail) if !ever_connected => {
                        return Err(GatewayError::Tls { url, detail });
                    }
                    _ => {}
                }
                health.connected.store(false, Ordering::Relaxed);
                events::connected(false);
                if !said_down {
                    tracing::warn!(error = %e, url = %setup.config.url, "the MQTT broker is away; reconnecting");
                    said_down = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    // What was taken is written and acknowledged before the gateway leaves; the event loop must
    // run for the acknowledgements to go out.
    drop(to_acker);
    let drained = async {
        while in_flight.load(Ordering::Relaxed) > 0 && !acker.is_finished() {
            let _ = tokio::time::timeout(Duration::from_millis(100), connection.poll()).await;
        }
        client.disconnect().await;
        for _ in 0..20 {
            match tokio::time::timeout(Duration::from_millis(100), connection.poll()).await {
                Ok(Ok(Happened::Disconnected)) | Ok(Err(_)) => break,
                _ => {}
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), drained)
        .await
        .is_err()
    {
        tracing::warn!("messages still unacknowledged at stop; the broker sends them again");
    }
    Ok(Counts {
        acknowledged: acked.load(Ordering::Relaxed),
    })
}

/// Maps one message and hands what it became to the producer.
async fn take(
    mapper: &Mapper,
    kafka: &FutureProducer<Tokens>,
    setup: &Setup,
    message: &Message,
    now: i64,
    sequence: u64,
) -> Settle {
    let topic = message.topic();
    let outcome = mapper.map(&topic, message.payload(), now);
    let (reading, availability) = match outcome {
        Outcome::Reading(t) => {
            events::message("reading");
            (t, None)
        }
        Outcome::Availability(a) => {
            events::message("availability");
            tracing::debug!(tenant = %a.tenant_id, device = %a.device_id, online = a.online, "availability report");
            let online = if a.online { "online" } else { "offline" };
            let report = Telemetry {
                tenant_id: a.tenant_id,
                device_id: a.device_id,
                ts: a.ts,
                ok: a.online,
                response_time_ms: None,
                error_code: None,
                battery_pct: None,
                signal_dbm: None,
                device_class: None,
                attributes: Default::default(),
            };
            (report, Some(online))
        }
        Outcome::Ignored => {
            events::message("ignored");
            return Settle::Now;
        }
        Outcome::Unmappable { reason, detail } => {
            events::message("dead_letter");
            let source = format!("mqtt:{topic}");
            let offset = i64::try_from(sequence).unwrap_or(i64::MAX);
            let dead = DeadLetter {
                event_id: format!("dlq/{source}/{now}/{sequence}"),
                source_topic: source,
                source_partition: 0,
                source_offset: offset,
                key: None,
                raw: message.payload().to_vec(),
                reason,
                detail,
                record_ts: Some(now),
            };
            return match setup.codec.encode(&dead) {
                Ok(value) => send(kafka, &setup.dlq, &topic, &value, None).await,
                Err(e) => {
                    tracing::error!(error = %e, "a dead letter cannot be encoded");
                    Settle::Never
                }
            };
        }
    };
    let value = match setup.codec.encode(&reading) {
        Ok(value) => value,
        Err(e) => {
            tracing::error!(error = %e, "a reading cannot be encoded");
            return Settle::Never;
        }
    };
    let mut headers = OwnedHeaders::new().insert(Header {
        key: schemas::headers::TENANT,
        value: Some(reading.tenant_id.as_bytes()),
    });
    if let Some(online) = availability {
        headers = headers.insert(Header {
            key: schemas::headers::AVAILABILITY,
            value: Some(online.as_bytes()),
        });
    }
    send(
        kafka,
        &setup.telemetry,
        &reading.device_id,
        &value,
        Some(headers),
    )
    .await
}

/// Hands one record to the producer, waiting while its queue is full.
async fn send(
    kafka: &FutureProducer<Tokens>,
    topic: &str,
    key: &str,
    value: &[u8],
    headers: Option<OwnedHeaders>,
) -> Settle {
    loop {
        let mut record = FutureRecord::to(topic).key(key.as_bytes()).payload(value);
        if let Some(h) = &headers {
            record = record.headers(h.clone());
        }
        match kafka.send_result(record) {
            Ok(delivery) => return Settle::After(delivery),
            // The producer's queue is full: Kafka is slow or away; wait (the broker holds the
            // messages not taken meanwhile).
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                _,
            )) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((e, _)) => {
                tracing::error!(error = %e, "a record cannot be produced; the message stays unacknowledged");
                return Settle::Never;
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
