//! Quantization rules: a matmul of a fake-quantized activation, `DQ(Q(x))`, by a dequantized
//! int8 weight becomes `vit.qlinear` with the int8 weight and its per-tensor or per-column
//! scales; its bias joins it; weight transposes move onto the int8 constant (where they fold);
//! slices of a quantized projection slice its columns; reshapes move out of Q/DQ pairs and a
//! DQ followed by the same Q cancels. Weight subgraphs that are all constant are folded by
//! `fold-constant` (an i32 bias's DQ among them); an int8 weight's DQ is left for these rules.

use egg::{Id, Subst};
use vitc_ir::{DType, Op};

use super::layout::{is_full, slice_ranges, Ranges};
use super::{attr, rule, scalar, ty_of, v, AnyOf, Build, Guard, Rw};
use crate::lang::{add_op, ty, VGraph, Vit};

pub fn rules() -> Vec<Rw> {
    vec![
        rule(
            "qlinear-fuse",
            AnyOf::new(&[
                "(matmul (dequantize ?da (quantize ?qa ?x ?s ?z) ?s2 ?z2) (dequantize ?wa ?w ?ws ?wz))",
            ]),
            vec![same_qparams("?s", "?z", "?s2", "?z2")],
            Build(qlinear_fuse),
        ),
        rule(
            "qlinear-fold-bias",
            AnyOf::new(&["(add (qlinear ?a ?x ?w ?s ?z) ?b)"]),
            vec![super::is_const("?b")],
            Build(qlinear_fold_bias),
        ),
        rule(
            "transpose-through-dequantize",
            AnyOf::new(&["(transpose ?p (dequantize ?a ?w ?s ?z))"]),
            vec![super::is_const("?w")],
            Build(transpose_through_dequantize),
        ),
        rule(
            "slice-qlinear-columns",
            AnyOf::new(&[
                "(slice ?r (qlinear ?a ?x ?w ?s ?z))",
                "(slice ?r (qlinear ?a ?x ?w ?s ?z ?b))",
            ]),
            vec![],
            Build(slice_qlinear_columns),
        ),
        rule(
            "dequantize-through-reshape",
            AnyOf::new(&["(dequantize ?a (reshape ?r ?q) ?s ?z)"]),
            vec![per_tensor("?a")],
            super::pat("(reshape ?r (dequantize ?a ?q ?s ?z))"),
        ),
        rule(
            "quantize-through-reshape",
            AnyOf::new(&["(quantize ?a (reshape ?r ?x) ?s ?z)"]),
            vec![per_tensor("?a")],
            super::pat("(reshape ?r (quantize ?a ?x ?s ?z))"),
        ),
        rule(
            "quantize-dequantize-cancel",
            AnyOf::new(&["(quantize ?qa (dequantize ?da ?q ?s ?z) ?s2 ?z2)"]),
            vec![
                same_qparams("?s", "?z", "?s2", "?z2"),
                per_tensor("?qa"),
                per_tensor("?da"),
                Box::new(|eg: &VGraph, s: &Subst| {
                    let to = match attr(eg, s, "?qa") {
                        Some(Op::Quantize { to, .. }) => *to,
                        _ => return false,
                    };
                    ty_of(eg, s, "?q").is_some_and(|t| t.dtype == to && matches!(to, DType::I8 | DType::U8))
                        && scalar(eg, s[v("?s")]).is_some_and(|x| x.is_normal() && x > 0.0)
                }),
            ],
            Build(|_: &mut VGraph, _: Id, s: &Subst| Some(s[v("?q")])),
        ),
    ]
}

/// The (scale, zero point) pairs are the same scalars.
fn same_qparams(s: &'static str, z: &'static str, s2: &'static str, z2: &'static str) -> Guard {
    Box::new(move |eg, sub| {
        let same = |a: &str, b: &str| {
            let (x, y) = (eg.find(sub[v(a)]), eg.find(sub[v(b)]));
            x == y
                || matches!((scalar(eg, x), scalar(eg, y)), (Some(p), Some(q)) if p == q)
                    && ty(eg, x).map(|t| t.dtype) == ty(eg, y).map(|t| t.dtype)
        };
        let scalar_pair = ty_of(eg, sub, s).is_some_and(|t| t.numel() == 1);
        scalar_pair && same(s, s2) && same(z, z2)
    })
}

/// The Q or DQ bound to `var` is per-tensor.
fn per_tensor(var: &'static str) -> Guard {
    Box::new(move |eg, s| {
        matches!(
            attr(eg, s, var),
            Some(Op::Quantize { axis: None, .. } | Op::Dequantize { axis: None })
        )
    })
}

