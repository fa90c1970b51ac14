//! Response-time quantiles of one window: exact while the window holds few readings, a DDSketch
//! (relative error [`RELATIVE_ERROR`]) beyond that.
//!
//! Quantiles follow one definition, linear interpolation between the closest ranks (numpy's
//! default, DuckDB's `quantile_cont`, Excel's `PERCENTILE.INC`): of the `n` sorted values `v`, with
//! `h = q * (n - 1)` and `lo = floor(h)`, the `q`-quantile is `v[lo] + (h - lo) * (v[lo + 1] -
//! v[lo])`, and `v[n - 1]` at `q = 1`. So p99 of ten readings lies 91 % of the way from the ninth
//! to the tenth, where a plain rank `floor(q * (n - 1))` would never report the slowest.
//!
//! Most device windows hold a handful of readings; a DDSketch allocates at least 128 bins (1 KiB)
//! as soon as it sees a value, which would make per-device memory ten times the budget. Keeping
//! the first [`EXACT_LIMIT`] values and sketching only past that keeps small windows small and
//! exact, and large windows bounded.
//!
//! Exact values are kept as `f32` (half the memory; 7 significant digits, a relative error of
//! 6e-8, far inside the sketch's 1 %) and given back as the shortest decimal that reads back to
//! the same `f32`, so 87.3 comes out as 87.3, not 87.30000305175781. Up to [`EXACT_LIMIT`] values
//! the quantile is the definition applied to these values, exactly.
//!
//! Beyond that, the sketch estimates the values at ranks `lo` and `lo + 1`, each within
//! [`RELATIVE_ERROR`] of the true value at its rank, and the two estimates are interpolated the
//! same way. The result is a convex combination of estimates each within `RELATIVE_ERROR * v` of
//! a non-negative value `v`, so it is within `RELATIVE_ERROR` times the true quantile of the true
//! quantile: `|estimate - quantile| <= RELATIVE_ERROR * quantile`. The minimum and maximum (`q = 0`
//! and `q = 1`) are exact either way. Values below 0.001 (ms) count as 0 in the sketch, an
//! absolute error under 0.001 that the relative bound does not cover.

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};

/// Relative accuracy of the sketch: a reported quantile is within this share of the true
/// quantile (by linear interpolation) of the window's values.
pub const RELATIVE_ERROR: f64 = 0.01;
/// Values kept exactly before switching to the sketch.
pub const EXACT_LIMIT: usize = 32;
const MAX_BINS: u32 = 2048;
/// Below this the sketch has no bins: such values count as 0.
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

/// The `f64` with the shortest decimal form that reads back to `x`; formatted on the stack, as
/// this runs for every quantile of every window.
fn widen(x: f32) -> f64 {
    use std::io::Write;
    // An f32 prints in at most 48 characters (the smallest subnormal, in positional notation).
    let mut buf = [0u8; 64];
    let mut rest = &mut buf[..];
    if write!(rest, "{x}").is_err() {
        return f64::from(x);
    }
    let len = 64 - rest.len();
    std::str::from_utf8(&buf[..len])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::from(x))
}

fn new_sketch() -> DDSketch {
    DDSketch::new(Config::new(RELATIVE_ERROR, MAX_BINS, MIN_VALUE))
}

/// The `q`-quantile (`q` in [0, 1]) of `n` sorted values by linear interpolation between the
/// closest ranks; `at(rank)` gives the value at a rank (0-based). Asks for at most two ranks.
fn interpolate(n: usize, q: f64, mut at: impl FnMut(usize) -> Option<f64>) -> Option<f64> {
    let last = n.checked_sub(1)?;
    let h = q * last as f64;
    let lo = (h.floor() as usize).min(last);
    let below = at(lo)?;
    let fraction = h - lo as f64;
    if lo == last || fraction == 0.0 {
        return Some(below);
    }
    let above = at(lo + 1)?;
    Some(below + fraction * (above - below))
}

