//! One worker's share of the devices: readings wait here until the frontier passes their `ts`,
//! then every device's readings and timers are processed in event-time order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use crate::config::PipelineConfig;
use crate::device::{Ctx, Device, Due, READING};
use crate::output::Output;
use crate::reading::Reading;

struct Pending(Reading);

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.0.order_key() == other.0.order_key()
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.order_key().cmp(&other.0.order_key())
    }
}

/// Devices, their timers and the readings not yet processed.
pub struct Engine {
    cfg: Arc<PipelineConfig>,
    devices: Vec<Device>,
    index: HashMap<Rc<str>, HashMap<Box<str>, u32>>,
    timers: BinaryHeap<Reverse<(Due, u32)>>,
    pending: BinaryHeap<Reverse<Pending>>,
    data_watermark: i64,
}

impl Engine {
    /// An empty engine.
    pub fn new(cfg: Arc<PipelineConfig>) -> Engine {
        Engine {
            cfg,
            devices: Vec::new(),
            index: HashMap::new(),
            timers: BinaryHeap::new(),
            pending: BinaryHeap::new(),
            data_watermark: i64::MIN,
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

    /// Queues a reading until the frontier passes its `ts`.
    pub fn push(&mut self, r: Reading) {
        self.pending.push(Reverse(Pending(r)));
    }

    /// Raises the data watermark (see [`Ctx::data_watermark`]).
    pub fn data_watermark(&mut self, wm: i64) {
        self.data_watermark = self.data_watermark.max(wm);
    }

    /// Processes every queued reading and every timer strictly before `frontier`.
    pub fn advance(&mut self, frontier: i64, out: &mut Vec<Output>) {
        self.run(frontier, frontier, out);
    }

    /// The input is exhausted: processes every queued reading, timers only before `last_watermark`
    /// (a backfill must not declare the whole fleet offline), then closes every window.
    pub fn finish(&mut self, last_watermark: Option<i64>, out: &mut Vec<Output>) {
        // Everything left was moved by data, not by idleness.
        self.data_watermark = i64::MAX;
        self.run(i64::MAX, last_watermark.unwrap_or(i64::MIN), out);
        let cfg = Arc::clone(&self.cfg);
        let mut ctx = Ctx {
            cfg: &cfg,
            out,
            data_watermark: self.data_watermark,
        };
        for d in &mut self.devices {
            d.close_all(&mut ctx);
        }
    }

    fn run(&mut self, reading_limit: i64, timer_limit: i64, out: &mut Vec<Output>) {
        let cfg = Arc::clone(&self.cfg);
        let mut ctx = Ctx {
            cfg: &cfg,
            out,
            data_watermark: self.data_watermark,
        };
        loop {
            let reading = self
                .pending
                .peek()
                .map(|Reverse(p)| p.0.ts)
                .filter(|ts| *ts < reading_limit);
            let timer = self
                .timers
                .peek()
                .map(|Reverse((due, _))| *due)
                .filter(|due| due.0 < timer_limit);
            match (reading, timer) {
                (None, None) => break,
                (Some(ts), Some(due)) if due < (ts, READING) => self.fire_timer(&mut ctx),
                (None, Some(_)) => self.fire_timer(&mut ctx),
                _ => {
                    if let Some(Reverse(Pending(r))) = self.pending.pop() {
                        let slot = self.slot(&r);
                        let device = &mut self.devices[slot as usize];
                        device.advance((r.ts, READING), &mut ctx);
                        device.reading(&r, &mut ctx);
                        self.reschedule(slot);
                    }
                }
            }
        }
    }

    fn fire_timer(&mut self, ctx: &mut Ctx<'_>) {
        let Some(Reverse((due, slot))) = self.timers.pop() else {
            return;
        };
        let device = &mut self.devices[slot as usize];
        if device.scheduled != Some(due) {
            return;
        }
        device.advance((due.0, due.1 + 1), ctx);
        self.reschedule(slot);
    }

    fn reschedule(&mut self, slot: u32) {
        let device = &mut self.devices[slot as usize];
        let next = device.next_due();
        if next != device.scheduled {
            device.scheduled = next;
            if let Some(due) = next {
                self.timers.push(Reverse((due, slot)));
            }
        }
    }

    fn slot(&mut self, r: &Reading) -> u32 {
        if let Some(slot) = self
            .index
            .get(r.tenant_id.as_str())
            .and_then(|devices| devices.get(r.device_id.as_str()))
        {
            return *slot;
        }
        let tenant: Rc<str> = match self.index.get_key_value(r.tenant_id.as_str()) {
            Some((t, _)) => Rc::clone(t),
            None => Rc::from(r.tenant_id.as_str()),
        };
        let slot = u32::try_from(self.devices.len()).unwrap_or(u32::MAX);
        self.devices
            .push(Device::new(Rc::clone(&tenant), &r.device_id, &self.cfg));
        self.index
            .entry(tenant)
            .or_default()
            .insert(r.device_id.as_str().into(), slot);
        slot
    }
}
