//! The small IR-building layer every kernel generator writes through: typed constants, loads and
//! stores with element alignment, width-generic arithmetic (one code path emits a scalar or an
//! `<N x T>` vector value), intrinsic calls, counted loops with i64 induction variables and
//! loop-carried values, and the strided loop nest used by elementwise and data-movement kernels.
//!
//! It knows nothing about ops or the memory plan. It must never emit a call to anything but the
//! LLVM intrinsics that lower to plain instructions on the supported targets, and never an
//! alloca (kernels run inside loops of the driver's task functions).

use inkwell::attributes::AttributeLoc;
use inkwell::builder::{Builder, BuilderError};
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Module as LlvmModule;
use inkwell::types::{BasicTypeEnum, VectorType};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValue, BasicValueEnum, FunctionValue, InstructionOpcode,
    InstructionValue, IntValue, PointerValue, VectorValue,
};
use inkwell::{FloatPredicate, IntPredicate};
use vitc_ir::{DType, Node};

use super::{Cx, KernelError};

pub(crate) type R<T> = Result<T, KernelError>;
/// A scalar or vector value.
pub(crate) type V<'ctx> = BasicValueEnum<'ctx>;

/// The error for an op (or dtype, or layout) a generator does not handle, with the reason.
pub(crate) fn unsupported(n: &Node, target: &str, why: impl Into<String>) -> KernelError {
    KernelError::Unsupported {
        op: n.op.name(),
        target: target.to_string(),
        why: why.into(),
    }
}

/// IR dims as the u64 extents loops use.
pub(crate) fn shape64(s: &[usize]) -> Vec<u64> {
    s.iter().map(|&d| d as u64).collect()
}

/// The error for a value of the wrong kind reaching a helper: a generator bug, reported rather
/// than panicking.
fn mismatch() -> KernelError {
    KernelError::Builder(BuilderError::NotSameType)
}

/// Element types as the generated code stores and computes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elt {
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
}

impl Elt {
    /// The storage element of an IR dtype: i1 and ui8 live in bytes, f16/bf16 as raw i16 bits.
    pub fn of(d: DType) -> Elt {
        match d {
            DType::F32 => Elt::F32,
            DType::F16 | DType::BF16 => Elt::I16,
            DType::I8 | DType::U8 | DType::Bool => Elt::I8,
            DType::I32 => Elt::I32,
            DType::I64 => Elt::I64,
        }
    }

    pub fn bytes(self) -> u32 {
        match self {
            Elt::F32 | Elt::I32 => 4,
            Elt::F64 | Elt::I64 => 8,
            Elt::I16 => 2,
            Elt::I8 => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Elt::F32 | Elt::F64)
    }
}

/// Everything a generator emits through; cheap to copy (references only).
#[derive(Clone, Copy)]
pub(crate) struct Em<'a, 'ctx> {
    pub ctx: &'ctx Context,
    pub module: &'a LlvmModule<'ctx>,
    pub b: &'a Builder<'ctx>,
    pub func: FunctionValue<'ctx>,
    /// f32 lanes of the target's native vector.
    pub lanes: u32,
    pub fma: bool,
}

impl<'a, 'ctx> Em<'a, 'ctx> {
    pub fn new(cx: &'a Cx<'a, 'ctx>) -> Self {
        Em {
            ctx: cx.ctx,
            module: cx.module,
            b: cx.builder,
            func: cx.func,
            lanes: cx.target.f32_lanes.max(1),
            fma: cx.target.fma,
        }
    }

    /// The same emitter writing through another builder into another function (math helpers).
    pub fn with(&self, b: &'a Builder<'ctx>, func: FunctionValue<'ctx>) -> Self {
        Em { b, func, ..*self }
    }

    // -----------------------------------------------------------------------------------------
    // Types and constants

