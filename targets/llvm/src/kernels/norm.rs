//! Reductions and normalisations: reduce_{sum,mean,max,min,prod}, softmax and layer norm.
//!
//! Contiguous rows are folded with one vector of partial results per row (lanes combined in a
//! fixed halving order, then a scalar tail), so results do not depend on threads; other layouts
//! fall back to strided scalar loops. Softmax subtracts the row maximum before exp; layer norm
//! is two-pass (mean, then the mean of squared deviations) with four interleaved f32 vector
//! accumulators per pass, so a row of a few hundred elements costs a few dozen vector
//! instructions. Semantics follow the interpreter; sums are reassociated, which moves results by
//! a few ulp.

use inkwell::values::{InstructionOpcode, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};
use vitc_ir::{DType, Node, Op, ReduceOp, TensorType};

use super::elementwise::{int_range, signed};
use super::emit::{
    bcast_strides, coalesce, dense_strides, nest, shape64, unsupported, want_tasks, Elt, Em,
    Operand, Split, R, V,
};
use crate::math;

/// Fold `n` elements read by `load(j, w)` (j the element index, `w` lanes from it when
/// `contiguous`) with `comb`, starting from `init` (a scalar). Returns the scalar result.
pub(crate) fn fold<'ctx>(
    em: &Em<'_, 'ctx>,
    n: u64,
    contiguous: bool,
    init: V<'ctx>,
    load: &dyn Fn(IntValue<'ctx>, u32) -> R<V<'ctx>>,
    comb: &dyn Fn(V<'ctx>, V<'ctx>) -> R<V<'ctx>>,
) -> R<V<'ctx>> {
    let l = em.lanes as u64;
    let whole = if contiguous && l > 1 { n / l * l } else { 0 };
    let mut s = init;
    if whole > 0 {
        let v0 = em.splat(init, l as u32)?;
        let acc = em.for_acc(em.i64c(0), em.i64c(whole as i64), l, &[v0], |j, cur| {
            Ok(vec![comb(cur[0], load(j, l as u32)?)?])
        })?;
        s = em.hfold(acc[0], comb)?;
    }
    let r = em.for_acc(
        em.i64c(whole as i64),
        em.i64c(n as i64),
        1,
        &[s],
        |j, cur| Ok(vec![comb(cur[0], load(j, 1)?)?]),
    )?;
    Ok(r[0])
}

/// Sum-like fold of `n` contiguous elements (`load(j, w)`: `w` lanes from element j) with four
/// vector accumulators taking every fourth vector, so the adds do not wait on each other;
/// combined as (a0 + a1) + (a2 + a3), then lanes by halving, then the scalar tail — a fixed
/// order. Returns the scalar result.
fn fold4<'ctx>(
    em: &Em<'_, 'ctx>,
    n: u64,
    load: &dyn Fn(IntValue<'ctx>, u32) -> R<V<'ctx>>,
    comb: &dyn Fn(V<'ctx>, V<'ctx>) -> R<V<'ctx>>,
) -> R<V<'ctx>> {
    let l = em.lanes as u64;
    if l <= 1 {
        return fold(em, n, false, em.cf(0.0, 1), load, comb);
    }
    let w = l as u32;
    let quads = n / (4 * l);
    let z = em.cf(0.0, w);
    let mut acc = vec![z; 4];
    if quads > 0 {
        acc = em.for_acc(
            em.i64c(0),
            em.i64c((quads * 4 * l) as i64),
            4 * l,
            &acc,
            |j, cur| {
                (0..4)
                    .map(|u| comb(cur[u], load(em.addc(j, (u as u64 * l) as i64)?, w)?))
                    .collect()
            },
        )?;
    }
    // The whole vectors after the quads go to the first accumulators.
    let mut at = quads * 4 * l;
    let mut u = 0;
    while at + l <= n {
        acc[u] = comb(acc[u], load(em.i64c(at as i64), w)?)?;
        at += l;
        u += 1;
    }
    let v = comb(comb(acc[0], acc[1])?, comb(acc[2], acc[3])?)?;
    let s = em.hfold(v, comb)?;
    let r = em.for_acc(em.i64c(at as i64), em.i64c(n as i64), 1, &[s], |j, cur| {
        Ok(vec![comb(cur[0], load(j, 1)?)?])
    })?;
    Ok(r[0])
}

