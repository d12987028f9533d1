//! Attention rules: `softmax(scale·QKᵀ [+ bias] [masked])·V` becomes `vit.attention`, the head
//! split before it and the head merge after it are absorbed into the op's layouts, and the
//! scale moves into the Q projection's weights. The scale spellings exporters use (on the
//! scores, divided, split as √scale on Q and on Kᵀ) all reach the one form matched here through
//! the algebra rules (`div-const-to-mul`, `matmul-hoist-scalar`, `mul-mul-const`).

use egg::{Id, Subst};
use vitc_ir::{AttnLayout, BinaryOp, Op, Tensor, TensorType};

use super::{rule, scalar, v, AnyOf, Build, Classes, Rw};
use crate::lang::{
    add_const, add_op, attr_of, fused_loc, inherit_fused_loc, inherit_loc, node_op, operands, ty,
    VGraph, Vit,
};
use crate::view::{label_strides, packed_shape, same_map, Dims, View};

/// How deep a chain of reshapes and transposes the layout rules follow.
const MAX_VIEW_DEPTH: usize = 8;

pub fn rules() -> Vec<Rw> {
    vec![
        rule(
            "attention-fuse",
            AnyOf::new(&[
                "(matmul (softmax ?ax (matmul ?q ?kt)) ?v)",
                "(matmul (softmax ?ax (mul (matmul ?q ?kt) ?s)) ?v)",
                "(matmul (softmax ?ax (add (matmul ?q ?kt) ?bias)) ?v)",
                "(matmul (softmax ?ax (add (mul (matmul ?q ?kt) ?s) ?bias)) ?v)",
                "(matmul (softmax ?ax (add ?bias (matmul ?q ?kt))) ?v)",
                "(matmul (softmax ?ax (add ?bias (mul (matmul ?q ?kt) ?s))) ?v)",
                "(matmul (softmax ?ax (where ?m (matmul ?q ?kt) ?ninf)) ?v)",
                "(matmul (softmax ?ax (where ?m (mul (matmul ?q ?kt) ?s) ?ninf)) ?v)",
            ]),
            vec![],
            Build(fuse),
        ),
        rule(
            "linear-attention-fuse",
            AnyOf::new(&[
                "(div (slice ?r1 (matmul (relu ?q) (matmul (transpose ?tp (relu ?k)) (pad ?p ?v)))) \
                 (add (slice ?r2 (matmul (relu ?q) (matmul (transpose ?tp (relu ?k)) (pad ?p ?v)))) ?eps))",
                "(div (slice ?r1 (matmul (relu ?q) (matmul (relu ?kt) (pad ?p ?v)))) \
                 (add (slice ?r2 (matmul (relu ?q) (matmul (relu ?kt) (pad ?p ?v)))) ?eps))",
            ]),
            vec![],
            Build(fuse_linear),
        ),
        rule(
            "attention-absorb-layout",
            Classes(|eg: &VGraph, id: Id| attention_nodes(eg, id).next().is_some()),
            vec![],
            Build(absorb_operand_layouts),
        ),
        rule(
            "attention-absorb-output-layout",
            Classes(|eg: &VGraph, id: Id| !output_candidates(eg, id).is_empty()),
            vec![],
            Build(absorb_output_layout),
        ),
        rule(
            "attention-fold-scale-into-q",
            Classes(|eg: &VGraph, id: Id| {
                attention_nodes(eg, id)
                    .any(|(op, args)| scale_of(&op) != 1.0 && q_projection(eg, args[0]).is_some())
            }),
            vec![],
            Build(fold_scale_into_q),
        ),
    ]
}

fn scale_of(op: &Op) -> f32 {
    match op {
        Op::Attention { scale, .. } => *scale,
        _ => 1.0,
    }
}

/// The attention e-nodes of a class (softmax or linear attention), with their ops and operands.
fn attention_nodes(eg: &VGraph, id: Id) -> impl Iterator<Item = (Op, Vec<Id>)> + '_ {
    eg[id].nodes.iter().filter_map(move |n| match n {
        Vit::Op(s, _) if s.as_str() == "attention" || s.as_str() == "linear_attention" => {
            let op = node_op(eg, n)?;
            Some((op, operands(n).to_vec()))
        }
        _ => None,
    })
}