    pub fn ty(&self, e: Elt, w: u32) -> BasicTypeEnum<'ctx> {
        let s: BasicTypeEnum<'ctx> = match e {
            Elt::F32 => self.ctx.f32_type().into(),
            Elt::F64 => self.ctx.f64_type().into(),
            Elt::I8 => self.ctx.i8_type().into(),
            Elt::I16 => self.ctx.i16_type().into(),
            Elt::I32 => self.ctx.i32_type().into(),
            Elt::I64 => self.ctx.i64_type().into(),
        };
        if w <= 1 {
            return s;
        }
        match s {
            BasicTypeEnum::FloatType(t) => t.vec_type(w).into(),
            BasicTypeEnum::IntType(t) => t.vec_type(w).into(),
            other => other,
        }
    }

    pub fn i64c(&self, v: i64) -> IntValue<'ctx> {
        self.ctx.i64_type().const_int(v as u64, true)
    }

    /// A constant of element `e` (floats from `x`, integers from `x as i64`), splat to `w`.
    fn konst(&self, e: Elt, x: f64, i: i64, w: u32) -> V<'ctx> {
        let s: V<'ctx> = match e {
            Elt::F32 => self.ctx.f32_type().const_float(x as f32 as f64).into(),
            Elt::F64 => self.ctx.f64_type().const_float(x).into(),
            Elt::I8 => self.ctx.i8_type().const_int(i as u64, true).into(),
            Elt::I16 => self.ctx.i16_type().const_int(i as u64, true).into(),
            Elt::I32 => self.ctx.i32_type().const_int(i as u64, true).into(),
            Elt::I64 => self.ctx.i64_type().const_int(i as u64, true).into(),
        };
        if w <= 1 {
            return s;
        }
        let v = vec![s; w as usize];
        VectorType::const_vector(&v).into()
    }

    /// f32 constant (rounded from `x`), splat to width `w`.
    pub fn cf(&self, x: f64, w: u32) -> V<'ctx> {
        self.konst(Elt::F32, x, 0, w)
    }

    /// f64 constant, splat to width `w`.
    pub fn cd(&self, x: f64, w: u32) -> V<'ctx> {
        self.konst(Elt::F64, x, 0, w)
    }

    /// Integer constant of element `e`, splat to width `w`.
    pub fn ci(&self, e: Elt, x: i64, w: u32) -> V<'ctx> {
        if e.is_float() {
            self.konst(e, x as f64, 0, w)
        } else {
            self.konst(e, 0.0, x, w)
        }
    }

    pub fn zero(&self, e: Elt, w: u32) -> V<'ctx> {
        self.ci(e, 0, w)
    }

    /// Lanes of a value (1 for scalars).
    pub fn width(v: V<'ctx>) -> u32 {
        match v {
            BasicValueEnum::VectorValue(v) => v.get_type().get_size(),
            _ => 1,
        }
    }

    /// Broadcast a scalar to `w` lanes (identity for `w` = 1 or an already wide value).
    pub fn splat(&self, v: V<'ctx>, w: u32) -> R<V<'ctx>> {
        if w <= 1 || v.is_vector_value() {
            return Ok(v);
        }
        let vt = match v.get_type() {
            BasicTypeEnum::FloatType(t) => t.vec_type(w),
            BasicTypeEnum::IntType(t) => t.vec_type(w),
            _ => return Err(mismatch()),
        };
        let i32t = self.ctx.i32_type();
        let one = self
            .b
            .build_insert_element(vt.get_poison(), v, i32t.const_zero(), "")?;
        let mask = VectorType::const_vector(&vec![i32t.const_zero(); w as usize]);
        Ok(self.b.build_shuffle_vector(one, one, mask, "")?.into())
    }

    // -----------------------------------------------------------------------------------------
    // Arithmetic (scalar or vector alike)

    pub fn bin(&self, op: InstructionOpcode, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        if a.get_type() != b.get_type() {
            return Err(mismatch());
        }
        Ok(self.b.build_binop(op, a, b, "")?)
    }

    pub fn fadd(&self, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        self.bin(InstructionOpcode::FAdd, a, b)
    }
    pub fn fsub(&self, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        self.bin(InstructionOpcode::FSub, a, b)
    }
    pub fn fmul(&self, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        self.bin(InstructionOpcode::FMul, a, b)
    }
    pub fn fdiv(&self, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        self.bin(InstructionOpcode::FDiv, a, b)
    }
    pub fn iadd(&self, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        self.bin(InstructionOpcode::Add, a, b)
    }
    pub fn isub(&self, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        self.bin(InstructionOpcode::Sub, a, b)
    }
    pub fn imul(&self, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        self.bin(InstructionOpcode::Mul, a, b)
    }
    pub fn and(&self, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        self.bin(InstructionOpcode::And, a, b)
    }
    pub fn or(&self, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        self.bin(InstructionOpcode::Or, a, b)
    }
    pub fn xor(&self, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        self.bin(InstructionOpcode::Xor, a, b)
    }

    pub fn fneg(&self, a: V<'ctx>) -> R<V<'ctx>> {
        Ok(match a {
            BasicValueEnum::FloatValue(x) => self.b.build_float_neg(x, "")?.into(),
            BasicValueEnum::VectorValue(x) => self.b.build_float_neg(x, "")?.into(),
            _ => return Err(mismatch()),
        })
    }

    /// `a·b + c`, fused where the target has FMA (llvm.fma would become a libm call elsewhere).
    pub fn mul_add(&self, a: V<'ctx>, b: V<'ctx>, c: V<'ctx>) -> R<V<'ctx>> {
        if self.fma {
            self.intr("llvm.fma", &[a, b, c])
        } else {
            let p = self.fmul(a, b)?;
            self.fadd(p, c)
        }
    }

    /// Convert `v` to element `e` keeping its width.
    pub fn cast(&self, op: InstructionOpcode, v: V<'ctx>, e: Elt) -> R<V<'ctx>> {
        let t = self.ty(e, Self::width(v));
        Ok(self.b.build_cast(op, v, t, "")?)
    }

    pub fn fcmp(&self, p: FloatPredicate, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        Ok(match (a, b) {
            (BasicValueEnum::FloatValue(x), BasicValueEnum::FloatValue(y)) => {
                self.b.build_float_compare(p, x, y, "")?.into()
            }
            (BasicValueEnum::VectorValue(x), BasicValueEnum::VectorValue(y)) => {
                self.b.build_float_compare(p, x, y, "")?.into()
            }
            _ => return Err(mismatch()),
        })
    }

    pub fn icmp(&self, p: IntPredicate, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        Ok(match (a, b) {
            (BasicValueEnum::IntValue(x), BasicValueEnum::IntValue(y)) => {
                self.b.build_int_compare(p, x, y, "")?.into()
            }
            (BasicValueEnum::VectorValue(x), BasicValueEnum::VectorValue(y)) => {
                self.b.build_int_compare(p, x, y, "")?.into()
            }
            _ => return Err(mismatch()),
        })
    }

    pub fn select(&self, c: V<'ctx>, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        Ok(match c {
            BasicValueEnum::IntValue(c) => self.b.build_select(c, a, b, "")?,
            BasicValueEnum::VectorValue(c) => self.b.build_select(c, a, b, "")?,
            _ => return Err(mismatch()),
        })
    }

    /// Call an overloaded LLVM intrinsic whose overload is the type of its first argument.
    pub fn intr(&self, name: &str, args: &[V<'ctx>]) -> R<V<'ctx>> {
        let first = args.first().ok_or_else(mismatch)?;
        let f = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(self.module, &[first.get_type()]))
            .ok_or_else(|| KernelError::Unsupported {
                op: name.to_string(),
                target: "this LLVM".into(),
                why: "intrinsic not found".into(),
            })?;
        self.call(f, args)
    }

    pub fn call(&self, f: FunctionValue<'ctx>, args: &[V<'ctx>]) -> R<V<'ctx>> {
        let a: Vec<BasicMetadataValueEnum<'ctx>> = args.iter().map(|&v| v.into()).collect();
        self.b
            .build_call(f, &a, "")?
            .try_as_basic_value()
            .basic()
            .ok_or_else(mismatch)
    }

    pub fn fmax(&self, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        self.intr("llvm.maxnum", &[a, b])
    }
    pub fn fmin(&self, a: V<'ctx>, b: V<'ctx>) -> R<V<'ctx>> {
        self.intr("llvm.minnum", &[a, b])
    }

    // -----------------------------------------------------------------------------------------
    // Index arithmetic (i64 scalars)

    pub fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        if b.get_sign_extended_constant() == Some(0) {
            return Ok(a);
        }
        if a.get_sign_extended_constant() == Some(0) {
            return Ok(b);
        }
        Ok(self.b.build_int_add(a, b, "")?)
    }

    pub fn addc(&self, a: IntValue<'ctx>, c: i64) -> R<IntValue<'ctx>> {
        self.add(a, self.i64c(c))
    }

    pub fn mulc(&self, a: IntValue<'ctx>, c: i64) -> R<IntValue<'ctx>> {
        match c {
            0 => Ok(self.i64c(0)),
            1 => Ok(a),
            _ => Ok(self.b.build_int_mul(a, self.i64c(c), "")?),
        }
    }

    /// `a + i·c`
    pub fn mad(&self, a: IntValue<'ctx>, i: IntValue<'ctx>, c: i64) -> R<IntValue<'ctx>> {
        let p = self.mulc(i, c)?;
        self.add(a, p)
    }

    pub fn udivc(&self, a: IntValue<'ctx>, c: u64) -> R<IntValue<'ctx>> {
        if c == 1 {
            return Ok(a);
        }
        Ok(self.b.build_int_unsigned_div(a, self.i64c(c as i64), "")?)
    }

    pub fn uremc(&self, a: IntValue<'ctx>, c: u64) -> R<IntValue<'ctx>> {
        if c == 1 {
            return Ok(self.i64c(0));
        }
        Ok(self.b.build_int_unsigned_rem(a, self.i64c(c as i64), "")?)
    }

    pub fn smin(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let c = self.b.build_int_compare(IntPredicate::SLT, a, b, "")?;
        Ok(self.b.build_select(c, a, b, "")?.into_int_value())
    }

    pub fn smax(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let c = self.b.build_int_compare(IntPredicate::SGT, a, b, "")?;
        Ok(self.b.build_select(c, a, b, "")?.into_int_value())
    }

    /// The task index (i32 from the driver) as i64.
    pub fn task64(&self, task: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self
            .b
            .build_int_z_extend_or_bit_cast(task, self.ctx.i64_type(), "")?)
    }

    // -----------------------------------------------------------------------------------------
    // Memory

    /// Address of element `idx` of an array of `e` at `p`.
    pub fn gep(&self, e: Elt, p: PointerValue<'ctx>, idx: IntValue<'ctx>) -> R<PointerValue<'ctx>> {
        if idx.get_sign_extended_constant() == Some(0) {
            return Ok(p);
        }
        // SAFETY: a single-index GEP over a sized element type; every generated index stays
        // inside the buffer it addresses (the kernels' loops are bounded by the IR shapes).
        Ok(unsafe { self.b.build_in_bounds_gep(self.ty(e, 1), p, &[idx], "")? })
    }

    fn aligned(inst: Option<InstructionValue<'ctx>>, a: u32) -> R<()> {
        match inst {
            Some(i) => i.set_alignment(a).map_err(|e| match e {
                inkwell::values::InstructionValueError::AlignmentError(a) => {
                    KernelError::Builder(BuilderError::AlignmentError(a))
                }
                _ => mismatch(),
            }),
            None => Err(mismatch()),
        }
    }

    /// Load `w` consecutive elements (`w` = 1: a scalar). Aligned to the element only: buffers
    /// are dense arrays with no promise beyond that.
    pub fn ld(&self, e: Elt, w: u32, p: PointerValue<'ctx>) -> R<V<'ctx>> {
        let v = self.b.build_load(self.ty(e, w), p, "")?;
        Self::aligned(v.as_instruction_value(), e.bytes())?;
        Ok(v)
    }

    /// Load element `idx` (`w` wide) of an `e` array.
    pub fn ld_at(&self, e: Elt, w: u32, p: PointerValue<'ctx>, idx: IntValue<'ctx>) -> R<V<'ctx>> {
        let q = self.gep(e, p, idx)?;
        self.ld(e, w, q)
    }

    pub fn st(&self, p: PointerValue<'ctx>, v: V<'ctx>) -> R<()> {
        let bytes = match v.get_type() {
            BasicTypeEnum::VectorType(t) => elt_bytes(t.get_element_type()),
            t => elt_bytes(t),
        };
        let i = self.b.build_store(p, v)?;
        Self::aligned(Some(i), bytes)
    }

    pub fn st_at(&self, e: Elt, p: PointerValue<'ctx>, idx: IntValue<'ctx>, v: V<'ctx>) -> R<()> {
        let q = self.gep(e, p, idx)?;
        self.st(q, v)
    }

    // -----------------------------------------------------------------------------------------
    // Control flow

    fn block(&self, name: &str) -> inkwell::basic_block::BasicBlock<'ctx> {
        self.ctx.append_basic_block(self.func, name)
    }

    /// `for (i = lo; i < hi; i += step) body(i)` with an i64 induction variable.
    pub fn for_range(
        &self,
        lo: IntValue<'ctx>,
        hi: IntValue<'ctx>,
        step: u64,
        mut body: impl FnMut(IntValue<'ctx>) -> R<()>,
    ) -> R<()> {
        self.for_acc(lo, hi, step, &[], |i, _| body(i).map(|()| vec![]))
            .map(|_| ())
    }

    /// `for i in 0..n`
    pub fn for_n(&self, n: u64, body: impl FnMut(IntValue<'ctx>) -> R<()>) -> R<()> {
        self.for_range(self.i64c(0), self.i64c(n as i64), 1, body)
    }

    /// A counted loop carrying values: `body(i, current)` returns the next values; the result is
    /// the values after the last iteration (`init` when the loop runs zero times).
    pub fn for_acc(
        &self,
        lo: IntValue<'ctx>,
        hi: IntValue<'ctx>,
        step: u64,
        init: &[V<'ctx>],
        mut body: impl FnMut(IntValue<'ctx>, &[V<'ctx>]) -> R<Vec<V<'ctx>>>,
    ) -> R<Vec<V<'ctx>>> {
        let step = step.max(1);
        // Static trip counts of 0 and 1 need no loop at all (size-1 dims, single tiles).
        if let (Some(l), Some(h)) = (
            lo.get_sign_extended_constant(),
            hi.get_sign_extended_constant(),
        ) {
            if h <= l {
                return Ok(init.to_vec());
            }
            if (h - l) as u64 <= step {
                let out = body(lo, init)?;
                if out.len() != init.len() {
                    return Err(mismatch());
                }
                return Ok(out);
            }
        }
        let pre = self
            .b
            .get_insert_block()
            .ok_or(BuilderError::UnsetPosition)?;
        let head = self.block("loop");
        let body_bb = self.block("body");
        let exit = self.block("done");
        self.b.build_unconditional_branch(head)?;
        self.b.position_at_end(head);
        let i64t = self.ctx.i64_type();
        let iv = self.b.build_phi(i64t, "i")?;
        iv.add_incoming(&[(&lo, pre)]);
        let mut phis = Vec::with_capacity(init.len());
        for v in init {
            let p = self.b.build_phi(v.get_type(), "acc")?;
            p.add_incoming(&[(v as &dyn BasicValue, pre)]);
            phis.push(p);
        }
        let i = iv.as_basic_value().into_int_value();
        let cur: Vec<V<'ctx>> = phis.iter().map(|p| p.as_basic_value()).collect();
        let c = self.b.build_int_compare(IntPredicate::SLT, i, hi, "")?;
        self.b.build_conditional_branch(c, body_bb, exit)?;
        self.b.position_at_end(body_bb);
        let next = body(i, &cur)?;
        if next.len() != init.len() {
            return Err(mismatch());
        }
        let inext = self.b.build_int_add(i, i64t.const_int(step, false), "")?;
        let end = self
            .b
            .get_insert_block()
            .ok_or(BuilderError::UnsetPosition)?;
        self.b.build_unconditional_branch(head)?;
        iv.add_incoming(&[(&inext, end)]);
        for (p, v) in phis.iter().zip(&next) {
            p.add_incoming(&[(v as &dyn BasicValue, end)]);
        }
        self.b.position_at_end(exit);
        Ok(cur)
    }

    /// `if cond { then() } else { els() }`
    pub fn if_else(
        &self,
        cond: IntValue<'ctx>,
        then: impl FnOnce() -> R<()>,
        els: impl FnOnce() -> R<()>,
    ) -> R<()> {
        if let Some(c) = cond.get_zero_extended_constant() {
            return if c != 0 { then() } else { els() };
        }
        let t = self.block("then");
        let e = self.block("else");
        let j = self.block("join");
        self.b.build_conditional_branch(cond, t, e)?;
        self.b.position_at_end(t);
        then()?;
        self.b.build_unconditional_branch(j)?;
        self.b.position_at_end(e);
        els()?;
        self.b.build_unconditional_branch(j)?;
        self.b.position_at_end(j);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Horizontal reductions, in a fixed order so results do not depend on anything at run time

    /// Fold the lanes of `v` with `f` by halving (lanes a power of two) or in lane order.
    pub fn hfold(&self, v: V<'ctx>, f: impl Fn(V<'ctx>, V<'ctx>) -> R<V<'ctx>>) -> R<V<'ctx>> {
        let BasicValueEnum::VectorValue(mut x) = v else {
            return Ok(v);
        };
        let i32t = self.ctx.i32_type();
        let mut w = x.get_type().get_size();
        while w > 1 && w.is_power_of_two() {
            let h = w / 2;
            let lo: Vec<IntValue> = (0..h).map(|k| i32t.const_int(k as u64, false)).collect();
            let hi: Vec<IntValue> = (h..w).map(|k| i32t.const_int(k as u64, false)).collect();
            let a = self
                .b
                .build_shuffle_vector(x, x, VectorType::const_vector(&lo), "")?;
            let b = self
                .b
                .build_shuffle_vector(x, x, VectorType::const_vector(&hi), "")?;
            if h == 1 {
                let a0 = self.b.build_extract_element(a, i32t.const_zero(), "")?;
                let b0 = self.b.build_extract_element(b, i32t.const_zero(), "")?;
                return f(a0, b0);
            }
            x = as_vector(f(a.into(), b.into())?)?;
            w = h;
        }
        let mut acc = self.b.build_extract_element(x, i32t.const_zero(), "")?;
        for k in 1..w {
            let e = self
                .b
                .build_extract_element(x, i32t.const_int(k as u64, false), "")?;
            acc = f(acc, e)?;
        }
        Ok(acc)
    }

    /// Lane `k` of a vector (the value itself for scalars).
    pub fn lane(&self, v: V<'ctx>, k: u32) -> R<V<'ctx>> {
        match v {
            BasicValueEnum::VectorValue(x) => Ok(self.b.build_extract_element(
                x,
                self.ctx.i32_type().const_int(k as u64, false),
                "",
            )?),
            _ => Ok(v),
        }
    }

    /// Add a string attribute to the function being emitted into.
    pub fn fn_attr(&self, key: &str, val: &str) {
        let a = self.ctx.create_string_attribute(key, val);
        self.func.add_attribute(AttributeLoc::Function, a);
    }
}

fn as_vector(v: BasicValueEnum<'_>) -> R<VectorValue<'_>> {
    match v {
        BasicValueEnum::VectorValue(x) => Ok(x),
        _ => Err(mismatch()),
    }
}

fn elt_bytes(t: BasicTypeEnum<'_>) -> u32 {
    match t {
        BasicTypeEnum::FloatType(f) => {
            if f == f.get_context().f64_type() {
                8
            } else {
                4
            }
        }
        BasicTypeEnum::IntType(i) => i.get_bit_width().div_ceil(8),
        _ => 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Strided loop nests

/// One array walked by a loop nest: element `idx` of the nest is `ptr[Σ idx[d]·strides[d]]`.
#[derive(Clone, Debug)]
pub(crate) struct Operand<'ctx> {
    pub ptr: PointerValue<'ctx>,
    pub elt: Elt,
    pub strides: Vec<i64>,
}

/// What the innermost body of a nest sees: per operand the address of the current element (or of
/// the first of `w` lanes) and its innermost stride.
pub(crate) struct Lanes<'ctx> {
    pub w: u32,
    pub ptrs: Vec<PointerValue<'ctx>>,
    pub inner: Vec<i64>,
    pub elts: Vec<Elt>,
}

impl<'ctx> Lanes<'ctx> {
    /// Operand `k` at the current position, `w` lanes wide (a splat when it does not move).
    pub fn load(&self, em: &Em<'_, 'ctx>, k: usize) -> R<V<'ctx>> {
        if self.w > 1 && self.inner[k] == 0 {
            let s = em.ld(self.elts[k], 1, self.ptrs[k])?;
            return em.splat(s, self.w);
        }
        em.ld(self.elts[k], self.w, self.ptrs[k])
    }

    pub fn store(&self, em: &Em<'_, 'ctx>, k: usize, v: V<'ctx>) -> R<()> {
        em.st(self.ptrs[k], v)
    }
}

/// Merge adjacent dims every operand walks as one (and drop size-1 dims), so loops are as few and
/// as long as possible. Returns the new shape; `strides` are rewritten in place. Never empty.
pub(crate) fn coalesce(shape: &[u64], strides: &mut [Vec<i64>]) -> Vec<u64> {
    let keep: Vec<usize> = (0..shape.len()).filter(|&d| shape[d] != 1).collect();
    let mut sh: Vec<u64> = keep.iter().map(|&d| shape[d]).collect();
    let mut st: Vec<Vec<i64>> = strides
        .iter()
        .map(|s| keep.iter().map(|&d| s[d]).collect())
        .collect();
    let mut d = sh.len();
    while d >= 2 {
        d -= 1;
        // Merge dim d-1 into d when stepping d-1 equals stepping d through its whole extent.
        let ok = st.iter().all(|s| s[d - 1] == s[d] * sh[d] as i64);
        if ok {
            sh[d] *= sh[d - 1];
            sh.remove(d - 1);
            for s in st.iter_mut() {
                s.remove(d - 1);
            }
        }
    }
    if sh.is_empty() {
        sh.push(1);
        for s in st.iter_mut() {
            s.push(0);
        }
    }
    for (dst, src) in strides.iter_mut().zip(st) {
        *dst = src;
    }
    sh
}

/// Row-major strides of a shape.
pub(crate) fn dense_strides(shape: &[u64]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1] as i64;
    }
    s
}

