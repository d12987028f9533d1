//! Layout rules: transposes and reshapes that compose or cancel, transposes that only move
//! size-one dims (reshapes in disguise), and slices pushed toward the producers of what they
//! slice (through transposes, reshapes, elementwise ops with a constant, and into the columns
//! of a matmul's weight). The last is how a fused QKV projection that is split after the fact
//! becomes three projections the attention rules can see.

use egg::{Id, Subst};
use vitc_ir::{BinaryOp, Op};

use super::{attr, rule, ty_of, v, AnyOf, Build, Guard, Rw};
use crate::lang::{add_op, node_op, operands, ty, VGraph, Vit};

pub fn rules() -> Vec<Rw> {
    vec![
        rule(
            "transpose-transpose",
            AnyOf::new(&["(transpose ?p (transpose ?q ?x))"]),
            vec![],
            Build(|eg: &mut VGraph, _: Id, s: &Subst| {
                let (Some(Op::Transpose { perm: p }), Some(Op::Transpose { perm: q })) =
                    (attr(eg, s, "?p").cloned(), attr(eg, s, "?q").cloned())
                else {
                    return None;
                };
                let perm: Vec<usize> = p.iter().map(|&i| q[i]).collect();
                let x = s[v("?x")];
                Some(if is_identity(&perm) {
                    x
                } else {
                    add_op(eg, Op::Transpose { perm }, &[x])
                })
            }),
        ),
        rule(
            "transpose-identity",
            AnyOf::new(&["(transpose ?p ?x)"]),
            vec![transpose_is(|perm, _| is_identity(perm))],
            Build(|_: &mut VGraph, _: Id, s: &Subst| Some(s[v("?x")])),
        ),
        rule(
            "transpose-unit-dims-to-reshape",
            AnyOf::new(&["(transpose ?p ?x)"]),
            vec![transpose_is(|perm, shape| {
                !is_identity(perm) && {
                    let big: Vec<usize> = perm.iter().copied().filter(|&p| shape[p] != 1).collect();
                    big.windows(2).all(|w| w[0] < w[1])
                }
            })],
            Build(|eg: &mut VGraph, id: Id, s: &Subst| {
                let shape = ty(eg, id)?.shape.clone();
                Some(add_op(eg, Op::Reshape { shape }, &[s[v("?x")]]))
            }),
        ),
        rule(
            "reshape-reshape",
            AnyOf::new(&["(reshape ?a (reshape ?b ?x))"]),
            vec![],
            super::pat("(reshape ?a ?x)"),
        ),
        rule(
            "reshape-identity",
            AnyOf::new(&["(reshape ?a ?x)"]),
            vec![Box::new(|eg: &VGraph, s: &Subst| {
                matches!((attr(eg, s, "?a"), ty_of(eg, s, "?x")),
                    (Some(Op::Reshape { shape }), Some(t)) if *shape == t.shape)
            })],
            Build(|_: &mut VGraph, _: Id, s: &Subst| Some(s[v("?x")])),
        ),
        rule(
            "slice-identity",
            AnyOf::new(&["(slice ?r ?x)"]),
            vec![Box::new(|eg: &VGraph, s: &Subst| {
                match (attr(eg, s, "?r"), ty_of(eg, s, "?x")) {
                    (Some(op), Some(t)) => slice_ranges(op)
                        .is_some_and(|r| (0..t.rank()).all(|i| is_full(&r, i, t.shape[i]))),
                    _ => false,
                }
            })],
            Build(|_: &mut VGraph, _: Id, s: &Subst| Some(s[v("?x")])),
        ),
        rule(
            "slice-through-transpose",
            AnyOf::new(&["(slice ?r (transpose ?p ?x))"]),
            vec![],
            Build(slice_through_transpose),
        ),
        rule(
            "slice-through-reshape",
            AnyOf::new(&["(slice ?r (reshape ?a ?x))"]),
            vec![],
            Build(slice_through_reshape),
        ),
        rule(
            "slice-through-elementwise",
            AnyOf::new(&["(slice ?r ?y)"]),
            vec![],
            Build(slice_through_elementwise),
        ),
        rule(
            "add-through-reshape",
            AnyOf::new(&["(reshape ?a (add (reshape ?b ?x) ?c))"]),
            vec![],
            Build(add_through_reshape),
        ),
        rule(
            "slice-matmul-columns",
            AnyOf::new(&["(slice ?r (matmul ?x ?w))"]),
            vec![],
            Build(slice_matmul_columns),
        ),
    ]
}

