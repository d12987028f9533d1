//! Shape and data-movement ops: Reshape, Flatten, Squeeze/Unsqueeze, Transpose, Concat, Split,
//! Slice, Gather, GatherElements, GatherND, Expand, Tile, Pad, and the shape producers (Shape,
//! Size, ConstantOfShape, Range).
//!
//! Every ONNX operand that decides a shape (target shapes, axes, starts/ends, pads, split
//! sizes) must be a constant by the time the node is imported — folding upstream makes the
//! exporters' shape subgraphs constant — and is normalised here to the IR's static form: no
//! negative axes, no -1 or 0 placeholders, slices clamped per the ONNX rules. Sizes read from
//! the file are checked for overflow before they reach the IR builder.

use crate::ctx::{Ctx, Outs, FOLD_LIMIT};
use crate::error::dims_i64;
use crate::load::read_tensor;
use vitc_ir::infer::broadcast_shapes;
use vitc_ir::types::checked_numel;
use vitc_ir::{DType, Data, Op, Tensor, ValueId};

/// Pads are bounded like other geometry so padded sizes cannot overflow.
const MAX_PAD: i64 = 1 << 30;

pub fn reshape(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let dims = if cx.opset >= 5 {
        cx.ints_input(1, "target shape")?
    } else {
        cx.attr_ints("shape")?
            .ok_or_else(|| cx.err("attribute 'shape' is missing"))?
    };
    let allowzero = cx.opset >= 14 && cx.attr_bool("allowzero", false)?;
    let in_shape = cx.shape(x);
    let mut out = Vec::with_capacity(dims.len());
    let mut infer = None;
    for (i, &d) in dims.iter().enumerate() {
        match d {
            -1 => {
                if infer.is_some() {
                    return Err(cx.err(format!("target shape {dims:?} has more than one -1")));
                }
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => match in_shape.get(i) {
                Some(&s) => out.push(s),
                None => {
                    return Err(cx.err(format!(
                    "target shape {dims:?} copies dim {i} (0), but the input {} has no such dim",
                    cx.ty(x)
                )))
                }
            },
            d if d >= 0 => out.push(d as usize),
            d => return Err(cx.err(format!("target shape {dims:?} has invalid dim {d}"))),
        }
    }
    if allowzero && infer.is_some() && dims.contains(&0) {
        return Err(cx.err(format!(
            "target shape {dims:?} has both -1 and 0 with allowzero = 1"
        )));
    }
    let known = checked_numel(&out).ok_or_else(|| cx.overflow("target shape", &dims))?;
    let total = cx.ty(x).numel();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(cx.err(format!(
                "cannot reshape {} to {dims:?}: the -1 has no whole value",
                cx.ty(x)
            )));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(cx.err(format!("cannot reshape {} to {dims:?}", cx.ty(x))));
    }
    Ok(vec![cx.reshape(x, out)?])
}

pub fn flatten(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let shape = cx.shape(x);
    let r = shape.len();
    let a = cx.attr_int("axis", 1)?;
    // Flatten's axis may equal the rank (everything goes to the rows).
    let axis = if a == r as i64 {
        r
    } else {
        cx.axis(a, r, "axis")?
    };
    let rows = shape[..axis].iter().product();
    let cols = shape[axis..].iter().product();
    Ok(vec![cx.reshape(x, vec![rows, cols])?])
}

pub fn squeeze(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let shape = cx.shape(x);
    let axes = if cx.opset >= 13 {
        cx.opt_ints_input(1, "axes")?
    } else {
        cx.attr_ints("axes")?
    };
    let axes = match axes {
        Some(a) => cx.axes(&a, shape.len(), "axes")?,
        None => (0..shape.len()).filter(|&i| shape[i] == 1).collect(),
    };
    if let Some(&a) = axes.iter().find(|&&a| shape[a] != 1) {
        return Err(cx.err(format!(
            "cannot squeeze dim {a} of {}: it is not 1",
            cx.ty(x)
        )));
    }
    let out = shape
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect();
    Ok(vec![cx.reshape(x, out)?])
}