/// Strides reading an operand of shape `ish` as if it had the numpy broadcast shape `osh`.
pub(crate) fn bcast_strides(ish: &[u64], osh: &[u64]) -> Vec<i64> {
    let st = dense_strides(ish);
    let off = osh.len().saturating_sub(ish.len());
    (0..osh.len())
        .map(|i| match i.checked_sub(off) {
            Some(j) if ish[j] != 1 || osh[i] == 1 => st[j],
            _ => 0,
        })
        .collect()
}

/// Walk `shape` (dim 0 restricted to `dim0` if given), calling `body` at every element, or every
/// `lanes` elements of the innermost dim when every operand moves by 0 or 1 there (with a scalar
/// loop for the tail). `vector` = false forces scalar code.
pub(crate) fn nest<'ctx>(
    em: &Em<'_, 'ctx>,
    shape: &[u64],
    ops: &[Operand<'ctx>],
    dim0: Option<(IntValue<'ctx>, IntValue<'ctx>)>,
    vector: bool,
    body: &mut dyn FnMut(&Lanes<'ctx>) -> R<()>,
) -> R<()> {
    let offs = vec![em.i64c(0); ops.len()];
    nest_rec(em, shape, ops, dim0, vector, 0, &offs, body)
}

#[allow(clippy::too_many_arguments)]
fn nest_rec<'ctx>(
    em: &Em<'_, 'ctx>,
    shape: &[u64],
    ops: &[Operand<'ctx>],
    dim0: Option<(IntValue<'ctx>, IntValue<'ctx>)>,
    vector: bool,
    d: usize,
    offs: &[IntValue<'ctx>],
    body: &mut dyn FnMut(&Lanes<'ctx>) -> R<()>,
) -> R<()> {
    let (lo, hi) = match (d, dim0) {
        (0, Some(r)) => r,
        _ => (em.i64c(0), em.i64c(shape[d] as i64)),
    };
    let step = |i: IntValue<'ctx>| -> R<Vec<IntValue<'ctx>>> {
        offs.iter()
            .zip(ops)
            .map(|(&o, op)| em.mad(o, i, op.strides[d]))
            .collect()
    };
    if d + 1 < shape.len() {
        return em.for_range(lo, hi, 1, |i| {
            let o = step(i)?;
            nest_rec(em, shape, ops, dim0, vector, d + 1, &o, body)
        });
    }
    let inner: Vec<i64> = ops.iter().map(|o| o.strides[d]).collect();
    let elts: Vec<Elt> = ops.iter().map(|o| o.elt).collect();
    let mut at = |i: IntValue<'ctx>, w: u32| -> R<()> {
        let o = step(i)?;
        let ptrs = o
            .iter()
            .zip(ops)
            .map(|(&off, op)| em.gep(op.elt, op.ptr, off))
            .collect::<R<Vec<_>>>()?;
        body(&Lanes {
            w,
            ptrs,
            inner: inner.clone(),
            elts: elts.clone(),
        })
    };
    let l = em.lanes as u64;
    let static_len = match (
        lo.get_sign_extended_constant(),
        hi.get_sign_extended_constant(),
    ) {
        (Some(a), Some(b)) => Some((b - a).max(0) as u64),
        _ => None,
    };
    let vec_ok = vector && l > 1 && inner.iter().all(|&s| s == 0 || s == 1);
    if !vec_ok {
        return em.for_range(lo, hi, 1, |i| at(i, 1));
    }
    if let (Some(n), Some(l0)) = (static_len, lo.get_sign_extended_constant()) {
        for (a, z, w) in lane_pieces(n, l) {
            em.for_range(
                em.i64c(l0 + a as i64),
                em.i64c(l0 + z as i64),
                w as u64,
                |i| at(i, w),
            )?;
        }
        return Ok(());
    }
    // hi_v = lo + ((hi - lo) / l)·l: the vector loop covers whole vectors only.
    let hv = {
        let len = em.b.build_int_sub(hi, lo, "")?;
        let whole = em.mulc(em.udivc(len, l)?, l as i64)?;
        em.add(lo, whole)?
    };
    em.for_range(lo, hv, l, |i| at(i, l as u32))?;
    em.for_range(hv, hi, 1, |i| at(i, 1))
}

/// Split `n` items into at most `want` contiguous chunks of `chunk` (a multiple of `align`):
/// returns (chunk, tasks) with every task non-empty.
pub(crate) fn chunking(n: u64, want: u64, align: u64) -> (u64, u64) {
    let align = align.max(1);
    if n == 0 {
        return (1, 1);
    }
    let want = want.clamp(1, n);
    let chunk = n.div_ceil(want).div_ceil(align) * align;
    (chunk, n.div_ceil(chunk))
}

/// `[task·chunk, min(task·chunk + chunk, n))` as i64 values.
pub(crate) fn chunk_range<'ctx>(
    em: &Em<'_, 'ctx>,
    task: IntValue<'ctx>,
    chunk: u64,
    n: u64,
    tasks: u64,
) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
    if tasks <= 1 {
        return Ok((em.i64c(0), em.i64c(n as i64)));
    }
    let t = em.task64(task)?;
    let lo = em.mulc(t, chunk as i64)?;
    let hi = em.smin(em.addc(lo, chunk as i64)?, em.i64c(n as i64))?;
    Ok((lo, hi))
}

