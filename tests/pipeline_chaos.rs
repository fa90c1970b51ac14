//! Crash recovery against a real Apache Kafka broker. A generated fleet is run once without
//! interruption (the reference); then the same input is run with `--checkpoint-dir` while a
//! driver kills the pipeline with SIGKILL at random moments and restarts it, kills the broker and
//! restarts it on its log directory, kills one of two worker processes, or stops it with SIGTERM.
//! Afterwards the derived topics, deduplicated by `event_id`, must equal the reference's, no
//! `event_id` may carry two payloads, and after a SIGTERM nothing at all may repeat (but a
//! last-seen time a device repeats after telling an older one, as any run may).
//!
//! Each run reads the input with `--until-end`, so the output is a function of the input alone
//! and the reference is exact. Random moments come from a seed printed by each test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use e2e::*;
use pipeline::output::Output;
use testkit::{Kind, Service, shared, unique};

/// Enough input that a debug build takes well over the five lives the kill test gives it.
const EVENTS: &str = "600000";

/// A little xorshift generator: the kill moments need not be good random numbers, only
/// different from run to run and reproducible from the printed seed.
struct Moments(u64);

impl Moments {
    fn new(test: &str) -> Moments {
        let seed = std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{test}: CHAOS_SEED={seed}");
        Moments(seed)
    }

    /// A duration between `low` and `high` ms.
    fn between(&mut self, low: u64, high: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(low + self.0 % (high - low).max(1))
    }
}

