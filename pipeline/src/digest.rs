//! Response-time quantiles of one window: exact while the window holds few readings, a DDSketch
//! (relative error [`RELATIVE_ERROR`]) beyond that.
//!
//! Most device windows hold a handful of readings; a DDSketch allocates at least 128 bins (1 KiB)
//! as soon as it sees a value, which would make per-device memory ten times the budget. Keeping
//! the first [`EXACT_LIMIT`] values and sketching only past that keeps small windows small and
//! exact, and large windows bounded. Both answer with the same rank rule, so the switch is
//! invisible except for the documented error bound.
//!
//! Exact values are kept as `f32` (half the memory; 7 significant digits, a relative error of
//! 6e-8, far inside the sketch's 1 %) and given back as the shortest decimal that reads back to
//! the same `f32`, so 87.3 comes out as 87.3, not 87.30000305175781.

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};

/// Relative accuracy of the sketch: a reported quantile is within this share of the true value at
/// that rank.
pub const RELATIVE_ERROR: f64 = 0.01;
/// Values kept exactly before switching to the sketch.
pub const EXACT_LIMIT: usize = 32;
const MAX_BINS: u32 = 2048;
const MIN_VALUE: f64 = 1e-3;

/// A quantile summary of response times.
#[derive(Clone, Default, Serialize, Deserialize)]
pub enum RtDigest {
    /// No values yet.
    #[default]
    Empty,
    /// Up to [`EXACT_LIMIT`] values, unsorted.
    Exact(Vec<f32>),
    /// Many values.
    Sketch(Box<DDSketch>),
}

impl std::fmt::Debug for RtDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RtDigest::Empty => f.write_str("Empty"),
            RtDigest::Exact(values) => f.debug_tuple("Exact").field(values).finish(),
            RtDigest::Sketch(s) => write!(f, "Sketch({} values)", s.count()),
        }
    }
}

/// The `f64` with the shortest decimal form that reads back to `x`.
fn widen(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn new_sketch() -> DDSketch {
    DDSketch::new(Config::new(RELATIVE_ERROR, MAX_BINS, MIN_VALUE))
}

impl RtDigest {
    /// Adds a value (finite and non-negative: telemetry validation guarantees it).
    pub fn add(&mut self, v: f64) {
        match self {
            RtDigest::Empty => *self = RtDigest::Exact(vec![v as f32]),
            RtDigest::Exact(values) if values.len() < EXACT_LIMIT => values.push(v as f32),
            RtDigest::Exact(values) => {
                let mut sketch = new_sketch();
                for x in values.iter() {
                    sketch.add(widen(*x));
                }
                sketch.add(v);
                *self = RtDigest::Sketch(Box::new(sketch));
            }
            RtDigest::Sketch(sketch) => sketch.add(v),
        }
    }

    /// Number of values added.
    pub fn count(&self) -> usize {
        match self {
            RtDigest::Empty => 0,
            RtDigest::Exact(values) => values.len(),
            RtDigest::Sketch(sketch) => sketch.count(),
        }
    }

    /// The value at rank `floor(q * (n - 1))` of the sorted values (the sketch's rank rule), or
    /// `None` when empty. `q = 0` and `q = 1` are the exact minimum and maximum either way.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let q = q.clamp(0.0, 1.0);
        match self {
            RtDigest::Empty => None,
            RtDigest::Exact(values) => {
                let mut sorted = values.clone();
                sorted.sort_unstable_by(f32::total_cmp);
                let rank = (q * (sorted.len() as f64 - 1.0)) as usize;
                sorted.get(rank).copied().map(widen)
            }
            RtDigest::Sketch(sketch) => sketch.quantile(q).ok().flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn exact(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_unstable_by(f64::total_cmp);
        sorted[(q * (sorted.len() as f64 - 1.0)) as usize]
    }

    #[test]
    fn small_windows_are_exact() {
        let mut d = RtDigest::default();
        assert_eq!(d.quantile(0.5), None);
        for v in [5.0, 1.0, 3.0, 2.0, 4.0] {
            d.add(v);
        }
        assert_eq!(d.quantile(0.5), Some(3.0));
        assert_eq!(d.quantile(0.0), Some(1.0));
        assert_eq!(d.quantile(1.0), Some(5.0));
        assert_eq!(d.count(), 5);
        let mut d = RtDigest::default();
        d.add(87.3);
        assert_eq!(
            d.quantile(0.5),
            Some(87.3),
            "short decimals come back as written"
        );
    }

    proptest! {
        /// The documented bound: within RELATIVE_ERROR of the exact value at the same rank, on
        /// either side of the switch to the sketch.
        #[test]
        fn quantiles_stay_within_the_error_bound(
            values in prop::collection::vec(0.01f64..100_000.0, 1..400),
            q in prop::sample::select(vec![0.5, 0.95, 0.99]),
        ) {
            let mut d = RtDigest::default();
            for v in &values {
                d.add(*v);
            }
            prop_assert_eq!(d.count(), values.len());
            let got = d.quantile(q).unwrap_or(f64::NAN);
            let want = exact(&values, q);
            prop_assert!((got - want).abs() <= RELATIVE_ERROR * want + 1e-9,
                "q{q}: got {got}, exact {want}");
        }
    }
}
