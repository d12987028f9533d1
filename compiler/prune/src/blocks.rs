//! The transformer blocks the structured-pruning passes rewrite, found in a fused (-O2) module,
//! and the one rebuild that applies their edits.
//!
//! Matching is strict on purpose: a pass may only remove a head or a hidden unit when every
//! tensor that carries it is a constant it can slice and every reader of the pruned values is
//! one it rewrites. Anything else is a [`PruneError::Structure`] naming the node, never a
//! silently wrong model. This module chooses nothing; it only finds and rewrites.

use std::collections::BTreeMap;

use vitc_ir::{Activation, AttnLayout, BinaryOp, Data, Module, Node, Op, Tensor, ValueId};

use crate::calib::PositionStats;

use crate::error::PruneError;

/// A `vit.linear` node and its operands (node indices).
#[derive(Clone, Debug)]
pub(crate) struct Linear {
    pub node: usize,
    pub x: usize,
    pub w: usize,
    pub bias: Option<usize>,
    pub residual: Option<usize>,
    pub activation: Activation,
}

impl Linear {
    /// `[K, N]` of the weight.
    pub fn dims(&self, m: &Module) -> (usize, usize) {
        let s = &m.nodes[self.w].ty.shape;
        (s[0], s[1])
    }
}

fn linear(m: &Module, i: usize) -> Option<Linear> {
    let n = &m.nodes[i];
    let Op::Linear {
        activation,
        has_bias,
        has_residual,
    } = n.op
    else {
        return None;
    };
    let bias = has_bias.then(|| n.inputs[2].0);
    let residual = has_residual.then(|| n.inputs[2 + has_bias as usize].0);
    Some(Linear {
        node: i,
        x: n.inputs[0].0,
        w: n.inputs[1].0,
        bias,
        residual,
        activation,
    })
}

/// How the node is named in messages: `%i (loc)`.
pub(crate) fn label(m: &Module, i: usize) -> String {
    let n = &m.nodes[i].name;
    if n.is_empty() {
        format!("%{i}")
    } else {
        format!("%{i} ({n})")
    }
}

/// Whether value `v` is a float constant (the only kind a pass can slice and fold into).
fn float_constant(m: &Module, v: usize) -> bool {
    m.constant(ValueId(v)).is_some_and(|t| t.dtype().is_float())
}

/// One multi-head attention: three projections in, `vit.attention`, one projection out.
#[derive(Clone, Debug)]
pub(crate) struct AttnBlock {
    pub attn: usize,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub proj: Linear,
    pub heads: usize,
    /// Head width of Q and K.
    pub dk: usize,
    /// Head width of V (and of the attention output).
    pub dv: usize,
}

