//! Int8 GEMM microkernels for `vit.qlinear`: int8 weights packed at compile time, activations
//! quantized once per task into scratch as s8, i32 accumulators in registers, and an epilogue
//! that removes the zero-point terms and hands the exact integer sum of the interpreter to the
//! caller's rescale. One scheme per instruction set:
//!
//! - `x86_avx512vnni_gemm_i8_12x32` (`_6x16` where vectors are 8 lanes): `vpdpbusd` on
//!   512/256/128 bits, weights as the unsigned operand (`w + 128` for i8 weights), the
//!   activation's four bytes broadcast as the signed one; `x86_avxvnni_gemm_i8_6x16` is the
//!   same on VEX `vpdpbusd` ymm.
//! - `neon_sdot_gemm_i8_6x16`: `sdot`, s8 × s8, the same layout with 4 lanes.
//! - `neon_smmla_gemm_i8_8x8`: `smmla`, 2×8 by 8×2 blocks (row pairs of A, column pairs of B).
//! - no dot-product instruction: `x86_pmaddwd_gemm_i8_*` (AVX2, AVX-512F) widens both operands
//!   to i16 and sums product pairs into i32 with `vpmaddwd`; `neon_smull_gemm_i8_6x8` (plain
//!   NEON) multiplies into i16 with `smull` and adds pairs into i32 with `sadalp`. Both keep
//!   two i32 partial sums per column and fold them in the epilogue.
//!
//! Every scheme sums, for each output, the products of the stored operands a_s = q_x + aoff
//! (s8) and b_s = w + boff (u8 for VNNI, s8 otherwise) over k, wrapping in i32; with
//! Za = zp_x + aoff and Zb = zp_w + boff, the interpreter's Σ (q_x − zp_x)(w − zp_w) is
//! Σ a_s·b_s − Zb·Σ a_s − Za·Σ b_s + K·Za·Zb. The column sums Σ b_s are computed when packing
//! (stored after the panels), the row sums Σ a_s while quantizing. The result is exact
//! whenever the true sum fits i32 (the caller only takes this path then): i32 wrap-around in
//! the intermediate terms cancels. K is padded with zeros to the instruction's group of 4 (8
//! for smmla) and N to 4 columns; the padding contributes nothing to any sum.
//!
//! This module must not round: it produces integers; scaling belongs to the caller.

use inkwell::intrinsics::Intrinsic;
use inkwell::types::{BasicTypeEnum, VectorType};
use inkwell::values::{InstructionOpcode, IntValue, PointerValue};

use super::emit::{Elt, Em, R, V};
use super::{KernelError, KernelTarget};

/// The int8 dot-product instructions a target has (what `vit.qlinear` runs on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Int8Isa {
    /// x86 without VNNI: `vpmaddwd` on i16-widened operands (SSE2, AVX2, AVX-512BW).
    X86Madd,
    /// aarch64 without DotProd: `smull` into i16, `sadalp` into i32.
    NeonWiden,
    /// VEX-encoded `vpdpbusd` on 256/128-bit vectors (AVX-VNNI: Alder Lake, Zen 5).
    AvxVnni,
    /// EVEX `vpdpbusd` on 512/256/128-bit vectors (AVX512-VNNI + VL: Cascade Lake, Zen 4).
    Avx512Vnni,
    /// `sdot` (FEAT_DotProd).
    NeonDot,
    /// `smmla` (FEAT_I8MM).
    NeonI8mm,
}

/// The microkernel family and vector width a qlinear is generated with; it fixes the packed
/// weight layout, so it is part of [`super::Packing::Int8B`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scheme {
    pub isa: Int8Isa,
    /// i32 lanes of one accumulator vector's worth of columns (4, 8 or 16).
    pub lanes: u32,
}

/// A column group one shape of tile computes: `nvv` vectors of `w` columns from `start`, of
/// which the first `valid` exist (fewer only in the zero-padded last group of 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Group {
    start: u64,
    nvv: u64,
    w: u32,
    valid: u64,
}

impl Scheme {
    /// The scheme for `t`, or `None` where vectors are too narrow for any (scalar test targets).
    pub fn for_target(t: &KernelTarget) -> Option<Scheme> {
        let l = t.f32_lanes;
        let lanes = match t.int8 {
            Int8Isa::Avx512Vnni | Int8Isa::X86Madd => l.min(16),
            Int8Isa::AvxVnni => l.min(8),
            Int8Isa::NeonDot | Int8Isa::NeonI8mm | Int8Isa::NeonWiden => 4,
        };
        if !matches!(lanes, 4 | 8 | 16) {
            return None;
        }
        Some(Scheme { isa: t.int8, lanes })
    }

