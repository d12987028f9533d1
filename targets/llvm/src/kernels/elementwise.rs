//! Elementwise kernels — unary and binary ops with numpy broadcasting, where, clip, cast, gelu —
//! and the machinery they share with the data-movement kernels: one loop nest over the output
//! whose operands carry per-dimension strides (0 on broadcast dims), coalesced to as few and as
//! long loops as possible, with an explicit `<N x T>` innermost loop when every operand moves by
//! 0 or 1 there, and the outermost loop split between tasks for large outputs.
//!
//! The value functions here (`unary`, `binary`, `cast`, `activation`, …) are width-generic, so
//! the GEMM epilogues reuse them on whole vectors. Semantics are the interpreter's
//! (compiler/ir/src/interp.rs), including its NaN and integer-wrapping behaviour; combinations
//! it rejects or no model needs are `Unsupported`, never miscomputed.

use inkwell::values::{InstructionOpcode, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};
use vitc_ir::{Activation, BinaryOp, DType, Node, Op, TensorType, UnaryOp};

use super::emit::{
    bcast_strides, chunk_range, chunking, coalesce, dense_strides, nest, shape64, unsupported, Elt,
    Em, Operand, R, V,
};
use super::KernelError;
use crate::math;

/// A planned elementwise loop nest: coalesced shape, one stride vector per input then the
/// output, and how dim 0 is split between tasks.
#[derive(Clone, Debug)]
pub(crate) struct EwPlan {
    pub shape: Vec<u64>,
    pub strides: Vec<Vec<i64>>,
    pub chunk: u64,
    pub tasks: u64,
}

/// Plan a nest over `out_shape` (output dense) reading inputs with `in_strides`.
pub(crate) fn ew_plan(out_shape: &[u64], in_strides: Vec<Vec<i64>>, split: bool) -> EwPlan {
    let mut strides = in_strides;
    strides.push(dense_strides(out_shape));
    let shape = coalesce(out_shape, &mut strides);
    let numel: u64 = shape.iter().product();
    // Memory-bound loops: one task per 16 K elements is enough to pay for the dispatch.
    let want = if split && numel >= 32_768 {
        (numel / 16_384).min(32)
    } else {
        1
    };
    // A 1-D nest splits its only (vectorised) loop: keep chunks whole vectors.
    let align = if shape.len() == 1 { 64 } else { 1 };
    let (chunk, tasks) = chunking(shape[0], want, align);
    EwPlan {
        shape,
        strides,
        chunk,
        tasks,
    }
}

