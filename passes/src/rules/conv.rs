//! Convolution epilogues and the folding of per-channel affines into the layer before them:
//! SiLU spelled `x · sigmoid(x)` becomes `vit.silu`; an activation after a convolution joins it
//! as its epilogue; a BatchNormalization (which the frontend imports as `x · s + t` with s and t
//! per channel) after a convolution or a linear layer is folded into its weights and bias at
//! compile time, also across a reshape that keeps the channel dim last (LeViT's `Linear_BN`).
//!
//! The rules only fire where the constant varies along the output channels alone and the
//! layer has no epilogue yet that the affine would have to pass through (an activation or a
//! residual); they never move an affine past a nonlinearity.

use egg::{Id, Subst};
use vitc_ir::{Activation, BinaryOp, Op, UnaryOp};

use super::{is_f32, rule, v, AnyOf, Build, Rw};
use crate::lang::{add_op, attr_of, node_op, operands, ty, VGraph, Vit};

pub fn rules() -> Vec<Rw> {
    vec![
        rule(
            "silu-from-sigmoid",
            AnyOf::new(&["(mul ?x (sigmoid ?x))", "(mul (sigmoid ?x) ?x)"]),
            vec![is_f32("?x")],
            Build(|eg: &mut VGraph, _: Id, s: &Subst| {
                Some(add_op(eg, Op::Unary(UnaryOp::Silu), &[s[v("?x")]]))
            }),
        ),
        rule(
            "conv-fold-activation",
            AnyOf::new(&[
                "(relu ?c)",
                "(hard_swish ?c)",
                "(sigmoid ?c)",
                "(silu ?c)",
                "(gelu ?g ?c)",
            ]),
            vec![],
            Build(conv_fold_activation),
        ),
        rule(
            "conv-fold-scale",
            AnyOf::new(&["(mul ?c ?s)"]),
            vec![is_f32("?s")],
            Build(|eg: &mut VGraph, id: Id, s: &Subst| conv_fold_affine(eg, id, s, false)),
        ),
        rule(
            "conv-fold-bias",
            AnyOf::new(&["(add ?c ?s)"]),
            vec![is_f32("?s")],
            Build(|eg: &mut VGraph, id: Id, s: &Subst| conv_fold_affine(eg, id, s, true)),
        ),
        rule(
            "linear-fold-channel-scale",
            AnyOf::new(&["(mul ?l ?s)"]),
            vec![is_f32("?s")],
            Build(|eg: &mut VGraph, id: Id, s: &Subst| linear_fold_affine(eg, id, s, false)),
        ),
        rule(
            "linear-fold-bias-add",
            AnyOf::new(&["(add ?l ?s)"]),
            vec![is_f32("?s")],
            Build(|eg: &mut VGraph, id: Id, s: &Subst| linear_fold_affine(eg, id, s, true)),
        ),
        rule(
            "linear-fold-input-scale",
            AnyOf::new(&[
                "(linear ?a (mul ?x ?s) ?w)",
                "(linear ?a (mul ?x ?s) ?w ?b)",
                "(linear ?a (mul ?x ?s) ?w ?b ?r)",
            ]),
            vec![is_f32("?s")],
            Build(|eg: &mut VGraph, id: Id, s: &Subst| linear_fold_input(eg, id, s, false)),
        ),
        rule(
            "linear-fold-input-shift",
            AnyOf::new(&[
                "(linear ?a (add ?x ?s) ?w)",
                "(linear ?a (add ?x ?s) ?w ?b)",
                "(linear ?a (add ?x ?s) ?w ?b ?r)",
            ]),
            vec![is_f32("?s")],
            Build(|eg: &mut VGraph, id: Id, s: &Subst| linear_fold_input(eg, id, s, true)),
        ),
        rule(
            "channel-affine-through-reshape",
            AnyOf::new(&["(mul (reshape ?r ?y) ?s)", "(add (reshape ?r ?y) ?s)"]),
            vec![is_f32("?s")],
            Build(affine_through_reshape),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Facts

/// A layer in class `c` whose op matches `want` (a conv or a linear without activation or
/// residual), with its operands; weights and bias must be constants so they can be rewritten.
fn plain_layer(eg: &VGraph, c: Id, want: fn(&Op) -> bool) -> Option<(Op, Vec<Id>)> {
    eg[c].nodes.iter().find_map(|n| {
        let op = node_op(eg, n)?;
        let args = operands(n);
        (want(&op) && args[1..].iter().all(|&a| eg[a].data.konst)).then(|| (op, args.to_vec()))
    })
}

fn is_plain_conv(op: &Op) -> bool {
    matches!(
        op,
        Op::Conv {
            activation: Activation::None,
            ..
        }
    )
}

fn is_plain_linear(op: &Op) -> bool {
    matches!(
        op,
        Op::Linear {
            activation: Activation::None,
            has_residual: false,
            ..
        }
    )
}

/// How constant `s` broadcasts against a result of shape `out`: as one value per index of dim
/// `axis` (`Some(n)` elements, n being 1 for a scalar or out[axis]), and along nothing else.
/// `None` when it varies along another dim or would widen the result.
fn per_channel(s: &[usize], out: &[usize], axis: usize) -> Option<usize> {
    if s.len() > out.len() {
        return None;
    }
    let off = out.len() - s.len();
    let mut n = 1;
    for (i, &d) in s.iter().enumerate() {
        let od = out[off + i];
        if d == 1 {
            continue;
        }
        if off + i != axis || d != od {
            return None;
        }
        n = d;
    }
    Some(n)
}

// ---------------------------------------------------------------------------------------------
// Appliers

/// `conv-fold-activation`: act(conv(x, w, b)) with act relu, hard_swish, sigmoid, silu or gelu
/// and the convolution without an epilogue yet.
fn conv_fold_activation(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let c = eg.find(s[v("?c")]);
    let act = match s.get(v("?g")) {
        Some(&g) => match attr_of(eg, g)? {
            Op::Gelu { approximate: false } => Activation::Gelu,
            Op::Gelu { approximate: true } => Activation::GeluTanh,
            _ => return None,
        },
        None => eg[id].nodes.iter().find_map(|n| match n {
            Vit::Op(k, ch) if ch.len() == 1 && eg.find(ch[0]) == c => match k.as_str() {
                "relu" => Some(Activation::Relu),
                "hard_swish" => Some(Activation::HardSwish),
                "sigmoid" => Some(Activation::Sigmoid),
                "silu" => Some(Activation::Silu),
                _ => None,
            },
            _ => None,
        })?,
    };
    // The weights need not be constants for an epilogue: any convolution without one will do.
    let (op, args) = eg[c].nodes.iter().find_map(|n| {
        let op = node_op(eg, n)?;
        is_plain_conv(&op).then(|| (op, operands(n).to_vec()))
    })?;
    let Op::Conv {
        strides,
        pads,
        dilations,
        group,
        has_bias,
        ..
    } = op
    else {
        return None;
    };
    let op = Op::Conv {
        strides,
        pads,
        dilations,
        group,
        activation: act,
        has_bias,
    };
    let out = add_op(eg, op, &args);
    (ty(eg, out) == ty(eg, id)).then_some(out)
}

/// The constant `s` as `shape` (a reshape node, or `s` itself when it already has it).
fn reshaped(eg: &mut VGraph, s: Id, shape: Vec<usize>) -> Option<Id> {
    if ty(eg, s)?.shape == shape {
        return Some(s);
    }
    Some(add_op(eg, Op::Reshape { shape }, &[s]))
}

/// A per-channel constant of `n` elements (1 or `m`) as a `[m]` vector.
fn channel_vector(eg: &mut VGraph, s: Id, n: usize, m: usize) -> Option<Id> {
    let v = reshaped(eg, s, vec![n])?;
    if n == m {
        return Some(v);
    }
    Some(add_op(eg, Op::Broadcast { shape: vec![m] }, &[v]))
}

/// `conv-fold-scale` (`bias` false): conv(x, w, b)·s = conv(x, w·s[m], b·s[m]);
/// `conv-fold-bias` (`bias` true): conv(x, w, b) + t = conv(x, w, b + t[m]) — s and t constant
/// per output channel, the convolution with constant weights and no epilogue.
fn conv_fold_affine(eg: &mut VGraph, id: Id, s: &Subst, bias: bool) -> Option<Id> {
    let (c, k) = (eg.find(s[v("?c")]), s[v("?s")]);
    if !eg[k].data.konst || ty(eg, c) != ty(eg, id) {
        return None;
    }
    let out = ty(eg, c)?.clone();
    let n = per_channel(&ty(eg, k)?.shape, &out.shape, 1)?;
    let (op, args) = plain_layer(eg, c, is_plain_conv)?;
    let Op::Conv { has_bias, .. } = op else {
        return None;
    };
    let m = out.shape[1];
    let mul = Op::Binary(BinaryOp::Mul);
    let add = Op::Binary(BinaryOp::Add);
    let mut new_args = vec![args[0]];
    if bias {
        new_args.push(args[1]);
        let t = channel_vector(eg, k, n, m)?;
        new_args.push(if has_bias {
            add_op(eg, add, &[args[2], t])
        } else {
            t
        });
    } else {
        let s4 = reshaped(eg, k, vec![n, 1, 1, 1])?;
        new_args.push(add_op(eg, mul.clone(), &[args[1], s4]));
        if has_bias {
            let sv = reshaped(eg, k, vec![n])?;
            new_args.push(add_op(eg, mul, &[args[2], sv]));
        }
    }
    let Op::Conv {
        strides,
        pads,
        dilations,
        group,
        ..
    } = op
    else {
        return None;
    };
    let op = Op::Conv {
        strides,
        pads,
        dilations,
        group,
        activation: Activation::None,
        has_bias: has_bias || bias,
    };
    let tys: Option<Vec<_>> = new_args.iter().map(|&a| ty(eg, a)).collect();
    if super::infer(&op, &tys?).as_ref() != Some(&out) {
        return None;
    }
    Some(add_op(eg, op, &new_args))
}

/// `linear-fold-channel-scale` (`bias` false): linear(x, w, b)·s = linear(x, w·s, b·s) with s
/// constant along the output columns (a vector: `linear-fold-scale` takes scalars);
/// `linear-fold-bias-add` (`bias` true): linear(x, w, b) + t = linear(x, w, b + t) for a
/// linear that already has a bias (`linear-fold-bias` gives one to a linear without).
fn linear_fold_affine(eg: &mut VGraph, id: Id, s: &Subst, bias: bool) -> Option<Id> {
    let (l, k) = (eg.find(s[v("?l")]), s[v("?s")]);
    if !eg[k].data.konst || ty(eg, l) != ty(eg, id) {
        return None;
    }
    let out = ty(eg, l)?.clone();
    let r = out.rank();
    let n = per_channel(&ty(eg, k)?.shape, &out.shape, r.checked_sub(1)?)?;
    let (op, args) = plain_layer(eg, l, is_plain_linear)?;
    let Op::Linear { has_bias, .. } = op else {
        return None;
    };
    if (bias && !has_bias) || (!bias && n == 1) {
        return None;
    }
    let sv = reshaped(eg, k, vec![n])?;
    let mut new_args = vec![args[0]];
    if bias {
        new_args.push(args[1]);
        new_args.push(add_op(eg, Op::Binary(BinaryOp::Add), &[args[2], sv]));
    } else {
        let mul = Op::Binary(BinaryOp::Mul);
        new_args.push(add_op(eg, mul.clone(), &[args[1], sv]));
        if has_bias {
            new_args.push(add_op(eg, mul, &[args[2], sv]));
        }
    }
    let tys: Option<Vec<_>> = new_args.iter().map(|&a| ty(eg, a)).collect();
    if super::infer(&op, &tys?).as_ref() != Some(&out) {
        return None;
    }
    Some(add_op(eg, op, &new_args))
}

/// `linear-fold-input-scale` (`shift` false): linear(x·s, W, …) = linear(x, diag(s)·W, …);
/// `linear-fold-input-shift` (`shift` true): linear(x + t, W, b, …) = linear(x, W, b + t·W, …)
/// — s and t constant vectors along K (the product's inner dim), W constant. The epilogue (bias,
/// activation, residual) comes after the product, so it is untouched. It takes in the
/// BatchNorm1d that LeViT's head applies before its classifiers.
fn linear_fold_input(eg: &mut VGraph, id: Id, s: &Subst, shift: bool) -> Option<Id> {
    let (xin, k, w) = (s[v("?x")], s[v("?s")], s[v("?w")]);
    if !eg[k].data.konst || !eg[w].data.konst {
        return None;
    }
    let op = attr_of(eg, s[v("?a")])?.clone();
    let Op::Linear {
        activation,
        has_bias,
        has_residual,
    } = op
    else {
        return None;
    };
    let xt = ty(eg, xin)?.clone();
    let wt = ty(eg, w)?.clone();
    let kk = *wt.shape.first()?;
    let nn = *wt.shape.get(1)?;
    // The affine must not change x's shape (so the linear reads the same rows).
    let n = per_channel(&ty(eg, k)?.shape, &xt.shape, xt.rank().checked_sub(1)?)?;
    // Per-channel vectors only: a scalar before a linear is a GELU's ½ or an attention scale,
    // which their own rules place.
    if *xt.shape.last()? != kk || n != kk || kk < 2 {
        return None;
    }
    let mut rest: Vec<Id> = [s.get(v("?b")), s.get(v("?r"))]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    if rest.len() != has_bias as usize + has_residual as usize {
        return None;
    }
    let mul = Op::Binary(BinaryOp::Mul);
    let (new_w, bias) = if shift {
        // t·W as a [N] vector, added to the bias (or made the bias).
        let t_row = reshaped(eg, k, vec![1, n])?;
        let tw = add_op(eg, Op::MatMul, &[t_row, w]);
        let tw = add_op(eg, Op::Reshape { shape: vec![nn] }, &[tw]);
        let bias = if has_bias {
            add_op(eg, Op::Binary(BinaryOp::Add), &[rest[0], tw])
        } else {
            tw
        };
        (w, Some(bias))
    } else {
        let col = reshaped(eg, k, vec![n, 1])?;
        (add_op(eg, mul, &[w, col]), None)
    };
    let mut args = vec![xin, new_w];
    if let Some(b) = bias {
        if has_bias {
            rest[0] = b;
        } else {
            rest.insert(0, b);
        }
    }
    args.extend(rest);
    let op = Op::Linear {
        activation,
        has_bias: has_bias || shift,
        has_residual,
    };
    let tys: Option<Vec<_>> = args.iter().map(|&a| ty(eg, a)).collect();
    if super::infer(&op, &tys?).as_ref() != ty(eg, id) {
        return None;
    }
    Some(add_op(eg, op, &args))
}

/// `channel-affine-through-reshape`: reshape(y)·s → reshape(y·s) (and the same for +) when y
/// is a linear layer's result, the reshape keeps the last dim, and s varies along that dim
/// only: the element of y at column j meets s[j] either way. It brings LeViT's BatchNorm1d,
/// applied to a flattened `[B·S, N]` view, next to the linear that `linear-fold-*` fold it into.
fn affine_through_reshape(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let (y, k) = (eg.find(s[v("?y")]), s[v("?s")]);
    if !eg[k].data.konst {
        return None;
    }
    let yt = ty(eg, y)?.clone();
    let outer = ty(eg, id)?.clone();
    let (Some(&ny), Some(&no)) = (yt.shape.last(), outer.shape.last()) else {
        return None;
    };
    if ny != no || yt.dtype != outer.dtype {
        return None;
    }
    // The node that matched: `op(reshape(y), s)`, and which op it is.
    let is_reshape_of_y = |c: Id| {
        eg[c].nodes.iter().any(|n| match n {
            Vit::Op(kind, ch) => kind.as_str() == "reshape" && ch.len() == 2 && eg.find(ch[1]) == y,
            _ => false,
        })
    };
    let (is_mul, reshape_class) = eg[id].nodes.iter().find_map(|n| match n {
        Vit::Op(kind, ch) if matches!(kind.as_str(), "mul" | "add") && ch.len() == 2 => {
            let (a, b) = (eg.find(ch[0]), eg.find(ch[1]));
            (b == eg.find(k) && is_reshape_of_y(a)).then_some((kind.as_str() == "mul", a))
        }
        _ => None,
    })?;
    // The affine must not widen the reshape's result.
    if ty(eg, reshape_class) != Some(&outer) {
        return None;
    }
    let n = per_channel(
        &ty(eg, k)?.shape,
        &outer.shape,
        outer.rank().checked_sub(1)?,
    )?;
    plain_layer(eg, y, is_plain_linear)?;
    let sv = reshaped(eg, k, vec![n])?;
    let op = if is_mul {
        Op::Binary(BinaryOp::Mul)
    } else {
        Op::Binary(BinaryOp::Add)
    };
    let inner = add_op(eg, op, &[y, sv]);
    if ty(eg, inner) != Some(&yt) {
        return None;
    }
    Some(add_op(
        eg,
        Op::Reshape {
            shape: outer.shape.clone(),
        },
        &[inner],
    ))
}

#[cfg(test)]
mod tests {
    use super::per_channel;

    #[test]
    fn per_channel_accepts_only_the_channel_dim() {
        let out = [2, 8, 5, 5];
        assert_eq!(per_channel(&[8, 1, 1], &out, 1), Some(8));
        assert_eq!(per_channel(&[1, 8, 1, 1], &out, 1), Some(8));
        assert_eq!(per_channel(&[], &out, 1), Some(1));
        assert_eq!(per_channel(&[1], &out, 1), Some(1));
        assert_eq!(per_channel(&[8], &out, 1), None, "a [8] runs along W");
        assert_eq!(per_channel(&[2, 8, 1, 1], &out, 1), None, "varies along N");
        assert_eq!(per_channel(&[1, 1, 8, 1, 1], &out, 1), None, "widens");
        assert_eq!(per_channel(&[5], &[3, 5], 1), Some(5));
    }
}
