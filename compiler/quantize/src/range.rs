//! Choosing an activation's clipping range from its calibration histogram, and the scale and
//! zero point that range gives.
//!
//! Three methods: `minmax` takes the observed extremes (no value clips, but one outlier
//! stretches every step); `percentile` drops the given fraction of the most extreme values;
//! `mse` searches the range that minimises the expected squared error of quantizing the
//! observed values — clipping error for those outside, step²/12 rounding error for those
//! inside — evaluated in O(1) per candidate from prefix sums over the bins. Ranges always
//! contain 0, so that 0 (padding, ReLU's zeros) is exact. This module never changes a module.

use crate::histogram::Histogram;
use crate::{ActivationScheme, Method};
use vitc_ir::DType;

/// A clipping range and the quantization parameters it gives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    /// The real values the ends of the integer range stand for.
    pub lo: f64,
    pub hi: f64,
    pub scale: f32,
    pub zero_point: i32,
    pub dtype: DType,
}

/// The range `method` chooses for the values `h` saw, quantized per `scheme`.
pub(crate) fn choose(h: &Histogram, method: Method, scheme: ActivationScheme) -> QParams {
    let (lo, hi) = match (method, scheme) {
        (Method::MinMax, _) => (h.min(), h.max()),
        (Method::Percentile(p), ActivationScheme::Asymmetric) => {
            let q = p / 100.0;
            (h.quantile(1.0 - q), h.quantile(q))
        }
        (Method::Percentile(p), ActivationScheme::Symmetric) => {
            let t = h.abs_quantile(p / 100.0);
            (-t, t)
        }
        (Method::Mse, _) => mse_range(h, scheme),
    };
    qparams(lo, hi, scheme)
}

/// Scale and zero point for the range [lo, hi] widened to contain 0.
pub(crate) fn qparams(lo: f64, hi: f64, scheme: ActivationScheme) -> QParams {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    match scheme {
        ActivationScheme::Asymmetric => {
            let span = hi - lo;
            if !(span.is_finite() && span > 0.0) {
                return QParams {
                    lo: 0.0,
                    hi: 0.0,
                    scale: 1.0,
                    zero_point: 0,
                    dtype: DType::U8,
                };
            }
            let scale = (span / 255.0) as f32;
            let zp = (-lo / scale as f64).round().clamp(0.0, 255.0) as i32;
            QParams {
                lo: (0 - zp) as f64 * scale as f64,
                hi: (255 - zp) as f64 * scale as f64,
                scale,
                zero_point: zp,
                dtype: DType::U8,
            }
        }
        ActivationScheme::Symmetric => {
            let t = lo.abs().max(hi.abs());
            if !(t.is_finite() && t > 0.0) {
                return QParams {
                    lo: 0.0,
                    hi: 0.0,
                    scale: 1.0,
                    zero_point: 0,
                    dtype: DType::I8,
                };
            }
            // ±127 steps: the scale every symmetric int8 scheme uses; −128 stays reachable
            // for values just past −t.
            let scale = (t / 127.0) as f32;
            QParams {
                lo: -128.0 * scale as f64,
                hi: 127.0 * scale as f64,
                scale,
                zero_point: 0,
                dtype: DType::I8,
            }
        }
    }
}

/// Candidates per side of the range searched by `mse`.
const MSE_STEPS: usize = 128;

/// The error model of `mse` over a histogram: prefix sums of count, Σx and Σx² by bin centre.
struct ErrorModel {
    centres: Vec<f64>,
    s0: Vec<f64>,
    s1: Vec<f64>,
    s2: Vec<f64>,
}

impl ErrorModel {
    fn new(h: &Histogram) -> ErrorModel {
        let bins = h.centres();
        let mut m = ErrorModel {
            centres: bins.iter().map(|b| b.0).collect(),
            s0: vec![0.0],
            s1: vec![0.0],
            s2: vec![0.0],
        };
        for (c, n) in bins {
            m.s0.push(m.s0.last().unwrap_or(&0.0) + n);
            m.s1.push(m.s1.last().unwrap_or(&0.0) + n * c);
            m.s2.push(m.s2.last().unwrap_or(&0.0) + n * c * c);
        }
        m
    }

    /// Σ n·(c − a)² over bins i..j.
    fn clip(&self, i: usize, j: usize, a: f64) -> f64 {
        let (n, s, q) = (
            self.s0[j] - self.s0[i],
            self.s1[j] - self.s1[i],
            self.s2[j] - self.s2[i],
        );
        (q - 2.0 * a * s + a * a * n).max(0.0)
    }

    /// Expected squared error of quantizing the values into `levels` steps over [lo, hi].
    fn error(&self, lo: f64, hi: f64, levels: f64) -> f64 {
        let below = self.centres.partition_point(|&c| c < lo);
        let inside = self.centres.partition_point(|&c| c <= hi);
        let step = (hi - lo) / levels;
        let end = self.centres.len();
        self.clip(0, below, lo)
            + self.clip(inside, end, hi)
            + (self.s0[inside] - self.s0[below]) * step * step / 12.0
    }
}

