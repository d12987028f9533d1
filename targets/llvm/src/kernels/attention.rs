//! `vit.attention`: softmax(scale·QKᵀ + bias, mask)·V per batch and head, for every operand
//! layout (`bsd`, `bhsd`, `bhds`, `bshd`).
//!
//! Per (batch, head) a task brings Kᵀ into the `[D, Sk]` row-major form the GEMM reads (a copy
//! into scratch unless K is already `bhds`) and V into `[Sk, D]` (a copy only for `bhds`); then
//! for each block of query rows (one GEMM tile high) it computes the scores block into scratch,
//! applies scale, bias and mask and a max-subtracted softmax per row, and multiplies by V
//! straight into the output. Tasks take whole (batch, head) pairs, or query-row ranges of one
//! pair when there are few. The score matrix is never materialised beyond one block.

use inkwell::values::{InstructionOpcode, IntValue, PointerValue};
use inkwell::IntPredicate;
use vitc_ir::{AttnLayout, DType, Node, Op, TensorType};

use super::emit::{
    bcast_strides, coalesce, nest, shape64, unsupported, want_tasks, Elt, Em, Operand, Split, R, V,
};
use super::gemm::{emit_gemm, tile_shape, Gemm, ROW_ALIGN};
use super::norm::{fold, softmax_row};

/// Strides (batch, head, sequence, channel) of an operand in `layout`, and its (seq, head dim).
fn layout(l: AttnLayout, shape: &[usize], heads: usize) -> ([i64; 4], u64, u64) {
    let s: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    match l {
        AttnLayout::Bsd => {
            let d = s[2] / heads as i64;
            ([s[1] * s[2], d, s[2], 1], s[1] as u64, d as u64)
        }
        AttnLayout::Bhsd => (
            [s[1] * s[2] * s[3], s[2] * s[3], s[3], 1],
            s[2] as u64,
            s[3] as u64,
        ),
        AttnLayout::Bhds => (
            [s[1] * s[2] * s[3], s[2] * s[3], 1, s[3]],
            s[3] as u64,
            s[2] as u64,
        ),
        AttnLayout::Bshd => (
            [s[1] * s[2] * s[3], s[3], s[2] * s[3], 1],
            s[1] as u64,
            s[3] as u64,
        ),
    }
}

struct Dims {
    b: u64,
    h: u64,
    sq: u64,
    sk: u64,
    d: u64,
    dv: u64,
}

fn dims(n: &Node, in_tys: &[&TensorType]) -> Option<Dims> {
    let Op::Attention {
        heads,
        q_layout,
        k_layout,
        v_layout,
        ..
    } = &n.op
    else {
        return None;
    };
    let (_, sq, d) = layout(*q_layout, &in_tys.first()?.shape, *heads);
    let (_, sk, _) = layout(*k_layout, &in_tys.get(1)?.shape, *heads);
    let (_, _, dv) = layout(*v_layout, &in_tys.get(2)?.shape, *heads);
    Some(Dims {
        b: in_tys[0].shape[0] as u64,
        h: *heads as u64,
        sq,
        sk,
        d,
        dv,
    })
}

/// Tasks over (batch·head) items and query rows.
pub(crate) fn split(n: &Node, in_tys: &[&TensorType]) -> Option<Split> {
    let d = dims(n, in_tys)?;
    let flops = 2 * d.b * d.h * d.sq * d.sk * (d.d + d.dv);
    Some(Split::new(
        d.b * d.h,
        d.sq,
        want_tasks(flops, 64),
        ROW_ALIGN,
    ))
}

/// Scratch floats: Kᵀ panel, V panel (bhds only), one score block of the tallest tile.
fn scratch_floats(n: &Node, in_tys: &[&TensorType]) -> Option<(u64, u64, u64)> {
    let Op::Attention {
        k_layout, v_layout, ..
    } = &n.op
    else {
        return None;
    };
    let d = dims(n, in_tys)?;
    let kt = if *k_layout == AttnLayout::Bhds {
        0
    } else {
        d.d * d.sk
    };
    let vt = if *v_layout == AttnLayout::Bhds {
        d.sk * d.dv
    } else {
        0
    };
    Some((kt, vt, ROW_ALIGN.max(tile_shape(16).0) * d.sk))
}