pub fn unsqueeze(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let shape = cx.shape(x);
    let axes = if cx.opset >= 13 {
        cx.ints_input(1, "axes")?
    } else {
        cx.attr_ints("axes")?
            .ok_or_else(|| cx.err("attribute 'axes' is missing"))?
    };
    let out_rank = shape.len() + axes.len();
    let axes = cx.axes(&axes, out_rank, "axes")?;
    let mut dims = shape.iter();
    let out = (0..out_rank)
        .map(|i| {
            if axes.contains(&i) {
                1
            } else {
                // out_rank - |axes| = rank, so exactly `rank` positions draw from the input.
                dims.next().copied().unwrap_or(1)
            }
        })
        .collect();
    Ok(vec![cx.reshape(x, out)?])
}

pub fn transpose(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let r = cx.rank(x);
    let perm = match cx.attr_ints("perm")? {
        Some(p) => {
            if p.len() != r || p.iter().any(|&a| a < 0) {
                return Err(cx.err(format!("perm {p:?} is not a permutation of {r} axes")));
            }
            cx.axes(&p, r, "perm")?
        }
        None => (0..r).rev().collect(),
    };
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return Ok(vec![x]);
    }
    Ok(vec![cx.add(Op::Transpose { perm }, vec![x])?])
}

pub fn concat(cx: &mut Ctx<'_>) -> Outs {
    let xs = cx.all_inputs()?;
    let a = cx
        .attr_opt_int("axis")?
        .ok_or_else(|| cx.err("attribute 'axis' is missing"))?;
    let axis = cx.axis(a, cx.rank(xs[0]), "axis")?;
    if xs.len() == 1 {
        return Ok(xs);
    }
    Ok(vec![cx.add(Op::Concat { axis }, xs)?])
}

/// A slice that keeps every dim whole except `axis`, which runs `start..end`.
fn slice_axis(
    cx: &mut Ctx<'_>,
    x: ValueId,
    axis: usize,
    start: usize,
    end: usize,
) -> Result<ValueId, crate::OnnxError> {
    let shape = cx.shape(x);
    if start == 0 && end == shape[axis] {
        return Ok(x);
    }
    let mut starts = vec![0i64; shape.len()];
    let mut ends: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    starts[axis] = start as i64;
    ends[axis] = end as i64;
    let steps = vec![1; shape.len()];
    cx.add(
        Op::Slice {
            starts,
            ends,
            steps,
        },
        vec![x],
    )
}

pub fn split(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let shape = cx.shape(x);
    let a = cx.attr_int("axis", 0)?;
    let axis = cx.axis(a, shape.len(), "axis")?;
    let d = shape[axis];
    let n = cx.node.output.len();
    if n == 0 {
        return Err(cx.err("Split has no outputs"));
    }
    let given = if cx.opset >= 13 {
        cx.opt_ints_input(1, "split sizes")?
    } else {
        cx.attr_ints("split")?
    };
    let sizes: Vec<i64> = match given {
        Some(s) => s,
        None => {
            // opset 18's num_outputs allows a smaller last chunk; the older equal split does not.
            let num_outputs = match cx.attr_opt_int("num_outputs")? {
                Some(k) if cx.opset >= 18 => Some(k),
                _ => None,
            };
            if let Some(k) = num_outputs {
                if k != n as i64 {
                    return Err(cx.err(format!("num_outputs is {k}, but the node has {n} outputs")));
                }
            }
            let parts = n;
            let chunk = if num_outputs.is_some() {
                d.div_ceil(parts)
            } else if d.is_multiple_of(parts) {
                d / parts
            } else {
                return Err(cx.err(format!(
                    "dim {axis} of {} does not split evenly into {parts} outputs",
                    cx.ty(x)
                )));
            };
            let mut s = vec![chunk as i64; parts];
            let rest = d as i64 - chunk as i64 * (parts as i64 - 1);
            if rest < 0 {
                return Err(cx.err(format!(
                    "dim {axis} of {} cannot be split into {parts} chunks of {chunk}",
                    cx.ty(x)
                )));
            }
            s[parts - 1] = rest;
            s
        }
    };
    if sizes.len() != n {
        return Err(cx.err(format!(
            "split sizes {sizes:?} do not match the node's {n} outputs"
        )));
    }
    if sizes.iter().any(|&s| s < 0) || sizes.iter().map(|&s| s as i128).sum::<i128>() != d as i128 {
        return Err(cx.err(format!(
            "split sizes {sizes:?} do not add up to dim {axis} of {}",
            cx.ty(x)
        )));
    }
    let mut outs = Vec::with_capacity(n);
    let mut start = 0usize;
    for &s in &sizes {
        let end = start + s as usize;
        outs.push(slice_axis(cx, x, axis, start, end)?);
        start = end;
    }
    Ok(outs)
}

