//! Matrix products: the register-blocked GEMM every product-shaped kernel uses (matmul, linear,
//! the convolution's im2col product, both products of attention, the integer product of
//! qlinear), and the `vit.matmul` / `vit.linear` kernels on top of it.
//!
//! The GEMM computes an MR×NR tile of C in registers — MR rows times NV vectors of the target's
//! f32 width — accumulating over k with FMA in order p = 0, 1, …, then hands each finished
//! vector to an epilogue (bias, activation, residual, store). Column remainders use narrower
//! tiles: fewer whole vectors, then scalar columns; row remainders a shorter tile. Every C
//! element is one chain of products summed in k order, so results do not depend on tiling or
//! on how tasks are spread over threads. Operands are read where they lie (A through any
//! strides, B by contiguous rows); nothing is packed.

use inkwell::values::{IntValue, PointerValue};
use vitc_ir::{Activation, DType, Node, Op, TensorType};

use super::elementwise::activation;
use super::emit::{
    bcast_strides, coalesce, dense_strides, shape64, unravel, unsupported, want_tasks, Elt, Em,
    Split, R, V,
};

/// Tile shape (MR rows, NV vectors) for a target of `lanes` f32 lanes: as many accumulators as
/// the register file holds with room for the B vectors and the broadcast A value.
pub(crate) fn tile_shape(lanes: u32) -> (u64, u64) {
    match lanes {
        // AVX-512: 32 zmm registers, 24 accumulators.
        16.. => (12, 2),
        // AVX2: 16 ymm registers, 12 accumulators.
        8..=15 => (6, 2),
        // NEON: 32 q registers, 24 accumulators.
        4..=7 => (8, 3),
        _ => (4, 2),
    }
}

/// Rows per task chunk are a multiple of this, so chunks are whole tiles for every tile height
/// above (task counts are planned without knowing the target).
pub(crate) const ROW_ALIGN: u64 = 12;

/// One GEMM job: `C[m×n] = A[m×k]·B[k×n]`, with operand access and the epilogue as closures over
/// job-relative (row, column) indices.
pub(crate) struct Gemm<'x, 'ctx> {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    /// Accumulator element: F32 (FMA) or I32/I64 (exact integer products).
    pub acc: Elt,
    /// A[row, p] as a scalar of the accumulator type.
    pub load_a: &'x dyn Fn(IntValue<'ctx>, IntValue<'ctx>) -> R<V<'ctx>>,
    /// B[p, col .. col + w] as `w` lanes of the accumulator type.
    pub load_b: &'x dyn Fn(IntValue<'ctx>, IntValue<'ctx>, u32) -> R<V<'ctx>>,
    /// Finish C[row, col .. col + w] from its accumulator.
    pub store: &'x dyn Fn(IntValue<'ctx>, IntValue<'ctx>, u32, V<'ctx>) -> R<()>,
}

/// Emit the loops of `g`: column tiles outside (each B panel is reused by every row tile while it
/// is in cache), row tiles inside, the k loop innermost in registers.
pub(crate) fn emit_gemm<'ctx>(em: &Em<'_, 'ctx>, g: &Gemm<'_, 'ctx>) -> R<()> {
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    let l = em.lanes as u64;
    let (mr, nv) = tile_shape(em.lanes);
    // Row tiles of balanced heights (49 rows: 10, 10, 10, 10, 9 rather than 12 × 4 and 1):
    // a thin last tile would run at a fraction of the speed.
    let tiles = g.m.div_ceil(mr);
    let (base, extra) = (g.m / tiles, g.m % tiles);
    let rows = |j0: IntValue<'ctx>, nvv: u64, w: u32| -> R<()> {
        if extra > 0 {
            em.for_n(extra, |rt| {
                micro(em, g, em.mulc(rt, (base + 1) as i64)?, base + 1, j0, nvv, w)
            })?;
        }
        let first = (extra * (base + 1)) as i64;
        em.for_n(tiles - extra, |rt| {
            micro(
                em,
                g,
                em.addc(em.mulc(rt, base as i64)?, first)?,
                base,
                j0,
                nvv,
                w,
            )
        })
    };
    if l == 1 {
        let full = g.n / nv;
        if full > 0 {
            em.for_n(full, |ct| rows(em.mulc(ct, nv as i64)?, nv, 1))?;
        }
        if !g.n.is_multiple_of(nv) {
            rows(em.i64c((full * nv) as i64), g.n % nv, 1)?;
        }
        return Ok(());
    }
    let nr = nv * l;
    let full = g.n / nr;
    if full > 0 {
        em.for_n(full, |ct| rows(em.mulc(ct, nr as i64)?, nv, l as u32))?;
    }
    let rem = g.n % nr;
    let vecs = rem / l;
    if vecs > 0 {
        rows(em.i64c((full * nr) as i64), vecs, l as u32)?;
    }
    // The last columns in half, quarter … vectors (down to 4 lanes), then scalars.
    let mut at = full * nr + vecs * l;
    let mut sc = rem % l;
    let mut w = l / 2;
    while w >= 4 {
        if sc >= w {
            rows(em.i64c(at as i64), 1, w as u32)?;
            at += w;
            sc -= w;
        }
        w /= 2;
    }
    if sc > 0 {
        rows(em.i64c(at as i64), sc, 1)?;
    }
    Ok(())
}

