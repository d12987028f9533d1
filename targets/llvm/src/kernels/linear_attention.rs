//! `vit.linear_attention`: EfficientViT's ReLU linear attention,
//! `(relu(Q)·(relu(K)ᵀ·V)) / (relu(Q)·Σ relu(K) + eps)` per batch and head, for every operand
//! layout.
//!
//! Per (batch, head) a task copies V into scratch as `[Sk, Dv + 1]` with a last column of ones,
//! so that one GEMM `KV = relu(K)ᵀ·[V, 1]` (K read where it lies, the ReLU applied as it is
//! loaded) gives both the `[Dqk, Dv]` context and, in its last column, the key sums. A second
//! GEMM `relu(Q)·KV` gives each query's numerators and denominator in one `[Sq, Dv + 1]` row,
//! and a last pass divides and stores in the output layout. This is the export's own order of
//! operations (V padded with ones, one matmul each side, then slice and divide), so the sums
//! round as the interpreter's do. The work is O(S·D²), against O(S²·D) for softmax attention.
//!
//! Tasks take whole (batch, head) pairs: KV is a reduction over every key, and splitting a
//! pair's queries would recompute it per task.

use inkwell::values::{IntValue, PointerValue};
use vitc_ir::{DType, Node, Op, TensorType};

use super::attention::{dims, layout, Dims};
use super::emit::{unsupported, want_tasks, Elt, Em, Split, R, V};
use super::gemm::{emit_gemm, BSrc, Gemm};

/// Whole (batch, head) items per task.
pub(crate) fn split(n: &Node, in_tys: &[&TensorType]) -> Option<Split> {
    let d = dims(n, in_tys)?;
    let items = d.b * d.h;
    let flops = 2 * items * (d.sq + d.sk) * d.d * (d.dv + 1);
    // Rows aligned to the whole sequence: items are never cut.
    Some(Split::new(items, d.sq, want_tasks(flops, 64), d.sq.max(1)))
}

/// Scratch floats: V with its ones column `[Sk, Dv+1]`, KV `[D, Dv+1]`, the query rows'
/// products `[Sq, Dv+1]`.
fn scratch_floats(d: &Dims) -> (u64, u64, u64) {
    let w = d.dv + 1;
    (d.sk * w, d.d * w, d.sq * w)
}

