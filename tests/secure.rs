//! fleetpulse against secured services, as production runs them: Apache Kafka over SASL_SSL
//! (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER with a token file) and over mTLS,
//! ClickHouse over HTTPS with a password user, Redis over TLS with an ACL user, Mosquitto over
//! TLS with a password user (the MQTT gateway), and the HTTP ingest serving HTTPS; every
//! certificate checked against a CA file and every secret read from a file. A wrong password or
//! an untrusted certificate ends a command at start-up with a message that names the service and
//! the cause, and no secret appears in any output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use e2e::*;
use testkit::{Kind, Service, unique, wait_for};

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

/// `said` (a command's output) names where it failed (`Kafka at HOST:PORT`) and that the
/// credentials were refused, and does not hold `secret`.
fn says_refused(said: &str, place: &str, secret: &str) {
    assert!(
        said.contains(place) && said.contains("credentials are refused"),
        "{said}"
    );
    assert!(
        !said.contains(secret),
        "the secret is in the output: {said}"
    );
}

/// `said` names where it failed and that TLS did, with `more` causes.
fn says_untrusted(said: &str, place: &str, more: &[&str]) {
    assert!(
        said.contains(place)
            && said.contains("TLS failed")
            && more.iter().all(|c| said.contains(c)),
        "{said}"
    );
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
        says_refused(
            &said,
            &format!("Kafka at {}", kafka.address()),
            "not-the-password-4711",
        );
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
    says_untrusted(
        &said,
        &format!("Kafka at {}", kafka.address()),
        &["certificate verify failed"],
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

/// The Kafka part of a configuration any service of these tests uses (SCRAM-SHA-512).
fn kafka_section(kafka: &Service) -> String {
    format!(
        "[kafka]\nbrokers = \"{}\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"{}\"\n\"ssl.ca.location\" = \"{}\"\n[kafka.property_files]\n\"sasl.password\" = \"{}\"\n",
        kafka.address(),
        kafka.user(),
        kafka.ca_file().display(),
        kafka.password_file().display()
    )
}

/// The Kafka part of a configuration that logs in with the OAUTHBEARER token in `token_file`.
fn token_section(kafka: &Service, token_file: &Path) -> String {
    format!(
        "[kafka]\nbrokers = \"{}\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"OAUTHBEARER\"\n\"sasl.oauthbearer.config\" = \"token_file={}\"\n\"ssl.ca.location\" = \"{}\"\n",
        kafka.address(),
        token_file.display(),
        kafka.ca_file().display(),
    )
}

/// An unsigned JWT (`"alg":"none"`) with `claims`: what the test broker's validator takes, as a
/// real one takes a token its identity provider signed.
fn unsigned_jwt(claims: &serde_json::Value) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        engine.encode(br#"{"alg":"none"}"#),
        engine.encode(claims.to_string())
    )
}

/// Writes `text` as a configuration file in `dir`.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join(format!("{}.toml", unique("config")));
    std::fs::write(&path, text).unwrap();
    path
}

/// A service command started with `config`: the process, the address it serves on, and the file
/// its stderr goes to.
fn serve(config: &Path, command: &[&str]) -> (Running, String, tempfile::NamedTempFile) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let (child, http) = spawn_serving(
        fleetpulse()
            .args(["--config", config.to_str().unwrap()])
            .args(command)
            .stderr(log.reopen().unwrap()),
    );
    (Running(child), http, log)
}

