//! `vit.attention`: softmax(scale·QKᵀ + bias, mask)·V per batch and head, for every operand
//! layout (`bsd`, `bhsd`, `bhds`, `bshd`).
//!
//! Without bias and mask (every ViT's self-attention) the scores are computed transposed: per
//! block of MB queries (MB = one GEMM column tile, 32 on AVX-512) a task copies that block of Q
//! transposed (`[D, MB]`, a few KB), computes `Sᵀ[Sk, MB] = K·Qᵀ` with K read where it lies (as
//! the GEMM's broadcast operand), takes the softmax down each column — lanes run along queries,
//! so max, exp and sum are plain vector code without horizontal reductions — and multiplies
//! `P·V` (P read back transposed as the broadcast operand) with the 1/sum of each query folded
//! into the store. K is never transposed and the score block (`Sk × MB`) stays in L1/L2.
//!
//! With a bias or mask, per (batch, head) a task brings Kᵀ into the `[D, Sk]` row-major form the
//! GEMM reads (a copy into scratch unless K is already `bhds`) and V into `[Sk, D]` (a copy
//! only for `bhds`); then for each block of query rows (one GEMM tile high) it computes the
//! scores block into scratch, applies scale, bias and mask and a max-subtracted softmax per
//! row, and multiplies by V straight into the output.
//!
//! Tasks take whole (batch, head) pairs, or query-row ranges of one pair when there are few.

use inkwell::values::{InstructionOpcode, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};
use vitc_ir::{AttnLayout, DType, Node, Op, TensorType};

use super::emit::{
    bcast_strides, coalesce, nest, shape64, unsupported, Elt, Em, Operand, Split, R, V,
};
use super::gemm::{emit_gemm, gemm_tasks, tile_cols, tile_shape, BSrc, Gemm, ROW_ALIGN};
use super::norm::{fold, softmax_row};
use crate::math;

