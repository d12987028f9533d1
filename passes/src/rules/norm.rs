//! Normalisation and activation rules, and the linear layer: the decomposed LayerNorm
//! (ReduceMean, Sub, Pow, Sqrt, Div) becomes `vit.layer_norm` with its scale and bias folded
//! in; erf-GELU in every association order and tanh-GELU become `vit.gelu`; MatMul with a
//! constant weight becomes `vit.linear`, which then takes in its bias, a following activation
//! and a residual add as its epilogue.

use egg::{Id, Subst};
use vitc_ir::{Activation, DType, Op, ReduceOp, Tensor};

use super::{all_equal, rule, scalar, scalar_is, ty_of, v, value_of, AnyOf, Build, Guard, Rw};
use crate::lang::{add_const, add_op, attr_of, node_op, operands, ty, VGraph, Vit};

pub fn rules() -> Vec<Rw> {
    vec![
        rule(
            "layer-norm-decomposed",
            AnyOf::new(&[
                "(div (sub ?x (reduce_mean ?r1 ?x)) (sqrt (add (reduce_mean ?r2 (pow (sub ?x (reduce_mean ?r1 ?x)) ?two)) ?eps)))",
            ]),
            vec![
                scalar_is("?two", |x| x == 2.0),
                scalar_is("?eps", |x| x >= 0.0 && x.is_finite()),
            ],
            Build(layer_norm_decomposed),
        ),
        rule(
            "layer-norm-fold-scale",
            AnyOf::new(&["(mul (layer_norm ?a ?x ?one) ?g)"]),
            vec![const_all("?one", 1.0)],
            Build(|eg: &mut VGraph, id: Id, s: &Subst| layer_norm_fold(eg, id, s, false)),
        ),
        rule(
            "layer-norm-fold-bias",
            AnyOf::new(&["(add (layer_norm ?a ?x ?g) ?b)"]),
            vec![],
            Build(|eg: &mut VGraph, id: Id, s: &Subst| layer_norm_fold(eg, id, s, true)),
        ),
        rule(
            "gelu-erf",
            AnyOf(gelu_forms(&["(add (erf (mul ?x ?c)) ?one)"])),
            vec![
                scalar_is("?c", |c| (c - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-6),
                scalar_is("?one", |x| x == 1.0),
                scalar_is("?half", |x| x == 0.5),
            ],
            Build(|eg: &mut VGraph, _: Id, s: &Subst| {
                Some(add_op(eg, Op::Gelu { approximate: false }, &[s[v("?x")]]))
            }),
        ),
        rule(
            "gelu-tanh",
            AnyOf(gelu_forms(&[
                "(add (tanh (mul (add ?x (mul (pow ?x ?three) ?k)) ?c)) ?one)",
                "(add (tanh (mul (add (mul (pow ?x ?three) ?k) ?x) ?c)) ?one)",
            ])),
            vec![
                scalar_is("?c", |c| (c - (2.0 / std::f64::consts::PI).sqrt()).abs() < 1e-6),
                scalar_is("?k", |k| (k - 0.044715).abs() < 1e-7),
                scalar_is("?three", |x| x == 3.0),
                scalar_is("?one", |x| x == 1.0),
                scalar_is("?half", |x| x == 0.5),
            ],
            Build(|eg: &mut VGraph, _: Id, s: &Subst| {
                Some(add_op(eg, Op::Gelu { approximate: true }, &[s[v("?x")]]))
            }),
        ),
        rule(
            "linear-from-matmul",
            AnyOf::new(&["(matmul ?x ?w)"]),
            vec![weight_matrix("?w"), same_dtype("?x", "?w")],
            Build(|eg: &mut VGraph, _: Id, s: &Subst| {
                let op = Op::Linear {
                    activation: Activation::None,
                    has_bias: false,
                    has_residual: false,
                };
                Some(add_op(eg, op, &[s[v("?x")], s[v("?w")]]))
            }),
        ),
        rule(
            "linear-fold-bias",
            AnyOf::new(&["(add (linear ?a ?x ?w) ?b)"]),
            vec![],
            Build(linear_fold_bias),
        ),
        rule(
            "linear-fold-activation",
            AnyOf::new(&["(gelu ?g ?l)", "(relu ?l)", "(silu ?l)", "(hard_swish ?l)"]),
            vec![],
            Build(linear_fold_activation),
        ),
        rule(
            "linear-fold-scale",
            AnyOf::new(&["(mul ?l ?c)"]),
            vec![scalar_is("?c", f64::is_finite), super::is_f32("?c")],
            Build(linear_fold_scale),
        ),
        rule(
            "linear-fold-residual",
            AnyOf::new(&["(add ?l ?r)", "(add ?r ?l)"]),
            vec![super::is_not_const("?r")],
            Build(linear_fold_residual),
        ),
    ]
}

/// The six association orders of `0.5 · x · u` (with the constant on the right of its
/// multiply, where `mul-const-to-right` puts it), for each spelling of `u`.
fn gelu_forms(us: &[&str]) -> Vec<egg::Pattern<Vit>> {
    let mut out = Vec::new();
    for u in us {
        for f in [
            "(mul (mul ?x U) ?half)",
            "(mul (mul U ?x) ?half)",
            "(mul (mul ?x ?half) U)",
            "(mul U (mul ?x ?half))",
            "(mul ?x (mul U ?half))",
            "(mul (mul U ?half) ?x)",
        ] {
            out.push(super::pat(&f.replace('U', u)));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Guards

/// `var` is a small constant whose every element is `x`.
fn const_all(var: &'static str, x: f64) -> Guard {
    Box::new(move |eg, s| value_of(eg, s, var).is_some_and(|t| all_equal(&t, x)))
}

/// `var` is a constant rank-2 float matrix with data (a weight `vit.linear` can take).
fn weight_matrix(var: &'static str) -> Guard {
    Box::new(move |eg, s| {
        ty_of(eg, s, var).is_some_and(|t| t.rank() == 2 && t.dtype.is_float())
            && eg[s[v(var)]]
                .nodes
                .iter()
                .any(|n| matches!(n, Vit::Weight(_) | Vit::Lit(_)))
    })
}

/// `a` and `b` have the same element type.
fn same_dtype(a: &'static str, b: &'static str) -> Guard {
    Box::new(
        move |eg, s| matches!((ty_of(eg, s, a), ty_of(eg, s, b)), (Some(x), Some(y)) if x.dtype == y.dtype),
    )
}

// ---------------------------------------------------------------------------------------------
// Appliers

/// `c` reshaped to its last `n` dims (dropping leading ones), as a constant expression.
fn trailing(eg: &mut VGraph, c: Id, n: usize) -> Option<Id> {
    let t = ty(eg, c)?.clone();
    if t.rank() <= n {
        return Some(c);
    }
    let cut = t.rank() - n;
    if t.shape[..cut].iter().any(|&d| d != 1) {
        return None;
    }
    let shape = t.shape[cut..].to_vec();
    Some(add_op(eg, Op::Reshape { shape }, &[c]))
}

/// `layer-norm-decomposed`: (x − mean(x)) / √(mean((x − mean(x))²) + ε) over trailing axes is
/// `layer_norm(x, 1)`; the scale of ones is folded away by `layer-norm-fold-scale` when a
/// scale follows.
fn layer_norm_decomposed(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let x = s[v("?x")];
    let t = ty(eg, x)?.clone();
    if t.dtype != DType::F32 {
        return None;
    }
    let axes = |var: &str| match attr_of(eg, s[v(var)]) {
        Some(Op::Reduce {
            op: ReduceOp::Mean,
            axes,
            keepdims: true,
        }) => {
            let mut a = axes.clone();
            a.sort_unstable();
            Some(a)
        }
        _ => None,
    };
    let (a1, a2) = (axes("?r1")?, axes("?r2")?);
    let first = *a1.first()?;
    // The normalised dims must be a trailing block, as layer_norm's `axis..` says.
    if a1 != a2 || a1 != (first..t.rank()).collect::<Vec<_>>() {
        return None;
    }
    let eps = scalar(eg, s[v("?eps")])? as f32;
    let norm = t.shape[first..].to_vec();
    let n: usize = norm.iter().product();
    let ones = add_const(
        eg,
        &format!("ones{norm:?}"),
        "layer_norm.scale",
        Tensor::f32(norm, vec![1.0; n]),
    );
    let op = Op::LayerNorm {
        axis: first,
        epsilon: eps,
        has_bias: false,
    };
    let ln = add_op(eg, op, &[x, ones]);
    (ty(eg, ln) == ty(eg, id)).then_some(ln)
}

/// `layer-norm-fold-scale` / `layer-norm-fold-bias`: a constant multiply (after a scale of
/// ones) or add (after no bias) over the normalised dims joins the layer norm.
fn layer_norm_fold(eg: &mut VGraph, id: Id, s: &Subst, bias: bool) -> Option<Id> {
    let Some(Op::LayerNorm {
        axis,
        epsilon,
        has_bias: false,
    }) = attr_of(eg, s[v("?a")]).cloned()
    else {
        return None;
    };
    let x = s[v("?x")];
    let extra = s[v(if bias { "?b" } else { "?g" })];
    if !eg[extra].data.konst {
        return None;
    }
    let rank = ty(eg, x)?.rank();
    let c = trailing(eg, extra, rank - axis)?;
    let op = Op::LayerNorm {
        axis,
        epsilon,
        has_bias: bias,
    };
    let args = if bias {
        vec![x, s[v("?g")], c]
    } else {
        vec![x, c]
    };
    let tys: Option<Vec<_>> = args.iter().map(|&a| ty(eg, a)).collect();
    let out = super::infer(&op, &tys?)?;
    if Some(&out) != ty(eg, id) {
        return None;
    }
    Some(add_op(eg, op, &args))
}

/// `linear-fold-bias`: linear(x, w) + b with b a constant [N] (or [1, …, N]).
fn linear_fold_bias(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    if !matches!(
        attr_of(eg, s[v("?a")]),
        Some(Op::Linear {
            activation: Activation::None,
            has_bias: false,
            has_residual: false
        })
    ) {
        return None;
    }
    let b = s[v("?b")];
    if !eg[b].data.konst || ty(eg, b)?.dtype != ty(eg, id)?.dtype {
        return None;
    }
    let n = *ty(eg, s[v("?w")])?.shape.last()?;
    let b = trailing(eg, b, 1)?;
    if ty(eg, b)?.shape != [n] {
        return None;
    }
    let op = Op::Linear {
        activation: Activation::None,
        has_bias: true,
        has_residual: false,
    };
    let out = add_op(eg, op, &[s[v("?x")], s[v("?w")], b]);
    (ty(eg, out) == ty(eg, id)).then_some(out)
}

/// A linear in class `l` whose result an epilogue may extend: no residual yet, and no
/// activation when `need_no_activation`. Returns its op and operands.
fn epilogue_base(eg: &VGraph, l: Id, need_no_activation: bool) -> Option<(Op, Vec<Id>)> {
    eg[l].nodes.iter().find_map(|n| {
        let op = node_op(eg, n)?;
        match &op {
            Op::Linear {
                activation,
                has_residual: false,
                ..
            } if !need_no_activation || *activation == Activation::None => {
                Some((op.clone(), operands(n).to_vec()))
            }
            _ => None,
        }
    })
}

/// `linear-fold-activation`: act(linear(x, w, b)) with act gelu, relu, silu or hard_swish.
fn linear_fold_activation(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let l = eg.find(s[v("?l")]);
    let act = match s.get(v("?g")) {
        Some(&g) => match attr_of(eg, g)? {
            Op::Gelu { approximate: false } => Activation::Gelu,
            Op::Gelu { approximate: true } => Activation::GeluTanh,
            _ => return None,
        },
        None => eg[id].nodes.iter().find_map(|n| match n {
            Vit::Op(k, c) if c.len() == 1 && eg.find(c[0]) == l => match k.as_str() {
                "relu" => Some(Activation::Relu),
                "silu" => Some(Activation::Silu),
                "hard_swish" => Some(Activation::HardSwish),
                _ => None,
            },
            _ => None,
        })?,
    };
    let (op, args) = epilogue_base(eg, l, true)?;
    let Op::Linear { has_bias, .. } = op else {
        return None;
    };
    let op = Op::Linear {
        activation: act,
        has_bias,
        has_residual: false,
    };
    Some(add_op(eg, op, &args))
}

/// `linear-fold-residual`: linear(…) + r, r not constant and not widening the result.
fn linear_fold_residual(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let (l, r) = (eg.find(s[v("?l")]), eg.find(s[v("?r")]));
    if l == r || ty(eg, l) != ty(eg, id) {
        return None;
    }
    let (op, mut args) = epilogue_base(eg, l, false)?;
    let Op::Linear {
        activation,
        has_bias,
        ..
    } = op
    else {
        return None;
    };
    let op = Op::Linear {
        activation,
        has_bias,
        has_residual: true,
    };
    args.push(r);
    let tys: Option<Vec<_>> = args.iter().map(|&a| ty(eg, a)).collect();
    let out = super::infer(&op, &tys?)?;
    if Some(&out) != ty(eg, id) {
        return None;
    }
    Some(add_op(eg, op, &args))
}

/// `linear-fold-scale`: (x·w + b)·c = x·(c·w) + c·b for a scalar constant c and a linear with
/// constant weight and bias and no activation or residual: the scale joins the weights.
fn linear_fold_scale(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let (l, c) = (s[v("?l")], s[v("?c")]);
    if ty(eg, l) != ty(eg, id) {
        return None;
    }
    let (op, args) = epilogue_base(eg, l, true)?;
    if !args[1..].iter().all(|&a| eg[a].data.konst) {
        return None;
    }
    let mul = Op::Binary(vitc_ir::BinaryOp::Mul);
    let mut new_args = vec![args[0]];
    for &a in &args[1..] {
        new_args.push(add_op(eg, mul.clone(), &[a, c]));
    }
    let tys: Option<Vec<_>> = new_args.iter().map(|&a| ty(eg, a)).collect();
    let out = super::infer(&op, &tys?)?;
    if Some(&out) != ty(eg, id) {
        return None;
    }
    Some(add_op(eg, op, &new_args))
}
