//! Calibration data and the partial runs the data-driven passes are built on.
//!
//! A calibration set is a batch of images (`.npy`, NCHW float32, `[N, …]`) cut into runs of the
//! model's own input shape. The passes run the reference interpreter over it, but never the
//! whole model per question they ask: [`run_segment`] runs only the nodes between two cut points,
//! starting from the values that are live at the first cut, so a pass can cache the activations
//! at a block and try many changes to that block from there. This module decides nothing about
//! what to prune and never changes a module.

use std::collections::BTreeMap;
use std::sync::Arc;

use vitc_ir::{interp, IrError, Module, Op, Tensor};

use crate::error::PruneError;

/// Calibration images cut into runs that fit the module's single input.
#[derive(Clone, Debug)]
pub struct Calibration {
    runs: Vec<Tensor>,
    images: usize,
}

impl Calibration {
    /// Cut `images` (`[N, …]`, the model input's shape after its batch dimension) into runs of
    /// the model's batch size. Images that do not fill a last run are left out; float arrays of
    /// another width are converted to the input's element type.
    pub fn new(m: &Module, images: &Tensor) -> Result<Calibration, PruneError> {
        let [(name, input)] = m.inputs.as_slice() else {
            return Err(PruneError::Calibration(format!(
                "the model has {} inputs; calibration needs a model with one image input",
                m.inputs.len()
            )));
        };
        let want = m.ty(*input);
        if want.rank() < 1 || !want.dtype.is_float() {
            return Err(PruneError::Calibration(format!(
                "the model input {name} is {want}, not a batch of float images"
            )));
        }
        if !images.dtype().is_float() {
            return Err(PruneError::Calibration(format!(
                "expected a float array, got {}",
                images.ty()
            )));
        }
        if images.shape.len() != want.rank() || images.shape[1..] != want.shape[1..] {
            return Err(PruneError::Calibration(format!(
                "shape {:?} does not fit input {name} {want}: expected [N, {}]",
                images.shape,
                want.shape[1..]
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let batch = want.shape[0];
        let n = images.shape[0];
        if batch == 0 || n < batch {
            return Err(PruneError::Calibration(format!(
                "{n} images do not fill one run of the model's batch of {batch}"
            )));
        }
        let per: usize = want.shape[1..].iter().product::<usize>() * batch;
        let all = images.to_f32_vec();
        let runs = (0..n / batch)
            .map(|r| {
                Tensor::f32(want.shape.clone(), all[r * per..(r + 1) * per].to_vec())
                    .cast(want.dtype)
            })
            .collect();
        Ok(Calibration {
            runs,
            images: (n / batch) * batch,
        })
    }

    /// Number of images used (a multiple of the model's batch size).
    pub fn images(&self) -> usize {
        self.images
    }

    /// The runs, each one model input.
    pub fn runs(&self) -> &[Tensor] {
        &self.runs
    }
}

/// Values live at a cut point, by node index.
pub(crate) type Live = BTreeMap<usize, Tensor>;

/// The first node index after which nothing reads value `v` (`nodes.len()` for outputs).
fn last_uses(m: &Module) -> Vec<Option<usize>> {
    let mut last = vec![None; m.nodes.len()];
    for (i, n) in m.nodes.iter().enumerate() {
        for v in &n.inputs {
            last[v.0] = Some(i);
        }
    }
    for (_, v) in &m.outputs {
        last[v.0] = Some(m.nodes.len());
    }
    last
}

/// The values live at the start of a run on `inputs`: the graph input.
pub(crate) fn start(m: &Module, inputs: &Tensor) -> Live {
    m.inputs
        .iter()
        .map(|(_, v)| (v.0, inputs.clone()))
        .collect()
}

/// Run nodes `from..to` of `m`, given the values live at `from` (constants are read from the
/// module), and return the values live at `to`: those defined before `to` that a node at or
/// after `to`, or an output, reads. With `to = nodes.len()` that is exactly the outputs.
pub(crate) fn run_segment(
    m: &Module,
    from: usize,
    to: usize,
    mut env: Live,
) -> Result<Live, PruneError> {
    let last = last_uses(m);
    for i in from..to.min(m.nodes.len()) {
        let n = &m.nodes[i];
        if last[i].is_none() || matches!(n.op, Op::Constant { .. }) {
            continue;
        }
        if let Op::Input { .. } = n.op {
            if !env.contains_key(&i) {
                return Err(missing(i));
            }
            continue;
        }
        let consts: Vec<Option<&Arc<Tensor>>> = n.inputs.iter().map(|&v| m.constant(v)).collect();
        let mut args = Vec::with_capacity(n.inputs.len());
        for (v, c) in n.inputs.iter().zip(&consts) {
            match c {
                Some(t) => args.push(t.as_ref()),
                None => args.push(env.get(&v.0).ok_or_else(|| missing(v.0))?),
            }
        }
        let y = interp::eval(&n.op, &args, &n.ty).map_err(|e| match e {
            IrError::Interp(msg) => IrError::Interp(format!("%{i} ({}): {msg}", n.name)),
            e => e,
        })?;
        env.insert(i, y);
        for v in &n.inputs {
            if last[v.0] == Some(i) {
                env.remove(&v.0);
            }
        }
    }
    env.retain(|&v, _| v < to && last[v].is_some_and(|l| l >= to));
    Ok(env)
}

fn missing(v: usize) -> PruneError {
    PruneError::Ir(IrError::Interp(format!(
        "%{v} is needed but was not computed before the cut"
    )))
}

/// The module's outputs from the values live at its end.
pub(crate) fn outputs(m: &Module, live: &Live) -> Result<Vec<Tensor>, PruneError> {
    m.outputs
        .iter()
        .map(|(_, v)| live.get(&v.0).cloned().ok_or_else(|| missing(v.0)))
        .collect()
}

/// KL(p‖q) between the softmax over the last axis of `reference` and of `got`, summed over
/// rows: how far a change moved the output distribution, weighted by what the model believed.
pub(crate) fn kl_divergence(reference: &Tensor, got: &Tensor) -> f64 {
    let n = reference.shape.last().copied().unwrap_or(1).max(1);
    let (p, q) = (reference.to_f64_vec(), got.to_f64_vec());
    let log_softmax = |r: &[f64]| {
        let mx = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = mx + r.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
        r.iter().map(|x| x - lse).collect::<Vec<_>>()
    };
    p.chunks(n)
        .zip(q.chunks(n))
        .map(|(a, b)| {
            let (la, lb) = (log_softmax(a), log_softmax(b));
            la.iter()
                .zip(&lb)
                .map(|(x, y)| x.exp() * (x - y))
                .sum::<f64>()
        })
        .sum()
}

/// Statistics of an activation `[B, …, C]` over a calibration set, per token position.
#[derive(Clone, Debug)]
pub(crate) struct PositionStats {
    /// `[1, …, C]`: the activation's shape with the batch dimension 1.
    pub shape: Vec<usize>,
    /// Mean of every (position, channel) over all images, row-major in `shape`.
    pub mean: Vec<f64>,
    /// Per channel, the variance left around those means, averaged over positions: what
    /// replacing the channel by its per-position mean loses.
    pub var: Vec<f64>,
}

/// [`PositionStats`] of the tensors `ts`, which all have one shape of rank ≥ 2.
pub(crate) fn position_stats<'a>(ts: impl Iterator<Item = &'a Tensor>) -> PositionStats {
    let mut shape: Vec<usize> = Vec::new();
    let mut sum: Vec<f64> = Vec::new();
    let mut sq: Vec<f64> = Vec::new();
    let mut images = 0usize;
    for t in ts {
        if shape.is_empty() {
            shape = t.shape.clone();
            shape[0] = 1;
            let per: usize = shape.iter().product();
            sum = vec![0.0; per];
            sq = vec![0.0; per];
        }
        for image in t.to_f64_vec().chunks(sum.len().max(1)) {
            for (k, x) in image.iter().enumerate() {
                sum[k] += x;
                sq[k] += x * x;
            }
            images += 1;
        }
    }
    let c = shape.last().copied().unwrap_or(1).max(1);
    let n = images.max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let mut var = vec![0.0; c];
    for (k, (s, mu)) in sq.iter().zip(&mean).enumerate() {
        var[k % c] += (s / n - mu * mu).max(0.0);
    }
    let positions = (sum.len() / c).max(1) as f64;
    var.iter_mut().for_each(|v| *v /= positions);
    PositionStats { shape, mean, var }
}

/// Set channels `cols` (last axis) of `t` to their per-position means in `values` (laid out
/// as [`PositionStats::mean`]), for every image of the batch.
pub(crate) fn fill_channels(t: &mut Tensor, cols: &[usize], values: &[f64]) {
    let c = t.shape.last().copied().unwrap_or(1);
    let mut v = t.to_f32_vec();
    let per = values.len() / c;
    for (ri, r) in v.chunks_mut(c).enumerate() {
        let base = (ri % per) * c;
        for &j in cols {
            r[j] = values[base + j] as f32;
        }
    }
    *t = Tensor::f32(t.shape.clone(), v).cast(t.dtype());
}

/// `f` over `items` on up to the machine's parallelism in scoped threads, results in order.
pub(crate) fn par_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R, PruneError> + Sync,
) -> Result<Vec<R>, PruneError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len())
        .max(1);
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| {
                let f = &f;
                s.spawn(move || c.iter().map(f).collect::<Result<Vec<R>, PruneError>>())
            })
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for h in handles {
            match h.join() {
                Ok(r) => out.extend(r?),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        Ok(out)
    })
}
