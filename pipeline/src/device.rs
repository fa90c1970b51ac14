//! Everything the pipeline knows about one device: its open windows, presence and anomaly rules,
//! driven in event-time order by readings and by its own timers (window ends, offline deadline,
//! prolonged offline, flapping decay, retirement after `device_retention_ms` of silence), and
//! that its latest reading time goes out ([`crate::lastseen`]): announced on arrival, or at a
//! status change, or `lastseen_interval_ms` after it when no reading followed, or at the end.
//!
//! Its registration in the inventory comes in as a reading too ([`ReadingKind::Registered`]),
//! after the device's own readings of the same millisecond: the registered class replaces the
//! readings' class; a watched device is expected from then on (offline as `never_seen` when it
//! says nothing for its timeout) and goes offline after its expected interval times
//! `expected_interval_multiple` of silence, never before the registration that set it; a
//! registered device is never retired for its silence. A tombstone ([`ReadingKind::
//! Decommissioned`]) retires the device at once: firing anomalies resolve, a last transition
//! says `decommissioned`, and all but its open windows and its class is forgotten. The windows
//! close at their ends, unjudged unless the device came back (their offline time counted up to
//! the tombstone), so a device that reports on after its tombstone, a new device to the
//! pipeline, does not make a second window of the same bounds; it is freed once they closed.
//!
//! At one millisecond the order is: windows ending there close, then readings stamped there, then
//! the offline deadline, then rule timers. A reading exactly at `last_seen + timeout` therefore
//! keeps the device online, and a window never sees a reading stamped at its end.

mod presence;
mod rules;

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use schemas::{AnomalyKind, DeviceStatus, StatusTransition, TransitionReason};
use serde::{Deserialize, Serialize};

use crate::anomaly::{self, Baseline, Observation, Switches};
use crate::config::{PipelineConfig, Thresholds};
use crate::event_id;
use crate::events;
use crate::lastseen::{self, Announcer};
use crate::output::Output;
use crate::reading::{Reading, ReadingKind};
use crate::window::WindowState;

/// What is due at one millisecond, in the order it is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Windows ending at the time close first.
    Close = 0,
    /// Readings come next.
    Reading = 1,
    /// Then the offline deadline.
    Deadline = 2,
    /// Then rule timers.
    Rule = 3,
}

/// When something is due: event time, then the kind (the field order is the processing order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Due {
    /// Event time, ms.
    pub at: i64,
    /// What is due.
    pub kind: Kind,
}

impl Due {
    /// `kind` due at `at`.
    pub fn new(at: i64, kind: Kind) -> Due {
        Due { at, kind }
    }

    /// The first due time after this one: what [`Device::advance`] is given to process this
    /// one and nothing after it.
    pub fn next(self) -> Due {
        match self.kind {
            Kind::Close => Due::new(self.at, Kind::Reading),
            Kind::Reading => Due::new(self.at, Kind::Deadline),
            Kind::Deadline => Due::new(self.at, Kind::Rule),
            Kind::Rule => Due::new(self.at.saturating_add(1), Kind::Close),
        }
    }
}

/// A tenant and a device class.
type ProfileKey = (Rc<str>, Option<Rc<str>>);

/// The thresholds of each (tenant, class) pair, resolved once and shared by its devices.
#[derive(Debug, Default)]
pub struct Profiles {
    resolved: HashMap<ProfileKey, Rc<Thresholds>>,
    classes: HashSet<Rc<str>>,
}

impl Profiles {
    /// The one shared copy of a device class name.
    pub fn class(&mut self, name: &str) -> Rc<str> {
        if let Some(c) = self.classes.get(name) {
            return Rc::clone(c);
        }
        let c: Rc<str> = name.into();
        self.classes.insert(Rc::clone(&c));
        c
    }

    /// The thresholds of devices of `tenant` and `class`.
    pub fn get(
        &mut self,
        cfg: &PipelineConfig,
        tenant: &Rc<str>,
        class: Option<&Rc<str>>,
    ) -> Rc<Thresholds> {
        let key = (Rc::clone(tenant), class.cloned());
        Rc::clone(
            self.resolved
                .entry(key)
                .or_insert_with(|| Rc::new(cfg.thresholds_for(tenant, class.map(|c| &**c)))),
        )
    }
}

