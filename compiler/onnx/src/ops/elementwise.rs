//! Elementwise ops: unary math, binary arithmetic and comparisons with numpy broadcasting,
//! variadic Max/Min, Where, Clip, Cast, and the aliases (Identity, Dropout at inference).
//!
//! These map one-to-one onto IR ops except where ONNX carries parameters the IR op fixes
//! (HardSigmoid's alpha/beta) or semantics the IR op lacks (Mod with fmod = 1); those are
//! decomposed here. No implicit type promotion: ONNX requires matching types and so does the IR.

use crate::ctx::{Ctx, Outs};
use crate::load::dtype_of;
use vitc_ir::{BinaryOp, DType, Op, UnaryOp};

fn unary(cx: &mut Ctx<'_>, u: UnaryOp) -> Outs {
    let x = cx.input(0)?;
    Ok(vec![cx.add(Op::Unary(u), vec![x])?])
}

pub fn erf(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::Erf)
}
pub fn sigmoid(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::Sigmoid)
}
pub fn hard_swish(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::HardSwish)
}
pub fn relu(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::Relu)
}
pub fn tanh(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::Tanh)
}
pub fn exp(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::Exp)
}
pub fn log(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::Log)
}
pub fn neg(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::Neg)
}
pub fn abs(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::Abs)
}
pub fn sqrt(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::Sqrt)
}
pub fn reciprocal(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::Reciprocal)
}
pub fn floor(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::Floor)
}
pub fn ceil(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::Ceil)
}
pub fn round(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::Round)
}
pub fn not(cx: &mut Ctx<'_>) -> Outs {
    unary(cx, UnaryOp::Not)
}

/// The IR's hard_sigmoid is PyTorch's (alpha = 1/6, beta = 0.5); other parameters become
/// clip(alpha·x + beta, 0, 1). ONNX's own default alpha is 0.2.
pub fn hard_sigmoid(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let alpha = cx.attr_float("alpha", 0.2)?;
    let beta = cx.attr_float("beta", 0.5)?;
    if (alpha - 1.0 / 6.0).abs() < 1e-7 && beta == 0.5 {
        return Ok(vec![cx.add(Op::Unary(UnaryOp::HardSigmoid), vec![x])?]);
    }
    let dt = cx.dtype(x);
    let a = cx.scalar(dt, alpha as f64);
    let b = cx.scalar(dt, beta as f64);
    let ax = cx.binary(BinaryOp::Mul, x, a)?;
    let axb = cx.binary(BinaryOp::Add, ax, b)?;
    Ok(vec![cx.add(
        Op::Clip {
            min: Some(0.0),
            max: Some(1.0),
        },
        vec![axb],
    )?])
}

fn binary(cx: &mut Ctx<'_>, b: BinaryOp) -> Outs {
    let x = cx.input(0)?;
    let y = cx.input(1)?;
    Ok(vec![cx.binary(b, x, y)?])
}

pub fn add(cx: &mut Ctx<'_>) -> Outs {
    binary(cx, BinaryOp::Add)
}
pub fn sub(cx: &mut Ctx<'_>) -> Outs {
    binary(cx, BinaryOp::Sub)
}
pub fn mul(cx: &mut Ctx<'_>) -> Outs {
    binary(cx, BinaryOp::Mul)
}
pub fn div(cx: &mut Ctx<'_>) -> Outs {
    binary(cx, BinaryOp::Div)
}
pub fn equal(cx: &mut Ctx<'_>) -> Outs {
    binary(cx, BinaryOp::Equal)
}
pub fn less(cx: &mut Ctx<'_>) -> Outs {
    binary(cx, BinaryOp::Less)
}
pub fn greater(cx: &mut Ctx<'_>) -> Outs {
    binary(cx, BinaryOp::Greater)
}
pub fn and(cx: &mut Ctx<'_>) -> Outs {
    binary(cx, BinaryOp::And)
}
pub fn or(cx: &mut Ctx<'_>) -> Outs {
    binary(cx, BinaryOp::Or)
}

/// ONNX lets the exponent have its own type (`x ^ 2` with an int 2); the IR wants one type,
/// so the exponent is cast to the base's type (a constant exponent folds).
pub fn pow(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let mut y = cx.input(1)?;
    let dt = cx.dtype(x);
    if cx.dtype(y) != dt {
        y = cx.add(Op::Cast { to: dt }, vec![y])?;
    }
    Ok(vec![cx.binary(BinaryOp::Pow, x, y)?])
}