/// How a node's work — `items` independent items (batches, planes, heads) of `rows` × `cols`
/// each — is dealt to tasks: whole items per task when there are enough of them, otherwise each
/// item in blocks of `chunk` rows (a multiple of the row alignment) and `col_chunk` columns,
/// the last block in each direction possibly shorter. Only GEMM-shaped kernels split columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub items: u64,
    pub rows: u64,
    pub cols: u64,
    /// Items per task (block mode when 1 and a block is smaller than the item).
    pub per_task: u64,
    /// Rows per block; `rows` when rows are not split.
    pub chunk: u64,
    /// Columns per block; `cols` when columns are not split.
    pub col_chunk: u64,
}

impl Split {
    fn whole(items: u64, rows: u64, cols: u64) -> Split {
        Split {
            items,
            rows,
            cols,
            per_task: items.max(1),
            chunk: rows,
            col_chunk: cols,
        }
    }

    /// Split rows only (`cols` is 1).
    pub fn new(items: u64, rows: u64, want: u64, align: u64) -> Split {
        let whole = Split::whole(items, rows, 1);
        let want = want.max(1);
        if want <= 1 || items == 0 || rows == 0 {
            return whole;
        }
        if items >= want {
            let (per_task, _) = chunking(items, want, 1);
            return Split { per_task, ..whole };
        }
        let (chunk, _) = chunking(rows, want.div_ceil(items), align);
        Split {
            per_task: 1,
            chunk: chunk.min(rows),
            ..whole
        }
    }