/// One register tile: `rows` rows from `r0`, `nvv` accumulators of `w` lanes from column `j0`.
fn micro<'ctx>(
    em: &Em<'_, 'ctx>,
    g: &Gemm<'_, 'ctx>,
    r0: IntValue<'ctx>,
    rows: u64,
    j0: IntValue<'ctx>,
    nvv: u64,
    w: u32,
) -> R<()> {
    let (rows, nvv) = (rows as usize, nvv as usize);
    let init = vec![em.zero(g.acc, w); rows * nvv];
    let cols: Vec<IntValue<'ctx>> = (0..nvv)
        .map(|v| em.addc(j0, (v as u32 * w) as i64))
        .collect::<R<_>>()?;
    let rws: Vec<IntValue<'ctx>> = (0..rows).map(|r| em.addc(r0, r as i64)).collect::<R<_>>()?;
    let accs = em.for_acc(em.i64c(0), em.i64c(g.k as i64), 1, &init, |p, cur| {
        let bs = cols
            .iter()
            .map(|&c| (g.load_b)(p, c, w))
            .collect::<R<Vec<_>>>()?;
        let mut next = Vec::with_capacity(cur.len());
        for &r in &rws {
            let a = em.splat((g.load_a)(r, p)?, w)?;
            for &b in &bs {
                let acc = cur[next.len()];
                next.push(if g.acc == Elt::F32 {
                    em.mul_add(a, b, acc)?
                } else {
                    em.iadd(em.imul(a, b)?, acc)?
                });
            }
        }
        Ok(next)
    })?;
    for (ri, &r) in rws.iter().enumerate() {
        for (v, &c) in cols.iter().enumerate() {
            (g.store)(r, c, w, accs[ri * nvv + v])?;
        }
    }
    Ok(())
}

/// Where a row of a result-shaped operand starts: the operand is read with `strides` (one per
/// result dim, broadcast dims 0) and rows are the result's leading dims.
pub(crate) struct RowMap {
    shape: Vec<u64>,
    strides: Vec<i64>,
    /// Stride along the last (column) dim: 1, or 0 when broadcast along it.
    pub col: i64,
}

impl RowMap {
    pub fn new(operand: &[usize], result: &[usize]) -> RowMap {
        let osh = shape64(result);
        let st = bcast_strides(&shape64(operand), &osh);
        let r = osh.len().max(1);
        let col = st.last().copied().unwrap_or(0);
        let mut strides = vec![st[..r - 1].to_vec()];
        let shape = coalesce(&osh[..r - 1], &mut strides);
        RowMap {
            shape,
            strides: strides.swap_remove(0),
            col,
        }
    }