/// Heads and (q, k, v, out) layouts of either attention op.
fn layouts_of(op: &Op) -> Option<(usize, [AttnLayout; 4])> {
    match *op {
        Op::Attention {
            heads,
            q_layout,
            k_layout,
            v_layout,
            out_layout,
            ..
        }
        | Op::LinearAttention {
            heads,
            q_layout,
            k_layout,
            v_layout,
            out_layout,
            ..
        } => Some((heads, [q_layout, k_layout, v_layout, out_layout])),
        _ => None,
    }
}

/// Replace the operand layouts and/or the output layout of either attention op.
fn set_layouts(op: &mut Op, ins: Option<[AttnLayout; 3]>, out: Option<AttnLayout>) {
    if let Op::Attention {
        q_layout,
        k_layout,
        v_layout,
        out_layout,
        ..
    }
    | Op::LinearAttention {
        q_layout,
        k_layout,
        v_layout,
        out_layout,
        ..
    } = op
    {
        if let Some([q, k, v]) = ins {
            (*q_layout, *k_layout, *v_layout) = (q, k, v);
        }
        if let Some(o) = out {
            *out_layout = o;
        }
    }
}

/// `linear-attention-fuse`: EfficientViT's ReLU linear attention as its export spells it — V
/// padded with a column of ones, `relu(Q)·(relu(K)ᵀ·[V, 1])`, the first Dv columns divided by
/// the last plus eps. The ones column is what makes the last column the denominator
/// `relu(Q)·Σ relu(K)`, so the pad must be exactly one trailing column of 1.0 and the slices
/// exactly the two parts; K comes either as relu(K) transposed (layout `bhsd`) or as the ReLU
/// of Kᵀ (`bhds`).
fn fuse_linear(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let get = |n: &str| s.get(v(n)).copied();
    let (q, val) = (get("?q")?, get("?v")?);
    let (k, k_layout) = match get("?tp") {
        Some(tp) => {
            if !matches!(attr_of(eg, tp), Some(Op::Transpose { perm }) if *perm == [0, 1, 3, 2]) {
                return None;
            }
            (get("?k")?, AttnLayout::Bhsd)
        }
        None => (get("?kt")?, AttnLayout::Bhds),
    };
    let (tq, tk, tv) = (ty(eg, q)?, ty(eg, k)?, ty(eg, val)?);
    if tq.rank() != 4 || tk.rank() != 4 || tv.rank() != 4 || !tq.dtype.is_float() {
        return None;
    }
    if tq.shape[..2] != tk.shape[..2] || tq.shape[..2] != tv.shape[..2] {
        return None;
    }
    let dv = tv.shape[3];
    let Some(Op::Pad { pads, value }) = attr_of(eg, get("?p")?).cloned() else {
        return None;
    };
    if value != 1.0 || pads != [0, 0, 0, 0, 0, 0, 0, 1] {
        return None;
    }
    // ?r1 keeps columns [0, Dv) and ?r2 column Dv, everything else whole.
    let cols = |r: Id, lo: i64, hi: i64| match attr_of(eg, r) {
        Some(Op::Slice {
            starts,
            ends,
            steps,
        }) => {
            starts.len() == 4
                && steps.iter().all(|&st| st == 1)
                && starts[..3].iter().all(|&x| x == 0)
                && (0..3).all(|i| ends[i] >= tq.shape[i] as i64)
                && starts[3] == lo
                && ends[3] == hi
        }
        _ => false,
    };
    if !cols(get("?r1")?, 0, dv as i64) || !cols(get("?r2")?, dv as i64, dv as i64 + 1) {
        return None;
    }
    let eps = scalar(eg, get("?eps")?)?;
    if !eps.is_finite() || eps < 0.0 {
        return None;
    }
    let op = Op::LinearAttention {
        heads: tq.shape[1],
        eps: eps as f32,
        q_layout: AttnLayout::Bhsd,
        k_layout,
        v_layout: AttnLayout::Bhsd,
        out_layout: AttnLayout::Bhsd,
    };
    let n = add_checked(eg, id, op, &[q, k, val])?;
    fused_loc(eg, n, &[id, q, k, val], "linear_attention");
    Some(n)
}

