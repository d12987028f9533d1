//! Post-training int8 quantization (PTQ) of a fused vit IR module. The float module runs on
//! the reference interpreter over calibration images; the values entering every `vit.linear`
//! are collected into histograms; a per-tensor range is chosen for each (`minmax`,
//! `percentile` or `mse`); and each linear becomes a `vit.qlinear` with those input
//! parameters and per-output-channel symmetric int8 weights, its activation and residual
//! following as separate ops (`vit.qlinear` has no such epilogue). Attention, softmax, layer
//! norm and GELU stay in f32, as in a QAT model's fused form. Layers can be kept in float by
//! role, value id or name. The report measures, per layer and for the outputs, how far the
//! quantized module moved from the float one on the same images.
//!
//! This crate reads no files and prints nothing; it never calibrates on anything but the runs
//! it is given, and it changes nothing but the linears it quantizes.

mod error;
mod histogram;
mod range;
mod report;
mod rewrite;
mod run;
mod select;

use std::fmt;
use std::sync::Arc;

use vitc_ir::{Activation, Module, Op, Tensor, ValueId};

pub use error::QuantizeError;
pub use range::QParams;
pub use report::{KeptLayer, LayerReport, OutputReport, QuantReport};
pub use select::Role;

use histogram::Histogram;
use report::Cos;
use run::{for_each_run, Tapped};

/// The percentile method's default: keep all but the most extreme 0.01 % of the values.
pub const DEFAULT_PERCENTILE: f64 = 99.99;

/// How an activation's range is chosen from its calibration values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// The observed minimum and maximum.
    MinMax,
    /// The range holding the given percentage (in (50, 100]) of the values, each tail
    /// trimmed by the same share (of |x| for the symmetric scheme).
    Percentile(f64),
    /// The range minimising the expected squared quantization error of the values.
    Mse,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::MinMax => write!(f, "minmax"),
            Method::Percentile(p) => write!(f, "percentile {p}"),
            Method::Mse => write!(f, "mse"),
        }
    }
}

/// How activations map to 8-bit integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationScheme {
    /// ui8 with a zero point: the whole [lo, hi] range gets all 256 levels, which suits
    /// one-sided values such as GELU outputs.
    Asymmetric,
    /// i8 with zero point 0 over [−t, t].
    Symmetric,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeOptions {
    pub method: Method,
    pub scheme: ActivationScheme,
    /// Entries naming linears to keep in float: a role (`qkv`, `proj`, `attention` = qkv and
    /// proj, `fc1`, `fc2`, `mlp` = fc1 and fc2, `head`, `linear` = all), a value id `%N` of
    /// the fused module, or a substring of a layer's node name or weight name.
    pub keep_float: Vec<String>,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            method: Method::Percentile(DEFAULT_PERCENTILE),
            scheme: ActivationScheme::Asymmetric,
            keep_float: Vec::new(),
        }
    }
}