/// What a device's processing needs from its surroundings.
pub struct Ctx<'a> {
    /// The pipeline's settings.
    pub cfg: &'a PipelineConfig,
    /// Resolved thresholds.
    pub profiles: &'a mut Profiles,
    /// Where records go.
    pub out: &'a mut Vec<Output>,
    /// The largest event time telemetry itself (not idleness) has moved any partition's
    /// watermark to; deadlines beyond it passed only because the input was idle.
    pub data_watermark: i64,
    /// The last-seen times announced on arrival.
    pub announced: &'a Announcer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Presence {
    /// Registered and watched, not heard from yet (since its registration).
    Expected,
    Online,
    Offline {
        prolonged_fired: bool,
        /// False after `never_seen`: its first reading is `first_seen`, not `resumed`.
        seen: bool,
    },
    /// Left (silent past the retention, or decommissioned): its owner frees it once its windows
    /// closed.
    Retired,
}

/// What the device's registration says, as far as presence goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Enrolment {
    /// The latest registration's time: no deadline falls before it.
    at: i64,
    /// Expected reporting interval, ms; 0: none.
    interval_ms: u32,
    /// Watched: expected to report.
    monitored: bool,
    /// The class is the registration's: the readings' classes are ignored.
    class: bool,
}

/// One device's state; checkpoints keep it whole, except the thresholds, which are resolved
/// again from the configuration on restore (it may have changed).
#[derive(Debug, Serialize, Deserialize)]
pub struct Device {
    tenant: Rc<str>,
    id: Rc<str>,
    class: Option<Rc<str>>,
    #[serde(skip)]
    thresholds: Rc<Thresholds>,
    windows: Box<[Option<WindowState>]>,
    presence: Option<Presence>,
    since: i64,
    last_seen: i64,
    /// The latest `last_seen` that went out as a last-seen record.
    told: i64,
    /// The last response times, as `f32`: half the memory, and 7 significant digits are plenty
    /// for a mean compared with a threshold.
    recent_rt: VecDeque<f32>,
    /// Recent transition times; boxed because most devices never change status, and an empty
    /// `VecDeque` costs 32 bytes in each of a million devices where `None` costs 8.
    #[allow(clippy::box_collection)]
    flaps: Option<Box<VecDeque<i64>>>,
    p95_baseline: Baseline,
    error_baseline: Baseline,
    switches: Switches,
    /// The due time the owner's timer queue holds for this device, packed (see [`pack`]).
    scheduled: i64,
    /// Its registration; boxed, as most devices of most fleets have none.
    enrolment: Option<Box<Enrolment>>,
}

/// No due time.
const UNSCHEDULED: i64 = i64::MAX;

/// A due time in 8 bytes instead of 16 (time times four, plus the kind): one per device.
fn pack(due: Due) -> i64 {
    due.at.saturating_mul(4).saturating_add(due.kind as i64)
}

fn unpack(packed: i64) -> Due {
    let kind = match packed.rem_euclid(4) {
        0 => Kind::Close,
        1 => Kind::Reading,
        2 => Kind::Deadline,
        _ => Kind::Rule,
    };
    Due::new(packed.div_euclid(4), kind)
}

impl Device {
    /// A device not seen before.
    pub fn new(tenant: Rc<str>, id: Rc<str>, ctx: &mut Ctx<'_>) -> Device {
        Device {
            thresholds: ctx.profiles.get(ctx.cfg, &tenant, None),
            tenant,
            id,
            class: None,
            windows: vec![None; ctx.cfg.windows_ms.len()].into_boxed_slice(),
            presence: None,
            since: 0,
            last_seen: 0,
            told: i64::MIN,
            recent_rt: VecDeque::new(),
            flaps: None,
            p95_baseline: Baseline::default(),
            error_baseline: Baseline::default(),
            switches: Switches::default(),
            scheduled: UNSCHEDULED,
            enrolment: None,
        }
    }