    /// The name of the microkernel, after `{isa}_{op}_{dtype}_{mr}x{nr}`.
    pub fn kernel_name(&self) -> String {
        let (mr, nv) = self.tile();
        let isa = match self.isa {
            Int8Isa::X86Madd => "x86_pmaddwd",
            Int8Isa::NeonWiden => "neon_smull",
            Int8Isa::AvxVnni => "x86_avxvnni",
            Int8Isa::Avx512Vnni => "x86_avx512vnni",
            Int8Isa::NeonDot => "neon_sdot",
            Int8Isa::NeonI8mm => "neon_smmla",
        };
        format!("{isa}_gemm_i8_{mr}x{}", nv * self.lanes as u64)
    }

    /// k per instruction group: 4 bytes per lane for the dot products, 8 for smmla.
    fn group(&self) -> u64 {
        if self.isa == Int8Isa::NeonI8mm {
            8
        } else {
            4
        }
    }

    /// K padded to whole groups.
    pub fn kp(&self, k: u64) -> u64 {
        k.div_ceil(self.group()) * self.group()
    }

    /// Register tile: MR rows × NV vectors of `lanes` columns.
    fn tile(&self) -> (u64, u64) {
        match (self.isa, self.lanes) {
            // 4 row pairs × 4 column pairs: 16 accumulators, 4 A and 4 B vectors.
            (Int8Isa::NeonI8mm, _) => (8, 2),
            // 24 zmm accumulators, 2 B vectors, the A broadcast folded into vpdpbusd.
            (Int8Isa::Avx512Vnni, 16) => (12, 2),
            // 16 registers: 12 accumulators, 2 B vectors, 1 broadcast.
            (Int8Isa::Avx512Vnni | Int8Isa::AvxVnni, 8) => (6, 2),
            // Accumulators hold i32 pairs (2 registers per vector of columns): 24 zmm, or 8 of
            // the 16 ymm/xmm.
            (Int8Isa::X86Madd, 16) => (6, 2),
            (Int8Isa::X86Madd, _) => (4, 1),
            // 24 q accumulators (pairs), 2 B vectors, the A broadcast and 2 product registers.
            (Int8Isa::NeonWiden, _) => (6, 2),
            // 4 lanes (NEON; x86 xmm in tests): 24 accumulators + 4 B + 1 A of 32 registers.
            _ => (6, 4),
        }
    }

    /// Columns of a full column tile.
    pub fn nr(&self) -> u64 {
        self.tile().1 * self.lanes as u64
    }

    /// Rows per row tile.
    pub fn mr(&self) -> u64 {
        self.tile().0
    }

    /// Whether B is stored unsigned (vpdpbusd multiplies u8 by s8).
    fn b_unsigned(&self) -> bool {
        matches!(self.isa, Int8Isa::AvxVnni | Int8Isa::Avx512Vnni)
    }

    /// What packing adds to a weight: b_s = w + boff.
    fn b_offset(&self, w_unsigned: bool) -> i64 {
        match (self.b_unsigned(), w_unsigned) {
            (true, false) => 128,
            (false, true) => -128,
            _ => 0,
        }
    }

    /// Columns the packed B holds (N padded to 4).
    fn npad(n: u64) -> u64 {
        n.div_ceil(4) * 4
    }

    /// Rows the A scratch holds for a block of `rows` (smmla works on row pairs).
    fn rows_pad(&self, rows: u64) -> u64 {
        if self.isa == Int8Isa::NeonI8mm {
            rows.div_ceil(2) * 2
        } else {
            rows
        }
    }

    /// Scratch bytes for a block of up to `rows` rows: A as s8 then one i32 row sum per row.
    pub fn scratch_bytes(&self, rows: u64, k: u64) -> u64 {
        let rp = self.rows_pad(rows);
        rp * self.kp(k) + 4 * rp
    }

    /// How `n` columns are cut into groups: `full` tiles of `nr` (tile `t` at `t·nr`), then the
    /// remainder groups in order: whole vectors, half and quarter vectors down to 4 lanes, then
    /// the last 1–3 columns as one zero-padded group of 4.
    fn groups(&self, n: u64) -> (u64, u64, Vec<Group>) {
        let l = self.lanes as u64;
        let nr = self.nr();
        let full = n / nr;
        let rem = n % nr;
        let mut rest = vec![];
        let mut at = full * nr;
        let vecs = rem / l;
        if vecs > 0 {
            rest.push(Group {
                start: at,
                nvv: vecs,
                w: l as u32,
                valid: vecs * l,
            });
            at += vecs * l;
        }
        let mut sc = rem % l;
        let mut w = l / 2;
        while w >= 4 {
            if sc >= w {
                rest.push(Group {
                    start: at,
                    nvv: 1,
                    w: w as u32,
                    valid: w,
                });
                at += w;
                sc -= w;
            }
            w /= 2;
        }
        if sc > 0 {
            rest.push(Group {
                start: at,
                nvv: 1,
                w: 4,
                valid: sc,
            });
        }
        (full, nr, rest)
    }