/// Emit task `task` of `plan`: for every output element, `f(inputs)` stored to the output.
pub(crate) fn ew_emit<'ctx>(
    em: &Em<'_, 'ctx>,
    plan: &EwPlan,
    task: IntValue<'ctx>,
    ins: &[(PointerValue<'ctx>, Elt)],
    out: (PointerValue<'ctx>, Elt),
    f: &dyn Fn(&[V<'ctx>]) -> R<V<'ctx>>,
) -> R<()> {
    let mut ops: Vec<Operand<'ctx>> = ins
        .iter()
        .zip(&plan.strides)
        .map(|(&(ptr, elt), s)| Operand {
            ptr,
            elt,
            strides: s.clone(),
        })
        .collect();
    ops.push(Operand {
        ptr: out.0,
        elt: out.1,
        strides: plan.strides[ins.len()].clone(),
    });
    let n = ins.len();
    let dim0 = if plan.tasks > 1 {
        Some(chunk_range(
            em,
            task,
            plan.chunk,
            plan.shape[0],
            plan.tasks,
        )?)
    } else {
        None
    };
    nest(em, &plan.shape, &ops, dim0, true, &mut |l| {
        let vals = (0..n).map(|k| l.load(em, k)).collect::<R<Vec<_>>>()?;
        let r = f(&vals)?;
        l.store(em, n, r)
    })
}

/// The nest of an elementwise-family node (inputs broadcast to the output), or `None` for ops
/// outside this family.
pub(crate) fn plan(n: &Node, in_tys: &[&TensorType]) -> Option<EwPlan> {
    let osh = shape64(&n.ty.shape);
    let bc = |t: &TensorType| bcast_strides(&shape64(&t.shape), &osh);
    match &n.op {
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Where
        | Op::Clip { .. }
        | Op::Cast { .. }
        | Op::Gelu { .. }
        | Op::Broadcast { .. } => Some(ew_plan(&osh, in_tys.iter().map(|t| bc(t)).collect(), true)),
        _ => None,
    }
}

pub(crate) fn signed(d: DType) -> bool {
    matches!(d, DType::I8 | DType::I32 | DType::I64)
}

/// Emit an elementwise-family node.
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit<'ctx>(
    em: &Em<'_, 'ctx>,
    n: &Node,
    in_tys: &[&TensorType],
    ins: &[PointerValue<'ctx>],
    out: PointerValue<'ctx>,
    task: IntValue<'ctx>,
    target: &str,
) -> R<()> {
    let Some(p) = plan(n, in_tys) else {
        return Err(unsupported(n, target, "not an elementwise op"));
    };
    let d = in_tys.first().map(|t| t.dtype).unwrap_or(n.ty.dtype);
    let od = n.ty.dtype;
    let half = |t: DType| matches!(t, DType::F16 | DType::BF16);
    // f16/bf16 arithmetic would need conversions that are libcalls on some targets.
    let float_only = |what: &str| -> R<()> {
        if d != DType::F32 {
            return Err(unsupported(
                n,
                target,
                format!("{what} is only generated for f32, not {d}"),
            ));
        }
        Ok(())
    };
    let ins_e: Vec<(PointerValue<'ctx>, Elt)> = ins
        .iter()
        .zip(in_tys)
        .map(|(&p, t)| (p, Elt::of(t.dtype)))
        .collect();
    let out_e = (out, Elt::of(od));
    match &n.op {
        Op::Unary(u) => {
            let u = *u;
            let ok = match d {
                DType::F32 => u != UnaryOp::Not,
                DType::Bool => u == UnaryOp::Not,
                DType::I8 | DType::U8 | DType::I32 | DType::I64 => {
                    matches!(u, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu)
                }
                _ => false,
            };
            if !ok {
                return Err(unsupported(n, target, format!("{} on {d}", u.name())));
            }
            ew_emit(em, &p, task, &ins_e, out_e, &|v| unary(em, u, d, v[0]))
        }
        Op::Binary(b) => {
            let b = *b;
            let ok = match d {
                DType::F32 => !matches!(b, BinaryOp::Mod | BinaryOp::And | BinaryOp::Or),
                DType::I8 | DType::U8 | DType::I32 | DType::I64 => {
                    !matches!(b, BinaryOp::Pow | BinaryOp::And | BinaryOp::Or)
                }
                DType::Bool => matches!(
                    b,
                    BinaryOp::Equal
                        | BinaryOp::And
                        | BinaryOp::Or
                        | BinaryOp::Min
                        | BinaryOp::Max
                        | BinaryOp::Less
                        | BinaryOp::Greater
                ),
                _ => false,
            };
            if !ok {
                return Err(unsupported(n, target, format!("{} on {d}", b.name())));
            }
            ew_emit(em, &p, task, &ins_e, out_e, &|v| {
                binary(em, b, d, v[0], v[1])
            })
        }
        Op::Where => ew_emit(em, &p, task, &ins_e, out_e, &|v| {
            let zero = em.zero(Elt::I8, Em::width(v[0]));
            let c = em.icmp(IntPredicate::NE, v[0], zero)?;
            em.select(c, v[1], v[2])
        }),
        Op::Clip { min, max } => {
            if half(d) {
                float_only("clip")?;
            }
            let (lo, hi) = (*min, *max);
            ew_emit(em, &p, task, &ins_e, out_e, &|v| clip(em, d, v[0], lo, hi))
        }
        Op::Cast { to } => {
            let to = *to;
            if d != to && (half(d) || half(to)) {
                return Err(unsupported(n, target, format!("cast from {d} to {to}")));
            }
            ew_emit(em, &p, task, &ins_e, out_e, &|v| cast(em, d, to, v[0]))
        }
        Op::Gelu { approximate } => {
            float_only("gelu")?;
            let a = if *approximate {
                Activation::GeluTanh
            } else {
                Activation::Gelu
            };
            ew_emit(em, &p, task, &ins_e, out_e, &|v| activation(em, a, v[0]))
        }
        Op::Broadcast { .. } => ew_emit(em, &p, task, &ins_e, out_e, &|v| Ok(v[0])),
        _ => Err(unsupported(n, target, "not an elementwise op")),
    }
}

/// 0 or 1 in the i8 storage of i1, from a comparison result.
fn bool_byte<'ctx>(em: &Em<'_, 'ctx>, c: V<'ctx>) -> R<V<'ctx>> {
    em.cast(InstructionOpcode::ZExt, c, Elt::I8)
}

/// max/min that return NaN when either side is NaN (the interpreter's max_f32/min_f32).
fn fmax_nan<'ctx>(em: &Em<'_, 'ctx>, a: V<'ctx>, b: V<'ctx>, max: bool) -> R<V<'ctx>> {
    let m = if max { em.fmax(a, b)? } else { em.fmin(a, b)? };
    let nan = em.fcmp(FloatPredicate::UNO, a, b)?;
    em.select(nan, em.cf(f64::NAN, Em::width(a)), m)
}

/// NaN-propagating relu: `x < 0 ? 0 : x`.
fn relu<'ctx>(em: &Em<'_, 'ctx>, x: V<'ctx>) -> R<V<'ctx>> {
    let w = Em::width(x);
    let c = em.fcmp(FloatPredicate::OLT, x, em.cf(0.0, w))?;
    em.select(c, em.cf(0.0, w), x)
}

fn hard_sigmoid<'ctx>(em: &Em<'_, 'ctx>, x: V<'ctx>) -> R<V<'ctx>> {
    // alpha = 1/6 rounded to f32, as onnxruntime evaluates alpha·x + beta.
    let w = Em::width(x);
    let y = em.fadd(em.fmul(x, em.cf((1.0f32 / 6.0) as f64, w))?, em.cf(0.5, w))?;
    let c = em.fcmp(FloatPredicate::OLT, y, em.cf(0.0, w))?;
    let y = em.select(c, em.cf(0.0, w), y)?;
    let c = em.fcmp(FloatPredicate::OGT, y, em.cf(1.0, w))?;
    em.select(c, em.cf(1.0, w), y)
}

