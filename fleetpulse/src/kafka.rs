//! Kafka plumbing the commands share: client settings from the configuration, and topic creation.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use kafka_auth::Tokens;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;

/// A librdkafka configuration with the brokers, the configured extra properties, and then
/// `settings`.
fn client_config(config: &Config, settings: &[(&str, &str)]) -> anyhow::Result<ClientConfig> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", config.brokers()?.as_str());
    for (k, v) in &config.kafka.properties {
        client.set(k, v);
    }
    for (k, v) in settings {
        client.set(*k, *v);
    }
    Ok(client)
}

/// A consumer of the configured brokers with `settings` on top, that can ask the brokers at once:
/// its first poll has answered librdkafka's request for an OAUTHBEARER token.
pub(crate) fn consumer(
    config: &Config,
    settings: &[(&str, &str)],
) -> anyhow::Result<BaseConsumer<Tokens>> {
    let consumer: BaseConsumer<Tokens> = client_config(config, settings)?
        .create_with_context(Tokens)
        .context("cannot create a Kafka consumer")?;
    consumer.poll(Duration::ZERO);
    Ok(consumer)
}

/// A producer of the configured brokers with `settings` on top, that can ask the brokers at once
/// (as [`consumer`]).
pub(crate) fn producer(
    config: &Config,
    settings: &[(&str, &str)],
) -> anyhow::Result<BaseProducer<Tokens>> {
    let producer: BaseProducer<Tokens> = client_config(config, settings)?
        .create_with_context(Tokens)
        .context("cannot create a Kafka producer")?;
    producer.poll(Duration::ZERO);
    Ok(producer)
}

/// The brokers and configured properties as a map, for the clients the pipeline builds itself.
pub(crate) fn properties(config: &Config) -> anyhow::Result<HashMap<String, String>> {
    let mut p: HashMap<String, String> = config
        .kafka
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    p.insert(
        "bootstrap.servers".into(),
        config.brokers()?.as_str().into(),
    );
    Ok(p)
}

/// Creates `topic` with `partitions` partitions and the broker's default replication, unless
/// it exists.
pub(crate) async fn ensure_topic(
    config: &Config,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    create_unless_there(config, topic, partitions, &[]).await
}

/// As [`ensure_topic`], compacted: a topic of the latest record per key (last-seen times). A
/// topic that exists is left as it is.
pub(crate) async fn ensure_compacted_topic(
    config: &Config,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    create_unless_there(config, topic, partitions, &[("cleanup.policy", "compact")]).await
}

async fn create_unless_there(
    config: &Config,
    topic: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) -> anyhow::Result<()> {
    // A topic that is there needs no admin rights (nor an admin API: the embedded broker of
    // `demo` has none that creates topics). Asking about a missing topic must not create it with
    // the broker's default partitions.
    let asking = producer(config, &[("allow.auto.create.topics", "false")])?;
    let exists = asking
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .is_ok_and(|m| {
            m.topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        });
    if exists {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(config, &[])?
        .create()
        .context("cannot create a Kafka admin client")?;
    if kafka_auth::refreshes_token(&config.kafka.properties) {
        let named = config.kafka.properties.get("sasl.oauthbearer.config");
        kafka_auth::set_token(admin.inner(), named.map(String::as_str))
            .map_err(|e| anyhow::anyhow!("cannot give the Kafka admin client its token: {e}"))?;
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let new = settings.iter().fold(
        NewTopic::new(topic, partitions, TopicReplication::Fixed(-1)),
        |new, (k, v)| new.set(k, v),
    );
    let results = admin
        .create_topics([&new], &options)
        .await
        .with_context(|| format!("cannot create topic {topic}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Checks at start-up that the brokers take this client's TLS settings and credentials, so a
/// wrong password or an untrusted certificate ends the command with a message that says so,
/// instead of a client that retries for ever in silence. Brokers that cannot be reached are
/// only warned about: the commands wait and retry for them (and show it on `/readyz`).
pub(crate) async fn check_access(config: &Config) -> anyhow::Result<()> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || check_access_now(&config)).await?
}

fn check_access_now(config: &Config) -> anyhow::Result<()> {
    let brokers = config.brokers()?.as_str().to_string();
    kafka_auth::check(&config.kafka.properties)?;
    // A producer: polling it hands librdkafka's global errors to the context.
    let client: BaseProducer<Rejections> = client_config(config, &[])?
        .create_with_context(Rejections::default())
        .map_err(|e| match e {
            // librdkafka's message repeats the value, which may be a secret.
            KafkaError::ClientConfig(_, reason, key, value) => {
                let reason = if value.is_empty() {
                    reason
                } else {
                    reason.replace(&value, "<redacted>")
                };
                anyhow::anyhow!(
                    "Kafka at {brokers}: the client setting {key:?} is refused: {reason}"
                )
            }
            e => anyhow::anyhow!("Kafka at {brokers}: the client settings are refused: {e}"),
        })?;
    let deadline = Instant::now() + ACCESS_CHECK_TIME;
    while Instant::now() < deadline {
        // The first poll also answers librdkafka's request for an OAUTHBEARER token.
        client.poll(Duration::ZERO);
        let answered = client
            .client()
            .fetch_metadata(None, Duration::from_millis(500))
            .is_ok();
        client.poll(Duration::ZERO);
        if let Some(refusal) = client.context().refusal() {
            anyhow::bail!("Kafka at {brokers}: {refusal}");
        }
        if answered {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::warn!(
        %brokers,
        last_error = client.context().last().unwrap_or_default(),
        "Kafka cannot be reached yet; carrying on, the clients retry"
    );
    Ok(())
}

/// How long [`check_access`] waits for the brokers' answer: long enough for a TLS handshake and
/// a SASL exchange on a loaded machine, short enough that a stopped broker only delays start-up.
const ACCESS_CHECK_TIME: Duration = Duration::from_secs(10);

/// The errors a client met while [`check_access`] waited: a refusal (TLS or credentials) ends
/// the wait, the others are kept for the warning.
#[derive(Default)]
struct Rejections {
    refusal: Mutex<Option<String>>,
    last: Mutex<Option<String>>,
}

impl Rejections {
    fn refusal(&self) -> Option<String> {
        self.refusal.lock().ok().and_then(|r| r.clone())
    }

    fn last(&self) -> Option<String> {
        self.last.lock().ok().and_then(|r| r.clone())
    }
}

impl ClientContext for Rejections {
    kafka_auth::answer_token_requests!();

    fn error(&self, error: KafkaError, reason: &str) {
        let kind = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                Some("the credentials are refused")
            }
            Some(RDKafkaErrorCode::SSL) => Some("TLS failed"),
            _ => None,
        };
        let slot = if kind.is_some() {
            &self.refusal
        } else {
            &self.last
        };
        if let Ok(mut slot) = slot.lock() {
            *slot = Some(match kind {
                Some(kind) => format!("{kind}: {reason}"),
                None => reason.to_string(),
            });
        }
    }

    // librdkafka also logs each failed attempt; the error above says it once, clearly.
    fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}
}

impl ProducerContext for Rejections {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}
