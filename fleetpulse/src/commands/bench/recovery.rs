//! The recovery half of `fleetpulse bench pipeline`: how long a restarted job takes to catch up.
//! A `fleetpulse pipeline` process with a checkpoint directory reads a fleet's first readings
//! and is stopped with SIGTERM (the upgrade path: it writes a checkpoint holding every device);
//! a backlog of further readings is produced; a new process resumes from the checkpoint and is
//! timed until it has read the backlog to its end (`--until-end`).

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use generator::{GeneratorConfig, KafkaSink};
use schemas::Codec;

use crate::config::Config;

/// Produces `fleet` into `topic`.
pub(crate) fn produce(config: &Config, topic: &str, fleet: &GeneratorConfig) -> anyhow::Result<()> {
    let mut sink = KafkaSink::new(
        config.brokers()?.as_str(),
        topic,
        &config.kafka.properties,
        Codec::builtin(),
        fleet.format,
    )?;
    let stop = AtomicBool::new(false);
    generator::run(fleet, &mut sink, &stop, false)?;
    Ok(())
}

/// `fleetpulse pipeline` on `topic` with checkpoints in `dir`, its derived topics named after
/// `id`, and the address of its HTTP endpoints.
fn pipeline(
    config: &Config,
    topic: &str,
    id: &str,
    dir: &Path,
    extra: &[&str],
) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["pipeline", "--listen", "127.0.0.1:0"])
        .args(["--brokers", config.brokers()?.as_str()])
        .arg("--checkpoint-dir")
        .arg(dir)
        .args(["--set", &format!("topics.telemetry={topic}")])
        .args(
            ["aggregates", "anomalies", "status", "dlq", "lastseen"]
                .iter()
                .flat_map(|k| ["--set".to_string(), format!("topics.{k}={id}-{k}")]),
        )
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run fleetpulse pipeline")?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let address = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("metrics on http://").nth(1).map(str::to_string))
        .context("the pipeline did not say where its metrics are")?;
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, address))
}

/// The job's `fleetpulse_pipeline_records_in_total`, read from its `/metrics`.
fn records_in(address: &str) -> u64 {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return 0;
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    if stream.write_all(request.as_bytes()).is_err() || stream.read_to_string(&mut text).is_err() {
        return 0;
    }
    text.lines()
        .filter(|l| l.starts_with("fleetpulse_pipeline_records_in_total"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

/// Seconds from starting a job on a checkpoint with `backlog` readings behind it to having read
/// them all, for `fleet`'s devices.
pub(crate) fn restart_to_caught_up(
    config: &Config,
    fleet: &GeneratorConfig,
    partitions: i32,
    backlog: u64,
) -> anyhow::Result<f64> {
    let id = format!("bench-{}-restart", std::process::id());
    let topic = format!("{id}-telemetry");
    let runtime = tokio::runtime::Handle::current();
    runtime.block_on(crate::kafka::ensure_topic(config, &topic, partitions))?;
    let dir = std::env::temp_dir().join(format!("{id}-checkpoints"));
    let _ = std::fs::remove_dir_all(&dir);

    // Before the stop: every device has reported `backlog / devices` times.
    let before = GeneratorConfig {
        events: backlog,
        ..fleet.clone()
    };
    produce(config, &topic, &before)?;
    let (mut child, address) = pipeline(config, &topic, &id, &dir, &[])?;
    let deadline = Instant::now() + Duration::from_secs(1_800);
    while records_in(&address) < backlog {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the first run did not read its input"
        );
        anyhow::ensure!(child.try_wait()?.is_none(), "the first run ended early");
        std::thread::sleep(Duration::from_millis(200));
    }
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(stopped.success(), "cannot stop the first run");
    anyhow::ensure!(
        child.wait()?.success(),
        "the first run did not stop cleanly"
    );

    // The backlog: the same devices going on where they stopped.
    let rounds = backlog / u64::from(fleet.devices.max(1));
    let after = GeneratorConfig {
        events: backlog,
        start_ms: fleet
            .start_ms
            .map(|s| s + (rounds * fleet.interval_ms) as i64),
        ..fleet.clone()
    };
    produce(config, &topic, &after)?;

    let started = Instant::now();
    let (mut child, _) = pipeline(config, &topic, &id, &dir, &["--until-end"])?;
    anyhow::ensure!(child.wait()?.success(), "the restarted run failed");
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(seconds)
}