pub(crate) fn scratch_bytes(n: &Node, in_tys: &[&TensorType]) -> usize {
    dims(n, in_tys)
        .map(|d| {
            let (a, b, c) = scratch_floats(&d);
            ((a + b + c) * 4) as usize
        })
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
    let Op::LinearAttention {
        heads,
        eps,
        q_layout,
        k_layout,
        v_layout,
        out_layout,
    } = &n.op
    else {
        return Err(unsupported(n, target, "not linear attention"));
    };
    if in_tys[..3].iter().any(|t| t.dtype != DType::F32) {
        return Err(unsupported(
            n,
            target,
            "only f32 linear attention is generated",
        ));
    }
    let (Some(dm), Some(sp)) = (dims(n, in_tys), split(n, in_tys)) else {
        return Err(unsupported(n, target, "malformed linear attention"));
    };
    if dm.b * dm.h == 0 || dm.sq == 0 || dm.dv == 0 {
        return Ok(());
    }
    let h = *heads;
    let (qs, _, _) = layout(*q_layout, &in_tys[0].shape, h);
    let (ks, _, _) = layout(*k_layout, &in_tys[1].shape, h);
    let (vs, _, _) = layout(*v_layout, &in_tys[2].shape, h);
    let (os, _, _) = layout(*out_layout, &n.ty.shape, h);
    let (q, k, v) = (ins[0], ins[1], ins[2]);
    let w = dm.dv + 1;
    let (v1_n, kv_n, _) = scratch_floats(&dm);
    let v1 = scratch;
    let kv = em.gep(Elt::F32, scratch, em.i64c(v1_n as i64))?;
    let ctx = em.gep(Elt::F32, scratch, em.i64c((v1_n + kv_n) as i64))?;
    let zero = em.cf(0.0, 1);

    sp.emit(em, task, &|item, _, _| {
        let b = em.udivc(item, dm.h)?;
        let hh = em.uremc(item, dm.h)?;
        let base = |st: &[i64; 4]| -> R<IntValue<'ctx>> { em.mad(em.mulc(b, st[0])?, hh, st[1]) };
        let (qb, kb, vb, ob) = (base(&qs)?, base(&ks)?, base(&vs)?, base(&os)?);
        // [V, 1] as rows of Dv + 1 floats.
        em.for_n(dm.sk, |s| {
            let row = em.mulc(s, w as i64)?;
            let src = em.mad(vb, s, vs[2])?;
            em.for_n(dm.dv, |j| {
                let x = em.ld_at(Elt::F32, 1, v, em.mad(src, j, vs[3])?)?;
                em.st_at(Elt::F32, v1, em.add(row, j)?, x)
            })?;
            em.st_at(Elt::F32, v1, em.addc(row, dm.dv as i64)?, em.cf(1.0, 1))
        })?;
        // KV[i, j] = Σₛ relu(K[s, i])·V1[s, j]
        let load_kt = |i: IntValue<'ctx>, s: IntValue<'ctx>| -> R<V<'ctx>> {
            let off = em.mad(em.mad(kb, s, ks[2])?, i, ks[3])?;
            em.fmax(em.ld_at(Elt::F32, 1, k, off)?, zero)
        };
        let load_v1 = |s: IntValue<'ctx>, j: IntValue<'ctx>, lanes: u32| -> R<V<'ctx>> {
            em.ld_at(Elt::F32, lanes, v1, em.add(em.mulc(s, w as i64)?, j)?)
        };
        let store_kv = |i: IntValue<'ctx>, j: IntValue<'ctx>, _: u32, x: V<'ctx>| -> R<()> {
            em.st_at(Elt::F32, kv, em.add(em.mulc(i, w as i64)?, j)?, x)
        };
        emit_gemm(
            em,
            &Gemm {
                m: dm.d,
                n: w,
                k: dm.sk,
                acc: Elt::F32,
                load_a: &load_kt,
                load_a4: None,
                b: BSrc::Load(&load_v1),
                store: &store_kv,
            },
        )?;
        // C[s, j] = Σᵢ relu(Q[s, i])·KV[i, j]
        let load_q = |s: IntValue<'ctx>, i: IntValue<'ctx>| -> R<V<'ctx>> {
            let off = em.mad(em.mad(qb, s, qs[2])?, i, qs[3])?;
            em.fmax(em.ld_at(Elt::F32, 1, q, off)?, zero)
        };
        let load_kv = |i: IntValue<'ctx>, j: IntValue<'ctx>, lanes: u32| -> R<V<'ctx>> {
            em.ld_at(Elt::F32, lanes, kv, em.add(em.mulc(i, w as i64)?, j)?)
        };
        let store_c = |s: IntValue<'ctx>, j: IntValue<'ctx>, _: u32, x: V<'ctx>| -> R<()> {
            em.st_at(Elt::F32, ctx, em.add(em.mulc(s, w as i64)?, j)?, x)
        };
        emit_gemm(
            em,
            &Gemm {
                m: dm.sq,
                n: w,
                k: dm.d,
                acc: Elt::F32,
                load_a: &load_q,
                load_a4: None,
                b: BSrc::Load(&load_kv),
                store: &store_c,
            },
        )?;
        // out[s, j] = C[s, j] / (C[s, Dv] + eps)
        em.for_n(dm.sq, |s| {
            let row = em.mulc(s, w as i64)?;
            let den = em.ld_at(Elt::F32, 1, ctx, em.addc(row, dm.dv as i64)?)?;
            let den = em.fadd(den, em.cf(*eps as f64, 1))?;
            let dst = em.mad(ob, s, os[2])?;
            em.for_n(dm.dv, |j| {
                let x = em.ld_at(Elt::F32, 1, ctx, em.add(row, j)?)?;
                em.st_at(Elt::F32, out, em.mad(dst, j, os[3])?, em.fdiv(x, den)?)
            })
        })
    })
}
