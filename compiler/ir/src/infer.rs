//! Result-type inference: one pure function from an op and its operand types to the result
//! type, or a message saying which rule is broken. The builder uses it to type new nodes and the
//! verifier to check existing ones, so the two can never disagree.

use crate::op::{AttnLayout, BinaryOp, Op, UnaryOp};
use crate::types::{checked_numel, DType, TensorType};

type R = Result<TensorType, String>;

/// numpy broadcasting of two shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(format!("shapes {a:?} and {b:?} do not broadcast"));
        };
    }
    Ok(out)
}

fn same_dtype(tys: &[&TensorType]) -> Result<DType, String> {
    let d = tys[0].dtype;
    if let Some(t) = tys.iter().find(|t| t.dtype != d) {
        return Err(format!(
            "operand element types differ ({} and {})",
            d, t.dtype
        ));
    }
    Ok(d)
}

fn float(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype.is_float() {
        Ok(())
    } else {
        Err(format!("{what} must be a float tensor, got {t}"))
    }
}

/// Sequence length and head-dim product of an attention operand in `layout`, checking rank 3/4.
fn attn_dims(
    t: &TensorType,
    layout: AttnLayout,
    heads: usize,
    what: &str,
) -> Result<(usize, usize, usize), String> {
    let s = &t.shape;
    let want = if layout == AttnLayout::Bsd { 3 } else { 4 };
    if s.len() != want {
        return Err(format!(
            "{what} in layout {} must have rank {want}, got {t}",
            layout.name()
        ));
    }
    // Returns (batch, seq, head_dim).
    let (b, seq, d) = match layout {
        AttnLayout::Bsd => {
            if !s[2].is_multiple_of(heads) {
                return Err(format!(
                    "{what} width {} is not a multiple of {heads} heads",
                    s[2]
                ));
            }
            (s[0], s[1], s[2] / heads)
        }
        AttnLayout::Bhsd | AttnLayout::Bhds | AttnLayout::Bshd => {
            let (h, seq, d) = match layout {
                AttnLayout::Bhsd => (s[1], s[2], s[3]),
                AttnLayout::Bhds => (s[1], s[3], s[2]),
                _ => (s[2], s[1], s[3]),
            };
            if h != heads {
                return Err(format!("{what} has {h} heads, the op says {heads}"));
            }
            (s[0], seq, d)
        }
    };
    Ok((b, seq, d))
}

