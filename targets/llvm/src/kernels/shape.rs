//! Data-movement kernels: reshape, transpose, slice (negative steps included), concat, gather,
//! gather_elements and constant pad. They copy elements of any dtype by their storage width and
//! never compute on them; reshape, transpose and slice are strided nests planned like elementwise
//! ops (and split between tasks the same way), the others run as one task.
//!
//! Reads and writes stay inside the operand and result buffers whatever the data: gather and
//! gather_elements wrap negative indices once, as ONNX does, and clamp whatever is still outside
//! the axis to its first or last element (the interpreter rejects such indices as out of range).

use inkwell::values::{IntValue, PointerValue};
use inkwell::IntPredicate;
use vitc_ir::{DType, Node, Op, TensorType};

use super::elementwise::{ew_emit, ew_plan, EwPlan};
use super::emit::{coalesce, dense_strides, nest, shape64, unsupported, Elt, Em, Operand, R};

/// The nest of a strided-copy node and its constant input offset (elements), or `None`.
pub(crate) fn plan(n: &Node, in_tys: &[&TensorType]) -> Option<(EwPlan, i64)> {
    let x = in_tys.first()?;
    let ish = shape64(&x.shape);
    let osh = shape64(&n.ty.shape);
    let st = dense_strides(&ish);
    match &n.op {
        Op::Reshape { .. } => {
            let numel: u64 = osh.iter().product();
            Some((ew_plan(&[numel], vec![vec![1]], true), 0))
        }
        Op::Transpose { perm } => {
            let s: Vec<i64> = perm
                .iter()
                .map(|&p| st.get(p).copied().unwrap_or(0))
                .collect();
            Some((ew_plan(&osh, vec![s], true), 0))
        }
        Op::Slice { starts, steps, .. } => {
            let mut base = 0i64;
            let mut s = Vec::with_capacity(osh.len());
            for i in 0..osh.len() {
                base += starts.get(i).copied().unwrap_or(0) * st[i];
                s.push(if osh[i] == 1 {
                    0
                } else {
                    steps.get(i).copied().unwrap_or(1) * st[i]
                });
            }
            Some((ew_plan(&osh, vec![s], true), base))
        }
        _ => None,
    }
}

/// Emit a data-movement node.
pub(crate) fn emit<'ctx>(
    em: &Em<'_, 'ctx>,
    n: &Node,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    out: PointerValue<'ctx>,
    task: IntValue<'ctx>,
    target: &str,
) -> R<()> {
    let e = Elt::of(n.ty.dtype);
    if let Some((p, base)) = plan(n, in_tys) {
        if matches!(n.op, Op::Slice { .. }) {
            check_slice(n, in_tys[0]).map_err(|why| unsupported(n, target, why))?;
        }
        let x = em.gep(e, ins[0], em.i64c(base))?;
        return ew_emit(em, &p, task, &[(x, e)], (out, e), &|v| Ok(v[0]));
    }
    match &n.op {
        Op::Concat { axis } => concat(em, *axis, in_tys, ins, &n.ty, out),
        Op::Gather { axis } => gather(em, *axis, in_tys, ins, &n.ty, out),
        Op::GatherElements { axis } => gather_elements(em, *axis, in_tys, ins, &n.ty, out),
        Op::Pad { pads, value } => {
            let fill = pad_bits(n.ty.dtype, *value).ok_or_else(|| {
                unsupported(n, target, format!("pad value {value} in {}", n.ty.dtype))
            })?;
            pad(em, pads, fill, in_tys[0], ins[0], &n.ty, out)
        }
        _ => Err(unsupported(n, target, "not a data-movement op")),
    }
}

/// A slice must read inside its operand (the interpreter checks at run time; here the shapes
/// are static, so it is checked once).
fn check_slice(n: &Node, x: &TensorType) -> Result<(), String> {
    let Op::Slice { starts, steps, .. } = &n.op else {
        return Ok(());
    };
    if n.ty.numel() == 0 {
        return Ok(());
    }
    for i in 0..n.ty.shape.len() {
        let (s, st, d) = (starts[i], steps[i], x.shape[i] as i64);
        let last = (n.ty.shape[i] as i64 - 1)
            .checked_mul(st)
            .and_then(|v| v.checked_add(s));
        match last {
            Some(l) if (0..d).contains(&s) && (0..d).contains(&l) => {}
            _ => return Err(format!("slice of dim {i} from {s} by {st} leaves 0..{d}")),
        }
    }
    Ok(())
}

