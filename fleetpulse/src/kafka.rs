//! Kafka plumbing the commands share: client settings from the configuration, and topic creation.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;

/// A librdkafka configuration with the brokers and the configured extra properties.
pub(crate) fn client_config(config: &Config) -> anyhow::Result<ClientConfig> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", config.brokers()?.as_str());
    for (k, v) in &config.kafka.properties {
        client.set(k, v);
    }
    Ok(client)
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
    let admin: AdminClient<DefaultClientContext> = client_config(config)?
        // Asking about a missing topic must not create it with the broker's default partitions.
        .set("allow.auto.create.topics", "false")
        .create()
        .context("cannot create a Kafka admin client")?;
    // A topic that is there needs no admin rights (nor an admin API: the embedded broker of
    // `demo` has none that creates topics).
    let exists = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .is_ok_and(|m| {
            m.topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        });
    if exists {
        return Ok(());
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
