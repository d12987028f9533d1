//! Matrix products: the register-blocked GEMM every product-shaped kernel uses (matmul, linear,
//! the convolution's products, both products of attention, the integer product of qlinear),
//! and the `vit.matmul` / `vit.linear` kernels on top of it.
//!
//! The GEMM computes an MR×NR tile of C in registers — MR rows times NV vectors of the target's
//! f32 width (AVX-512 `avx512_gemm_f32_12x32`, AVX2 `avx2_gemm_f32_6x16`, NEON
//! `neon_gemm_f32_8x12`) — accumulating over k with FMA in order p = 0, 1, …, then hands each
//! finished vector to an epilogue (bias, activation, residual, store). Column tiles are the
//! outer loop, so one B panel (K × NR) stays in L1 while every row tile of the block streams
//! past it. Column remainders use narrower tiles: fewer whole vectors, then half, quarter
//! vectors, then scalar columns; row remainders shorter tiles of balanced heights. Every C element
//! is one chain of products summed in k order, so results do not depend on tiling or on how
//! tasks are spread over threads.
//!
//! B is read either through a closure (any layout) or, when it is a compile-time constant, from
//! the panel layout [`pack_b`] wrote at compile time: each column group the microkernel
//! computes is one contiguous `K × width` block, read front to back. Tasks take blocks of rows ×
//! whole column tiles, so the packed groups are the same whichever task reads them.
//!
//! Under `--precision` a linear's constant weights are 16-bit: fp16 (`BSrc::PackedHalf`) is
//! widened to f32 as it is loaded and runs the f32 tile unchanged; bf16 on AVX512-BF16
//! (`BSrc::Bf16Pairs`) has its own tile, `vdpbf16ps` on k-pairs of bf16 weights and of
//! activations each task rounds into scratch, adding both products of a pair into the f32
//! accumulator. The f32 path is untouched by either.
//!
//! A is broadcast one element at a time (x86 folds the broadcast into the FMA's memory
//! operand). On 4-lane targets (NEON) where A's rows are contiguous along k, the k loop is
//! unrolled by 4 instead: one vector load brings A[r, p .. p+4], and each product takes its
//! lane as FMLA's by-element operand — a 7×12 tile (`neon_gemm_f32_7x12`), so the 7 A vectors,
//! 3 B vectors and 21 accumulators fit the 32 registers. The products of each C element are
//! still summed in k order.

use inkwell::intrinsics::Intrinsic;
use inkwell::types::VectorType;
use inkwell::values::{InstructionOpcode, IntValue, PointerValue};
use vitc_ir::{Activation, DType, Node, Op, TensorType};

use super::elementwise::activation;
use super::emit::{
    bcast_strides, coalesce, dense_strides, shape64, unravel, unsupported, Elt, Em, Split, R, V,
};
use super::{KernelError, KernelTarget, Precision};

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

/// Columns of one full column tile.
pub(crate) fn tile_cols(lanes: u32) -> u64 {
    tile_shape(lanes).1 * lanes.max(1) as u64
}

/// Rows per task chunk of the integer product (qlinear) are a multiple of this, whatever the
/// target's tile height.
pub(crate) const ROW_ALIGN: u64 = 12;

/// A group of columns computed by one shape of tile: `nvv` accumulators of `w` lanes from
/// column `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Group {
    pub start: u64,
    pub nvv: u64,
    pub w: u32,
}

impl Group {
    pub fn width(&self) -> u64 {
        self.nvv * self.w as u64
    }
}

/// How an `n`-column product is cut into column groups: `full` whole tiles of `nr` columns
/// (group `t` starts at `t·nr`), then the remainder groups in order.
pub(crate) fn col_groups(n: u64, lanes: u32) -> (u64, u64, Vec<Group>) {
    let l = lanes.max(1) as u64;
    let (_, nv) = tile_shape(lanes);
    let nr = nv * l;
    let full = n / nr;
    let mut rest = Vec::new();
    let rem = n % nr;
    let vecs = rem / l;
    let mut at = full * nr;
    if vecs > 0 {
        rest.push(Group {
            start: at,
            nvv: vecs,
            w: l as u32,
        });
        at += vecs * l;
    }
    // The last columns in half, quarter … vectors (down to 4 lanes), then scalars.
    let mut sc = rem % l;
    let mut w = l / 2;
    while w >= 4 {
        if sc >= w {
            rest.push(Group {
                start: at,
                nvv: 1,
                w: w as u32,
            });
            at += w;
            sc -= w;
        }
        w /= 2;
    }
    if sc > 0 {
        rest.push(Group {
            start: at,
            nvv: sc,
            w: 1,
        });
    }
    (full, nr, rest)
}