    /// Every group of `n` columns, full tiles included.
    fn all_groups(&self, n: u64) -> Vec<Group> {
        let (full, nr, rest) = self.groups(n);
        let (_, nv) = self.tile();
        (0..full)
            .map(|t| Group {
                start: t * nr,
                nvv: nv,
                w: self.lanes,
                valid: nr,
            })
            .chain(rest)
            .collect()
    }

    /// The packed weights: `w` (`[k, n]` row-major integers of an i8 or u8 tensor) as the
    /// panels the microkernel streams — the group at column `c` is the block of bytes from
    /// `c·kp`, by k group, then column (pair), then the group's k bytes — followed by the i32
    /// column sums of the stored bytes (little-endian, `npad` of them).
    pub fn pack_b(&self, w: &[i64], k: usize, n: usize, w_unsigned: bool) -> Vec<u8> {
        let (ku, nu) = (k as u64, n as u64);
        let kp = self.kp(ku) as usize;
        let npad = Self::npad(nu) as usize;
        let boff = self.b_offset(w_unsigned);
        let g = self.group() as usize;
        let val = |p: usize, c: usize| -> i64 {
            if p < k && c < n {
                w[p * n + c] + boff
            } else {
                0
            }
        };
        let mut out = vec![0u8; npad * kp + 4 * npad];
        for grp in self.all_groups(nu) {
            let (c0, gw) = (grp.start as usize, (grp.nvv * grp.w as u64) as usize);
            let base = c0 * kp;
            for p in 0..kp {
                let (q, t) = (p / g, p % g);
                for j in 0..gw {
                    let at = if g == 8 {
                        base + q * gw * 8 + (j / 2) * 16 + (j % 2) * 8 + t
                    } else {
                        base + q * gw * 4 + j * 4 + t
                    };
                    out[at] = val(p, c0 + j) as u8;
                }
            }
        }
        for c in 0..npad {
            let s: i64 = (0..k).map(|p| val(p, c)).sum();
            let at = npad * kp + 4 * c;
            out[at..at + 4].copy_from_slice(&(s as i32).to_le_bytes());
        }
        out
    }
}

/// One task's block of a qlinear on the int8 path.
pub(crate) struct Job<'x, 'ctx> {
    pub scheme: Scheme,
    /// Rows and columns of the block (static), K, and N of the whole product.
    pub rows: u64,
    pub cols: u64,
    pub k: u64,
    pub n: u64,
    /// The block's first row and column.
    pub r0: IntValue<'ctx>,
    pub c0: IntValue<'ctx>,
    /// The f32 activations, `[M, K]` row-major.
    pub x: PointerValue<'ctx>,
    /// f32 lanes → i32 lanes of q − zp_x (the quantized value less its zero point), exact.
    pub quantize: &'x dyn Fn(V<'ctx>) -> R<V<'ctx>>,
    pub x_zp: i64,
    pub x_unsigned: bool,
    /// The weights in [`Scheme::pack_b`]'s layout.
    pub w: PointerValue<'ctx>,
    pub w_unsigned: bool,
    /// Weight zero points: `N` (per column) or one, of the weight's type.
    pub wz: PointerValue<'ctx>,
    pub wz_per_col: bool,
    pub scratch: PointerValue<'ctx>,
    /// Finish C[row, col .. col + w] (block-relative) from the exact sums (`w` i32 lanes).
    pub store: &'x dyn Fn(IntValue<'ctx>, IntValue<'ctx>, u32, V<'ctx>) -> R<()>,
}

impl Job<'_, '_> {
    fn za(&self) -> i64 {
        self.x_zp - if self.x_unsigned { 128 } else { 0 }
    }

    fn kp(&self) -> u64 {
        self.scheme.kp(self.k)
    }

    /// Byte offset of the row sums in scratch.
    fn rowsum_at(&self) -> u64 {
        self.scheme.rows_pad(self.rows) * self.kp()
    }
}

/// Emit the block: quantize its rows into scratch, then every column group × row tile.
pub(crate) fn emit<'ctx>(em: &Em<'_, 'ctx>, j: &Job<'_, 'ctx>) -> R<()> {
    if j.rows == 0 || j.cols == 0 {
        return Ok(());
    }
    pack_a(em, j)?;
    let s = j.scheme;
    let (full, nr, rest) = s.groups(j.cols);
    let (_, nv) = s.tile();
    if full > 0 {
        em.for_n(full, |ct| {
            let g0 = em.mulc(ct, nr as i64)?;
            col_group(em, j, g0, nv, s.lanes, nr)
        })?;
    }
    for g in rest {
        col_group(em, j, em.i64c(g.start as i64), g.nvv, g.w, g.valid)?;
    }
    Ok(())
}