fn is_identity(perm: &[usize]) -> bool {
    perm.iter().enumerate().all(|(i, &p)| i == p)
}

/// The transpose bound to `?p` over `?x` satisfies `pred(perm, shape of x)`.
fn transpose_is(pred: fn(&[usize], &[usize]) -> bool) -> Guard {
    Box::new(move |eg, s| match (attr(eg, s, "?p"), ty_of(eg, s, "?x")) {
        (Some(Op::Transpose { perm }), Some(t)) => pred(perm, &t.shape),
        _ => false,
    })
}

/// (starts, ends, steps) of a slice op.
pub type Ranges = (Vec<i64>, Vec<i64>, Vec<i64>);

pub fn slice_ranges(op: &Op) -> Option<Ranges> {
    match op {
        Op::Slice {
            starts,
            ends,
            steps,
        } => Some((starts.clone(), ends.clone(), steps.clone())),
        _ => None,
    }
}

/// Whether the slice keeps all of dim `i` (of size `n`) in order.
pub fn is_full(r: &Ranges, i: usize, n: usize) -> bool {
    r.0[i] == 0 && r.1[i] == n as i64 && r.2[i] == 1
}

fn slice_op(r: Ranges) -> Op {
    Op::Slice {
        starts: r.0,
        ends: r.1,
        steps: r.2,
    }
}

/// `slice-through-transpose`: slice(transpose(x, p)) = transpose(slice'(x), p), the ranges
/// permuted back.
fn slice_through_transpose(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let r = slice_ranges(attr(eg, s, "?r")?)?;
    let Some(Op::Transpose { perm }) = attr(eg, s, "?p").cloned() else {
        return None;
    };
    let n = perm.len();
    let mut inner = (vec![0; n], vec![0; n], vec![0; n]);
    for (i, &p) in perm.iter().enumerate() {
        inner.0[p] = r.0[i];
        inner.1[p] = r.1[i];
        inner.2[p] = r.2[i];
    }
    let sl = add_op(eg, slice_op(inner), &[s[v("?x")]]);
    let t = add_op(eg, Op::Transpose { perm }, &[sl]);
    (ty(eg, t) == ty(eg, id)).then_some(t)
}

/// Groups of dims a reshape maps onto each other: (input dims, output dims) with equal
/// products, smallest first; size-one dims join the group they sit in or the last one.
fn reshape_groups(ins: &[usize], outs: &[usize]) -> Option<Vec<(Vec<usize>, Vec<usize>)>> {
    let mut groups: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < ins.len() && j < outs.len() {
        let (mut gi, mut gj) = (vec![i], vec![j]);
        let (mut pi, mut pj) = (ins[i], outs[j]);
        i += 1;
        j += 1;
        while pi != pj {
            if pi < pj {
                pi *= *ins.get(i)?;
                gi.push(i);
                i += 1;
            } else {
                pj *= *outs.get(j)?;
                gj.push(j);
                j += 1;
            }
        }
        groups.push((gi, gj));
    }
    // Whatever is left is size one; it belongs with the last group.
    let last = groups.last_mut()?;
    while i < ins.len() {
        if ins[i] != 1 {
            return None;
        }
        last.0.push(i);
        i += 1;
    }
    while j < outs.len() {
        if outs[j] != 1 {
            return None;
        }
        last.1.push(j);
        j += 1;
    }
    Some(groups)
}