/// `v` replaces `a` when it is larger (smaller), or NaN: NaN sticks, as in the interpreter.
fn pick<'ctx>(em: &Em<'_, 'ctx>, a: V<'ctx>, v: V<'ctx>, max: bool) -> R<V<'ctx>> {
    let p = if max {
        FloatPredicate::OGT
    } else {
        FloatPredicate::OLT
    };
    let c = em.or(em.fcmp(p, v, a)?, em.fcmp(FloatPredicate::UNO, v, v)?)?;
    em.select(c, v, a)
}

/// Reduction: (coalesced input shape, input strides, output strides, elements per output).
fn reduce_layout(x: &TensorType, axes: &[usize]) -> (Vec<u64>, Vec<Vec<i64>>, u64) {
    let sh = shape64(&x.shape);
    let mut kept = sh.clone();
    for &a in axes {
        kept[a] = 1;
    }
    let ks = dense_strides(&kept);
    let ost: Vec<i64> = (0..sh.len())
        .map(|d| if axes.contains(&d) { 0 } else { ks[d] })
        .collect();
    let count: u64 = axes.iter().map(|&a| sh[a]).product();
    let mut strides = vec![dense_strides(&sh), ost];
    let cs = coalesce(&sh, &mut strides);
    (cs, strides, count)
}

/// Row mode: the reduced elements of each output are one contiguous run (the trailing dims).
fn reduce_rows(x: &TensorType, axes: &[usize], out_numel: u64) -> Option<u64> {
    let (cs, st, count) = reduce_layout(x, axes);
    let last = cs.len() - 1;
    let suffix = st[1][last] == 0 && st[1][..last].iter().all(|&s| s != 0);
    (x.dtype == DType::F32 && suffix && count > 0 && out_numel > 0 && cs[last] == count)
        .then_some(count)
}

/// Task split of a norm-family node (`None` for other ops).
pub(crate) fn split(n: &Node, in_tys: &[&TensorType]) -> Option<Split> {
    let x = in_tys.first()?;
    let numel = x.numel() as u64;
    match &n.op {
        Op::Reduce { axes, .. } => {
            let rows = n.ty.numel() as u64;
            if reduce_rows(x, axes, rows).is_some() {
                Some(Split::new(1, rows, want_tasks(numel, 32), 1))
            } else {
                Some(Split::new(1, 1, 1, 1))
            }
        }
        Op::Softmax { axis } => {
            let len = *x.shape.get(*axis)? as u64;
            let rows = numel / len.max(1);
            Some(Split::new(1, rows, want_tasks(5 * numel, 32), 1))
        }
        Op::LayerNorm { axis, .. } => {
            // Cheap per element, but a serial node costs a second thread all of it: split from
            // 16 K elements on, about 8 K each.
            let rows: u64 = x.shape[..*axis].iter().map(|&d| d as u64).product();
            let want = if numel < 16_384 {
                1
            } else {
                (numel / 8192).min(32)
            };
            Some(Split::new(1, rows, want, 1))
        }
        _ => None,
    }
}

/// Emit a reduction, softmax or layer norm.
pub(crate) fn emit<'ctx>(
    em: &Em<'_, 'ctx>,
    n: &Node,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    out: PointerValue<'ctx>,
    task: IntValue<'ctx>,
    target: &str,
) -> R<()> {
    let sp = split(n, in_tys).ok_or_else(|| unsupported(n, target, "not a reduction"))?;
    let x = in_tys[0];
    match &n.op {
        Op::Reduce { op, axes, .. } => {
            let d = x.dtype;
            if !(d == DType::F32 || d.is_int()) {
                return Err(unsupported(n, target, format!("{} on {d}", op.name())));
            }
            let (_, _, count) = reduce_layout(x, axes);
            if d.is_int() && *op == ReduceOp::Mean && (d != DType::I64 || count == 0) {
                return Err(unsupported(
                    n,
                    target,
                    format!("integer mean on {d} over {count} elements"),
                ));
            }
            if let Some(len) = reduce_rows(x, axes, n.ty.numel() as u64) {
                reduce_by_rows(em, *op, len, ins[0], out, task, &sp)
            } else {
                reduce_general(em, *op, x, axes, ins[0], out, n.ty.numel() as u64)
            }
        }
        Op::Softmax { axis } => {
            if x.dtype != DType::F32 {
                return Err(unsupported(n, target, format!("softmax on {}", x.dtype)));
            }
            softmax(em, x, *axis, ins[0], out, task, &sp)
        }
        Op::LayerNorm {
            axis,
            epsilon,
            has_bias,
        } => {
            if x.dtype != DType::F32 {
                return Err(unsupported(n, target, format!("layer norm on {}", x.dtype)));
            }
            let bias = has_bias.then(|| (ins[2], in_tys[2]));
            layer_norm(
                em,
                x,
                *axis,
                *epsilon,
                (ins[1], in_tys[1]),
                bias,
                ins[0],
                out,
                task,
                &sp,
            )
        }
        _ => Err(unsupported(n, target, "not a reduction")),
    }
}