    /// The device as restored from a checkpoint: thresholds resolved from the current
    /// configuration, nothing scheduled yet.
    pub fn restored(mut self, ctx: &mut Ctx<'_>) -> Device {
        self.thresholds = ctx.profiles.get(ctx.cfg, &self.tenant, self.class.as_ref());
        self.scheduled = UNSCHEDULED;
        self
    }

    /// The device id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Tenant and device id, shared.
    pub fn key(&self) -> (Rc<str>, Rc<str>) {
        (Rc::clone(&self.tenant), Rc::clone(&self.id))
    }

    /// The due time the owner's timer queue holds for this device, if any.
    pub fn scheduled(&self) -> Option<Due> {
        (self.scheduled != UNSCHEDULED).then(|| unpack(self.scheduled))
    }

    /// Records what the owner's timer queue holds for this device.
    pub fn set_scheduled(&mut self, due: Option<Due>) {
        self.scheduled = due.map_or(UNSCHEDULED, pack);
    }

    /// Whether the device has an open window (for the open-windows gauge).
    pub fn open_windows(&self) -> usize {
        self.windows.iter().filter(|w| w.is_some()).count()
    }

    /// The next thing due on this device.
    pub fn next_due(&self, cfg: &PipelineConfig) -> Option<Due> {
        let windows = self
            .windows
            .iter()
            .flatten()
            .map(|w| Due::new(w.end, Kind::Close));
        let presence = match self.presence {
            Some(Presence::Expected) => {
                Some(Due::new(self.deadline(self.since, cfg), Kind::Deadline))
            }
            Some(Presence::Online) => {
                Some(Due::new(self.deadline(self.last_seen, cfg), Kind::Deadline))
            }
            Some(Presence::Offline {
                prolonged_fired: false,
                ..
            }) => Some(Due::new(
                self.since + self.thresholds.prolonged_offline_ms,
                Kind::Rule,
            )),
            _ => None,
        };
        let retire = self.retires().then(|| {
            Due::new(
                self.last_seen.saturating_add(cfg.device_retention_ms),
                Kind::Rule,
            )
        });
        let untold = (self.told < self.last_seen && self.tracked()).then(|| {
            Due::new(
                self.last_seen.saturating_add(cfg.lastseen_interval_ms),
                Kind::Rule,
            )
        });
        let flapping = self
            .switches
            .is_firing(AnomalyKind::Flapping)
            .then(|| {
                self.flaps
                    .as_ref()
                    .and_then(|f| f.front())
                    .map(|t| Due::new(t + self.thresholds.flapping_period_ms, Kind::Rule))
            })
            .flatten();
        windows
            .chain(presence)
            .chain(flapping)
            .chain(retire)
            .chain(untold)
            .min()
    }

    /// Processes everything due strictly before `until`.
    pub fn advance(&mut self, until: Due, ctx: &mut Ctx<'_>) {
        while let Some(due) = self.next_due(ctx.cfg).filter(|d| *d < until) {
            match due.kind {
                Kind::Close => self.close_windows(due.at, ctx),
                Kind::Deadline => self.go_offline(due.at, ctx),
                Kind::Reading | Kind::Rule => self.rule_timer(due.at, ctx),
            }
        }
    }

    /// Closes every open window, whatever its end, and tells the device's last-seen time: the
    /// input is exhausted. Rules do not judge these windows; they are judged only up to the
    /// input's last watermark.
    pub fn close_all(&mut self, ctx: &mut Ctx<'_>) {
        for i in 0..self.windows.len() {
            if let Some(w) = self.windows[i].take() {
                self.emit_window(w, false, ctx);
            }
        }
        self.tell_last_seen(ctx);
    }

    /// How long the device may be silent: its registration's interval times the configured
    /// multiple when it is watched with one, else its thresholds' timeout.
    fn timeout(&self, cfg: &PipelineConfig) -> i64 {
        match self.enrolment.as_deref() {
            Some(e) if e.monitored && e.interval_ms > 0 => cfg.expected_timeout_ms(e.interval_ms),
            _ => self.thresholds.offline_timeout_ms,
        }
    }