/// `slice-through-reshape`: slicing the outermost non-unit dim of a group a reshape split off
/// one input dim (the rest of the group whole, step 1) is slicing a contiguous range of that
/// input dim, then reshaping.
fn slice_through_reshape(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let r = slice_ranges(attr(eg, s, "?r")?)?;
    let x = s[v("?x")];
    let ins = ty(eg, x)?.shape.clone();
    let Some(Op::Reshape { shape: outs }) = attr(eg, s, "?a").cloned() else {
        return None;
    };
    let mut inner: Ranges = (
        vec![0; ins.len()],
        ins.iter().map(|&d| d as i64).collect(),
        vec![1; ins.len()],
    );
    let mut touched = false;
    for (gi, gj) in reshape_groups(&ins, &outs)? {
        let cut: Vec<usize> = gj
            .iter()
            .copied()
            .filter(|&j| !is_full(&r, j, outs[j]))
            .collect();
        if cut.is_empty() {
            continue;
        }
        let big_in: Vec<usize> = gi.iter().copied().filter(|&i| ins[i] != 1).collect();
        let first_big = gj.iter().copied().find(|&j| outs[j] != 1)?;
        if cut != [first_big] || big_in.len() != 1 || r.2[first_big] != 1 {
            return None;
        }
        let after: i64 = gj
            .iter()
            .filter(|&&j| j > first_big)
            .map(|&j| outs[j] as i64)
            .product();
        let a = big_in[0];
        inner.0[a] = r.0[first_big] * after;
        inner.1[a] = r.1[first_big] * after;
        touched = true;
    }
    if !touched {
        return None;
    }
    let shape = ty(eg, id)?.shape.clone();
    let sl = add_op(eg, slice_op(inner), &[x]);
    let out = add_op(eg, Op::Reshape { shape }, &[sl]);
    (ty(eg, out) == ty(eg, id)).then_some(out)
}

/// The same slice for an operand broadcast into the sliced shape: dims it broadcasts along
/// (size one, or missing) are kept whole.
fn broadcast_slice(r: &Ranges, operand: &[usize]) -> Ranges {
    let off = r.0.len() - operand.len();
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for (k, &d) in operand.iter().enumerate() {
        let i = k + off;
        if d == 1 {
            out.0.push(0);
            out.1.push(1);
            out.2.push(1);
        } else {
            out.0.push(r.0[i]);
            out.1.push(r.1[i]);
            out.2.push(r.2[i]);
        }
    }
    out
}

/// `slice-through-elementwise`: slice(x ⊙ c) = slice(x) ⊙ slice(c) for ⊙ in + − · ÷ and c a
/// constant (sliced where it is not broadcast), so the op runs on fewer elements.
fn slice_through_elementwise(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let r = slice_ranges(attr(eg, s, "?r")?)?;
    let y = s[v("?y")];
    let out_rank = ty(eg, y)?.rank();
    let (op, x, c) = eg[y].nodes.iter().find_map(|n| {
        let op = node_op(eg, n)?;
        let args = operands(n);
        match op {
            Op::Binary(BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div)
                if eg[args[1]].data.konst
                    && !eg[args[0]].data.konst
                    && ty(eg, args[0])?.rank() == out_rank =>
            {
                Some((op, args[0], args[1]))
            }
            _ => None,
        }
    })?;
    let xs = ty(eg, x)?.shape.clone();
    let cs = ty(eg, c)?.shape.clone();
    if cs.len() > out_rank {
        return None;
    }
    let sx = add_op(eg, slice_op(broadcast_slice(&r, &xs)), &[x]);
    let sc = add_op(eg, slice_op(broadcast_slice(&r, &cs)), &[c]);
    let out = add_op(eg, op, &[sx, sc]);
    (ty(eg, out) == ty(eg, id)).then_some(out)
}

