//! The statistics of one activation over a calibration set: its exact minimum and maximum and
//! a histogram of its values, fed one run at a time. Every range-choosing method works from
//! this alone, so the calibration set never has to be held in memory (a ViT's activations over
//! a few hundred images are gigabytes; the histogram is at most [`MAX_BINS`] counters).
//!
//! Bin `k` covers `[k·w, (k+1)·w)` for the current width `w`. When values arrive outside the
//! bins the histogram grows; when it would pass [`MAX_BINS`] the width doubles and neighbouring
//! bins merge, which is exact because bin `k` of width `w` lies inside bin `⌊k/2⌋` of width
//! `2w`. The result depends only on the values and the order they came in, never on threads.
//! This module chooses nothing; `range` does.

/// Bins the first run's range is cut into.
const INITIAL_BINS: f64 = 2048.0;
/// Most bins kept; at least half of them span the observed range after a coarsening.
pub(crate) const MAX_BINS: usize = 8192;

#[derive(Clone, Debug, Default)]
pub(crate) struct Histogram {
    width: f64,
    /// Index of `bins[0]`.
    first: i64,
    bins: Vec<u64>,
    min: f64,
    max: f64,
    count: u64,
    /// NaN and infinite values seen (not binned).
    non_finite: u64,
}

impl Histogram {
    /// Add the finite values of `xs`.
    pub(crate) fn add(&mut self, xs: &[f32]) {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for &x in xs {
            if x.is_finite() {
                lo = lo.min(x as f64);
                hi = hi.max(x as f64);
            } else {
                self.non_finite += 1;
            }
        }
        if lo > hi {
            return;
        }
        if self.count == 0 {
            self.start(lo, hi);
        } else {
            self.cover(lo.min(self.min), hi.max(self.max));
        }
        self.min = if self.count == 0 {
            lo
        } else {
            self.min.min(lo)
        };
        self.max = if self.count == 0 {
            hi
        } else {
            self.max.max(hi)
        };
        for &x in xs {
            if x.is_finite() {
                let k = (x as f64 / self.width).floor() as i64 - self.first;
                self.bins[k as usize] += 1;
                self.count += 1;
            }
        }
    }

    fn start(&mut self, lo: f64, hi: f64) {
        // A constant first run still needs a positive width; relative to the value's size so
        // that later runs near it resolve, absolute for an all-zero run.
        let span = (hi - lo).max(lo.abs().max(hi.abs()) * 1e-3).max(1e-6);
        self.width = span / INITIAL_BINS;
        self.first = (lo / self.width).floor() as i64;
        let last = (hi / self.width).floor() as i64;
        self.bins = vec![0; (last - self.first + 1) as usize];
        while self.bins.len() > MAX_BINS {
            self.coarsen(1);
        }
    }

    /// Grow (and if needed coarsen) the bins to cover `[lo, hi]`.
    fn cover(&mut self, lo: f64, hi: f64) {
        let mut doublings = 0u32;
        let mut w = self.width;
        while ((hi / w).floor() as i64 - (lo / w).floor() as i64 + 1) as usize > MAX_BINS {
            w *= 2.0;
            doublings += 1;
        }
        if doublings > 0 {
            self.coarsen(doublings);
        }
        let (first, last) = (
            (lo / self.width).floor() as i64,
            (hi / self.width).floor() as i64,
        );
        let old_last = self.first + self.bins.len() as i64 - 1;
        let (new_first, new_last) = (first.min(self.first), last.max(old_last));
        if new_first == self.first && new_last == old_last {
            return;
        }
        let mut bins = vec![0; (new_last - new_first + 1) as usize];
        let shift = (self.first - new_first) as usize;
        bins[shift..shift + self.bins.len()].copy_from_slice(&self.bins);
        self.bins = bins;
        self.first = new_first;
    }

    /// Double the width `d` times, merging bins.
    fn coarsen(&mut self, d: u32) {
        let d = d.min(62);
        let new_first = self.first >> d;
        let new_last = (self.first + self.bins.len() as i64 - 1) >> d;
        let mut bins = vec![0; (new_last - new_first + 1) as usize];
        for (i, &c) in self.bins.iter().enumerate() {
            bins[(((self.first + i as i64) >> d) - new_first) as usize] += c;
        }
        self.bins = bins;
        self.first = new_first;
        self.width *= (1u64 << d) as f64;
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn non_finite(&self) -> u64 {
        self.non_finite
    }

    pub(crate) fn min(&self) -> f64 {
        self.min
    }

    pub(crate) fn max(&self) -> f64 {
        self.max
    }

    /// Each non-empty bin as (centre, count), in increasing order. The centres of the outer
    /// bins are clamped into [min, max] so that no statistic reaches past the data.
    pub(crate) fn centres(&self) -> Vec<(f64, f64)> {
        self.bins
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| {
                let centre = (self.first as f64 + i as f64 + 0.5) * self.width;
                (centre.clamp(self.min, self.max), c as f64)
            })
            .collect()
    }

