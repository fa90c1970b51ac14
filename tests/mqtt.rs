//! `fleetpulse mqtt` against the real Debian Mosquitto and the real Kafka broker: Zigbee2MQTT,
//! Home Assistant statestream and Tasmota payloads, as those projects document them, become the
//! expected telemetry, with the mapping's tenant in the record header; payloads that do not fit
//! go to the DLQ with their MQTT topic; bridge topics are ignored; availability messages and a
//! last will become `reported_offline` and `resumed` in the pipeline. And a stream at QoS 1 with the
//! gateway killed (SIGKILL) mid-stream and restarted, and then Kafka stopped and restarted while
//! messages keep coming, ends up whole on the telemetry topic: every message the broker accepted,
//! duplicates only as the same reading.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::*;
use schemas::{Codec, DeadLetter, DeadLetterReason, Telemetry};
use testkit::{Kind, shared, unique};

/// The gateway's configuration: the three presets under the topic namespace `ns` (tests share
/// the broker), against the broker at `url`.
fn config(dir: &Path, url: &str, client_id: &str, ns: &str, protocol: &str) -> PathBuf {
    let file = dir.join("fleetpulse.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[mqtt]
url = "{url}"
client_id = "{client_id}"
protocol = "{protocol}"

[[mqtt.mappings]]
preset = "zigbee2mqtt"
base = "{ns}/zigbee2mqtt"
tenant = "home"
device_class = "zigbee"

[[mqtt.mappings]]
preset = "home_assistant"
base = "{ns}/homeassistant"
tenant = "home"

[[mqtt.mappings]]
preset = "tasmota"
base = "{ns}/tele"
tenant = "plant"
"#
        ),
    )
    .unwrap();
    file
}