/// Strides (batch, head, sequence, channel) of an operand in `layout`, and its (seq, head dim).
pub(crate) fn layout(l: AttnLayout, shape: &[usize], heads: usize) -> ([i64; 4], u64, u64) {
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

/// Batch, heads, query and key lengths, and the head dims of Q/K and of V.
pub(crate) struct Dims {
    pub b: u64,
    pub h: u64,
    pub sq: u64,
    pub sk: u64,
    pub d: u64,
    pub dv: u64,
}

/// The dims of either attention op (softmax or linear).
pub(crate) fn dims(n: &Node, in_tys: &[&TensorType]) -> Option<Dims> {
    let (Op::Attention {
        heads,
        q_layout,
        k_layout,
        v_layout,
        ..
    }
    | Op::LinearAttention {
        heads,
        q_layout,
        k_layout,
        v_layout,
        ..
    }) = &n.op
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

/// Whether the transposed-scores kernel computes `n` (no bias, no mask, some keys).
fn transposed(n: &Node, in_tys: &[&TensorType]) -> bool {
    matches!(
        n.op,
        Op::Attention {
            has_bias: false,
            has_mask: false,
            ..
        }
    ) && dims(n, in_tys).is_some_and(|d| d.sk > 0)
}

/// Tasks over (batch·head) items and query rows: blocks of MB queries for the transposed
/// kernel, of whole row tiles for the other.
pub(crate) fn split(n: &Node, in_tys: &[&TensorType], lanes: u32) -> Option<Split> {
    let d = dims(n, in_tys)?;
    let flops = 2 * d.b * d.h * d.sq * d.sk * (d.d + d.dv);
    let align = if transposed(n, in_tys) {
        tile_cols(lanes)
    } else {
        ROW_ALIGN
    };
    Some(Split::new(d.b * d.h, d.sq, gemm_tasks(flops), align))
}

/// Scratch floats: Kᵀ panel (Qᵀ block for the transposed kernel), V panel (bhds only), the
/// score block (with MB reciprocal sums for the transposed kernel).
fn scratch_floats(n: &Node, in_tys: &[&TensorType], lanes: u32) -> Option<(u64, u64, u64)> {
    let Op::Attention {
        k_layout, v_layout, ..
    } = &n.op
    else {
        return None;
    };
    let d = dims(n, in_tys)?;
    let vt = if *v_layout == AttnLayout::Bhds {
        d.sk * d.dv
    } else {
        0
    };
    if transposed(n, in_tys) {
        let mb = tile_cols(lanes);
        return Some((d.d * mb, vt, transposed_scratch(d.sk, d.dv, lanes)));
    }
    let kt = if *k_layout == AttnLayout::Bhds {
        0
    } else {
        d.d * d.sk
    };
    Some((kt, vt, ROW_ALIGN.max(tile_shape(16).0) * d.sk))
}

/// Per-task scratch bytes.
pub(crate) fn scratch_bytes(n: &Node, in_tys: &[&TensorType], lanes: u32) -> usize {
    scratch_floats(n, in_tys, lanes)
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
    let (Some(dm), Some(sp), Some((kt_n, vt_n, _))) = (
        dims(n, in_tys),
        split(n, in_tys, em.lanes),
        scratch_floats(n, in_tys, em.lanes),
    ) else {
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
    if transposed(n, in_tys) {
        let vt = em.gep(Elt::F32, scratch, em.i64c(kt_n as i64))?;
        let sc = em.gep(Elt::F32, scratch, em.i64c((kt_n + vt_n) as i64))?;
        let v_copy = (*v_layout == AttnLayout::Bhds).then_some(vt);
        let ops = Operands {
            q,
            k,
            v,
            out,
            qs,
            ks,
            vs,
            os,
        };
        return transposed_scores(em, &dm, &sp, &ops, *scale as f64, scratch, v_copy, sc, task);
    }
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
            copy2(
                em,
                em.gep(Elt::F32, k, kb)?,
                [ks[3], ks[2]],
                kt,
                [dm.d, sk],
                sk,
            )?;
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
                dm.dv,
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
                    load_a4: None,
                    b: BSrc::Load(&load_b),
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
                    load_a4: None,
                    b: BSrc::Load(&load_v),
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

/// The operands of an attention node and their (batch, head, sequence, channel) strides.
struct Operands<'ctx> {
    q: PointerValue<'ctx>,
    k: PointerValue<'ctx>,
    v: PointerValue<'ctx>,
    out: PointerValue<'ctx>,
    qs: [i64; 4],
    ks: [i64; 4],
    vs: [i64; 4],
    os: [i64; 4],
}

/// Keys per chunk of the transposed kernel: a score chunk (`keys × MB` floats) of at most
/// 128 KB, which stays in L2 while the softmax and `P·V` read it back.
fn key_chunk(lanes: u32) -> u64 {
    ((128 << 10) / (4 * tile_cols(lanes))).max(64)
}

/// Scratch floats of the transposed kernel after Qᵀ and the V copy: the score chunk, then per
/// query the reciprocal sum; with several key chunks also the running max, running sum and
/// rescale factor, and the `MB × Dv` output accumulator.
fn transposed_scratch(sk: u64, dv: u64, lanes: u32) -> u64 {
    let mb = tile_cols(lanes);
    let kc = key_chunk(lanes);
    if sk <= kc {
        sk * mb + mb
    } else {
        kc * mb + 4 * mb + mb * dv
    }
}

/// The kernel without bias and mask (see the module docs): per block of MB queries,
/// `Sᵀ = K·Qᵀ` into scratch, the softmax down its columns, then `P·V` scaled by 1/sum.
/// `qt` holds `D × MB` floats, `sc` what [`transposed_scratch`] says; `v_copy` is V's
/// `[Sk, Dv]` copy when V is `bhds`.
///
/// Keys come in chunks of [`key_chunk`] (one chunk for every ViT's sequence lengths). With
/// several, the softmax is online: each chunk's column maxima update a running maximum, the
/// running sum and the output accumulator are rescaled by exp(old max − new max) (folded into
/// the store of the chunk's `P·V`, as `O·α + P·V`), and the last chunk's store divides by the
/// sum and writes the output — the score matrix never exceeds one chunk.
#[allow(clippy::too_many_arguments)]
fn transposed_scores<'ctx>(
    em: &Em<'_, 'ctx>,
    dm: &Dims,
    sp: &Split,
    o: &Operands<'ctx>,
    scale: f64,
    qt: PointerValue<'ctx>,
    v_copy: Option<PointerValue<'ctx>>,
    sc: PointerValue<'ctx>,
    task: IntValue<'ctx>,
) -> R<()> {
    let mb = tile_cols(em.lanes);
    let l = em.lanes.max(1) as u64;
    let (sk, d, dv) = (dm.sk, dm.d, dm.dv);
    let kc = key_chunk(em.lanes).min(sk);
    let at_f = |k: u64| em.gep(Elt::F32, sc, em.i64c((kc * mb + k * mb) as i64));
    // Per query: 1/sum, running max, running sum, rescale factor; then the accumulator.
    let (inv, mrun, lrun, alpha) = (at_f(0)?, at_f(1)?, at_f(2)?, at_f(3)?);
    let acc_o = at_f(4)?;
    sp.emit(em, task, &|item, r0, rows| {
        let b = em.udivc(item, dm.h)?;
        let hh = em.uremc(item, dm.h)?;
        let base = |st: &[i64; 4]| -> R<IntValue<'ctx>> { em.mad(em.mulc(b, st[0])?, hh, st[1]) };
        let (qb, kb, vb, ob) = (base(&o.qs)?, base(&o.ks)?, base(&o.vs)?, base(&o.os)?);
        // V as an [Sk, Dv] matrix with contiguous rows.
        let (vp, v_rs) = match v_copy {
            Some(vt) => {
                copy2(
                    em,
                    em.gep(Elt::F32, o.v, vb)?,
                    [o.vs[2], o.vs[3]],
                    vt,
                    [sk, dv],
                    dv,
                )?;
                (vt, dv as i64)
            }
            None => (em.gep(Elt::F32, o.v, vb)?, o.vs[2]),
        };
        let kp = em.gep(Elt::F32, o.k, kb)?;
        // One block of `m` queries from i0, computed `wd` wide (m rounded up to whole vectors).
        let block = |i0: IntValue<'ctx>, m: u64, wd: u64| -> R<()> {
            // Qᵀ[d, i] for the block; columns past m are zero (their scores are never read).
            let qsrc = em.gep(Elt::F32, o.q, em.mad(qb, i0, o.qs[2])?)?;
            copy2(em, qsrc, [o.qs[3], o.qs[2]], qt, [d, m], wd)?;
            if wd > m {
                em.for_n(d, |dd| {
                    for c in m..wd {
                        em.st_at(
                            Elt::F32,
                            qt,
                            em.addc(em.mulc(dd, wd as i64)?, c as i64)?,
                            em.cf(0.0, 1),
                        )?;
                    }
                    Ok(())
                })?;
            }
            // The keys j0 .. j0 + kn; `first` and `last` chunk of the block's keys.
            let chunk = |j0: IntValue<'ctx>, kn: u64, first: bool, last: bool| -> R<()> {
                // Sᵀ[j, i] = scale · Σ_d K[j0 + j, d]·Qᵀ[d, i]
                let k_at = |j: IntValue<'ctx>, p: IntValue<'ctx>| {
                    em.mad(em.mulc(em.add(j0, j)?, o.ks[2])?, p, o.ks[3])
                };
                let load_k =
                    |j: IntValue<'ctx>, p: IntValue<'ctx>| em.ld_at(Elt::F32, 1, kp, k_at(j, p)?);
                let load_k4 =
                    |j: IntValue<'ctx>, p: IntValue<'ctx>| em.ld_at(Elt::F32, 4, kp, k_at(j, p)?);
                let load_qt = |p: IntValue<'ctx>, i: IntValue<'ctx>, w: u32| -> R<V<'ctx>> {
                    em.ld_at(Elt::F32, w, qt, em.add(em.mulc(p, wd as i64)?, i)?)
                };
                let store_s = |j: IntValue<'ctx>, i: IntValue<'ctx>, w: u32, x: V<'ctx>| -> R<()> {
                    let x = if scale == 1.0 {
                        x
                    } else {
                        em.fmul(x, em.cf(scale, w))?
                    };
                    em.st_at(Elt::F32, sc, em.add(em.mulc(j, wd as i64)?, i)?, x)
                };
                emit_gemm(
                    em,
                    &Gemm {
                        m: kn,
                        n: wd,
                        k: d,
                        acc: Elt::F32,
                        load_a: &load_k,
                        load_a4: (o.ks[3] == 1).then_some(&load_k4 as _),
                        b: BSrc::Load(&load_qt),
                        store: &store_s,
                    },
                )?;
                softmax_columns(em, sc, kn, wd, first, last, [inv, mrun, lrun, alpha])?;
                // (Σ_j Pᵀ[j, r]·V[j0 + j, :]), rescaled into the accumulator or, for the last
                // chunk, divided by the sum into Out[i0 + r, :].
                let load_p = |r: IntValue<'ctx>, j: IntValue<'ctx>| -> R<V<'ctx>> {
                    em.ld_at(Elt::F32, 1, sc, em.add(em.mulc(j, wd as i64)?, r)?)
                };
                let load_v = |j: IntValue<'ctx>, c: IntValue<'ctx>, w: u32| -> R<V<'ctx>> {
                    em.ld_at(Elt::F32, w, vp, em.add(em.mulc(em.add(j0, j)?, v_rs)?, c)?)
                };
                let per_query = |p: PointerValue<'ctx>, r: IntValue<'ctx>, w: u32| {
                    em.splat(em.ld_at(Elt::F32, 1, p, r)?, w)
                };
                let store_o = |r: IntValue<'ctx>, c: IntValue<'ctx>, w: u32, x: V<'ctx>| -> R<()> {
                    let oi = em.add(em.mulc(r, dv as i64)?, c)?;
                    let x = if first {
                        x
                    } else {
                        let prev = em.ld_at(Elt::F32, w, acc_o, oi)?;
                        em.mul_add(prev, per_query(alpha, r, w)?, x)?
                    };
                    if !last {
                        return em.st_at(Elt::F32, acc_o, oi, x);
                    }
                    let x = em.fmul(x, per_query(inv, r, w)?)?;
                    let i = em.add(i0, r)?;
                    let off = em.mad(em.mad(ob, i, o.os[2])?, c, o.os[3])?;
                    if o.os[3] == 1 || w == 1 {
                        return em.st_at(Elt::F32, o.out, off, x);
                    }
                    for t in 0..w {
                        let p = em.addc(off, t as i64 * o.os[3])?;
                        em.st_at(Elt::F32, o.out, p, em.lane(x, t)?)?;
                    }
                    Ok(())
                };
                emit_gemm(
                    em,
                    &Gemm {
                        m,
                        n: dv,
                        k: kn,
                        acc: Elt::F32,
                        load_a: &load_p,
                        load_a4: None,
                        b: BSrc::Load(&load_v),
                        store: &store_o,
                    },
                )
            };
            let chunks = sk / kc;
            let tail = sk % kc;
            if chunks == 1 && tail == 0 {
                return chunk(em.i64c(0), sk, true, true);
            }
            chunk(em.i64c(0), kc, true, chunks == 1 && tail == 0)?;
            let middle = if tail == 0 { chunks - 2 } else { chunks - 1 };
            if middle > 0 {
                em.for_n(middle, |c| {
                    chunk(em.mulc(em.addc(c, 1)?, kc as i64)?, kc, false, false)
                })?;
            }
            let (j0, kn) = if tail == 0 {
                ((chunks - 1) * kc, kc)
            } else {
                (chunks * kc, tail)
            };
            chunk(em.i64c(j0 as i64), kn, false, true)
        };
        let full = rows / mb;
        if full > 0 {
            em.for_n(full, |qi| {
                block(em.add(r0, em.mulc(qi, mb as i64)?)?, mb, mb)
            })?;
        }
        let rest = rows % mb;
        if rest > 0 {
            block(em.addc(r0, (full * mb) as i64)?, rest, rest.div_ceil(l) * l)?;
        }
        Ok(())
    })
}