/// `/readyz` of `base` with curl (`https://` checked against `ca`, HTTP/2 asked for if `http2`,
/// else HTTP/1.1): the status and the HTTP version that answered.
fn readyz(base: &str, ca: Option<&Path>, http2: bool) -> (u16, String) {
    let mut curl = std::process::Command::new("curl");
    curl.args(["-s", "-o", "/dev/null", "--max-time", "5"])
        .args(["-w", "%{http_code} %{http_version}"]);
    if let Some(ca) = ca {
        curl.arg("--cacert").arg(ca);
    }
    curl.arg(if http2 { "--http2" } else { "--http1.1" });
    let out = curl.arg(format!("{base}/readyz")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (code, version) = text.split_once(' ').unwrap_or(("0", ""));
    (code.parse().unwrap_or(0), version.to_string())
}

/// Runs a service command with `config` until `/readyz` answers 200 (then stops it), or until it
/// exits; its stdout and stderr either way.
fn run_until_ready(config: &Path, command: &[&str]) -> (bool, String) {
    let (mut child, http, log) = serve(config, command);
    let ready = !http.is_empty()
        && wait_for(Duration::from_secs(60), || {
            readyz(&http, None, false).0 == 200
        });
    let _ = child.0.kill();
    let _ = child.0.wait();
    (
        ready,
        std::fs::read_to_string(log.path()).unwrap_or_default(),
    )
}

/// Runs a command that should fail at start-up; its output.
fn run_failing(config: &Path, command: &[&str]) -> String {
    let output = fleetpulse()
        .args(["--config", config.to_str().unwrap()])
        .args(command)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    text(&output)
}

#[test]
fn the_clickhouse_sink_logs_in_over_https_and_says_why_it_cannot() {
    let kafka = kafka();
    let clickhouse = Service::start_secure(Kind::ClickHouse);
    let dir = tempfile::tempdir().unwrap();
    let section = |login: &str, ca: bool| {
        let ca = if ca {
            format!("ca_file = \"{}\"\n", clickhouse.ca_file().display())
        } else {
            String::new()
        };
        format!(
            "{}[clickhouse]\nurl = \"{}\"\nuser = \"{}\"\nlisten = \"127.0.0.1:0\"\ndatabase = \"{}\"\n{login}{ca}",
            kafka_section(kafka),
            clickhouse.address(),
            clickhouse.user(),
            unique("secure").replace('-', "_"),
        )
    };
    let password = clickhouse.password();
    let good = write_config(
        dir.path(),
        &section(
            &format!(
                "password_file = \"{}\"\n",
                clickhouse.password_file().display()
            ),
            true,
        ),
    );
    let (ready, log) = run_until_ready(&good, &["sink", "clickhouse"]);
    assert!(ready, "the sink never became ready: {log}");
    assert!(!log.contains(&password), "the password is in the log");

    let wrong = write_config(dir.path(), &section("password = \"not-it-4711\"\n", true));
    let said = run_failing(&wrong, &["sink", "clickhouse"]);
    says_refused(
        &said,
        &format!("ClickHouse at {}", clickhouse.address()),
        "not-it-4711",
    );

    let untrusted = write_config(
        dir.path(),
        &section(
            &format!(
                "password_file = \"{}\"\n",
                clickhouse.password_file().display()
            ),
            false,
        ),
    );
    let said = run_failing(&untrusted, &["sink", "clickhouse"]);
    says_untrusted(
        &said,
        &format!("ClickHouse at {}", clickhouse.address()),
        &[],
    );
    assert!(!said.contains(&password), "{said}");
}

#[test]
fn the_bridge_logs_in_to_redis_over_tls_and_says_why_it_cannot() {
    let kafka = kafka();
    let redis = Service::start_secure(Kind::Redis);
    let dir = tempfile::tempdir().unwrap();
    // rediss://fleet@127.0.0.1:PORT: the user in the URL, the password from a file.
    let url = redis
        .address()
        .replace("rediss://", &format!("rediss://{}@", redis.user()));
    let secret_file = dir.path().join("jwt-secret");
    std::fs::write(
        &secret_file,
        "Xq3vL9pR2mK7tW4zB8nY1cF6hJ0dG5sA3eU9iO2kT7rV4wQ8\n",
    )
    .unwrap();
    let section = |login: &str, ca: bool| {
        let ca = if ca {
            format!("redis_ca_file = \"{}\"\n", redis.ca_file().display())
        } else {
            String::new()
        };
        format!(
            "{}[bridge]\nlisten = \"127.0.0.1:0\"\njwt_secret_file = \"{}\"\nredis_url = \"{url}\"\n{login}{ca}",
            kafka_section(kafka),
            secret_file.display(),
        )
    };
    // The pipeline, over SASL_SSL too, makes the derived topics the bridge waits for.
    let fleet = dir.path().join("fleet.ndjson");
    run_ok(
        fleetpulse()
            .args(["generate", "--output", fleet.to_str().unwrap()])
            .args(["--events", "500", "--devices", "20", "--no-progress"]),
    );
    let pipeline_config = write_config(dir.path(), &kafka_section(kafka));
    run_ok(
        fleetpulse()
            .args(["--config", pipeline_config.to_str().unwrap()])
            .args(["pipeline", "--input", fleet.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0"]),
    );
    let password = redis.password();
    let good = write_config(
        dir.path(),
        &section(
            &format!(
                "redis_password_file = \"{}\"\n",
                redis.password_file().display()
            ),
            true,
        ),
    );
    let (ready, log) = run_until_ready(&good, &["bridge"]);
    assert!(ready, "the bridge never became ready: {log}");
    assert!(!log.contains(&password), "the password is in the log");

    // Served over TLS itself: https and wss with a certificate the client checks.
    let tls = redis.dir().join("tls");
    let served = write_config(
        dir.path(),
        &format!(
            "{}tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            section(
                &format!(
                    "redis_password_file = \"{}\"\n",
                    redis.password_file().display()
                ),
                true,
            ),
            tls.join("server.pem").display(),
            tls.join("server.key").display()
        ),
    );
    let (_bridge, base, log) = serve(&served, &["bridge"]);
    assert!(base.starts_with("https://"), "{base}");
    let ca = redis.ca_file();
    assert!(
        wait_for(Duration::from_secs(60), || readyz(&base, Some(&ca), false)
            .0
            == 200),
        "never ready over https: {}",
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );
    assert_eq!(
        readyz(&base, Some(&ca), true),
        (200, "2".to_string()),
        "HTTP/2"
    );
    assert_eq!(readyz(&base, Some(&ca), false).1, "1.1", "HTTP/1.1");
    assert_eq!(
        readyz(&base, None, false).0,
        0,
        "curl trusts only the test CA"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let snapshot = wss_snapshot(
            &base,
            &ca,
            "Xq3vL9pR2mK7tW4zB8nY1cF6hJ0dG5sA3eU9iO2kT7rV4wQ8",
        )
        .await;
        assert_eq!(snapshot.unwrap()["type"], "snapshot");
        let untrusting = wss_snapshot(&base, Path::new("/nonexistent"), "x").await;
        assert!(
            untrusting.is_err_and(|e| e.contains("certificate verify failed")),
            "a client without the CA must refuse the bridge"
        );
    });
    let shown = fleetpulse()
        .args(["--config", good.to_str().unwrap(), "config"])
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", text(&shown));
    for secret in [
        password.as_str(),
        "Xq3vL9pR2mK7tW4zB8nY1cF6hJ0dG5sA3eU9iO2kT7rV4wQ8",
    ] {
        assert!(!text(&shown).contains(secret), "`config` shows a secret");
    }

    let wrong = write_config(
        dir.path(),
        &section("redis_password = \"not-it-4711\"\n", true),
    );
    let said = run_failing(&wrong, &["bridge"]);
    says_refused(&said, &format!("Redis at {url}"), "not-it-4711");

    let untrusted = write_config(
        dir.path(),
        &section(
            &format!(
                "redis_password_file = \"{}\"\n",
                redis.password_file().display()
            ),
            false,
        ),
    );
    let said = run_failing(&untrusted, &["bridge"]);
    says_untrusted(&said, &format!("Redis at {url}"), &[]);
}

/// Connects to `base`'s `/ws` over TLS, trusting only `ca` (no file: no CA at all), subscribes to
/// status and returns the snapshot, or why it could not.
async fn wss_snapshot(base: &str, ca: &Path, secret: &str) -> Result<serde_json::Value, String> {
    wss_snapshot_of(base, ca, secret, "t1").await
}

/// [`wss_snapshot`] for a client of `tenant`.
async fn wss_snapshot_of(
    base: &str,
    ca: &Path,
    secret: &str,
    tenant: &str,
) -> Result<serde_json::Value, String> {
    let mut tls = native_tls::TlsConnector::builder();
    tls.disable_built_in_roots(true);
    if let Ok(pem) = std::fs::read(ca) {
        tls.add_root_certificate(native_tls::Certificate::from_pem(&pem).unwrap());
    }
    let connector = tokio_tungstenite::Connector::NativeTls(tls.build().unwrap());
    let (_, snapshot) = e2e::ws::subscribed(base, tenant, secret, Some(connector)).await?;
    Ok(snapshot)
}

/// The derived topics of a run, read back with `fleetpulse tail` (each record as JSON, sorted):
/// what a run's consumers see, whatever the partitions' interleaving.
fn derived_records(
    config: Option<&Path>,
    brokers: &str,
    prefix: &str,
    counts: &serde_json::Value,
) -> Vec<Vec<String>> {
    ["aggregates", "anomalies", "status", "dlq", "lastseen"]
        .iter()
        .zip([
            "aggregates",
            "anomalies",
            "status",
            "dead_letters",
            "last_seen",
        ])
        .map(|(kind, count)| {
            let expected = counts[count].as_u64().unwrap();
            let mut tail = fleetpulse();
            if let Some(config) = config {
                tail.args(["--config", config.to_str().unwrap()]);
            }
            let output = tail
                .args(derived_topics(prefix))
                .args([
                    "tail",
                    "--brokers",
                    brokers,
                    "--topic",
                    &format!("{prefix}-{kind}"),
                ])
                .args(["--from-beginning", "--limit", &expected.to_string()])
                .args(["--idle-exit-ms", "20000"])
                .output()
                .unwrap();
            assert!(output.status.success(), "{kind}: {}", text(&output));
            let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["record"].to_string()
                })
                .collect();
            assert_eq!(
                lines.len() as u64,
                expected,
                "{kind}: every record read back"
            );
            lines.sort();
            // A last-seen time may be told twice, as arrival timing has it (docs/decisions.md).
            if *kind == "lastseen" {
                lines.dedup();
            }
            lines
        })
        .collect()
}