fn concat<'ctx>(
    em: &Em<'_, 'ctx>,
    axis: usize,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    ty: &TensorType,
    out: PointerValue<'ctx>,
) -> R<()> {
    let e = Elt::of(ty.dtype);
    let ost = dense_strides(&shape64(&ty.shape));
    let mut at = 0i64;
    for (t, &p) in in_tys.iter().zip(ins) {
        let sh = shape64(&t.shape);
        let mut strides = vec![dense_strides(&sh), ost.clone()];
        let cs = coalesce(&sh, &mut strides);
        if sh.iter().product::<u64>() > 0 {
            let dst = em.gep(e, out, em.i64c(at * ost[axis]))?;
            copy_block(em, e, &cs, [p, dst], &strides)?;
        }
        at += t.shape[axis] as i64;
    }
    Ok(())
}

fn gather<'ctx>(
    em: &Em<'_, 'ctx>,
    axis: usize,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    ty: &TensorType,
    out: PointerValue<'ctx>,
) -> R<()> {
    let (data, idx) = (in_tys[0], in_tys[1]);
    let e = Elt::of(ty.dtype);
    let d = data.shape[axis] as i64;
    let outer: u64 = data.shape[..axis].iter().map(|&v| v as u64).product();
    let inner: u64 = data.shape[axis + 1..].iter().map(|&v| v as u64).product();
    let nidx = idx.numel() as u64;
    if ty.numel() == 0 || d == 0 {
        return Ok(());
    }
    let ie = Elt::of(idx.dtype);
    em.for_n(outer, |o| {
        em.for_n(nidx, |q| {
            let i = load_index(em, ie, ins[1], q, d)?;
            let src_row = em.mad(em.mulc(o, d * inner as i64)?, i, inner as i64)?;
            let dst_row = em.mulc(em.mad(em.mulc(o, nidx as i64)?, q, 1)?, inner as i64)?;
            let src = em.gep(e, ins[0], src_row)?;
            let dst = em.gep(e, out, dst_row)?;
            let ops = [
                Operand {
                    ptr: src,
                    elt: e,
                    strides: vec![1],
                },
                Operand {
                    ptr: dst,
                    elt: e,
                    strides: vec![1],
                },
            ];
            nest(em, &[inner], &ops, None, true, &mut |l| {
                let v = l.load(em, 0)?;
                l.store(em, 1, v)
            })
        })
    })
}

/// Index `at` of an i64 or i32 index buffer as an i64 inside `0..d` (`d` > 0): negative indices
/// count from the end; anything still outside is clamped so the read stays in bounds (the
/// interpreter rejects such models).
fn load_index<'ctx>(
    em: &Em<'_, 'ctx>,
    ie: Elt,
    idx: PointerValue<'ctx>,
    at: IntValue<'ctx>,
    d: i64,
) -> R<IntValue<'ctx>> {
    let raw = em.ld_at(ie, 1, idx, at)?;
    let i = if ie == Elt::I64 {
        raw.into_int_value()
    } else {
        em.b.build_int_s_extend(raw.into_int_value(), em.ctx.i64_type(), "")?
    };
    let neg =
        em.b.build_int_compare(IntPredicate::SLT, i, em.i64c(0), "")?;
    let i =
        em.b.build_select(neg, em.addc(i, d)?, i, "")?
            .into_int_value();
    em.smax(em.smin(i, em.i64c(d - 1))?, em.i64c(0))
}