/// `qlinear-fuse`.
fn qlinear_fuse(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let Some(Op::Quantize { axis: None, to }) = attr(eg, s, "?qa").cloned() else {
        return None;
    };
    if !matches!(attr(eg, s, "?da"), Some(Op::Dequantize { axis: None })) {
        return None;
    }
    let (x, w, ws, wz) = (s[v("?x")], s[v("?w")], s[v("?ws")], s[v("?wz")]);
    let wt = ty(eg, w)?.clone();
    if wt.rank() != 2
        || !matches!(wt.dtype, DType::I8 | DType::U8)
        || ty(eg, x)?.dtype != DType::F32
    {
        return None;
    }
    let has_data = eg[w]
        .nodes
        .iter()
        .any(|n| matches!(n, Vit::Weight(_) | Vit::Lit(_)));
    // A per-axis weight scale must run along the columns (N) to be qlinear's per-column scale.
    let axis_ok = matches!(
        attr(eg, s, "?wa"),
        Some(Op::Dequantize {
            axis: None | Some(1)
        })
    );
    if !has_data || !axis_ok {
        return None;
    }
    let x_scale = scalar(eg, s[v("?s")])? as f32;
    let x_zero_point = scalar(eg, s[v("?z")])? as i32;
    let op = Op::QLinear {
        x_scale,
        x_zero_point,
        x_type: to,
        has_bias: false,
    };
    let args = [x, w, ws, wz];
    let tys: Option<Vec<_>> = args.iter().map(|&a| ty(eg, a)).collect();
    let out = super::infer(&op, &tys?)?;
    if Some(&out) != ty(eg, id) {
        return None;
    }
    Some(add_op(eg, op, &args))
}

/// `qlinear-fold-bias`: qlinear(x, …) + b with b a constant [N] (or [1, …, N]).
fn qlinear_fold_bias(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let Some(Op::QLinear {
        x_scale,
        x_zero_point,
        x_type,
        has_bias: false,
    }) = attr(eg, s, "?a").cloned()
    else {
        return None;
    };
    let n = *ty(eg, s[v("?w")])?.shape.last()?;
    let mut b = s[v("?b")];
    let bt = ty(eg, b)?.clone();
    if bt.numel() != n || bt.shape.last() != Some(&n) || bt.dtype != DType::F32 {
        return None;
    }
    if bt.rank() != 1 {
        b = add_op(eg, Op::Reshape { shape: vec![n] }, &[b]);
    }
    let op = Op::QLinear {
        x_scale,
        x_zero_point,
        x_type,
        has_bias: true,
    };
    let out = add_op(eg, op, &[s[v("?x")], s[v("?w")], s[v("?s")], s[v("?z")], b]);
    (ty(eg, out) == ty(eg, id)).then_some(out)
}

/// `transpose-through-dequantize`: transpose(DQ(w)) = DQ(transpose(w)), the per-channel axis
/// following its dim.
fn transpose_through_dequantize(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let Some(Op::Transpose { perm }) = attr(eg, s, "?p").cloned() else {
        return None;
    };
    let Some(Op::Dequantize { axis }) = attr(eg, s, "?a").cloned() else {
        return None;
    };
    let axis = match axis {
        Some(a) => Some(perm.iter().position(|&p| p == a)?),
        None => None,
    };
    let t = add_op(eg, Op::Transpose { perm }, &[s[v("?w")]]);
    let out = add_op(eg, Op::Dequantize { axis }, &[t, s[v("?s")], s[v("?z")]]);
    (ty(eg, out) == ty(eg, id)).then_some(out)
}

/// `slice-qlinear-columns`: slicing only the last dim of a quantized projection with constant
/// weight, scales and bias slices those constants instead.
fn slice_qlinear_columns(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let r = slice_ranges(attr(eg, s, "?r")?)?;
    let op = attr(eg, s, "?a")?.clone();
    let Op::QLinear { has_bias, .. } = op else {
        return None;
    };
    let (x, w, ws, wz) = (s[v("?x")], s[v("?w")], s[v("?s")], s[v("?z")]);
    let b = s.get(v("?b")).copied();
    if has_bias != b.is_some()
        || ![w, ws, wz]
            .iter()
            .chain(b.iter())
            .all(|&c| eg[c].data.konst)
    {
        return None;
    }
    let (xt, wt) = (ty(eg, x)?.clone(), ty(eg, w)?.clone());
    let n = r.0.len();
    let mut src = xt.shape.clone();
    *src.last_mut()? = wt.shape[1];
    if (0..n - 1).any(|i| !is_full(&r, i, src[i])) {
        return None;
    }
    let cols = |rank: usize| -> Ranges {
        let mut out: Ranges = (vec![], vec![], vec![]);
        if rank == 2 {
            out = (vec![0], vec![wt.shape[0] as i64], vec![1]);
        }
        out.0.push(r.0[n - 1]);
        out.1.push(r.1[n - 1]);
        out.2.push(r.2[n - 1]);
        out
    };
    let slice = |eg: &mut VGraph, c: Id, rank: usize| {
        let (starts, ends, steps) = cols(rank);
        add_op(
            eg,
            Op::Slice {
                starts,
                ends,
                steps,
            },
            &[c],
        )
    };
    let w2 = slice(eg, w, 2);
    let per_column = ty(eg, ws)?.rank() == 1;
    let (ws2, wz2) = if per_column {
        (slice(eg, ws, 1), slice(eg, wz, 1))
    } else {
        (ws, wz)
    };
    let mut args = vec![x, w2, ws2, wz2];
    if let Some(b) = b {
        args.push(slice(eg, b, 1));
    }
    let out = add_op(eg, op, &args);
    (ty(eg, out) == ty(eg, id)).then_some(out)
}