/// `attention-fuse`: the matched spelling decides scale, bias and mask.
fn fuse(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let get = |n: &str| s.get(v(n)).copied();
    let (q, kt, val) = (get("?q")?, get("?kt")?, get("?v")?);
    if !matches!(attr_of(eg, get("?ax")?), Some(Op::Softmax { axis: 3 })) {
        return None;
    }
    let (tq, tk, tv) = (ty(eg, q)?, ty(eg, kt)?, ty(eg, val)?);
    if tq.rank() != 4 || tk.rank() != 4 || tv.rank() != 4 {
        return None;
    }
    // The batch and head dims must agree exactly: a broadcasting matmul is not one attention.
    if tq.shape[..2] != tk.shape[..2] || tq.shape[..2] != tv.shape[..2] {
        return None;
    }
    let heads = tq.shape[1];
    let scale = match get("?s") {
        Some(sc) => scalar(eg, sc)? as f32,
        None => 1.0,
    };
    if !scale.is_finite() {
        return None;
    }
    let mut args = vec![q, kt, val];
    let has_bias = match get("?bias") {
        Some(b) => {
            if !ty(eg, b)?.dtype.is_float() {
                return None;
            }
            args.push(b);
            true
        }
        None => false,
    };
    let has_mask = match get("?m") {
        Some(m) => {
            // Only a -inf fill is what the op's mask means; a large finite fill differs on
            // fully masked rows.
            if scalar(eg, get("?ninf")?)? != f64::NEG_INFINITY {
                return None;
            }
            args.push(m);
            true
        }
        None => false,
    };
    let op = Op::Attention {
        heads,
        scale,
        q_layout: AttnLayout::Bhsd,
        k_layout: AttnLayout::Bhds,
        v_layout: AttnLayout::Bhsd,
        out_layout: AttnLayout::Bhsd,
        has_bias,
        has_mask,
    };
    let n = add_checked(eg, id, op, &args)?;
    // Named after the scope the scores' matmul, the softmax and the final matmul share.
    let mut parts = vec![id, q, kt];
    parts.extend(eg[id].nodes.iter().find_map(|n| match n {
        Vit::Op(s, c) if s.as_str() == "matmul" => Some(c[0]),
        _ => None,
    }));
    fused_loc(eg, n, &parts, "attention");
    Some(n)
}

/// Add `op(args)` if it has the type of class `id`.
fn add_checked(eg: &mut VGraph, id: Id, op: Op, args: &[Id]) -> Option<Id> {
    let tys: Option<Vec<&TensorType>> = args.iter().map(|&a| ty(eg, a)).collect();
    let out = super::infer(&op, &tys?)?;
    if Some(&out) != ty(eg, id) {
        return None;
    }
    Some(add_op(eg, op, args))
}