/// ONNX Slice normalised to the IR form: one (start, end, step) per dim, negative indices
/// resolved, clamped per the spec (positive steps to [0, d], negative steps to [-1, d-1]),
/// empty ranges made explicit and steps no longer than the dim.
pub fn slice(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let shape = cx.shape(x);
    let r = shape.len();
    let (starts, ends, axes, steps) = if cx.opset >= 10 {
        (
            cx.ints_input(1, "starts")?,
            cx.ints_input(2, "ends")?,
            cx.opt_ints_input(3, "axes")?,
            cx.opt_ints_input(4, "steps")?,
        )
    } else {
        (
            cx.attr_ints("starts")?
                .ok_or_else(|| cx.err("attribute 'starts' is missing"))?,
            cx.attr_ints("ends")?
                .ok_or_else(|| cx.err("attribute 'ends' is missing"))?,
            cx.attr_ints("axes")?,
            None,
        )
    };
    let k = starts.len();
    let axes = match axes {
        Some(a) => a,
        None => (0..k as i64).collect(),
    };
    let steps = steps.unwrap_or_else(|| vec![1; k]);
    if ends.len() != k || axes.len() != k || steps.len() != k {
        return Err(cx.err(format!(
            "starts {starts:?}, ends {ends:?}, axes {axes:?} and steps {steps:?} differ in length"
        )));
    }
    let axes = cx.axes(&axes, r, "axes")?;
    let mut s_out = vec![0i64; r];
    let mut e_out: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let mut st_out = vec![1i64; r];
    for i in 0..k {
        let a = axes[i];
        let d = shape[a] as i64;
        let step = steps[i];
        if step == 0 {
            return Err(cx.err("slice step 0 is not allowed"));
        }
        let resolve = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
        let (mut s, mut e) = (resolve(starts[i]), resolve(ends[i]));
        if step > 0 {
            s = s.clamp(0, d);
            e = e.clamp(0, d);
            e = e.max(s);
        } else if d == 0 {
            (s, e) = (-1, -1);
        } else {
            s = s.clamp(0, d - 1);
            e = e.clamp(-1, d - 1);
            e = e.min(s);
        }
        // A step longer than the dim takes at most one element either way.
        let step = step.clamp(-d.max(1), d.max(1));
        s_out[a] = s;
        e_out[a] = e;
        st_out[a] = step;
    }
    let whole = (0..r).all(|a| s_out[a] == 0 && e_out[a] == shape[a] as i64 && st_out[a] == 1);
    if whole {
        return Ok(vec![x]);
    }
    let op = Op::Slice {
        starts: s_out,
        ends: e_out,
        steps: st_out,
    };
    Ok(vec![cx.add(op, vec![x])?])
}

pub fn gather(cx: &mut Ctx<'_>) -> Outs {
    let data = cx.input(0)?;
    let idx = cx.input(1)?;
    let shape = cx.shape(data);
    let a = cx.attr_int("axis", 0)?;
    let axis = cx.axis(a, shape.len(), "axis")?;
    if !matches!(cx.dtype(idx), DType::I64 | DType::I32) {
        return Err(cx.err(format!(
            "indices must be int64 or int32, got {}",
            cx.ty(idx)
        )));
    }
    if let Some(t) = cx.const_of(idx) {
        let d = shape[axis] as i64;
        if let Some(bad) = t.to_i64_vec().into_iter().find(|&i| i < -d || i >= d) {
            return Err(cx.err(format!(
                "index {bad} is out of range for dim {axis} of {}",
                cx.ty(data)
            )));
        }
    }
    Ok(vec![cx.add(Op::Gather { axis }, vec![data, idx])?])
}

