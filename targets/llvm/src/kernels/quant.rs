//! Quantization kernels: `vit.quantize` (round half to even, saturate), `vit.dequantize`, per
//! tensor or per channel, and `vit.qlinear` (quantize x, integer GEMM against i8/u8 weights,
//! rescale and add bias).
//!
//! The arithmetic is the interpreter's to the bit: the division and rounding happen in f32, the
//! zero-point shift and the clamp as the interpreter's f64 would give them (in f32 where every
//! value involved is a small integer, so exact), the integer products are exact, and qlinear's
//! rescale is done in f64 before the one rounding to f32.
//!
//! qlinear runs the int8 microkernels of `int8` (VNNI, SDOT, SMMLA or widening pairs; weights
//! packed when compiling) whenever the weights are a constant and the exact sum fits i32;
//! otherwise the generic GEMM with i32 or i64 accumulators and weights read as they are.

use inkwell::values::{InstructionOpcode, IntValue, PointerValue};
use inkwell::FloatPredicate;
use vitc_ir::{DType, Node, Op, TensorType};

use super::elementwise::{ew_emit, ew_plan, int_range, signed, EwPlan};
use super::emit::{dense_strides, nest, unsupported, want_tasks, Elt, Em, Operand, Split, R, V};
use super::gemm::{emit_gemm, BSrc, Gemm, ROW_ALIGN};
use super::int8::{self, Scheme};
use super::{KernelTarget, Packing};

/// Columns per qlinear task block are a multiple of this (whole column tiles on every target).
const COL_ALIGN: u64 = 64;

/// Quantize/dequantize nest: x viewed as [outer, channels, inner] with scale and zero point
/// indexed by the channel.
pub(crate) fn plan(n: &Node, in_tys: &[&TensorType]) -> Option<EwPlan> {
    let axis = match &n.op {
        Op::Quantize { axis, .. } | Op::Dequantize { axis } => *axis,
        _ => return None,
    };
    let x = in_tys.first()?;
    let (outer, size, inner) = match axis {
        Some(a) => (
            x.shape[..a].iter().product::<usize>() as u64,
            x.shape[a] as u64,
            x.shape[a + 1..].iter().product::<usize>() as u64,
        ),
        None => (x.numel() as u64, 1, 1),
    };
    let view = [outer, size, inner];
    let xs = dense_strides(&view);
    let qs = vec![0, 1, 0];
    Some(ew_plan(&view, vec![xs, qs.clone(), qs], true))
}

/// An integer value of dtype `d` widened to i64 (zero-extended when unsigned).
fn to_i64<'ctx>(em: &Em<'_, 'ctx>, d: DType, v: V<'ctx>) -> R<V<'ctx>> {
    if Elt::of(d) == Elt::I64 {
        return Ok(v);
    }
    let op = if signed(d) {
        InstructionOpcode::SExt
    } else {
        InstructionOpcode::ZExt
    };
    em.cast(op, v, Elt::I64)
}

/// saturate(round_half_even(x / scale) + zp) as i64 lanes: the interpreter's quantize_one.
fn quantize_value<'ctx>(
    em: &Em<'_, 'ctx>,
    x: V<'ctx>,
    scale: V<'ctx>,
    zp64: V<'ctx>,
    range: (i64, i64),
) -> R<V<'ctx>> {
    let w = Em::width(x);
    let r = em.intr("llvm.roundeven", &[em.fdiv(x, scale)?])?;
    let v = em.fadd(em.cast(InstructionOpcode::FPExt, r, Elt::F64)?, zp64)?;
    let (lo, hi) = (em.cd(range.0 as f64, w), em.cd(range.1 as f64, w));
    let v = em.select(em.fcmp(FloatPredicate::OLT, v, lo)?, lo, v)?;
    let v = em.select(em.fcmp(FloatPredicate::OGT, v, hi)?, hi, v)?;
    // NaN survives the clamp and converts to 0 (Rust's `as`).
    let v = em.select(em.fcmp(FloatPredicate::UNO, v, v)?, em.cd(0.0, w), v)?;
    em.cast(InstructionOpcode::FPToSI, v, Elt::I64)
}