/// A fused activation (also `vit.gelu`) on f32 values of any width.
pub(crate) fn activation<'ctx>(em: &Em<'_, 'ctx>, a: Activation, x: V<'ctx>) -> R<V<'ctx>> {
    let w = Em::width(x);
    let c = |v: f64| em.cf(v, w);
    match a {
        Activation::None => Ok(x),
        Activation::Relu => relu(em, x),
        Activation::HardSwish => em.fmul(x, hard_sigmoid(em, x)?),
        Activation::Silu => em.fmul(x, math::sigmoid(em, x)?),
        Activation::Sigmoid => math::sigmoid(em, x),
        Activation::Gelu => math::gelu(em, x),
        Activation::GeluTanh => {
            // The interpreter's association: c·(x + ((0.044715·x)·x)·x).
            let k = (2.0f32 / std::f32::consts::PI).sqrt() as f64;
            let cube = em.fmul(em.fmul(em.fmul(c(0.044715), x)?, x)?, x)?;
            let t = math::tanh(em, em.fmul(c(k), em.fadd(x, cube)?)?)?;
            em.fmul(em.fmul(c(0.5), x)?, em.fadd(c(1.0), t)?)
        }
    }
}

/// A unary op on values of dtype `d` (checked by the caller).
pub(crate) fn unary<'ctx>(em: &Em<'_, 'ctx>, u: UnaryOp, d: DType, x: V<'ctx>) -> R<V<'ctx>> {
    let w = Em::width(x);
    if d == DType::Bool {
        return em.xor(x, em.ci(Elt::I8, 1, w));
    }
    if d != DType::F32 {
        let e = Elt::of(d);
        let zero = em.zero(e, w);
        return match (u, signed(d)) {
            (UnaryOp::Neg, _) => em.isub(zero, x),
            (UnaryOp::Abs, true) => {
                let c = em.icmp(IntPredicate::SLT, x, zero)?;
                em.select(c, em.isub(zero, x)?, x)
            }
            (UnaryOp::Relu, true) => {
                let c = em.icmp(IntPredicate::SLT, x, zero)?;
                em.select(c, zero, x)
            }
            // Unsigned values are their own abs and relu.
            _ => Ok(x),
        };
    }
    let c = |v: f64| em.cf(v, w);
    match u {
        UnaryOp::Neg => em.fneg(x),
        UnaryOp::Abs => em.intr("llvm.fabs", &[x]),
        UnaryOp::Sqrt => em.intr("llvm.sqrt", &[x]),
        UnaryOp::Rsqrt => math::rsqrt(em, x),
        UnaryOp::Reciprocal => em.fdiv(c(1.0), x),
        UnaryOp::Exp => math::exp(em, x),
        UnaryOp::Log => math::log(em, x),
        UnaryOp::Erf => math::erf(em, x),
        UnaryOp::Tanh => math::tanh(em, x),
        UnaryOp::Sigmoid => math::sigmoid(em, x),
        UnaryOp::Relu => relu(em, x),
        UnaryOp::HardSwish => activation(em, Activation::HardSwish, x),
        UnaryOp::HardSigmoid => hard_sigmoid(em, x),
        UnaryOp::Silu => activation(em, Activation::Silu, x),
        UnaryOp::Floor => em.intr("llvm.floor", &[x]),
        UnaryOp::Ceil => em.intr("llvm.ceil", &[x]),
        UnaryOp::Round => em.intr("llvm.roundeven", &[x]),
        UnaryOp::Not => Err(KernelError::Builder(
            inkwell::builder::BuilderError::NotSameType,
        )),
    }
}