/// Every `vit.attention` of `m`, checked to be a block head pruning can rewrite.
pub(crate) fn attention_blocks(m: &Module) -> Result<Vec<AttnBlock>, PruneError> {
    let uses = m.use_counts();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); m.nodes.len()];
    for (i, n) in m.nodes.iter().enumerate() {
        for v in &n.inputs {
            users[v.0].push(i);
        }
    }
    let err = |i: usize, msg: String| PruneError::Structure {
        pass: "head pruning",
        node: label(m, i),
        msg,
    };
    let mut blocks = Vec::new();
    for (i, n) in m.nodes.iter().enumerate() {
        let Op::Attention {
            heads,
            q_layout,
            k_layout,
            v_layout,
            out_layout,
            has_bias,
            has_mask,
            ..
        } = n.op
        else {
            continue;
        };
        if [q_layout, k_layout, v_layout, out_layout] != [AttnLayout::Bsd; 4] {
            return Err(err(
                i,
                "expected the merged-head layout bsd for q, k, v and the result (the -O2 form)"
                    .into(),
            ));
        }
        if has_bias || has_mask {
            return Err(err(
                i,
                "attention with a bias or mask is not supported by head pruning".into(),
            ));
        }
        let (qi, ki, vi) = (n.inputs[0].0, n.inputs[1].0, n.inputs[2].0);
        if qi == ki || ki == vi || qi == vi {
            return Err(err(
                i,
                "q, k and v must be three separate projections".into(),
            ));
        }
        let mut proj_in = Vec::new();
        for (what, v) in [("q", qi), ("k", ki), ("v", vi)] {
            let l = linear(m, v)
                .filter(|l| l.activation == Activation::None && l.residual.is_none())
                .ok_or_else(|| {
                    err(
                        i,
                        format!("{what} must come from a vit.linear without activation or residual, got {} {}", m.nodes[v].op.name(), label(m, v)),
                    )
                })?;
            if !float_constant(m, l.w) || l.bias.is_some_and(|b| !float_constant(m, b)) {
                return Err(err(
                    i,
                    format!(
                        "the {what} projection {} needs constant float weights and bias",
                        label(m, v)
                    ),
                ));
            }
            if uses[v] != 1 {
                return Err(err(
                    i,
                    format!(
                        "the {what} projection {} is also read elsewhere",
                        label(m, v)
                    ),
                ));
            }
            proj_in.push(l);
        }
        let v_lin = proj_in.pop().expect("three projections");
        let k_lin = proj_in.pop().expect("three projections");
        let q_lin = proj_in.pop().expect("three projections");
        let (_, nq) = q_lin.dims(m);
        let (_, nk) = k_lin.dims(m);
        let (_, nv) = v_lin.dims(m);
        if nq != nk || nq % heads != 0 || nv % heads != 0 {
            return Err(err(
                i,
                format!("q/k/v widths {nq}/{nk}/{nv} do not split into {heads} heads"),
            ));
        }
        let proj = match users[i].as_slice() {
            [u] if uses[i] == 1 => linear(m, *u).filter(|l| l.x == i),
            _ => None,
        }
        .ok_or_else(|| {
            err(
                i,
                "the attention result must be read only by the output projection (a vit.linear)"
                    .into(),
            )
        })?;
        if !float_constant(m, proj.w) || proj.bias.is_some_and(|b| !float_constant(m, b)) {
            return Err(err(
                i,
                format!(
                    "the output projection {} needs constant float weights and bias",
                    label(m, proj.node)
                ),
            ));
        }
        blocks.push(AttnBlock {
            attn: i,
            q: q_lin,
            k: k_lin,
            v: v_lin,
            proj,
            heads,
            dk: nq / heads,
            dv: nv / heads,
        });
    }
    if blocks.is_empty() {
        return Err(PruneError::NoBlocks {
            pass: "head pruning",
            msg: "the module has no vit.attention; head pruning works on the fused module \
                  (compile at -O2)"
                .into(),
        });
    }
    Ok(blocks)
}

/// One MLP: `fc1` (a vit.linear with an activation) read only by `fc2`.
#[derive(Clone, Debug)]
pub(crate) struct MlpBlock {
    pub fc1: Linear,
    pub fc2: Linear,
    pub hidden: usize,
}

/// Every MLP of `m`: a `vit.linear` with an activation whose result feeds another
/// `vit.linear`'s input.
pub(crate) fn mlp_blocks(m: &Module) -> Result<Vec<MlpBlock>, PruneError> {
    let uses = m.use_counts();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); m.nodes.len()];
    for (i, n) in m.nodes.iter().enumerate() {
        for v in &n.inputs {
            users[v.0].push(i);
        }
    }
    let err = |i: usize, msg: String| PruneError::Structure {
        pass: "MLP pruning",
        node: label(m, i),
        msg,
    };
    let mut blocks = Vec::new();
    for i in 0..m.nodes.len() {
        let Some(fc1) = linear(m, i).filter(|l| l.activation != Activation::None) else {
            continue;
        };
        let Some(fc2) = users[i]
            .iter()
            .find_map(|&u| linear(m, u).filter(|l| l.x == i))
        else {
            continue;
        };
        if uses[i] != 1 || fc2.w == i || fc2.residual == Some(i) || fc2.bias == Some(i) {
            return Err(err(
                i,
                "the hidden activations are read by more than the second linear".into(),
            ));
        }
        if fc1.residual.is_some() {
            return Err(err(
                i,
                "the first linear of the MLP has a residual, so its units are not separable".into(),
            ));
        }
        for l in [&fc1, &fc2] {
            if !float_constant(m, l.w) || l.bias.is_some_and(|b| !float_constant(m, b)) {
                return Err(err(
                    i,
                    format!("{} needs constant float weights and bias", label(m, l.node)),
                ));
            }
        }
        let hidden = fc1.dims(m).1;
        blocks.push(MlpBlock { fc1, fc2, hidden });
    }
    if blocks.is_empty() {
        return Err(PruneError::NoBlocks {
            pass: "MLP pruning",
            msg: "the module has no MLP (a vit.linear with an activation feeding another \
                  vit.linear); MLP pruning works on the fused module (compile at -O2)"
                .into(),
        });
    }
    Ok(blocks)
}

/// The `[K, N]` weight of a constant as f64, row-major.
pub(crate) fn matrix(m: &Module, v: usize) -> (usize, usize, Vec<f64>) {
    let t = m.constant(ValueId(v)).expect("matched as a constant");
    (t.shape[0], t.shape[1], t.to_f64_vec())
}