/// q − zp for f32 lanes, as integer-valued f32: round_half_even(x / scale) clamped to
/// [lo − zp, hi − zp], NaN → −zp. The same integers as [`quantize_value`] less the zero point
/// (r + zp ≶ bound ⇔ r ≶ bound − zp, and the bounds, zp and the clamped result are integers below
/// 2^24, exact in f32), at f32 cost. `zp` (f32 lanes) must be an integer with |range − zp| < 2^24.
fn quantize_shifted<'ctx>(
    em: &Em<'_, 'ctx>,
    x: V<'ctx>,
    scale: V<'ctx>,
    zp: V<'ctx>,
    range: (i64, i64),
) -> R<V<'ctx>> {
    let w = Em::width(x);
    let r = em.intr("llvm.roundeven", &[em.fdiv(x, scale)?])?;
    let lo = em.fsub(em.cf(range.0 as f64, w), zp)?;
    let hi = em.fsub(em.cf(range.1 as f64, w), zp)?;
    let t = em.select(em.fcmp(FloatPredicate::OLT, r, lo)?, lo, r)?;
    let t = em.select(em.fcmp(FloatPredicate::OGT, t, hi)?, hi, t)?;
    // NaN survives the clamp; the interpreter turns it into 0, i.e. −zp here.
    em.select(em.fcmp(FloatPredicate::UNO, t, t)?, em.fneg(zp)?, t)
}

/// Whether integers of `d` (and zero points of it) are small enough for [`quantize_shifted`]
/// and i32 differences.
fn small_int(d: DType) -> bool {
    matches!(d, DType::I8 | DType::U8)
}

/// An i8/u8 value widened to i32 (zero-extended when unsigned).
fn to_i32<'ctx>(em: &Em<'_, 'ctx>, d: DType, v: V<'ctx>) -> R<V<'ctx>> {
    let op = if signed(d) {
        InstructionOpcode::SExt
    } else {
        InstructionOpcode::ZExt
    };
    em.cast(op, v, Elt::I32)
}