/// Per-task scratch bytes.
pub(crate) fn scratch_bytes(n: &Node, in_tys: &[&TensorType]) -> usize {
    scratch_floats(n, in_tys)
        .map(|(a, b, c)| ((a + b + c) * 4) as usize)
        .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn emit<'ctx>(
    em: &Em<'_, 'ctx>,
    n: &Node,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    out: PointerValue<'ctx>,
    scratch: PointerValue<'ctx>,
    task: IntValue<'ctx>,
    target: &str,
) -> R<()> {
    let Op::Attention {
        heads,
        scale,
        q_layout,
        k_layout,
        v_layout,
        out_layout,
        has_bias,
        has_mask,
    } = &n.op
    else {
        return Err(unsupported(n, target, "not attention"));
    };
    if in_tys[..3].iter().any(|t| t.dtype != DType::F32)
        || (*has_bias && in_tys[3].dtype != DType::F32)
    {
        return Err(unsupported(n, target, "only f32 attention is generated"));
    }
    let (Some(dm), Some(sp), Some((kt_n, vt_n, _))) =
        (dims(n, in_tys), split(n, in_tys), scratch_floats(n, in_tys))
    else {
        return Err(unsupported(n, target, "malformed attention"));
    };
    let h = *heads;
    let (qs, _, _) = layout(*q_layout, &in_tys[0].shape, h);
    let (ks, _, _) = layout(*k_layout, &in_tys[1].shape, h);
    let (vs, _, _) = layout(*v_layout, &in_tys[2].shape, h);
    let (os, _, _) = layout(*out_layout, &n.ty.shape, h);
    let scores_shape = [dm.b, dm.h, dm.sq, dm.sk];
    let bias = has_bias.then(|| {
        let st = bcast_strides(&shape64(&in_tys[3].shape), &scores_shape);
        (ins[3], st)
    });
    let mask = has_mask.then(|| {
        let i = 3 + *has_bias as usize;
        let st = bcast_strides(&shape64(&in_tys[i].shape), &scores_shape);
        (ins[i], st)
    });
    if dm.sq == 0 || dm.dv == 0 || dm.b * dm.h == 0 {
        return Ok(());
    }
    let (q, k, v) = (ins[0], ins[1], ins[2]);
    let kt = scratch;
    let vt = em.gep(Elt::F32, scratch, em.i64c(kt_n as i64))?;
    let sc = em.gep(Elt::F32, scratch, em.i64c((kt_n + vt_n) as i64))?;
    let (mr, _) = tile_shape(em.lanes);
    let scale = *scale as f64;
    let sk = dm.sk;

    sp.emit(em, task, &|item, r0, rows| {
        let b = em.udivc(item, dm.h)?;
        let hh = em.uremc(item, dm.h)?;
        let base = |st: &[i64; 4]| -> R<IntValue<'ctx>> { em.mad(em.mulc(b, st[0])?, hh, st[1]) };
        let (qb, kb, vb, ob) = (base(&qs)?, base(&ks)?, base(&vs)?, base(&os)?);
        // Kᵀ as a [D, Sk] matrix with contiguous rows.
        let (ktp, kt_rs) = if *k_layout == AttnLayout::Bhds {
            (em.gep(Elt::F32, k, kb)?, ks[3])
        } else {
            copy2(em, em.gep(Elt::F32, k, kb)?, [ks[3], ks[2]], kt, [dm.d, sk])?;
            (kt, sk as i64)
        };
        // V as an [Sk, Dv] matrix with contiguous rows.
        let (vp, v_rs) = if *v_layout == AttnLayout::Bhds {
            copy2(
                em,
                em.gep(Elt::F32, v, vb)?,
                [vs[2], vs[3]],
                vt,
                [sk, dm.dv],
            )?;
            (vt, dm.dv as i64)
        } else {
            (em.gep(Elt::F32, v, vb)?, vs[2])
        };
        let block = |i0: IntValue<'ctx>, m: u64| -> R<()> {
            // Scores S[r, j] = Q[i0 + r, :] · Kᵀ[:, j]
            let load_a = |r: IntValue<'ctx>, p: IntValue<'ctx>| -> R<V<'ctx>> {
                let i = em.add(i0, r)?;
                let off = em.mad(em.mad(qb, i, qs[2])?, p, qs[3])?;
                em.ld_at(Elt::F32, 1, q, off)
            };
            let load_b = |p: IntValue<'ctx>, j: IntValue<'ctx>, w: u32| -> R<V<'ctx>> {
                em.ld_at(Elt::F32, w, ktp, em.add(em.mulc(p, kt_rs)?, j)?)
            };
            let store_s = |r: IntValue<'ctx>, j: IntValue<'ctx>, _w: u32, x: V<'ctx>| -> R<()> {
                em.st_at(Elt::F32, sc, em.add(em.mulc(r, sk as i64)?, j)?, x)
            };
            emit_gemm(
                em,
                &Gemm {
                    m,
                    n: sk,
                    k: dm.d,
                    acc: Elt::F32,
                    load_a: &load_a,
                    load_b: &load_b,
                    store: &store_s,
                },
            )?;
            em.for_n(m, |r| {
                let i = em.add(i0, r)?;
                let row = em.mulc(r, sk as i64)?;
                let at = |st: &[i64], j: IntValue<'ctx>| -> R<IntValue<'ctx>> {
                    let o = em.mad(em.mulc(b, st[0])?, hh, st[1])?;
                    let o = em.mad(o, i, st[2])?;
                    em.mad(o, j, st[3])
                };
                let contiguous = bias.as_ref().is_none_or(|(_, st)| st[3] <= 1)
                    && mask.as_ref().is_none_or(|(_, st)| st[3] <= 1);
                // scale·s + bias, masked to -inf; counts the unmasked elements.
                let prep = |j: IntValue<'ctx>, w: u32| -> R<V<'ctx>> {
                    let p = em.add(row, j)?;
                    let s = em.ld_at(Elt::F32, w, sc, p)?;
                    let mut x = em.fmul(s, em.cf(scale, w))?;
                    if let Some((bp, st)) = &bias {
                        x = em.fadd(x, wide_load(em, Elt::F32, *bp, at(st, j)?, st[3], w)?)?;
                    }
                    let mut kept = em.ci(Elt::I32, 1, w);
                    if let Some((mp, st)) = &mask {
                        let mv = wide_load(em, Elt::I8, *mp, at(st, j)?, st[3], w)?;
                        let on = em.icmp(IntPredicate::NE, mv, em.zero(Elt::I8, w))?;
                        x = em.select(on, x, em.cf(f64::NEG_INFINITY, w))?;
                        kept = em.cast(InstructionOpcode::ZExt, on, Elt::I32)?;
                    }
                    em.st_at(Elt::F32, sc, p, x)?;
                    Ok(kept)
                };
                let keep = fold(em, sk, contiguous, em.ci(Elt::I32, 0, 1), &prep, &|a, c| {
                    em.iadd(a, c)
                })?;
                let keep = mask
                    .is_some()
                    .then(|| {
                        em.b.build_int_z_extend(keep.into_int_value(), em.ctx.i64_type(), "")
                    })
                    .transpose()?;
                softmax_row(em, sc, sc, row, sk, 1, keep)
            })?;
            // Out[i0 + r, :] = P[r, :] · V
            let load_p = |r: IntValue<'ctx>, p: IntValue<'ctx>| -> R<V<'ctx>> {
                em.ld_at(Elt::F32, 1, sc, em.add(em.mulc(r, sk as i64)?, p)?)
            };
            let load_v = |p: IntValue<'ctx>, j: IntValue<'ctx>, w: u32| -> R<V<'ctx>> {
                em.ld_at(Elt::F32, w, vp, em.add(em.mulc(p, v_rs)?, j)?)
            };
            let store_o = |r: IntValue<'ctx>, j: IntValue<'ctx>, w: u32, x: V<'ctx>| -> R<()> {
                let i = em.add(i0, r)?;
                let off = em.mad(em.mad(ob, i, os[2])?, j, os[3])?;
                if os[3] == 1 || w == 1 {
                    return em.st_at(Elt::F32, out, off, x);
                }
                for t in 0..w {
                    let o = em.addc(off, t as i64 * os[3])?;
                    em.st_at(Elt::F32, out, o, em.lane(x, t)?)?;
                }
                Ok(())
            };
            emit_gemm(
                em,
                &Gemm {
                    m,
                    n: dm.dv,
                    k: sk,
                    acc: Elt::F32,
                    load_a: &load_p,
                    load_b: &load_v,
                    store: &store_o,
                },
            )
        };
        let full = rows / mr;
        if full > 0 {
            em.for_n(full, |qb| block(em.add(r0, em.mulc(qb, mr as i64)?)?, mr))?;
        }
        if rows % mr > 0 {
            block(em.addc(r0, (full * mr) as i64)?, rows % mr)?;
        }
        Ok(())
    })
}

