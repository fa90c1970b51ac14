//! Retrying, one way for every part: whether a failure can pass ([`Retryable`], which every
//! crate's errors answer) and how long to wait between attempts ([`Backoff`], policies named by
//! what they wait for). Only the delays live here; each caller sleeps as its runtime does.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Whether trying the same thing again can succeed.
pub trait Retryable {
    /// True for a failure of the moment (a service away or busy, a queue full); false when the
    /// same attempt would fail the same way (a malformed record, refused credentials, a file that
    /// cannot be read, a table that does not take the rows).
    fn is_retryable(&self) -> bool;
}

/// What a retry waits for, and so how it backs off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// A service that does not answer or is not there yet (Kafka brokers, a topic, the schema
    /// registry, a producer's acknowledgements): 100 ms doubling to 5 s, with jitter so that
    /// many clients do not retry in step.
    Unavailable,
    /// A service that answers but refuses for now (ClickHouse under load or restarting): 200 ms
    /// doubling to 30 s with jitter, so a server that is recovering is not hammered.
    Refused,
    /// A local queue with no room (librdkafka's producer queue): 1 ms doubling to 100 ms. It
    /// drains as fast as the brokers acknowledge, so a long wait would only idle the job.
    QueueFull,
}

impl Backoff {
    /// The waits, one per failed attempt, never ending (the caller decides when to give up).
    pub fn delays(self) -> Delays {
        let (first, max, jitter) = match self {
            Backoff::Unavailable => (Duration::from_millis(100), Duration::from_secs(5), true),
            Backoff::Refused => (Duration::from_millis(200), Duration::from_secs(30), true),
            Backoff::QueueFull => (Duration::from_millis(1), Duration::from_millis(100), false),
        };
        let builder = ExponentialBuilder::default()
            .with_min_delay(first)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        let builder = if jitter {
            builder.with_jitter()
        } else {
            builder
        };
        Delays {
            inner: builder.build(),
            max,
        }
    }
}

/// The waits of one run of failures; start a new one after a success.
#[derive(Debug)]
pub struct Delays {
    inner: ExponentialBackoff,
    max: Duration,
}

impl Delays {
    /// How long to wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        // The builder sets no limit on attempts, so the iterator does not end; the cap is the
        // answer if it ever did.
        self.inner.next().unwrap_or(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within a hundredth: the crate computes in `f32` seconds.
    fn near(wait: Duration, ms: f64) -> bool {
        (wait.as_secs_f64() * 1000.0 - ms).abs() <= ms / 100.0
    }

    #[test]
    fn waits_double_up_to_the_cap_and_go_on() {
        let mut d = Backoff::QueueFull.delays();
        for ms in [
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0, 100.0, 100.0, 100.0,
        ] {
            let wait = d.next_wait();
            assert!(near(wait, ms), "{wait:?} for {ms} ms");
        }
    }

    #[test]
    fn jitter_stays_within_twice_the_wait() {
        for policy in [Backoff::Unavailable, Backoff::Refused] {
            let mut d = policy.delays();
            let (mut base, cap) = match policy {
                Backoff::Refused => (200.0, 30_000.0),
                _ => (100.0, 5_000.0),
            };
            for _ in 0..20 {
                let wait = d.next_wait().as_secs_f64() * 1000.0;
                assert!(
                    wait >= base * 0.99 && wait <= base * 2.01,
                    "{policy:?}: {wait} ms for {base}"
                );
                base = f64::min(base * 2.0, cap);
            }
        }
    }
}