/// Emit quantize or dequantize.
pub(crate) fn emit_qdq<'ctx>(
    em: &Em<'_, 'ctx>,
    n: &Node,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    out: PointerValue<'ctx>,
    task: IntValue<'ctx>,
    target: &str,
) -> R<()> {
    let p = plan(n, in_tys).ok_or_else(|| unsupported(n, target, "not a quantization op"))?;
    let (xd, sd, zd) = (in_tys[0].dtype, in_tys[1].dtype, in_tys[2].dtype);
    if sd != DType::F32 {
        return Err(unsupported(n, target, format!("scales of type {sd}")));
    }
    let ins_e: Vec<(PointerValue<'ctx>, Elt)> = ins
        .iter()
        .zip(in_tys)
        .map(|(&p, t)| (p, Elt::of(t.dtype)))
        .collect();
    let od = n.ty.dtype;
    match &n.op {
        Op::Quantize { to, .. } => {
            if xd != DType::F32 {
                return Err(unsupported(n, target, format!("quantizing {xd}")));
            }
            let range = int_range(*to);
            let te = Elt::of(*to);
            if small_int(*to) && small_int(zd) {
                // i8/u8 results: all in f32 and i32 (16 lanes a vector on AVX-512, not 8).
                return ew_emit(em, &p, task, &ins_e, (out, Elt::of(od)), &|v| {
                    let zp = em.cast(InstructionOpcode::SIToFP, to_i32(em, zd, v[2])?, Elt::F32)?;
                    let t = quantize_shifted(em, v[0], v[1], zp, range)?;
                    let q = em.cast(InstructionOpcode::FPToSI, em.fadd(t, zp)?, Elt::I32)?;
                    em.cast(InstructionOpcode::Trunc, q, te)
                });
            }
            ew_emit(em, &p, task, &ins_e, (out, Elt::of(od)), &|v| {
                let zp = em.cast(InstructionOpcode::SIToFP, to_i64(em, zd, v[2])?, Elt::F64)?;
                let q = quantize_value(em, v[0], v[1], zp, range)?;
                em.cast(InstructionOpcode::Trunc, q, te)
            })
        }
        Op::Dequantize { .. } => {
            if od != DType::F32 {
                return Err(unsupported(n, target, format!("dequantizing to {od}")));
            }
            if small_int(xd) && small_int(zd) {
                // The difference is exact in i32 and its conversion to f32 exact too.
                return ew_emit(em, &p, task, &ins_e, (out, Elt::F32), &|v| {
                    let d = em.isub(to_i32(em, xd, v[0])?, to_i32(em, zd, v[2])?)?;
                    em.fmul(em.cast(InstructionOpcode::SIToFP, d, Elt::F32)?, v[1])
                });
            }
            ew_emit(em, &p, task, &ins_e, (out, Elt::F32), &|v| {
                let (x, z) = (to_i64(em, xd, v[0])?, to_i64(em, zd, v[2])?);
                let d = if xd == DType::I64 {
                    // Like the interpreter, in f64 so the difference cannot overflow.
                    let xf = em.cast(InstructionOpcode::SIToFP, x, Elt::F64)?;
                    let zf = em.cast(InstructionOpcode::SIToFP, z, Elt::F64)?;
                    em.cast(InstructionOpcode::FPTrunc, em.fsub(xf, zf)?, Elt::F32)?
                } else {
                    // Exact in i64, then one rounding, as (v - zp) in f64 then f32 would be.
                    em.cast(InstructionOpcode::SIToFP, em.isub(x, z)?, Elt::F32)?
                };
                em.fmul(d, v[1])
            })
        }
        _ => Err(unsupported(n, target, "not a quantization op")),
    }
}

struct QPlan {
    split: Split,
    m: u64,
    k: u64,
    n: u64,
    /// Accumulator (and quantized-x scratch) element.
    acc: Elt,
    /// The int8 microkernel, when the weights are packed for one.
    int8: Option<Scheme>,
}

fn qplan(n: &Node, in_tys: &[&TensorType], kt: &KernelTarget) -> Option<QPlan> {
    let Op::QLinear {
        x_zero_point,
        x_type,
        ..
    } = &n.op
    else {
        return None;
    };
    let (x, w, wz) = (in_tys.first()?, in_tys.get(1)?, in_tys.get(3)?);
    let (k, nn) = (w.shape[0] as u64, w.shape[1] as u64);
    let m = x.shape[..x.rank().max(1) - 1].iter().product::<usize>() as u64;
    let (lo, hi) = int_range(*x_type);
    let zp = *x_zero_point as i64;
    let xmax = (lo - zp).unsigned_abs().max((hi - zp).unsigned_abs()) as u128;
    // |w - w_zp| <= 255 for i8 and u8 weights.
    let bound = xmax * 255 * k as u128;
    let acc = if bound <= i32::MAX as u128 && xmax <= i32::MAX as u128 {
        Elt::I32
    } else {
        Elt::I64
    };
    // The int8 kernels' sums are exact when the true sum fits i32 (their wrap-around cancels).
    let int8 = (acc == Elt::I32
        && x.dtype == DType::F32
        && small_int(*x_type)
        && small_int(w.dtype)
        && wz.dtype == w.dtype)
        .then(|| Scheme::for_target(kt))
        .flatten();
    let split = match int8 {
        Some(s) => int8_split(m, k, nn, s),
        None => Split::blocks(
            1,
            m,
            nn,
            want_tasks(2 * m * k * nn, 64),
            ROW_ALIGN,
            COL_ALIGN,
        ),
    };
    Some(QPlan {
        split,
        m,
        k,
        n: nn,
        acc,
        int8,
    })
}

/// Tasks of an int8 product. Below 1 M multiply-adds (a few µs) one task. With rows enough,
/// blocks of whole rows (each row of x is quantized once, each task streams all of B once):
/// of the heights in multiples of [`ROW_ALIGN`], the one with the least time on one thread
/// plus twice the time on two, tasks handed out in order to the free thread — each task
/// costing its rows' products (`n·k/64` a row: one 512-bit VNNI instruction a cycle), its
/// pass over B from L2 and a fixed dispatch cost. Few rows: blocks of whole column tiles.
fn int8_split(m: u64, k: u64, n: u64, s: Scheme) -> Split {
    let macs = m * n * k;
    if macs < 1_000_000 || m == 0 || n == 0 {
        return Split::blocks(1, m, n, 1, ROW_ALIGN, COL_ALIGN);
    }
    if m < 2 * ROW_ALIGN {
        let want = (macs / 1_000_000).clamp(2, 16);
        // COL_ALIGN is a multiple of every scheme's tile width, as the packing needs.
        debug_assert_eq!(COL_ALIGN % s.nr(), 0);
        return Split::blocks(1, m, n, want, ROW_ALIGN, COL_ALIGN);
    }
    const DISPATCH: u64 = 3_000;
    let per_row = n * k / 64;
    let per_task = n * k / 32 + DISPATCH;
    let mut best: Option<(u64, u64)> = None; // (cost, rows per task)
    let mut chunk = ROW_ALIGN;
    loop {
        let c = chunk.min(m);
        let tasks = m.div_ceil(c);
        let mut cost = 0;
        for p in 1..=2u64 {
            let mut threads = [0u64; 2];
            for t in 0..tasks {
                let rows = c.min(m - t * c);
                let i = if threads[0] <= threads[1] || p == 1 {
                    0
                } else {
                    1
                };
                threads[i] += rows * per_row + per_task;
            }
            cost += p * threads[..p as usize].iter().max().copied().unwrap_or(0);
        }
        if best.is_none_or(|(b, _)| cost < b) {
            best = Some((cost, c));
        }
        if c == m {
            break;
        }
        chunk += ROW_ALIGN;
    }
    let rows = best.map_or(m, |(_, r)| r);
    Split::row_col_blocks(m, n, rows, n)
}

pub(crate) fn qlinear_split(n: &Node, in_tys: &[&TensorType], kt: &KernelTarget) -> Option<Split> {
    qplan(n, in_tys, kt).map(|p| p.split)
}

pub(crate) fn qlinear_scratch(n: &Node, in_tys: &[&TensorType], kt: &KernelTarget) -> usize {
    qplan(n, in_tys, kt)
        .map(|p| {
            let rows = p.split.chunk.min(p.m);
            // Weights that are not a constant are never packed and take the generic path
            // whatever the target (this does not know which), so scratch fits both.
            let generic = rows * p.k * p.acc.bytes() as u64;
            p.int8
                .map_or(generic, |s| s.scratch_bytes(rows, p.k).max(generic)) as usize
        })
        .unwrap_or(0)
}

/// The weights (operand 1) of a qlinear, packed for its int8 microkernel.
pub(crate) fn qlinear_packing(
    n: &Node,
    in_tys: &[&TensorType],
    operand: usize,
    kt: &KernelTarget,
) -> Option<Packing> {
    if operand != 1 {
        return None;
    }
    let p = qplan(n, in_tys, kt)?;
    Some(Packing::Int8B {
        k: p.k as usize,
        n: p.n as usize,
        scheme: p.int8?,
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_qlinear<'ctx>(
    em: &Em<'_, 'ctx>,
    n: &Node,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    packed: &[bool],
    out: PointerValue<'ctx>,
    scratch: PointerValue<'ctx>,
    task: IntValue<'ctx>,
    kt: &KernelTarget,
) -> R<()> {
    let target = kt.name.as_str();
    let Op::QLinear {
        x_scale,
        x_zero_point,
        x_type,
        has_bias,
    } = &n.op
    else {
        return Err(unsupported(n, target, "not qlinear"));
    };
    let p = qplan(n, in_tys, kt).ok_or_else(|| unsupported(n, target, "malformed qlinear"))?;
    let (x, w, ws) = (in_tys[0], in_tys[1], in_tys[2]);
    if x.dtype != DType::F32
        || ws.dtype != DType::F32
        || (*has_bias && in_tys[4].dtype != DType::F32)
    {
        return Err(unsupported(
            n,
            target,
            "only f32 activations, scales and bias are generated",
        ));
    }
    let wd = w.dtype;
    let per_col = ws.rank() == 1;
    let range = int_range(*x_type);
    let zp = *x_zero_point as i64;
    let xs = *x_scale as f64;
    let (xp, wp, wsp, wzp) = (ins[0], ins[1], ins[2], ins[3]);
    let bias = has_bias.then(|| ins[4]);
    let (k, nn, acc) = (p.k, p.n, p.acc);
    let col = |j: IntValue<'ctx>, e: Elt, ptr: PointerValue<'ctx>, lw: u32| -> R<V<'ctx>> {
        if per_col {
            em.ld_at(e, lw, ptr, j)
        } else {
            let s = em.ld_at(e, 1, ptr, em.i64c(0))?;
            em.splat(s, lw)
        }
    };
    // C[r0 + r, c0 + j ..] from the exact integer sums: rescaled in f64 like the interpreter.
    let store = |r0: IntValue<'ctx>,
                 c0: IntValue<'ctx>,
                 r: IntValue<'ctx>,
                 j: IntValue<'ctx>,
                 lw: u32,
                 a: V<'ctx>|
     -> R<()> {
        let j = em.add(c0, j)?;
        let s = em.cast(InstructionOpcode::SIToFP, a, Elt::F64)?;
        let sc = em.cast(
            InstructionOpcode::FPExt,
            col(j, Elt::F32, wsp, lw)?,
            Elt::F64,
        )?;
        let mut v = em.fmul(em.fmul(s, em.cd(*x_scale as f64, lw))?, sc)?;
        if let Some(bp) = bias {
            let bv = em.cast(
                InstructionOpcode::FPExt,
                em.ld_at(Elt::F32, lw, bp, j)?,
                Elt::F64,
            )?;
            v = em.fadd(v, bv)?;
        }
        let v = em.cast(InstructionOpcode::FPTrunc, v, Elt::F32)?;
        let row = em.add(r0, r)?;
        em.st_at(Elt::F32, out, em.add(em.mulc(row, nn as i64)?, j)?, v)
    };
    if let (Some(scheme), true) = (p.int8, packed.get(1).copied().unwrap_or(false)) {
        let quantize = |v: V<'ctx>| -> R<V<'ctx>> {
            let w = Em::width(v);
            let t = quantize_shifted(em, v, em.cf(xs, w), em.cf(zp as f64, w), range)?;
            em.cast(InstructionOpcode::FPToSI, t, Elt::I32)
        };
        return p.split.emit_blocks(em, task, &|_, r0, rows, c0, cols| {
            let st = |r: IntValue<'ctx>, j: IntValue<'ctx>, lw: u32, a: V<'ctx>| {
                store(r0, c0, r, j, lw, a)
            };
            int8::emit(
                em,
                &int8::Job {
                    scheme,
                    rows,
                    cols,
                    k,
                    n: nn,
                    r0,
                    c0,
                    x: xp,
                    quantize: &quantize,
                    x_zp: zp,
                    x_unsigned: !signed(*x_type),
                    w: wp,
                    w_unsigned: !signed(wd),
                    wz: wzp,
                    wz_per_col: per_col,
                    scratch,
                    store: &st,
                },
            )
        });
    }
    p.split.emit_blocks(em, task, &|_, r0, rows, c0, cols| {
        // Quantize this task's rows of x, shifted by the zero point, into scratch.
        let src = em.gep(Elt::F32, xp, em.mulc(r0, k as i64)?)?;
        let total = rows * k;
        if total > 0 {
            let ops = [
                Operand {
                    ptr: src,
                    elt: Elt::F32,
                    strides: vec![1],
                },
                Operand {
                    ptr: scratch,
                    elt: acc,
                    strides: vec![1],
                },
            ];
            nest(em, &[total], &ops, None, true, &mut |l| {
                let v = l.load(em, 0)?;
                let q = quantize_value(em, v, em.cf(xs, l.w), em.cd(zp as f64, l.w), range)?;
                let q = em.isub(q, em.ci(Elt::I64, zp, l.w))?;
                let q = if acc == Elt::I64 {
                    q
                } else {
                    em.cast(InstructionOpcode::Trunc, q, acc)?
                };
                l.store(em, 1, q)
            })?;
        }
        let widen = |v: V<'ctx>| -> R<V<'ctx>> {
            let op = if signed(wd) {
                InstructionOpcode::SExt
            } else {
                InstructionOpcode::ZExt
            };
            em.cast(op, v, acc)
        };
        let load_a = |r: IntValue<'ctx>, pk: IntValue<'ctx>| -> R<V<'ctx>> {
            em.ld_at(acc, 1, scratch, em.add(em.mulc(r, k as i64)?, pk)?)
        };
        let load_b = |pk: IntValue<'ctx>, j: IntValue<'ctx>, lw: u32| -> R<V<'ctx>> {
            let j = em.add(c0, j)?;
            let wv = widen(em.ld_at(Elt::I8, lw, wp, em.add(em.mulc(pk, nn as i64)?, j)?)?)?;
            let zv = widen(col(j, Elt::I8, wzp, lw)?)?;
            em.isub(wv, zv)
        };
        let store = |r: IntValue<'ctx>, j: IntValue<'ctx>, lw: u32, a: V<'ctx>| -> R<()> {
            store(r0, c0, r, j, lw, a)
        };
        emit_gemm(
            em,
            &Gemm {
                m: rows,
                n: cols,
                k,
                acc,
                load_a: &load_a,
                load_a4: None,
                b: BSrc::Load(&load_b),
                store: &store,
            },
        )
    })
}
