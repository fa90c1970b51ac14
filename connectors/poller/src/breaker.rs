//! A device's circuit breaker: after `failures` failed probes in a row it opens, and the device is
//! left alone for `open_ms`; then one trial probe (half-open) closes it again or reopens it. A
//! broken device costs one probe per breaker period, not one per interval, and a failed fleet
//! does not keep every probe slot busy with timeouts.
//!
//! Written here rather than taken from a crate: the breakers on crates.io wrap calls and keep
//! their own clocks, where this one is a state per device (a million of them) driven by the
//! scheduler's clock, which tests move by hand.

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Probes run; this many failed in a row.
    Closed {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// No probes until this time (ms).
    Open {
        /// When the trial probe may run.
        until: i64,
    },
    /// The trial probe is running.
    HalfOpen,
}

/// One device's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    state: State,
}

impl Default for Breaker {
    fn default() -> Breaker {
        Breaker {
            state: State::Closed { failures: 0 },
        }
    }
}

impl Breaker {
    /// Where it stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a probe due at `now` may run; an open breaker whose time is up lets one trial
    /// through (and is half-open until its result).
    pub fn allow(&mut self, now: i64) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// A probe's result at `now`; returns the new state when it changed between closed, open
    /// and half-open.
    pub fn record(&mut self, ok: bool, now: i64, failures: u32, open_ms: u64) -> Option<State> {
        let before = self.state;
        let open = State::Open {
            until: now.saturating_add(i64::try_from(open_ms).unwrap_or(i64::MAX)),
        };
        self.state = match (self.state, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures: n }, false) if n + 1 < failures => {
                State::Closed { failures: n + 1 }
            }
            (State::Closed { .. } | State::HalfOpen, false) => open,
            // A result of a probe that started before the breaker opened.
            (State::Open { .. }, false) => before,
        };
        let kind = |s: State| std::mem::discriminant(&s);
        (kind(before) != kind(self.state)).then_some(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_opens_after_failures_in_a_row_half_opens_once_and_closes_on_success() {
        let mut b = Breaker::default();
        assert!(b.allow(0));
        assert_eq!(b.record(false, 0, 3, 1_000), None);
        // A success in between starts the count again.
        assert_eq!(b.record(true, 10, 3, 1_000), None);
        assert_eq!(b.record(false, 20, 3, 1_000), None);
        assert_eq!(b.record(false, 30, 3, 1_000), None);
        assert_eq!(
            b.record(false, 40, 3, 1_000),
            Some(State::Open { until: 1_040 })
        );
        assert!(!b.allow(500));
        assert!(!b.allow(1_039));
        assert!(b.allow(1_040));
        assert_eq!(b.state(), State::HalfOpen);
        // Only the one trial.
        assert!(!b.allow(1_041));
        assert_eq!(
            b.record(false, 1_100, 3, 1_000),
            Some(State::Open { until: 2_100 })
        );
        assert!(b.allow(2_100));
        assert_eq!(
            b.record(true, 2_150, 3, 1_000),
            Some(State::Closed { failures: 0 })
        );
        assert!(b.allow(2_160));
    }

    #[test]
    fn one_failure_opens_a_breaker_of_one() {
        let mut b = Breaker::default();
        assert_eq!(b.record(false, 5, 1, 100), Some(State::Open { until: 105 }));
    }
}