/// GatherElements over data `[outer, d, inner]` and indices `[outer, m, inner]` (the dims
/// around the axis flattened; the type rule makes them agree): one scalar copy per result
/// element, its index read beside it, so no pattern of indices can vectorise or go wrong.
fn gather_elements<'ctx>(
    em: &Em<'_, 'ctx>,
    axis: usize,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    ty: &TensorType,
    out: PointerValue<'ctx>,
) -> R<()> {
    let (data, idx) = (in_tys[0], in_tys[1]);
    let e = Elt::of(ty.dtype);
    let d = data.shape[axis] as i64;
    let m = idx.shape[axis] as i64;
    let outer: u64 = idx.shape[..axis].iter().map(|&v| v as u64).product();
    let inner = idx.shape[axis + 1..]
        .iter()
        .map(|&v| v as u64)
        .product::<u64>() as i64;
    if ty.numel() == 0 || d == 0 {
        return Ok(());
    }
    let ie = Elt::of(idx.dtype);
    em.for_n(outer, |o| {
        let src_base = em.mulc(o, d * inner)?;
        let dst_base = em.mulc(o, m * inner)?;
        em.for_n(m as u64, |q| {
            let row = em.mad(dst_base, q, inner)?;
            em.for_n(inner as u64, |p| {
                let at = em.add(row, p)?;
                let i = load_index(em, ie, ins[1], at, d)?;
                let src = em.add(em.mad(src_base, i, inner)?, p)?;
                let v = em.ld_at(e, 1, ins[0], src)?;
                em.st_at(e, out, at, v)
            })
        })
    })
}

/// The storage bits of the pad value in `d` (the interpreter's `Data::from_f64`), or `None`
/// for f16/bf16 values other than zero.
fn pad_bits(d: DType, value: f32) -> Option<i64> {
    let v = value as f64;
    Some(match d {
        DType::F32 => value.to_bits() as i32 as i64,
        DType::F16 | DType::BF16 => {
            if value == 0.0 && value.is_sign_positive() {
                0
            } else {
                return None;
            }
        }
        DType::I8 => v as i8 as i64,
        DType::U8 => v as u8 as i64,
        DType::I32 => v as i32 as i64,
        DType::I64 => v as i64,
        DType::Bool => (v != 0.0) as i64,
    })
}

#[allow(clippy::too_many_arguments)]
fn pad<'ctx>(
    em: &Em<'_, 'ctx>,
    pads: &[usize],
    fill: i64,
    x: &TensorType,
    xp: PointerValue<'ctx>,
    ty: &TensorType,
    out: PointerValue<'ctx>,
) -> R<()> {
    let e = Elt::of(ty.dtype);
    // Fill as raw bits of the element width (f32 through i32), then copy the interior.
    let be = if e == Elt::F32 { Elt::I32 } else { e };
    let numel = ty.numel() as u64;
    if numel == 0 {
        return Ok(());
    }
    let ops = [Operand {
        ptr: out,
        elt: be,
        strides: vec![1],
    }];
    nest(em, &[numel], &ops, None, true, &mut |l| {
        l.store(em, 0, em.ci(be, fill, l.w))
    })?;
    if x.numel() == 0 {
        return Ok(());
    }
    let ish = shape64(&x.shape);
    let osh = shape64(&ty.shape);
    let ost = dense_strides(&osh);
    let base: i64 = (0..ish.len()).map(|i| pads[i] as i64 * ost[i]).sum();
    let mut strides = vec![dense_strides(&ish), ost];
    let cs = coalesce(&ish, &mut strides);
    let dst = em.gep(e, out, em.i64c(base))?;
    copy_block(em, e, &cs, [xp, dst], &strides)
}

/// Copy a block of `shape` elements from `ptrs[0]` to `ptrs[1]`, each with its own strides
/// (`strides[0]`, `strides[1]`): concat's pieces and pad's interior.
fn copy_block<'ctx>(
    em: &Em<'_, 'ctx>,
    e: Elt,
    shape: &[u64],
    ptrs: [PointerValue<'ctx>; 2],
    strides: &[Vec<i64>],
) -> R<()> {
    let ops = [
        Operand {
            ptr: ptrs[0],
            elt: e,
            strides: strides[0].clone(),
        },
        Operand {
            ptr: ptrs[1],
            elt: e,
            strides: strides[1].clone(),
        },
    ];
    nest(em, shape, &ops, None, true, &mut |l| {
        let v = l.load(em, 0)?;
        l.store(em, 1, v)
    })
}