/// Generates the fleet into a new topic and returns the topic and the reference run's output by
/// `event_id`.
fn setup(brokers: &str) -> (String, BTreeMap<String, Output>) {
    let telemetry = unique("chaos-telemetry");
    generate_fleet(brokers, &telemetry, ("400", EVENTS, "23"), START_MS, &[]);
    let reference = unique("chaos-reference");
    let started = Instant::now();
    run_ok(
        fleetpulse()
            .args(["pipeline", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .args([
                "--until-end",
                "--set",
                &format!("topics.telemetry={telemetry}"),
            ])
            .args(derived_topics(&reference)),
    );
    eprintln!("the uninterrupted run took {:?}", started.elapsed());
    let mut want = BTreeMap::new();
    for o in derived_all(brokers, &reference) {
        let id = o.event_id().to_string();
        let last_seen = matches!(o, Output::LastSeen(_));
        assert!(
            want.insert(id, o).is_none() || last_seen,
            "the reference repeats itself"
        );
    }
    assert!(want.len() > 10_000, "a reference worth comparing with");
    (telemetry, want)
}

/// A pipeline run of the chaos: its process and the address of its HTTP endpoints.
struct Life {
    child: Child,
    http: String,
}

/// Starts `fleetpulse pipeline` on `telemetry` with checkpoints in `checkpoints`, its log in
/// `log`.
fn start(
    brokers: &str,
    telemetry: &str,
    prefix: &str,
    checkpoints: &Path,
    log: &Path,
    extra: &[String],
) -> Life {
    let (child, http) = spawn_serving(
        fleetpulse()
            .args(["pipeline", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .arg("--until-end")
            .arg("--checkpoint-dir")
            .arg(checkpoints)
            .args(["--set", &format!("topics.telemetry={telemetry}")])
            .args(["--set", "pipeline.checkpoint_interval_ms=250"])
            .args(derived_topics(prefix))
            .args(extra)
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            ),
    );
    Life { child, http }
}

impl Drop for Life {
    /// A failed assertion must not leave the process running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Life {
    /// Whether the process is still running.
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM: the upgrade path.
    fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL, and wait for it.
    fn kill(self) {
        drop(self);
    }

    /// Waits up to `timeout` for the process to exit by itself.
    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Runs a life to completion and asserts it succeeded.
fn finish(mut life: Life, log: &Path) {
    let status = life.wait(Duration::from_secs(600));
    assert!(
        status.is_some_and(|s| s.success()),
        "the last run ends well ({status:?}):\n{}",
        log_tail(log)
    );
}

/// Compares the derived topics of `prefix` with the reference: deduplicated by `event_id` they
/// are equal, and no `event_id` has two payloads. Returns how many records were repeats (not
/// counting repeated last-seen times, which do not depend on restarts). Without
/// `exact_last_seen`, last-seen records only have to agree on each device's newest time.
fn compare(
    brokers: &str,
    prefix: &str,
    want: &BTreeMap<String, Output>,
    exact_last_seen: bool,
) -> usize {
    let mut got: BTreeMap<String, Output> = BTreeMap::new();
    let mut repeats = 0;
    for o in derived_all(brokers, prefix) {
        let id = o.event_id().to_string();
        if let Some(before) = got.get(&id) {
            assert_eq!(*before, o, "{id} was emitted with two payloads");
            if !matches!(o, Output::LastSeen(_)) {
                repeats += 1;
            }
        } else {
            got.insert(id, o);
        }
    }
    let mut want = want.clone();
    if !exact_last_seen {
        let newest = |m: &mut BTreeMap<String, Output>| {
            let mut times: BTreeMap<(String, String), i64> = BTreeMap::new();
            m.retain(|_, o| match o {
                Output::LastSeen(l) => {
                    let t = times
                        .entry((l.tenant_id.clone(), l.device_id.clone()))
                        .or_insert(l.last_seen);
                    *t = (*t).max(l.last_seen);
                    false
                }
                _ => true,
            });
            times
        };
        assert_eq!(
            newest(&mut got),
            newest(&mut want),
            "each device's newest last seen"
        );
    }
    let want = &want;
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} of {} missing (e.g. {missing:?}), {} extra (e.g. {extra:?})",
        want.keys().filter(|k| !got.contains_key(*k)).count(),
        want.len(),
        got.keys().filter(|k| !want.contains_key(*k)).count(),
    );
    for (id, o) in &got {
        assert_eq!(
            Some(o),
            want.get(id),
            "{id} differs from the uninterrupted run"
        );
    }
    repeats
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_changes_nothing() {
    let kafka = shared(Kind::Kafka);
    let brokers = kafka.address();
    let (telemetry, want) = setup(brokers);
    let mut moments = Moments::new("sigkill");
    let prefix = unique("chaos-kill");
    let dir = tempfile::tempdir().unwrap();
    let (checkpoints, log) = (
        dir.path().join("checkpoints"),
        dir.path().join("pipeline.log"),
    );
    for kill in 0..5 {
        let mut life = start(brokers, &telemetry, &prefix, &checkpoints, &log, &[]);
        std::thread::sleep(moments.between(300, 1_300));
        assert!(
            life.running(),
            "the run ended before kill {kill}: the input is too small for this test\n{}",
            log_tail(&log)
        );
        life.kill();
    }
    finish(
        start(brokers, &telemetry, &prefix, &checkpoints, &log, &[]),
        &log,
    );
    let repeats = compare(brokers, &prefix, &want, true);
    eprintln!("sigkill: {repeats} records repeated after the kills");
}

#[test]
fn a_broker_killed_and_restarted_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kafka_dir = dir.path().join("kafka");
    let mut kafka = Service::start_in(Kind::Kafka, &kafka_dir);
    let brokers = kafka.address().to_string();
    let (telemetry, want) = setup(&brokers);
    let mut moments = Moments::new("broker");
    let prefix = unique("chaos-broker");
    let (checkpoints, log) = (
        dir.path().join("checkpoints"),
        dir.path().join("pipeline.log"),
    );
    let mut life = start(&brokers, &telemetry, &prefix, &checkpoints, &log, &[]);
    std::thread::sleep(moments.between(1_000, 3_000));
    assert!(life.running(), "still reading when the broker goes");
    kafka.kill();
    // The job waits for the broker instead of failing, and says so.
    let unready = testkit::wait_for(Duration::from_secs(30), || {
        http_text(&life.http, "GET", "/readyz", None).0 == 503
    });
    assert!(life.running(), "the job outlives its broker");
    assert!(unready, "/readyz reports the broker gone");
    std::thread::sleep(moments.between(1_000, 4_000));
    let kafka = Service::start_in(Kind::Kafka, &kafka_dir);
    assert_eq!(
        kafka.address(),
        brokers,
        "the broker comes back where it was"
    );
    finish(life, &log);
    let repeats = compare(&brokers, &prefix, &want, true);
    eprintln!("broker: {repeats} records repeated after the outage");
}

#[test]
fn one_of_two_processes_killed_loses_nothing() {
    let kafka = shared(Kind::Kafka);
    let brokers = kafka.address();
    let (telemetry, want) = setup(brokers);
    let mut moments = Moments::new("two processes");
    let prefix = unique("chaos-two");
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    let pair = |life: usize, attempt: usize| -> Vec<(Life, std::path::PathBuf)> {
        let hostfile = dir.path().join(format!("hosts-{life}-{attempt}"));
        std::fs::write(
            &hostfile,
            format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
        )
        .unwrap();
        (0..2)
            .map(|p| {
                let log = dir.path().join(format!("process-{p}-{life}-{attempt}.log"));
                let extra = ["-n", "2", "-p", &p.to_string(), "--hostfile"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([hostfile.display().to_string()])
                    .collect::<Vec<_>>();
                (
                    start(brokers, &telemetry, &prefix, &checkpoints, &log, &extra),
                    log,
                )
            })
            .collect()
    };
    // A port found free can be taken by another socket before timely binds it (outgoing
    // connections draw from the same range): such a start is tried again on new ports.
    let clashed = |lives: &[(Life, std::path::PathBuf)]| {
        lives.iter().any(|(_, log)| {
            std::fs::read_to_string(log).is_ok_and(|t| t.contains("Address already in use"))
        })
    };
    for life in 0..3 {
        let mut lives = pair(life, 0);
        std::thread::sleep(moments.between(1_000, 3_000));
        for attempt in 1..4 {
            if !clashed(&lives) {
                break;
            }
            eprintln!("life {life}: a port was taken; starting again on others");
            for (l, _) in lives.drain(..) {
                l.kill();
            }
            lives = pair(life, attempt);
            std::thread::sleep(Duration::from_secs(2));
        }
        let (victim, victim_log) = lives.remove(1);
        let mut survivor = lives.remove(0);
        let (running, log) = (survivor.0.running(), victim_log);
        assert!(running, "still running at kill {life}\n{}", log_tail(&log));
        victim.kill();
        // The survivor cannot go on without its peer: it must stop by itself, not hang.
        let status = survivor.0.wait(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| !s.success()),
            "the survivor of kill {life} exits with an error ({status:?})\n{}",
            log_tail(&survivor.1)
        );
    }
    let mut last = pair(3, 0);
    for attempt in 1..4 {
        std::thread::sleep(Duration::from_secs(2));
        if !clashed(&last) {
            break;
        }
        eprintln!("the last life: a port was taken; starting again on others");
        for (l, _) in last.drain(..) {
            l.kill();
        }
        last = pair(3, attempt);
    }
    for (life, log) in last {
        finish(life, &log);
    }
    // Known defect (issue 26, open): after one of two processes is killed, which readings are
    // announced as last-seen times differs from the uninterrupted run for some devices (every
    // device's newest time agrees); the cause is not found yet.
    let repeats = compare(brokers, &prefix, &want, false);
    eprintln!("two processes: {repeats} records repeated after the kills");
}

#[test]
fn sigterm_then_restart_repeats_nothing() {
    let kafka = shared(Kind::Kafka);
    let brokers = kafka.address();
    let (telemetry, want) = setup(brokers);
    let mut moments = Moments::new("sigterm");
    let prefix = unique("chaos-term");
    let dir = tempfile::tempdir().unwrap();
    let (checkpoints, log) = (
        dir.path().join("checkpoints"),
        dir.path().join("pipeline.log"),
    );
    for stop in 0..2 {
        let mut life = start(brokers, &telemetry, &prefix, &checkpoints, &log, &[]);
        std::thread::sleep(moments.between(1_000, 3_000));
        assert!(life.running(), "still running at stop {stop}");
        life.terminate();
        let status = life.wait(Duration::from_secs(120));
        assert!(
            status.is_some_and(|s| s.success()),
            "SIGTERM stops cleanly ({status:?})\n{}",
            log_tail(&log)
        );
    }
    finish(
        start(brokers, &telemetry, &prefix, &checkpoints, &log, &[]),
        &log,
    );
    assert_eq!(
        compare(brokers, &prefix, &want, true),
        0,
        "nothing emitted twice"
    );
}
