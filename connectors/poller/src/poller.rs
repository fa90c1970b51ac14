//! The poller: keeps the schedule of the devices this instance owns as the inventory changes,
//! runs each due probe under the global and per-host caps and its device's circuit breaker, and
//! hands each probe's telemetry record on. Probes run as tasks; this loop alone owns the
//! schedule, the breakers and the record of what is in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use inventory::Change;
use schemas::Telemetry;
use tokio::sync::{Semaphore, mpsc};

use crate::DeviceId;
use crate::breaker::{Breaker, State};
use crate::config::PollerConfig;
use crate::events;
use crate::probe::{Outcome, Prober, ProberError};
use crate::schedule::Schedule;
use crate::target::Target;

/// The wall clock, ms since the epoch: probes' event times and the schedule's time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The longest the loop sleeps: how soon it sees `stop`.
const TICK: Duration = Duration::from_millis(100);

/// A probe that ended.
struct Done {
    key: DeviceId,
    target: Arc<Target>,
    started_ms: i64,
    took: Duration,
    outcome: Outcome,
}

/// What the poller keeps of each device, in its schedule slot.
struct Device {
    target: Arc<Target>,
    breaker: Breaker,
    /// Its probe has started and not ended.
    in_flight: bool,
}

/// The poller's state; [`Poller::run`] drives it.
pub struct Poller {
    config: PollerConfig,
    schedule: Schedule<Device>,
    /// Probes started and not ended.
    in_flight: usize,
    /// Devices whose breaker is not closed.
    open: usize,
    hosts: HashMap<String, Arc<Semaphore>>,
    global: Arc<Semaphore>,
    prober: Prober,
    clock: Clock,
}

impl Poller {
    /// A poller with nothing scheduled yet.
    pub fn new(config: PollerConfig, clock: Clock) -> Result<Poller, ProberError> {
        let prober = Prober::new(
            Duration::from_millis(config.timeout_ms),
            config.retries,
            config.ca_file.as_deref(),
        )?;
        let seed = u64::from(config.instance);
        Ok(Poller {
            schedule: Schedule::new(config.jitter, seed),
            in_flight: 0,
            open: 0,
            hosts: HashMap::new(),
            global: Arc::new(Semaphore::new(config.max_in_flight)),
            prober,
            clock,
            config,
        })
    }

    /// Devices scheduled.
    pub fn devices(&self) -> usize {
        self.schedule.len()
    }

    /// Takes a change of the inventory: a device this instance should probe is scheduled (or
    /// its schedule changed), any other is dropped.
    pub fn apply(&mut self, change: Change) {
        let c = &self.config;
        let (key, target) = match change {
            Change::Registered(r) => (
                (r.tenant_id.clone(), r.device_id.clone()),
                Target::of(&r, c.instance, c.instances),
            ),
            Change::Decommissioned(key) => (key, None),
        };
        let held = self
            .schedule
            .get_mut(&key)
            .map(|d| (d.breaker, d.in_flight));
        match target {
            Some(target) => {
                let interval = c.interval_ms(target.device_class.as_deref(), target.kind);
                let interval = i64::try_from(interval).unwrap_or(i64::MAX);
                let now = (self.clock)();
                // A changed registration keeps its breaker and its probe in flight.
                let (breaker, in_flight) = held.unwrap_or_default();
                let device = Device {
                    target: Arc::new(target),
                    breaker,
                    in_flight,
                };
                self.schedule.upsert(key, device, interval, now);
            }
            None => {
                if held.is_some_and(|(b, _)| !matches!(b.state(), State::Closed { .. })) {
                    self.open = self.open.saturating_sub(1);
                }
                self.schedule.remove(&key);
            }
        }
    }

