//! The rollups analysts query most: per device and per tenant by hour (`device_hourly`,
//! `tenant_hourly`) and daily uptime per device and per tenant (`device_uptime_daily`,
//! `tenant_uptime_daily`).
//!
//! They are not insert-triggered materialized views. A view sees every inserted block, so a record
//! the sink inserts twice (a retry, a restart before the commit, the pipeline repeating itself
//! after a crash) would be added twice, and daily uptime needs the status a device was in before
//! the day began, which an inserted block does not hold. Instead the sink recomputes a period
//! from the deduplicated raw tables (`FINAL`) once the period has closed (the newest event time the
//! sink has seen is `grace_ms` past its end) and again whenever a late record lands in a closed
//! period, before it commits the offsets of the batch that closed or touched it. A recomputed row
//! replaces the old one (`ReplacingMergeTree` on the newest `refreshed_ms`), so refreshing twice
//! changes nothing and a crash at any point is mended by the records read again.

use std::collections::BTreeSet;

use clickhouse::Client;

use crate::batch::Batch;

/// An hour, ms.
pub const HOUR_MS: i64 = 3_600_000;
/// A day, ms.
pub const DAY_MS: i64 = 86_400_000;

/// One kind of period (hours or days): what has been written and what must be again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Periods {
    len: i64,
    /// Every period that starts before this is closed and written.
    through: Option<i64>,
    /// The first period with data, while nothing has been written yet.
    earliest: Option<i64>,
    /// Closed periods a late record landed in.
    dirty: BTreeSet<i64>,
}

impl Periods {
    fn new(len: i64) -> Periods {
        Periods {
            len,
            through: None,
            earliest: None,
            dirty: BTreeSet::new(),
        }
    }

    fn start(&self, ms: i64) -> i64 {
        ms.div_euclid(self.len) * self.len
    }

    fn touch(&mut self, ms: i64) {
        let period = self.start(ms);
        match self.through {
            Some(through) if period < through => {
                self.dirty.insert(period);
            }
            Some(_) => {}
            None => self.earliest = Some(self.earliest.map_or(period, |e| e.min(period))),
        }
    }

    /// The periods to write now, in order, and the new `through`. With `chain`, a period
    /// written again takes every closed period after it along (each day starts where the one
    /// before ended).
    fn plan(&self, closed_before: Option<i64>, chain: bool) -> (Vec<i64>, Option<i64>) {
        let limit = closed_before.map(|c| self.start(c));
        let from = self.through.or(self.earliest);
        let through = match (from, limit) {
            (Some(f), Some(l)) if l > f => Some(l),
            (Some(f), _) if self.through.is_some() => Some(f),
            _ => self.through,
        };
        let mut periods: BTreeSet<i64> = self.dirty.clone();
        if let (Some(f), Some(t)) = (from, through) {
            periods.extend((0..).map(|i| f + i * self.len).take_while(|p| *p < t));
        }
        if chain && let (Some(first), Some(t)) = (self.dirty.first(), through) {
            periods.extend((0..).map(|i| first + i * self.len).take_while(|p| *p < t));
        }
        (periods.into_iter().collect(), through)
    }
}

/// What one refresh writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The window length the hourly rollups add up.
    window_ms: u32,
    /// Hours to write, in order (start, ms).
    pub hours: Vec<i64>,
    /// Days to write, in order (start, ms).
    pub days: Vec<i64>,
    hours_through: Option<i64>,
    days_through: Option<i64>,
}

impl Plan {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.hours.is_empty() && self.days.is_empty()
    }

    /// Writes the plan's periods: hours then days, each device table before its tenant table,
    /// days in order (each starts where the one before ended).
    pub async fn write(
        &self,
        client: &Client,
        versions: &mut Versions,
    ) -> Result<(), clickhouse::error::Error> {
        for &hour in &self.hours {
            let version = versions.take();
            client
                .query(&device_hourly(hour, self.window_ms, version))
                .execute()
                .await?;
            client
                .query(&tenant_hourly(hour, version))
                .execute()
                .await?;
        }
        for &day in &self.days {
            let version = versions.take();
            client.query(&device_uptime(day, version)).execute().await?;
            client.query(&tenant_uptime(day, version)).execute().await?;
        }
        Ok(())
    }
}

