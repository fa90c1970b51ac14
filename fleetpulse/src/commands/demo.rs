//! `fleetpulse demo`: the whole system in one process with nothing to install. An embedded
//! Kafka-compatible broker (librdkafka's mock cluster; a real one with `--brokers`), the
//! file-backed schema registry, a live fleet with failures and devices going silent, the
//! pipeline, the bridge with its dashboard, and, given a ClickHouse (`--clickhouse-url`), the
//! sink; given an MQTT broker (`--mqtt-url`), a Zigbee home publishing to it and the MQTT gateway
//! bridging it into Kafka. Ctrl-C stops every part the way it stops on its own.

mod home;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rdkafka::mocking::MockCluster;

use generator::GeneratorConfig;
use schemas::{PollTarget, Registration};

use super::generate::GenerateArgs;
use super::pipeline::PipelineArgs;
use super::simulated::{self, Answer};
use super::sink::SinkCommand;
use crate::config::{Config, Override};

/// Flags of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// A real Kafka instead of the embedded mock cluster (`kafka.brokers`).
    #[arg(long)]
    brokers: Option<String>,
    /// A ClickHouse HTTP interface: the sink joins the demo (`clickhouse.url`).
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// An MQTT broker (`mqtt://host:port`): a Zigbee home publishes to it, and the MQTT gateway
    /// joins the demo.
    #[arg(long)]
    mqtt_url: Option<String>,
    /// Devices in the fleet; each reports once per `generate.interval_ms`.
    #[arg(long, default_value_t = 3_000)]
    devices: u32,
    /// Where the dashboard is served; another free port if this one is taken.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

impl DemoArgs {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        if let Some(b) = &self.brokers {
            into.push(("kafka.brokers".into(), toml::Value::String(b.clone())));
        }
        if let Some(u) = &self.clickhouse_url {
            into.push(("clickhouse.url".into(), toml::Value::String(u.clone())));
        }
    }
}

/// The flags of another command, for parsing them alone.
#[derive(Parser)]
struct Flags<T: Args> {
    #[command(flatten)]
    flags: T,
}

/// A command with subcommands of its own, for parsing it alone.
#[derive(Parser)]
struct Sub<T: Subcommand> {
    #[command(subcommand)]
    command: T,
}

/// Another command's flags, as if `words` were typed after its name.
fn flags<T: Args>(words: &[&str]) -> anyhow::Result<T> {
    let words = std::iter::once("fleetpulse").chain(words.iter().copied());
    Ok(Flags::<T>::try_parse_from(words)?.flags)
}

/// `listen` if it is free, else a free port on its address.
fn free(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    let taken = std::net::TcpListener::bind(listen)
        .or_else(|_| std::net::TcpListener::bind(SocketAddr::new(listen.ip(), 0)))
        .with_context(|| format!("cannot listen on {}", listen.ip()))?;
    Ok(taken.local_addr()?)
}