/// GatherElements. ONNX lets the indices be shorter than the data off the axis (the result then
/// reads only the leading part of those dims); the IR op wants them equal there, so the data is
/// sliced to the indices first. Constant indices are range-checked here, computed ones (TopK's,
/// a token selection's) by the interpreter, and clamped by compiled code.
pub fn gather_elements(cx: &mut Ctx<'_>) -> Outs {
    let data = cx.input(0)?;
    let idx = cx.input(1)?;
    let ds = cx.shape(data);
    let is = cx.shape(idx);
    let a = cx.attr_int("axis", 0)?;
    let axis = cx.axis(a, ds.len(), "axis")?;
    if !matches!(cx.dtype(idx), DType::I64 | DType::I32) {
        return Err(cx.err(format!(
            "indices must be int64 or int32, got {}",
            cx.ty(idx)
        )));
    }
    if is.len() != ds.len() {
        return Err(cx.err(format!(
            "indices {} and data {} must have the same rank",
            cx.ty(idx),
            cx.ty(data)
        )));
    }
    if let Some(k) = (0..ds.len()).find(|&k| k != axis && is[k] > ds[k]) {
        return Err(cx.err(format!(
            "dim {k} of the indices {} is larger than that of the data {}",
            cx.ty(idx),
            cx.ty(data)
        )));
    }
    let d = ds[axis] as i64;
    if let Some(t) = cx.const_of(idx) {
        if let Some(bad) = t.to_i64_vec().into_iter().find(|&i| i < -d || i >= d) {
            return Err(cx.err(format!(
                "index {bad} is out of range for dim {axis} of {}",
                cx.ty(data)
            )));
        }
    }
    let mut src = data;
    if (0..ds.len()).any(|k| k != axis && is[k] < ds[k]) {
        let starts = vec![0i64; ds.len()];
        let ends: Vec<i64> = (0..ds.len())
            .map(|k| (if k == axis { ds[k] } else { is[k] }) as i64)
            .collect();
        let steps = vec![1i64; ds.len()];
        let op = Op::Slice {
            starts,
            ends,
            steps,
        };
        src = cx.add(op, vec![data])?;
    }
    Ok(vec![cx.add(Op::GatherElements { axis }, vec![src, idx])?])
}

/// GatherND with constant indices (batch_dims = 0) is a Gather along the flattened leading
/// dims: each index tuple becomes one row number. Constant data then folds as usual.
pub fn gather_nd(cx: &mut Ctx<'_>) -> Outs {
    let data = cx.input(0)?;
    let idx = cx.const_input(1, "indices")?;
    if cx.attr_int("batch_dims", 0)? != 0 {
        return Err(cx.err("GatherND with batch_dims != 0 is not supported"));
    }
    if !matches!(idx.dtype(), DType::I64 | DType::I32) {
        return Err(cx.err(format!("indices must be int64 or int32, got {}", idx.ty())));
    }
    let ds = cx.shape(data);
    let Some((&k, lead)) = idx.shape.split_last() else {
        return Err(cx.err("indices must have rank >= 1"));
    };
    if k > ds.len() {
        return Err(cx.err(format!(
            "index tuples of length {k} exceed the rank of the data {}",
            cx.ty(data)
        )));
    }
    let rows: usize = ds[..k].iter().product();
    let vals = idx.to_i64_vec();
    let mut flat = Vec::with_capacity(vals.len() / k.max(1));
    if k == 0 {
        flat.resize(lead.iter().product(), 0i64);
    } else {
        for tuple in vals.chunks_exact(k) {
            let mut row = 0i64;
            for (j, &v) in tuple.iter().enumerate() {
                let d = ds[j] as i64;
                let v = if v < 0 { v + d } else { v };
                if v < 0 || v >= d {
                    return Err(cx.err(format!(
                        "index {tuple:?} is out of range for {}",
                        cx.ty(data)
                    )));
                }
                row = row * d + v;
            }
            flat.push(row);
        }
    }
    let mut dshape = vec![rows];
    dshape.extend_from_slice(&ds[k..]);
    let d2 = cx.reshape(data, dshape)?;
    let iv = cx.constant(Tensor::new(lead.to_vec(), Data::I64(flat)));
    Ok(vec![cx.add(Op::Gather { axis: 0 }, vec![d2, iv])?])
}