/// Quantize the linears of the fused module `m`, calibrated on `runs` (each one input of the
/// single-input module, e.g. `vitc_prune::Calibration::runs`). Returns the quantized module
/// and what was done.
pub fn quantize(
    m: &Module,
    runs: &[Tensor],
    opts: &QuantizeOptions,
) -> Result<(Module, QuantReport), QuantizeError> {
    if let Method::Percentile(p) = opts.method {
        if !(p > 50.0 && p <= 100.0) {
            return Err(QuantizeError::Percentile(p));
        }
    }
    let batch = check_runs(m, runs)?;
    let layers = select::layers(m);
    if layers.is_empty() {
        return Err(QuantizeError::NoLinear);
    }
    let total = layers.len();
    let (chosen, kept) = select::split(m, layers, &opts.keep_float)?;
    if chosen.is_empty() {
        return Err(QuantizeError::AllKept(total));
    }

    // Inputs shared by several linears (the Q, K and V projections) are observed once.
    let mut inputs: Vec<ValueId> = Vec::new();
    let input_of: Vec<usize> = chosen
        .iter()
        .map(|l| {
            let x = m.node(l.value).inputs[0];
            inputs.iter().position(|&v| v == x).unwrap_or_else(|| {
                inputs.push(x);
                inputs.len() - 1
            })
        })
        .collect();
    let observe = Tapped::new(m, &inputs);
    let mut hists = vec![Histogram::default(); inputs.len()];
    for_each_run(
        runs,
        |x| Ok(observe.run(x)?.1),
        |_, taps| {
            for (h, t) in hists.iter_mut().zip(&taps) {
                h.add(&t.to_f32_vec());
            }
            Ok(())
        },
    )?;

    let mut plans = Vec::with_capacity(chosen.len());
    for (l, &xi) in chosen.iter().zip(&input_of) {
        let h = &hists[xi];
        if h.count() == 0 {
            let n = m.node(l.value);
            return Err(QuantizeError::Layer {
                node: format!("{} ({})", n.op.name(), n.name),
                msg: format!(
                    "its input is NaN or infinite in all {} calibration values",
                    h.non_finite()
                ),
            });
        }
        plans.push(rewrite::Plan {
            node: l.value,
            x: range::choose(h, opts.method, opts.scheme),
        });
    }
    let rw = rewrite::rewrite(m, &plans)?;

    let (alone, in_model, outputs) = measure(m, &rw, &plans, runs)?;
    let mut layer_reports: Vec<LayerReport> = chosen
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let n = m.node(l.value);
            let w = m.ty(n.inputs[1]);
            let h = &hists[input_of[i]];
            LayerReport {
                value: l.value,
                id: select::printed_id(m, l.value),
                name: n.name.clone(),
                role: l.role,
                k: w.shape[0],
                n: w.shape[1],
                x: plans[i].x,
                observed: (h.min(), h.max()),
                clipped: range::clipped(h, &plans[i].x),
                cosine_alone: alone[i].value(),
                cosine_in_model: in_model[i].value(),
            }
        })
        .collect();
    layer_reports.sort_by(|a, b| {
        a.cosine_alone
            .total_cmp(&b.cosine_alone)
            .then(a.value.cmp(&b.value))
    });
    let report = QuantReport {
        method: opts.method,
        scheme: opts.scheme,
        images: runs.len() * batch,
        layers: layer_reports,
        kept: kept
            .into_iter()
            .map(|(l, reason)| KeptLayer {
                value: l.value,
                id: select::printed_id(m, l.value),
                name: m.node(l.value).name.clone(),
                role: l.role,
                reason,
            })
            .collect(),
        outputs,
        weight_bytes: (m.constant_bytes(), rw.module.constant_bytes()),
    };
    Ok((rw.module, report))
}

/// The model's batch, once every run is checked to be its single input.
fn check_runs(m: &Module, runs: &[Tensor]) -> Result<usize, QuantizeError> {
    let [(name, input)] = m.inputs.as_slice() else {
        return Err(QuantizeError::Calibration(format!(
            "the model has {} inputs; calibration needs a model with one image input",
            m.inputs.len()
        )));
    };
    let want = m.ty(*input);
    if runs.is_empty() {
        return Err(QuantizeError::Calibration("no calibration images".into()));
    }
    if let Some(t) = runs.iter().find(|t| t.ty() != *want) {
        return Err(QuantizeError::Calibration(format!(
            "a run is {}, the model input {name} is {want}",
            t.ty()
        )));
    }
    Ok(want.shape.first().copied().unwrap_or(1))
}

type Measured = (Vec<Cos>, Vec<Cos>, Vec<OutputReport>);

/// What evaluating one layer alone needs: the float pre-epilogue op and the qlinear node, with
/// their constant operands after the input.
struct LayerEval<'a> {
    linear: Op,
    qlinear: &'a vitc_ir::Node,
    float_consts: Vec<Arc<Tensor>>,
    quant_consts: Vec<Arc<Tensor>>,
}

impl LayerEval<'_> {
    /// (float x·W + b, the qlinear's output) for the float input `x`.
    fn eval(&self, x: &Tensor) -> Result<(Vec<f32>, Vec<f32>), QuantizeError> {
        fn with<'t>(x: &'t Tensor, c: &'t [Arc<Tensor>]) -> Vec<&'t Tensor> {
            std::iter::once(x)
                .chain(c.iter().map(|t| t.as_ref()))
                .collect()
        }
        let ty = &self.qlinear.ty;
        let f = vitc_ir::interp::eval(&self.linear, &with(x, &self.float_consts), ty)?;
        let q = vitc_ir::interp::eval(&self.qlinear.op, &with(x, &self.quant_consts), ty)?;
        Ok((f.to_f32_vec(), q.to_f32_vec()))
    }
}