/// The sink's bookkeeping of its rollups.
#[derive(Debug, Clone)]
pub struct Rollups {
    window_ms: u32,
    grace_ms: i64,
    /// The newest event time seen in the derived records.
    horizon: Option<i64>,
    hours: Periods,
    days: Periods,
    /// Whether `through` has been read from the tables.
    loaded: bool,
}

/// Versions of rollup rows (`refreshed_ms`), each newer than the one before: the wall clock, in
/// ms, so that a restarted sink's rows replace those of the run before it.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    last: u64,
}

impl Versions {
    /// The next version.
    pub fn take(&mut self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.last = now.max(self.last + 1);
        self.last
    }
}

impl Rollups {
    /// Rollups over the windows of `window_ms`, a period closing `grace_ms` after its end.
    pub fn new(window_ms: u32, grace_ms: u64) -> Rollups {
        Rollups {
            window_ms,
            grace_ms: i64::try_from(grace_ms).unwrap_or(i64::MAX),
            horizon: None,
            hours: Periods::new(HOUR_MS),
            days: Periods::new(DAY_MS),
            loaded: false,
        }
    }

    /// Takes note of what `batch` holds: how far event time has come, and which closed periods
    /// it lands in.
    pub fn observe(&mut self, batch: &Batch) {
        let mut newest = self.horizon;
        let mut see = |ms: i64| newest = Some(newest.map_or(ms, |n| n.max(ms)));
        for w in batch.aggregates.windows() {
            see(i64::from(w.end) * 1_000);
            if w.window_ms == self.window_ms {
                self.hours.touch(i64::from(w.start) * 1_000);
            }
        }
        for s in &batch.status {
            see(s.ts_ms);
            self.days.touch(s.ts_ms);
        }
        for a in &batch.anomalies {
            see(a.ts_ms);
        }
        // Last-seen times are left out: they are readings' times, ahead of what the pipeline has
        // closed by its out-of-orderness and by any device clock it has not corrected yet, and
        // the horizon is meant to follow what it has closed.
        self.horizon = newest;
    }

    /// What must be written now.
    pub fn plan(&self) -> Plan {
        let closed_before = self.horizon.map(|h| h.saturating_sub(self.grace_ms));
        let (hours, hours_through) = self.hours.plan(closed_before, false);
        let (days, days_through) = self.days.plan(closed_before, true);
        Plan {
            window_ms: self.window_ms,
            hours,
            days,
            hours_through,
            days_through,
        }
    }

    /// Reads, once, how far the tables were written by an earlier run, and where the data
    /// starts if they are empty.
    pub async fn load(&mut self, client: &Client) -> Result<(), clickhouse::error::Error> {
        if self.loaded {
            return Ok(());
        }
        // An empty table answers 0 (1970): nothing there.
        let some = |s: u32| (s > 0).then_some(i64::from(s) * 1_000);
        let last_hour: u32 = client
            .query("SELECT toUInt32(max(hour)) FROM device_hourly")
            .fetch_one()
            .await?;
        let first_window: u32 = client
            .query("SELECT toUInt32(min(window_start)) FROM device_aggregates WHERE window_ms = ?")
            .bind(self.window_ms)
            .fetch_one()
            .await?;
        let last_day: u32 = client
            .query("SELECT toUInt32(toDateTime(max(day), 'UTC')) FROM device_uptime_daily")
            .fetch_one()
            .await?;
        let first_status: u32 = client
            .query("SELECT toUInt32(min(ts)) FROM device_status")
            .fetch_one()
            .await?;
        load_periods(&mut self.hours, some(last_hour), some(first_window));
        load_periods(&mut self.days, some(last_day), some(first_status));
        self.loaded = true;
        Ok(())
    }