/// `b` (`[k, n]` row-major) in the order the microkernel for `lanes` streams it: each column
/// group (see [`col_groups`]) starting at column `c` with width `gw` is the `k × gw` block at
/// element `c·k`, row-major.
pub(crate) fn pack_b(b: &[f32], k: usize, n: usize, lanes: u32) -> Vec<f32> {
    let mut out = vec![0f32; k * n];
    let (full, nr, rest) = col_groups(n as u64, lanes);
    let all = (0..full)
        .map(|t| Group {
            start: t * nr,
            nvv: nr,
            w: 1,
        })
        .chain(rest);
    for g in all {
        let (c, gw) = (g.start as usize, g.width() as usize);
        for p in 0..k {
            let dst = c * k + p * gw;
            out[dst..dst + gw].copy_from_slice(&b[p * n + c..p * n + c + gw]);
        }
    }
    out
}

/// Where the GEMM reads B.
pub(crate) enum BSrc<'x, 'ctx> {
    /// `B[p, col .. col + w]` as `w` lanes of the accumulator type.
    Load(&'x dyn Fn(IntValue<'ctx>, IntValue<'ctx>, u32) -> R<V<'ctx>>),
    /// The [`pack_b`] layout of a matrix with this GEMM's `k` at `ptr`; the GEMM's column 0 is
    /// column `col0` of it (a multiple of the tile width).
    Packed {
        ptr: PointerValue<'ctx>,
        col0: IntValue<'ctx>,
    },
    /// [`BSrc::Packed`] with 16-bit elements of `precision` (the `Packing::HalfB` layout),
    /// widened to f32 as they are loaded (f32 accumulators only).
    PackedHalf {
        ptr: PointerValue<'ctx>,
        col0: IntValue<'ctx>,
        precision: Precision,
    },
    /// bf16 products on `vdpbf16ps` (f32 accumulators, pairs of k): B in the
    /// [`pack_b_bf16_pairs`] layout at `ptr` (column 0 of this GEMM = its column `col0`), A as
    /// bf16 pairs at `a`, `kp` 32-bit pairs per row, row 0 = this GEMM's row 0.
    Bf16Pairs {
        ptr: PointerValue<'ctx>,
        col0: IntValue<'ctx>,
        a: PointerValue<'ctx>,
        kp: u64,
    },
}

/// Whether `vit.linear` with a constant weight takes the `vdpbf16ps` kernel: `--precision
/// bf16` (allowed only on AVX512-BF16 targets) with 16-, 8- or 4-lane vectors (the 512/256/128
/// forms; the narrower two need AVX512-VL, which every AVX512-BF16 target has).
pub(crate) fn dp_bf16(precision: Precision, lanes: u32) -> bool {
    precision == Precision::Bf16 && matches!(lanes, 4 | 8 | 16)
}

/// `b` (`[k, n]` row-major) for the `vdpbf16ps` microkernel as bf16 bits: the column groups of
/// [`pack_b`], each group of width `gw` starting at column `c` the block at element `2·c·kp`
/// (kp = ⌈k/2⌉), row q of it the `gw` pairs `(b[2q, j], b[2q+1, j])` (0 past the last k).
pub(crate) fn pack_b_bf16_pairs(b: &[f32], k: usize, n: usize, lanes: u32) -> Vec<u16> {
    let kp = k.div_ceil(2);
    let mut out = vec![0u16; 2 * kp * n];
    let (full, nr, rest) = col_groups(n as u64, lanes);
    let all = (0..full)
        .map(|t| Group {
            start: t * nr,
            nvv: nr,
            w: 1,
        })
        .chain(rest);
    let bits = |x: f32| Precision::Bf16.bits(x).unwrap_or(0);
    for g in all {
        let (c, gw) = (g.start as usize, g.width() as usize);
        for q in 0..kp {
            let dst = 2 * c * kp + 2 * q * gw;
            for j in 0..gw {
                for h in 0..2 {
                    let p = 2 * q + h;
                    if p < k {
                        out[dst + 2 * j + h] = bits(b[p * n + c + j]);
                    }
                }
            }
        }
    }
    out
}