/// A binary op on two values of dtype `d` (checked by the caller); comparisons give i1 bytes.
pub(crate) fn binary<'ctx>(
    em: &Em<'_, 'ctx>,
    op: BinaryOp,
    d: DType,
    a: V<'ctx>,
    b: V<'ctx>,
) -> R<V<'ctx>> {
    use BinaryOp::*;
    let w = Em::width(a);
    if d == DType::F32 {
        return match op {
            Add => em.fadd(a, b),
            Sub => em.fsub(a, b),
            Mul => em.fmul(a, b),
            Div => em.fdiv(a, b),
            Pow => math::pow(em, a, b),
            Max => fmax_nan(em, a, b, true),
            Min => fmax_nan(em, a, b, false),
            Equal => bool_byte(em, em.fcmp(FloatPredicate::OEQ, a, b)?),
            Less => bool_byte(em, em.fcmp(FloatPredicate::OLT, a, b)?),
            Greater => bool_byte(em, em.fcmp(FloatPredicate::OGT, a, b)?),
            Mod | And | Or => Err(KernelError::Builder(
                inkwell::builder::BuilderError::NotSameType,
            )),
        };
    }
    let e = Elt::of(d);
    if d == DType::Bool {
        let one = em.ci(Elt::I8, 1, w);
        return match op {
            Equal => bool_byte(em, em.icmp(IntPredicate::EQ, a, b)?),
            And | Min => em.and(a, b),
            Or | Max => em.or(a, b),
            Less => em.and(em.xor(a, one)?, b),
            Greater => em.and(a, em.xor(b, one)?),
            _ => Err(KernelError::Builder(
                inkwell::builder::BuilderError::NotSameType,
            )),
        };
    }
    let s = signed(d);
    let pick = |sp: IntPredicate, up: IntPredicate| if s { sp } else { up };
    let zero = em.zero(e, w);
    let one = em.ci(e, 1, w);
    let is_zero = em.icmp(IntPredicate::EQ, b, zero)?;
    // Divisors that would trap (0, and -1 under MIN / -1) are replaced; the quotient of -1 is
    // the wrapping negation, the interpreter's i64 wrapping_div narrowed.
    let minus1 = if s {
        Some(em.icmp(IntPredicate::EQ, b, em.ci(e, -1, w))?)
    } else {
        None
    };
    let safe = |b0: V<'ctx>| -> R<V<'ctx>> {
        let mut dv = em.select(is_zero, one, b0)?;
        if let Some(m) = minus1 {
            dv = em.select(m, one, dv)?;
        }
        Ok(dv)
    };
    match op {
        Add => em.iadd(a, b),
        Sub => em.isub(a, b),
        Mul => em.imul(a, b),
        Div => {
            let dv = safe(b)?;
            let q = if s {
                em.bin(InstructionOpcode::SDiv, a, dv)?
            } else {
                em.bin(InstructionOpcode::UDiv, a, dv)?
            };
            let q = match minus1 {
                Some(m) => em.select(m, em.isub(zero, a)?, q)?,
                None => q,
            };
            em.select(is_zero, zero, q)
        }
        Mod => {
            let dv = safe(b)?;
            let r = if s {
                let r = em.bin(InstructionOpcode::SRem, a, dv)?;
                let r = match minus1 {
                    Some(m) => em.select(m, zero, r)?,
                    None => r,
                };
                // The remainder takes the divisor's sign (ONNX Mod, fmod = 0).
                let rn = em.icmp(IntPredicate::SLT, r, zero)?;
                let bn = em.icmp(IntPredicate::SLT, b, zero)?;
                let nz = em.icmp(IntPredicate::NE, r, zero)?;
                let fix = em.and(nz, em.xor(rn, bn)?)?;
                em.select(fix, em.iadd(r, b)?, r)?
            } else {
                em.bin(InstructionOpcode::URem, a, dv)?
            };
            em.select(is_zero, zero, r)
        }
        Max => {
            let c = em.icmp(pick(IntPredicate::SGT, IntPredicate::UGT), a, b)?;
            em.select(c, a, b)
        }
        Min => {
            let c = em.icmp(pick(IntPredicate::SLT, IntPredicate::ULT), a, b)?;
            em.select(c, a, b)
        }
        Equal => bool_byte(em, em.icmp(IntPredicate::EQ, a, b)?),
        Less => bool_byte(
            em,
            em.icmp(pick(IntPredicate::SLT, IntPredicate::ULT), a, b)?,
        ),
        Greater => bool_byte(
            em,
            em.icmp(pick(IntPredicate::SGT, IntPredicate::UGT), a, b)?,
        ),
        Pow | And | Or => Err(KernelError::Builder(
            inkwell::builder::BuilderError::NotSameType,
        )),
    }
}