    pub fn row<'ctx>(&self, em: &Em<'_, 'ctx>, row: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        if self.shape.len() == 1 {
            return em.mulc(row, self.strides[0]);
        }
        Ok(unravel(em, row, &self.shape, std::slice::from_ref(&self.strides))?[0])
    }

    /// `w` lanes of `ptr` at (row, col).
    pub fn load<'ctx>(
        &self,
        em: &Em<'_, 'ctx>,
        ptr: PointerValue<'ctx>,
        row: IntValue<'ctx>,
        col: IntValue<'ctx>,
        w: u32,
    ) -> R<V<'ctx>> {
        let ro = self.row(em, row)?;
        if self.col == 0 {
            let s = em.ld_at(Elt::F32, 1, ptr, ro)?;
            return em.splat(s, w);
        }
        em.ld_at(Elt::F32, w, ptr, em.add(ro, col)?)
    }
}

/// Columns per task block are a multiple of this (whole column tiles on every target).
pub(crate) const COL_ALIGN: u64 = 64;

/// Batch (items), rows and columns of a matmul-family node, and how tasks divide them.
pub(crate) fn split(n: &Node, in_tys: &[&TensorType]) -> Option<Split> {
    let out = &n.ty.shape;
    let r = out.len();
    match &n.op {
        Op::MatMul => {
            let a = in_tys.first()?;
            let k = *a.shape.last()? as u64;
            let (m, nn) = (out[r - 2] as u64, out[r - 1] as u64);
            let items: u64 = out[..r - 2].iter().map(|&d| d as u64).product();
            let flops = 2 * items * m * k * nn;
            Some(Split::blocks(
                items,
                m,
                nn,
                want_tasks(flops, 64),
                ROW_ALIGN,
                COL_ALIGN,
            ))
        }
        Op::Linear { .. } => {
            let w = in_tys.get(1)?;
            let (k, nn) = (w.shape[0] as u64, w.shape[1] as u64);
            let m: u64 = out[..r - 1].iter().map(|&d| d as u64).product();
            let flops = 2 * m * k * nn;
            Some(Split::blocks(
                1,
                m,
                nn,
                want_tasks(flops, 64),
                ROW_ALIGN,
                COL_ALIGN,
            ))
        }
        _ => None,
    }
}

/// Emit `vit.matmul` or `vit.linear`.
pub(crate) fn emit<'ctx>(
    em: &Em<'_, 'ctx>,
    n: &Node,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    out: PointerValue<'ctx>,
    task: IntValue<'ctx>,
    target: &str,
) -> R<()> {
    if n.ty.dtype != DType::F32 || in_tys.iter().any(|t| t.dtype != DType::F32) {
        return Err(unsupported(
            n,
            target,
            format!("only f32 products are generated, not {}", n.ty.dtype),
        ));
    }
    let sp = split(n, in_tys).ok_or_else(|| unsupported(n, target, "malformed product"))?;
    match &n.op {
        Op::MatMul => matmul(em, in_tys, ins, &n.ty, out, task, &sp),
        Op::Linear {
            activation,
            has_bias,
            has_residual,
        } => {
            let bias = has_bias.then(|| ins[2]);
            let res = has_residual.then(|| {
                let i = 2 + *has_bias as usize;
                (ins[i], in_tys[i])
            });
            linear(
                em,
                in_tys,
                ins,
                bias,
                res,
                *activation,
                &n.ty,
                out,
                task,
                &sp,
            )
        }
        _ => Err(unsupported(n, target, "not a product")),
    }
}