/// `v` (f32 lanes) rounded to nearest even as bf16 bits (i16 lanes), exactly as
/// [`Precision::bits`] does for finite values: add 0x7fff plus the lowest kept bit, keep the
/// top half. Integer arithmetic, so the scalar tail needs no conversion libcall.
fn round_bf16<'ctx>(em: &Em<'_, 'ctx>, v: V<'ctx>) -> R<V<'ctx>> {
    let w = Em::width(v);
    let x = em.b.build_bit_cast(v, em.ty(Elt::I32, w), "")?;
    let c = |n: i64| em.ci(Elt::I32, n, w);
    let lsb = em.and(em.bin(InstructionOpcode::LShr, x, c(16))?, c(1))?;
    let r = em.iadd(em.iadd(x, c(0x7fff))?, lsb)?;
    let hi = em.bin(InstructionOpcode::LShr, r, c(16))?;
    em.cast(InstructionOpcode::Trunc, hi, Elt::I16)
}

/// Rows `r0 .. r0 + rows` of the `[.., k]` f32 matrix at `x` as bf16 pairs at `dst`: row r at
/// element `2·kp·r` (i16 units), zero-padded to an even length.
fn convert_rows_bf16<'ctx>(
    em: &Em<'_, 'ctx>,
    x: PointerValue<'ctx>,
    r0: IntValue<'ctx>,
    rows: u64,
    k: u64,
    dst: PointerValue<'ctx>,
) -> R<()> {
    let kp = k.div_ceil(2);
    em.for_n(rows, |r| {
        let src = em.mulc(em.add(r0, r)?, k as i64)?;
        let out = em.mulc(r, 2 * kp as i64)?;
        em.for_n(k / 16, |c| {
            let o = em.mulc(c, 16)?;
            let v = em.ld_at(Elt::F32, 16, x, em.add(src, o)?)?;
            em.st_at(Elt::I16, dst, em.add(out, o)?, round_bf16(em, v)?)
        })?;
        for t in (k / 16) * 16..k {
            let v = em.ld_at(Elt::F32, 1, x, em.addc(src, t as i64)?)?;
            em.st_at(Elt::I16, dst, em.addc(out, t as i64)?, round_bf16(em, v)?)?;
        }
        if k % 2 == 1 {
            em.st_at(Elt::I16, dst, em.addc(out, k as i64)?, em.zero(Elt::I16, 1))?;
        }
        Ok(())
    })
}