/// Runs of balanced tiles covering `units` in tiles of at most `max`: (count, height) in order.
fn runs(units: u64, max: u64) -> Vec<(u64, u64)> {
    let tiles = units.div_ceil(max.max(1));
    if tiles == 0 {
        return vec![];
    }
    let (base, extra) = (units / tiles, units % tiles);
    [(extra, base + 1), (tiles - extra, base)]
        .into_iter()
        .filter(|&(c, _)| c > 0)
        .collect()
}

/// All row tiles of one column group.
fn col_group<'ctx>(
    em: &Em<'_, 'ctx>,
    j: &Job<'_, 'ctx>,
    g0: IntValue<'ctx>,
    nvv: u64,
    w: u32,
    valid: u64,
) -> R<()> {
    let s = j.scheme;
    let kp = j.kp();
    let panel = em.gep(Elt::I8, j.w, em.mulc(em.add(j.c0, g0)?, kp as i64)?)?;
    let g = Tile {
        panel,
        g0,
        nvv,
        w,
        valid,
    };
    if s.isa == Int8Isa::NeonI8mm {
        // Tiles of row pairs; when the block has an odd row count, the last tile's last pair
        // holds the scratch's zero row, which is computed but not stored.
        let pairs = j.rows.div_ceil(2);
        let odd = j.rows % 2 == 1;
        let rs = runs(pairs, s.mr() / 2);
        let mut at = 0u64;
        for (i, &(count, h)) in rs.iter().enumerate() {
            let last_run = i + 1 == rs.len();
            let looped = if last_run && odd { count - 1 } else { count };
            if looped > 0 {
                em.for_n(looped, |t| {
                    let p0 = em.addc(em.mulc(t, h as i64)?, at as i64)?;
                    tile_mm(em, j, &g, p0, h, 2 * h)
                })?;
            }
            if last_run && odd {
                let p0 = em.i64c((at + looped * h) as i64);
                tile_mm(em, j, &g, p0, h, 2 * h - 1)?;
            }
            at += count * h;
        }
        return Ok(());
    }
    let mut at = 0u64;
    for (count, h) in runs(j.rows, s.mr()) {
        em.for_n(count, |t| {
            let r = em.addc(em.mulc(t, h as i64)?, at as i64)?;
            tile_dot(em, j, &g, r, h)
        })?;
        at += count * h;
    }
    Ok(())
}

/// A column group's panel and shape.
struct Tile<'ctx> {
    panel: PointerValue<'ctx>,
    /// First column of the group, block-relative.
    g0: IntValue<'ctx>,
    nvv: u64,
    w: u32,
    valid: u64,
}

/// `n` lanes of `v` picked by `idx`.
fn shuffle<'ctx>(em: &Em<'_, 'ctx>, a: V<'ctx>, b: V<'ctx>, idx: &[u32]) -> R<V<'ctx>> {
    let i32t = em.ctx.i32_type();
    let mask: Vec<IntValue> = idx
        .iter()
        .map(|&i| i32t.const_int(i as u64, false))
        .collect();
    Ok(em
        .b
        .build_shuffle_vector(
            a.into_vector_value(),
            b.into_vector_value(),
            VectorType::const_vector(&mask),
            "",
        )?
        .into())
}

fn bitcast<'ctx>(em: &Em<'_, 'ctx>, v: V<'ctx>, e: Elt, w: u32) -> R<V<'ctx>> {
    Ok(em.b.build_bit_cast(v, em.ty(e, w), "")?)
}

/// Call intrinsic `name` whose overload types are `tys` (none for a fixed signature).
fn call_intr<'ctx>(
    em: &Em<'_, 'ctx>,
    name: &str,
    tys: &[BasicTypeEnum<'ctx>],
    args: &[V<'ctx>],
) -> R<V<'ctx>> {
    let f = Intrinsic::find(name)
        .and_then(|i| i.get_declaration(em.module, tys))
        .ok_or_else(|| KernelError::Unsupported {
            op: name.to_string(),
            target: "this LLVM".into(),
            why: "intrinsic not found".into(),
        })?;
    em.call(f, args)
}

/// Whether the scheme keeps two i32 partial sums per column (pairs of products) until the
/// epilogue.
fn pairs(s: Scheme) -> bool {
    matches!(s.isa, Int8Isa::X86Madd | Int8Isa::NeonWiden)
}

/// Lanes of the accumulator for `w` columns.
fn acc_lanes(s: Scheme, w: u32) -> u32 {
    if pairs(s) {
        2 * w
    } else {
        w
    }
}