fn float_comb<'ctx>(em: &Em<'_, 'ctx>, op: ReduceOp, a: V<'ctx>, v: V<'ctx>) -> R<V<'ctx>> {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => em.fadd(a, v),
        ReduceOp::Prod => em.fmul(a, v),
        ReduceOp::Max => pick(em, a, v, true),
        ReduceOp::Min => pick(em, a, v, false),
    }
}

fn float_init(op: ReduceOp) -> f64 {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => 0.0,
        ReduceOp::Prod => 1.0,
        ReduceOp::Max => f64::NEG_INFINITY,
        ReduceOp::Min => f64::INFINITY,
    }
}

fn reduce_by_rows<'ctx>(
    em: &Em<'_, 'ctx>,
    op: ReduceOp,
    len: u64,
    x: PointerValue<'ctx>,
    out: PointerValue<'ctx>,
    task: IntValue<'ctx>,
    sp: &Split,
) -> R<()> {
    sp.emit(em, task, &|_, r0, rows| {
        em.for_n(rows, |r| {
            let row = em.add(r0, r)?;
            let base = em.mulc(row, len as i64)?;
            let load = |j: IntValue<'ctx>, w: u32| em.ld_at(Elt::F32, w, x, em.add(base, j)?);
            let s = fold(em, len, true, em.cf(float_init(op), 1), &load, &|a, v| {
                float_comb(em, op, a, v)
            })?;
            let s = if op == ReduceOp::Mean {
                em.fdiv(s, em.cf(len as f64, 1))?
            } else {
                s
            };
            em.st_at(Elt::F32, out, row, s)
        })
    })
}

/// Any axes, any numeric dtype: initialise the result, then fold every input element into its
/// output element in row-major input order.
fn reduce_general<'ctx>(
    em: &Em<'_, 'ctx>,
    op: ReduceOp,
    x: &TensorType,
    axes: &[usize],
    xp: PointerValue<'ctx>,
    out: PointerValue<'ctx>,
    out_numel: u64,
) -> R<()> {
    let d = x.dtype;
    let e = Elt::of(d);
    let (cs, st, count) = reduce_layout(x, axes);
    if out_numel == 0 {
        return Ok(());
    }
    let s = signed(d);
    let (tmin, tmax) = int_range(d);
    let init = |w: u32| -> V<'ctx> {
        if d == DType::F32 {
            return em.cf(float_init(op), w);
        }
        let v = match op {
            ReduceOp::Sum | ReduceOp::Mean => 0,
            ReduceOp::Prod => 1,
            // An empty max/min yields the type's extreme, as the interpreter does.
            ReduceOp::Max => tmin,
            ReduceOp::Min => tmax,
        };
        em.ci(e, v, w)
    };
    let ops = [Operand {
        ptr: out,
        elt: e,
        strides: vec![1],
    }];
    nest(em, &[out_numel], &ops, None, true, &mut |l| {
        l.store(em, 0, init(l.w))
    })?;
    if x.numel() > 0 {
        let ops = [
            Operand {
                ptr: xp,
                elt: e,
                strides: st[0].clone(),
            },
            Operand {
                ptr: out,
                elt: e,
                strides: st[1].clone(),
            },
        ];
        // Lanes may only run along a kept dim (each lane its own output element).
        let vector = st[1].last() == Some(&1);
        nest(em, &cs, &ops, None, vector, &mut |l| {
            let v = l.load(em, 0)?;
            let a = l.load(em, 1)?;
            let r = if d == DType::F32 {
                float_comb(em, op, a, v)?
            } else {
                match op {
                    ReduceOp::Sum | ReduceOp::Mean => em.iadd(a, v)?,
                    ReduceOp::Prod => em.imul(a, v)?,
                    ReduceOp::Max | ReduceOp::Min => {
                        let p = match (op == ReduceOp::Max, s) {
                            (true, true) => IntPredicate::SGT,
                            (true, false) => IntPredicate::UGT,
                            (false, true) => IntPredicate::SLT,
                            (false, false) => IntPredicate::ULT,
                        };
                        em.select(em.icmp(p, v, a)?, v, a)?
                    }
                }
            };
            l.store(em, 1, r)
        })?;
    }
    if op == ReduceOp::Mean {
        let ops = [Operand {
            ptr: out,
            elt: e,
            strides: vec![1],
        }];
        nest(em, &[out_numel], &ops, None, true, &mut |l| {
            let a = l.load(em, 0)?;
            let r = if d == DType::F32 {
                em.fdiv(a, em.cf(count as f64, l.w))?
            } else {
                em.bin(InstructionOpcode::SDiv, a, em.ci(e, count as i64, l.w))?
            };
            l.store(em, 0, r)
        })?;
    }
    Ok(())
}