/// One run of the system on `brokers`: the fleet generated into a telemetry topic of `prefix`,
/// then `pipeline --until-end`; the records the pipeline counted, by kind.
fn generate_and_process(config: Option<&Path>, brokers: &str, prefix: &str) -> serde_json::Value {
    let with_config = |command: &mut std::process::Command| {
        if let Some(config) = config {
            command.args(["--config", config.to_str().unwrap()]);
        }
        command.args(["--set", &format!("topics.telemetry={prefix}-telemetry")]);
        command.args(derived_topics(prefix));
    };
    let counts = |mut summary: serde_json::Value| {
        summary.as_object_mut().unwrap().remove("seconds");
        summary
    };
    let mut generate = fleetpulse();
    with_config(&mut generate);
    run_ok(generate.args(["generate", "--brokers", brokers]).args([
        "--events",
        "6000",
        "--devices",
        "60",
        "--tenants",
        "2",
        "--seed",
        "11",
        "--start-ms",
        &START_MS.to_string(),
        "--no-progress",
    ]));
    let mut pipeline = fleetpulse();
    with_config(&mut pipeline);
    let output = run_ok(
        pipeline
            .args(["pipeline", "--brokers", brokers, "--until-end"])
            .args(["--listen", "127.0.0.1:0"]),
    );
    counts(summary(&output.stdout))
}

