//! What one tracked device costs, counted exactly: the live heap of an engine holding devices that
//! report every 10 s, both windows (1 and 5 min) open, nothing pending. The budget is 1 KB per
//! device; the resident figure of `fleetpulse bench pipeline` adds the allocator's size classes
//! and the readings in flight, and moves by megabytes between runs.

#![allow(unsafe_code)] // a counting global allocator: the one way to count a heap exactly

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use pipeline::PipelineConfig;
use pipeline::engine::Engine;
use pipeline::reading::{Reading, ReadingKind, device_key};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const T0: i64 = 1_700_000_000_000;

fn reading(device: usize, ts: i64) -> Reading {
    let tenant_id = compact_str::format_compact!("tenant-{:02}", device % 20);
    let device_id = compact_str::format_compact!("dev-{device:06}");
    Reading {
        ts,
        partition: 0,
        offset: 0,
        key: device_key(&tenant_id, &device_id),
        tenant_id,
        device_id,
        device_class: Some("sensor".into()),
        response_time_ms: Some(40.0 + (device % 13) as f64),
        ok: !device.is_multiple_of(17),
        battery_pct: Some(80.0),
        signal_dbm: Some(-70.0),
        clock_offset_ms: 0,
        kind: ReadingKind::Stamped,
        announced: false,
    }
}

/// The live heap of an engine that has seen `devices` devices report every 10 s for 4 min 30 s.
fn heap_with(devices: usize) -> isize {
    let before = LIVE.load(Ordering::Relaxed);
    let mut engine = Engine::new(Arc::new(PipelineConfig::default()));
    let mut out = Vec::new();
    // Readings spread over each 10 s, the frontier a second behind them, as a stream runs.
    for step in 0..27 {
        for d in 0..devices {
            let ts = T0 + step * 10_000 + (d * 10_000 / devices) as i64;
            engine.push(reading(d, ts), &mut out);
            if d % 500 == 499 {
                engine.advance(ts - 1_000, ts - 1_000, &mut out, usize::MAX);
                out.clear();
            }
        }
    }
    engine.advance(T0 + 270_000, T0 + 270_000, &mut out, usize::MAX);
    out = Vec::new();
    drop(out);
    assert_eq!(engine.devices(), devices);
    assert_eq!(engine.pending(), 0);
    let live = LIVE.load(Ordering::Relaxed) - before;
    drop(engine);
    live
}

#[test]
fn a_tracked_device_costs_at_most_a_kilobyte_of_heap() {
    let (small, large) = (heap_with(1_000), heap_with(20_000));
    let per_device = (large - small) / 19_000;
    println!(
        "live heap per tracked device: {per_device} B ({small} B for 1,000, {large} B for 20,000)"
    );
    assert!(per_device <= 1_024, "{per_device} B per device");
}
