//! The generator's loop: messages from the fleet into a sink, paced to a rate if one is set, with
//! a progress bar on a terminal, until the count is reached or `stop` is raised.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::GeneratorConfig;
use crate::error::GeneratorError;
use crate::fleet::{Fleet, Tag};
use crate::sink::Sink;

/// What a run sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Messages sent.
    pub events: u64,
    /// Of which malformed.
    pub malformed: u64,
    /// Of which stamped out of order within the bound.
    pub out_of_order: u64,
    /// Of which stamped late.
    pub late: u64,
    /// Of which stamped in the future.
    pub future: u64,
    /// Bytes of message values.
    pub bytes: u64,
    /// Time from the first message to the last acknowledgement.
    pub elapsed: Duration,
}

impl Summary {
    /// Messages per second over the run.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = if total > 0 {
        ProgressBar::new(total)
    } else {
        ProgressBar::no_length()
    };
    let template = if total > 0 {
        "{bar:30} {human_pos}/{human_len} events  {per_sec}  ETA {eta}"
    } else {
        "{spinner} {human_pos} events  {per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Event time of the first round when the configuration leaves it open: now, on an interval
/// boundary.
fn default_start(interval_ms: u64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    now - now % interval_ms.max(1) as i64
}

/// Sends the configured fleet into `sink`.
pub fn run(
    config: &GeneratorConfig,
    sink: &mut dyn Sink,
    stop: &AtomicBool,
    show_progress: bool,
) -> Result<Summary, GeneratorError> {
    let start_ms = config
        .start_ms
        .unwrap_or_else(|| default_start(config.interval_ms));
    let mut fleet = Fleet::new(config, start_ms);
    let bar = if show_progress {
        progress_bar(config.events)
    } else {
        ProgressBar::hidden()
    };
    let mut summary = Summary::default();
    let started = Instant::now();
    while (config.events == 0 || summary.events < config.events) && !stop.load(Ordering::Relaxed) {
        let event = fleet.next_event();
        summary.bytes += sink.send(&event)? as u64;
        summary.events += 1;
        match event.tag {
            Tag::Malformed => summary.malformed += 1,
            Tag::OutOfOrder => summary.out_of_order += 1,
            Tag::Late => summary.late += 1,
            Tag::Future => summary.future += 1,
            Tag::Normal => {}
        }
        if summary.events.is_multiple_of(256) {
            bar.set_position(summary.events);
            if config.rate > 0.0 {
                let due = Duration::from_secs_f64(summary.events as f64 / config.rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
    }
    sink.finish()?;
    summary.elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok(summary)
}
