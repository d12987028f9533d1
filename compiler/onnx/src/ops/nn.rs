//! Network layers: Conv, BatchNormalization (folded to a per-channel scale and shift),
//! LayerNormalization, Softmax, GlobalAveragePool and the Reduce* family.
//!
//! Attribute defaults and opset differences (Softmax's coerce-to-2D before opset 13, reduce axes
//! moving from attribute to input) are settled here, so the IR ops carry one meaning only.
//! Conv geometry is range-checked here before the IR builder does its unchecked arithmetic.

use crate::ctx::{Ctx, Outs};
use vitc_ir::{Activation, BinaryOp, Data, Op, ReduceOp, Tensor};

/// Attribute values that size things (pads, strides, dilations) are bounded so no shape
/// arithmetic downstream can overflow.
const MAX_GEOMETRY: i64 = 1 << 30;

fn geometry(
    cx: &Ctx<'_>,
    name: &str,
    default: &[i64],
    len: usize,
    min: i64,
) -> Result<Vec<usize>, crate::OnnxError> {
    let v = cx.attr_ints(name)?.unwrap_or_else(|| default.to_vec());
    if v.len() != len {
        return Err(cx.err(format!(
            "attribute '{name}' must have {len} entries, got {v:?}"
        )));
    }
    v.iter()
        .map(|&x| {
            if (min..=MAX_GEOMETRY).contains(&x) {
                Ok(x as usize)
            } else {
                Err(cx.err(format!("attribute '{name}' value {x} is out of range")))
            }
        })
        .collect()
}

pub fn conv(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let w = cx.input(1)?;
    let b = cx.opt_input(2)?;
    let (xs, ws) = (cx.shape(x), cx.shape(w));
    if xs.len() != 4 {
        return Err(cx.err(format!(
            "only 2-D convolutions (rank-4 input) are supported, the input is {}",
            cx.ty(x)
        )));
    }
    if ws.len() != 4 {
        return Err(cx.err(format!("the weight must be rank 4, got {}", cx.ty(w))));
    }
    let kernel = [ws[2], ws[3]];
    if let Some(ks) = cx.attr_ints("kernel_shape")? {
        if ks.len() != 2 || ks[0] != kernel[0] as i64 || ks[1] != kernel[1] as i64 {
            return Err(cx.err(format!(
                "kernel_shape {ks:?} disagrees with the weight {}",
                cx.ty(w)
            )));
        }
    }
    if kernel.contains(&0) {
        return Err(cx.err(format!("the weight {} has an empty kernel", cx.ty(w))));
    }
    let strides = geometry(cx, "strides", &[1, 1], 2, 1)?;
    let dilations = geometry(cx, "dilations", &[1, 1], 2, 1)?;
    let group = cx.attr_int("group", 1)?;
    if !(1..=MAX_GEOMETRY).contains(&group) {
        return Err(cx.err(format!("group {group} is out of range")));
    }
    // Checked here because the IR's rule multiplies before it compares.
    if ws[1].checked_mul(group as usize) != Some(xs[1]) || ws[0] % group as usize != 0 {
        return Err(cx.err(format!(
            "input {} and weight {} do not fit group {group}",
            cx.ty(x),
            cx.ty(w)
        )));
    }
    let auto_pad = cx.attr_string("auto_pad", "NOTSET")?;
    let mut span = [0usize; 2];
    for i in 0..2 {
        span[i] = dilations[i]
            .checked_mul(kernel[i] - 1)
            .and_then(|s| s.checked_add(1))
            .ok_or_else(|| cx.err("kernel extent overflows"))?;
    }
    let pads: Vec<usize> = match auto_pad.as_str() {
        "NOTSET" => geometry(cx, "pads", &[0, 0, 0, 0], 4, 0)?,
        "VALID" => vec![0; 4],
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut p = vec![0; 4];
            for i in 0..2 {
                let out = xs[2 + i].div_ceil(strides[i]);
                let need = out
                    .saturating_sub(1)
                    .saturating_mul(strides[i])
                    .saturating_add(span[i]);
                let total = need.saturating_sub(xs[2 + i]);
                let small = total / 2;
                let (begin, end) = if auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                p[i] = begin;
                p[i + 2] = end;
            }
            p
        }
        other => return Err(cx.err(format!("auto_pad '{other}' is not a valid value"))),
    };
    for i in 0..2 {
        let padded = xs[2 + i]
            .checked_add(pads[i])
            .and_then(|s| s.checked_add(pads[i + 2]));
        match padded {
            Some(p) if p >= span[i] => {}
            _ => {
                return Err(cx.err(format!(
                    "kernel {:?} (dilations {:?}) does not fit the input {} with pads {pads:?}",
                    kernel,
                    dilations,
                    cx.ty(x)
                )))
            }
        }
    }
    let mut inputs = vec![x, w];
    if let Some(b) = b {
        inputs.push(b);
    }
    let op = Op::Conv {
        strides: [strides[0], strides[1]],
        pads: [pads[0], pads[1], pads[2], pads[3]],
        dilations: [dilations[0], dilations[1]],
        group: group as usize,
        activation: Activation::None,
        has_bias: b.is_some(),
    };
    Ok(vec![cx.add(op, inputs)?])
}