    /// Takes `plan` as written: the periods leave the to-do list as soon as the plan is handed
    /// on, since the batch that made it is not committed until the plan is written (a crash
    /// before that reads the batch again, and the tables say what is missing).
    pub fn done(&mut self, plan: &Plan) {
        for (periods, written, through) in [
            (&mut self.hours, &plan.hours, plan.hours_through),
            (&mut self.days, &plan.days, plan.days_through),
        ] {
            for p in written {
                periods.dirty.remove(p);
            }
            if through.is_some() {
                periods.through = through;
                periods.earliest = None;
            }
        }
    }
}

fn load_periods(periods: &mut Periods, last_written: Option<i64>, first_data: Option<i64>) {
    match last_written {
        // The last period written is written again once it is closed: a crash between a device
        // table and its tenant table leaves that period half written.
        Some(last) => {
            let next = periods.start(last);
            periods.through = Some(periods.through.map_or(next, |t| t.max(next)));
        }
        None => {
            if let Some(first) = first_data {
                periods.touch(first);
            }
        }
    }
}

fn seconds(ms: i64) -> i64 {
    ms.div_euclid(1_000)
}

/// `device_hourly` for the hour starting at `hour` (ms).
pub fn device_hourly(hour: i64, window_ms: u32, version: u64) -> String {
    let (from, to) = (seconds(hour), seconds(hour + HOUR_MS));
    format!(
        "INSERT INTO device_hourly \
         SELECT tenant_id, device_id, toDateTime({from}, 'UTC') AS hour, toUInt32(count()), \
         sum(count), sum(errors), max(rt_max), min(health_score), sum(health_score), \
         quantilesTDigestWeightedStateIf(0.5, 0.95, 0.99)(assumeNotNull(rt_mean), toUInt64(count), isNotNull(rt_mean)), \
         toUInt64({version}) \
         FROM device_aggregates FINAL \
         WHERE window_ms = {window_ms} AND window_start >= toDateTime({from}) AND window_start < toDateTime({to}) \
         GROUP BY tenant_id, device_id"
    )
}

/// `tenant_hourly` for the hour starting at `hour` (ms), from `device_hourly`.
pub fn tenant_hourly(hour: i64, version: u64) -> String {
    let from = seconds(hour);
    format!(
        "INSERT INTO tenant_hourly \
         SELECT tenant_id, hour, toUInt32(count()), sum(windows), sum(readings), sum(errors), \
         max(rt_max), min(health_min), sum(health_sum), \
         quantilesTDigestWeightedMergeState(0.5, 0.95, 0.99)(rt_quantiles), toUInt64({version}) \
         FROM device_hourly FINAL WHERE hour = toDateTime({from}) \
         GROUP BY tenant_id, hour"
    )
}

/// `device_uptime_daily` for the day starting at `day` (ms): each device starts the day in the
/// status it ended the day before in (none for a device not seen before), then follows its
/// transitions of the day, sorted by time.
pub fn device_uptime(day: i64, version: u64) -> String {
    let (from, to) = (day, day + DAY_MS);
    let (day_s, before_s) = (seconds(day), seconds(day - DAY_MS));
    format!(
        "INSERT INTO device_uptime_daily \
         SELECT tenant_id, device_id, toDate(toDateTime({day_s}, 'UTC')), \
         toUInt64({to} - times[1]), \
         toUInt64(arraySum(arrayMap((s, a, b) -> if(s = 'online', b - a, 0), statuses, times, arrayPushBack(arraySlice(times, 2), toInt64({to}))))), \
         toUInt32(length(changes)), statuses[-1], toUInt64({version}) \
         FROM ( \
           SELECT tenant_id, device_id, changes, \
           arrayConcat(if(before = '', emptyArrayInt64(), [toInt64({from})]), arrayMap(c -> c.1, changes)) AS times, \
           arrayConcat(if(before = '', emptyArrayString(), [before]), arrayMap(c -> c.2, changes)) AS statuses \
           FROM ( \
             SELECT tenant_id, device_id, end_status AS before FROM device_uptime_daily FINAL \
             WHERE day = toDate(toDateTime({before_s}, 'UTC')) \
           ) ALL FULL OUTER JOIN ( \
             SELECT tenant_id, device_id, arraySort(groupArray((ts_ms, status))) AS changes \
             FROM device_status FINAL WHERE ts_ms >= {from} AND ts_ms < {to} \
             GROUP BY tenant_id, device_id \
           ) USING (tenant_id, device_id) \
         ) WHERE length(times) > 0"
    )
}