/// Constants behind `vs`, in order.
fn constants(m: &Module, vs: &[ValueId]) -> Result<Vec<Arc<Tensor>>, QuantizeError> {
    vs.iter()
        .map(|&v| {
            m.constant(v).cloned().ok_or_else(|| QuantizeError::Layer {
                node: format!("{v} ({})", m.node(v).name),
                msg: "a weight, scale or bias of a quantized layer is not a constant".into(),
            })
        })
        .collect()
}

/// Index of the largest element of `r` (the first on ties).
fn argmax(r: &[f32]) -> usize {
    r.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |a, (j, &x)| if x > a.1 { (j, x) } else { a },
        )
        .0
}

/// Cosine sums, agreeing argmax rows and rows of one output, float against quantized.
fn compare_output(f: &Tensor, g: &Tensor) -> (Cos, usize, usize) {
    let (fv, gv) = (f.to_f32_vec(), g.to_f32_vec());
    let cols = f.shape.last().copied().unwrap_or(1).max(1);
    let (mut agree, mut rows) = (0, 0);
    if cols > 1 {
        for (r, s) in fv.chunks(cols).zip(gv.chunks(cols)) {
            agree += (argmax(r) == argmax(s)) as usize;
            rows += 1;
        }
    }
    (Cos::of(&fv, &gv), agree, rows)
}

/// Run the float and the quantized module on every run and compare, per layer and per output.
fn measure(
    m: &Module,
    rw: &rewrite::Rewritten,
    plans: &[rewrite::Plan],
    runs: &[Tensor],
) -> Result<Measured, QuantizeError> {
    let q = &rw.module;
    let x_taps: Vec<ValueId> = plans.iter().map(|p| m.node(p.node).inputs[0]).collect();
    let float = Tapped::new(m, &x_taps);
    let quant = Tapped::new(q, &rw.qlinear);
    let mut evals = Vec::with_capacity(plans.len());
    for (p, &qv) in plans.iter().zip(&rw.qlinear) {
        let n = m.node(p.node);
        let has_bias = matches!(n.op, Op::Linear { has_bias: true, .. });
        let qn = q.node(qv);
        evals.push(LayerEval {
            linear: Op::Linear {
                activation: Activation::None,
                has_bias,
                has_residual: false,
            },
            qlinear: qn,
            float_consts: constants(m, &n.inputs[1..2 + has_bias as usize])?,
            quant_consts: constants(q, &qn.inputs[1..])?,
        });
    }
    type PerRun = (Vec<(Cos, Cos)>, Vec<(Cos, usize, usize)>);
    let mut layers = vec![(Cos::default(), Cos::default()); plans.len()];
    let mut outs = vec![(Cos::default(), 0usize, 0usize); m.outputs.len()];
    for_each_run(
        runs,
        |x| -> Result<PerRun, QuantizeError> {
            let (fo, fx) = float.run(x)?;
            let (qo, qy) = quant.run(x)?;
            let mut per_layer = Vec::with_capacity(evals.len());
            for (i, e) in evals.iter().enumerate() {
                let (reference, own) = e.eval(&fx[i])?;
                per_layer.push((
                    Cos::of(&reference, &own),
                    Cos::of(&reference, &qy[i].to_f32_vec()),
                ));
            }
            let per_out = fo.iter().zip(&qo).map(|(f, g)| compare_output(f, g));
            Ok((per_layer, per_out.collect()))
        },
        |_, (per_layer, per_out)| {
            for (acc, (a, b)) in layers.iter_mut().zip(per_layer) {
                acc.0.add(a);
                acc.1.add(b);
            }
            for (acc, (c, agree, rows)) in outs.iter_mut().zip(per_out) {
                acc.0.add(c);
                acc.1 += agree;
                acc.2 += rows;
            }
            Ok(())
        },
    )?;
    let outputs = m
        .outputs
        .iter()
        .zip(outs)
        .map(|((name, _), (c, agree, rows))| OutputReport {
            name: name.clone(),
            cosine: c.value(),
            top1_agree: (rows > 0).then_some((agree, rows)),
        })
        .collect();
    let (alone, in_model) = layers.into_iter().unzip();
    Ok((alone, in_model, outputs))
}
