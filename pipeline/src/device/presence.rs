//! A device's presence: its last-seen time told at most once an interval, going offline after its
//! timeout (or, registered and never heard from, `never_seen`; or at once when reported
//! offline), leaving after its retention or its decommissioning, and every status transition,
//! which also feeds the flapping rule.

use super::*;
use crate::reading::device_key;

impl Device {
    pub(super) fn go_offline(&mut self, ts: i64, ctx: &mut Ctx<'_>) {
        if self.presence == Some(Presence::Expected) {
            events::device_never_seen();
            let reason = TransitionReason::NeverSeen;
            return self.transition(DeviceStatus::Offline, None, ts, reason, ctx);
        }
        let reason = if ts < ctx.data_watermark {
            TransitionReason::Timeout
        } else {
            TransitionReason::InputIdle
        };
        self.leave_online(ts, reason, ctx);
    }

    /// The device was reported offline at `ts`: offline at once if it was online; a device not
    /// online (offline already, or registered and never heard from) stays as it is.
    pub(super) fn reported_offline(&mut self, ts: i64, ctx: &mut Ctx<'_>) {
        if self.presence != Some(Presence::Online) {
            return;
        }
        events::device_reported_offline();
        self.leave_online(ts, TransitionReason::ReportedOffline, ctx);
    }

    /// An online device goes offline at `ts` for `reason`, its last-seen time told first.
    fn leave_online(&mut self, ts: i64, reason: TransitionReason, ctx: &mut Ctx<'_>) {
        self.tell_last_seen(ctx);
        self.transition(
            DeviceStatus::Offline,
            Some(DeviceStatus::Online),
            ts,
            reason,
            ctx,
        );
    }

    /// Silent past the retention: the device leaves with reason `retired`.
    pub(super) fn retire(&mut self, ts: i64, ctx: &mut Ctx<'_>) {
        let message = format!(
            "the device was retired after {} s of silence",
            (ts - self.last_seen) / 1000
        );
        let previous = match self.presence {
            Some(Presence::Online) => DeviceStatus::Online,
            _ => DeviceStatus::Offline,
        };
        let retention = ctx.cfg.device_retention_ms as f64;
        self.leave(
            ts,
            previous,
            TransitionReason::Retired,
            retention,
            message,
            ctx,
        );
        events::device_retired();
    }

    /// The device's last records: every firing anomaly resolves (nothing is left firing for a
    /// device nobody tracks; observed is its silence, against `threshold`), and a last
    /// transition from `previous` says why it left. Its owner frees it.
    pub(super) fn leave(
        &mut self,
        ts: i64,
        previous: DeviceStatus,
        reason: TransitionReason,
        threshold: f64,
        message: String,
        ctx: &mut Ctx<'_>,
    ) {
        let silent = ts - self.last_seen;
        for kind in self.switches.firing() {
            let obs = Observation {
                observed: silent as f64,
                threshold,
                baseline: None,
                message: message.clone(),
            };
            self.change(kind, false, true, ts, move || obs, ctx);
        }
        ctx.out.push(Output::Status(StatusTransition {
            tenant_id: self.tenant.to_string(),
            device_id: self.id.to_string(),
            device_class: self.class.as_deref().map(str::to_string),
            status: DeviceStatus::Offline,
            previous: Some(previous),
            ts,
            last_seen: self.last_seen,
            reason,
            time_in_previous_ms: Some(ts - self.since),
            event_id: event_id::status(&self.tenant, &self.id, DeviceStatus::Offline, ts),
        }));
        self.presence = Some(Presence::Retired);
    }

    pub(super) fn transition(
        &mut self,
        status: DeviceStatus,
        previous: Option<DeviceStatus>,
        ts: i64,
        reason: TransitionReason,
        ctx: &mut Ctx<'_>,
    ) {
        let time_in_previous_ms = previous.map(|_| ts - self.since);
        ctx.out.push(Output::Status(StatusTransition {
            tenant_id: self.tenant.to_string(),
            device_id: self.id.to_string(),
            device_class: self.class.as_deref().map(str::to_string),
            status,
            previous,
            ts,
            last_seen: if reason == TransitionReason::FirstSeen {
                ts
            } else {
                self.last_seen
            },
            reason,
            time_in_previous_ms,
            event_id: event_id::status(&self.tenant, &self.id, status, ts),
        }));
        self.since = ts;
        self.presence = Some(match status {
            DeviceStatus::Online => Presence::Online,
            DeviceStatus::Offline => Presence::Offline {
                prolonged_fired: false,
                seen: reason != TransitionReason::NeverSeen,
            },
        });
        if previous.is_some() {
            let cap = self.thresholds.flapping_transitions as usize;
            let flaps = self.flaps.get_or_insert_with(Box::default);
            if flaps.len() >= cap {
                flaps.pop_front();
            }
            flaps.push_back(ts);
            self.flapping(ts, ctx);
        }
    }

    /// Sends the latest reading time, unless it went out already; then, if a newer reading
    /// was announced on arrival before this, that announcement again (see [`crate::lastseen`]).
    pub(super) fn tell_last_seen(&mut self, ctx: &mut Ctx<'_>) {
        if self.told >= self.last_seen || !self.tracked() {
            return;
        }
        self.told = self.last_seen;
        let class = self.class.as_deref();
        ctx.out.push(lastseen::record(
            &self.tenant,
            &self.id,
            class,
            self.last_seen,
        ));
        if let Some(newer) = ctx
            .announced
            .last_of(device_key(&self.tenant, &self.id))
            .filter(|t| *t > self.last_seen)
        {
            ctx.out
                .push(lastseen::record(&self.tenant, &self.id, class, newer));
        }
    }
}