/// `add-through-reshape`: reshape(reshape(x)+c) back to x's shape is x+c', c' a reshape of c
/// (no bigger than c). Swin adds its shifted-window mask this way: the scores `[B·W, H, S, S]`
/// are viewed as `[B, W, H, S, S]` for a mask `[1, W, 1, S, S]` and viewed back. Exact when,
/// in every group of dims the inner reshape splits or merges, c either spans the group
/// whole or is broadcast over all of it: then c's elements sit at the same positions of the
/// group in either view.
fn add_through_reshape(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let (x, c) = (s[v("?x")], s[v("?c")]);
    if eg[x].data.konst || !eg[c].data.konst {
        return None;
    }
    let xs = ty(eg, x)?.shape.clone();
    let out = ty(eg, id)?.clone();
    if out.shape != xs {
        return None;
    }
    let Some(Op::Reshape { shape: ts }) = attr(eg, s, "?b").cloned() else {
        return None;
    };
    let ct = ty(eg, s[v("?c")])?.clone();
    if ct.rank() > ts.len() {
        return None;
    }
    // c's dims aligned to the inner view, size one where it has none.
    let mut cs = vec![1; ts.len() - ct.rank()];
    cs.extend_from_slice(&ct.shape);
    let mut new_shape = vec![1; xs.len()];
    for (t_dims, x_dims) in reshape_groups(&ts, &xs)? {
        if t_dims.iter().all(|&d| cs[d] == ts[d]) {
            for &d in &x_dims {
                new_shape[d] = xs[d];
            }
        } else if !t_dims.iter().all(|&d| cs[d] == 1) {
            return None;
        }
    }
    let c2 = add_op(eg, Op::Reshape { shape: new_shape }, &[c]);
    let sum = add_op(eg, Op::Binary(BinaryOp::Add), &[x, c2]);
    (ty(eg, sum) == Some(&out)).then_some(sum)
}

/// `slice-matmul-columns`: slicing only the last dim of x·W, W a constant matrix, is x times
/// the sliced columns of W.
fn slice_matmul_columns(eg: &mut VGraph, id: Id, s: &Subst) -> Option<Id> {
    let r = slice_ranges(attr(eg, s, "?r")?)?;
    let w = s[v("?w")];
    let wt = ty(eg, w)?.clone();
    let has_data = eg[w]
        .nodes
        .iter()
        .any(|n| matches!(n, Vit::Weight(_) | Vit::Lit(_)));
    if wt.rank() != 2 || !has_data {
        return None;
    }
    let out = ty(eg, id)?.clone();
    let src = super::infer(&Op::MatMul, &[ty(eg, s[v("?x")])?, &wt])?;
    let n = r.0.len();
    // Every dim but the last whole: only columns are cut.
    if (0..n - 1).any(|i| !is_full(&r, i, src.shape[i])) {
        return None;
    }
    let wr: Ranges = (
        vec![0, r.0[n - 1]],
        vec![wt.shape[0] as i64, r.1[n - 1]],
        vec![1, r.2[n - 1]],
    );
    let (lo, hi) = (r.0[n - 1], r.1[n - 1]);
    let ws = add_op(eg, slice_op(wr), &[w]);
    let m = add_op(eg, Op::MatMul, &[s[v("?x")], ws]);
    if ty(eg, m) != Some(&out) {
        return None;
    }
    // The split projection is named after the fused one, with its columns.
    let fused = eg[id].nodes.iter().find_map(|n| match n {
        Vit::Op(k, c) if k.as_str() == "slice" => Some(c[1]),
        _ => None,
    });
    if let Some(f) = fused {
        let loc = eg
            .analysis
            .locs
            .get(&f)
            .or_else(|| eg.analysis.locs.get(&eg.find(f)))
            .cloned();
        if let Some(loc) = loc {
            eg.analysis
                .fused_locs
                .entry(m)
                .or_insert(format!("{loc}[{lo}:{hi}]"));
        }
    }
    Some(m)
}