/// The classes reachable from `start` through reshapes and transposes, each with the chain of
/// ops from `start` down to it (outermost first), nearest first.
fn views_down(eg: &VGraph, start: Id) -> Vec<(Id, Vec<Op>)> {
    let start = eg.find(start);
    let mut seen = vec![start];
    let mut out = Vec::new();
    let mut frontier = vec![(start, Vec::<Op>::new())];
    for _ in 0..MAX_VIEW_DEPTH {
        let mut next = Vec::new();
        for (id, chain) in &frontier {
            for n in &eg[*id].nodes {
                let Some(op @ (Op::Reshape { .. } | Op::Transpose { .. })) = node_op(eg, n) else {
                    continue;
                };
                let child = eg.find(operands(n)[0]);
                if seen.contains(&child) {
                    continue;
                }
                seen.push(child);
                let mut c = chain.clone();
                c.push(op);
                out.push((child, c.clone()));
                next.push((child, c));
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    out
}

/// The view a chain (outermost first) makes of a contiguous tensor of `shape`.
fn chain_view(shape: &[usize], chain: &[Op]) -> Option<View> {
    chain
        .iter()
        .rev()
        .try_fold(View::contiguous(shape), |v, op| v.apply(op))
}

/// (batch, heads, sequence, head dim) of an attention operand or result in `layout`.
fn dims_of(t: &TensorType, layout: AttnLayout, heads: usize) -> Option<Dims> {
    let s = &t.shape;
    Some(match layout {
        AttnLayout::Bsd => [*s.first()?, heads, *s.get(1)?, s.get(2)? / heads],
        AttnLayout::Bhsd => [s[0], heads, *s.get(2)?, *s.get(3)?],
        AttnLayout::Bhds => [s[0], heads, *s.get(3)?, *s.get(2)?],
        AttnLayout::Bshd => [s[0], heads, *s.get(1)?, *s.get(3)?],
    })
}

/// The deepest tensor `operand` is a pure relayout of, and its layout.
fn deepest_base(
    eg: &VGraph,
    operand: Id,
    layout: AttnLayout,
    heads: usize,
) -> Option<(Id, AttnLayout)> {
    let t = ty(eg, operand)?;
    let dims = dims_of(t, layout, heads)?;
    let mut best = None;
    for (base, chain) in views_down(eg, operand) {
        let Some(bt) = ty(eg, base) else { continue };
        if bt.dtype != t.dtype {
            continue;
        }
        let Some(view) = chain_view(&bt.shape, &chain) else {
            continue;
        };
        let Some(op_map) = label_strides(&view, layout, dims) else {
            continue;
        };
        for l in AttnLayout::ALL {
            if bt.shape != packed_shape(l, dims) {
                continue;
            }
            if let Some(m) = label_strides(&View::contiguous(&bt.shape), l, dims) {
                if same_map(op_map, m, dims) {
                    best = Some((base, l));
                }
            }
        }
    }
    best
}

/// `attention-absorb-layout`: q, k, v that are head splits (reshapes and transposes) of other
/// tensors are replaced by those tensors, with the layouts saying how to read them.
fn absorb_operand_layouts(eg: &mut VGraph, id: Id, _: &Subst) -> Option<Id> {
    let nodes: Vec<(Op, Vec<Id>)> = attention_nodes(eg, id).collect();
    let mut made = None;
    for (op, args) in nodes {
        let Some((heads, [q_layout, k_layout, v_layout, _])) = layouts_of(&op) else {
            continue;
        };
        let mut layouts = [q_layout, k_layout, v_layout];
        let mut new_args = args.clone();
        let mut changed = false;
        for i in 0..3 {
            if let Some((base, l)) = deepest_base(eg, args[i], layouts[i], heads) {
                new_args[i] = base;
                layouts[i] = l;
                changed = true;
            }
        }
        if !changed {
            continue;
        }
        let mut new_op = op.clone();
        set_layouts(&mut new_op, Some(layouts), None);
        if let Some(n) = add_checked(eg, id, new_op, &new_args) {
            inherit_fused_loc(eg, n, id);
            if let Some(prev) = made.replace(n) {
                eg.union(id, prev);
            }
        }
    }
    made
}

/// Attention classes below `id` through reshapes and transposes, with the chain.
fn output_candidates(eg: &VGraph, id: Id) -> Vec<(Id, Vec<Op>)> {
    let has_view = eg[id].nodes.iter().any(
        |n| matches!(n, Vit::Op(s, _) if s.as_str() == "reshape" || s.as_str() == "transpose"),
    );
    if !has_view {
        return vec![];
    }
    views_down(eg, id)
        .into_iter()
        .filter(|(c, _)| attention_nodes(eg, *c).next().is_some())
        .collect()
}

/// `attention-absorb-output-layout`: a head merge (reshapes and transposes) of an attention
/// result becomes the attention writing that layout directly.
fn absorb_output_layout(eg: &mut VGraph, id: Id, _: &Subst) -> Option<Id> {
    let rt = ty(eg, id)?.clone();
    let mut made = None;
    for (a, chain) in output_candidates(eg, id) {
        let Some(at) = ty(eg, a).cloned() else {
            continue;
        };
        let Some(view) = chain_view(&at.shape, &chain) else {
            continue;
        };
        let nodes: Vec<(Op, Vec<Id>)> = attention_nodes(eg, a).collect();
        for (op, args) in nodes {
            let Some((heads, [_, _, _, out_layout])) = layouts_of(&op) else {
                continue;
            };
            let Some(dims) = dims_of(&at, out_layout, heads) else {
                continue;
            };
            let Some(base) = label_strides(&View::contiguous(&at.shape), out_layout, dims) else {
                continue;
            };
            for l in AttnLayout::ALL {
                if l == out_layout || rt.shape != packed_shape(l, dims) {
                    continue;
                }
                let Some(m) = label_strides(&view, l, dims) else {
                    continue;
                };
                if !same_map(m, base, dims) {
                    continue;
                }
                let mut new_op = op.clone();
                set_layouts(&mut new_op, None, Some(l));
                if let Some(n) = add_checked(eg, id, new_op, &args) {
                    inherit_fused_loc(eg, n, a);
                    if let Some(prev) = made.replace(n) {
                        eg.union(id, prev);
                    }
                }
                break;
            }
        }
    }
    made
}

/// A projection `q` is computed by whose output scale can absorb a factor: a linear without
/// activation or residual (weight and bias constant), or a quantized linear (weight scale and
/// bias constant). Returns the node's op and operands.
fn q_projection(eg: &VGraph, q: Id) -> Option<(Op, Vec<Id>)> {
    eg[q].nodes.iter().find_map(|n| {
        let op = node_op(eg, n)?;
        let args = operands(n).to_vec();
        let konst = |i: usize| args.get(i).is_some_and(|&a| eg[a].data.konst);
        let ok = match &op {
            Op::Linear {
                activation: vitc_ir::Activation::None,
                has_residual: false,
                has_bias,
            } => konst(1) && (!has_bias || konst(2)),
            Op::QLinear { has_bias, .. } => konst(2) && (!has_bias || konst(4)),
            _ => false,
        };
        ok.then_some((op, args))
    })
}

/// `attention-fold-scale-into-q`: softmax(s·(xW+b)Kᵀ) = softmax((x(sW)+sb)Kᵀ): the scale
/// moves into the projection's constants and the attention's scale becomes 1, which saves a
/// multiply per score.
fn fold_scale_into_q(eg: &mut VGraph, id: Id, _: &Subst) -> Option<Id> {
    let nodes: Vec<(Op, Vec<Id>)> = attention_nodes(eg, id)
        .filter(|(op, args)| scale_of(op) != 1.0 && q_projection(eg, args[0]).is_some())
        .collect();
    let mut made = None;
    for (op, args) in nodes {
        let Some(n) = fold_one(eg, id, op, args) else {
            continue;
        };
        if let Some(prev) = made.replace(n) {
            eg.union(id, prev);
        }
    }
    made
}

fn fold_one(eg: &mut VGraph, id: Id, op: Op, args: Vec<Id>) -> Option<Id> {
    let scale = scale_of(&op);
    let (proj, pargs) = q_projection(eg, args[0])?;
    let s = add_const(eg, "", "", Tensor::scalar_f32(scale));
    let mul = Op::Binary(BinaryOp::Mul);
    let mut new_pargs = pargs.clone();
    match &proj {
        Op::Linear { has_bias, .. } => {
            new_pargs[1] = add_op(eg, mul.clone(), &[pargs[1], s]);
            if *has_bias {
                new_pargs[2] = add_op(eg, mul.clone(), &[pargs[2], s]);
            }
        }
        Op::QLinear { has_bias, .. } => {
            new_pargs[2] = add_op(eg, mul.clone(), &[pargs[2], s]);
            if *has_bias {
                new_pargs[4] = add_op(eg, mul.clone(), &[pargs[4], s]);
            }
        }
        _ => return None,
    }
    let q = add_checked(eg, args[0], proj, &new_pargs)?;
    inherit_loc(eg, q, args[0]);
    let mut new_op = op;
    if let Op::Attention { scale, .. } = &mut new_op {
        *scale = 1.0;
    }
    let mut new_args = args;
    new_args[0] = q;
    let n = add_checked(eg, id, new_op, &new_args)?;
    inherit_fused_loc(eg, n, id);
    Some(n)
}