    /// When silence since `from` makes the device offline: never before its latest
    /// registration, which may have shortened the timeout.
    fn deadline(&self, from: i64, cfg: &PipelineConfig) -> i64 {
        let due = from.saturating_add(self.timeout(cfg));
        self.enrolment.as_deref().map_or(due, |e| due.max(e.at))
    }

    /// Whether the device is retired after `device_retention_ms` of silence: a tracked device
    /// the inventory does not hold (a registered one stays until it is decommissioned).
    fn retires(&self) -> bool {
        self.tracked() && self.enrolment.is_none()
    }

    /// Whether the device has been seen and not retired.
    fn tracked(&self) -> bool {
        matches!(
            self.presence,
            Some(Presence::Online | Presence::Offline { .. })
        )
    }

    /// Whether the device was retired and is to be freed.
    pub fn retired(&self) -> bool {
        self.presence == Some(Presence::Retired) && self.open_windows() == 0
    }

    /// A reading, after [`Device::advance`] to its time and [`Kind::Reading`]. An arrival (a reading the DLQ
    /// took for its clock) only keeps the device's presence and its clock anomaly up to date.
    pub fn reading(&mut self, r: &Reading, ctx: &mut Ctx<'_>) {
        match r.kind {
            ReadingKind::Registered {
                interval_ms,
                monitored,
            } => return self.register(r, interval_ms, monitored, ctx),
            ReadingKind::Decommissioned => return self.decommission(r.ts, ctx),
            ReadingKind::ReportedOffline => return self.reported_offline(r.ts, ctx),
            _ => {}
        }
        if !self.enrolment.as_ref().is_some_and(|e| e.class)
            && let Some(class) = r.device_class.as_deref()
        {
            self.set_class(class, ctx);
        }
        let ts = r.ts;
        let came_online = self.presence != Some(Presence::Online);
        // An arrival opens windows too, so they count the offline time it ends; a window no
        // measured reading joins is neither emitted nor judged.
        for (i, size) in ctx.cfg.windows_ms.iter().enumerate() {
            self.windows[i].get_or_insert_with(|| WindowState::open(ts, *size));
        }
        match self.presence {
            None | Some(Presence::Expected | Presence::Retired) => self.transition(
                DeviceStatus::Online,
                None,
                ts,
                TransitionReason::FirstSeen,
                ctx,
            ),
            Some(Presence::Offline {
                prolonged_fired,
                seen,
            }) => {
                let since = self.since;
                for w in self.windows.iter_mut().flatten() {
                    w.add_offline(since, ts);
                }
                let reason = if seen {
                    TransitionReason::Resumed
                } else {
                    TransitionReason::FirstSeen
                };
                self.transition(
                    DeviceStatus::Online,
                    Some(DeviceStatus::Offline),
                    ts,
                    reason,
                    ctx,
                );
                if prolonged_fired {
                    let limit = self.thresholds.prolonged_offline_ms;
                    let obs = || Observation {
                        observed: (ts - since) as f64,
                        threshold: limit as f64,
                        baseline: None,
                        message: format!("back online after {} s offline", (ts - since) / 1000),
                    };
                    self.change(AnomalyKind::ProlongedOffline, false, true, ts, obs, ctx);
                }
            }
            Some(Presence::Online) => {}
        }
        self.last_seen = ts;
        if r.announced {
            self.told = self.told.max(ts);
        }
        if came_online {
            self.tell_last_seen(ctx);
        }
        self.clock_rule(r.clock_offset_ms, ts, ctx);
        if r.kind == ReadingKind::Arrival {
            return;
        }
        let retimed = (r.kind == ReadingKind::Retimed).then_some(r.clock_offset_ms);
        for w in self.windows.iter_mut().flatten() {
            w.add(r, retimed);
        }
        if let Some(rt) = r.response_time_ms {
            self.rt_rule(rt, ts, ctx);
        }
        if let Some(b) = r.battery_pct {
            let t = Rc::clone(&self.thresholds);
            let obs = || Observation {
                observed: b,
                threshold: t.battery_low_pct,
                baseline: None,
                message: format!("battery at {b:.0} %, limit {:.0} %", t.battery_low_pct),
            };
            let resolve = b >= t.battery_low_pct * (1.0 + t.resolve_margin);
            self.change(
                AnomalyKind::BatteryLow,
                b < t.battery_low_pct,
                resolve,
                ts,
                obs,
                ctx,
            );
        }
    }