/// The value range of an integer dtype.
pub(crate) fn int_range(d: DType) -> (i64, i64) {
    match d {
        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
        DType::U8 => (0, u8::MAX as i64),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        DType::Bool => (0, 1),
        _ => (i64::MIN, i64::MAX),
    }
}

fn clip<'ctx>(
    em: &Em<'_, 'ctx>,
    d: DType,
    x: V<'ctx>,
    lo: Option<f32>,
    hi: Option<f32>,
) -> R<V<'ctx>> {
    let w = Em::width(x);
    if d == DType::F32 {
        // onnxruntime's min(max(x, lo), hi) comparisons: NaN passes through.
        let mut y = x;
        if let Some(lo) = lo {
            let c = em.fcmp(FloatPredicate::OLT, y, em.cf(lo as f64, w))?;
            y = em.select(c, em.cf(lo as f64, w), y)?;
        }
        if let Some(hi) = hi {
            let c = em.fcmp(FloatPredicate::OLT, em.cf(hi as f64, w), y)?;
            y = em.select(c, em.cf(hi as f64, w), y)?;
        }
        return Ok(y);
    }
    // Integer x >= lo exactly when x >= ceil(lo); bounds outside the type saturate.
    let (tmin, tmax) = int_range(d);
    let e = Elt::of(d);
    let s = signed(d);
    let mut y = x;
    if let Some(lo) = lo {
        let l = ((lo as f64).ceil() as i64).clamp(tmin, tmax);
        let lv = em.ci(e, l, w);
        let c = em.icmp(
            if s {
                IntPredicate::SLT
            } else {
                IntPredicate::ULT
            },
            y,
            lv,
        )?;
        y = em.select(c, lv, y)?;
    }
    if let Some(hi) = hi {
        let h = ((hi as f64).floor() as i64).clamp(tmin, tmax);
        let hv = em.ci(e, h, w);
        let c = em.icmp(
            if s {
                IntPredicate::SGT
            } else {
                IntPredicate::UGT
            },
            y,
            hv,
        )?;
        y = em.select(c, hv, y)?;
    }
    Ok(y)
}