/// The `vdpbf16ps` tile: `rows` × `nvv` accumulators of `w` lanes, k in pairs. Each step
/// broadcasts one 32-bit A pair per row (folded into the instruction's `{1to16}` operand) and
/// adds both products of each column pair into its f32 lane. Scalar columns (`w` = 1) widen
/// the pairs and use two FMAs.
#[allow(clippy::too_many_arguments)]
fn micro_bf16<'ctx>(
    em: &Em<'_, 'ctx>,
    g: &Gemm<'_, 'ctx>,
    (ptr, col0, a, kp): (PointerValue<'ctx>, IntValue<'ctx>, PointerValue<'ctx>, u64),
    r0: IntValue<'ctx>,
    rows: usize,
    j0: IntValue<'ctx>,
    nvv: usize,
    w: u32,
) -> R<()> {
    let cols: Vec<IntValue<'ctx>> = (0..nvv)
        .map(|v| em.addc(j0, (v as u32 * w) as i64))
        .collect::<R<_>>()?;
    let rws: Vec<IntValue<'ctx>> = (0..rows).map(|r| em.addc(r0, r as i64)).collect::<R<_>>()?;
    let c = em.add(col0, j0)?;
    let panel = em.gep(Elt::I16, ptr, em.mulc(c, 2 * kp as i64)?)?;
    let gw = nvv as i64 * w as i64;
    let bfv = em.ctx.bf16_type().vec_type(2 * w);
    let dp = if w > 1 {
        let name = format!("llvm.x86.avx512bf16.dpbf16ps.{}", 32 * w);
        let f = Intrinsic::find(&name)
            .and_then(|i| i.get_declaration(em.module, &[]))
            .ok_or_else(|| KernelError::Unsupported {
                op: name.clone(),
                target: "this LLVM".into(),
                why: "intrinsic not found".into(),
            })?;
        Some(f)
    } else {
        None
    };
    let widen = |v: V<'ctx>| widen_half(em, Precision::Bf16, v, 2);
    let a_rows: Vec<IntValue<'ctx>> = rws
        .iter()
        .map(|&r| em.mulc(r, kp as i64))
        .collect::<R<_>>()?;
    let init = vec![em.zero(Elt::F32, w); rows * nvv];
    let accs = em.for_acc(em.i64c(0), em.i64c(kp as i64), 1, &init, |q, cur| {
        let row = em.mulc(q, 2 * gw)?;
        let bs = (0..nvv)
            .map(|v| {
                let b = em.ld_at(
                    Elt::I16,
                    2 * w,
                    panel,
                    em.addc(row, 2 * v as i64 * w as i64)?,
                )?;
                Ok(if w > 1 {
                    em.b.build_bit_cast(b, bfv, "")?
                } else {
                    widen(b)?
                })
            })
            .collect::<R<Vec<V<'ctx>>>>()?;
        let mut next = Vec::with_capacity(cur.len());
        for &ar in &a_rows {
            let at = em.add(ar, q)?;
            let av = match dp {
                Some(_) => {
                    let pair = em.ld_at(Elt::I32, 1, a, at)?;
                    em.b.build_bit_cast(em.splat(pair, w)?, bfv, "")?
                }
                None => widen(em.ld_at(Elt::I16, 2, a, em.mulc(at, 2)?)?)?,
            };
            for &b in &bs {
                let acc = cur[next.len()];
                next.push(match dp {
                    // A second: its broadcast folds into the memory operand ({1to16}).
                    Some(f) => em.call(f, &[acc, b, av])?,
                    None => {
                        let lane = |v: V<'ctx>, i| em.lane(v, i);
                        let t = em.mul_add(lane(av, 0)?, lane(b, 0)?, acc)?;
                        em.mul_add(lane(av, 1)?, lane(b, 1)?, t)?
                    }
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
    /// A[row, p .. p + 4] as 4 lanes, where A's rows are contiguous along k (f32 only): lets
    /// 4-lane targets use the by-element form. `None` where they are not.
    pub load_a4: Option<&'x dyn Fn(IntValue<'ctx>, IntValue<'ctx>) -> R<V<'ctx>>>,
    pub b: BSrc<'x, 'ctx>,
    /// Finish C[row, col .. col + w] from its accumulator.
    pub store: &'x dyn Fn(IntValue<'ctx>, IntValue<'ctx>, u32, V<'ctx>) -> R<()>,
}

/// Emit the loops of `g`: column tiles outside (each B panel is reused by every row tile while it
/// is in cache), row tiles inside, the k loop innermost in registers.
pub(crate) fn emit_gemm<'ctx>(em: &Em<'_, 'ctx>, g: &Gemm<'_, 'ctx>) -> R<()> {
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    let mr = if by_element(em, g) {
        BY_ELEMENT_ROWS
    } else {
        tile_shape(em.lanes).0
    };
    // Row tiles of balanced heights (49 rows: 10, 10, 10, 10, 9 rather than 12 × 4 and 1):
    // a thin last tile would run at a fraction of the speed.
    let tiles = g.m.div_ceil(mr);
    let (base, extra) = (g.m / tiles, g.m % tiles);
    let rows = |grp_start: IntValue<'ctx>, nvv: u64, w: u32| -> R<()> {
        if extra > 0 {
            em.for_n(extra, |rt| {
                micro(
                    em,
                    g,
                    em.mulc(rt, (base + 1) as i64)?,
                    base + 1,
                    grp_start,
                    nvv,
                    w,
                )
            })?;
        }
        let first = (extra * (base + 1)) as i64;
        em.for_n(tiles - extra, |rt| {
            micro(
                em,
                g,
                em.addc(em.mulc(rt, base as i64)?, first)?,
                base,
                grp_start,
                nvv,
                w,
            )
        })
    };
    let (full, nr, rest) = col_groups(g.n, em.lanes);
    let (_, nv) = tile_shape(em.lanes);
    let l = em.lanes.max(1);
    if full > 0 {
        em.for_n(full, |ct| rows(em.mulc(ct, nr as i64)?, nv, l))?;
    }
    for grp in rest {
        rows(em.i64c(grp.start as i64), grp.nvv, grp.w)?;
    }
    Ok(())
}

/// Rows of the by-element tile: 7 A vectors + 3 B vectors + 21 accumulators = 31 registers.
const BY_ELEMENT_ROWS: u64 = 7;

/// Whether `g` takes the 4-lane by-element form (see the module docs).
fn by_element(em: &Em<'_, '_>, g: &Gemm<'_, '_>) -> bool {
    em.lanes == 4 && em.fma && g.acc == Elt::F32 && g.load_a4.is_some() && g.k >= 4
}

/// One register tile: `rows` rows from `r0`, `nvv` accumulators of `w` lanes from column `j0`
/// (the start of its column group).
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
    if let BSrc::Bf16Pairs { ptr, col0, a, kp } = &g.b {
        return micro_bf16(em, g, (*ptr, *col0, *a, *kp), r0, rows, j0, nvv, w);
    }
    let init = vec![em.zero(g.acc, w); rows * nvv];
    let cols: Vec<IntValue<'ctx>> = (0..nvv)
        .map(|v| em.addc(j0, (v as u32 * w) as i64))
        .collect::<R<_>>()?;
    let rws: Vec<IntValue<'ctx>> = (0..rows).map(|r| em.addc(r0, r as i64)).collect::<R<_>>()?;
    // B of this column group: the packed `k × (nvv·w)` panel, or the closure.
    let (read_b, half) = match &g.b {
        BSrc::Packed { ptr, col0 } => {
            let c = em.add(*col0, j0)?;
            (Ok(em.gep(g.acc, *ptr, em.mulc(c, g.k as i64)?)?), None)
        }
        BSrc::PackedHalf {
            ptr,
            col0,
            precision,
        } => {
            let c = em.add(*col0, j0)?;
            let p = em.gep(Elt::I16, *ptr, em.mulc(c, g.k as i64)?)?;
            (Ok(p), Some(*precision))
        }
        BSrc::Load(f) => (Err(*f), None),
        // Taken by `micro_bf16` above.
        BSrc::Bf16Pairs { .. } => {
            return Err(KernelError::Unsupported {
                op: "gemm".into(),
                target: "this tile".into(),
                why: "bf16 pairs reached the f32 tile".into(),
            })
        }
    };
    let gw = nvv as i64 * w as i64;
    let b_row = |p: IntValue<'ctx>| -> R<Vec<V<'ctx>>> {
        match read_b {
            Ok(panel) => {
                let row = em.mulc(p, gw)?;
                (0..nvv)
                    .map(|v| {
                        let at = em.addc(row, v as i64 * w as i64)?;
                        match half {
                            None => em.ld_at(g.acc, w, panel, at),
                            Some(pr) => widen_half(em, pr, em.ld_at(Elt::I16, w, panel, at)?, w),
                        }
                    })
                    .collect()
            }
            Err(f) => cols.iter().map(|&c| f(p, c, w)).collect(),
        }
    };
    // One k step: every row's A element times the B row, into the accumulators.
    let step = |p: IntValue<'ctx>, cur: &[V<'ctx>]| -> R<Vec<V<'ctx>>> {
        let bs = b_row(p)?;
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
    };
    let (quads, a4) = match g.load_a4 {
        Some(f) if by_element(em, g) => (g.k / 4, f),
        _ => (0, g.load_a),
    };
    let mut accs = init;
    if quads > 0 {
        // Four k steps: A[r, p .. p+4] in one vector per row, lane kk for step kk.
        let i32t = em.ctx.i32_type();
        accs = em.for_acc(em.i64c(0), em.i64c(quads as i64 * 4), 4, &accs, |p, cur| {
            let av = rws
                .iter()
                .map(|&r| Ok(a4(r, p)?.into_vector_value()))
                .collect::<R<Vec<_>>>()?;
            let mut cur = cur.to_vec();
            for kk in 0..4u64 {
                let bs = b_row(em.addc(p, kk as i64)?)?;
                let lane = VectorType::const_vector(&vec![i32t.const_int(kk, false); w as usize]);
                let mut next = Vec::with_capacity(cur.len());
                for a in &av {
                    let a: V<'ctx> = if w == 1 {
                        em.lane((*a).into(), kk as u32)?
                    } else {
                        em.b.build_shuffle_vector(*a, *a, lane, "")?.into()
                    };
                    for &b in &bs {
                        next.push(em.mul_add(a, b, cur[next.len()])?);
                    }
                }
                cur = next;
            }
            Ok(cur)
        })?;
    }
    let accs = em.for_acc(
        em.i64c(quads as i64 * 4),
        em.i64c(g.k as i64),
        1,
        &accs,
        |p, cur| step(p, cur),
    )?;
    for (ri, &r) in rws.iter().enumerate() {
        for (v, &c) in cols.iter().enumerate() {
            (g.store)(r, c, w, accs[ri * nvv + v])?;
        }
    }
    Ok(())
}