    /// The device's class, and the thresholds that go with it.
    fn set_class(&mut self, class: &str, ctx: &mut Ctx<'_>) {
        if self.class.as_deref() != Some(class) {
            let class = ctx.profiles.class(class);
            self.thresholds = ctx.profiles.get(ctx.cfg, &self.tenant, Some(&class));
            self.class = Some(class);
        }
    }

    /// A registration at `r.ts` (see the module's documentation); an update keeps the time the
    /// device has been expected since.
    fn register(&mut self, r: &Reading, interval_ms: u32, monitored: bool, ctx: &mut Ctx<'_>) {
        let ts = r.ts;
        if let Some(class) = r.device_class.as_deref() {
            self.set_class(class, ctx);
        }
        self.enrolment = Some(Box::new(Enrolment {
            at: ts,
            interval_ms,
            monitored,
            class: r.device_class.is_some(),
        }));
        match (self.presence, monitored) {
            (None | Some(Presence::Retired), true) => {
                self.presence = Some(Presence::Expected);
                self.since = ts;
                // Its deadline counts from here; there is no reading time to tell.
                self.last_seen = ts;
                self.told = ts;
            }
            // Known, and kept for its registration, but not waited for.
            (Some(Presence::Expected | Presence::Retired), false) => self.presence = None,
            _ => {}
        }
    }

    /// A tombstone at `ts`: the device is retired at once (see the module's documentation).
    fn decommission(&mut self, ts: i64, ctx: &mut Ctx<'_>) {
        let previous = match self.presence {
            Some(Presence::Online) => Some(DeviceStatus::Online),
            Some(Presence::Offline { .. }) => Some(DeviceStatus::Offline),
            _ => None,
        };
        if previous == Some(DeviceStatus::Offline) {
            let since = self.since;
            for w in self.windows.iter_mut().flatten() {
                w.add_offline(since, ts);
            }
        }
        self.tell_last_seen(ctx);
        if let Some(previous) = previous {
            let message = "the device was decommissioned".to_string();
            self.leave(
                ts,
                previous,
                TransitionReason::Decommissioned,
                0.0,
                message,
                ctx,
            );
        }
        let mut fresh = Device::new(Rc::clone(&self.tenant), Rc::clone(&self.id), ctx);
        fresh.windows = std::mem::take(&mut self.windows);
        fresh.scheduled = self.scheduled;
        fresh.class = self.class.take();
        fresh.thresholds = Rc::clone(&self.thresholds);
        fresh.presence = Some(Presence::Retired);
        *self = fresh;
        events::device_decommissioned();
    }

    fn close_windows(&mut self, end: i64, ctx: &mut Ctx<'_>) {
        for i in 0..self.windows.len() {
            if self.windows[i].as_ref().is_some_and(|w| w.end == end)
                && let Some(w) = self.windows[i].take()
            {
                self.emit_window(w, true, ctx);
            }
        }
    }

    /// Emits a closed window; `judge` lets the rules see it (a complete window, not one cut
    /// short by the end of the input).
    fn emit_window(&mut self, mut w: WindowState, judge: bool, ctx: &mut Ctx<'_>) {
        if w.is_empty() {
            return;
        }
        if let Some(Presence::Offline { .. }) = self.presence {
            w.add_offline(self.since, w.end);
        }
        let tracked = self.presence != Some(Presence::Retired);
        if judge && tracked && w.end - w.start == ctx.cfg.rule_window_ms() {
            self.window_rules(&w, ctx);
        }
        ctx.out.push(Output::Aggregate(w.finish(
            &self.tenant,
            &self.id,
            self.class.as_deref(),
            ctx.cfg.health.rt_slo_ms,
        )));
    }
}