/// fmod = 0 is the IR's mod (sign of the divisor, integers only). fmod = 1 on integers is the
/// truncated remainder a - b·(a / b); float fmod has no IR op.
pub fn modulo(cx: &mut Ctx<'_>) -> Outs {
    let a = cx.input(0)?;
    let b = cx.input(1)?;
    let fmod = cx.attr_bool("fmod", false)?;
    if cx.dtype(a).is_float() {
        return Err(cx.err(if fmod {
            "Mod with fmod = 1 on floating-point tensors is not supported"
        } else {
            "Mod with fmod = 0 needs integer tensors (the ONNX spec requires fmod = 1 for floats)"
        }));
    }
    if !fmod {
        return Ok(vec![cx.binary(BinaryOp::Mod, a, b)?]);
    }
    let q = cx.binary(BinaryOp::Div, a, b)?;
    let bq = cx.binary(BinaryOp::Mul, b, q)?;
    Ok(vec![cx.binary(BinaryOp::Sub, a, bq)?])
}

fn variadic(cx: &mut Ctx<'_>, b: BinaryOp) -> Outs {
    let xs = cx.all_inputs()?;
    let mut acc = xs[0];
    for &x in &xs[1..] {
        acc = cx.binary(b, acc, x)?;
    }
    Ok(vec![acc])
}

pub fn max(cx: &mut Ctx<'_>) -> Outs {
    variadic(cx, BinaryOp::Max)
}
pub fn min(cx: &mut Ctx<'_>) -> Outs {
    variadic(cx, BinaryOp::Min)
}
pub fn sum(cx: &mut Ctx<'_>) -> Outs {
    variadic(cx, BinaryOp::Add)
}

pub fn where_(cx: &mut Ctx<'_>) -> Outs {
    let c = cx.input(0)?;
    let a = cx.input(1)?;
    let b = cx.input(2)?;
    Ok(vec![cx.add(Op::Where, vec![c, a, b])?])
}

/// Bounds are attributes before opset 11 and optional constant inputs from 11 on.
pub fn clip(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let (min, max) = if cx.opset < 11 {
        (
            cx.attr_opt_float("min")?.map(f64::from),
            cx.attr_opt_float("max")?.map(f64::from),
        )
    } else {
        (
            cx.opt_scalar_input(1, "min bound")?,
            cx.opt_scalar_input(2, "max bound")?,
        )
    };
    // An infinite bound is no bound; NaN bounds have no meaning for the IR op.
    let bound = |v: Option<f64>, what: &str| -> Result<Option<f32>, crate::OnnxError> {
        match v {
            Some(v) if v.is_nan() => Err(cx.err(format!("the {what} bound is NaN"))),
            Some(v) if v.is_infinite() => Ok(None),
            other => Ok(other.map(|v| v as f32)),
        }
    };
    let (min, max) = (bound(min, "min")?, bound(max, "max")?);
    if min.is_none() && max.is_none() {
        return Ok(vec![x]);
    }
    Ok(vec![cx.add(Op::Clip { min, max }, vec![x])?])
}

pub fn cast(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let code = cx
        .attr_opt_int("to")?
        .ok_or_else(|| cx.err("attribute 'to' is missing"))?;
    let to = i32::try_from(code)
        .map_err(|_| cx.err(format!("unknown element type code {code}")))
        .and_then(|c| dtype_of(c).map_err(|m| cx.err(format!("cast target: {m}"))))?;
    if cx.dtype(x) == to {
        return Ok(vec![x]);
    }
    Ok(vec![cx.add(Op::Cast { to }, vec![x])?])
}

pub fn identity(cx: &mut Ctx<'_>) -> Outs {
    Ok(vec![cx.input(0)?])
}

/// Inference-mode Dropout is the identity; its mask output is not supported (the driver
/// refuses a model that uses it). A constant `training_mode = true` would change the result.
pub fn dropout(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    if cx.opset >= 12 {
        if let Some(t) = cx.opt_const_input(2, "training_mode")? {
            if t.numel() == 1 && t.data.get_f64(0) != 0.0 {
                return Err(cx.err("Dropout in training mode is not supported"));
            }
        }
    }
    Ok(vec![x])
}

/// Used by other topics: a scalar of the same type as `v`.
pub(crate) fn scalar_like(cx: &mut Ctx<'_>, v: vitc_ir::ValueId, x: f64) -> vitc_ir::ValueId {
    let dt: DType = cx.dtype(v);
    cx.scalar(dt, x)
}