/// 16-bit weights `v` (`w` lanes of i16 bits) as f32: bf16 is the top half of an f32 (a shift,
/// no rounding); fp16 widens exactly with `fpext` (`fcvtl` on aarch64, `vcvtph2ps` with F16C).
fn widen_half<'ctx>(em: &Em<'_, 'ctx>, pr: Precision, v: V<'ctx>, w: u32) -> R<V<'ctx>> {
    let b = em.b;
    let f32t = em.ty(Elt::F32, w);
    Ok(match pr {
        Precision::Bf16 | Precision::F32 => {
            let i32t = em.ty(Elt::I32, w);
            let wide = if w == 1 {
                let x = b.build_int_z_extend(v.into_int_value(), i32t.into_int_type(), "")?;
                let s = b.build_left_shift(x, em.ctx.i32_type().const_int(16, false), "")?;
                b.build_bit_cast(s, f32t, "")?
            } else {
                let x = b.build_int_z_extend(v.into_vector_value(), i32t.into_vector_type(), "")?;
                let c = em.ctx.i32_type().const_int(16, false);
                let sh = VectorType::const_vector(&vec![c; w as usize]);
                let s = b.build_left_shift(x, sh, "")?;
                b.build_bit_cast(s, f32t, "")?
            };
            wide
        }
        Precision::Fp16 => {
            let ht = em.ctx.f16_type();
            if w == 1 {
                let h = b.build_bit_cast(v, ht, "")?.into_float_value();
                b.build_float_ext(h, f32t.into_float_type(), "")?.into()
            } else {
                let h = b.build_bit_cast(v, ht.vec_type(w), "")?.into_vector_value();
                b.build_float_ext(h, f32t.into_vector_type(), "")?.into()
            }
        }
    })
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