/// Inference BatchNormalization is y = x·s + t per channel (axis 1), with s = scale/√(var+ε)
/// and t = bias − mean·s computed in f32 the way onnxruntime does.
pub fn batch_norm(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    if cx.attr_int("training_mode", 0)? != 0 {
        return Err(cx.err("BatchNormalization in training mode is not supported"));
    }
    if cx.opset < 9 && cx.attr_int("spatial", 1)? != 1 {
        return Err(cx.err("BatchNormalization with spatial = 0 is not supported"));
    }
    let eps = cx.attr_float("epsilon", 1e-5)?;
    let xs = cx.shape(x);
    if xs.len() < 2 {
        return Err(cx.err(format!("the input must have rank >= 2, got {}", cx.ty(x))));
    }
    let c = xs[1];
    let names = ["scale", "bias", "mean", "variance"];
    let mut params = Vec::with_capacity(4);
    for (i, what) in names.iter().enumerate() {
        let t = cx.const_input(i + 1, what)?;
        if t.shape != [c] {
            return Err(cx.err(format!(
                "the {what} must be [{c}] for input {}, got {}",
                cx.ty(x),
                t.ty()
            )));
        }
        params.push(t.to_f32_vec());
    }
    let (scale, bias, mean, var) = (&params[0], &params[1], &params[2], &params[3]);
    let mut s = Vec::with_capacity(c);
    let mut t = Vec::with_capacity(c);
    for ch in 0..c {
        let inv_std = 1.0f32 / (var[ch] + eps).sqrt();
        let sc = scale[ch] * inv_std;
        s.push(sc);
        t.push(bias[ch] - mean[ch] * sc);
    }
    let mut shape = vec![c];
    shape.resize(xs.len() - 1, 1);
    let dt = cx.dtype(x);
    let conv = |v: Vec<f32>| Data::from_f64(dt, v.into_iter().map(f64::from));
    let sv = cx.constant(Tensor::new(shape.clone(), conv(s)));
    let tv = cx.constant(Tensor::new(shape, conv(t)));
    let y = cx.binary(BinaryOp::Mul, x, sv)?;
    Ok(vec![cx.binary(BinaryOp::Add, y, tv)?])
}

pub fn layer_norm(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let scale = cx.input(1)?;
    let bias = cx.opt_input(2)?;
    let axis = cx.attr_int("axis", -1)?;
    let axis = cx.axis(axis, cx.rank(x), "axis")?;
    let epsilon = cx.attr_float("epsilon", 1e-5)?;
    let mut inputs = vec![x, scale];
    if let Some(b) = bias {
        inputs.push(b);
    }
    let op = Op::LayerNorm {
        axis,
        epsilon,
        has_bias: bias.is_some(),
    };
    Ok(vec![cx.add(op, inputs)?])
}

/// From opset 13 Softmax normalises along one axis (default -1). Before, it flattened the
/// input to 2-D at `axis` (default 1) and normalised each row; that is done with reshapes.
pub fn softmax(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let r = cx.rank(x);
    if r == 0 {
        return Err(cx.err("Softmax of a scalar is not supported"));
    }
    if cx.opset >= 13 {
        let axis = cx.attr_int("axis", -1)?;
        let axis = cx.axis(axis, r, "axis")?;
        return Ok(vec![cx.add(Op::Softmax { axis }, vec![x])?]);
    }
    let axis = cx.attr_int("axis", 1)?;
    // The coerced form allows axis == rank (one column per row).
    let axis = if axis == r as i64 {
        r
    } else {
        cx.axis(axis, r, "axis")?
    };
    if axis + 1 == r {
        return Ok(vec![cx.add(Op::Softmax { axis }, vec![x])?]);
    }
    let shape = cx.shape(x);
    let rows: usize = shape[..axis].iter().product();
    let cols: usize = shape[axis..].iter().product();
    let flat = cx.reshape(x, vec![rows, cols])?;
    let s = cx.add(Op::Softmax { axis: 1 }, vec![flat])?;
    Ok(vec![cx.reshape(s, shape)?])
}

pub fn global_average_pool(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let r = cx.rank(x);
    if r < 3 {
        return Err(cx.err(format!("the input must have rank >= 3, got {}", cx.ty(x))));
    }
    let op = Op::Reduce {
        op: ReduceOp::Mean,
        axes: (2..r).collect(),
        keepdims: true,
    };
    Ok(vec![cx.add(op, vec![x])?])
}

/// Axes are an attribute until `input_from` and an optional input after; an empty list means
/// all axes, or nothing at all with noop_with_empty_axes.
fn reduce(cx: &mut Ctx<'_>, op: ReduceOp, input_from: i64) -> Outs {
    let x = cx.input(0)?;
    let r = cx.rank(x);
    let keepdims = cx.attr_bool("keepdims", true)?;
    let axes = if cx.opset >= input_from {
        cx.opt_ints_input(1, "axes")?
    } else {
        cx.attr_ints("axes")?
    };
    let noop = cx.opset >= input_from && cx.attr_bool("noop_with_empty_axes", false)?;
    let mut axes = match axes {
        Some(a) if !a.is_empty() => cx.axes(&a, r, "axes")?,
        _ if noop => return Ok(vec![x]),
        _ => (0..r).collect(),
    };
    axes.sort_unstable();
    Ok(vec![cx.add(Op::Reduce { op, axes, keepdims }, vec![x])?])
}

pub fn reduce_mean(cx: &mut Ctx<'_>) -> Outs {
    reduce(cx, ReduceOp::Mean, 18)
}
pub fn reduce_max(cx: &mut Ctx<'_>) -> Outs {
    reduce(cx, ReduceOp::Max, 18)
}
pub fn reduce_min(cx: &mut Ctx<'_>) -> Outs {
    reduce(cx, ReduceOp::Min, 18)
}
pub fn reduce_prod(cx: &mut Ctx<'_>) -> Outs {
    reduce(cx, ReduceOp::Prod, 18)
}
pub fn reduce_sum(cx: &mut Ctx<'_>) -> Outs {
    reduce(cx, ReduceOp::Sum, 13)
}