    /// Split an item's `rows × cols` output into blocks (rows in multiples of `row_align`,
    /// columns of `col_align`): of the splits giving enough tasks, the one whose blocks read
    /// the least operand data (the sum of the blocks' heights and widths).
    pub fn blocks(
        items: u64,
        rows: u64,
        cols: u64,
        want: u64,
        row_align: u64,
        col_align: u64,
    ) -> Split {
        let whole = Split::whole(items, rows, cols);
        let want = want.max(1);
        if want <= 1 || items == 0 || rows == 0 || cols == 0 {
            return whole;
        }
        if items >= want {
            let (per_task, _) = chunking(items, want, 1);
            return Split { per_task, ..whole };
        }
        let per_item = want.div_ceil(items);
        // Prefer splits with at least three quarters of the wanted tasks (two of two: both
        // threads of a pair get work); among those, the least traffic.
        let key = |traffic: u64, t: u64| {
            let enough = 4 * t >= 3 * per_item;
            (enough, if enough { u64::MAX - traffic } else { 0 }, t)
        };
        let mut best: Option<((bool, u64, u64), u64, u64)> = None;
        for rc in 1..=per_item {
            let (r, nr) = chunking(rows, rc, row_align);
            let (c, nc) = chunking(cols, per_item.div_ceil(rc), col_align);
            let (r, c) = (r.min(rows), c.min(cols));
            let t = nr * nc;
            let k = key(t * (r + c), t);
            if best.is_none_or(|(bk, _, _)| k > bk) {
                best = Some((k, r, c));
            }
        }
        match best {
            Some((_, chunk, col_chunk)) => Split {
                per_task: 1,
                chunk,
                col_chunk,
                ..whole
            },
            None => whole,
        }
    }

