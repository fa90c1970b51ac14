//! The poller against a simulated fleet on loopback: HTTP devices on several loopback addresses
//! (each a host for the per-host cap) with set latencies, statuses and hangs, TCP devices that
//! accept or refuse. The devices count the probes they get and how many were open at once, so the
//! caps, the cadence per class, the breaker and live inventory changes are checked from the
//! devices' side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inventory::Change;
use poller::config::ClassIntervals;
use poller::{Clock, Poller, PollerConfig};
use schemas::{PollTarget, Registration, Telemetry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How a simulated device answers.
#[derive(Debug)]
struct Behaviour {
    latency: Duration,
    status: u16,
    /// Never answers while set.
    hang: AtomicBool,
}

/// Connections open now and at most: per host, and over all hosts.
#[derive(Default)]
struct Open {
    per_host: HashMap<IpAddr, (u32, u32)>,
    now: u32,
    most: u32,
}

/// What the devices saw: probes per device (by port), and connections open at once.
#[derive(Default)]
struct Seen {
    hits: Mutex<HashMap<u16, Vec<Instant>>>,
    open: Mutex<Open>,
}

impl Seen {
    fn enter(&self, ip: IpAddr) {
        let mut open = self.open.lock().unwrap();
        let host = open.per_host.entry(ip).or_default();
        host.0 += 1;
        host.1 = host.1.max(host.0);
        open.now += 1;
        open.most = open.most.max(open.now);
    }

    fn leave(&self, ip: IpAddr) {
        let mut open = self.open.lock().unwrap();
        if let Some(host) = open.per_host.get_mut(&ip) {
            host.0 -= 1;
        }
        open.now -= 1;
    }

    fn max_per_host(&self) -> u32 {
        self.open
            .lock()
            .unwrap()
            .per_host
            .values()
            .map(|h| h.1)
            .max()
            .unwrap_or(0)
    }

    fn max_total(&self) -> u32 {
        self.open.lock().unwrap().most
    }

    fn hits(&self, port: u16) -> Vec<Instant> {
        self.hits
            .lock()
            .unwrap()
            .get(&port)
            .cloned()
            .unwrap_or_default()
    }
}

/// Starts an HTTP device on `ip`; its URL.
async fn http_device(ip: [u8; 4], behaviour: Arc<Behaviour>, seen: Arc<Seen>) -> String {
    let listener = TcpListener::bind(SocketAddr::from((ip, 0))).await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (behaviour, seen) = (Arc::clone(&behaviour), Arc::clone(&seen));
            tokio::spawn(async move {
                let ip = address.ip();
                seen.enter(ip);
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                seen.hits
                    .lock()
                    .unwrap()
                    .entry(address.port())
                    .or_default()
                    .push(Instant::now());
                if behaviour.hang.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    seen.leave(ip);
                } else {
                    tokio::time::sleep(behaviour.latency).await;
                    // Counted out before the answer goes: the poller may start its next probe
                    // as soon as it has the answer, while this task is still closing.
                    seen.leave(ip);
                    let body = r#"{"healthy": true, "battery": 64.5}"#;
                    let answer = format!(
                        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        behaviour.status,
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                }
            });
        }
    });
    format!("http://{address}/status")
}

fn behaving(latency_ms: u64, status: u16) -> Arc<Behaviour> {
    Arc::new(Behaviour {
        latency: Duration::from_millis(latency_ms),
        status,
        hang: AtomicBool::new(false),
    })
}

fn registration(device: &str, class: Option<&str>, url: &str) -> Registration {
    Registration {
        device_class: class.map(str::to_string),
        poll: Some(PollTarget {
            url: url.to_string(),
            fields: if url.starts_with("http") {
                BTreeMap::from([("battery_pct".into(), "/battery".into())])
            } else {
                BTreeMap::new()
            },
        }),
        ..Registration::new("acme", device)
    }
}

fn port(url: &str) -> u16 {
    url::Url::parse(url).unwrap().port().unwrap()
}

fn clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    })
}

/// A running poller: where to send inventory changes, what it produced, and its stop flag.
struct Running {
    changes: mpsc::UnboundedSender<Change>,
    records: Arc<Mutex<Vec<Telemetry>>>,
    stop: Arc<AtomicBool>,
    /// The poller, then what collects its records: both end once it stopped and its probes in
    /// flight are written.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start(config: PollerConfig, registrations: &[Registration]) -> Running {
    let mut poller = Poller::new(config, clock()).unwrap();
    for r in registrations {
        poller.apply(Change::Registered(r.clone()));
    }
    let (changes, changes_rx) = mpsc::unbounded_channel();
    let (out, mut out_rx) = mpsc::channel(1024);
    let stop = Arc::new(AtomicBool::new(false));
    let polling = tokio::spawn(poller.run(changes_rx, out, Arc::clone(&stop)));
    let records = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&records);
    let collecting = tokio::spawn(async move {
        while let Some(r) = out_rx.recv().await {
            keep.lock().unwrap().push(r);
        }
    });
    Running {
        changes,
        records,
        stop,
        tasks: vec![polling, collecting],
    }
}