/// Tasks worth using for a product of `flops`: about one per 1.5 MFLOP (a task then runs for
/// tens of microseconds, so dispatch is noise and a thread keeps its B panels in cache), at
/// least two from 1 MFLOP up so that two threads both have work, at most 64.
pub(crate) fn gemm_tasks(flops: u64) -> u64 {
    if flops < 1_000_000 {
        1
    } else {
        (flops / 1_500_000).clamp(2, 64)
    }
}

/// How tasks divide `items` products of `m × n` over `k`: for one product, blocks of rows
/// (any count: the GEMM balances its tile heights) × whole column tiles, chosen by a small cost
/// model. Each task costs its FMAs, its B panel's trip from L2 and a fixed dispatch overhead;
/// tasks are handed out in order to whichever thread is free (as the pool does), and the split
/// with the least total of p × (time to finish on p threads) over p = 1…4 wins, fewer tasks on
/// ties. So one thread pays little for splitting, two threads finish equal blocks together,
/// and three or four (or two with one of them slowed down) still balance.
pub(crate) fn gemm_split(items: u64, m: u64, n: u64, k: u64, lanes: u32) -> Split {
    let (mr, _) = tile_shape(lanes);
    let nr = tile_cols(lanes);
    let want = gemm_tasks(2 * items * m * n * k);
    if items != 1 || want <= 1 || m == 0 || n == 0 {
        return Split::blocks(items, m, n, want, mr, nr);
    }
    const DISPATCH: u64 = 15_000;
    const PER_B_ELEMENT: u64 = 4;
    let (tiles, panels) = (m.div_ceil(mr), n.div_ceil(nr));
    let mut best: Option<(u64, u64, u64, u64)> = None; // (makespan, tasks, rows, cols)
    for rc in 1..=tiles.min(64) {
        let rchunk = m.div_ceil(rc);
        for cc in 1..=panels.min(64 / rc) {
            let cchunk = panels.div_ceil(cc) * nr;
            let (nrb, ncb) = (m.div_ceil(rchunk), n.div_ceil(cchunk));
            if nrb != rc || ncb != cc {
                continue;
            }
            let mut span = 0u64;
            for p in 1..=4usize {
                let mut threads = [0u64; 4];
                for ri in 0..rc {
                    let rows = rchunk.min(m - ri * rchunk);
                    for ci in 0..cc {
                        let cols = cchunk.min(n - ci * cchunk);
                        let cost = 2 * rows * cols * k + PER_B_ELEMENT * cols * k + DISPATCH;
                        let t = (0..p).min_by_key(|&t| threads[t]).unwrap_or(0);
                        threads[t] += cost;
                    }
                }
                span += p as u64 * threads[..p].iter().max().copied().unwrap_or(0);
            }
            let key = (span, rc * cc, rchunk, cchunk);
            if best.is_none_or(|b| (key.0, key.1) < (b.0, b.1)) {
                best = Some(key);
            }
        }
    }
    match best {
        Some((_, _, rows, cols)) => Split::row_col_blocks(m, n, rows, cols),
        None => Split::blocks(items, m, n, want, mr, nr),
    }
}