/// ONNX Expand broadcasts both ways: the result is broadcast(input, shape).
pub fn expand(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let dims = cx.ints_input(1, "target shape")?;
    let target = cx.shape_from(&dims, "target shape")?;
    let out = broadcast_shapes(&cx.shape(x), &target).map_err(|m| cx.err(m))?;
    if checked_numel(&out).is_none() {
        return Err(cx.overflow("target shape", &dims));
    }
    if out == cx.shape(x) {
        return Ok(vec![x]);
    }
    Ok(vec![cx.add(Op::Broadcast { shape: out }, vec![x])?])
}

/// Tile is a broadcast over interleaved unit dims: [d0, d1] → [1, d0, 1, d1] → [r0, d0, r1, d1]
/// → [r0·d0, r1·d1].
pub fn tile(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let reps = cx.ints_input(1, "repeats")?;
    let shape = cx.shape(x);
    if reps.len() != shape.len() {
        return Err(cx.err(format!(
            "repeats {reps:?} must have one entry per dim of {}",
            cx.ty(x)
        )));
    }
    let reps = cx.shape_from(&reps, "repeats")?;
    if reps.iter().all(|&r| r == 1) {
        return Ok(vec![x]);
    }
    let mut unit = Vec::with_capacity(2 * shape.len());
    let mut wide = Vec::with_capacity(2 * shape.len());
    let mut out = Vec::with_capacity(shape.len());
    for (&d, &r) in shape.iter().zip(&reps) {
        unit.extend([1, d]);
        wide.extend([r, d]);
        out.push(d.saturating_mul(r));
    }
    if checked_numel(&wide).is_none() {
        return Err(cx.overflow("tiled shape", &dims_i64(&out)));
    }
    let u = cx.reshape(x, unit)?;
    let b = cx.add(Op::Broadcast { shape: wide }, vec![u])?;
    Ok(vec![cx.reshape(b, out)?])
}

/// Constant mode only. Negative pads crop; they become a slice before the pad.
pub fn pad(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let shape = cx.shape(x);
    let r = shape.len();
    let mode = cx.attr_string("mode", "constant")?;
    if mode != "constant" {
        return Err(cx.err(format!(
            "Pad mode '{mode}' is not supported (only 'constant')"
        )));
    }
    let (pads, value, axes) = if cx.opset >= 11 {
        let pads = cx.ints_input(1, "pads")?;
        let value = cx.opt_scalar_input(2, "constant value")?.unwrap_or(0.0);
        let axes = if cx.opset >= 18 {
            cx.opt_ints_input(3, "axes")?
        } else {
            None
        };
        (pads, value, axes)
    } else {
        let pads = match cx.attr_ints("pads")? {
            Some(p) => p,
            None => cx
                .attr_ints("paddings")?
                .ok_or_else(|| cx.err("attribute 'pads' is missing"))?,
        };
        (pads, cx.attr_float("value", 0.0)? as f64, None)
    };
    let axes = match axes {
        Some(a) => cx.axes(&a, r, "axes")?,
        None => (0..r).collect(),
    };
    let n = axes.len();
    if pads.len() != 2 * n {
        return Err(cx.err(format!(
            "pads {pads:?} must have {} entries for {}",
            2 * n,
            cx.ty(x)
        )));
    }
    if let Some(p) = pads.iter().find(|p| p.abs() > MAX_PAD) {
        return Err(cx.err(format!("pad {p} is out of range")));
    }
    let mut begin = vec![0i64; r];
    let mut end = vec![0i64; r];
    for (i, &a) in axes.iter().enumerate() {
        begin[a] = pads[i];
        end[a] = pads[i + n];
    }
    // Crop first where pads are negative.
    let mut cur = x;
    if begin.iter().chain(&end).any(|&p| p < 0) {
        let mut starts = vec![0i64; r];
        let mut ends: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        for a in 0..r {
            starts[a] = (-begin[a]).max(0);
            ends[a] -= (-end[a]).max(0);
            if ends[a] < starts[a] {
                return Err(cx.err(format!(
                    "negative pads {pads:?} crop more than dim {a} of {}",
                    cx.ty(x)
                )));
            }
        }
        let steps = vec![1; r];
        cur = cx.add(
            Op::Slice {
                starts,
                ends,
                steps,
            },
            vec![cur],
        )?;
    }
    let mut full = vec![0usize; 2 * r];
    for a in 0..r {
        full[a] = begin[a].max(0) as usize;
        full[a + r] = end[a].max(0) as usize;
    }
    if full.iter().all(|&p| p == 0) {
        return Ok(vec![cur]);
    }
    let cs = cx.shape(cur);
    let padded: Vec<usize> = (0..r).map(|a| cs[a] + full[a] + full[a + r]).collect();
    if checked_numel(&padded).is_none() {
        return Err(cx.overflow("padded shape", &dims_i64(&padded)));
    }
    let op = Op::Pad {
        pads: full,
        value: value as f32,
    };
    Ok(vec![cx.add(op, vec![cur])?])
}