fn softmax<'ctx>(
    em: &Em<'_, 'ctx>,
    x: &TensorType,
    axis: usize,
    xp: PointerValue<'ctx>,
    out: PointerValue<'ctx>,
    task: IntValue<'ctx>,
    sp: &Split,
) -> R<()> {
    let len = x.shape[axis] as u64;
    let inner: u64 = x.shape[axis + 1..].iter().map(|&d| d as u64).product();
    if len == 0 || inner == 0 {
        return Ok(());
    }
    sp.emit(em, task, &|_, r0, rows| {
        em.for_n(rows, |r| {
            let row = em.add(r0, r)?;
            // Row `row` is outer index row / inner, inner index row % inner, stride `inner`.
            let base = if inner == 1 {
                em.mulc(row, len as i64)?
            } else {
                let o = em.udivc(row, inner)?;
                em.add(em.mulc(o, (len * inner) as i64)?, em.uremc(row, inner)?)?
            };
            softmax_row(em, xp, out, base, len, inner as i64, None)
        })
    })
}

/// Visit `n` elements: `f(j, w)` for whole vectors of `w` lanes when `contiguous`, then singly.
pub(crate) fn sweep<'ctx>(
    em: &Em<'_, 'ctx>,
    n: u64,
    contiguous: bool,
    f: &dyn Fn(IntValue<'ctx>, u32) -> R<()>,
) -> R<()> {
    let l = em.lanes as u64;
    let whole = if contiguous && l > 1 { n / l * l } else { 0 };
    em.for_range(em.i64c(0), em.i64c(whole as i64), l, |j| f(j, l as u32))?;
    em.for_range(em.i64c(whole as i64), em.i64c(n as i64), 1, |j| f(j, 1))
}

/// Softmax of the `len` elements at `src[base + j·stride]` into `dst` at the same offsets,
/// shifted by the row maximum. When `keep` (the number of unmasked elements, attention) is 0
/// the row is defined as zeros rather than the NaNs exp(-inf - -inf) would give.
pub(crate) fn softmax_row<'ctx>(
    em: &Em<'_, 'ctx>,
    src: PointerValue<'ctx>,
    dst: PointerValue<'ctx>,
    base: IntValue<'ctx>,
    len: u64,
    stride: i64,
    keep: Option<IntValue<'ctx>>,
) -> R<()> {
    let contiguous = stride == 1;
    let at = |j: IntValue<'ctx>| -> R<IntValue<'ctx>> { em.mad(base, j, stride) };
    let load = |j: IntValue<'ctx>, w: u32| em.ld_at(Elt::F32, w, src, at(j)?);
    // f32::max semantics: NaN elements are skipped when looking for the maximum (a NaN never
    // wins `v > a`, and the running maximum starts at -inf, so it is never NaN itself).
    let mx = fold(
        em,
        len,
        contiguous,
        em.cf(f64::NEG_INFINITY, 1),
        &load,
        &|a, v| em.select(em.fcmp(FloatPredicate::OGT, v, a)?, v, a),
    )?;
    let dload = |j: IntValue<'ctx>, w: u32| -> R<V<'ctx>> {
        let x = load(j, w)?;
        let e = math::exp_neg(em, em.fsub(x, em.splat(mx, w)?)?)?;
        em.st_at(Elt::F32, dst, at(j)?, e)?;
        Ok(e)
    };
    let sum = fold(em, len, contiguous, em.cf(0.0, 1), &dload, &|a, v| {
        em.fadd(a, v)
    })?;
    let inv = em.fdiv(em.cf(1.0, 1), sum)?;
    let dead: Option<V<'ctx>> = match keep {
        Some(k) => Some(
            em.b.build_int_compare(IntPredicate::EQ, k, em.i64c(0), "")?
                .into(),
        ),
        None => None,
    };
    sweep(em, len, contiguous, &|j, w| {
        let p = at(j)?;
        let e = em.ld_at(Elt::F32, w, dst, p)?;
        let mut y = em.fmul(e, em.splat(inv, w)?)?;
        if let Some(dd) = dead {
            y = em.select(em.splat(dd, w)?, em.cf(0.0, w), y)?;
        }
        em.st_at(Elt::F32, dst, p, y)
    })
}