/// Batch (items), rows and columns of a matmul-family node, and how tasks divide them: blocks of
/// whole column tiles for `lanes`.
pub(crate) fn split(n: &Node, in_tys: &[&TensorType], lanes: u32) -> Option<Split> {
    let out = &n.ty.shape;
    let r = out.len();
    match &n.op {
        Op::MatMul => {
            let a = in_tys.first()?;
            let k = *a.shape.last()? as u64;
            let (m, nn) = (out[r - 2] as u64, out[r - 1] as u64);
            let items: u64 = out[..r - 2].iter().map(|&d| d as u64).product();
            Some(gemm_split(items, m, nn, k, lanes))
        }
        Op::Linear { .. } => {
            let w = in_tys.get(1)?;
            let (k, nn) = (w.shape[0] as u64, w.shape[1] as u64);
            let m: u64 = out[..r - 1].iter().map(|&d| d as u64).product();
            Some(gemm_split(1, m, nn, k, lanes))
        }
        _ => None,
    }
}

/// The B operand (1) of a product, when it is a constant, packed for the microkernel.
pub(crate) fn packing(
    n: &Node,
    in_tys: &[&TensorType],
    operand: usize,
    target: &KernelTarget,
) -> Option<super::Packing> {
    let lanes = target.f32_lanes;
    let b = in_tys.get(1)?;
    if operand != 1 || b.dtype != DType::F32 || b.rank() < 2 || n.ty.dtype != DType::F32 {
        return None;
    }
    let r = b.rank();
    // `--precision`: a linear's weight (always `[K, N]`) stored in 16 bits.
    if target.precision != Precision::F32 && matches!(n.op, Op::Linear { .. }) && r == 2 {
        if dp_bf16(target.precision, lanes) {
            return Some(super::Packing::Bf16PairsB {
                k: b.shape[0],
                n: b.shape[1],
                lanes,
            });
        }
        return Some(super::Packing::HalfB {
            k: b.shape[0],
            n: b.shape[1],
            lanes,
            precision: target.precision,
        });
    }
    Some(super::Packing::GemmB {
        k: b.shape[r - 2],
        n: b.shape[r - 1],
        lanes,
    })
}

/// Per-task scratch of `vit.linear` on the `vdpbf16ps` kernel: the task's rows of x as bf16
/// pairs (4 bytes per pair). 0 for every other product.
pub(crate) fn scratch_bytes(n: &Node, in_tys: &[&TensorType], target: &KernelTarget) -> usize {
    if !dp_bf16(target.precision, target.f32_lanes) || !matches!(n.op, Op::Linear { .. }) {
        return 0;
    }
    let Some(sp) = split(n, in_tys, target.f32_lanes) else {
        return 0;
    };
    let k = in_tys.get(1).map_or(0, |w| w.shape[0] as u64);
    (sp.chunk.min(sp.rows) * k.div_ceil(2) * 4) as usize
}

