//! What quantization did, for the CLI to print: per quantized layer its input range and how far
//! its output moved from float on the calibration images, the layers kept in float and why,
//! and how far the model's outputs moved. Cosines compare a layer's pre-epilogue output
//! `x·W + b` with the float one: "alone" feeds the layer the float model's own input, so it is
//! the error this layer adds; "in model" is the fully quantized model's value there, the error
//! accumulated up to and including it.

use std::fmt;

use vitc_ir::ValueId;

use crate::range::QParams;
use crate::select::Role;
use crate::{ActivationScheme, Method};

/// Running sums for the cosine of two sequences.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Cos {
    dot: f64,
    aa: f64,
    bb: f64,
}

impl Cos {
    pub(crate) fn of(a: &[f32], b: &[f32]) -> Cos {
        let mut c = Cos::default();
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (x as f64, y as f64);
            c.dot += x * y;
            c.aa += x * x;
            c.bb += y * y;
        }
        c
    }

    pub(crate) fn add(&mut self, o: Cos) {
        self.dot += o.dot;
        self.aa += o.aa;
        self.bb += o.bb;
    }

    /// 1 for two all-zero sequences (nothing moved), 0 when only one is zero.
    pub(crate) fn value(&self) -> f64 {
        if self.aa == 0.0 && self.bb == 0.0 {
            1.0
        } else if self.aa == 0.0 || self.bb == 0.0 {
            0.0
        } else {
            self.dot / (self.aa.sqrt() * self.bb.sqrt())
        }
    }
}

/// One quantized `vit.linear`.
#[derive(Clone, Debug)]
pub struct LayerReport {
    /// Its value in the float (input) module.
    pub value: ValueId,
    /// That value as `--emit ir` prints it (`%14`).
    pub id: String,
    /// Its node name (the ONNX location).
    pub name: String,
    pub role: Role,
    /// Weight shape [K, N].
    pub k: usize,
    pub n: usize,
    /// The input's quantization.
    pub x: QParams,
    /// The input's smallest and largest value on the calibration images.
    pub observed: (f64, f64),
    /// Fraction of the input's calibration values outside the range (saturated).
    pub clipped: f64,
    /// Cosine with float of this layer's output given the float input.
    pub cosine_alone: f64,
    /// Cosine with float of this layer's output in the quantized model.
    pub cosine_in_model: f64,
}

/// A `vit.linear` left in float.
#[derive(Clone, Debug)]
pub struct KeptLayer {
    pub value: ValueId,
    /// That value as `--emit ir` prints it.
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The keep-float entry that named it, or why it cannot be quantized.
    pub reason: String,
}

/// One model output, float against quantized, over the calibration images.
#[derive(Clone, Debug)]
pub struct OutputReport {
    pub name: String,
    pub cosine: f64,
    /// Rows whose argmax agrees, and rows (for outputs with more than one column).
    pub top1_agree: Option<(usize, usize)>,
}

#[derive(Clone, Debug)]
pub struct QuantReport {
    pub method: Method,
    pub scheme: ActivationScheme,
    /// Calibration images run (runs × the model's batch).
    pub images: usize,
    /// Quantized layers, worst `cosine_alone` first.
    pub layers: Vec<LayerReport>,
    pub kept: Vec<KeptLayer>,
    pub outputs: Vec<OutputReport>,
    /// Constant bytes before and after.
    pub weight_bytes: (usize, usize),
}

impl fmt::Display for QuantReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.layers.len() + self.kept.len();
        writeln!(
            f,
            "quantize int8: {} of {total} vit.linear to vit.qlinear; activations {} per tensor, \
             range by {} over {} calibration images; weights i8 symmetric per output channel",
            self.layers.len(),
            match self.scheme {
                ActivationScheme::Asymmetric => "ui8 asymmetric",
                ActivationScheme::Symmetric => "i8 symmetric",
            },
            self.method,
            self.images
        )?;
        if self.kept.is_empty() {
            writeln!(f, "kept in float: none")?;
        } else {
            writeln!(f, "kept in float: {}", self.kept.len())?;
            for k in &self.kept {
                writeln!(
                    f,
                    "  {:>6} {:<5} {:<28} {}",
                    k.id,
                    k.role.name(),
                    k.name,
                    k.reason
                )?;
            }
        }
        writeln!(
            f,
            "per-layer cosine vs float of x·W + b on the calibration images, worst first \
             (alone: float input; in model: the quantized model's):"
        )?;
        let w = self
            .layers
            .iter()
            .map(|l| l.name.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            f,
            "  {:>6} {:<5} {:<w$} {:>9} {:>22} {:>3} {:>8} {:>9} {:>9}",
            "value", "role", "layer", "K×N", "input range", "zp", "clipped", "alone", "in model"
        )?;
        for l in &self.layers {
            writeln!(
                f,
                "  {:>6} {:<5} {:<w$} {:>9} {:>22} {:>3} {:>7.3}% {:>9.6} {:>9.6}",
                l.id,
                l.role.name(),
                l.name,
                format!("{}×{}", l.k, l.n),
                format!("[{:.4}, {:.4}]", l.x.lo, l.x.hi),
                l.x.zero_point,
                100.0 * l.clipped,
                l.cosine_alone,
                l.cosine_in_model
            )?;
        }
        for o in &self.outputs {
            write!(f, "output {}: cosine {:.6} vs float", o.name, o.cosine)?;
            if let Some((a, n)) = o.top1_agree {
                write!(f, ", top-1 agrees on {a}/{n}")?;
            }
            writeln!(f)?;
        }
        let (a, b) = self.weight_bytes;
        writeln!(
            f,
            "weights: {a} -> {b} bytes ({:+.1}%)",
            if a > 0 {
                100.0 * (b as f64 - a as f64) / a as f64
            } else {
                0.0
            }
        )
    }
}