#[test]
fn an_oauthbearer_token_from_a_file_logs_every_client_in() {
    let kafka = kafka();
    let dir = tempfile::tempdir().unwrap();
    let now = ws_bridge::auth::now();
    let token =
        unsigned_jwt(&serde_json::json!({"sub": kafka.user(), "iat": now, "exp": now + 3600}));
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let scram = write_config(dir.path(), &kafka_section(kafka));
    let bearer = write_config(dir.path(), &token_section(kafka, &token_file));
    let prefix = unique("bearer");
    let telemetry = format!("{prefix}-telemetry");
    let without_last_seen = |mut counts: serde_json::Value| {
        counts.as_object_mut().unwrap().remove("last_seen");
        counts
    };

    // Over SCRAM the topics are made; the pipeline over OAUTHBEARER then reads the same readings
    // and counts the same records.
    let over_scram = generate_and_process(Some(&scram), kafka.address(), &prefix);
    let mut pipeline = fleetpulse();
    pipeline
        .args(["--config", bearer.to_str().unwrap()])
        .args(["--set", &format!("topics.telemetry={telemetry}")])
        .args(derived_topics(&prefix))
        .args(["pipeline", "--brokers", kafka.address(), "--until-end"])
        .args(["--listen", "127.0.0.1:0"]);
    let processed = run_ok(&mut pipeline);
    let mut over_token = summary(&processed.stdout);
    over_token.as_object_mut().unwrap().remove("seconds");
    assert_eq!(
        without_last_seen(over_scram.clone()),
        without_last_seen(over_token),
        "the pipeline's counts over SCRAM and over OAUTHBEARER"
    );

    // The generator and a consumer over OAUTHBEARER.
    let sent = generate(&bearer, kafka.address(), &telemetry, 300);
    assert!(sent.status.success(), "{}", text(&sent));
    assert_eq!(summary(&sent.stdout)["events"], 300);
    let read = tail(&bearer, kafka.address(), &telemetry, 6300);
    assert!(read.status.success(), "{}", text(&read));
    assert_eq!(String::from_utf8_lossy(&read.stdout).lines().count(), 6300);
    let shown = fleetpulse()
        .args(["--config", bearer.to_str().unwrap(), "config"])
        .output()
        .unwrap();
    for output in [&processed, &sent, &read, &shown] {
        assert!(!text(output).contains(&token), "the token is in the output");
    }

    // A topic that is not there is made over OAUTHBEARER too (the admin client is handed the
    // token, since rust-rdkafka never polls it for one).
    let fresh = unique("bearer-new");
    let made = generate(&bearer, kafka.address(), &fresh, 10);
    assert!(made.status.success(), "{}", text(&made));
    let read = tail(&bearer, kafka.address(), &fresh, 10);
    assert_eq!(String::from_utf8_lossy(&read.stdout).lines().count(), 10);
    assert!(!text(&made).contains(&token), "the token is in the output");

    // An expired token is said at start-up, with its file, before any client waits for it.
    let expired_file = dir.path().join("expired");
    let expired = unsigned_jwt(&serde_json::json!({"sub": kafka.user(), "exp": now - 60}));
    std::fs::write(&expired_file, &expired).unwrap();
    let config = write_config(dir.path(), &token_section(kafka, &expired_file));
    let output = generate(&config, kafka.address(), &telemetry, 10);
    assert!(!output.status.success());
    let said = text(&output);
    assert!(
        said.contains("expired") && said.contains(expired_file.to_str().unwrap()),
        "{said}"
    );
    assert!(!said.contains(&expired), "the token is in the output");

    // A token the broker refuses (it names no subject) ends the command saying so.
    let refused_file = dir.path().join("refused");
    let refused = unsigned_jwt(&serde_json::json!({"exp": now + 3600}));
    std::fs::write(&refused_file, &refused).unwrap();
    let config = write_config(dir.path(), &token_section(kafka, &refused_file));
    let output = generate(&config, kafka.address(), &telemetry, 10);
    assert!(!output.status.success());
    let said = text(&output);
    says_refused(&said, &format!("Kafka at {}", kafka.address()), &refused);
}