/// The static shape as an int64 constant; start/end (opset 15) select a range of dims.
pub fn shape(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let shape = cx.shape(x);
    let r = shape.len() as i64;
    let clampd = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (s, e) = if cx.opset >= 15 {
        (
            clampd(cx.attr_int("start", 0)?),
            clampd(cx.attr_int("end", r)?),
        )
    } else {
        (0, shape.len())
    };
    let dims: Vec<i64> = shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
    let n = dims.len();
    Ok(vec![cx.constant(Tensor::new(vec![n], Data::I64(dims)))])
}

pub fn size(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let n = cx.ty(x).numel() as i64;
    Ok(vec![cx.constant(Tensor::new(
        Vec::<usize>::new(),
        Data::I64(vec![n]),
    ))])
}

/// A scalar of `value` (default float 0) broadcast to the shape; large results stay a
/// broadcast node rather than being materialised.
pub fn constant_of_shape(cx: &mut Ctx<'_>) -> Outs {
    let dims = cx.ints_input(0, "shape")?;
    let shape = cx.shape_from(&dims, "shape")?;
    let value = match cx.attrs.tensor("value").map_err(|m| cx.err(m))? {
        Some(tp) => {
            let t = read_tensor(tp, cx.model_dir)?;
            if t.numel() != 1 {
                return Err(cx.err(format!("'value' must hold one element, got {}", t.ty())));
            }
            Tensor::new(Vec::<usize>::new(), t.data)
        }
        None => Tensor::scalar_f32(0.0),
    };
    let v = cx.constant(value);
    if shape.is_empty() {
        return Ok(vec![v]);
    }
    Ok(vec![cx.add(Op::Broadcast { shape }, vec![v])?])
}

/// Range over constant scalars, computed here (its length depends on the values).
pub fn range(cx: &mut Ctx<'_>) -> Outs {
    let start = cx.const_input(0, "start")?;
    let limit = cx.const_input(1, "limit")?;
    let delta = cx.const_input(2, "delta")?;
    let dt = start.dtype();
    if [&start, &limit, &delta].iter().any(|t| t.numel() != 1) {
        return Err(cx.err("start, limit and delta must be scalars"));
    }
    if limit.dtype() != dt || delta.dtype() != dt {
        return Err(cx.err("start, limit and delta must have one element type"));
    }
    let (s, l, d) = (
        start.data.get_f64(0),
        limit.data.get_f64(0),
        delta.data.get_f64(0),
    );
    if d == 0.0 || !d.is_finite() || !s.is_finite() || !l.is_finite() {
        return Err(cx.err("Range needs finite values and a non-zero delta"));
    }
    let n = ((l - s) / d).ceil().max(0.0);
    if n > FOLD_LIMIT as f64 {
        return Err(cx.err(format!("Range of {n} elements is too large")));
    }
    let n = n as usize;
    let data = if dt.is_int() {
        let (s, d) = (start.data.get_i64(0), delta.data.get_i64(0));
        Data::from_i64(
            dt,
            (0..n as i64).map(|i| s.saturating_add(i.saturating_mul(d))),
        )
    } else {
        Data::from_f64(dt, (0..n).map(|i| s + i as f64 * d))
    };
    Ok(vec![cx.constant(Tensor::new(vec![n], data))])
}