/// acc += the products of `a` (A's 4 bytes for each lane) and `b` (4 k bytes per column).
fn dot<'ctx>(em: &Em<'_, 'ctx>, s: Scheme, acc: V<'ctx>, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
    let w = Em::width(b) / 4;
    match s.isa {
        Int8Isa::Avx512Vnni | Int8Isa::AvxVnni => {
            // vpdpbusd(src, u8 operand, s8 operand): B is the unsigned one.
            let name = format!("llvm.x86.avx512.vpdpbusd.{}", 32 * w);
            call_intr(em, &name, &[], &[acc, b, a])
        }
        Int8Isa::NeonDot => call_intr(
            em,
            "llvm.aarch64.neon.sdot",
            &[em.ty(Elt::I32, w), em.ty(Elt::I8, 4 * w)],
            &[acc, a, b],
        ),
        Int8Isa::X86Madd => {
            // vpmaddwd: i16 × i16, adjacent products summed into i32 (exact for i8 inputs),
            // on the native width: each half of B's 4w bytes (w/2 columns) is one call.
            let a16 = em.cast(InstructionOpcode::SExt, a, Elt::I16)?;
            let b16 = em.cast(InstructionOpcode::SExt, b, Elt::I16)?;
            let name = match w {
                16 => "llvm.x86.avx512.pmaddw.d.512",
                8 => "llvm.x86.avx2.pmadd.wd",
                _ => "llvm.x86.sse2.pmadd.wd",
            };
            let half = |v: V<'ctx>, h: u32| -> R<V<'ctx>> {
                let idx: Vec<u32> = (0..2 * w).map(|i| h * 2 * w + i).collect();
                shuffle(em, v, v, &idx)
            };
            let lo = call_intr(em, name, &[], &[half(a16, 0)?, half(b16, 0)?])?;
            let hi = call_intr(em, name, &[], &[half(a16, 1)?, half(b16, 1)?])?;
            let both: Vec<u32> = (0..2 * w).collect();
            em.iadd(acc, shuffle(em, lo, hi, &both)?)
        }
        Int8Isa::NeonWiden => {
            // smull: 8 i8 × i8 products in i16 (exact); saddlp + add (sadalp): adjacent pairs
            // into i32. Columns 0–1 are B's low 8 bytes, 2–3 its high 8.
            let v8h = em.ty(Elt::I16, 8);
            let v4 = em.ty(Elt::I32, 4);
            let part = |v: V<'ctx>, h: u32| -> R<V<'ctx>> {
                let idx: Vec<u32> = (0..8).map(|i| 8 * h + i).collect();
                shuffle(em, v, v, &idx)
            };
            let mut out = vec![];
            for h in 0..2 {
                let p = call_intr(
                    em,
                    "llvm.aarch64.neon.smull",
                    &[v8h],
                    &[part(a, h)?, part(b, h)?],
                )?;
                out.push(call_intr(em, "llvm.aarch64.neon.saddlp", &[v4, v8h], &[p])?);
            }
            let both: Vec<u32> = (0..8).collect();
            em.iadd(acc, shuffle(em, out[0], out[1], &both)?)
        }
        Int8Isa::NeonI8mm => Err(KernelError::Unsupported {
            op: "vit.qlinear".into(),
            target: "neon-i8mm".into(),
            why: "smmla tiles are not dot-product tiles".into(),
        }),
    }
}

/// The accumulator of `w` columns folded to one i32 sum per column.
fn fold<'ctx>(em: &Em<'_, 'ctx>, s: Scheme, acc: V<'ctx>, w: u32) -> R<V<'ctx>> {
    if !pairs(s) {
        return Ok(acc);
    }
    let even: Vec<u32> = (0..w).map(|i| 2 * i).collect();
    let odd: Vec<u32> = (0..w).map(|i| 2 * i + 1).collect();
    em.iadd(shuffle(em, acc, acc, &even)?, shuffle(em, acc, acc, &odd)?)
}

/// One register tile of a dot-product scheme: rows `r .. r + h` (block-relative) of group `g`.
fn tile_dot<'ctx>(
    em: &Em<'_, 'ctx>,
    j: &Job<'_, 'ctx>,
    g: &Tile<'ctx>,
    r: IntValue<'ctx>,
    h: u64,
) -> R<()> {
    let s = j.scheme;
    let (kp, w, nvv) = (j.kp(), g.w, g.nvv as usize);
    let gw = g.nvv * w as u64;
    let init = vec![em.zero(Elt::I32, acc_lanes(s, w)); h as usize * nvv];
    let rows: Vec<IntValue<'ctx>> = (0..h)
        .map(|i| em.mulc(em.addc(r, i as i64)?, kp as i64))
        .collect::<R<_>>()?;
    let accs = em.for_acc(em.i64c(0), em.i64c((kp / 4) as i64), 1, &init, |q, cur| {
        let bq = em.mulc(q, 4 * gw as i64)?;
        let bs = (0..nvv)
            .map(|v| {
                let at = em.addc(bq, (v as u64 * 4 * w as u64) as i64)?;
                em.ld(Elt::I8, 4 * w, em.gep(Elt::I8, g.panel, at)?)
            })
            .collect::<R<Vec<_>>>()?;
        let q4 = em.mulc(q, 4)?;
        let mut next = Vec::with_capacity(cur.len());
        for &ro in &rows {
            let a = em.ld(Elt::I32, 1, em.gep(Elt::I8, j.scratch, em.add(ro, q4)?)?)?;
            let av = bitcast(em, em.splat(a, w)?, Elt::I8, 4 * w)?;
            for b in &bs {
                next.push(dot(em, s, cur[next.len()], av, *b)?);
            }
        }
        Ok(next)
    })?;
    epilogue(em, j, g, r, h, &|ri, v| {
        fold(em, s, accs[ri as usize * nvv + v as usize], w)
    })
}