/// `tenant_uptime_daily` for the day starting at `day` (ms), from `device_uptime_daily`.
pub fn tenant_uptime(day: i64, version: u64) -> String {
    let day_s = seconds(day);
    format!(
        "INSERT INTO tenant_uptime_daily \
         SELECT tenant_id, day, toUInt32(count()), sum(observed_ms), sum(online_ms), \
         sum(transitions), toUInt64({version}) \
         FROM device_uptime_daily FINAL WHERE day = toDate(toDateTime({day_s}, 'UTC')) \
         GROUP BY tenant_id, day"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = HOUR_MS;

    #[test]
    fn hours_close_once_the_horizon_is_past_them_by_the_grace() {
        let mut p = Periods::new(H);
        p.touch(10 * H + 5);
        assert_eq!(p.plan(Some(11 * H - 1), false), (vec![], None));
        let (hours, through) = p.plan(Some(12 * H), false);
        assert_eq!((hours, through), (vec![10 * H, 11 * H], Some(12 * H)));
        p.through = through;
        p.earliest = None;
        // Nothing new closed, nothing late: nothing to do.
        assert_eq!(p.plan(Some(12 * H + 5), false), (vec![], Some(12 * H)));
        // A late record in hour 10 brings that hour back, and only it.
        p.touch(10 * H + 7);
        p.touch(12 * H + 7);
        assert_eq!(
            p.plan(Some(12 * H + 5), false),
            (vec![10 * H], Some(12 * H))
        );
    }

    #[test]
    fn a_late_day_rewrites_every_closed_day_after_it() {
        let mut p = Periods::new(DAY_MS);
        p.through = Some(5 * DAY_MS);
        p.touch(2 * DAY_MS + 1);
        let (days, through) = p.plan(Some(6 * DAY_MS), true);
        assert_eq!(days, vec![2 * DAY_MS, 3 * DAY_MS, 4 * DAY_MS, 5 * DAY_MS]);
        assert_eq!(through, Some(6 * DAY_MS));
    }

    #[test]
    fn done_keeps_what_was_not_written() {
        let mut r = Rollups::new(60_000, 0);
        r.hours.through = Some(10 * H);
        r.hours.touch(3 * H);
        let plan = r.plan();
        assert_eq!(plan.hours, vec![3 * H]);
        r.hours.touch(4 * H);
        r.done(&plan);
        assert_eq!(r.plan().hours, vec![4 * H]);
        assert_eq!(r.hours.through, Some(10 * H));
    }

    #[test]
    fn the_statements_name_their_period() {
        assert!(device_hourly(H, 60_000, 7).contains("toDateTime(3600, 'UTC')"));
        assert!(device_hourly(H, 60_000, 7).contains("window_start < toDateTime(7200)"));
        assert!(device_uptime(DAY_MS, 7).contains("day = toDate(toDateTime(0, 'UTC'))"));
        assert!(tenant_uptime(DAY_MS, 7).contains("toDateTime(86400, 'UTC')"));
    }
}
