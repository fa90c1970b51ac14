//! Each device's clock as the truth sees it: the offset a reading shows, the run of readings
//! that confirms a new one, and forgetting the devices that fell silent.

use super::*;

impl Truth {
    /// Looks at a reading `skew` off the truth from the device's side: returns the device's
    /// offset after it, and whether the reading agrees with that offset.
    pub(super) fn device(
        &mut self,
        tenant: &str,
        device: &str,
        skew: i64,
        truth: i64,
        rules: &ClockRules,
        trusted: bool,
    ) -> (i64, bool) {
        let tolerance = rules.tolerance_ms.unsigned_abs();
        let near = |a: i64, b: i64| a.abs_diff(b) <= tolerance;
        let known = self.devices.get(tenant).and_then(|d| d.get(device));
        if known.is_none() && near(skew, 0) {
            return (0, true);
        }
        let mut clock = known.cloned().unwrap_or_default();
        clock.seen = truth;
        let result = if near(skew, clock.offset) {
            clock.candidate = None;
            (clock.offset, true)
        } else if near(skew, 0) {
            clock.offset = 0;
            clock.candidate = None;
            (0, true)
        } else {
            // A candidate older than the truth's last move without votes starts again: what it
            // saw before may have been the lag of a partition that came back.
            let candidate = match clock.candidate {
                Some(c) if near(skew, c.offset) && c.rebases == self.rebases => Candidate {
                    offset: skew,
                    readings: c.readings.saturating_add(1),
                    ..c
                },
                _ => Candidate {
                    offset: skew,
                    readings: 1,
                    since: self.cast,
                    from: truth,
                    rebases: self.rebases,
                },
            };
            let kept = candidate.readings >= CONFIRM_READINGS
                && truth.saturating_sub(candidate.from) >= rules.tolerance_ms;
            // Votes upheld the truth meanwhile.
            let supported = trusted || self.cast - candidate.since >= CONFIRM_SUPPORT;
            if kept && supported {
                clock.offset = candidate.offset;
                clock.candidate = None;
                (clock.offset, true)
            } else {
                clock.candidate = Some(candidate);
                (clock.offset, false)
            }
        };
        if clock.offset == 0 && clock.candidate.is_none() {
            self.remove(tenant, device);
        } else {
            self.insert(tenant, device, clock);
        }
        result
    }

    /// The known clock offset of a device (0: none).
    pub(super) fn offset_of(&self, tenant: &str, device: &str) -> i64 {
        if self.device_count == 0 {
            return 0;
        }
        self.devices
            .get(tenant)
            .and_then(|d| d.get(device))
            .map_or(0, |c| c.offset)
    }

    pub(super) fn insert(&mut self, tenant: &str, device: &str, clock: DeviceClock) {
        let devices = self.devices.entry(tenant.to_string()).or_default();
        if devices.insert(device.to_string(), clock).is_none() {
            self.device_count += 1;
            if self.device_count > self.prune_at.max(1_024) {
                self.prune();
            }
        }
    }

    pub(super) fn remove(&mut self, tenant: &str, device: &str) {
        if let Some(devices) = self.devices.get_mut(tenant)
            && devices.remove(device).is_some()
        {
            self.device_count -= 1;
            if devices.is_empty() {
                self.devices.remove(tenant);
            }
        }
    }

    /// Forgets devices silent for a day of the truth's time; the map is then allowed to double
    /// before the next look, so the scans cost a constant share per device.
    pub(super) fn prune(&mut self) {
        let Some(now) = self.judged() else {
            return;
        };
        for devices in self.devices.values_mut() {
            devices.retain(|_, c| now.saturating_sub(c.seen) <= FORGET_AFTER_MS);
        }
        self.devices.retain(|_, d| !d.is_empty());
        self.device_count = self.devices.values().map(Map::len).sum();
        self.prune_at = 2 * self.device_count;
    }
}