/// A secret for this run's tokens: nobody else's tokens open this dashboard.
fn secret() -> anyhow::Result<String> {
    // 256 bits from the operating system's generator: the time and pid it was made of before
    // could be guessed.
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no random bytes for the demo's token secret: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The devices the demo's poller checks, simulated on loopback under `tenant`: three cameras
/// whose batteries run down, a router that fails one probe in three, and a PLC that never answers
/// (its breaker opens and it goes offline).
async fn polled_fleet(tenant: &str) -> anyhow::Result<Vec<Registration>> {
    let started = std::time::Instant::now();
    let probes = AtomicU64::new(0);
    let answer: Answer = Arc::new(move |path: &str| match path.rsplit('/').next() {
        Some("plc-1") => None,
        Some("router-1") => Some(if probes.fetch_add(1, Ordering::Relaxed) % 3 == 2 {
            (503, r#"{"ok":false}"#.into())
        } else {
            (200, r#"{"ok":true}"#.into())
        }),
        _ => {
            let battery = (100.0 - started.elapsed().as_secs_f64() / 60.0).max(5.0);
            Some((200, format!(r#"{{"ok":true,"battery":{battery:.1}}}"#)))
        }
    });
    let port = simulated::serve([127, 0, 0, 1], answer).await?;
    let devices = [
        ("cam-1", "camera"),
        ("cam-2", "camera"),
        ("cam-3", "camera"),
        ("router-1", "router"),
        ("plc-1", "plc"),
    ];
    Ok(devices
        .map(|(name, class)| Registration {
            device_class: Some(class.into()),
            poll: Some(PollTarget {
                url: format!("http://127.0.0.1:{port}/devices/{name}"),
                fields: BTreeMap::from([
                    ("ok".into(), "/ok".into()),
                    ("battery_pct".into(), "/battery".into()),
                ]),
            }),
            ..Registration::new(tenant, format!("polled-{name}"))
        })
        .into())
}

/// The generated fleet as the inventory holds it, spread over five sites, with three sensors of
/// `tenant` that were installed and never reported (they go offline as `never_seen`).
fn registered_fleet(config: &GeneratorConfig, tenant: &str) -> Vec<Registration> {
    let silent = (1..=3).map(|i| Registration {
        device_class: Some("sensor".into()),
        labels: BTreeMap::from([("site".into(), "basement".into())]),
        expected_interval_ms: Some(10_000),
        ..Registration::new(tenant, format!("never-reported-{i}"))
    });
    generator::device_ids(config)
        .enumerate()
        .map(|(i, (tenant, device))| Registration {
            labels: BTreeMap::from([("site".into(), format!("site-{}", i % 5))]),
            ..Registration::new(tenant, device)
        })
        .chain(silent)
        .collect()
}

pub(crate) async fn run(config: &Config, args: DemoArgs) -> anyhow::Result<()> {
    let mut c = config.clone();
    if c.kafka.brokers.is_some() {
        // A real cluster may be someone's production: the demo keeps to topics, a group and a
        // database of its own.
        for topic in [
            &mut c.topics.telemetry,
            &mut c.topics.aggregates,
            &mut c.topics.anomalies,
            &mut c.topics.status,
            &mut c.topics.dlq,
            &mut c.topics.lastseen,
            &mut c.topics.inventory,
        ] {
            *topic = topic.prefixed("fleetpulse-demo-");
        }
        c.clickhouse.group_id = "fleetpulse-demo".into();
    }
    c.clickhouse.database = "fleetpulse_demo".into();
    let dir = std::env::temp_dir().join(format!("fleetpulse-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    // The mock cluster lives as long as this function: it is dropped, and stops, after every
    // part has stopped.
    let mock = match &c.kafka.brokers {
        Some(_) => None,
        None => {
            let mock = MockCluster::new(1).context("cannot start the embedded Kafka")?;
            // Its admin API cannot create topics: they are made here, as the parts want them.
            for topic in [
                &c.topics.telemetry,
                &c.topics.aggregates,
                &c.topics.anomalies,
                &c.topics.status,
                &c.topics.dlq,
                &c.topics.lastseen,
                &c.topics.inventory,
            ] {
                mock.create_topic(topic.as_str(), 4, 1)?;
            }
            c.kafka.brokers = Some(
                mock.bootstrap_servers()
                    .parse()
                    .context("the embedded broker's address")?,
            );
            Some(mock)
        }
    };
    let brokers = c.brokers()?.as_str().to_string();

    let registry = {
        let subjects = registry::Subjects::open(&dir.join("registry.json"))?;
        let metrics = crate::observability::metrics()?;
        let app = registry::server::router(subjects, move || metrics.render());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(super::shutdown_signal())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the demo's schema registry failed");
            }
        });
        url
    };
    c.schema_registry = Some(registry::ClientConfig {
        url: registry.parse().context("the registry's address")?,
        timeout_ms: 10_000,
        username: None,
        password: None,
        password_file: None,
        token: None,
        token_file: None,
        ca_file: None,
    });

    c.generate.devices = args.devices;
    c.generate.events = 0;
    // Event time keeps pace with the wall clock: every device reports once per interval.
    c.generate.rate = f64::from(args.devices) * 1_000.0 / c.generate.interval_ms.max(1) as f64;
    c.generate.start_ms = None;
    // What a newcomer should see happen within minutes: bad messages in the dead-letter topic,
    // devices flapping, devices going silent.
    if c.generate.malformed_fraction < 0.005 {
        c.generate.malformed_fraction = 0.005;
    }
    if c.generate.flapping_fraction == 0.0 {
        c.generate.flapping_fraction = 0.01;
    }
    if c.generate.silence_rate < 0.000_05 {
        c.generate.silence_rate = 0.000_05;
    }
    c.pipeline.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.clickhouse.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.poller.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let home_base = format!("demo-{}/zigbee2mqtt", std::process::id());
    if let Some(url) = &args.mqtt_url {
        c.mqtt = home::gateway(url, &home_base, SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    c.poller.http_interval_ms = 5_000;
    c.poller.timeout_ms = 2_000;
    c.poller.breaker_open_ms = 60_000;
    c.bridge.listen = free(args.listen)?;
    if c.bridge.jwt_secret.is_empty() {
        c.bridge.jwt_secret = secret()?;
    }
    let token = ws_bridge::auth::issue(
        &ws_bridge::auth::Claims {
            sub: "demo".into(),
            tenant: "demo".into(),
            role: "admin".into(),
            exp: ws_bridge::auth::now() + 7 * 24 * 3_600,
        },
        &c.bridge.jwt_secret,
    )?;

    let generate: GenerateArgs = flags(&["--no-progress"])?;
    let pipeline: PipelineArgs = flags(&[])?;
    let sink = match &args.clickhouse_url {
        Some(_) => Some(Sub::<SinkCommand>::try_parse_from(["fleetpulse", "clickhouse"])?.command),
        None => None,
    };

    let dashboard = format!("http://{}/?token={token}", c.bridge.listen);
    println!(
        "fleetpulse demo: {} devices of {} tenants report every {} ms into {} ({}); the pipeline derives aggregates, anomalies and status.",
        c.generate.devices,
        c.generate.tenants,
        c.generate.interval_ms,
        brokers,
        if mock.is_some() {
            "the embedded broker"
        } else {
            "your Kafka"
        },
    );
    println!("fleetpulse demo: the dashboard (live within a minute): {dashboard}");
    println!("fleetpulse demo: the same token for /ws and /api/devices: {token}");
    println!(
        "fleetpulse demo: watch a topic: FLEETPULSE_KAFKA__BROKERS={brokers} FLEETPULSE_SCHEMA_REGISTRY__URL={registry} fleetpulse tail --topic {}",
        c.topics.status.as_str()
    );
    if let Some(url) = &args.clickhouse_url {
        println!(
            "fleetpulse demo: ClickHouse (the windows land there as they close), the slowest devices of the last hour:\n  curl -s '{url}' --data-binary \"SELECT tenant_id, device_id, max(rt_p99) AS worst_p99_ms, sum(errors) AS failed_readings FROM {}.device_aggregates FINAL WHERE window_ms = 60000 AND window_end > now() - INTERVAL 1 HOUR GROUP BY tenant_id, device_id ORDER BY worst_p99_ms DESC LIMIT 10 FORMAT PrettyCompact\"",
            c.clickhouse.database
        );
    }
    let polled = polled_fleet("tenant-00").await?;
    println!(
        "fleetpulse demo: the poller checks {} simulated HTTP devices of the inventory every 5 s (tenant-00/polled-*): a router fails now and then, a PLC never answers.",
        polled.len()
    );
    let mut inventory = registered_fleet(&c.generate, "tenant-00");
    println!(
        "fleetpulse demo: the inventory registers the fleet, and tenant-00/never-reported-1 to -3, which never report: offline as never_seen after 30 s."
    );
    inventory.extend(polled);
    super::inventory::register(&c, inventory).await?;
    if let Some(url) = &args.mqtt_url {
        println!(
            "fleetpulse demo: a Zigbee home ({} devices, tenant {}) publishes to the MQTT broker at {url}, bridged into Kafka by the MQTT gateway; its {} drops off every other minute (reported_offline, then resumed).",
            home::DEVICES.len(),
            home::TENANT,
            home::FLAKY
        );
    }
    println!("fleetpulse demo: Ctrl-C stops everything.");

    let sink = async {
        match sink {
            Some(s) => super::sink::run(&c, s).await,
            None => Ok(()),
        }
    };
    let mqtt = async {
        match &args.mqtt_url {
            Some(url) => {
                let stop = super::stop_on_signal();
                tokio::try_join!(super::mqtt::run(&c), home::run(url, &home_base, stop))?;
                Ok(())
            }
            None => Ok(()),
        }
    };
    let ran = tokio::try_join!(
        super::generate::run(&c, generate),
        super::pipeline::run(&c, pipeline),
        super::bridge::run(&c),
        super::poll::run(&c),
        sink,
        mqtt,
    );
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = ran {
        // The other parts stop on a signal only, and their threads would keep the process
        // alive: one part failing ends the demo at once, saying why.
        eprintln!("fleetpulse demo: {e:#}");
        std::process::exit(1);
    }
    drop(mock);
    Ok(())
}