#[test]
fn the_system_over_secured_services_gives_what_it_gives_over_plain_ones() {
    let secure = kafka();
    let plain = testkit::shared(Kind::Kafka);
    let dir = tempfile::tempdir().unwrap();
    let kafka_config = write_config(dir.path(), &kafka_section(secure));
    let prefix = unique("e2e");

    let over_plain = generate_and_process(None, plain.address(), &prefix);
    let over_tls = generate_and_process(Some(&kafka_config), secure.address(), &prefix);
    let without_last_seen = |counts: &serde_json::Value| {
        let mut counts = counts.clone();
        counts.as_object_mut().unwrap().remove("last_seen");
        counts
    };
    assert_eq!(
        without_last_seen(&over_plain),
        without_last_seen(&over_tls),
        "the pipeline's counts"
    );
    assert!(over_tls["aggregates"].as_u64().unwrap() > 0, "{over_tls}");
    let plain_records = derived_records(None, plain.address(), &prefix, &over_plain);
    let tls_records = derived_records(Some(&kafka_config), secure.address(), &prefix, &over_tls);
    for (kind, (p, t)) in ["aggregates", "anomalies", "status", "dlq", "lastseen"]
        .iter()
        .zip(plain_records.iter().zip(&tls_records))
    {
        let first = p.iter().zip(t).find(|(a, b)| a != b);
        assert!(p == t, "{kind} differ, first: {first:?}");
    }

    // The sink and the bridge log in to Kafka with an OAUTHBEARER token (the topics exist).
    let now = ws_bridge::auth::now();
    let token_file = dir.path().join("token");
    std::fs::write(
        &token_file,
        unsigned_jwt(&serde_json::json!({"sub": secure.user(), "exp": now + 3600})),
    )
    .unwrap();
    let bearer = token_section(secure, &token_file);

    // The sink writes them into ClickHouse over HTTPS with a password.
    let clickhouse = Service::start_secure(Kind::ClickHouse);
    let database = unique("e2e").replace('-', "_");
    let sink_config = write_config(
        dir.path(),
        &format!(
            "{}[clickhouse]\nurl = \"{}\"\nuser = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\nlisten = \"127.0.0.1:0\"\ndatabase = \"{database}\"\ngroup_id = \"{database}\"\n",
            bearer,
            clickhouse.address(),
            clickhouse.user(),
            clickhouse.password_file().display(),
            clickhouse.ca_file().display(),
        ),
    );
    let mut sink_command = vec!["sink", "clickhouse"];
    let topic_flags = derived_topics(&prefix);
    sink_command.extend(topic_flags.iter().map(String::as_str));
    let (_sink, _, sink_log) = serve(&sink_config, &sink_command);
    let count = |table: &str| -> u64 {
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", "--cacert"])
            .arg(clickhouse.ca_file())
            .args([
                "-u",
                &format!("{}:{}", clickhouse.user(), clickhouse.password()),
            ])
            .arg(format!(
                "{}/?query=SELECT+count()+FROM+{database}.{table}",
                clickhouse.address()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let tables = [
        ("device_aggregates", "aggregates"),
        ("device_anomalies", "anomalies"),
        ("device_status", "status"),
        ("dead_letters", "dead_letters"),
    ];
    assert!(
        wait_for(Duration::from_secs(120), || tables.iter().all(
            |(table, kind)| count(table) == over_tls[kind].as_u64().unwrap()
        )),
        "ClickHouse never held every record: {:?}; {}",
        tables.map(|(t, _)| count(t)),
        std::fs::read_to_string(sink_log.path()).unwrap_or_default()
    );

    // The bridge reads them over SASL_SSL, keeps them in Redis over TLS and serves them on wss.
    let redis = Service::start_secure(Kind::Redis);
    let tls = redis.dir().join("tls");
    let bridge_config = write_config(
        dir.path(),
        &format!(
            "{}[bridge]\nlisten = \"127.0.0.1:0\"\njwt_secret = \"Pz8rT3vK6mW1qX9nB4yL7cH2fJ5dG0sA8eU3iO6kR1tV9wQ4\"\nredis_url = \"{}\"\nredis_password_file = \"{}\"\nredis_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n# The generated fleet's records are from years ago: kept, not let go as silent.\ndevice_retention_ms = 315360000000\n",
            bearer,
            redis
                .address()
                .replace("rediss://", &format!("rediss://{}@", redis.user())),
            redis.password_file().display(),
            redis.ca_file().display(),
            tls.join("server.pem").display(),
            tls.join("server.key").display(),
        ),
    );
    let mut bridge_command = vec!["bridge"];
    bridge_command.extend(topic_flags.iter().map(String::as_str));
    let (_bridge, base, bridge_log) = serve(&bridge_config, &bridge_command);
    let ca = redis.ca_file();
    assert!(
        wait_for(Duration::from_secs(60), || readyz(&base, Some(&ca), true).0
            == 200),
        "the bridge never became ready: {}",
        std::fs::read_to_string(bridge_log.path()).unwrap_or_default()
    );
    // Every device that has a status in the topic is in its tenant's snapshot.
    let status: Vec<serde_json::Value> = tls_records[2]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for tenant in ["tenant-00", "tenant-01"] {
        let mut want: Vec<&str> = status
            .iter()
            .filter(|s| s["tenant_id"] == tenant)
            .map(|s| s["device_id"].as_str().unwrap())
            .collect();
        want.sort();
        want.dedup();
        let snapshot = runtime
            .block_on(wss_snapshot_of(
                &base,
                &ca,
                "Pz8rT3vK6mW1qX9nB4yL7cH2fJ5dG0sA8eU3iO6kR1tV9wQ4",
                tenant,
            ))
            .unwrap();
        let mut got: Vec<&str> = snapshot["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["device_id"].as_str().unwrap())
            .collect();
        got.sort();
        assert!(
            !want.is_empty(),
            "{tenant} has devices: {:?}",
            status.first()
        );
        assert_eq!(got, want, "{tenant}'s snapshot over wss");
    }
}

#[test]
fn the_registry_serves_https_and_takes_registrations_only_with_its_token() {
    let kafka = kafka();
    let dir = tempfile::tempdir().unwrap();
    let tls = kafka.dir().join("tls");
    let token_file = dir.path().join("registry-token");
    std::fs::write(&token_file, "registry-write-token-4711\n").unwrap();
    let server_config = write_config(
        dir.path(),
        &format!(
            "[registry]\nlisten = \"127.0.0.1:0\"\nwrite_token_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            token_file.display(),
            tls.join("server.pem").display(),
            tls.join("server.key").display()
        ),
    );
    let mut child = fleetpulse()
        .args(["--config", server_config.to_str().unwrap(), "registry"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _registry = Running(child);
    let url = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .find_map(|l| l.split("listening on ").nth(1).map(str::to_string))
        .expect("the registry's address");
    assert!(url.starts_with("https://"), "{url}");

    // Reads are open, over TLS checked against the CA.
    let subjects = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(kafka.ca_file())
        .arg(format!("{url}/subjects"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&subjects.stdout), "200");

    let client = |extra: &str| {
        write_config(
            dir.path(),
            &format!(
                "{}[schema_registry]\nurl = \"{url}\"\n{extra}",
                kafka_section(kafka)
            ),
        )
    };
    let generate = |config: &Path| {
        fleetpulse()
            .args(["--config", config.to_str().unwrap()])
            .args(["generate", "--topic", &unique("registry")])
            .args(["--events", "50", "--devices", "5", "--no-progress"])
            .output()
            .unwrap()
    };
    let ca = format!("ca_file = \"{}\"\n", kafka.ca_file().display());
    let with_token = client(&format!("{ca}token_file = \"{}\"\n", token_file.display()));
    let registered = generate(&with_token);
    assert!(registered.status.success(), "{}", text(&registered));
    assert!(!text(&registered).contains("registry-write-token-4711"));

    let without_token = generate(&client(&ca));
    assert!(!without_token.status.success(), "{}", text(&without_token));
    assert!(
        text(&without_token).contains("write token"),
        "{}",
        text(&without_token)
    );

    let untrusted = generate(&client(&format!(
        "token_file = \"{}\"\n",
        token_file.display()
    )));
    assert!(!untrusted.status.success(), "{}", text(&untrusted));
    assert!(
        text(&untrusted).contains(&format!("schema registry at {url}: TLS failed")),
        "{}",
        text(&untrusted)
    );

    let shown = fleetpulse()
        .args(["--config", with_token.to_str().unwrap(), "config"])
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", text(&shown));
    assert!(!text(&shown).contains("registry-write-token-4711"));
    let shown = fleetpulse()
        .args(["--config", server_config.to_str().unwrap(), "config"])
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", text(&shown));
    assert!(!text(&shown).contains("registry-write-token-4711"));
}

/// `fleetpulse mqtt` against Mosquitto that takes only TLS and a password: it logs in with the
/// password from a file and the broker checked against the CA, and bridges what a device
/// publishes; a wrong password or a broker it cannot trust ends it at start-up saying so, with
/// no secret in its output.
#[test]
fn the_mqtt_gateway_logs_in_over_tls_and_says_why_it_cannot() {
    let kafka = kafka();
    let mosquitto = Service::start_secure(Kind::Mosquitto);
    let url = mosquitto.address().to_string();
    assert!(url.starts_with("mqtts://"), "{url}");
    let dir = tempfile::tempdir().unwrap();
    let (ns, prefix) = (unique("secure-home"), unique("mqtt-secure"));
    let section = |login: &str, ca: bool| {
        let ca = if ca {
            format!("ca_file = \"{}\"\n", mosquitto.ca_file().display())
        } else {
            String::new()
        };
        format!(
            "{}[mqtt]\nurl = \"{url}\"\nclient_id = \"{}\"\nlisten = \"127.0.0.1:0\"\nusername = \"{}\"\n{login}{ca}\n[[mqtt.mappings]]\npreset = \"zigbee2mqtt\"\nbase = \"{ns}/zigbee2mqtt\"\ntenant = \"home\"\n\n[topics]\ntelemetry = \"{prefix}-telemetry\"\ndlq = \"{prefix}-dlq\"\n",
            kafka_section(kafka),
            unique("gw"),
            mosquitto.user(),
        )
    };
    let password = mosquitto.password();
    let good = write_config(
        dir.path(),
        &section(
            &format!(
                "password_file = \"{}\"\n",
                mosquitto.password_file().display()
            ),
            true,
        ),
    );
    let (_gateway, http, log) = serve(&good, &["mqtt"]);
    assert!(
        wait_for(Duration::from_secs(60), || readyz(&http, None, false).0
            == 200),
        "never ready: {}",
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );
    let port = url.rsplit(':').next().unwrap();
    run_ok(
        std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", port, "-q", "1"])
            .arg("--cafile")
            .arg(mosquitto.ca_file())
            .args(["-u", mosquitto.user(), "-P", &password])
            .args(["-t", &format!("{ns}/zigbee2mqtt/front-door")])
            .args(["-m", r#"{"battery":91,"contact":true}"#]),
    );
    let tailed = tail(
        &good,
        &brokers(kafka, Login::Sasl("SCRAM-SHA-512", &kafka.password_file())),
        &format!("{prefix}-telemetry"),
        1,
    );
    assert!(text(&tailed).contains("front-door"), "{}", text(&tailed));
    let logged = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(!logged.contains(&password), "the password is in the log");

    let place = format!("MQTT broker at {url}");
    let wrong = write_config(dir.path(), &section("password = \"not-it-4711\"\n", true));
    says_refused(&run_failing(&wrong, &["mqtt"]), &place, "not-it-4711");
    let untrusted = write_config(
        dir.path(),
        &section(
            &format!(
                "password_file = \"{}\"\n",
                mosquitto.password_file().display()
            ),
            false,
        ),
    );
    says_untrusted(&run_failing(&untrusted, &["mqtt"]), &place, &[]);
}

/// `fleetpulse ingest` serving HTTPS into a Kafka over SASL_SSL: a reading POSTed under an API
/// key, with the server checked against the CA, is accepted and on the topic; a client that does
/// not trust the CA, or speaks plain HTTP, gets nothing in.
#[test]
fn ingest_serves_https_and_writes_to_a_secured_kafka() {
    use std::io::BufRead as _;

    let kafka = kafka();
    let dir = tempfile::tempdir().unwrap();
    let tls = kafka.dir().join("tls");
    let keys = dir.path().join("keys.json");
    let topic = unique("ingest-tls");
    let config = write_config(
        dir.path(),
        &format!(
            "{}[ingest]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nkeys_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\n[topics]\ntelemetry = \"{topic}\"\n",
            kafka_section(kafka),
            keys.display(),
            tls.join("server.pem").display(),
            tls.join("server.key").display()
        ),
    );
    let created = run_ok(
        fleetpulse()
            .args(["--config", config.to_str().unwrap()])
            .args(["api-key", "create", "--tenant", "acme"]),
    );
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let mut child = fleetpulse()
        .args(["--config", config.to_str().unwrap(), "ingest"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _ingest = Running(child);
    let url = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|said| said["listening"] == "ingest")
        .and_then(|said| said["url"].as_str().map(str::to_string))
        .expect("ingest says where it listens");
    assert!(url.starts_with("https://"), "{url}");
    let line = r#"{"tenant_id":"acme","device_id":"tls-sensor-1","ts":1700000000000,"ok":true,"battery_pct":77.0}"#;
    let post = |ca: Option<&Path>, url: &str| {
        let mut curl = std::process::Command::new("curl");
        // The answer waits for Kafka's acknowledgement: the producer's first SASL_SSL login
        // takes seconds on a busy machine (a 10 s limit once ran out in CI).
        curl.args(["-s", "--max-time", "60", "-X", "POST"])
            .args(["-H", &format!("Authorization: Bearer {key}")])
            .args([
                "-H",
                "Content-Type: application/x-ndjson",
                "--data-binary",
                line,
            ])
            .args(["-w", "\n%{http_code}"]);
        if let Some(ca) = ca {
            curl.arg("--cacert").arg(ca);
        }
        let out = curl.arg(format!("{url}/v1/telemetry")).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let answer = post(Some(&kafka.ca_file()), &url);
    let (body, status) = answer.rsplit_once('\n').unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    assert_eq!(
        (status, &body["accepted"]),
        ("200", &serde_json::json!(1)),
        "{answer}"
    );
    assert!(
        post(None, &url).ends_with("\n000"),
        "curl trusts only the test CA"
    );
    let plain = url.replace("https://", "http://");
    assert!(
        !post(Some(&kafka.ca_file()), &plain).ends_with("\n200"),
        "plain HTTP gets nothing in"
    );
    let tailed = tail(
        &config,
        &brokers(kafka, Login::Sasl("SCRAM-SHA-512", &kafka.password_file())),
        &topic,
        1,
    );
    assert!(text(&tailed).contains("tls-sensor-1"), "{}", text(&tailed));
}
