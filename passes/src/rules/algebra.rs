//! Algebraic rules: constant folding, putting constant operands on the right, folding
//! constant chains, removing identities, and the canonical spellings the fusion rules match
//! (`x / c` as `x · (1/c)`, `x · x` as `x²`, a scalar factor of a matmul operand applied to the
//! product). They must not fuse anything: fusion rules live in the topic files.

use egg::{Id, Subst};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use vitc_ir::{BinaryOp, DType, Data, Op, Tensor, TensorType};

use super::{
    all_equal, infer, is_const, is_f32, is_not_const, pat, rule, scalar, scalar_is, ty_of, v,
    AnyOf, Build, Classes, Guard, Rw,
};
use crate::lang::{add_const, add_op, foldable, node_op, operands, ty, VGraph, Vit, SMALL_CONST};

pub fn rules() -> Vec<Rw> {
    vec![
        fold_constant(),
        rule(
            "mul-const-to-right",
            pat("(mul ?c ?x)"),
            vec![is_const("?c"), is_not_const("?x")],
            pat("(mul ?x ?c)"),
        ),
        rule(
            "add-const-to-right",
            pat("(add ?c ?x)"),
            vec![is_const("?c"), is_not_const("?x")],
            pat("(add ?x ?c)"),
        ),
        rule(
            "div-const-to-mul",
            pat("(div ?x ?c)"),
            vec![is_not_const("?x"), invertible("?c")],
            Build(reciprocal_mul),
        ),
        rule(
            "mul-mul-const",
            pat("(mul (mul ?x ?a) ?b)"),
            vec![is_not_const("?x"), small_const("?a"), small_const("?b")],
            pat("(mul ?x (mul ?a ?b))"),
        ),
        rule(
            "add-add-const",
            pat("(add (add ?x ?a) ?b)"),
            vec![is_not_const("?x"), small_const("?a"), small_const("?b")],
            pat("(add ?x (add ?a ?b))"),
        ),
        rule(
            "add-add-bias",
            pat("(add (add ?x ?a) ?b)"),
            vec![is_not_const("?x"), Box::new(merged_bias_fits)],
            pat("(add ?x (add ?a ?b))"),
        ),
        rule(
            "mul-one",
            pat("(mul ?x ?c)"),
            vec![const_all("?c", 1.0), keeps_type("?x", "?c")],
            pat("?x"),
        ),
        rule(
            "add-zero",
            AnyOf::new(&["(add ?x ?c)", "(sub ?x ?c)"]),
            vec![const_all("?c", 0.0), keeps_type("?x", "?c")],
            pat("?x"),
        ),
        rule(
            "matmul-hoist-scalar",
            AnyOf::new(&["(matmul (mul ?x ?c) ?y)", "(matmul ?x (mul ?y ?c))"]),
            // Only between two computed tensors (QKᵀ): hoisting out of a matmul by a weight
            // would take the factor away from the activation it belongs to (GELU's ½).
            vec![
                scalar_is("?c", f64::is_finite),
                is_not_const("?x"),
                is_not_const("?y"),
                hoist_keeps_type(),
            ],
            pat("(mul (matmul ?x ?y) ?c)"),
        ),
        rule(
            "mul-self-to-square",
            pat("(mul ?x ?x)"),
            vec![is_f32("?x"), is_not_const("?x")],
            Build(|eg: &mut VGraph, _, s: &Subst| {
                let two = add_const(eg, "", "", Tensor::scalar_f32(2.0));
                Some(add_op(eg, Op::Binary(BinaryOp::Pow), &[s[v("?x")], two]))
            }),
        ),
        rule(
            "cube-to-pow",
            AnyOf::new(&["(mul (pow ?x ?two) ?x)", "(mul ?x (pow ?x ?two))"]),
            vec![is_f32("?x"), scalar_is("?two", |x| x == 2.0)],
            Build(|eg: &mut VGraph, _, s: &Subst| {
                let three = add_const(eg, "", "", Tensor::scalar_f32(3.0));
                Some(add_op(eg, Op::Binary(BinaryOp::Pow), &[s[v("?x")], three]))
            }),
        ),
        rule(
            "rsqrt-to-div-sqrt",
            AnyOf::new(&["(mul ?a (rsqrt ?b))", "(mul ?a (reciprocal (sqrt ?b)))"]),
            vec![],
            pat("(div ?a (sqrt ?b))"),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Guards

/// `var` is a constant small enough for the analysis to carry its value.
fn small_const(var: &'static str) -> Guard {
    Box::new(move |eg, s| eg[s[v(var)]].data.value.is_some())
}

/// `add-add-bias`'s guard: a and b are constants, not both small (that is `add-add-const`),
/// and their sum has no more elements than x, so merging two biases never makes a constant
/// bigger than the activation it is added to (Swin's relative-position bias and window mask).
fn merged_bias_fits(eg: &VGraph, s: &Subst) -> bool {
    let (x, a, b) = (s[v("?x")], s[v("?a")], s[v("?b")]);
    if !eg[a].data.konst || !eg[b].data.konst {
        return false;
    }
    if eg[a].data.value.is_some() && eg[b].data.value.is_some() {
        return false;
    }
    let (Some(tx), Some(ta), Some(tb)) = (ty(eg, x), ty(eg, a), ty(eg, b)) else {
        return false;
    };
    ta.dtype.is_float()
        && ta.dtype == tb.dtype
        && vitc_ir::infer::broadcast_shapes(&ta.shape, &tb.shape)
            .is_ok_and(|s| s.iter().product::<usize>() <= tx.numel())
}

/// `var` is a small float constant with no zero element.
fn invertible(var: &'static str) -> Guard {
    Box::new(move |eg, s| {
        eg[s[v(var)]].data.value.as_ref().is_some_and(|t| {
            t.dtype() == DType::F32 && (0..t.numel()).all(|i| t.data.get_f64(i) != 0.0)
        })
    })
}

/// `var` is a small constant whose every element is `x`.
fn const_all(var: &'static str, x: f64) -> Guard {
    Box::new(move |eg, s| {
        eg[s[v(var)]]
            .data
            .value
            .as_ref()
            .is_some_and(|t| t.dtype().is_float() && all_equal(t, x))
    })
}

/// `var` keeps the type of `var ⊙ other` (the other operand does not broadcast it up).
fn keeps_type(var: &'static str, other: &'static str) -> Guard {
    Box::new(move |eg, s| {
        // The matched root is not bound to a variable; its type is the operand's broadcast
        // with the other one, which equals the operand's exactly when that adds no dims.
        let (Some(x), Some(c)) = (ty_of(eg, s, var), ty_of(eg, s, other)) else {
            return false;
        };
        vitc_ir::infer::broadcast_shapes(&x.shape, &c.shape)
            .ok()
            .as_deref()
            == Some(&x.shape[..])
    })
}

/// `matmul(x, y) · c` has the type the matched `matmul(x·c, y)` (or `matmul(x, y·c)`) has.
fn hoist_keeps_type() -> Guard {
    Box::new(|eg, s| {
        let (Some(x), Some(y), Some(c)) =
            (ty_of(eg, s, "?x"), ty_of(eg, s, "?y"), ty_of(eg, s, "?c"))
        else {
            return false;
        };
        let mul = Op::Binary(BinaryOp::Mul);
        let Some(new) = infer(&Op::MatMul, &[x, y]).and_then(|m| infer(&mul, &[&m, c])) else {
            return false;
        };
        // Either spelling: the scaled operand must type the same way it did.
        let old_l = infer(&mul, &[x, c]).and_then(|xc| infer(&Op::MatMul, &[&xc, y]));
        let old_r = infer(&mul, &[y, c]).and_then(|yc| infer(&Op::MatMul, &[x, &yc]));
        old_l.as_ref() == Some(&new) || old_r.as_ref() == Some(&new)
    })
}

// ---------------------------------------------------------------------------------------------
// Appliers

/// `x · (1/c)`, with the reciprocal computed in f32 as the division would round it.
fn reciprocal_mul(eg: &mut VGraph, _: Id, s: &Subst) -> Option<Id> {
    let c = eg[s[v("?c")]].data.value.clone()?;
    let inv: Vec<f32> = c.as_f32()?.iter().map(|x| 1.0 / x).collect();
    let r = add_const(eg, "", "", Tensor::f32(c.shape.clone(), inv));
    Some(add_op(eg, Op::Binary(BinaryOp::Mul), &[s[v("?x")], r]))
}

// ---------------------------------------------------------------------------------------------
// Constant folding of large results (the analysis folds small ones as it builds classes)

/// `fold-constant`: an op whose operands are all constants becomes the constant it computes.
fn fold_constant() -> Rw {
    rule(
        "fold-constant",
        Classes(|eg: &VGraph, id: Id| foldable_node(eg, id).is_some()),
        vec![],
        Build(|eg: &mut VGraph, id: Id, _: &Subst| fold_class(eg, id)),
    )
}

/// A node of a constant class that has no constant leaf yet and whose operands all have data.
fn foldable_node(eg: &VGraph, id: Id) -> Option<&Vit> {
    let class = &eg[id];
    if !class.data.konst
        || class
            .nodes
            .iter()
            .any(|n| matches!(n, Vit::Weight(_) | Vit::Lit(_)))
    {
        return None;
    }
    class.nodes.iter().find(|n| {
        let Some(op) = node_op(eg, n) else {
            return false;
        };
        let args = operands(n);
        let tys: Option<Vec<&TensorType>> = args.iter().map(|&a| ty(eg, a)).collect();
        tys.is_some_and(|t| foldable(&op, &t))
            && args.iter().all(|&a| {
                eg[a]
                    .nodes
                    .iter()
                    .any(|n| matches!(n, Vit::Weight(_) | Vit::Lit(_)))
            })
    })
}

fn fold_class(eg: &mut VGraph, id: Id) -> Option<Id> {
    let node = foldable_node(eg, id)?.clone();
    let op = node_op(eg, &node)?;
    let out = eg[id].data.ty.clone()?;
    let args: Vec<Id> = operands(&node).to_vec();
    let mut vals = Vec::with_capacity(args.len());
    let mut key = format!("{op:?}");
    let mut name = String::new();
    for &a in &args {
        let t = crate::lang::const_value(eg, a)?;
        // The derivation names each operand by its table name, or by a hash of its bits, so
        // that folding the same thing again reuses the first result.
        match eg[a].nodes.iter().find_map(|n| match n {
            Vit::Weight(s) => Some(*s),
            _ => None,
        }) {
            Some(s) => {
                if name.is_empty() {
                    name = format!("{s}.{}", crate::lang::kind_of(&op));
                }
                key.push_str(&format!("|@{s}"));
            }
            None => {
                let mut h = DefaultHasher::new();
                t.data.to_le_bytes().hash(&mut h);
                t.shape.hash(&mut h);
                key.push_str(&format!("|#{:x}", h.finish()));
            }
        }
        vals.push(t);
    }
    if out.numel() <= SMALL_CONST && vals.iter().all(|t| t.numel() <= SMALL_CONST) {
        // The analysis folds these; nothing to do here.
        return None;
    }
    let refs: Vec<&Tensor> = vals.iter().map(|t| t.as_ref()).collect();
    let t = vitc_ir::interp::eval(&op, &refs, &out).ok()?;
    let c = add_const(eg, &key, &name, t);
    if let Some(loc) = eg.analysis.locs.get(&id).cloned() {
        eg.analysis.locs.entry(c).or_insert(loc);
    }
    Some(c)
}

/// Elementwise map of a float constant (helpers for rules that make scaled copies).
pub fn map_f32(t: &Tensor, f: impl Fn(f32) -> f32) -> Option<Tensor> {
    let v: Vec<f32> = t.as_f32()?.iter().map(|&x| f(x)).collect();
    Some(Tensor::new(t.shape.clone(), Data::F32(v)))
}

/// A one-element f32 constant's value.
pub fn scalar_f32(eg: &VGraph, id: Id) -> Option<f32> {
    scalar(eg, id).map(|x| x as f32)
}

/// Shared tensor of a class, if constant.
pub fn tensor(eg: &VGraph, id: Id) -> Option<Arc<Tensor>> {
    crate::lang::const_value(eg, id)
}