/// `w` lanes of an operand whose last-dim stride is `st` (1: consecutive, 0: one value).
fn wide_load<'ctx>(
    em: &Em<'_, 'ctx>,
    e: Elt,
    p: PointerValue<'ctx>,
    off: IntValue<'ctx>,
    st: i64,
    w: u32,
) -> R<V<'ctx>> {
    if st == 0 {
        let s = em.ld_at(e, 1, p, off)?;
        return em.splat(s, w);
    }
    em.ld_at(e, w, p, off)
}

/// Copy a `[rows, cols]` view (`src` strides per dim) into a dense row-major `dst`. A view
/// that is contiguous down its columns (a transpose) moves in L×L register blocks.
fn copy2<'ctx>(
    em: &Em<'_, 'ctx>,
    src: PointerValue<'ctx>,
    st: [i64; 2],
    dst: PointerValue<'ctx>,
    shape: [u64; 2],
) -> R<()> {
    let [rows, cols] = shape;
    if rows * cols == 0 {
        return Ok(());
    }
    let l = em.lanes as u64;
    let (rb, cb) = if st[0] == 1 && st[1] != 1 && l > 1 && l.is_power_of_two() {
        (rows / l, cols / l)
    } else {
        (0, 0)
    };
    if rb > 0 && cb > 0 {
        em.for_n(rb, |bi| {
            let r0 = em.mulc(bi, l as i64)?;
            em.for_n(cb, |bj| {
                let c0 = em.mulc(bj, l as i64)?;
                let mut v = (0..l)
                    .map(|c| {
                        let off = em.mad(r0, em.addc(c0, c as i64)?, st[1])?;
                        em.ld_at(Elt::F32, l as u32, src, off)
                    })
                    .collect::<R<Vec<_>>>()?;
                transpose_regs(em, &mut v)?;
                for (r, x) in v.into_iter().enumerate() {
                    let off = em.add(em.mulc(em.addc(r0, r as i64)?, cols as i64)?, c0)?;
                    em.st_at(Elt::F32, dst, off, x)?;
                }
                Ok(())
            })
        })?;
    }
    // What the blocks did not cover: the last columns of the block rows, then the last rows.
    let scalar = |r_lo: u64, r_hi: u64, c_lo: u64, c_hi: u64| -> R<()> {
        if r_lo >= r_hi || c_lo >= c_hi {
            return Ok(());
        }
        let s0 = em.gep(
            Elt::F32,
            src,
            em.i64c(r_lo as i64 * st[0] + c_lo as i64 * st[1]),
        )?;
        let d0 = em.gep(Elt::F32, dst, em.i64c((r_lo * cols + c_lo) as i64))?;
        let mut strides = vec![st.to_vec(), vec![cols as i64, 1]];
        let sh = coalesce(&[r_hi - r_lo, c_hi - c_lo], &mut strides);
        let ops = [
            Operand {
                ptr: s0,
                elt: Elt::F32,
                strides: strides[0].clone(),
            },
            Operand {
                ptr: d0,
                elt: Elt::F32,
                strides: strides[1].clone(),
            },
        ];
        nest(em, &sh, &ops, None, true, &mut |lv| {
            let x = lv.load(em, 0)?;
            lv.store(em, 1, x)
        })
    };
    scalar(0, rb * l, cb * l, cols)?;
    scalar(rb * l, rows, 0, cols)
}

/// Transpose an L×L block held as L vectors (rows in, columns out) by log2(L) rounds of
/// interleaving: after round k, element (i, j) has moved k bits of the way.
fn transpose_regs<'ctx>(em: &Em<'_, 'ctx>, v: &mut [V<'ctx>]) -> R<()> {
    let l = v.len();
    let h = l / 2;
    let i32t = em.ctx.i32_type();
    let mask = |first: usize| {
        let m: Vec<IntValue> = (0..h)
            .flat_map(|k| [first + k, first + k + l])
            .map(|x| i32t.const_int(x as u64, false))
            .collect();
        inkwell::types::VectorType::const_vector(&m)
    };
    let (lo, hi) = (mask(0), mask(h));
    let mut round = 1;
    while round < l {
        let mut next = Vec::with_capacity(l);
        for i in 0..h {
            let (a, b) = (v[i].into_vector_value(), v[i + h].into_vector_value());
            next.push(em.b.build_shuffle_vector(a, b, lo, "")?.into());
            next.push(em.b.build_shuffle_vector(a, b, hi, "")?.into());
        }
        v.copy_from_slice(&next);
        round *= 2;
    }
    Ok(())
}