fn mse_range(h: &Histogram, scheme: ActivationScheme) -> (f64, f64) {
    let model = ErrorModel::new(h);
    let (min, max) = (h.min().min(0.0), h.max().max(0.0));
    let frac = |k: usize| k as f64 / MSE_STEPS as f64;
    match scheme {
        ActivationScheme::Symmetric => {
            let top = min.abs().max(max);
            // The fine grid a 1-D search affords.
            let steps = 4 * MSE_STEPS;
            let best = (1..=steps)
                .map(|k| top * k as f64 / steps as f64)
                .map(|t| (model.error(-t, t, 254.0), t))
                .fold((f64::INFINITY, top), |a, b| if b.0 < a.0 { b } else { a });
            (-best.1, best.1)
        }
        ActivationScheme::Asymmetric => {
            // A side with no values stays at 0; the other side's candidates are enough.
            let los: Vec<f64> = if min < 0.0 {
                (1..=MSE_STEPS).map(|k| min * frac(k)).collect()
            } else {
                vec![0.0]
            };
            let his: Vec<f64> = if max > 0.0 {
                (1..=MSE_STEPS).map(|k| max * frac(k)).collect()
            } else {
                vec![0.0]
            };
            let mut best = (f64::INFINITY, min, max);
            for &lo in &los {
                for &hi in &his {
                    if hi > lo {
                        let e = model.error(lo, hi, 255.0);
                        if e < best.0 {
                            best = (e, lo, hi);
                        }
                    }
                }
            }
            (best.1, best.2)
        }
    }
}

/// The fraction of the values `h` saw that fall outside `p`'s range (and so clip).
pub(crate) fn clipped(h: &Histogram, p: &QParams) -> f64 {
    if h.count() == 0 {
        return 0.0;
    }
    let half = p.scale as f64 / 2.0;
    let below = h.count_le(p.lo - half);
    let above = h.count() as f64 - h.count_le(p.hi + half);
    (below + above) / h.count() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(xs: &[f32]) -> Histogram {
        let mut h = Histogram::default();
        h.add(xs);
        h
    }

    /// Deterministic values with a heavy tail: most near N(0, 1)-ish, a few far out.
    fn heavy_tailed() -> Vec<f32> {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..50_000)
            .map(|i| {
                let u: f64 = (0..6).map(|_| next()).sum::<f64>() - 3.0;
                if i % 5000 == 0 {
                    (u * 40.0) as f32
                } else {
                    u as f32
                }
            })
            .collect()
    }

    fn mse(xs: &[f32], p: &QParams) -> f64 {
        let (qmin, qmax) = if p.dtype == DType::U8 {
            (0.0, 255.0)
        } else {
            (-128.0, 127.0)
        };
        xs.iter()
            .map(|&x| {
                let q = ((x / p.scale).round_ties_even() as f64 + p.zero_point as f64)
                    .clamp(qmin, qmax);
                let d = (q - p.zero_point as f64) * p.scale as f64;
                (x as f64 - d).powi(2)
            })
            .sum::<f64>()
            / xs.len() as f64
    }

    #[test]
    fn minmax_keeps_every_value() {
        let xs = heavy_tailed();
        let h = hist(&xs);
        for scheme in [ActivationScheme::Asymmetric, ActivationScheme::Symmetric] {
            let p = choose(&h, Method::MinMax, scheme);
            assert_eq!(clipped(&h, &p), 0.0, "{scheme:?}");
            assert!(p.lo <= h.min() + p.scale as f64 && p.hi >= h.max() - p.scale as f64);
        }
    }

    #[test]
    fn percentile_and_mse_clip_the_tail_and_quantize_better() {
        let xs = heavy_tailed();
        let h = hist(&xs);
        for scheme in [ActivationScheme::Asymmetric, ActivationScheme::Symmetric] {
            let mm = choose(&h, Method::MinMax, scheme);
            let pc = choose(&h, Method::Percentile(99.9), scheme);
            let ms = choose(&h, Method::Mse, scheme);
            assert!(pc.scale < mm.scale && ms.scale < mm.scale, "{scheme:?}");
            let (e_mm, e_pc, e_ms) = (mse(&xs, &mm), mse(&xs, &pc), mse(&xs, &ms));
            // The MSE search optimises this very quantity (up to the histogram's resolution).
            assert!(
                e_ms < e_mm && e_ms <= e_pc * 1.05,
                "{scheme:?}: {e_mm} {e_pc} {e_ms}"
            );
            // 99.9 % keeps about 99.9 % of the values.
            let c = clipped(&h, &pc);
            assert!(c > 0.0 && c < 0.002, "{scheme:?}: clipped {c}");
        }
    }

    #[test]
    fn ranges_contain_zero_and_zero_is_exact() {
        let h = hist(&[1.0, 2.0, 3.5]);
        let p = choose(&h, Method::MinMax, ActivationScheme::Asymmetric);
        assert_eq!((p.zero_point, p.lo), (0, 0.0));
        let h = hist(&[-0.17, 0.0, 4.0]);
        let p = choose(&h, Method::MinMax, ActivationScheme::Asymmetric);
        assert!(p.zero_point > 0 && p.zero_point < 255);
        let zero = ((0.0f32 / p.scale).round() as i32 + p.zero_point - p.zero_point) as f32;
        assert_eq!(zero * p.scale, 0.0);
        // All-zero activations get a valid (positive) scale.
        let h = hist(&[0.0; 4]);
        for scheme in [ActivationScheme::Asymmetric, ActivationScheme::Symmetric] {
            for m in [Method::MinMax, Method::Percentile(99.0), Method::Mse] {
                let p = choose(&h, m, scheme);
                assert!(p.scale > 0.0 && p.scale.is_finite(), "{m:?} {scheme:?}");
            }
        }
    }
}