impl Running {
    fn records_of(&self, device: &str) -> Vec<Telemetry> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.device_id == device)
            .cloned()
            .collect()
    }

    /// Stops the poller and waits until its probes in flight are answered and their records
    /// collected: the devices count a probe when they answer it, before its record is made.
    async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            task.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_keep_each_class_s_cadence() {
    let seen = Arc::new(Seen::default());
    let mut registrations = Vec::new();
    let mut fast = Vec::new();
    let mut slow = Vec::new();
    for n in 0..40u8 {
        // Two hosts, each a gateway for twenty devices.
        let ip = [127, 0, 0, 2 + n % 2];
        let url = http_device(ip, behaving(20, 200), Arc::clone(&seen)).await;
        let class = if n < 20 { "fast" } else { "slow" };
        registrations.push(registration(&format!("d{n}"), Some(class), &url));
        if n < 20 { &mut fast } else { &mut slow }.push(url);
    }
    let mut config = PollerConfig {
        max_in_flight: 6,
        max_per_host: 4,
        http_interval_ms: 60_000,
        jitter: 0.1,
        ..PollerConfig::default()
    };
    for (class, ms) in [("fast", 500), ("slow", 1_500)] {
        config.classes.insert(
            class.into(),
            ClassIntervals {
                http_interval_ms: Some(ms),
                tcp_interval_ms: None,
            },
        );
    }
    let mut running = start(config, &registrations);
    tokio::time::sleep(Duration::from_millis(6_200)).await;
    running.stop().await;

    assert!(seen.max_total() <= 6, "global cap: {}", seen.max_total());
    assert!(
        seen.max_per_host() <= 4,
        "per-host cap: {}",
        seen.max_per_host()
    );
    // Each device's probes keep its class's cadence (its phase puts the first anywhere in the
    // first interval): 12 or 13 probes of the fast ones in 6.2 s, 4 or 5 of the slow ones, and
    // gaps within the jitter (10 %) plus a little for latency and waiting on the caps.
    for (urls, interval, expected) in [(&fast, 500.0, 11..=13), (&slow, 1_500.0, 4..=5)] {
        for url in urls {
            let hits = seen.hits(port(url));
            assert!(
                expected.contains(&hits.len()),
                "{url}: {} probes",
                hits.len()
            );
            for gap in hits
                .windows(2)
                .map(|w| (w[1] - w[0]).as_secs_f64() * 1_000.0)
            {
                assert!(
                    (gap - interval).abs() <= interval * 0.2 + 150.0,
                    "{url}: a gap of {gap:.0} ms for an interval of {interval} ms"
                );
            }
        }
    }
    // One record per probe, with the mapped field.
    let record = running.records_of("d0");
    assert_eq!(record.len(), seen.hits(port(&fast[0])).len());
    assert!(record.iter().all(|r| r.ok && r.battery_pct == Some(64.5)));
    assert!(
        record
            .iter()
            .all(|r| r.response_time_ms.is_some_and(|rt| rt >= 20.0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_that_wants_more_than_the_caps_gets_exactly_the_caps() {
    let seen = Arc::new(Seen::default());
    let mut registrations = Vec::new();
    // Thirty slow devices behind two gateways, each wanting a probe every 500 ms: 18 probes in
    // flight if nothing held them back.
    for n in 0..30u8 {
        let ip = [127, 0, 0, 8 + n % 2];
        let url = http_device(ip, behaving(300, 200), Arc::clone(&seen)).await;
        registrations.push(registration(&format!("d{n}"), None, &url));
    }
    let config = PollerConfig {
        max_in_flight: 6,
        max_per_host: 4,
        http_interval_ms: 500,
        ..PollerConfig::default()
    };
    let mut running = start(config, &registrations);
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    running.stop().await;
    assert_eq!(
        seen.max_total(),
        6,
        "the global cap, reached and never passed"
    );
    assert!(
        (3..=4).contains(&seen.max_per_host()),
        "per-host cap: {}",
        seen.max_per_host()
    );
    // Devices waiting for a slot skip turns rather than pile up: at most one probe per device
    // in flight, so never more records than probes the devices saw.
    let probes: usize = registrations
        .iter()
        .map(|r| seen.hits(port(&r.poll.as_ref().unwrap().url)).len())
        .sum();
    assert!(running.records.lock().unwrap().len() <= probes);
    assert!(probes < 30 * 6, "{probes} probes: the caps held them back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_device_opens_its_breaker_and_closes_it_once_it_answers() {
    let seen = Arc::new(Seen::default());
    let hanging = behaving(5, 200);
    hanging.hang.store(true, Ordering::Relaxed);
    let url = http_device([127, 0, 0, 4], Arc::clone(&hanging), Arc::clone(&seen)).await;
    let config = PollerConfig {
        http_interval_ms: 100,
        timeout_ms: 150,
        retries: 0,
        breaker_failures: 2,
        breaker_open_ms: 1_000,
        jitter: 0.0,
        ..PollerConfig::default()
    };
    let mut running = start(config, &[registration("cam", None, &url)]);
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    let hung = seen.hits(port(&url)).len();
    // Without the breaker: a probe per interval (33). With it: two that fail, then one trial per
    // breaker period (about three in 3.3 s).
    assert!((3..=7).contains(&hung), "{hung} probes of a hanging device");
    let records = running.records_of("cam");
    assert!(
        records
            .iter()
            .all(|r| !r.ok && r.error_code.as_deref() == Some("timeout"))
    );
    hanging.hang.store(false, Ordering::Relaxed);
    // The next trial (within a breaker period) succeeds and closes it: probes every interval.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    running.stop().await;
    let after = seen.hits(port(&url)).len() - hung;
    assert!(after >= 8, "{after} probes after the device came back");
    assert!(running.records_of("cam").last().is_some_and(|r| r.ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_errors_and_inventory_changes_are_taken_live() {
    let seen = Arc::new(Seen::default());
    let open = TcpListener::bind("127.0.0.5:0").await.unwrap();
    let open_url = format!("tcp://{}", open.local_addr().unwrap());
    let accepted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while open.accept().await.is_ok() {
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    let closed = TcpListener::bind("127.0.0.5:0").await.unwrap();
    let closed_url = format!("tcp://{}", closed.local_addr().unwrap());
    drop(closed);
    let failing = http_device([127, 0, 0, 6], behaving(5, 503), Arc::clone(&seen)).await;
    let config = PollerConfig {
        http_interval_ms: 200,
        tcp_interval_ms: 200,
        retries: 1,
        jitter: 0.0,
        ..PollerConfig::default()
    };
    let mut running = start(
        config,
        &[
            registration("plc", None, &open_url),
            registration("gone", None, &closed_url),
            registration("web", None, &failing),
        ],
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let plc = running.records_of("plc");
    assert!(!plc.is_empty() && plc.iter().all(|r| r.ok && r.response_time_ms.is_some()));
    let gone = running.records_of("gone");
    assert!(
        !gone.is_empty()
            && gone
                .iter()
                .all(|r| r.error_code.as_deref() == Some("refused"))
    );
    let web = running.records_of("web");
    assert!(
        !web.is_empty()
            && web
                .iter()
                .all(|r| r.error_code.as_deref() == Some("http_503"))
    );

    // A device registered while running is probed; one decommissioned is not any more.
    let late = http_device([127, 0, 0, 6], behaving(5, 200), Arc::clone(&seen)).await;
    running
        .changes
        .send(Change::Registered(registration("late", None, &late)))
        .unwrap();
    running
        .changes
        .send(Change::Decommissioned(("acme".into(), "plc".into())))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let plc_then = accepted.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(800)).await;
    running.stop().await;
    assert!(seen.hits(port(&late)).len() >= 3);
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        plc_then,
        "no probe after decommissioning"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_probe_every_device_exactly_once() {
    let seen = Arc::new(Seen::default());
    let mut registrations = Vec::new();
    for n in 0..60 {
        let url = http_device([127, 0, 0, 7], behaving(1, 200), Arc::clone(&seen)).await;
        registrations.push(registration(&format!("d{n}"), None, &url));
    }
    let config = |instance| PollerConfig {
        http_interval_ms: 400,
        jitter: 0.0,
        max_per_host: 16,
        instance,
        instances: 2,
        ..PollerConfig::default()
    };
    let (mut a, mut b) = (
        start(config(0), &registrations),
        start(config(1), &registrations),
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    a.stop().await;
    b.stop().await;
    let devices = |r: &Running| {
        r.records
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.device_id.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (da, db) = (devices(&a), devices(&b));
    assert!(da.is_disjoint(&db));
    assert_eq!(da.len() + db.len(), 60);
    assert!(
        da.len() >= 15 && db.len() >= 15,
        "{} and {}",
        da.len(),
        db.len()
    );
    // Two probes each in a second (interval 400 ms, phase in the first interval): never four.
    for r in &registrations {
        let hits = seen.hits(port(&r.poll.as_ref().unwrap().url)).len();
        assert!((2..=3).contains(&hits), "{}: {hits}", r.device_id);
    }
}
