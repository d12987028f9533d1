//! QuantizeLinear and DequantizeLinear, per-tensor and per-axis, onto `vit.quantize` and
//! `vit.dequantize`.
//!
//! The IR wants a scalar scale for per-tensor and a `[C]` scale for per-axis, with a zero point
//! of exactly the scale's shape; ONNX also allows a one-element 1-D scale and an absent zero
//! point (uint8 zero), which are normalised here. Dequantize is never folded (see ctx.rs), so
//! int8 weights keep their DequantizeLinear for the quantization passes.

use crate::ctx::{Ctx, Outs};
use crate::load::dtype_of;
use vitc_ir::{DType, Data, Op, Tensor, ValueId};

/// Scale and zero point in IR form and the per-axis axis (None for per-tensor). `zero_type` is
/// the zero point's type when the node has none.
fn qparams(
    cx: &mut Ctx<'_>,
    x: ValueId,
    zero_type: DType,
) -> Result<(ValueId, ValueId, Option<usize>), crate::OnnxError> {
    if cx.attr_int("block_size", 0)? != 0 {
        return Err(cx.err("blocked quantization (block_size != 0) is not supported"));
    }
    let mut s = cx.input(1)?;
    let mut z = cx.opt_input(2)?;
    let st = cx.ty(s).clone();
    let axis = match st.rank() {
        0 => None,
        1 if st.numel() == 1 => {
            // A one-element scale is per-tensor whatever the axis says.
            s = cx.reshape(s, vec![])?;
            if let Some(zv) = z {
                if cx.ty(zv).numel() != 1 {
                    return Err(cx.err(format!(
                        "zero point {} does not match scale {st}",
                        cx.ty(zv)
                    )));
                }
                z = Some(cx.reshape(zv, vec![])?);
            }
            None
        }
        1 => {
            let a = cx.attr_int("axis", 1)?;
            Some(cx.axis(a, cx.rank(x), "axis")?)
        }
        _ => {
            return Err(cx.err(format!(
                "scale must be a scalar or 1-D (blocked scales are not supported), got {st}"
            )))
        }
    };
    let z = match z {
        Some(z) => z,
        None => {
            let shape = cx.shape(s);
            let n = cx.ty(s).numel();
            cx.constant(Tensor::new(shape, Data::zeros(zero_type, n)))
        }
    };
    Ok((s, z, axis))
}

pub fn quantize_linear(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let zero_type = match cx.opt_input(2)? {
        Some(z) => cx.dtype(z),
        None => match cx.attr_opt_int("output_dtype")? {
            Some(code) if code != 0 => i32::try_from(code)
                .map_err(|_| cx.err(format!("unknown output_dtype {code}")))
                .and_then(|c| dtype_of(c).map_err(|m| cx.err(m)))?,
            _ => DType::U8,
        },
    };
    if !matches!(zero_type, DType::I8 | DType::U8) {
        return Err(cx.err(format!(
            "quantizing to {zero_type} is not supported (only int8 and uint8)"
        )));
    }
    let (s, z, axis) = qparams(cx, x, zero_type)?;
    Ok(vec![cx.add(
        Op::Quantize {
            axis,
            to: zero_type,
        },
        vec![x, s, z],
    )?])
}

pub fn dequantize_linear(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let xt = cx.dtype(x);
    if !xt.is_int() {
        return Err(cx.err(format!(
            "dequantizing {} is not supported (only integer inputs)",
            cx.ty(x)
        )));
    }
    let (s, z, axis) = qparams(cx, x, xt)?;
    Ok(vec![cx.add(Op::Dequantize { axis }, vec![x, s, z])?])
}
