//! fleetpulse against secured services, as production runs them: Apache Kafka over SASL_SSL
//! (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and over mTLS, with the broker's certificate checked
//! against a CA file and every secret read from a file. A wrong password or an untrusted
//! certificate ends a command at start-up with a message that names the service and the cause,
//! and no secret appears in any output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use support::*;
use testkit::{Kind, Service, unique};

/// One secured Kafka for the tests of this binary (they keep to topics of their own).
fn kafka() -> &'static Service {
    static KAFKA: OnceLock<Service> = OnceLock::new();
    KAFKA.get_or_init(|| Service::start_secure(Kind::Kafka))
}

/// How a client proves who it is.
#[derive(Clone, Copy, Debug)]
enum Login<'a> {
    /// SASL over TLS with this mechanism and password file.
    Sasl(&'a str, &'a Path),
    /// A client certificate (mTLS).
    Certificate,
}

/// A configuration file for `kafka` in `dir`: the password only as a file's name, the broker
/// checked against `ca` (none: the system's CAs, which do not know the test CA).
fn config_file(dir: &Path, kafka: &Service, login: Login<'_>, ca: Option<&Path>) -> PathBuf {
    let mut text = String::from("[kafka.properties]\n");
    match login {
        Login::Sasl(mechanism, _) => text.push_str(&format!(
            "\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"{mechanism}\"\n\"sasl.username\" = \"{}\"\n",
            kafka.user()
        )),
        Login::Certificate => {
            let (cert, key) = kafka.client_cert();
            text.push_str(&format!(
                "\"security.protocol\" = \"SSL\"\n\"ssl.certificate.location\" = \"{}\"\n\"ssl.key.location\" = \"{}\"\n",
                cert.display(),
                key.display()
            ));
        }
    }
    if let Some(ca) = ca {
        text.push_str(&format!("\"ssl.ca.location\" = \"{}\"\n", ca.display()));
    }
    if let Login::Sasl(_, password) = login {
        text.push_str(&format!(
            "[kafka.property_files]\n\"sasl.password\" = \"{}\"\n",
            password.display()
        ));
    }
    let path = dir.join(format!("{}.toml", unique("kafka")));
    std::fs::write(&path, text).unwrap();
    path
}

fn brokers(kafka: &Service, login: Login<'_>) -> String {
    match login {
        Login::Sasl(..) => kafka.address().to_string(),
        Login::Certificate => kafka.mtls_address(),
    }
}

/// `fleetpulse generate` of `events` readings into `topic`, at debug level (so a secret that
/// reaches any log line shows).
fn generate(config: &Path, brokers: &str, topic: &str, events: u64) -> Output {
    fleetpulse()
        .env("RUST_LOG", "debug")
        .args(["--config", config.to_str().unwrap()])
        .args(["--set", "log.level=debug"])
        .args(["generate", "--brokers", brokers, "--topic", topic])
        .args(["--events", &events.to_string(), "--devices", "20"])
        .arg("--no-progress")
        .output()
        .expect("fleetpulse runs")
}

/// `fleetpulse tail` of `topic` from its beginning until `limit` records.
fn tail(config: &Path, brokers: &str, topic: &str, limit: u64) -> Output {
    fleetpulse()
        .args(["--config", config.to_str().unwrap()])
        .args(["tail", "--brokers", brokers, "--topic", topic])
        .args(["--from-beginning", "--limit", &limit.to_string()])
        .args(["--idle-exit-ms", "30000"])
        .output()
        .expect("fleetpulse runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn every_kafka_login_carries_records_and_no_secret_is_printed() {
    let kafka = kafka();
    let dir = tempfile::tempdir().unwrap();
    let password_file = kafka.password_file();
    let password = kafka.password();
    let ca = kafka.ca_file();
    for login in [
        Login::Sasl("PLAIN", &password_file),
        Login::Sasl("SCRAM-SHA-256", &password_file),
        Login::Sasl("SCRAM-SHA-512", &password_file),
        Login::Certificate,
    ] {
        let config = config_file(dir.path(), kafka, login, Some(&ca));
        let brokers = brokers(kafka, login);
        let topic = unique("secure");
        let sent = generate(&config, &brokers, &topic, 300);
        assert!(sent.status.success(), "{login:?}: {}", text(&sent));
        assert_eq!(summary(&sent.stdout)["events"], 300, "{login:?}");
        let read = tail(&config, &brokers, &topic, 300);
        assert!(read.status.success(), "{login:?}: {}", text(&read));
        let lines = String::from_utf8_lossy(&read.stdout).lines().count();
        assert_eq!(lines, 300, "{login:?}: every reading read back");
        for output in [&sent, &read] {
            assert!(
                !text(output).contains(&password),
                "{login:?}: the password is in the output"
            );
        }
        let shown = fleetpulse()
            .args(["--config", config.to_str().unwrap(), "config"])
            .output()
            .unwrap();
        assert!(shown.status.success(), "{}", text(&shown));
        assert!(
            !text(&shown).contains(&password),
            "`config` shows the password"
        );
    }
}

#[test]
fn a_wrong_kafka_password_fails_at_start_up_saying_so() {
    let kafka = kafka();
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password-4711\n").unwrap();
    for mechanism in ["PLAIN", "SCRAM-SHA-256"] {
        let config = config_file(
            dir.path(),
            kafka,
            Login::Sasl(mechanism, &wrong),
            Some(&kafka.ca_file()),
        );
        let started = std::time::Instant::now();
        let output = generate(&config, kafka.address(), &unique("secure"), 10);
        let said = text(&output);
        assert!(!output.status.success(), "{mechanism}: {said}");
        assert!(
            said.contains(&format!("Kafka at {}", kafka.address()))
                && said.contains("credentials are refused"),
            "{mechanism}: {said}"
        );
        assert!(!said.contains("not-the-password-4711"), "{said}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{mechanism}: a refusal ends the command, it does not retry for ever"
        );
    }
}

#[test]
fn an_untrusted_broker_certificate_fails_at_start_up_saying_so() {
    let kafka = kafka();
    let dir = tempfile::tempdir().unwrap();
    let password_file = kafka.password_file();
    let config = config_file(
        dir.path(),
        kafka,
        Login::Sasl("SCRAM-SHA-256", &password_file),
        None,
    );
    let output = tail(&config, kafka.address(), &unique("secure"), 1);
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains(&format!("Kafka at {}", kafka.address()))
            && said.contains("TLS failed")
            && said.contains("certificate verify failed"),
        "{said}"
    );
}

#[test]
fn an_unreadable_secret_file_is_named_at_start_up() {
    let kafka = kafka();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-secret");
    let config = config_file(
        dir.path(),
        kafka,
        Login::Sasl("PLAIN", &missing),
        Some(&kafka.ca_file()),
    );
    let output = fleetpulse()
        .args(["--config", config.to_str().unwrap(), "config"])
        .output()
        .unwrap();
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("kafka.property_files.\"sasl.password\"") && said.contains("no-such-secret"),
        "{said}"
    );
}