#[allow(clippy::too_many_arguments)]
fn layer_norm<'ctx>(
    em: &Em<'_, 'ctx>,
    x: &TensorType,
    axis: usize,
    eps: f32,
    scale: (PointerValue<'ctx>, &TensorType),
    bias: Option<(PointerValue<'ctx>, &TensorType)>,
    xp: PointerValue<'ctx>,
    out: PointerValue<'ctx>,
    task: IntValue<'ctx>,
    sp: &Split,
) -> R<()> {
    let norm = shape64(&x.shape[axis..]);
    let len: u64 = norm.iter().product();
    if len == 0 {
        return Ok(());
    }
    // The last pass walks the normalised dims with scale and bias broadcast onto them.
    let mut strides = vec![dense_strides(&norm), dense_strides(&norm)];
    strides.push(bcast_strides(&shape64(&scale.1.shape), &norm));
    if let Some((_, bt)) = bias {
        strides.push(bcast_strides(&shape64(&bt.shape), &norm));
    }
    let cs = coalesce(&norm, &mut strides);
    sp.emit(em, task, &|_, r0, rows| {
        em.for_n(rows, |r| {
            let row = em.add(r0, r)?;
            let base = em.mulc(row, len as i64)?;
            let xrow = em.gep(Elt::F32, xp, base)?;
            let orow = em.gep(Elt::F32, out, base)?;
            let load = |j: IntValue<'ctx>, w: u32| em.ld_at(Elt::F32, w, xrow, j);
            let sum = fold4(em, len, &load, &|a, v| em.fadd(a, v))?;
            let mean = em.fdiv(sum, em.cf(len as f64, 1))?;
            let dev = |j: IntValue<'ctx>, w: u32| -> R<V<'ctx>> {
                let v = em.fsub(em.ld_at(Elt::F32, w, xrow, j)?, em.splat(mean, w)?)?;
                em.fmul(v, v)
            };
            let ss = fold4(em, len, &dev, &|a, v| em.fadd(a, v))?;
            let var = em.fdiv(ss, em.cf(len as f64, 1))?;
            let sd = em.intr("llvm.sqrt", &[em.fadd(var, em.cf(eps as f64, 1))?])?;
            let inv = em.fdiv(em.cf(1.0, 1), sd)?;
            let mut ops = vec![
                Operand {
                    ptr: xrow,
                    elt: Elt::F32,
                    strides: strides[0].clone(),
                },
                Operand {
                    ptr: orow,
                    elt: Elt::F32,
                    strides: strides[1].clone(),
                },
                Operand {
                    ptr: scale.0,
                    elt: Elt::F32,
                    strides: strides[2].clone(),
                },
            ];
            if let Some((bp, _)) = bias {
                ops.push(Operand {
                    ptr: bp,
                    elt: Elt::F32,
                    strides: strides[3].clone(),
                });
            }
            nest(em, &cs, &ops, None, true, &mut |lv| {
                let w = lv.w;
                let v = em.fsub(lv.load(em, 0)?, em.splat(mean, w)?)?;
                let v = em.fmul(v, em.splat(inv, w)?)?;
                let mut v = em.fmul(v, lv.load(em, 2)?)?;
                if bias.is_some() {
                    v = em.fadd(v, lv.load(em, 3)?)?;
                }
                lv.store(em, 1, v)
            })
        })
    })
}