/// One smmla tile: row pairs `p0 .. p0 + hp` (block-relative), of which the first `rows` rows
/// are stored.
fn tile_mm<'ctx>(
    em: &Em<'_, 'ctx>,
    j: &Job<'_, 'ctx>,
    g: &Tile<'ctx>,
    p0: IntValue<'ctx>,
    hp: u64,
    rows: u64,
) -> R<()> {
    let kp = j.kp();
    let cps = 2 * g.nvv as usize;
    let gw = g.nvv * 4;
    let init = vec![em.zero(Elt::I32, 4); hp as usize * cps];
    let pairs: Vec<IntValue<'ctx>> = (0..hp)
        .map(|i| em.mulc(em.addc(p0, i as i64)?, 2 * kp as i64))
        .collect::<R<_>>()?;
    let v4 = em.ty(Elt::I32, 4);
    let v16 = em.ty(Elt::I8, 16);
    let accs = em.for_acc(em.i64c(0), em.i64c((kp / 8) as i64), 1, &init, |o, cur| {
        let bo = em.mulc(o, 8 * gw as i64)?;
        let bs = (0..cps)
            .map(|c| {
                em.ld(
                    Elt::I8,
                    16,
                    em.gep(Elt::I8, g.panel, em.addc(bo, 16 * c as i64)?)?,
                )
            })
            .collect::<R<Vec<_>>>()?;
        let o16 = em.mulc(o, 16)?;
        let mut next = Vec::with_capacity(cur.len());
        for &po in &pairs {
            let a = em.ld(Elt::I8, 16, em.gep(Elt::I8, j.scratch, em.add(po, o16)?)?)?;
            for b in &bs {
                next.push(call_intr(
                    em,
                    "llvm.aarch64.neon.smmla",
                    &[v4, v16],
                    &[cur[next.len()], a, *b],
                )?);
            }
        }
        Ok(next)
    })?;
    // acc[pair][cp] = [r0·c0, r0·c1, r1·c0, r1·c1]: a row of 4 columns from two of them.
    let r = em.mulc(p0, 2)?;
    epilogue(em, j, g, r, rows, &|ri, v| {
        let (p, half) = ((ri / 2) as usize, ri % 2);
        let lo = accs[p * cps + 2 * v as usize];
        let hi = accs[p * cps + 2 * v as usize + 1];
        let idx: [u32; 4] = if half == 0 {
            [0, 1, 4, 5]
        } else {
            [2, 3, 6, 7]
        };
        shuffle(em, lo, hi, &idx)
    })
}

/// Remove the zero-point terms from the sums of rows `r .. r + h` of group `g` (`acc(row, v)`:
/// vector `v`'s i32 sums for tile row `row`) and hand them to the store.
fn epilogue<'ctx>(
    em: &Em<'_, 'ctx>,
    j: &Job<'_, 'ctx>,
    g: &Tile<'ctx>,
    r: IntValue<'ctx>,
    h: u64,
    acc: &dyn Fn(u64, u64) -> R<V<'ctx>>,
) -> R<()> {
    let s = j.scheme;
    let kp = j.kp();
    let npad = Scheme::npad(j.n);
    let colsums = em.gep(Elt::I8, j.w, em.i64c((npad * kp) as i64))?;
    let rowsums = em.gep(Elt::I8, j.scratch, em.i64c(j.rowsum_at() as i64))?;
    let (za, boff, k) = (j.za(), s.b_offset(j.w_unsigned), j.k as i64);
    let ext = if j.w_unsigned {
        InstructionOpcode::ZExt
    } else {
        InstructionOpcode::SExt
    };
    // Zb for `lw` columns from block column `col`.
    let zb = |col: IntValue<'ctx>, lw: u32| -> R<V<'ctx>> {
        let z = if j.wz_per_col {
            em.ld_at(Elt::I8, lw, j.wz, em.add(j.c0, col)?)?
        } else {
            em.splat(em.ld_at(Elt::I8, 1, j.wz, em.i64c(0))?, lw)?
        };
        em.iadd(em.cast(ext, z, Elt::I32)?, em.ci(Elt::I32, boff, lw))
    };
    let rs: Vec<V<'ctx>> = (0..h)
        .map(|i| em.ld_at(Elt::I32, 1, rowsums, em.addc(r, i as i64)?))
        .collect::<R<_>>()?;
    let full = g.valid == g.nvv * g.w as u64;
    for v in 0..g.nvv {
        let col = em.addc(g.g0, (v * g.w as u64) as i64)?;
        let lw = if full { g.w } else { 1 };
        let cols: Vec<u32> = if full {
            vec![0]
        } else {
            (0..g.valid as u32).collect()
        };
        for &lane in &cols {
            let c = em.addc(col, lane as i64)?;
            // Za·(K·Zb − Σb) per column, then − Zb·Σa per row; wrapping i32 throughout.
            let zbv = zb(c, lw)?;
            let cs = em.ld_at(Elt::I32, lw, colsums, em.add(j.c0, c)?)?;
            let corr = em.imul(
                em.ci(Elt::I32, za, lw),
                em.isub(em.imul(em.ci(Elt::I32, k, lw), zbv)?, cs)?,
            )?;
            for (i, &rsum) in rs.iter().enumerate() {
                let a = acc(i as u64, v)?;
                let a = if full { a } else { em.lane(a, lane)? };
                let sum = em.isub(em.iadd(a, corr)?, em.imul(zbv, em.splat(rsum, lw)?)?)?;
                (j.store)(em.addc(r, i as i64)?, c, lw, sum)?;
            }
        }
    }
    Ok(())
}