/// Emit `vit.matmul` or `vit.linear`; `packed[1]`: B is in the [`pack_b`] layout (for a linear
/// under `--precision`, the layout `packing` chose for it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit<'ctx>(
    em: &Em<'_, 'ctx>,
    n: &Node,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    packed: &[bool],
    out: PointerValue<'ctx>,
    scratch: PointerValue<'ctx>,
    task: IntValue<'ctx>,
    target: &str,
    precision: Precision,
) -> R<()> {
    if n.ty.dtype != DType::F32 || in_tys.iter().any(|t| t.dtype != DType::F32) {
        return Err(unsupported(
            n,
            target,
            format!("only f32 products are generated, not {}", n.ty.dtype),
        ));
    }
    let sp =
        split(n, in_tys, em.lanes).ok_or_else(|| unsupported(n, target, "malformed product"))?;
    let b_packed = packed.get(1).copied().unwrap_or(false);
    match &n.op {
        Op::MatMul => matmul(em, in_tys, ins, b_packed, &n.ty, out, task, &sp),
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
            // A packed weight is in 16 bits exactly when `packing` chose `HalfB` for it.
            let half = (b_packed && precision != Precision::F32).then_some(precision);
            let half = half.map(|p| (p, dp_bf16(p, em.lanes).then_some(scratch)));
            linear(
                em,
                in_tys,
                ins,
                b_packed,
                half,
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
    b_packed: bool,
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
        let a_at = |r: IntValue<'ctx>, p: IntValue<'ctx>| em.add(em.mad(abase, r, k as i64)?, p);
        let load_a = |r: IntValue<'ctx>, p: IntValue<'ctx>| em.ld_at(Elt::F32, 1, ap, a_at(r, p)?);
        let load_a4 = |r: IntValue<'ctx>, p: IntValue<'ctx>| em.ld_at(Elt::F32, 4, ap, a_at(r, p)?);
        let load_b = |p: IntValue<'ctx>, j: IntValue<'ctx>, w: u32| -> R<V<'ctx>> {
            let i = em.add(em.mad(bo, p, nn as i64)?, j)?;
            em.ld_at(Elt::F32, w, bp, i)
        };
        let store = |r: IntValue<'ctx>, j: IntValue<'ctx>, _w: u32, v: V<'ctx>| -> R<()> {
            let i = em.add(em.mad(cbase, r, nn as i64)?, j)?;
            em.st_at(Elt::F32, out, i, v)
        };
        let bsrc = if b_packed {
            BSrc::Packed {
                ptr: em.gep(Elt::F32, bp, offs[1])?,
                col0: c0,
            }
        } else {
            BSrc::Load(&load_b)
        };
        emit_gemm(
            em,
            &Gemm {
                m: rows,
                n: cols,
                k,
                acc: Elt::F32,
                load_a: &load_a,
                load_a4: Some(&load_a4),
                b: bsrc,
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
    w_packed: bool,
    half: Option<(Precision, Option<PointerValue<'ctx>>)>,
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
        let a_at =
            |r: IntValue<'ctx>, p: IntValue<'ctx>| em.add(em.mulc(em.add(r0, r)?, k as i64)?, p);
        let load_a = |r: IntValue<'ctx>, p: IntValue<'ctx>| em.ld_at(Elt::F32, 1, xp, a_at(r, p)?);
        let load_a4 = |r: IntValue<'ctx>, p: IntValue<'ctx>| em.ld_at(Elt::F32, 4, xp, a_at(r, p)?);
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
        let bsrc = if let Some((_, Some(a))) = half {
            convert_rows_bf16(em, xp, r0, rows, k, a)?;
            BSrc::Bf16Pairs {
                ptr: wp,
                col0: c0,
                a,
                kp: k.div_ceil(2),
            }
        } else if let Some((precision, None)) = half {
            BSrc::PackedHalf {
                ptr: wp,
                col0: c0,
                precision,
            }
        } else if w_packed {
            BSrc::Packed { ptr: wp, col0: c0 }
        } else {
            BSrc::Load(&load_b)
        };
        emit_gemm(
            em,
            &Gemm {
                m: rows,
                n: cols,
                k,
                acc: Elt::F32,
                load_a: &load_a,
                load_a4: Some(&load_a4),
                b: bsrc,
                store: &store,
            },
        )
    })
}