    /// One item in blocks of `rows` × `cols` (the last in each direction possibly shorter).
    pub fn row_col_blocks(m: u64, n: u64, rows: u64, cols: u64) -> Split {
        Split {
            per_task: 1,
            chunk: rows.clamp(1, m.max(1)),
            col_chunk: cols.clamp(1, n.max(1)),
            ..Split::whole(1, m, n)
        }
    }

    fn block_mode(&self) -> bool {
        self.chunk < self.rows || self.col_chunk < self.cols
    }

    pub fn tasks(&self) -> u64 {
        if self.block_mode() {
            self.items * self.rows.div_ceil(self.chunk) * self.cols.div_ceil(self.col_chunk)
        } else {
            self.items.div_ceil(self.per_task).max(1)
        }
    }

    /// Emit task `task`'s share: `body(item, first_row, rows)` with `rows` static.
    pub fn emit<'ctx>(
        &self,
        em: &Em<'_, 'ctx>,
        task: IntValue<'ctx>,
        body: &dyn Fn(IntValue<'ctx>, IntValue<'ctx>, u64) -> R<()>,
    ) -> R<()> {
        self.emit_blocks(em, task, &|item, r0, rows, _, _| body(item, r0, rows))
    }

    /// Emit task `task`'s share: `body(item, first_row, rows, first_col, cols)`, the counts
    /// static (each a full block or the last, shorter one).
    pub fn emit_blocks<'ctx>(
        &self,
        em: &Em<'_, 'ctx>,
        task: IntValue<'ctx>,
        body: &dyn Fn(IntValue<'ctx>, IntValue<'ctx>, u64, IntValue<'ctx>, u64) -> R<()>,
    ) -> R<()> {
        let zero = em.i64c(0);
        if !self.block_mode() {
            let (lo, hi) = chunk_range(em, task, self.per_task, self.items, self.tasks())?;
            return em.for_range(lo, hi, 1, |item| {
                body(item, zero, self.rows, zero, self.cols)
            });
        }
        let nr = self.rows.div_ceil(self.chunk);
        let nc = self.cols.div_ceil(self.col_chunk);
        let t = em.task64(task)?;
        let item = em.udivc(t, nr * nc)?;
        let rest = em.uremc(t, nr * nc)?;
        let (ri, ci) = (em.udivc(rest, nc)?, em.uremc(rest, nc)?);
        let r0 = em.mulc(ri, self.chunk as i64)?;
        let c0 = em.mulc(ci, self.col_chunk as i64)?;
        let rtail = self.rows - (nr - 1) * self.chunk;
        let ctail = self.cols - (nc - 1) * self.col_chunk;
        // The last block in each direction is a static variant of its own.
        let last = |i: IntValue<'ctx>, n: u64| {
            em.b.build_int_compare(IntPredicate::EQ, i, em.i64c(n as i64 - 1), "")
        };
        let cols_variant = |rows: u64| -> R<()> {
            if ctail == self.col_chunk {
                return body(item, r0, rows, c0, self.col_chunk);
            }
            em.if_else(
                last(ci, nc)?,
                || body(item, r0, rows, c0, ctail),
                || body(item, r0, rows, c0, self.col_chunk),
            )
        };
        if rtail == self.chunk {
            return cols_variant(self.chunk);
        }
        em.if_else(
            last(ri, nr)?,
            || cols_variant(rtail),
            || cols_variant(self.chunk),
        )
    }
}