/// The constant behind value `v` as f64.
pub(crate) fn vector(m: &Module, v: usize) -> Vec<f64> {
    m.constant(ValueId(v))
        .expect("matched as a constant")
        .to_f64_vec()
}

/// A tensor of `shape` and the element type of constant `like`, from f64 values.
pub(crate) fn tensor_like(m: &Module, like: usize, shape: Vec<usize>, v: Vec<f64>) -> Tensor {
    let dtype = m.constant(ValueId(like)).expect("a constant").dtype();
    Tensor::new(shape, Data::from_f64(dtype, v.into_iter()))
}

/// Columns `cols` of the `[K, N]` constant `v`.
pub(crate) fn keep_columns(m: &Module, v: usize, cols: &[usize]) -> Tensor {
    let (k, n, w) = matrix(m, v);
    let out = (0..k)
        .flat_map(|r| cols.iter().map(move |&c| (r, c)))
        .map(|(r, c)| w[r * n + c])
        .collect();
    tensor_like(m, v, vec![k, cols.len()], out)
}

/// Rows `rows` of the `[K, N]` constant `v`.
pub(crate) fn keep_rows(m: &Module, v: usize, rows: &[usize]) -> Tensor {
    let (_, n, w) = matrix(m, v);
    let out = rows
        .iter()
        .flat_map(|&r| w[r * n..(r + 1) * n].iter().copied())
        .collect();
    tensor_like(m, v, vec![rows.len(), n], out)
}

/// Entries `idx` of the vector constant `v`.
pub(crate) fn keep_entries(m: &Module, v: usize, idx: &[usize]) -> Tensor {
    let b = vector(m, v);
    tensor_like(m, v, vec![idx.len()], idx.iter().map(|&i| b[i]).collect())
}

/// The name a new constant derived from node `v` starts from.
pub(crate) fn constant_name(m: &Module, v: usize) -> String {
    match &m.nodes[v].op {
        Op::Constant { name } => name.clone(),
        _ => m.nodes[v].name.clone(),
    }
}

/// An operand of an edited node: an existing value, a new constant, or a new node computed
/// from operands of its own.
pub(crate) enum Operand {
    Old(usize),
    New {
        name: String,
        tensor: Tensor,
    },
    Node {
        op: Op,
        operands: Vec<Operand>,
        name: String,
    },
}

/// A replacement for one node: its op and operands.
pub(crate) struct Edit {
    pub op: Op,
    pub operands: Vec<Operand>,
}

/// `m` with `edits` applied: nodes in the same order, each edited node preceded by the new
/// constants it reads, every type inferred again, then dead nodes and constants dropped.
pub(crate) fn rebuild(m: &Module, edits: BTreeMap<usize, Edit>) -> Result<Module, PruneError> {
    let mut out = Module::new(m.name.clone());
    let mut remap = vec![ValueId(usize::MAX); m.nodes.len()];
    let mut edits = edits;
    for (i, n) in m.nodes.iter().enumerate() {
        let id = match &n.op {
            Op::Input { .. } => out.push(n.clone()),
            Op::Constant { name } => {
                let t = m
                    .constants
                    .get(name)
                    .ok_or_else(|| vitc_ir::IrError::MissingConstant(name.clone()))?;
                out.constants.insert(name.clone(), t.clone());
                out.push(n.clone())
            }
            _ => {
                let (op, inputs) = match edits.remove(&i) {
                    Some(e) => {
                        let mut inputs = Vec::with_capacity(e.operands.len());
                        for o in e.operands {
                            inputs.push(emit(m, &mut out, &remap, o)?);
                        }
                        (e.op, inputs)
                    }
                    None => (n.op.clone(), n.inputs.iter().map(|v| remap[v.0]).collect()),
                };
                out.add(op, inputs, n.name.clone())?
            }
        };
        remap[i] = id;
    }
    out.inputs = m
        .inputs
        .iter()
        .map(|(name, v)| (name.clone(), remap[v.0]))
        .collect();
    out.outputs = m
        .outputs
        .iter()
        .map(|(name, v)| (name.clone(), remap[v.0]))
        .collect();
    out.dce();
    vitc_ir::verify(&out)?;
    Ok(out)
}

