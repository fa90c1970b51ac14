//! `fleetpulse bench poll`: probes per second the poller sustains against a simulated fleet on
//! loopback, beside a raw loop of the same GETs at the same concurrency with the same client; the
//! process's CPU per 1,000 devices at the default interval (the simulated devices included); its
//! memory per scheduled device; and the schedule's own cost per probe.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use inventory::Change;
use poller::probe::Prober;
use poller::{Clock, Poller, PollerConfig};
use schemas::{PollTarget, ProbeKind, Registration};
use tokio::sync::{Semaphore, mpsc};

use super::sink::cpu_seconds;
use crate::commands::simulated::{self, Answer};

/// Flags of `bench poll`.
#[derive(Debug, Args)]
pub struct PollBench {
    /// Simulated devices.
    #[arg(long, default_value_t = 10_000)]
    devices: u32,
    /// Probes in flight at once, for the poller (`poller.max_in_flight`) and the raw loop.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Loopback hosts the devices sit behind (127.0.1.1 onwards), each one HTTP server.
    #[arg(long, default_value_t = 16)]
    hosts: u8,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Devices scheduled (not probed) for the memory measurement.
    #[arg(long, default_value_t = 100_000)]
    memory_devices: u32,
}

fn registration(n: u32, url: String) -> Registration {
    Registration {
        poll: Some(PollTarget {
            url,
            fields: BTreeMap::from([("battery_pct".into(), "/battery".into())]),
        }),
        ..Registration::new("bench", format!("dev-{n:07}"))
    }
}

fn clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    })
}

/// Runs a poller over `registrations` for `seconds`; the records it produced.
async fn run_poller(
    config: PollerConfig,
    registrations: &[Registration],
    seconds: u64,
) -> anyhow::Result<u64> {
    let mut poller = Poller::new(config, clock())?;
    for r in registrations {
        poller.apply(Change::Registered(r.clone()));
    }
    let (_changes, changes_rx) = mpsc::unbounded_channel();
    let (out, mut out_rx) = mpsc::channel(4_096);
    let stop = Arc::new(AtomicBool::new(false));
    let running = tokio::spawn(poller.run(changes_rx, out, Arc::clone(&stop)));
    let counted = tokio::spawn(async move {
        let mut n = 0u64;
        while out_rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    running.await?;
    Ok(counted.await?)
}

/// The resident set of this process, bytes.
fn resident() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub(crate) async fn run(args: PollBench) -> anyhow::Result<()> {
    let files = rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit")?;
    let healthy: Answer = Arc::new(|_: &str| Some((200, r#"{"ok":true,"battery":90}"#.into())));
    let mut ports = Vec::new();
    for h in 0..args.hosts {
        ports.push(simulated::serve([127, 0, 1, h + 1], Arc::clone(&healthy)).await?);
    }
    let urls: Vec<String> = (0..args.devices)
        .map(|n| {
            let h = (n % u32::from(args.hosts)) as usize;
            format!("http://127.0.1.{}:{}/d/{n}", h + 1, ports[h])
        })
        .collect();
    let registrations: Vec<Registration> = urls
        .iter()
        .enumerate()
        .map(|(n, url)| registration(n as u32, url.clone()))
        .collect();
    println!(
        "bench poll: {} devices behind {} loopback hosts, {} probes in flight, {} s per run (open files {files})",
        args.devices, args.hosts, args.concurrency, args.seconds
    );

    // (a) The same GETs as fast as they go, with the poller's client, at the same concurrency.
    let prober = Prober::new(Duration::from_secs(5), 0, None)?;
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let raw_done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let cpu = cpu_seconds();
    let mut n = 0usize;
    let deadline = started + Duration::from_secs(args.seconds);
    while Instant::now() < deadline {
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let (prober, url, done) = (
            prober.clone(),
            urls[n % urls.len()].clone(),
            Arc::clone(&raw_done),
        );
        tokio::spawn(async move {
            let _ = prober.probe(ProbeKind::Http, &url).await;
            done.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
        n += 1;
    }
    let raw_s = started.elapsed().as_secs_f64();
    let raw_rate = raw_done.load(Ordering::Relaxed) as f64 / raw_s;
    let raw_cpu = (cpu_seconds() - cpu) / raw_s;
    println!(
        "(a) raw GET loop                  {raw_rate:>9.0} probes/s   (this process busy {:.0} % of a core)",
        100.0 * raw_cpu
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // (b) The poller, every device due every 100 ms: far more than the slots allow, so it runs
    // at its capacity.
    let config = PollerConfig {
        http_interval_ms: 100,
        max_in_flight: args.concurrency,
        max_per_host: args.concurrency,
        jitter: 0.1,
        ..PollerConfig::default()
    };
    let cpu = cpu_seconds();
    let started = Instant::now();
    let records = run_poller(config, &registrations, args.seconds).await?;
    let poll_s = started.elapsed().as_secs_f64();
    let poll_rate = records as f64 / poll_s;
    let poll_cpu = (cpu_seconds() - cpu) / poll_s;
    println!(
        "(b) poller at capacity            {poll_rate:>9.0} probes/s   (this process busy {:.0} % of a core)",
        100.0 * poll_cpu
    );
    println!(
        "    poller / raw                  {:>9.2}",
        poll_rate / raw_rate
    );

    // (c) At the default interval (30 s): the poller's CPU per 1,000 devices.
    let config = PollerConfig {
        max_in_flight: args.concurrency,
        max_per_host: args.concurrency,
        ..PollerConfig::default()
    };
    let cpu = cpu_seconds();
    let started = Instant::now();
    let records = run_poller(config, &registrations, args.seconds.max(30)).await?;
    let idle_s = started.elapsed().as_secs_f64();
    let share = (cpu_seconds() - cpu) / idle_s;
    println!(
        "(c) default 30 s interval         {:>9.0} probes/s   {:.2} % of a core per 1,000 devices",
        records as f64 / idle_s,
        100.0 * share / (f64::from(args.devices) / 1_000.0)
    );

    // (d) Memory per scheduled device: the resident set before and after scheduling.
    let before = resident();
    let mut poller = Poller::new(PollerConfig::default(), clock())?;
    for n in 0..args.memory_devices {
        let h = (n % u32::from(args.hosts)) as usize;
        poller.apply(Change::Registered(registration(
            n,
            format!("http://127.0.1.{}:{}/d/{n}", h + 1, ports[h]),
        )));
    }
    let after = resident();
    println!(
        "(d) memory per scheduled device   {:>9.0} bytes ({} devices)",
        after.saturating_sub(before) as f64 / f64::from(args.memory_devices),
        poller.devices()
    );

    // (e) The schedule alone, an hour of it: what deciding who is due costs.
    let mut schedule = poller::schedule::Schedule::new(0.1, 1);
    for n in 0..args.devices {
        schedule.upsert(("bench".into(), format!("dev-{n:07}")), (), 30_000, 0);
    }
    let started = Instant::now();
    let mut pops = 0u64;
    while let Some(due) = schedule.next_due().filter(|d| *d <= 3_600_000) {
        while schedule.pop_due(due).is_some() {
            pops += 1;
        }
    }
    let per_pop = started.elapsed().as_secs_f64() / pops.max(1) as f64;
    println!(
        "(e) the schedule alone            {:>9.0} ns a probe   {:.5} % of a core per 1,000 devices at 30 s",
        per_pop * 1e9,
        100.0 * per_pop * 1_000.0 / 30.0
    );
    Ok(())
}
