//! Matrix products: MatMul (with numpy's vector promotion) and Gemm, decomposed into
//! transpose + matmul + scale + add so the passes see one matmul form. Transposes of constant
//! weights fold at import, leaving a plain `[K, N]` weight for the linear-fusion rules.

use crate::ctx::{Ctx, Outs};
use crate::ops::elementwise::scalar_like;
use vitc_ir::{BinaryOp, Op};

/// The IR matmul takes rank >= 2; 1-D operands are promoted the numpy way (a vector on the
/// left is a row, on the right a column) and the added dimension is dropped again.
pub fn matmul(cx: &mut Ctx<'_>) -> Outs {
    let a = cx.input(0)?;
    let b = cx.input(1)?;
    let (sa, sb) = (cx.shape(a), cx.shape(b));
    if sa.is_empty() || sb.is_empty() {
        return Err(cx.err(format!(
            "operands must have rank >= 1, got {} and {}",
            cx.ty(a),
            cx.ty(b)
        )));
    }
    let a2 = if sa.len() == 1 {
        cx.reshape(a, vec![1, sa[0]])?
    } else {
        a
    };
    let b2 = if sb.len() == 1 {
        cx.reshape(b, vec![sb[0], 1])?
    } else {
        b
    };
    let y = cx.add(Op::MatMul, vec![a2, b2])?;
    if sa.len() > 1 && sb.len() > 1 {
        return Ok(vec![y]);
    }
    let mut shape = cx.shape(y);
    let r = shape.len();
    if sb.len() == 1 {
        shape.remove(r - 1);
    }
    if sa.len() == 1 {
        shape.remove(r - 2);
    }
    Ok(vec![cx.reshape(y, shape)?])
}

/// Y = alpha·op(A)·op(B) + beta·C with op = optional transpose; A and B are matrices and C
/// broadcasts to the result.
pub fn gemm(cx: &mut Ctx<'_>) -> Outs {
    let mut a = cx.input(0)?;
    let mut b = cx.input(1)?;
    let c = cx.opt_input(2)?;
    let trans_a = cx.attr_bool("transA", false)?;
    let trans_b = cx.attr_bool("transB", false)?;
    let alpha = cx.attr_float("alpha", 1.0)?;
    let beta = cx.attr_float("beta", 1.0)?;
    if cx.rank(a) != 2 || cx.rank(b) != 2 {
        return Err(cx.err(format!(
            "A and B must be matrices, got {} and {}",
            cx.ty(a),
            cx.ty(b)
        )));
    }
    if trans_a {
        a = cx.add(Op::Transpose { perm: vec![1, 0] }, vec![a])?;
    }
    if trans_b {
        b = cx.add(Op::Transpose { perm: vec![1, 0] }, vec![b])?;
    }
    let mut y = cx.add(Op::MatMul, vec![a, b])?;
    let out_shape = cx.shape(y);
    if alpha != 1.0 {
        let s = scalar_like(cx, y, alpha as f64);
        y = cx.binary(BinaryOp::Mul, y, s)?;
    }
    if let Some(mut c) = c {
        if beta != 0.0 {
            if beta != 1.0 {
                let s = scalar_like(cx, c, beta as f64);
                c = cx.binary(BinaryOp::Mul, c, s)?;
            }
            y = cx.binary(BinaryOp::Add, y, c)?;
            if cx.shape(y) != out_shape {
                return Err(cx.err(format!(
                    "C {} does not broadcast to the product's shape {out_shape:?}",
                    cx.ty(c)
                )));
            }
        }
    }
    Ok(vec![y])
}