/// `l` computing only its output channels `cols`: those columns of the weight and entries of
/// the bias.
pub(crate) fn keep_outputs(m: &Module, l: &Linear, cols: &[usize]) -> Edit {
    let mut operands = vec![
        Operand::Old(l.x),
        Operand::New {
            name: constant_name(m, l.w),
            tensor: keep_columns(m, l.w, cols),
        },
    ];
    if let Some(bias) = l.bias {
        operands.push(Operand::New {
            name: constant_name(m, bias),
            tensor: keep_entries(m, bias, cols),
        });
    }
    // The matchers refuse such linears: a residual would have to lose the same channels.
    debug_assert!(l.residual.is_none(), "a pruned linear has no residual");
    Edit {
        op: m.nodes[l.node].op.clone(),
        operands,
    }
}

/// `l` reading only its input channels `kept` (those rows of the weight). With `stats` (the
/// input's per-position means over the calibration set), the `removed` channels' average
/// contribution at every token position, Σ mean[t, r]·W[r, :], becomes a constant added to the
/// residual (or the residual, if `l` had none), so the layer's output keeps its expected value
/// at each position. Per position, not one bias for all: the class token and the patch tokens
/// differ too much for a single mean to stand for both.
pub(crate) fn keep_inputs(
    m: &Module,
    l: &Linear,
    kept: &[usize],
    removed: &[usize],
    stats: Option<&PositionStats>,
) -> Edit {
    let mut operands = vec![
        Operand::Old(l.x),
        Operand::New {
            name: constant_name(m, l.w),
            tensor: keep_rows(m, l.w, kept),
        },
    ];
    if let Some(b) = l.bias {
        operands.push(Operand::Old(b));
    }
    let (k, n, w) = matrix(m, l.w);
    let compensation = stats.map(|st| {
        let positions = st.mean.len() / k;
        let mut c = vec![0.0; positions * n];
        for (t, row) in c.chunks_mut(n).enumerate() {
            for &r in removed {
                let mu = st.mean[t * k + r];
                for (j, cj) in row.iter_mut().enumerate() {
                    *cj += mu * w[r * n + j];
                }
            }
        }
        let mut shape = st.shape.clone();
        *shape.last_mut().expect("rank >= 2") = n;
        Operand::New {
            name: format!("{}.compensation", m.nodes[l.node].name),
            tensor: tensor_like(m, l.w, shape, c),
        }
    });
    let residual = match (l.residual, compensation) {
        (Some(r), Some(c)) => Some(Operand::Node {
            op: Op::Binary(BinaryOp::Add),
            operands: vec![Operand::Old(r), c],
            name: format!("{}.compensated_residual", m.nodes[l.node].name),
        }),
        (Some(r), None) => Some(Operand::Old(r)),
        (None, c) => c,
    };
    let has_residual = residual.is_some();
    operands.extend(residual);
    Edit {
        op: Op::Linear {
            activation: l.activation,
            has_bias: l.bias.is_some(),
            has_residual,
        },
        operands,
    }
}

/// Add what `o` stands for to `out` (new constants and nodes before the node that reads them)
/// and return its value there.
fn emit(
    m: &Module,
    out: &mut Module,
    remap: &[ValueId],
    o: Operand,
) -> Result<ValueId, PruneError> {
    Ok(match o {
        Operand::Old(v) => remap[v],
        Operand::New { name, tensor } => {
            let key = fresh_key(m, out, &name);
            let ty = tensor.ty();
            out.constants.insert(key.clone(), tensor.into());
            out.push(Node {
                op: Op::Constant { name: key },
                inputs: vec![],
                ty,
                name,
            })
        }
        Operand::Node { op, operands, name } => {
            let mut inputs = Vec::with_capacity(operands.len());
            for o in operands {
                inputs.push(emit(m, out, remap, o)?);
            }
            out.add(op, inputs, name)?
        }
    })
}

/// `{base}.pruned`, or with a counter, unused in both the old and the new constant table.
fn fresh_key(old: &Module, new: &Module, base: &str) -> String {
    let base = format!("{base}.pruned");
    let free = |k: &str| !old.constants.contains_key(k) && !new.constants.contains_key(k);
    if free(&base) {
        return base;
    }
    (1..)
        .map(|i| format!("{base}.{i}"))
        .find(|k| free(k))
        .expect("an unused name exists")
}

/// How many of `n` channels a ratio removes: ⌊ratio·n⌋ (never more than asked), and always
/// leaving at least one. The small slack keeps 0.29·100 from flooring to 28.
pub(crate) fn removed_count(ratio: f64, n: usize) -> usize {
    (((ratio * n as f64) + 1e-9).floor() as usize).min(n.saturating_sub(1))
}

/// A ratio must be a number in [0, 1).
pub(crate) fn check_ratio(what: &'static str, ratio: f64) -> Result<(), PruneError> {
    if (0.0..1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(PruneError::Ratio { what, value: ratio })
    }
}
