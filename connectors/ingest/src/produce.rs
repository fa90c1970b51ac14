//! Accepted readings to the telemetry topic: Avro, keyed by device, with the credential's tenant
//! (and a device key's device) in record headers ([`schemas::headers`]), through an idempotent
//! producer (`acks=all`). A request's readings are all handed to the producer before any is
//! waited for, so a batch costs one round trip to the brokers, not one per reading.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kafka_auth::Tokens;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::{Codec, Telemetry, headers};

use crate::keys::Credential;

/// The telemetry topic's producer.
pub struct Producer {
    producer: FutureProducer<Tokens>,
    topic: String,
    codec: Codec,
    timeout: Duration,
    /// The last answer from the brokers was an acknowledgement (for `/readyz`).
    taking: AtomicBool,
}

impl Producer {
    /// A producer to `topic` with the librdkafka `properties` (brokers, TLS, SASL), encoding
    /// with `codec`; a reading not acknowledged within `timeout` fails.
    pub fn new(
        properties: &HashMap<String, String>,
        topic: &str,
        codec: Codec,
        timeout: Duration,
    ) -> Result<Producer, KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("client.id", "fleetpulse-ingest")
            .set("message.timeout.ms", timeout.as_millis().to_string());
        for (k, v) in properties {
            config.set(k, v);
        }
        Ok(Producer {
            producer: config.create_with_context(Tokens)?,
            topic: topic.into(),
            codec,
            timeout,
            taking: AtomicBool::new(true),
        })
    }

    /// Whether the brokers acknowledged the last reading they answered for.
    pub fn taking(&self) -> bool {
        self.taking.load(Ordering::Relaxed)
    }

    /// Writes `readings` sent with `who`; each one's outcome, in order, once the brokers
    /// answered for it (or the timeout passed).
    pub async fn send(&self, readings: &[Telemetry], who: &Credential) -> Vec<Result<(), String>> {
        let deadline = Instant::now() + self.timeout;
        let mut stamp = OwnedHeaders::new().insert(Header {
            key: headers::TENANT,
            value: Some(who.tenant.as_bytes()),
        });
        if let Some(device) = &who.device {
            stamp = stamp.insert(Header {
                key: headers::DEVICE,
                value: Some(device.as_bytes()),
            });
        }
        let mut pending = Vec::with_capacity(readings.len());
        for t in readings {
            let value = match self.codec.encode(t) {
                Ok(value) => value,
                Err(e) => {
                    pending.push(Err(format!("cannot encode: {e}")));
                    continue;
                }
            };
            pending.push(self.enqueue(t, &value, &stamp, deadline).await);
        }
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            let outcome = match p {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => {
                        self.taking.store(true, Ordering::Relaxed);
                        Ok(())
                    }
                    Ok(Err((e, _))) => {
                        self.taking.store(false, Ordering::Relaxed);
                        Err(e.to_string())
                    }
                    Err(_) => Err("the producer was dropped".to_string()),
                },
                Err(e) => Err(e),
            };
            out.push(outcome);
        }
        out
    }

    /// Hands one record to the producer, waiting while its queue is full (until `deadline`).
    async fn enqueue(
        &self,
        t: &Telemetry,
        value: &[u8],
        stamp: &OwnedHeaders,
        deadline: Instant,
    ) -> Result<rdkafka::producer::DeliveryFuture, String> {
        loop {
            let record = FutureRecord::to(&self.topic)
                .key(t.device_id.as_bytes())
                .payload(value)
                .headers(stamp.clone());
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e.to_string()),
            }
        }
    }
}