/// Tasks worth using for `flops` of work: about one per 250 kFLOP (so ~1 MFLOP makes 4), up to
/// `max`, and 1 below 1 MFLOP where dispatch costs more than it saves.
pub(crate) fn want_tasks(flops: u64, max: u64) -> u64 {
    if flops < 1_000_000 {
        1
    } else {
        (flops / 250_000).clamp(1, max)
    }
}

/// Offsets of flat index `idx` of `shape` (row-major) under each of `strides`.
pub(crate) fn unravel<'ctx>(
    em: &Em<'_, 'ctx>,
    idx: IntValue<'ctx>,
    shape: &[u64],
    strides: &[Vec<i64>],
) -> R<Vec<IntValue<'ctx>>> {
    let mut offs = vec![em.i64c(0); strides.len()];
    let mut rest = idx;
    for d in (0..shape.len()).rev() {
        let i = if d == 0 {
            rest
        } else {
            em.uremc(rest, shape[d])?
        };
        if d > 0 {
            rest = em.udivc(rest, shape[d])?;
        }
        for (o, s) in offs.iter_mut().zip(strides) {
            *o = em.mad(*o, i, s[d])?;
        }
    }
    Ok(offs)
}

/// Pieces covering `0..n` for vector loops: (start, end, lanes) with whole `l`-lane vectors,
/// then one each of l/2, l/4 … (down to 4 lanes) where they fit, then single elements.
pub(crate) fn lane_pieces(n: u64, l: u64) -> Vec<(u64, u64, u32)> {
    let mut v = vec![];
    let whole = if l > 1 { n / l * l } else { 0 };
    if whole > 0 {
        v.push((0, whole, l as u32));
    }
    let mut at = whole;
    let mut w = l / 2;
    while w >= 4 {
        if n - at >= w {
            v.push((at, at + w, w as u32));
            at += w;
        }
        w /= 2;
    }
    if at < n {
        v.push((at, n, 1));
    }
    v
}
