//! One worker's share of the devices: readings wait here until the frontier passes their `ts`,
//! then every device's readings and timers are processed in event-time order. A reading's
//! arrival may announce its device's last-seen time at once ([`crate::lastseen`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use foldhash::HashMap;
use serde::{Deserialize, Serialize};

use crate::chunked::Chunked;
use crate::config::PipelineConfig;
use crate::device::{Ctx, Device, Due, Kind, Profiles};
use crate::lastseen::{self, Announcer};
use crate::output::Output;
use crate::pending::PendingQueue;
use crate::reading::{Reading, ReadingKind, device_key};

/// What a checkpoint keeps of an engine: every device, the readings not yet processed, how far
/// data has moved event time, and the last-seen announcements (see [`Engine::state`]).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct EngineState {
    /// The devices.
    pub devices: Vec<Device>,
    /// Readings waiting for the frontier.
    pub pending: Vec<Reading>,
    /// See [`Ctx::data_watermark`].
    pub data_watermark: i64,
    /// The time of each device's last announcement.
    pub announced: Announcer,
}

/// Devices, their timers and the readings not yet processed.
pub struct Engine {
    cfg: Arc<PipelineConfig>,
    devices: Chunked<Device>,
    /// Each device's slot, by [`device_key`].
    index: HashMap<u128, u32>,
    timers: BinaryHeap<Reverse<(Due, u32)>>,
    pending: PendingQueue,
    data_watermark: i64,
    announcer: Announcer,
    profiles: Profiles,
    /// Devices whose windows the end of input has closed.
    closed: usize,
}

impl Engine {
    /// An empty engine.
    pub fn new(cfg: Arc<PipelineConfig>) -> Engine {
        Engine {
            cfg,
            devices: Chunked::default(),
            index: HashMap::default(),
            timers: BinaryHeap::new(),
            pending: PendingQueue::default(),
            data_watermark: i64::MIN,
            announcer: Announcer::default(),
            profiles: Profiles::default(),
            closed: 0,
        }
    }

    /// Devices tracked.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Windows open over all devices.
    pub fn open_windows(&self) -> usize {
        self.devices.iter().map(Device::open_windows).sum()
    }

