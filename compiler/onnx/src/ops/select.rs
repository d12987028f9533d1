//! Selection: TopK, decomposed at import into comparisons, counts and one `vit.gather_elements`,
//! so that no target needs a sort (the IR has none, and the token counts of a pruned ViT are
//! small enough for the quadratic form).
//!
//! The lowering ranks every element along the axis — rank(i) = #{j : j beats i}, where j beats
//! i when it compares better or when the two tie and j < i — which is a permutation of 0..N
//! whatever the ties, so slot s < K of the result selects exactly the element of rank s:
//! its index is Σᵢ [rank(i) = s]·i, and its value a gather at that index. The outputs are in
//! rank order, which is ONNX's order for `sorted = 1` (ties keep the lower index first) and an
//! order `sorted = 0` allows (ONNX leaves it unspecified there; onnxruntime's differs). Like
//! onnxruntime, a NaN ranks above every number in both directions and NaNs tie with each
//! other. Results are exact: counts and indices are integers, values are copied, not computed.

use crate::ctx::{Ctx, Outs};
use vitc_ir::{BinaryOp, DType, Data, Op, ReduceOp, Tensor, UnaryOp};

/// TopK: K is an attribute before opset 10 and a constant input from 10 on; `largest` and
/// `sorted` arrive with opset 11.
pub fn top_k(cx: &mut Ctx<'_>) -> Outs {
    let x = cx.input(0)?;
    let shape = cx.shape(x);
    let dt = cx.dtype(x);
    let a = cx.attr_int("axis", -1)?;
    let axis = cx.axis(a, shape.len(), "axis")?;
    let k = if cx.opset >= 10 {
        match cx.ints_input(1, "K")?[..] {
            [k] => k,
            ref v => return Err(cx.err(format!("K must hold one value, got {v:?}"))),
        }
    } else {
        cx.attr_opt_int("k")?
            .ok_or_else(|| cx.err("attribute 'k' is missing"))?
    };
    // `sorted` is read only to be checked: rank order is right for both of its values.
    let (largest, _sorted) = if cx.opset >= 11 {
        (
            cx.attr_bool("largest", true)?,
            cx.attr_bool("sorted", true)?,
        )
    } else {
        (true, true)
    };
    if dt == DType::Bool {
        return Err(cx.err(format!("TopK needs a numeric input, got {}", cx.ty(x))));
    }
    let n = shape[axis];
    let k = match usize::try_from(k) {
        Ok(k) if k <= n => k,
        _ => {
            return Err(cx.err(format!(
                "K = {k} is outside 0..={n} (dim {axis} of {})",
                cx.ty(x)
            )))
        }
    };
    let (pre, post) = (&shape[..axis], &shape[axis + 1..]);
    let with = |mid: &[usize]| -> Vec<usize> { [pre, mid, post].concat() };
    if k == 0 {
        let out = with(&[0]);
        let v = cx.constant(Tensor::new(out.clone(), Data::zeros(dt, 0)));
        let i = cx.constant(Tensor::new(out, Data::I64(vec![])));
        return Ok(vec![v, i]);
    }
    // Trailing unit dims so that small constants over the axis broadcast past `post`.
    let unit_post = vec![1usize; post.len()];
    let over = |mid: &[usize]| -> Vec<usize> { [mid, &unit_post[..]].concat() };

    // Pairwise facts over [pre, i, j, post]: element i along dim `axis`, j along `axis + 1`.
    let xi = cx.reshape(x, with(&[n, 1]))?;
    let xj = cx.reshape(x, with(&[1, n]))?;
    let order = if largest {
        BinaryOp::Greater
    } else {
        BinaryOp::Less
    };
    let mut better = cx.binary(order, xj, xi)?;
    let mut same = cx.binary(BinaryOp::Equal, xj, xi)?;
    if dt.is_float() {
        // NaN compares false with everything: give it onnxruntime's place above all numbers
        // (first when largest, last otherwise), tied with other NaNs.
        // Spelled with and/not only: ONNX (the TensorRT target) has no order on booleans.
        let num = cx.binary(BinaryOp::Equal, x, x)?;
        let nan = cx.add(Op::Unary(UnaryOp::Not), vec![num])?;
        let (nan_i, nan_j) = (
            cx.reshape(nan, with(&[n, 1]))?,
            cx.reshape(nan, with(&[1, n]))?,
        );
        let (num_i, num_j) = (
            cx.reshape(num, with(&[n, 1]))?,
            cx.reshape(num, with(&[1, n]))?,
        );
        let nan_first = if largest {
            cx.binary(BinaryOp::And, nan_j, num_i)?
        } else {
            cx.binary(BinaryOp::And, nan_i, num_j)?
        };
        better = cx.binary(BinaryOp::Or, better, nan_first)?;
        let both = cx.binary(BinaryOp::And, nan_j, nan_i)?;
        same = cx.binary(BinaryOp::Or, same, both)?;
    }
    // j < i, from two aranges: it folds to a constant for the usual sizes, and an axis too long
    // to fold stays a node instead of an N² allocation here.
    let pos = Tensor::new(over(&[n]), Data::I64((0..n as i64).collect()));
    let pos = cx.constant(pos);
    let pos_i = Tensor::new(over(&[n, 1]), Data::I64((0..n as i64).collect()));
    let pos_i = cx.constant(pos_i);
    let earlier = cx.binary(BinaryOp::Less, pos, pos_i)?;
    let tie = cx.binary(BinaryOp::And, same, earlier)?;
    let beats = cx.binary(BinaryOp::Or, better, tie)?;
    let beats = cx.add(Op::Cast { to: DType::I64 }, vec![beats])?;
    let sum_j = Op::Reduce {
        op: ReduceOp::Sum,
        axes: vec![axis + 1],
        keepdims: false,
    };
    let rank = cx.add(sum_j.clone(), vec![beats])?; // [pre, n, post]

    // Slot s picks the position whose rank is s: [pre, s, i, post].
    let rank = cx.reshape(rank, with(&[1, n]))?;
    let slots = Tensor::new(over(&[k, 1]), Data::I64((0..k as i64).collect()));
    let slots = cx.constant(slots);
    let hit = cx.binary(BinaryOp::Equal, rank, slots)?;
    let zero = cx.scalar(DType::I64, 0.0);
    let picked = cx.add(Op::Where, vec![hit, pos, zero])?;
    let indices = cx.add(sum_j, vec![picked])?; // [pre, k, post]
    let values = cx.add(Op::GatherElements { axis }, vec![x, indices])?;
    Ok(vec![values, indices])
}