    /// Runs until `stop`: takes `changes` as they come, probes what is due, and sends each
    /// probe's record to `out`; then waits for the probes in flight (at most their timeouts).
    pub async fn run(
        mut self,
        mut changes: mpsc::UnboundedReceiver<Change>,
        out: mpsc::Sender<Telemetry>,
        stop: Arc<AtomicBool>,
    ) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut gauges = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = (self.clock)();
            self.start_due(now, &done_tx);
            let wait = self
                .schedule
                .next_due()
                .map_or(TICK, |due| {
                    Duration::from_millis(u64::try_from(due - now).unwrap_or(0))
                })
                .min(TICK);
            tokio::select! {
                Some(change) = changes.recv() => {
                    self.apply(change);
                    while let Ok(change) = changes.try_recv() {
                        self.apply(change);
                    }
                }
                Some(done) = done_rx.recv() => {
                    self.finish(done, &out).await;
                    while let Ok(done) = done_rx.try_recv() {
                        self.finish(done, &out).await;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
            if gauges.elapsed() >= Duration::from_secs(1) {
                gauges = Instant::now();
                events::state(self.schedule.len(), self.in_flight, self.open);
            }
        }
        // Probes started before the stop end within their attempts' timeouts: their records go
        // out too, rather than leave devices that were probed without a record.
        // Each attempt's timeout, and a second for the backoff before each.
        let attempts = u64::from(self.config.retries) + 1;
        let most = Duration::from_millis((self.config.timeout_ms + 1_000).saturating_mul(attempts));
        let deadline = tokio::time::Instant::now() + most;
        while self.in_flight > 0 {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(done)) => self.finish(done, &out).await,
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Starts every probe due at `now` whose device is neither mid-probe nor behind an open
    /// breaker.
    fn start_due(&mut self, now: i64, done: &mpsc::UnboundedSender<Done>) {
        while let Some((key, device)) = self.schedule.pop_due(now) {
            if device.in_flight {
                events::skipped("in_flight");
                continue;
            }
            if !device.breaker.allow(now) {
                events::skipped("breaker_open");
                continue;
            }
            device.in_flight = true;
            self.in_flight += 1;
            let (key, target) = (key.clone(), Arc::clone(&device.target));
            let per_host = self.config.max_per_host;
            let host = Arc::clone(
                self.hosts
                    .entry(target.host.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(per_host))),
            );
            let global = Arc::clone(&self.global);
            let prober = self.prober.clone();
            let clock = Arc::clone(&self.clock);
            let done = done.clone();
            tokio::spawn(async move {
                // The host first: a probe waiting for a busy gateway holds no global slot.
                let (Ok(_host), Ok(_global)) =
                    (host.acquire_owned().await, global.acquire_owned().await)
                else {
                    return;
                };
                let started_ms = clock();
                let started = Instant::now();
                let outcome = prober.probe(target.kind, &target.url).await;
                let _ = done.send(Done {
                    key,
                    target,
                    started_ms,
                    took: started.elapsed(),
                    outcome,
                });
            });
        }
    }

    /// A probe ended: its breaker learns the result and its record goes out.
    async fn finish(&mut self, done: Done, out: &mpsc::Sender<Telemetry>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let now = (self.clock)();
        let c = &self.config;
        // A device decommissioned meanwhile has no breaker left; its last record still goes.
        if let Some(device) = self.schedule.get_mut(&done.key) {
            device.in_flight = false;
            let closed = |s: State| matches!(s, State::Closed { .. });
            let was_closed = closed(device.breaker.state());
            if let Some(state) = device.breaker.record(
                done.outcome.answered(),
                now,
                c.breaker_failures,
                c.breaker_open_ms,
            ) {
                match (was_closed, closed(state)) {
                    (true, false) => self.open += 1,
                    (false, true) => self.open = self.open.saturating_sub(1),
                    _ => {}
                }
                events::breaker(state);
                tracing::info!(tenant = %done.key.0, device = %done.key.1, ?state, "circuit breaker");
            }
        }
        let record = done.target.record(done.started_ms, &done.outcome);
        let result = record.error_code.as_deref().unwrap_or("ok");
        events::probed(done.target.kind, result, done.took.as_secs_f64());
        if out.send(record).await.is_err() {
            events::unsent();
        }
    }
}