/// The result type of `op` applied to operands of types `ins`.
pub fn infer_type(op: &Op, ins: &[&TensorType]) -> R {
    if let Some(n) = op.arity() {
        if ins.len() != n {
            return Err(format!("expects {n} operands, got {}", ins.len()));
        }
    } else if ins.is_empty() {
        return Err("expects at least one operand".into());
    }
    let rank = |i: usize| ins[i].rank();
    match op {
        Op::Input { .. } | Op::Constant { .. } => {
            Err("inputs and constants take their type from their definition".into())
        }
        Op::Unary(u) => {
            let t = ins[0];
            match u {
                UnaryOp::Not => {
                    if t.dtype != DType::Bool {
                        return Err(format!("operand must be i1, got {t}"));
                    }
                }
                UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu => {
                    if t.dtype == DType::Bool {
                        return Err(format!("operand must be numeric, got {t}"));
                    }
                }
                _ => float(t, "operand")?,
            }
            Ok(t.clone())
        }
        Op::Binary(b) => {
            let d = same_dtype(ins)?;
            match b {
                BinaryOp::And | BinaryOp::Or if d != DType::Bool => {
                    return Err(format!("{} needs i1 operands, got {d}", b.name()))
                }
                BinaryOp::Mod if !d.is_int() => {
                    return Err(format!("mod needs integer operands, got {d}"))
                }
                _ => {}
            }
            let shape = broadcast_shapes(&ins[0].shape, &ins[1].shape)?;
            let dtype = if b.is_comparison() { DType::Bool } else { d };
            Ok(TensorType::new(shape, dtype))
        }
        Op::Where => {
            if ins[0].dtype != DType::Bool {
                return Err(format!("condition must be i1, got {}", ins[0]));
            }
            let d = same_dtype(&ins[1..])?;
            let s = broadcast_shapes(&ins[0].shape, &ins[1].shape)?;
            let s = broadcast_shapes(&s, &ins[2].shape)?;
            Ok(TensorType::new(s, d))
        }
        Op::Clip { min, max } => {
            if let (Some(lo), Some(hi)) = (min, max) {
                if lo > hi {
                    return Err(format!("min {lo} is above max {hi}"));
                }
            }
            if ins[0].dtype == DType::Bool {
                return Err("operand must be numeric".into());
            }
            Ok(ins[0].clone())
        }
        Op::Cast { to } => Ok(TensorType::new(ins[0].shape.clone(), *to)),
        Op::MatMul => {
            let (a, b) = (ins[0], ins[1]);
            let d = same_dtype(ins)?;
            float(a, "lhs")?;
            if a.rank() < 2 || b.rank() < 2 {
                // Vectors are promoted by the frontend; the IR keeps matmul at rank >= 2.
                return Err(format!("operands must have rank >= 2, got {a} and {b}"));
            }
            let (m, k1) = (a.shape[a.rank() - 2], a.shape[a.rank() - 1]);
            let (k2, n) = (b.shape[b.rank() - 2], b.shape[b.rank() - 1]);
            if k1 != k2 {
                return Err(format!("contraction sizes differ: {a} · {b}"));
            }
            let mut s = broadcast_shapes(&a.shape[..a.rank() - 2], &b.shape[..b.rank() - 2])?;
            s.push(m);
            s.push(n);
            Ok(TensorType::new(s, d))
        }
        Op::Conv {
            strides,
            pads,
            dilations,
            group,
            has_bias,
            ..
        } => {
            let (x, w) = (ins[0], ins[1]);
            float(x, "input")?;
            same_dtype(ins)?;
            if x.rank() != 4 || w.rank() != 4 {
                return Err(format!("input and weight must be rank 4, got {x} and {w}"));
            }
            if *group == 0 || strides.contains(&0) || dilations.contains(&0) {
                return Err("group, strides and dilations must be positive".into());
            }
            let (c, m) = (x.shape[1], w.shape[0]);
            if !c.is_multiple_of(*group)
                || !m.is_multiple_of(*group)
                || w.shape[1].checked_mul(*group) != Some(c)
            {
                return Err(format!(
                    "channels do not fit group {group}: input {x}, weight {w}"
                ));
            }
            if *has_bias && ins[2].shape != [m] {
                return Err(format!("bias must be [{m}], got {}", ins[2]));
            }
            let mut out = vec![x.shape[0], m];
            for i in 0..2 {
                let k = w.shape[2 + i];
                let span = k
                    .checked_sub(1)
                    .and_then(|k1| dilations[i].checked_mul(k1))
                    .and_then(|s| s.checked_add(1));
                let padded = x.shape[2 + i]
                    .checked_add(pads[i])
                    .and_then(|p| p.checked_add(pads[i + 2]));
                let (Some(span), Some(padded)) = (span, padded) else {
                    return Err(format!("kernel {w} or pads {pads:?} out of range"));
                };
                if padded < span {
                    return Err(format!(
                        "kernel {w} does not fit input {x} with pads {pads:?}"
                    ));
                }
                out.push((padded - span) / strides[i] + 1);
            }
            Ok(TensorType::new(out, x.dtype))
        }
        Op::Reduce { axes, keepdims, .. } => {
            let t = ins[0];
            if t.dtype == DType::Bool {
                return Err("operand must be numeric".into());
            }
            let mut seen = vec![false; t.rank()];
            for &a in axes {
                if a >= t.rank() || seen[a] {
                    return Err(format!("axes {axes:?} invalid for {t}"));
                }
                seen[a] = true;
            }
            let shape: Vec<usize> = if *keepdims {
                t.shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| if seen[i] { 1 } else { d })
                    .collect()
            } else {
                t.shape
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !seen[*i])
                    .map(|(_, &d)| d)
                    .collect()
            };
            Ok(TensorType::new(shape, t.dtype))
        }
        Op::Softmax { axis } => {
            float(ins[0], "operand")?;
            if *axis >= rank(0) {
                return Err(format!("axis {axis} out of range for {}", ins[0]));
            }
            Ok(ins[0].clone())
        }
        Op::Reshape { shape } => {
            let n = checked_numel(shape).ok_or("target shape is too large")?;
            if n != ins[0].numel() {
                return Err(format!("cannot reshape {} to {shape:?}", ins[0]));
            }
            Ok(TensorType::new(shape.clone(), ins[0].dtype))
        }
        Op::Broadcast { shape } => {
            checked_numel(shape).ok_or("target shape is too large")?;
            let s = broadcast_shapes(&ins[0].shape, shape)?;
            if &s != shape {
                return Err(format!("{} does not broadcast to {shape:?}", ins[0]));
            }
            Ok(TensorType::new(shape.clone(), ins[0].dtype))
        }
        Op::Transpose { perm } => {
            let t = ins[0];
            let mut seen = vec![false; t.rank()];
            if perm.len() != t.rank() {
                return Err(format!("perm {perm:?} does not match rank of {t}"));
            }
            for &p in perm {
                if p >= t.rank() || seen[p] {
                    return Err(format!("perm {perm:?} is not a permutation"));
                }
                seen[p] = true;
            }
            Ok(TensorType::new(
                perm.iter().map(|&p| t.shape[p]).collect::<Vec<_>>(),
                t.dtype,
            ))
        }
        Op::Slice {
            starts,
            ends,
            steps,
        } => {
            let t = ins[0];
            let r = t.rank();
            if starts.len() != r || ends.len() != r || steps.len() != r {
                return Err(format!("starts/ends/steps must each have {r} entries"));
            }
            let mut shape = Vec::with_capacity(r);
            for i in 0..r {
                let (s, e, st, d) = (starts[i], ends[i], steps[i], t.shape[i] as i64);
                let n = if st > 0 {
                    if s < 0 || e < s || e > d {
                        return Err(format!("range {s}..{e} invalid for dim {i} of {t}"));
                    }
                    (e - s + st - 1) / st
                } else if st < 0 {
                    // Walks down from `start` to just above `end`; end = -1 means through 0.
                    if e < -1 || s < e || (s >= d && s != e) {
                        return Err(format!(
                            "range {s}..{e} step {st} invalid for dim {i} of {t}"
                        ));
                    }
                    (s - e + (-st) - 1) / (-st)
                } else {
                    return Err("slice step 0".into());
                };
                shape.push(n as usize);
            }
            Ok(TensorType::new(shape, t.dtype))
        }
        Op::Concat { axis } => {
            let d = same_dtype(ins)?;
            let r = rank(0);
            if *axis >= r {
                return Err(format!("axis {axis} out of range for rank {r}"));
            }
            let mut shape = ins[0].shape.clone();
            shape[*axis] = 0;
            for t in ins {
                if t.rank() != r
                    || t.shape
                        .iter()
                        .zip(&ins[0].shape)
                        .enumerate()
                        .any(|(i, (a, b))| i != *axis && a != b)
                {
                    return Err(format!(
                        "operands {} and {t} differ off the concat axis",
                        ins[0]
                    ));
                }
                shape[*axis] = shape[*axis]
                    .checked_add(t.shape[*axis])
                    .ok_or("concatenated size overflows")?;
            }
            Ok(TensorType::new(shape, d))
        }
        Op::Gather { axis } => {
            let (data, idx) = (ins[0], ins[1]);
            if !matches!(idx.dtype, DType::I64 | DType::I32) {
                return Err(format!("indices must be i64 or i32, got {idx}"));
            }
            if *axis >= data.rank() {
                return Err(format!("axis {axis} out of range for {data}"));
            }
            let mut shape = data.shape[..*axis].to_vec();
            shape.extend_from_slice(&idx.shape);
            shape.extend_from_slice(&data.shape[axis + 1..]);
            Ok(TensorType::new(shape, data.dtype))
        }
        Op::GatherElements { axis } => {
            let (data, idx) = (ins[0], ins[1]);
            if !matches!(idx.dtype, DType::I64 | DType::I32) {
                return Err(format!("indices must be i64 or i32, got {idx}"));
            }
            if *axis >= data.rank() {
                return Err(format!("axis {axis} out of range for {data}"));
            }
            // ONNX also admits smaller indices off the axis; the frontend slices the data to
            // them, so every target sees one form (OpenVINO's GatherElements requires it).
            let fits = idx.rank() == data.rank()
                && (0..data.rank()).all(|k| k == *axis || idx.shape[k] == data.shape[k]);
            if !fits {
                return Err(format!(
                    "indices {idx} must have the shape of data {data} except along axis {axis}"
                ));
            }
            if data.shape[*axis] == 0 && idx.numel() > 0 {
                return Err(format!(
                    "cannot gather from the empty axis {axis} of {data}"
                ));
            }
            Ok(TensorType::new(idx.shape.clone(), data.dtype))
        }
        Op::Pad { pads, .. } => {
            let t = ins[0];
            if pads.len() != 2 * t.rank() {
                return Err(format!("pads needs {} entries for {t}", 2 * t.rank()));
            }
            let shape: Vec<usize> = (0..t.rank())
                .map(|i| {
                    t.shape[i]
                        .checked_add(pads[i])?
                        .checked_add(pads[i + t.rank()])
                })
                .collect::<Option<_>>()
                .ok_or("padded shape overflows")?;
            checked_numel(&shape).ok_or("padded shape is too large")?;
            Ok(TensorType::new(shape, t.dtype))
        }
        Op::LayerNorm {
            axis,
            epsilon,
            has_bias,
        } => {
            let t = ins[0];
            float(t, "input")?;
            same_dtype(ins)?;
            if *axis >= t.rank() {
                return Err(format!("axis {axis} out of range for {t}"));
            }
            if epsilon.is_nan() || *epsilon < 0.0 {
                return Err(format!("epsilon {epsilon} must be >= 0"));
            }
            let norm = &t.shape[*axis..];
            let ok = |s: &TensorType| {
                broadcast_shapes(s.shape.as_slice(), norm)
                    .map(|b| b == norm)
                    .unwrap_or(false)
                    && s.rank() <= norm.len()
            };
            if !ok(ins[1]) || (*has_bias && !ok(ins[2])) {
                return Err(format!(
                    "scale/bias must broadcast to the normalised dims {norm:?}"
                ));
            }
            Ok(t.clone())
        }
        Op::Gelu { .. } => {
            float(ins[0], "operand")?;
            Ok(ins[0].clone())
        }
        Op::Linear {
            has_bias,
            has_residual,
            ..
        } => {
            let (x, w) = (ins[0], ins[1]);
            float(x, "input")?;
            same_dtype(ins)?;
            if x.rank() < 1 || w.rank() != 2 || x.shape[x.rank() - 1] != w.shape[0] {
                return Err(format!(
                    "input {x} and weight {w} do not chain (weight is [K, N])"
                ));
            }
            let n = w.shape[1];
            let mut shape = x.shape.clone();
            *shape.last_mut().expect("rank >= 1") = n;
            let mut i = 2;
            if *has_bias {
                if ins[i].shape != [n] {
                    return Err(format!("bias must be [{n}], got {}", ins[i]));
                }
                i += 1;
            }
            if *has_residual
                && broadcast_shapes(&ins[i].shape, &shape).ok().as_deref() != Some(&shape[..])
            {
                return Err(format!(
                    "residual {} does not broadcast to {shape:?}",
                    ins[i]
                ));
            }
            Ok(TensorType::new(shape, x.dtype))
        }
        Op::Attention {
            heads,
            scale,
            q_layout,
            k_layout,
            v_layout,
            out_layout,
            has_bias,
            has_mask,
        } => {
            if *heads == 0 {
                return Err("heads must be positive".into());
            }
            if !scale.is_finite() {
                return Err("scale must be finite".into());
            }
            float(ins[0], "q")?;
            same_dtype(&ins[..3])?;
            let (bq, sq, dq) = attn_dims(ins[0], *q_layout, *heads, "q")?;
            let (bk, sk, dk) = attn_dims(ins[1], *k_layout, *heads, "k")?;
            let (bv, sv, dv) = attn_dims(ins[2], *v_layout, *heads, "v")?;
            if bq != bk || bk != bv || dq != dk || sk != sv {
                return Err(format!(
                    "q {}, k {}, v {} disagree on batch, head dim or key length",
                    ins[0], ins[1], ins[2]
                ));
            }
            let scores = [bq, *heads, sq, sk];
            let mut i = 3;
            if *has_bias {
                float(ins[i], "bias")?;
                if broadcast_shapes(&ins[i].shape, &scores).ok().as_deref() != Some(&scores[..]) {
                    return Err(format!(
                        "bias {} does not broadcast to scores {scores:?}",
                        ins[i]
                    ));
                }
                i += 1;
            }
            if *has_mask {
                if ins[i].dtype != DType::Bool {
                    return Err(format!("mask must be i1, got {}", ins[i]));
                }
                if broadcast_shapes(&ins[i].shape, &scores).ok().as_deref() != Some(&scores[..]) {
                    return Err(format!(
                        "mask {} does not broadcast to scores {scores:?}",
                        ins[i]
                    ));
                }
            }
            heads.checked_mul(dv).ok_or("heads × head dim overflows")?;
            let shape = match out_layout {
                AttnLayout::Bsd => vec![bq, sq, heads * dv],
                AttnLayout::Bhsd => vec![bq, *heads, sq, dv],
                AttnLayout::Bhds => vec![bq, *heads, dv, sq],
                AttnLayout::Bshd => vec![bq, sq, *heads, dv],
            };
            Ok(TensorType::new(shape, ins[0].dtype))
        }
        Op::LinearAttention {
            heads,
            eps,
            q_layout,
            k_layout,
            v_layout,
            out_layout,
        } => {
            if *heads == 0 {
                return Err("heads must be positive".into());
            }
            if !eps.is_finite() || *eps < 0.0 {
                return Err(format!("eps must be finite and non-negative, got {eps}"));
            }
            float(ins[0], "q")?;
            same_dtype(&ins[..3])?;
            let (bq, sq, dq) = attn_dims(ins[0], *q_layout, *heads, "q")?;
            let (bk, sk, dk) = attn_dims(ins[1], *k_layout, *heads, "k")?;
            let (bv, sv, dv) = attn_dims(ins[2], *v_layout, *heads, "v")?;
            if bq != bk || bk != bv || dq != dk || sk != sv {
                return Err(format!(
                    "q {}, k {}, v {} disagree on batch, head dim or key length",
                    ins[0], ins[1], ins[2]
                ));
            }
            heads.checked_mul(dv).ok_or("heads × head dim overflows")?;
            let shape = match out_layout {
                AttnLayout::Bsd => vec![bq, sq, heads * dv],
                AttnLayout::Bhsd => vec![bq, *heads, sq, dv],
                AttnLayout::Bhds => vec![bq, *heads, dv, sq],
                AttnLayout::Bshd => vec![bq, sq, *heads, dv],
            };
            Ok(TensorType::new(shape, ins[0].dtype))
        }
        Op::Quantize { axis, to } => {
            let (x, s, z) = (ins[0], ins[1], ins[2]);
            float(x, "input")?;
            if !matches!(to, DType::I8 | DType::U8 | DType::I32) {
                return Err(format!("can only quantize to i8, ui8 or i32, not {to}"));
            }
            check_qparams(x, s, z, *axis, Some(*to))?;
            Ok(TensorType::new(x.shape.clone(), *to))
        }
        Op::Dequantize { axis } => {
            let (x, s, z) = (ins[0], ins[1], ins[2]);
            if !x.dtype.is_int() {
                return Err(format!("input must be an integer tensor, got {x}"));
            }
            check_qparams(x, s, z, *axis, Some(x.dtype))?;
            Ok(TensorType::new(x.shape.clone(), s.dtype))
        }
        Op::QLinear {
            x_type, has_bias, ..
        } => {
            let (x, w, ws, wz) = (ins[0], ins[1], ins[2], ins[3]);
            float(x, "input")?;
            if !matches!(x_type, DType::I8 | DType::U8) {
                return Err(format!("x_type must be i8 or ui8, got {x_type}"));
            }
            if !matches!(w.dtype, DType::I8 | DType::U8) || w.rank() != 2 {
                return Err(format!("weight must be a [K, N] i8/ui8 matrix, got {w}"));
            }
            let (k, n) = (w.shape[0], w.shape[1]);
            if x.rank() < 1 || x.shape[x.rank() - 1] != k {
                return Err(format!("input {x} does not chain with weight {w}"));
            }
            let per = ws.numel();
            if !(ws.rank() == 0 || (ws.rank() == 1 && per == n)) || wz.shape != ws.shape {
                return Err(format!(
                    "weight scale {ws} / zero point {wz} must be scalars or [{n}]"
                ));
            }
            float(ws, "weight scale")?;
            if wz.dtype != w.dtype {
                return Err(format!(
                    "weight zero point {wz} must match weight type {}",
                    w.dtype
                ));
            }
            if *has_bias && ins[4].shape != [n] {
                return Err(format!("bias must be [{n}], got {}", ins[4]));
            }
            let mut shape = x.shape.clone();
            *shape.last_mut().expect("rank >= 1") = n;
            Ok(TensorType::new(shape, x.dtype))
        }
    }
}

fn check_qparams(
    x: &TensorType,
    s: &TensorType,
    z: &TensorType,
    axis: Option<usize>,
    zdtype: Option<DType>,
) -> Result<(), String> {
    float(s, "scale")?;
    if s.shape != z.shape {
        return Err(format!("scale {s} and zero point {z} differ in shape"));
    }
    if let Some(d) = zdtype {
        if z.dtype != d {
            return Err(format!("zero point {z} must be {d}"));
        }
    }
    match axis {
        None if s.rank() != 0 => Err(format!("per-tensor scale must be a scalar, got {s}")),
        Some(a) if a >= x.rank() || s.shape != [x.shape[a]] => Err(format!(
            "per-axis scale must be [{}] along axis {a}",
            x.shape.get(a).copied().unwrap_or(0)
        )),
        _ => Ok(()),
    }
}