    /// How many values are at most `x`, counting a bin's values as spread evenly over it.
    pub(crate) fn count_le(&self, x: f64) -> f64 {
        if self.count == 0 || x < self.min {
            return 0.0;
        }
        if x >= self.max {
            return self.count as f64;
        }
        let mut total = 0.0;
        for (i, &c) in self.bins.iter().enumerate() {
            let (a, b) = self.bin_span(i);
            if b <= x {
                total += c as f64;
            } else {
                if a < x {
                    total += c as f64 * (x - a) / (b - a);
                }
                break;
            }
        }
        total
    }

    /// The edges of bin `i`, narrowed to [min, max].
    fn bin_span(&self, i: usize) -> (f64, f64) {
        let a = ((self.first + i as i64) as f64 * self.width).max(self.min);
        let b = ((self.first + i as i64 + 1) as f64 * self.width).min(self.max);
        (a, b.max(a))
    }

    /// The value below which the fraction `q` ∈ [0, 1] of the values lie (linear within a bin).
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let target = q.clamp(0.0, 1.0) * self.count as f64;
        if target <= 0.0 {
            return self.min;
        }
        let mut seen = 0.0;
        for (i, &c) in self.bins.iter().enumerate() {
            let c = c as f64;
            if c > 0.0 && seen + c >= target {
                let (a, b) = self.bin_span(i);
                return a + (b - a) * ((target - seen) / c);
            }
            seen += c;
        }
        self.max
    }

    /// The smallest t ≥ 0 with at least the fraction `q` of the values in [−t, t].
    pub(crate) fn abs_quantile(&self, q: f64) -> f64 {
        let top = self.min.abs().max(self.max.abs());
        if self.count == 0 || q >= 1.0 {
            return top;
        }
        let target = q.max(0.0) * self.count as f64;
        let inside = |t: f64| {
            // Values exactly at −t count as inside; the bins cannot tell them apart from just
            // below, which the bisection's resolution makes irrelevant.
            self.count_le(t) - self.count_le(-t - f64::EPSILON * t.max(1.0))
        };
        let (mut a, mut b) = (0.0, top);
        for _ in 0..80 {
            let m = 0.5 * (a + b);
            if inside(m) >= target {
                b = m;
            } else {
                a = m;
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_extremes_and_counts_across_growth() {
        let mut h = Histogram::default();
        h.add(&[0.0, 1.0, 0.5]);
        // Much wider later runs force coarsening; nothing is lost.
        h.add(&[-1000.0, 1e6, 3.0, f32::NAN, f32::INFINITY]);
        h.add(&[2.0; 10]);
        assert_eq!(h.count(), 16);
        assert_eq!(h.non_finite(), 2);
        assert_eq!((h.min(), h.max()), (-1000.0, 1e6));
        assert!(h.bins.len() <= MAX_BINS);
        assert_eq!(h.bins.iter().sum::<u64>(), 16);
        assert_eq!(h.count_le(1e6), 16.0);
        assert_eq!(h.count_le(-1001.0), 0.0);
    }

    #[test]
    fn quantiles_of_a_uniform_ramp() {
        let xs: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        let mut h = Histogram::default();
        for c in xs.chunks(1000) {
            h.add(c);
        }
        for q in [0.01, 0.25, 0.5, 0.9, 0.999] {
            let v = h.quantile(q);
            assert!((v - q).abs() < 2e-3, "q {q}: {v}");
        }
        assert_eq!(h.quantile(1.0), h.max());
        assert_eq!(h.quantile(0.0), 0.0);
        // Symmetric quantile of values in [-1, 1): |x| is uniform on [0, 1).
        let ys: Vec<f32> = (0..20_000).map(|i| i as f32 / 10_000.0 - 1.0).collect();
        let mut h = Histogram::default();
        h.add(&ys);
        for q in [0.5, 0.9, 0.99] {
            let t = h.abs_quantile(q);
            assert!((t - q).abs() < 2e-3, "q {q}: {t}");
        }
        assert_eq!(h.abs_quantile(1.0), 1.0);
    }

    #[test]
    fn constant_and_empty_runs() {
        let mut h = Histogram::default();
        h.add(&[]);
        h.add(&[f32::NAN]);
        assert_eq!(h.count(), 0);
        h.add(&[0.0; 8]);
        h.add(&[0.0; 8]);
        assert_eq!((h.count(), h.min(), h.max()), (16, 0.0, 0.0));
        assert_eq!(h.quantile(0.5), 0.0);
        h.add(&[5.0]);
        assert_eq!(h.max(), 5.0);
        assert_eq!(h.count_le(4.0), 16.0);
    }
}