#[allow(clippy::too_many_arguments)]
fn matmul<'ctx>(
    em: &Em<'_, 'ctx>,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    ty: &TensorType,
    out: PointerValue<'ctx>,
    task: IntValue<'ctx>,
    sp: &Split,
) -> R<()> {
    let (a, b) = (in_tys[0], in_tys[1]);
    let (ra, rb, ro) = (a.rank(), b.rank(), ty.rank());
    let k = a.shape[ra - 1] as u64;
    let (m, nn) = (ty.shape[ro - 2] as u64, ty.shape[ro - 1] as u64);
    let batch = shape64(&ty.shape[..ro - 2]);
    // Batch strides of each operand in elements (0 on broadcast dims), then of the result.
    let lead = |t: &TensorType, r: usize| -> Vec<i64> {
        let mat = (t.shape[r - 2] * t.shape[r - 1]) as i64;
        bcast_strides(&shape64(&t.shape[..r - 2]), &batch)
            .into_iter()
            .map(|s| s * mat)
            .collect()
    };
    let mut strides = vec![
        lead(a, ra),
        lead(b, rb),
        dense_strides(&batch)
            .into_iter()
            .map(|s| s * (m * nn) as i64)
            .collect(),
    ];
    let bsh = coalesce(&batch, &mut strides);
    let (ap, bp) = (ins[0], ins[1]);
    sp.emit_blocks(em, task, &|item, r0, rows, c0, cols| {
        let offs = unravel(em, item, &bsh, &strides)?;
        let (ao, bo, co) = (offs[0], em.add(offs[1], c0)?, offs[2]);
        let abase = em.mad(ao, r0, k as i64)?;
        let cbase = em.add(em.mad(co, r0, nn as i64)?, c0)?;
        let load_a = |r: IntValue<'ctx>, p: IntValue<'ctx>| -> R<V<'ctx>> {
            let i = em.add(em.mad(abase, r, k as i64)?, p)?;
            em.ld_at(Elt::F32, 1, ap, i)
        };
        let load_b = |p: IntValue<'ctx>, j: IntValue<'ctx>, w: u32| -> R<V<'ctx>> {
            let i = em.add(em.mad(bo, p, nn as i64)?, j)?;
            em.ld_at(Elt::F32, w, bp, i)
        };
        let store = |r: IntValue<'ctx>, j: IntValue<'ctx>, _w: u32, v: V<'ctx>| -> R<()> {
            let i = em.add(em.mad(cbase, r, nn as i64)?, j)?;
            em.st_at(Elt::F32, out, i, v)
        };
        emit_gemm(
            em,
            &Gemm {
                m: rows,
                n: cols,
                k,
                acc: Elt::F32,
                load_a: &load_a,
                load_b: &load_b,
                store: &store,
            },
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn linear<'ctx>(
    em: &Em<'_, 'ctx>,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    bias: Option<PointerValue<'ctx>>,
    residual: Option<(PointerValue<'ctx>, &TensorType)>,
    act: Activation,
    ty: &TensorType,
    out: PointerValue<'ctx>,
    task: IntValue<'ctx>,
    sp: &Split,
) -> R<()> {
    let w = in_tys[1];
    let (k, nn) = (w.shape[0] as u64, w.shape[1] as u64);
    let (xp, wp) = (ins[0], ins[1]);
    let res = residual.map(|(p, t)| (p, RowMap::new(&t.shape, &ty.shape)));
    sp.emit_blocks(em, task, &|_item, r0, rows, c0, cols| {
        let load_a = |r: IntValue<'ctx>, p: IntValue<'ctx>| -> R<V<'ctx>> {
            let row = em.add(r0, r)?;
            let i = em.add(em.mulc(row, k as i64)?, p)?;
            em.ld_at(Elt::F32, 1, xp, i)
        };
        let load_b = |p: IntValue<'ctx>, j: IntValue<'ctx>, lw: u32| -> R<V<'ctx>> {
            let i = em.add(em.mad(c0, p, nn as i64)?, j)?;
            em.ld_at(Elt::F32, lw, wp, i)
        };
        let store = |r: IntValue<'ctx>, j: IntValue<'ctx>, lw: u32, v: V<'ctx>| -> R<()> {
            let row = em.add(r0, r)?;
            let j = em.add(c0, j)?;
            let mut v = v;
            if let Some(bp) = bias {
                v = em.fadd(v, em.ld_at(Elt::F32, lw, bp, j)?)?;
            }
            v = activation(em, act, v)?;
            if let Some((rp, map)) = &res {
                v = em.fadd(v, map.load(em, *rp, row, j, lw)?)?;
            }
            let i = em.add(em.mulc(row, nn as i64)?, j)?;
            em.st_at(Elt::F32, out, i, v)
        };
        emit_gemm(
            em,
            &Gemm {
                m: rows,
                n: cols,
                k,
                acc: Elt::F32,
                load_a: &load_a,
                load_b: &load_b,
                store: &store,
            },
        )
    })
}