/// The softmax step of one key chunk of the transposed kernel: `sc` holds `kn × wd` scores
/// (keys down, queries across), replaced by their exponentials. A whole row of keys (`first`
/// and `last`) leaves 1/sum per query in `st[0]`; a chunk of several updates the running max
/// `st[1]` and sum `st[2]` and leaves the factor that rescales earlier chunks' sums in `st[3]`
/// (and, when `last`, 1/sum in `st[0]`). Vectors run along queries, `l` at a time, all the
/// vectors of a row together.
fn softmax_columns<'ctx>(
    em: &Em<'_, 'ctx>,
    sc: PointerValue<'ctx>,
    kn: u64,
    wd: u64,
    first: bool,
    last: bool,
    st: [PointerValue<'ctx>; 4],
) -> R<()> {
    let l = em.lanes.max(1) as u64;
    let w = l as u32;
    let nvec = (wd / l) as usize;
    let at = |j: IntValue<'ctx>, v: usize| em.addc(em.mulc(j, wd as i64)?, (v as u64 * l) as i64);
    let qv = |v: usize| em.i64c((v as u64 * l) as i64);
    // The column maxima, two rows per step into separate accumulators (max does not care about
    // order). A NaN score never wins `x > m`, so NaNs are skipped as f32::max skips them, with
    // one max instruction.
    let pick = |m: V<'ctx>, x: V<'ctx>| -> R<V<'ctx>> {
        em.select(em.fcmp(FloatPredicate::OGT, x, m)?, x, m)
    };
    let ninf = vec![em.cf(f64::NEG_INFINITY, w); 2 * nvec];
    let mut mx = em.for_acc(em.i64c(0), em.i64c((kn / 2) as i64), 1, &ninf, |jp, cur| {
        let j = em.mulc(jp, 2)?;
        let j1 = em.addc(j, 1)?;
        // Accumulator k·nvec + v takes vector v of row j + k.
        cur.iter()
            .enumerate()
            .map(|(a, &m)| {
                let row = if a < nvec { j } else { j1 };
                pick(m, em.ld_at(Elt::F32, w, sc, at(row, a % nvec)?)?)
            })
            .collect()
    })?;
    if kn % 2 == 1 {
        let j = em.i64c(kn as i64 - 1);
        for (v, m) in mx.iter_mut().take(nvec).enumerate() {
            *m = pick(*m, em.ld_at(Elt::F32, w, sc, at(j, v)?)?)?;
        }
    }
    let mut mx: Vec<V<'ctx>> = (0..nvec)
        .map(|v| pick(mx[v], mx[nvec + v]))
        .collect::<R<_>>()?;
    let single = first && last;
    let mut rescale = Vec::with_capacity(nvec);
    if !first {
        for (v, m) in mx.iter_mut().enumerate() {
            let old = em.ld_at(Elt::F32, w, st[1], qv(v))?;
            let new = pick(*m, old)?;
            rescale.push(math::exp_neg(em, em.fsub(old, new)?)?);
            *m = new;
        }
    }
    let zero = vec![em.cf(0.0, w); nvec];
    let sums = em.for_acc(em.i64c(0), em.i64c(kn as i64), 1, &zero, |j, cur| {
        (0..nvec)
            .map(|v| {
                let p = at(j, v)?;
                let x = em.fsub(em.ld_at(Elt::F32, w, sc, p)?, mx[v])?;
                let e = math::exp_neg(em, x)?;
                em.st_at(Elt::F32, sc, p, e)?;
                em.fadd(cur[v], e)
            })
            .collect()
    })?;
    for (v, &s) in sums.iter().enumerate() {
        let sum = if first {
            s
        } else {
            let old = em.ld_at(Elt::F32, w, st[2], qv(v))?;
            em.mul_add(old, rescale[v], s)?
        };
        if !single {
            em.st_at(Elt::F32, st[1], qv(v), mx[v])?;
            em.st_at(Elt::F32, st[2], qv(v), sum)?;
        }
        if !first {
            em.st_at(Elt::F32, st[3], qv(v), rescale[v])?;
        }
        if last {
            em.st_at(Elt::F32, st[0], qv(v), em.fdiv(em.cf(1.0, w), sum)?)?;
        }
    }
    Ok(())
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

/// Copy a `[rows, cols]` view (`src` strides per dim) into row-major `dst` with rows `ld`
/// elements apart. A view that is contiguous down its columns (a transpose) moves in L×L
/// register blocks.
fn copy2<'ctx>(
    em: &Em<'_, 'ctx>,
    src: PointerValue<'ctx>,
    st: [i64; 2],
    dst: PointerValue<'ctx>,
    shape: [u64; 2],
    ld: u64,
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
                    let off = em.add(em.mulc(em.addc(r0, r as i64)?, ld as i64)?, c0)?;
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
        let d0 = em.gep(Elt::F32, dst, em.i64c((r_lo * ld + c_lo) as i64))?;
        let mut strides = vec![st.to_vec(), vec![ld as i64, 1]];
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