/// f32 to i64 like Rust's `as`: truncation toward zero, saturating, NaN to 0.
pub(crate) fn f32_to_i64_sat<'ctx>(em: &Em<'_, 'ctx>, x: V<'ctx>) -> R<V<'ctx>> {
    let w = Em::width(x);
    let lim = 9_223_372_036_854_775_808.0; // 2^63, exact in f32
    let too_big = em.fcmp(FloatPredicate::OGE, x, em.cf(lim, w))?;
    let too_small = em.fcmp(FloatPredicate::OLT, x, em.cf(-lim, w))?;
    let inside = em.fcmp(
        FloatPredicate::OLT,
        em.intr("llvm.fabs", &[x])?,
        em.cf(lim, w),
    )?;
    let xs = em.select(inside, x, em.cf(0.0, w))?;
    let i = em.cast(InstructionOpcode::FPToSI, xs, Elt::I64)?;
    let i = em.select(too_big, em.ci(Elt::I64, i64::MAX, w), i)?;
    em.select(too_small, em.ci(Elt::I64, i64::MIN, w), i)
}

/// Widen or narrow an integer value of dtype `from` to element `to` (sign- or zero-extending by
/// the source's signedness, wrapping when narrowing).
fn int_resize<'ctx>(em: &Em<'_, 'ctx>, from: DType, x: V<'ctx>, to: Elt) -> R<V<'ctx>> {
    let fe = Elt::of(from);
    if fe.bytes() == to.bytes() {
        return Ok(x);
    }
    let op = if fe.bytes() > to.bytes() {
        InstructionOpcode::Trunc
    } else if signed(from) {
        InstructionOpcode::SExt
    } else {
        InstructionOpcode::ZExt
    };
    em.cast(op, x, to)
}

/// ONNX Cast between f32 and the integer and i1 types (the interpreter's `Tensor::cast`).
pub(crate) fn cast<'ctx>(em: &Em<'_, 'ctx>, from: DType, to: DType, x: V<'ctx>) -> R<V<'ctx>> {
    let w = Em::width(x);
    if from == to {
        return Ok(x);
    }
    let te = Elt::of(to);
    match (from, to) {
        (DType::F32, DType::Bool) => bool_byte(em, em.fcmp(FloatPredicate::UNE, x, em.cf(0.0, w))?),
        (DType::F32, _) => {
            let i = f32_to_i64_sat(em, x)?;
            int_resize(em, DType::I64, i, te)
        }
        (_, DType::F32) => {
            let op = if signed(from) {
                InstructionOpcode::SIToFP
            } else {
                InstructionOpcode::UIToFP
            };
            em.cast(op, x, Elt::F32)
        }
        (_, DType::Bool) => {
            let z = em.zero(Elt::of(from), w);
            bool_byte(em, em.icmp(IntPredicate::NE, x, z)?)
        }
        _ => int_resize(em, from, x, te),
    }
}