    /// Readings waiting for the frontier.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The state for a checkpoint, to encode: every device, the readings not yet processed
    /// unless `without_pending` (a cut's part, whose source replays them), the data watermark
    /// and the announcements. It is written as an [`EngineState`] is read; encoding from
    /// borrows spares a copy of every device.
    ///
    /// A cut's announcements include readings at or after the cut that arrived before it was
    /// saved: their records went out at or before the cut's time (a checkpoint is written once
    /// everything up to that time is), and announcing is idempotent (a replayed reading is never
    /// announced twice), so the replay announces what it would have.
    pub fn state(&self, without_pending: bool) -> impl Serialize + '_ {
        /// [`EngineState`]'s layout over borrowed data (the devices are written as a `Vec`).
        #[derive(Serialize)]
        struct View<'a> {
            devices: &'a Chunked<Device>,
            pending: Vec<&'a Reading>,
            data_watermark: i64,
            announced: &'a Announcer,
        }
        let pending = if without_pending {
            Vec::new()
        } else {
            self.pending.iter().collect()
        };
        View {
            devices: &self.devices,
            pending,
            data_watermark: self.data_watermark,
            announced: &self.announcer,
        }
    }

    /// Takes over the devices and readings of a checkpoint part (as [`Engine::state`] wrote
    /// it) that `keep` says are this worker's (by device id).
    pub fn restore(&mut self, state: EngineState, keep: impl Fn(&str) -> bool) {
        self.data_watermark = self.data_watermark.max(state.data_watermark);
        self.announcer.absorb(state.announced);
        let cfg = Arc::clone(&self.cfg);
        let mut out = Vec::new();
        let mut ctx = Ctx {
            cfg: &cfg,
            profiles: &mut self.profiles,
            out: &mut out,
            data_watermark: self.data_watermark,
            announced: &self.announcer,
        };
        let mut restored = Vec::new();
        for device in state.devices.into_iter().filter(|d| keep(d.id())) {
            restored.push(device.restored(&mut ctx));
        }
        for device in restored {
            let slot = u32::try_from(self.devices.len()).unwrap_or(u32::MAX);
            let (tenant, id) = device.key();
            self.index.insert(device_key(&tenant, &id), slot);
            self.devices.push(device);
            self.reschedule(slot);
        }
        for r in state.pending.into_iter().filter(|r| keep(&r.device_id)) {
            self.pending.push(r);
        }
    }

    /// Queues a reading until the frontier passes its `ts`; its arrival may announce its
    /// device's last-seen time, into `out`.
    pub fn push(&mut self, mut r: Reading, out: &mut Vec<Output>) {
        let seen = !r.kind.is_inventory() && r.kind != ReadingKind::ReportedOffline;
        if seen && self.announcer.arrive(&r, self.cfg.lastseen_interval_ms) {
            r.announced = true;
            out.push(lastseen::record(
                &r.tenant_id,
                &r.device_id,
                r.device_class.as_deref(),
                r.ts,
            ));
        }
        self.pending.push(r);
    }

    /// Raises the data watermark (see [`Ctx::data_watermark`]).
    pub fn data_watermark(&mut self, wm: i64) {
        self.data_watermark = self.data_watermark.max(wm);
    }

    /// Processes queued readings strictly before `frontier` and timers strictly before
    /// `timer_limit` (at most `frontier`), stopping once `out` holds `budget` records; returns
    /// whether everything was processed.
    pub fn advance(
        &mut self,
        frontier: i64,
        timer_limit: i64,
        out: &mut Vec<Output>,
        budget: usize,
    ) -> bool {
        let done = self.run(frontier, timer_limit.min(frontier), out, budget);
        // Only once every reading before the frontier is processed: a device telling an older
        // time looks up a newer announcement, which may be of a reading processed in this run.
        if done {
            self.announcer
                .prune(frontier, self.cfg.lastseen_interval_ms);
        }
        done
    }

    /// The input is exhausted: processes every queued reading, timers only before `last_watermark`
    /// (a backfill must not declare the whole fleet offline), then closes every window. Stops
    /// once `out` holds `budget` records; returns whether it is done (call again until it is).
    pub fn finish(
        &mut self,
        last_watermark: Option<i64>,
        out: &mut Vec<Output>,
        budget: usize,
    ) -> bool {
        // Everything left was moved by data, not by idleness.
        self.data_watermark = i64::MAX;
        if !self.run(i64::MAX, last_watermark.unwrap_or(i64::MIN), out, budget) {
            return false;
        }
        let cfg = Arc::clone(&self.cfg);
        let mut ctx = Ctx {
            cfg: &cfg,
            profiles: &mut self.profiles,
            out,
            data_watermark: self.data_watermark,
            announced: &self.announcer,
        };
        while let Some(d) = self.devices.get_mut(self.closed) {
            if ctx.out.len() >= budget {
                return false;
            }
            d.close_all(&mut ctx);
            self.closed += 1;
        }
        true
    }

    fn run(
        &mut self,
        reading_limit: i64,
        timer_limit: i64,
        out: &mut Vec<Output>,
        budget: usize,
    ) -> bool {
        let cfg = Arc::clone(&self.cfg);
        let mut profiles = std::mem::take(&mut self.profiles);
        // Readings arrive between runs, never during one.
        let announcer = std::mem::take(&mut self.announcer);
        let mut ctx = Ctx {
            cfg: &cfg,
            profiles: &mut profiles,
            out,
            data_watermark: self.data_watermark,
            announced: &announcer,
        };
        self.pending.release(reading_limit);
        let done = loop {
            if ctx.out.len() >= budget {
                break false;
            }
            let reading = self.pending.peek_ts().filter(|ts| *ts < reading_limit);
            let timer = self
                .timers
                .peek()
                .map(|Reverse((due, _))| *due)
                .filter(|due| due.at < timer_limit);
            match (reading, timer) {
                (None, None) => break true,
                (Some(ts), Some(due)) if due < Due::new(ts, Kind::Reading) => {
                    self.fire_timer(&mut ctx)
                }
                (None, Some(_)) => self.fire_timer(&mut ctx),
                _ => {
                    if let Some(r) = self.pending.pop() {
                        self.take(&r, &mut ctx);
                    }
                }
            }
        };
        self.profiles = profiles;
        self.announcer = announcer;
        self.pending.shrink();
        done
    }

    /// Hands a reading to its device, after the device's timers before it.
    fn take(&mut self, r: &Reading, ctx: &mut Ctx<'_>) {
        let known = self.index.get(&r.key).copied().filter(|slot| {
            let device = &mut self.devices[*slot as usize];
            device.advance(Due::new(r.ts, Kind::Reading), ctx);
            // Its timer fires first, but a reading must never reach a device it would find
            // retired.
            !device.retired()
        });
        if known.is_none()
            && let Some(slot) = self.index.get(&r.key).copied()
        {
            self.free(slot);
        }
        let slot = match known {
            Some(slot) => slot,
            // Nothing to decommission or take offline: the device is not (or no longer) known.
            None if matches!(
                r.kind,
                ReadingKind::Decommissioned | ReadingKind::ReportedOffline
            ) =>
            {
                return;
            }
            None => self.slot(r, ctx),
        };
        self.devices[slot as usize].reading(r, ctx);
        if self.devices[slot as usize].retired() {
            self.free(slot);
        } else {
            self.reschedule(slot);
        }
    }

    fn fire_timer(&mut self, ctx: &mut Ctx<'_>) {
        let Some(Reverse((due, slot))) = self.timers.pop() else {
            return;
        };
        // A slot freed by a retired device may be empty, or another device's now.
        let Some(device) = self.devices.get_mut(slot as usize) else {
            return;
        };
        if device.scheduled() != Some(due) {
            return;
        }
        device.set_scheduled(None);
        device.advance(due.next(), ctx);
        if device.retired() {
            self.free(slot);
        } else {
            self.reschedule(slot);
        }
    }

    /// Frees a retired device's slot: the last device moves into it (its timer entries named
    /// its old slot, so it is scheduled again here; entries left for the old slot find another
    /// due time there, or nothing, and are dropped).
    fn free(&mut self, slot: u32) {
        let i = slot as usize;
        let Some(gone) = self.devices.swap_remove(i) else {
            return;
        };
        let (tenant, id) = gone.key();
        self.index.remove(&device_key(&tenant, &id));
        if let Some(moved) = self.devices.get_mut(i) {
            let (tenant, id) = moved.key();
            moved.set_scheduled(None);
            if let Some(s) = self.index.get_mut(&device_key(&tenant, &id)) {
                *s = slot;
            }
            self.reschedule(slot);
        }
    }

    /// Keeps one timer entry per device, at or before its next due time: a later due (the usual
    /// case: every reading pushes the offline deadline back) leaves the earlier entry in place,
    /// and that entry reschedules when it fires, so the queue never fills with stale entries.
    fn reschedule(&mut self, slot: u32) {
        let device = &mut self.devices[slot as usize];
        let Some(next) = device.next_due(&self.cfg) else {
            return;
        };
        if device.scheduled().is_none_or(|s| next < s) {
            device.set_scheduled(Some(next));
            self.timers.push(Reverse((next, slot)));
        }
    }

    fn slot(&mut self, r: &Reading, ctx: &mut Ctx<'_>) -> u32 {
        if let Some(slot) = self.index.get(&r.key) {
            return *slot;
        }
        let slot = u32::try_from(self.devices.len()).unwrap_or(u32::MAX);
        let (tenant, id) = (r.tenant_id.as_str().into(), r.device_id.as_str().into());
        self.devices.push(Device::new(tenant, id, ctx));
        self.index.insert(r.key, slot);
        slot
    }
}