/// What a test on the shared Kafka and Mosquitto starts from: the brokers, the MQTT broker and
/// its port, a topic prefix and an MQTT namespace of its own, and the gateway's configuration
/// (speaking `protocol`) in a directory that lives as long as `_dir`.
struct Setup {
    brokers: &'static str,
    mosquitto: &'static str,
    port: String,
    prefix: String,
    ns: String,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

fn setup(name: &str, protocol: &str) -> Setup {
    let mosquitto = shared(Kind::Mosquitto).address();
    let dir = tempfile::tempdir().unwrap();
    let ns = unique(name);
    Setup {
        brokers: shared(Kind::Kafka).address(),
        mosquitto,
        port: mosquitto.rsplit(':').next().unwrap().to_string(),
        prefix: unique(&format!("mqtt-{name}")),
        config: config(dir.path(), mosquitto, &unique("gw"), &ns, protocol),
        ns,
        _dir: dir,
    }
}

/// `fleetpulse mqtt` with `config`, writing to the topics of `prefix`; ready (subscribed).
fn gateway(config: &Path, brokers: &str, prefix: &str) -> Running {
    let (child, http) = spawn_serving(
        fleetpulse()
            .args(["--config", &config.display().to_string()])
            .args(["mqtt", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .args(["--set", &format!("topics.telemetry={prefix}-telemetry")])
            .args(["--set", &format!("topics.dlq={prefix}-dlq")]),
    );
    let ready = testkit::wait_for(Duration::from_secs(60), || {
        http_text(&http, "GET", "/readyz", None).0 == 200
    });
    assert!(ready, "the gateway subscribes");
    Running(child)
}

/// Publishes each of `messages` (topic, payload) at QoS 1, as a device would.
fn publish(url: &str, messages: &[(&String, &str)]) {
    let port = url.rsplit(':').next().unwrap();
    for (topic, payload) in messages {
        run_ok(Command::new("mosquitto_pub").args([
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
        ]));
    }
}

/// The readings on `topic` with their tenant header; availability reports left out.
fn readings(brokers: &str, topic: &str) -> Vec<(Telemetry, String)> {
    records(brokers, topic)
        .into_iter()
        .filter(|(_, _, availability)| availability.is_none())
        .map(|(t, tenant, _)| (t, tenant))
        .collect()
}

/// Every record on `topic`, with its tenant and availability headers.
fn records(brokers: &str, topic: &str) -> Vec<(Telemetry, String, Option<String>)> {
    let codec = Codec::builtin();
    read_all(brokers, topic)
        .into_iter()
        .map(|r| {
            (
                codec.decode::<Telemetry>(&r.value).unwrap(),
                r.headers
                    .get(schemas::headers::TENANT)
                    .cloned()
                    .unwrap_or_default(),
                r.headers.get(schemas::headers::AVAILABILITY).cloned(),
            )
        })
        .collect()
}

#[test]
fn the_presets_map_documented_payloads_and_the_rest_is_a_dead_letter() {
    let Setup {
        brokers,
        mosquitto,
        prefix,
        ns,
        config,
        _dir,
        ..
    } = setup("site", "3.1.1");
    let _gateway = gateway(&config, brokers, &prefix);
    let t = |topic: &str| format!("{ns}/{topic}");
    publish(
        mosquitto,
        &[
            (
                &t("zigbee2mqtt/kitchen/door"),
                r#"{"battery":97,"contact":true,"linkquality":102,"voltage":3015}"#,
            ),
            (
                &t("zigbee2mqtt/kitchen/door/availability"),
                r#"{"state":"offline"}"#,
            ),
            (&t("zigbee2mqtt/bridge/state"), r#"{"state":"online"}"#),
            (&t("homeassistant/sensor/kitchen_temperature/state"), "21.5"),
            (
                &t("tele/plug-7/STATE"),
                r#"{"Time":"2025-12-02T02:46:40","Uptime":"0T00:15:00","POWER":"ON","Wifi":{"AP":1,"SSId":"iot","RSSI":78,"Signal":-61}}"#,
            ),
            (&t("zigbee2mqtt/kitchen/door"), r#"{"battery":"low"}"#),
            (&t("zigbee2mqtt/kitchen/window"), "garbage"),
        ],
    );
    let telemetry = format!("{prefix}-telemetry");
    let arrived = testkit::wait_for(Duration::from_secs(30), || {
        records(brokers, &telemetry).len() >= 4
    });
    assert!(arrived, "three readings and a report");
    let reports: Vec<_> = records(brokers, &telemetry)
        .into_iter()
        .filter_map(|(t, tenant, a)| a.map(|a| (t.device_id, tenant, a)))
        .collect();
    assert_eq!(
        reports,
        [("kitchen/door".into(), "home".into(), "offline".into())]
    );
    let mut got: Vec<(String, String, String)> = readings(brokers, &telemetry)
        .into_iter()
        .map(|(t, header)| (t.tenant_id, t.device_id, header))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("home".into(), "kitchen/door".into(), "home".into()),
            (
                "home".into(),
                "sensor.kitchen_temperature".into(),
                "home".into()
            ),
            ("plant".into(), "plug-7".into(), "plant".into()),
        ]
    );
    let all = readings(brokers, &telemetry);
    let door = &all
        .iter()
        .find(|(t, _)| t.device_id == "kitchen/door")
        .unwrap()
        .0;
    assert_eq!(door.battery_pct, Some(97.0));
    assert_eq!(door.device_class.as_deref(), Some("zigbee"));
    assert_eq!(
        door.attributes.get("contact").map(String::as_str),
        Some("true")
    );
    let plug = &all.iter().find(|(t, _)| t.device_id == "plug-7").unwrap().0;
    assert_eq!(plug.signal_dbm, Some(-61.0));

    let codec = Codec::builtin();
    let dlq = format!("{prefix}-dlq");
    assert!(testkit::wait_for(Duration::from_secs(30), || read_all(
        brokers, &dlq
    )
    .len()
        >= 2));
    let mut dead: Vec<(String, DeadLetterReason)> = read_all(brokers, &dlq)
        .into_iter()
        .map(|r| {
            let d: DeadLetter = codec.decode(&r.value).unwrap();
            (d.source_topic, d.reason)
        })
        .collect();
    dead.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        dead,
        [
            (
                format!("mqtt:{ns}/zigbee2mqtt/kitchen/door"),
                DeadLetterReason::InvalidField
            ),
            (
                format!("mqtt:{ns}/zigbee2mqtt/kitchen/window"),
                DeadLetterReason::Undecodable
            ),
        ]
    );
}

#[test]
fn a_killed_gateway_and_a_kafka_away_lose_no_message_the_broker_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let kafka_dir = dir.path().join("kafka");
    let mut kafka = testkit::Service::start_in(Kind::Kafka, &kafka_dir);
    let brokers = kafka.address().to_string();
    let mosquitto = shared(Kind::Mosquitto).address();
    let prefix = unique("mqtt-chaos");
    let ns = unique("plant");
    let config = config(dir.path(), mosquitto, &unique("gw"), &ns, "3.1.1");
    let telemetry = format!("{prefix}-telemetry");
    let topic = format!("{ns}/tele/plug-9/STATE");
    let port = mosquitto.rsplit(':').next().unwrap().to_string();
    // A plug reporting its uptime, a message per line, at QoS 1.
    let stream = |from: usize, to: usize| {
        let mut child = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-q",
                "1",
                "-t",
                &topic,
                "-l",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        for i in from..to {
            writeln!(
                stdin,
                r#"{{"POWER":"ON","Uptime":"{i}","Wifi":{{"Signal":-60}}}}"#
            )
            .unwrap();
        }
        drop(stdin);
        assert!(child.wait().unwrap().success());
    };
    let uptimes = |brokers: &str| -> BTreeSet<String> {
        readings(brokers, &telemetry)
            .into_iter()
            .filter_map(|(t, _)| t.attributes.get("uptime").cloned())
            .collect()
    };

    let mut first = gateway(&config, &brokers, &prefix);
    stream(0, 1_000);
    assert!(testkit::wait_for(Duration::from_secs(30), || uptimes(
        &brokers
    )
    .len()
        >= 200));
    // Killed with messages in hand; the broker keeps the session's unacknowledged and queued
    // messages while the gateway is away.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    stream(1_000, 2_000);
    let mut second = gateway(&config, &brokers, &prefix);
    assert!(testkit::wait_for(Duration::from_secs(60), || uptimes(
        &brokers
    )
    .len()
        == 2_000));

    // Kafka goes away while the plug keeps talking, and comes back.
    kafka.kill();
    stream(2_000, 3_000);
    let kafka = testkit::Service::start_in(Kind::Kafka, &kafka_dir);
    assert_eq!(kafka.address(), brokers);
    let whole = testkit::wait_for(Duration::from_secs(120), || {
        uptimes(&brokers).len() == 3_000
    });
    let seen = uptimes(&brokers);
    let missing: Vec<usize> = (0..3_000)
        .filter(|i| !seen.contains(&i.to_string()))
        .take(10)
        .collect();
    assert!(whole, "missing uptimes, first: {missing:?}");
    // A message sent again is the same reading again.
    let all = readings(&brokers, &telemetry);
    for (t, tenant) in &all {
        assert_eq!((tenant.as_str(), t.device_id.as_str()), ("plant", "plug-9"));
    }
    let pid = second.0.id().to_string();
    run_ok(Command::new("kill").args(["-TERM", &pid]));
    assert!(second.0.wait().unwrap().success(), "a clean stop");
}

/// Zigbee2MQTT's availability messages, Home Assistant's `unavailable` and an MQTT last will
/// (a device's client killed, the broker publishing its will) become reports on the telemetry
/// topic, and the pipeline (taking the tenant only from the gateway's header) turns them into
/// `reported_offline` at once and `resumed`; a report counts in no aggregate.
#[test]
fn availability_reports_give_reported_offline_and_resumed() {
    use schemas::{StatusTransition, TransitionReason, WindowAggregate};

    let Setup {
        brokers,
        mosquitto,
        port,
        prefix,
        ns,
        config,
        _dir,
    } = setup("home", "3.1.1");
    let _gateway = gateway(&config, brokers, &prefix);
    let t = |topic: &str| format!("{ns}/{topic}");
    publish(
        mosquitto,
        &[
            (
                &t("zigbee2mqtt/kitchen/door"),
                r#"{"battery":97,"contact":true}"#,
            ),
            (
                &t("zigbee2mqtt/kitchen/door/availability"),
                r#"{"state":"offline"}"#,
            ),
            (
                &t("zigbee2mqtt/kitchen/door/availability"),
                r#"{"state":"online"}"#,
            ),
            (&t("homeassistant/sensor/kitchen_temperature/state"), "21.5"),
            (
                &t("homeassistant/sensor/kitchen_temperature/state"),
                "unavailable",
            ),
            (&t("homeassistant/sensor/kitchen_temperature/state"), "22.0"),
            (
                &t("zigbee2mqtt/porch/motion"),
                r#"{"battery":80,"occupancy":false}"#,
            ),
        ],
    );
    // The porch sensor's client leaves a last will and dies without a word: the broker
    // publishes the will.
    let mut device = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-q", "1"])
        .args(["-i", &unique("porch"), "-t", &t("porch/commands")])
        .args(["--will-topic", &t("zigbee2mqtt/porch/motion/availability")])
        .args(["--will-payload", "offline", "--will-qos", "1"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    device.kill().unwrap();
    device.wait().unwrap();

    let telemetry = format!("{prefix}-telemetry");
    let arrived = testkit::wait_for(Duration::from_secs(30), || {
        records(brokers, &telemetry).len() >= 8
    });
    assert!(arrived, "four readings and four reports");
    run_ok(
        fleetpulse()
            .args(["pipeline", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .args(["--until-end", "-w", "1"])
            .args(["--set", &format!("topics.telemetry={telemetry}")])
            .args(["--set", "pipeline.tenant_source=header"])
            .args(derived_topics(&prefix)),
    );
    let codec = Codec::builtin();
    let mut statuses: Vec<StatusTransition> = read_all(brokers, &format!("{prefix}-status"))
        .into_iter()
        .map(|r| codec.decode(&r.value).unwrap())
        .collect();
    statuses.sort_by_key(|s| s.ts);
    let reasons = |device: &str| -> Vec<TransitionReason> {
        statuses
            .iter()
            .filter(|s| s.tenant_id == "home" && s.device_id == device)
            .map(|s| s.reason)
            .collect()
    };
    use TransitionReason::{FirstSeen, ReportedOffline, Resumed};
    assert_eq!(
        reasons("kitchen/door"),
        [FirstSeen, ReportedOffline, Resumed]
    );
    assert_eq!(
        reasons("sensor.kitchen_temperature"),
        [FirstSeen, ReportedOffline, Resumed]
    );
    assert_eq!(reasons("porch/motion"), [FirstSeen, ReportedOffline]);
    let door: i64 = read_all(brokers, &format!("{prefix}-aggregates"))
        .into_iter()
        .map(|r| codec.decode::<WindowAggregate>(&r.value).unwrap())
        .filter(|a| a.device_id == "kitchen/door" && a.window_end - a.window_start == 60_000)
        .map(|a| a.count)
        .sum();
    assert_eq!(door, 1, "the door's one reading; its reports are none");
}

/// A burst of more messages than the gateway keeps in hand (100 devices publishing at once, the
/// broker sending them all unacknowledged) is bridged whole: the gateway once stopped for good
/// there, its acknowledgements waiting for the event loop that waited for them.
#[test]
fn a_burst_larger_than_the_gateway_s_window_is_bridged_whole() {
    let Setup {
        brokers,
        port,
        prefix,
        ns,
        config,
        _dir,
        ..
    } = setup("burst", "3.1.1");
    let _gateway = gateway(&config, brokers, &prefix);
    let (devices, each) = (100, 200);
    let publishers: Vec<_> = (0..devices)
        .map(|d| {
            let mut child = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-l"])
                .args(["-t", &format!("{ns}/zigbee2mqtt/sensor-{d}")])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            for i in 0..each {
                writeln!(stdin, r#"{{"battery":90,"linkquality":{i}}}"#).unwrap();
            }
            child
        })
        .collect();
    for mut p in publishers {
        assert!(p.wait().unwrap().success());
    }
    let telemetry = format!("{prefix}-telemetry");
    let whole = testkit::wait_for(Duration::from_secs(120), || {
        readings(brokers, &telemetry).len() >= devices * each
    });
    assert!(
        whole,
        "{} of {} messages",
        readings(brokers, &telemetry).len(),
        devices * each
    );
}

/// `mqtt.protocol = "5"`: the gateway speaks MQTT 5 to Mosquitto, bridges what a device publishes
/// over MQTT 5, and its session outlives a clean stop (it never expires), so what is published
/// while the gateway is away comes when it is back.
#[test]
fn the_gateway_speaks_mqtt_5_and_its_session_outlives_a_stop() {
    let Setup {
        brokers,
        port,
        prefix,
        ns,
        config: file,
        _dir,
        ..
    } = setup("v5", "5");
    let publish_v5 = |device: &str, battery: u32| {
        run_ok(
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-V", "mqttv5"])
                .args(["-t", &format!("{ns}/zigbee2mqtt/{device}")])
                .args(["-m", &format!(r#"{{"battery":{battery}}}"#)]),
        );
    };
    let telemetry = format!("{prefix}-telemetry");
    let batteries = || -> BTreeSet<u32> {
        readings(brokers, &telemetry)
            .into_iter()
            .filter_map(|(t, _)| t.battery_pct.map(|b| b as u32))
            .collect()
    };

    let first = gateway(&file, brokers, &prefix);
    publish_v5("attic-sensor", 81);
    assert!(testkit::wait_for(Duration::from_secs(30), || batteries().contains(&81)));
    let pid = first.0.id().to_string();
    run_ok(Command::new("kill").args(["-TERM", &pid]));
    let mut first = first;
    assert!(first.0.wait().unwrap().success(), "a clean stop");
    for battery in [82, 83, 84] {
        publish_v5("attic-sensor", battery);
    }
    let _second = gateway(&file, brokers, &prefix);
    let whole = testkit::wait_for(Duration::from_secs(30), || {
        batteries() == BTreeSet::from([81, 82, 83, 84])
    });
    assert!(
        whole,
        "the session kept what came while away: {:?}",
        batteries()
    );
}