/// Quantize the block's rows of x into scratch as s8 (a_s = q − zp + Za) in the scheme's A
/// layout, zero the K padding (and smmla's pad row), and store each row's Σ a_s.
fn pack_a<'ctx>(em: &Em<'_, 'ctx>, j: &Job<'_, 'ctx>) -> R<()> {
    let s = j.scheme;
    let (k, kp) = (j.k, j.kp());
    let mm = s.isa == Int8Isa::NeonI8mm;
    // smmla's A: row pairs, by 8 k, the pair's two rows of 8 bytes each.
    let vw: u32 = if mm { 8 } else { em.lanes.max(4) };
    let kmain = k / vw as u64 * vw as u64;
    let pstride = if mm { 2 } else { 1 };
    let row_base = |r: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        if mm {
            let pair = em.mulc(em.udivc(r, 2)?, 2 * kp as i64)?;
            em.add(pair, em.mulc(em.uremc(r, 2)?, 8)?)
        } else {
            em.mulc(r, kp as i64)
        }
    };
    // Byte offset of k index `p` ≥ kmain within its row (kmain is a multiple of 8).
    let tail_at = |p: u64| -> u64 {
        if mm {
            2 * kmain + (p - kmain) / 8 * 16 + (p - kmain) % 8
        } else {
            p
        }
    };
    let za = j.za();
    let rowsums = em.gep(Elt::I8, j.scratch, em.i64c(j.rowsum_at() as i64))?;
    let quant = |v: V<'ctx>| -> R<V<'ctx>> {
        let t = (j.quantize)(v)?;
        em.iadd(t, em.ci(Elt::I32, za, Em::width(t)))
    };
    em.for_n(j.rows, |r| {
        let src = em.gep(Elt::F32, j.x, em.mulc(em.add(j.r0, r)?, k as i64)?)?;
        let base = row_base(r)?;
        let zero = [em.zero(Elt::I32, vw)];
        let vs = em.for_acc(
            em.i64c(0),
            em.i64c(kmain as i64),
            vw as u64,
            &zero,
            |p, cur| {
                let a = quant(em.ld_at(Elt::F32, vw, src, p)?)?;
                let dst = em.add(base, em.mulc(p, pstride)?)?;
                let b = em.cast(InstructionOpcode::Trunc, a, Elt::I8)?;
                em.st(em.gep(Elt::I8, j.scratch, dst)?, b)?;
                Ok(vec![em.iadd(cur[0], a)?])
            },
        )?;
        let mut sum = em.hfold(vs[0], |a, b| em.iadd(a, b))?;
        for p in kmain..kp {
            let dst = em.addc(base, tail_at(p) as i64)?;
            let b = if p < k {
                let a = quant(em.ld_at(Elt::F32, 1, src, em.i64c(p as i64))?)?;
                sum = em.iadd(sum, a)?;
                em.cast(InstructionOpcode::Trunc, a, Elt::I8)?
            } else {
                em.zero(Elt::I8, 1)
            };
            em.st(em.gep(Elt::I8, j.scratch, dst)?, b)?;
        }
        em.st_at(Elt::I32, rowsums, r, sum)
    })?;
    if mm && j.rows % 2 == 1 {
        // The pad row of the last pair: zeros (and a zero sum), so its products are defined.
        let base = row_base(em.i64c(j.rows as i64))?;
        em.for_range(em.i64c(0), em.i64c(kp as i64), 8, |p| {
            let dst = em.add(base, em.mulc(p, 2)?)?;
            em.st(em.gep(Elt::I8, j.scratch, dst)?, em.zero(Elt::I8, 8))
        })?;
        em.st_at(
            Elt::I32,
            rowsums,
            em.i64c(j.rows as i64),
            em.zero(Elt::I32, 1),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme(isa: Int8Isa, lanes: u32) -> Scheme {
        Scheme { isa, lanes }
    }

    /// The names docs/targets.md gives each target's kernel.
    #[test]
    fn each_target_names_its_kernel() {
        for (name, kernel) in [
            ("x86_64-avx512-vnni", "x86_avx512vnni_gemm_i8_12x32"),
            ("x86_64-avx2-vnni", "x86_avxvnni_gemm_i8_6x16"),
            ("x86_64-avx512", "x86_pmaddwd_gemm_i8_6x32"),
            ("x86_64-avx2", "x86_pmaddwd_gemm_i8_4x8"),
            ("aarch64-neon", "neon_smull_gemm_i8_6x8"),
            ("aarch64-neon-fp16", "neon_smull_gemm_i8_6x8"),
            ("aarch64-neon-dotprod", "neon_sdot_gemm_i8_6x16"),
            ("aarch64-neon-i8mm", "neon_smmla_gemm_i8_8x8"),
        ] {
            let t = crate::target::resolve(name)
                .expect("target")
                .kernel_target();
            let s = Scheme::for_target(&t).expect("a scheme");
            assert_eq!(s.kernel_name(), kernel, "{name}");
        }
    }

    /// The AVX-VNNI target cannot run on a machine without the VEX form (Zen 4 has only the
    /// EVEX one): its code is checked to be VEX `vpdpbusd` on ymm, with no EVEX register.
    #[test]
    fn avx_vnni_is_vex_encoded() {
        use vitc_ir::{DType, Data, Module, Op, Tensor, TensorType};
        let mut m = Module::new("q");
        let x = m.add_input("x", TensorType::new(vec![9, 40], DType::F32));
        let w = m.add_constant("w", Tensor::new(vec![40, 21], Data::I8(vec![3; 840])));
        let ws = m.add_constant("ws", Tensor::f32(vec![21], vec![0.01; 21]));
        let wz = m.add_constant("wz", Tensor::new(vec![21], Data::I8(vec![1; 21])));
        let op = Op::QLinear {
            x_scale: 0.1,
            x_zero_point: 0,
            x_type: DType::I8,
            has_bias: false,
        };
        let y = m.add(op, vec![x, w, ws, wz], "q").expect("typed");
        m.outputs = vec![("y".into(), y)];
        let opts = crate::CompileOptions {
            target: "x86_64-avx2-vnni".into(),
            ..Default::default()
        };
        let c = crate::compile(&m, &opts).expect("compiles");
        let asm = String::from_utf8(c.assembly().expect("assembly")).expect("text");
        assert!(asm.contains("{vex}\tvpdpbusd\t%ymm"), "no VEX vpdpbusd");
        assert!(
            !asm.contains("zmm") && !asm.contains("%xmm16"),
            "EVEX registers"
        );
    }

    #[test]
    fn groups_cover_the_columns_once() {
        for s in [
            scheme(Int8Isa::Avx512Vnni, 16),
            scheme(Int8Isa::AvxVnni, 8),
            scheme(Int8Isa::NeonDot, 4),
            scheme(Int8Isa::NeonI8mm, 4),
            scheme(Int8Isa::X86Madd, 8),
            scheme(Int8Isa::X86Madd, 16),
            scheme(Int8Isa::NeonWiden, 4),
        ] {
            for n in [1u64, 3, 4, 5, 17, 31, 32, 33, 50, 64, 77, 300] {
                let gs = s.all_groups(n);
                let mut at = 0;
                for g in &gs {
                    assert_eq!(g.start, at, "{s:?} n={n}");
                    assert!(g.valid <= g.nvv * g.w as u64);
                    at += g.valid;
                }
                assert_eq!(at, n, "{s:?} n={n}");
                let last = gs.last().expect("groups");
                assert!(last.start + last.nvv * last.w as u64 <= Scheme::npad(n));
            }
        }
    }

    #[test]
    fn packed_columns_sum_what_they_hold() {
        let (k, n) = (7usize, 5usize);
        let w: Vec<i64> = (0..k * n).map(|i| (i as i64 * 37) % 256 - 128).collect();
        for s in [
            scheme(Int8Isa::Avx512Vnni, 16),
            scheme(Int8Isa::NeonI8mm, 4),
        ] {
            let b = s.pack_b(&w, k, n, false);
            let (kp, npad) = (s.kp(k as u64) as usize, 8usize);
            assert_eq!(b.len(), npad * kp + 4 * npad);
            for c in 0..npad {
                let at = npad * kp + 4 * c;
                let got = i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                let want: i64 = if c < n {
                    (0..k).map(|p| w[p * n + c] + s.b_offset(false)).sum()
                } else {
                    0
                };
                assert_eq!(got as i64, want, "{s:?} column {c}");
            }
        }
    }
}