/// The sketch's estimate of the value at `rank` (0-based) of its `n` values.
fn sketch_at_rank(sketch: &DDSketch, rank: usize, n: usize) -> Option<f64> {
    let last = n.saturating_sub(1);
    // sketches-ddsketch 0.4 answers q = 0 and q = 1 with the exact minimum and maximum, and any
    // other q with the bin holding rank `floor(q * (n - 1))`. Asking for (rank + 0.5) / (n - 1)
    // puts q * (n - 1) half a rank from either integer; the division and the crate's
    // multiplication move it by a few ulps (under 1e-3 of a rank below 2^40 values), so the floor
    // is `rank` itself. Asking for rank / (n - 1) could come back as rank - 1 after rounding.
    let q = if rank == 0 {
        0.0
    } else if rank >= last {
        1.0
    } else {
        (rank as f64 + 0.5) / last as f64
    };
    let estimate = sketch.quantile(q).ok().flatten()?;
    // A bin's representative may lie outside the values seen (1 % above the maximum when all
    // values are equal). The true value at the rank lies within [min, max], so clamping can only
    // bring the estimate closer to it, and p99 never exceeds the reported maximum.
    match (sketch.min(), sketch.max()) {
        (Some(min), Some(max)) => Some(estimate.max(min).min(max)),
        _ => Some(estimate),
    }
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

    /// The `q`-quantile by linear interpolation between the closest ranks: of the `n` sorted
    /// values `v`, with `h = q * (n - 1)` and `lo = floor(h)`, `v[lo] + (h - lo) * (v[lo + 1] -
    /// v[lo])` (`v[n - 1]` at `q = 1`). `q` is clamped into [0, 1]; `None` when empty or when `q`
    /// is NaN.
    ///
    /// Exact up to [`EXACT_LIMIT`] values (as stored: `f32`, given back as the shortest decimal).
    /// Beyond, the interpolation of the sketch's estimates at ranks `lo` and `lo + 1`, within
    /// [`RELATIVE_ERROR`] of the true quantile (`|estimate - quantile| <= RELATIVE_ERROR *
    /// quantile`, for values of at least 0.001). `q = 0` and `q = 1` are the exact minimum and
    /// maximum either way.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let [v] = self.quantiles([q]);
        v
    }

    /// Several quantiles at once, as [`RtDigest::quantile`] gives each: the exact values are
    /// sorted once for all of them.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<f64>; N] {
        let sorted = match self {
            RtDigest::Exact(values) => {
                let mut sorted = values.clone();
                // Widening is monotonic, so sorting the f32 values sorts their widened forms;
                // only the (at most) two values the interpolation reads are widened.
                sorted.sort_unstable_by(f32::total_cmp);
                sorted
            }
            _ => Vec::new(),
        };
        qs.map(|q| {
            if q.is_nan() {
                return None;
            }
            self.quantile_of(&sorted, q.clamp(0.0, 1.0))
        })
    }

    fn quantile_of(&self, sorted: &[f32], q: f64) -> Option<f64> {
        match self {
            RtDigest::Empty => None,
            RtDigest::Exact(_) => {
                interpolate(sorted.len(), q, |rank| sorted.get(rank).copied().map(widen))
            }
            RtDigest::Sketch(sketch) => {
                let n = sketch.count();
                interpolate(n, q, |rank| sketch_at_rank(sketch, rank, n))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The values as the digest holds them: the first [`EXACT_LIMIT`] through `f32` (and back as
    /// the shortest decimal), later ones as they came.
    fn as_stored(values: &[f64]) -> Vec<f64> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if i < EXACT_LIMIT {
                    widen(*v as f32)
                } else {
                    *v
                }
            })
            .collect()
    }

    /// The textbook definition, written out on a sorted copy: position `q * (n - 1)`, the value
    /// at its whole part plus its fractional part of the step to the next value.
    fn reference(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let position = q * (sorted.len() - 1) as f64;
        let whole = position as usize;
        let part = position - whole as f64;
        match sorted.get(whole + 1) {
            Some(next) => sorted[whole] + part * (next - sorted[whole]),
            None => sorted[whole],
        }
    }

    fn digest(values: impl IntoIterator<Item = f64>) -> RtDigest {
        let mut d = RtDigest::default();
        for v in values {
            d.add(v);
        }
        d
    }

    fn close(got: Option<f64>, want: f64) -> bool {
        got.is_some_and(|g| (g - want).abs() < 1e-12)
    }

    #[test]
    fn small_windows_are_exact() {
        assert_eq!(RtDigest::default().quantile(0.5), None);
        let d = digest([5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(d.count(), 5);
        assert_eq!(d.quantile(0.0), Some(1.0));
        assert_eq!(d.quantile(0.25), Some(2.0));
        assert_eq!(d.quantile(0.5), Some(3.0));
        assert!(close(d.quantile(0.9), 4.6), "{:?}", d.quantile(0.9));
        assert_eq!(d.quantile(1.0), Some(5.0));
        assert_eq!(d.quantile(f64::NAN), None);
    }

    #[test]
    fn p99_of_ten_readings_lies_between_the_two_slowest_and_99_percent_of_the_way() {
        let d = digest((1..=10).map(f64::from));
        let p99 = d.quantile(0.99).unwrap();
        assert!(9.0 < p99 && p99 < 10.0, "{p99}");
        assert!(close(Some(p99), 9.91), "{p99}");
        assert!(close(d.quantile(0.95), 9.55), "{:?}", d.quantile(0.95));
        assert!(close(d.quantile(0.5), 5.5), "{:?}", d.quantile(0.5));
    }

    #[test]
    fn one_reading_is_every_quantile_of_its_window() {
        let d = digest([87.3]);
        for q in [0.0, 0.01, 0.5, 0.95, 0.99, 1.0] {
            assert_eq!(
                d.quantile(q),
                Some(87.3),
                "q{q}: short decimals come back as written"
            );
        }
    }

    #[test]
    fn sketched_windows_interpolate_between_the_estimates_at_neighbouring_ranks() {
        // 1.5 apart, every value has a bin of its own, so an estimate off by one rank would be
        // 50 % off, not 1 %.
        let values: Vec<f64> = (0..40).map(|k| 1.5f64.powi(k)).collect();
        let d = digest(values.iter().copied());
        assert!(matches!(d, RtDigest::Sketch(_)));
        let last = (values.len() - 1) as f64;
        assert_eq!(d.quantile(0.0), Some(1.0));
        assert_eq!(d.quantile(1.0), values.last().copied());
        for (rank, v) in values.iter().enumerate() {
            let got = d.quantile(rank as f64 / last).unwrap();
            assert!(
                (got - v).abs() <= RELATIVE_ERROR * v,
                "rank {rank}: {got}, want {v}"
            );
            if let Some(next) = values.get(rank + 1) {
                let halfway = (v + next) / 2.0;
                let got = d.quantile((rank as f64 + 0.5) / last).unwrap();
                assert!(
                    (got - halfway).abs() <= RELATIVE_ERROR * halfway,
                    "between ranks {rank} and {}: {got}, want {halfway}",
                    rank + 1
                );
            }
        }
    }

    #[test]
    fn a_sketched_window_of_equal_values_reports_that_value_for_every_quantile() {
        let d = digest(std::iter::repeat_n(250.0, 100));
        for q in [0.0, 0.5, 0.95, 0.99, 1.0] {
            assert_eq!(d.quantile(q), Some(250.0), "q{q}");
        }
    }

    proptest! {
        /// Exact windows equal the definition applied to the values as stored; sketched windows
        /// are within RELATIVE_ERROR of it (the documented bound).
        #[test]
        fn quantiles_follow_linear_interpolation_within_the_error_bound(
            values in prop::collection::vec(0.01f64..100_000.0, 1..400),
            q in prop_oneof![prop::sample::select(vec![0.5, 0.95, 0.99]), 0.0f64..=1.0],
        ) {
            let d = digest(values.iter().copied());
            prop_assert_eq!(d.count(), values.len());
            let got = d.quantile(q).unwrap_or(f64::NAN);
            let want = reference(&as_stored(&values), q);
            if values.len() <= EXACT_LIMIT {
                prop_assert_eq!(got, want, "q{}", q);
            } else {
                prop_assert!((got - want).abs() <= RELATIVE_ERROR * want.abs() + 1e-9,
                    "q{q}: got {got}, want {want}");
            }
        }
    }
}
