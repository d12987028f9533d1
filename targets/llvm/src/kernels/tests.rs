//! Kernel tests: each case is a one-op vit IR module run by the reference interpreter and by
//! the generated code (every task, in reverse order, on buffers with guard bytes and poisoned
//! scratch, optimised with `default<O3>` for the host CPU and JIT-compiled), compared within
//! the case's tolerance. Shapes are chosen to be awkward: sizes that are not multiples of the
//! vector width or the GEMM tile, size-1 dims, broadcasting, negative steps.

use std::sync::Once;

use inkwell::context::Context;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, InitializationConfig, RelocMode, Target, TargetMachine};
use inkwell::{AddressSpace, OptimizationLevel};
use vitc_ir::{
    Activation, AttnLayout, BinaryOp, DType, Data, Module, Op, ReduceOp, Tensor, UnaryOp, ValueId,
};

use super::{emit_node, packing, scratch_bytes, task_count, Cx, KernelTarget};

/// xorshift64*: deterministic test data without dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [lo, hi).
    fn f(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    /// Uniform integer in [lo, hi].
    fn i(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

#[derive(Clone, Copy, Debug)]
enum Tol {
    Exact,
    /// |Δ| <= tol·|ref| (floats), elementwise.
    Rel(f64),
    /// |Δ| <= tol·max(1, max|ref|): long reductions.
    Max(f64),
}

/// One test case: a module whose single output is the node under test.
struct Case {
    m: Module,
    inputs: Vec<Tensor>,
    rng: Rng,
}

fn shape_len(s: &[usize]) -> usize {
    s.iter().product()
}

impl Case {
    fn new(seed: u64) -> Case {
        Case {
            m: Module::new("t"),
            inputs: vec![],
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        }
    }

    fn rand_f(&mut self, shape: &[usize], lo: f32, hi: f32) -> Tensor {
        let v = (0..shape_len(shape)).map(|_| self.rng.f(lo, hi)).collect();
        Tensor::f32(shape.to_vec(), v)
    }

    fn rand_i(&mut self, d: DType, shape: &[usize], lo: i64, hi: i64) -> Tensor {
        let v = (0..shape_len(shape)).map(|_| self.rng.i(lo, hi));
        Tensor::new(shape.to_vec(), Data::from_i64(d, v))
    }

    fn input(&mut self, t: Tensor) -> ValueId {
        let name = format!("in{}", self.inputs.len());
        let v = self.m.add_input(name, t.ty());
        self.inputs.push(t);
        v
    }

    /// A random f32 graph input in [-1, 1).
    fn x(&mut self, shape: &[usize]) -> ValueId {
        let t = self.rand_f(shape, -1.0, 1.0);
        self.input(t)
    }

    fn constant(&mut self, t: Tensor) -> ValueId {
        self.m.add_constant("c", t)
    }

    fn op(&mut self, op: Op, ins: Vec<ValueId>) -> ValueId {
        let v = self
            .m
            .add(op, ins, "node")
            .expect("test case is well typed");
        self.m.outputs = vec![("y".into(), v)];
        v
    }
}

fn host() -> (String, String) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        Target::initialize_native(&InitializationConfig::default()).expect("native target");
    });
    (
        TargetMachine::get_host_cpu_name().to_string(),
        TargetMachine::get_host_cpu_features().to_string(),
    )
}

fn target(lanes: u32, fma: bool) -> KernelTarget {
    KernelTarget {
        name: format!("test-{lanes}"),
        f32_lanes: lanes,
        fma,
        int8: super::Int8Isa::X86Madd,
        precision: super::Precision::F32,
    }
}

/// Bytes of `t` as the generated code stores it.
fn bytes(t: &Tensor) -> Vec<u8> {
    t.data.to_le_bytes()
}

const GUARD: usize = 64;
const GUARD_BYTE: u8 = 0xA5;

/// Compile the case's output node for `tgt`, run every task, and return its output and the
/// number of tasks.
fn run_compiled(c: &Case, tgt: &KernelTarget) -> (Data, u32) {
    run_compiled_reps(c, tgt, 1).0
}

/// As [`run_compiled`], running all tasks `reps` times; also returns seconds per run.
fn run_compiled_reps(c: &Case, tgt: &KernelTarget, reps: u32) -> ((Data, u32), f64) {
    let (cpu, feats) = host();
    let node_id = c.m.outputs[0].1;
    let n = c.m.node(node_id).clone();
    let in_tys: Vec<&vitc_ir::TensorType> = n.inputs.iter().map(|&v| c.m.ty(v)).collect();
    let tasks = task_count(&n, &in_tys, tgt);
    let sbytes = scratch_bytes(&n, &in_tys, tgt);
    // Constant operands go in the layout the kernel asks for, as the driver stores them.
    let packings: Vec<Option<super::Packing>> = (0..in_tys.len())
        .map(|i| {
            c.m.constant(n.inputs[i])
                .and_then(|_| packing(&n, &in_tys, i, tgt))
        })
        .collect();
    let packed: Vec<bool> = packings.iter().map(Option::is_some).collect();
    assert_eq!(sbytes % 64, 0, "scratch bytes must keep tasks aligned");

    let ctx = Context::create();
    let module = ctx.create_module("kernel_test");
    let builder = ctx.create_builder();
    let ptr = ctx.ptr_type(AddressSpace::default());
    let fty = ctx.void_type().fn_type(
        &[ctx.i32_type().into(), ptr.into(), ptr.into(), ptr.into()],
        false,
    );
    let func = module.add_function("kern", fty, None);
    for (k, v) in [
        ("target-cpu", cpu.as_str()),
        ("target-features", feats.as_str()),
    ] {
        func.add_attribute(
            inkwell::attributes::AttributeLoc::Function,
            ctx.create_string_attribute(k, v),
        );
    }
    let entry = ctx.append_basic_block(func, "entry");
    builder.position_at_end(entry);
    let p = |k: u32| func.get_nth_param(k).expect("param");
    let task = p(0).into_int_value();
    let args = p(1).into_pointer_value();
    let ins: Vec<_> = (0..in_tys.len())
        .map(|i| {
            // SAFETY: `args` points at `in_tys.len()` pointers (built below).
            let slot = unsafe {
                builder
                    .build_in_bounds_gep(
                        ptr,
                        args,
                        &[ctx.i64_type().const_int(i as u64, false)],
                        "",
                    )
                    .expect("gep")
            };
            builder
                .build_load(ptr, slot, "")
                .expect("load")
                .into_pointer_value()
        })
        .collect();
    let mut cx = Cx {
        ctx: &ctx,
        module: &module,
        builder: &builder,
        func,
        target: tgt,
        packed: &packed,
    };
    emit_node(
        &mut cx,
        &n,
        &in_tys,
        &ins,
        p(2).into_pointer_value(),
        p(3).into_pointer_value(),
        task,
    )
    .unwrap_or_else(|e| panic!("emit {}: {e}", n.op.name()));
    builder.build_return(None).expect("ret");
    if let Err(e) = module.verify() {
        panic!("invalid LLVM IR for {}: {}", n.op.name(), e.to_string());
    }

    let triple = TargetMachine::get_default_triple();
    let tm = Target::from_triple(&triple)
        .expect("host target")
        .create_target_machine(
            &triple,
            &cpu,
            &feats,
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::JITDefault,
        )
        .expect("target machine");
    module.set_triple(&triple);
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    module
        .run_passes("default<O3>", &tm, PassBuilderOptions::create())
        .expect("O3 pipeline");
    // Freestanding: nothing may be called but intrinsics (which lower to instructions).
    for f in module.get_functions() {
        let name = f.get_name().to_string_lossy().to_string();
        if f.count_basic_blocks() == 0 {
            assert!(
                name.starts_with("llvm."),
                "{} calls external function {name}",
                n.op.name()
            );
        }
    }

    let ee = module
        .create_jit_execution_engine(OptimizationLevel::Aggressive)
        .expect("jit");
    type Kern = unsafe extern "C" fn(u32, *const *const u8, *mut u8, *mut u8);
    // SAFETY: `kern` was built above with exactly this signature.
    let kern = unsafe { ee.get_function::<Kern>("kern").expect("kern") };

    let operand_bytes: Vec<Vec<u8>> = n
        .inputs
        .iter()
        .zip(&packings)
        .map(|(&v, pk)| match c.m.constant(v) {
            Some(t) => match pk {
                Some(pk) => pk.apply(t).expect("the packing fits its constant"),
                None => bytes(t),
            },
            None => match &c.m.node(v).op {
                Op::Input { index } => bytes(&c.inputs[*index]),
                _ => panic!("test operands must be inputs or constants"),
            },
        })
        .collect();
    // Operands live in their own allocations (never overlapping the output), 64-byte aligned.
    let aligned = |b: &[u8]| -> Vec<u64> {
        let mut v = vec![0u64; b.len().div_ceil(8) + 8];
        // SAFETY: `v` holds at least `b.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), v.as_mut_ptr() as *mut u8, b.len()) };
        v
    };
    let bufs: Vec<Vec<u64>> = operand_bytes.iter().map(|b| aligned(b)).collect();
    let arg_ptrs: Vec<*const u8> = bufs.iter().map(|b| b.as_ptr() as *const u8).collect();
    let out_len = n.ty.size_bytes();
    let mut out = vec![GUARD_BYTE; out_len + GUARD];
    let total_scratch = sbytes * tasks as usize;
    // Scratch starts as NaN-ish garbage so reads before writes show up.
    let mut scratch = vec![0xFFu8; total_scratch + GUARD + 64];
    let base = scratch.as_mut_ptr() as usize;
    let sofs = (64 - base % 64) % 64;
    for b in &mut scratch[sofs + total_scratch..] {
        *b = GUARD_BYTE;
    }
    let start = std::time::Instant::now();
    for _ in 0..reps {
        for t in (0..tasks).rev() {
            // SAFETY: every pointer covers what the node reads or writes; tasks write disjoint
            // parts.
            unsafe {
                kern.call(
                    t,
                    arg_ptrs.as_ptr(),
                    out.as_mut_ptr(),
                    scratch.as_mut_ptr().add(sofs + t as usize * sbytes),
                );
            }
        }
    }
    let secs = start.elapsed().as_secs_f64() / reps as f64;
    assert!(
        out[out_len..].iter().all(|&b| b == GUARD_BYTE),
        "{} wrote past its output",
        n.op.name()
    );
    assert!(
        scratch[sofs + total_scratch..sofs + total_scratch + GUARD]
            .iter()
            .all(|&b| b == GUARD_BYTE),
        "{} wrote past its scratch",
        n.op.name()
    );
    let data = Data::from_le_bytes(n.ty.dtype, &out[..out_len]).expect("output bytes");
    ((data, tasks), secs)
}

/// Run the case with the generated code and the interpreter and compare. Returns the task count.
fn check_with(c: &Case, tol: Tol, tgt: &KernelTarget) -> u32 {
    let want = vitc_ir::run(&c.m, &c.inputs).expect("interpreter")[0]
        .data
        .clone();
    let (got, tasks) = run_compiled(c, tgt);
    let name = c.m.node(c.m.outputs[0].1).op.name();
    assert_eq!(got.dtype(), want.dtype(), "{name}: dtype");
    assert_eq!(got.len(), want.len(), "{name}: length");
    let is_float = want.dtype().is_float();
    let scale = (0..want.len())
        .map(|i| want.get_f64(i).abs())
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max);
    for i in 0..want.len() {
        let (g, w) = (got.get_f64(i), want.get_f64(i));
        let ok = if !is_float || matches!(tol, Tol::Exact) {
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan())
        } else if w.is_nan() || g.is_nan() {
            w.is_nan() && g.is_nan()
        } else if w.is_infinite() || g.is_infinite() {
            g == w
        } else {
            let lim = match tol {
                Tol::Rel(t) => t * w.abs(),
                Tol::Max(t) => t * scale,
                Tol::Exact => 0.0,
            };
            (g - w).abs() <= lim.max(1e-37)
        };
        assert!(
            ok,
            "{name} on {} ({} tasks): element {i}: got {g}, want {w}",
            tgt.name, tasks
        );
    }
    tasks
}

/// Check on the vector widths: AVX2-like (8 lanes, FMA), 4 lanes without FMA, NEON-like (4
/// lanes with FMA: the by-element GEMM tile), AVX-512.
fn check(c: &Case, tol: Tol) -> u32 {
    let t = check_with(c, tol, &target(8, true));
    check_with(c, tol, &target(4, false));
    check_with(c, tol, &target(4, true));
    check_with(c, tol, &target(16, true));
    t
}

/// Check on the default (8-lane, FMA) target only, for the slower cases.
fn check8(c: &Case, tol: Tol) -> u32 {
    check_with(c, tol, &target(8, true))
}

// ---------------------------------------------------------------------------------------------
// Elementwise

#[test]
fn unary_float_ops() {
    for (k, u) in UnaryOp::ALL.into_iter().enumerate() {
        if u == UnaryOp::Not {
            continue;
        }
        let mut c = Case::new(k as u64);
        let positive = matches!(u, UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Log);
        let (lo, hi) = if positive { (0.01, 9.0) } else { (-6.0, 6.0) };
        let mut t = c.rand_f(&[3, 37], lo, hi);
        if let Data::F32(v) = &mut t.data {
            // Ties for round, and the exact values hard_sigmoid and relu switch at.
            v[..6].copy_from_slice(&[0.5, 1.5, -2.5, -3.0, 3.0, 0.0]);
            if positive {
                v[..6].copy_from_slice(&[0.5, 1.5, 2.5, 3.0, 3.0, 1.0]);
            }
        }
        let x = c.input(t);
        c.op(Op::Unary(u), vec![x]);
        check8(&c, Tol::Rel(1e-5));
    }
}

#[test]
fn binary_float_broadcasting() {
    let ops = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Equal,
        BinaryOp::Less,
        BinaryOp::Greater,
    ];
    let shapes: [(&[usize], &[usize]); 4] = [
        (&[2, 1, 37], &[5, 1]),
        (&[4, 1], &[1, 3]),
        (&[], &[19]),
        (&[3, 17], &[3, 17]),
    ];
    for (k, op) in ops.into_iter().enumerate() {
        for (s, (a, b)) in shapes.iter().enumerate() {
            let mut c = Case::new((k * 10 + s) as u64);
            let ta = c.rand_f(a, -2.0, 2.0);
            let mut tb = c.rand_f(b, -2.0, 2.0);
            if let (Data::F32(v), Data::F32(w)) = (&ta.data, &mut tb.data) {
                // Some equal pairs so the comparisons see both outcomes.
                if v.len() == w.len() {
                    w[0] = v[0];
                }
            }
            let (x, y) = (c.input(ta), c.input(tb));
            c.op(Op::Binary(op), vec![x, y]);
            if s == 0 {
                check(&c, Tol::Rel(1e-6));
            } else {
                check8(&c, Tol::Rel(1e-6));
            }
        }
    }
}

#[test]
fn pow_with_special_and_general_exponents() {
    for (k, e) in [2.0f32, 3.0, 0.5, 1.7, -1.3].into_iter().enumerate() {
        let mut c = Case::new(100 + k as u64);
        let t = c.rand_f(&[5, 13], 0.05, 4.0);
        let x = c.input(t);
        let y = c.constant(Tensor::scalar_f32(e));
        c.op(Op::Binary(BinaryOp::Pow), vec![x, y]);
        check8(&c, Tol::Rel(2e-6));
    }
    // Elementwise exponents, negative bases with integer exponents.
    let mut c = Case::new(120);
    let xs: Vec<f32> = (0..40).map(|i| (i as f32 - 20.0) * 0.37).collect();
    let ys: Vec<f32> = (0..40).map(|i| ((i % 7) as f32) - 3.0).collect();
    let x = c.input(Tensor::f32(vec![40], xs));
    let y = c.input(Tensor::f32(vec![40], ys));
    c.op(Op::Binary(BinaryOp::Pow), vec![x, y]);
    check(&c, Tol::Rel(2e-6));
}

#[test]
fn integer_binary_ops() {
    let ops = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Mod,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Equal,
        BinaryOp::Less,
        BinaryOp::Greater,
    ];
    for (dk, d) in [DType::I64, DType::I32, DType::I8, DType::U8]
        .into_iter()
        .enumerate()
    {
        for (k, op) in ops.into_iter().enumerate() {
            let mut c = Case::new((200 + dk * 20 + k) as u64);
            let (lo, hi) = if d == DType::U8 {
                (0, 255)
            } else {
                (-120, 120)
            };
            let a = c.rand_i(d, &[3, 1, 21], lo, hi);
            // Divisors without zeros (the interpreter rejects division by zero).
            let mut b = c.rand_i(d, &[4, 1], lo, hi);
            let bv: Vec<i64> = b
                .to_i64_vec()
                .iter()
                .map(|&v| if v == 0 { 7 } else { v })
                .collect();
            b = Tensor::new(vec![4, 1], Data::from_i64(d, bv.into_iter()));
            let (x, y) = (c.input(a), c.input(b));
            c.op(Op::Binary(op), vec![x, y]);
            check8(&c, Tol::Exact);
        }
    }
    // i8 extremes: MIN / -1 wraps, mod signs follow the divisor.
    let mut c = Case::new(260);
    let a = Tensor::new(vec![6], Data::I8(vec![-128, -7, 7, -7, 7, 0]));
    let b = Tensor::new(vec![6], Data::I8(vec![-1, 3, -3, -3, 3, 5]));
    let (x, y) = (c.input(a), c.input(b));
    c.op(Op::Binary(BinaryOp::Div), vec![x, y]);
    check8(&c, Tol::Exact);
    let mut c = Case::new(261);
    let a = Tensor::new(vec![6], Data::I8(vec![-128, -7, 7, -7, 7, 0]));
    let b = Tensor::new(vec![6], Data::I8(vec![-1, 3, -3, -3, 3, 5]));
    let (x, y) = (c.input(a), c.input(b));
    c.op(Op::Binary(BinaryOp::Mod), vec![x, y]);
    check8(&c, Tol::Exact);
}

#[test]
fn integer_and_bool_unary_ops() {
    for (k, u) in [UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Relu]
        .into_iter()
        .enumerate()
    {
        for (dk, d) in [DType::I64, DType::I32, DType::I8, DType::U8]
            .into_iter()
            .enumerate()
        {
            let mut c = Case::new((300 + k * 5 + dk) as u64);
            let (lo, hi) = if d == DType::U8 {
                (0, 255)
            } else {
                (-128, 127)
            };
            let t = c.rand_i(d, &[2, 19], lo, hi);
            let x = c.input(t);
            c.op(Op::Unary(u), vec![x]);
            check8(&c, Tol::Exact);
        }
    }
    let mut c = Case::new(320);
    let t = c.rand_i(DType::Bool, &[27], 0, 1);
    let x = c.input(t);
    c.op(Op::Unary(UnaryOp::Not), vec![x]);
    check(&c, Tol::Exact);
}

#[test]
fn bool_binary_ops_and_where() {
    for (k, op) in [
        BinaryOp::And,
        BinaryOp::Or,
        BinaryOp::Equal,
        BinaryOp::Less,
        BinaryOp::Greater,
        BinaryOp::Max,
        BinaryOp::Min,
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Case::new(400 + k as u64);
        let a = c.rand_i(DType::Bool, &[2, 1, 19], 0, 1);
        let b = c.rand_i(DType::Bool, &[3, 19], 0, 1);
        let (x, y) = (c.input(a), c.input(b));
        c.op(Op::Binary(op), vec![x, y]);
        check8(&c, Tol::Exact);
    }
    // where: cond [1, 37], a [3, 37], b scalar; and on i64.
    let mut c = Case::new(420);
    let cond = c.rand_i(DType::Bool, &[1, 37], 0, 1);
    let cnd = c.input(cond);
    let a = c.x(&[3, 37]);
    let b = c.constant(Tensor::scalar_f32(-9.5));
    c.op(Op::Where, vec![cnd, a, b]);
    check(&c, Tol::Exact);
    let mut c = Case::new(421);
    let cond = c.rand_i(DType::Bool, &[4, 1], 0, 1);
    let cnd = c.input(cond);
    let a = c.rand_i(DType::I64, &[4, 9], -1000, 1000);
    let b = c.rand_i(DType::I64, &[9], -5, 5);
    let (a, b) = (c.input(a), c.input(b));
    c.op(Op::Where, vec![cnd, a, b]);
    check8(&c, Tol::Exact);
}

#[test]
fn clip_float_and_int() {
    for (k, (lo, hi)) in [
        (Some(-0.3f32), Some(0.4f32)),
        (None, Some(0.1)),
        (Some(0.2), None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Case::new(500 + k as u64);
        let x = c.x(&[5, 23]);
        c.op(Op::Clip { min: lo, max: hi }, vec![x]);
        check8(&c, Tol::Exact);
    }
    for (k, d) in [DType::I64, DType::U8, DType::I8].into_iter().enumerate() {
        let mut c = Case::new(510 + k as u64);
        let t = c.rand_i(d, &[40], if d == DType::U8 { 0 } else { -100 }, 100);
        let x = c.input(t);
        c.op(
            Op::Clip {
                min: Some(-20.5),
                max: Some(50.2),
            },
            vec![x],
        );
        check8(&c, Tol::Exact);
    }
}

#[test]
fn casts() {
    let pairs = [
        (DType::F32, DType::I64),
        (DType::F32, DType::I32),
        (DType::F32, DType::I8),
        (DType::F32, DType::U8),
        (DType::F32, DType::Bool),
        (DType::I64, DType::F32),
        (DType::I64, DType::I32),
        (DType::I32, DType::I8),
        (DType::I8, DType::I64),
        (DType::U8, DType::F32),
        (DType::U8, DType::I32),
        (DType::Bool, DType::F32),
        (DType::I64, DType::Bool),
        (DType::Bool, DType::I64),
    ];
    for (k, (from, to)) in pairs.into_iter().enumerate() {
        let mut c = Case::new(600 + k as u64);
        let t = match from {
            DType::F32 => {
                let mut t = c.rand_f(&[3, 23], -400.0, 400.0);
                if let Data::F32(v) = &mut t.data {
                    v[..6].copy_from_slice(&[f32::NAN, 1e20, -1e20, -0.7, 0.0, 300.5]);
                }
                t
            }
            DType::Bool => c.rand_i(from, &[3, 23], 0, 1),
            DType::U8 => c.rand_i(from, &[3, 23], 0, 255),
            DType::I8 => c.rand_i(from, &[3, 23], -128, 127),
            _ => c.rand_i(from, &[3, 23], -100_000, 100_000),
        };
        let x = c.input(t);
        c.op(Op::Cast { to }, vec![x]);
        check8(&c, Tol::Exact);
    }
}

#[test]
fn gelu_both_forms() {
    for (k, approximate) in [false, true].into_iter().enumerate() {
        let mut c = Case::new(700 + k as u64);
        let t = c.rand_f(&[7, 45], -7.0, 7.0);
        let x = c.input(t);
        c.op(Op::Gelu { approximate }, vec![x]);
        // Absolute: in the far left tail 1 + erf(x/√2) cancels, and the result keeps only erf's
        // absolute accuracy (1e-7), in the interpreter's libm erff as much as here.
        check(&c, Tol::Max(1e-6));
    }
}

#[test]
fn large_elementwise_splits_into_tasks() {
    let mut c = Case::new(800);
    let a = c.x(&[300, 257]);
    let b = c.x(&[257]);
    c.op(Op::Binary(BinaryOp::Add), vec![a, b]);
    let tasks = check8(&c, Tol::Exact);
    assert!(
        tasks > 1,
        "a 77 K-element add should split, got {tasks} task(s)"
    );
    let mut c = Case::new(801);
    let a = c.x(&[100_003]);
    c.op(Op::Unary(UnaryOp::Tanh), vec![a]);
    let tasks = check8(&c, Tol::Rel(1e-5));
    assert!(tasks > 1);
}

// ---------------------------------------------------------------------------------------------
// Data movement

#[test]
fn reshape_broadcast_transpose() {
    let mut c = Case::new(900);
    let x = c.x(&[3, 5, 7]);
    c.op(Op::Reshape { shape: vec![7, 15] }, vec![x]);
    check(&c, Tol::Exact);
    let mut c = Case::new(901);
    let x = c.x(&[3, 1]);
    c.op(
        Op::Broadcast {
            shape: vec![2, 3, 17],
        },
        vec![x],
    );
    check(&c, Tol::Exact);
    for (k, perm) in [vec![2, 0, 1], vec![1, 0, 2], vec![0, 2, 1]]
        .into_iter()
        .enumerate()
    {
        let mut c = Case::new(910 + k as u64);
        let x = c.x(&[4, 9, 13]);
        c.op(Op::Transpose { perm }, vec![x]);
        check8(&c, Tol::Exact);
    }
    let mut c = Case::new(920);
    let t = c.rand_i(DType::I64, &[2, 3, 5, 4], -9, 9);
    let x = c.input(t);
    c.op(
        Op::Transpose {
            perm: vec![0, 2, 1, 3],
        },
        vec![x],
    );
    check8(&c, Tol::Exact);
}

#[test]
fn slices_with_negative_steps() {
    let cases: [(Vec<i64>, Vec<i64>, Vec<i64>); 4] = [
        (vec![1, 0, 4], vec![6, 7, -1], vec![2, 1, -1]),
        (vec![5, 6, 0], vec![-1, 0, 5], vec![-2, -3, 2]),
        (vec![0, 3, 2], vec![6, 4, 3], vec![1, 1, 1]),
        (vec![3, 0, 1], vec![4, 7, 5], vec![1, 1, 1]),
    ];
    for (k, (starts, ends, steps)) in cases.into_iter().enumerate() {
        let mut c = Case::new(1000 + k as u64);
        let x = c.x(&[6, 7, 5]);
        c.op(
            Op::Slice {
                starts,
                ends,
                steps,
            },
            vec![x],
        );
        check8(&c, Tol::Exact);
    }
    let mut c = Case::new(1010);
    let x = c.x(&[40]);
    c.op(
        Op::Slice {
            starts: vec![39],
            ends: vec![-1],
            steps: vec![-1],
        },
        vec![x],
    );
    check(&c, Tol::Exact);
}

#[test]
fn concat_gather_pad() {
    let mut c = Case::new(1100);
    let a = c.x(&[2, 1, 5]);
    let b = c.x(&[2, 6, 5]);
    let e = c.x(&[2, 0, 5]);
    c.op(Op::Concat { axis: 1 }, vec![a, e, b, a]);
    check(&c, Tol::Exact);
    let mut c = Case::new(1101);
    let a = c.rand_i(DType::I64, &[3], -5, 5);
    let b = c.rand_i(DType::I64, &[2], -5, 5);
    let (a, b) = (c.input(a), c.input(b));
    c.op(Op::Concat { axis: 0 }, vec![a, b]);
    check8(&c, Tol::Exact);

    let mut c = Case::new(1110);
    let d = c.x(&[5, 3, 19]);
    let i = c.input(Tensor::i64(vec![2, 3], vec![4, -5, 0, -1, 2, 2]));
    c.op(Op::Gather { axis: 0 }, vec![d, i]);
    check(&c, Tol::Exact);
    let mut c = Case::new(1111);
    let d = c.x(&[5, 3, 19]);
    let i = c.input(Tensor::new(vec![], Data::I32(vec![-1])));
    c.op(Op::Gather { axis: 1 }, vec![d, i]);
    check8(&c, Tol::Exact);
    let mut c = Case::new(1112);
    let d = c.rand_i(DType::I64, &[4, 6], -50, 50);
    let d = c.input(d);
    let i = c.input(Tensor::i64(vec![3], vec![5, 0, -2]));
    c.op(Op::Gather { axis: 1 }, vec![d, i]);
    check8(&c, Tol::Exact);

    let mut c = Case::new(1120);
    let x = c.x(&[2, 3, 11]);
    c.op(
        Op::Pad {
            pads: vec![0, 1, 2, 1, 0, 3],
            value: -1.5,
        },
        vec![x],
    );
    check(&c, Tol::Exact);
    let mut c = Case::new(1121);
    let t = c.rand_i(DType::I64, &[2, 2], -5, 5);
    let x = c.input(t);
    c.op(
        Op::Pad {
            pads: vec![1, 0, 0, 2],
            value: 7.0,
        },
        vec![x],
    );
    check8(&c, Tol::Exact);
}

#[test]
fn gather_elements_awkward_shapes() {
    // Every axis of a rank-3 tensor of odd sizes, index axes longer, shorter and of length 1,
    // negative indices throughout; then the DynamicViT form ([1, N, D] tokens, [1, K, D]
    // indices that repeat along D) and rank 1.
    let cases: [(&[usize], usize, usize); 6] = [
        (&[3, 5, 7], 1, 9),
        (&[3, 5, 7], 0, 1),
        (&[3, 5, 7], 2, 13),
        (&[3, 5, 7], 1, 2),
        (&[1, 17, 19], 1, 17),
        (&[11], 0, 23),
    ];
    for (k, &(shape, axis, m)) in cases.iter().enumerate() {
        let mut c = Case::new(1130 + k as u64);
        let d = c.x(shape);
        let mut ishape = shape.to_vec();
        ishape[axis] = m;
        let dim = shape[axis] as i64;
        let it = c.rand_i(DType::I64, &ishape, -dim, dim - 1);
        let i = c.input(it);
        c.op(Op::GatherElements { axis }, vec![d, i]);
        check(&c, Tol::Exact);
    }
    // i32 indices on i64 data, and i1 data (stored as bytes).
    let mut c = Case::new(1136);
    let d = c.rand_i(DType::I64, &[4, 6], -50, 50);
    let d = c.input(d);
    let i = c.rand_i(DType::I32, &[4, 3], -6, 5);
    let i = c.input(i);
    c.op(Op::GatherElements { axis: 1 }, vec![d, i]);
    check8(&c, Tol::Exact);
    let mut c = Case::new(1137);
    let d = c.rand_i(DType::Bool, &[5, 2, 3], 0, 1);
    let d = c.input(d);
    let i = c.rand_i(DType::I64, &[7, 2, 3], -5, 4);
    let i = c.input(i);
    c.op(Op::GatherElements { axis: 0 }, vec![d, i]);
    check8(&c, Tol::Exact);
}

/// Indices the interpreter rejects: the kernel wraps a negative index once and clamps what is
/// still outside the axis, so it reads only inside the data.
#[test]
fn gather_elements_clamps_out_of_range_indices() {
    let mut c = Case::new(1140);
    let data = c.rand_f(&[2, 4, 3], -1.0, 1.0);
    let d = c.input(data.clone());
    let raw = vec![4, -5, 100, i64::MIN, i64::MAX, -4, 3, -1, 0, 7, -9, 2];
    let i = c.input(Tensor::i64(vec![2, 2, 3], raw.clone()));
    let op = Op::GatherElements { axis: 1 };
    let y = c.op(op.clone(), vec![d, i]);
    assert!(vitc_ir::run(&c.m, &c.inputs).is_err(), "the oracle refuses");
    let (got, _) = run_compiled(&c, &target(8, true));
    let fixed: Vec<i64> = raw
        .iter()
        .map(|&v| if v < 0 { v.wrapping_add(4) } else { v }.clamp(0, 3))
        .collect();
    let fixed = Tensor::i64(vec![2, 2, 3], fixed);
    let want = vitc_ir::interp::eval(&op, &[&data, &fixed], c.m.ty(y)).expect("in range");
    assert_eq!(got, want.data);
}

// ---------------------------------------------------------------------------------------------
// Products

#[test]
fn matmul_shapes() {
    let cases: [(&[usize], &[usize]); 7] = [
        (&[3, 13, 19], &[19, 21]),
        (&[2, 3, 7, 16], &[2, 3, 16, 9]),
        (&[1, 5, 8], &[3, 8, 4]),
        (&[1, 19], &[19, 1]),
        (&[4, 1, 6, 300], &[1, 2, 300, 35]),
        (&[25, 40], &[40, 33]),
        (&[2, 1, 1], &[1, 5]),
    ];
    for (k, (a, b)) in cases.into_iter().enumerate() {
        let mut c = Case::new(1200 + k as u64);
        let x = c.x(a);
        let w = c.x(b);
        c.op(Op::MatMul, vec![x, w]);
        check(&c, Tol::Max(1e-5));
    }
}

#[test]
fn matmul_with_packed_constant_b() {
    // Constant B is packed into microkernel panels: plain, broadcast over A's batch, batched,
    // and widths that leave every kind of column remainder.
    let cases: [(&[usize], &[usize]); 5] = [
        (&[37, 19], &[19, 45]),
        (&[3, 13, 19], &[19, 71]),
        (&[2, 3, 7, 16], &[2, 3, 16, 33]),
        (&[2, 1, 5, 8], &[1, 4, 8, 100]),
        (&[1, 200, 64], &[64, 97]),
    ];
    for (k, (a, b)) in cases.into_iter().enumerate() {
        let mut c = Case::new(1230 + k as u64);
        let x = c.x(a);
        let t = c.rand_f(b, -1.0, 1.0);
        let w = c.constant(t);
        c.op(Op::MatMul, vec![x, w]);
        check(&c, Tol::Max(1e-5));
    }
}

#[test]
fn big_matmul_splits_into_tasks() {
    let mut c = Case::new(1250);
    let x = c.x(&[1, 197, 64]);
    let t = c.rand_f(&[64, 200], -1.0, 1.0);
    let w = c.constant(t);
    c.op(Op::MatMul, vec![x, w]);
    let tasks = check(&c, Tol::Max(1e-5));
    assert!(tasks > 1, "5 MFLOP matmul should split, got {tasks}");
    let mut c = Case::new(1251);
    let a = c.x(&[1, 3, 50, 32]);
    let b = c.x(&[1, 3, 32, 50]);
    c.op(Op::MatMul, vec![a, b]);
    check8(&c, Tol::Max(1e-5));
}

#[test]
fn few_rows_split_columns() {
    // Few rows and many columns: tasks take column blocks (each reads B once).
    let mut c = Case::new(1260);
    let x = c.x(&[1, 20, 96]);
    let w = c.x(&[96, 700]);
    let bt = c.rand_f(&[700], -1.0, 1.0);
    let b = c.constant(bt);
    let r = c.x(&[20, 1]);
    c.op(
        Op::Linear {
            activation: Activation::Silu,
            has_bias: true,
            has_residual: true,
        },
        vec![x, w, b, r],
    );
    assert!(check(&c, Tol::Max(1e-5)) > 1);
    let mut c = Case::new(1261);
    let a = c.x(&[3, 13, 64]);
    let b = c.x(&[64, 333]);
    c.op(Op::MatMul, vec![a, b]);
    assert!(check8(&c, Tol::Max(1e-5)) > 1);
    // The int8 kernels want ~2 M multiply-adds a task (a quarter of the f32 GEMM's time per
    // product), so this one is that large.
    let mut c = Case::new(1262);
    let xt = c.rand_f(&[20, 256], -2.0, 2.0);
    let x = c.input(xt);
    let wt = c.rand_i(DType::I8, &[256, 900], -128, 127);
    let w = c.constant(wt);
    let ws = c.rand_f(&[900], 0.001, 0.01);
    let ws = c.constant(ws);
    let wz = c.rand_i(DType::I8, &[900], -3, 3);
    let wz = c.constant(wz);
    c.op(
        Op::QLinear {
            x_scale: 0.03,
            x_zero_point: -1,
            x_type: DType::I8,
            has_bias: false,
        },
        vec![x, w, ws, wz],
    );
    assert!(check(&c, Tol::Exact) > 1);
}

#[test]
fn linear_epilogues() {
    for (k, act) in Activation::ALL.into_iter().enumerate() {
        for (r, res_shape) in [None, Some(vec![2, 7, 27]), Some(vec![27]), Some(vec![7, 1])]
            .into_iter()
            .enumerate()
        {
            let mut c = Case::new((1300 + k * 10 + r) as u64);
            let x = c.x(&[2, 7, 20]);
            let wt = c.rand_f(&[20, 27], -0.5, 0.5);
            let w = c.constant(wt);
            let bt = c.rand_f(&[27], -1.0, 1.0);
            let bias = c.constant(bt);
            let mut ins = vec![x, w, bias];
            if let Some(s) = &res_shape {
                ins.push(c.x(s));
            }
            c.op(
                Op::Linear {
                    activation: act,
                    has_bias: true,
                    has_residual: res_shape.is_some(),
                },
                ins,
            );
            if r == 1 {
                check(&c, Tol::Max(1e-5));
            } else {
                check8(&c, Tol::Max(1e-5));
            }
        }
    }
    // Without bias, one row, big enough to split.
    let mut c = Case::new(1390);
    let x = c.x(&[1, 64]);
    let w = c.x(&[64, 45]);
    c.op(
        Op::Linear {
            activation: Activation::None,
            has_bias: false,
            has_residual: false,
        },
        vec![x, w],
    );
    check(&c, Tol::Max(1e-5));
    let mut c = Case::new(1391);
    let x = c.x(&[197, 192]);
    let w = c.x(&[192, 100]);
    c.op(
        Op::Linear {
            activation: Activation::Gelu,
            has_bias: false,
            has_residual: false,
        },
        vec![x, w],
    );
    assert!(check8(&c, Tol::Max(1e-5)) > 1);
}

// ---------------------------------------------------------------------------------------------
// Convolution

#[allow(clippy::too_many_arguments)]
fn conv_case(
    seed: u64,
    x: &[usize],
    w: &[usize],
    strides: [usize; 2],
    pads: [usize; 4],
    dilations: [usize; 2],
    group: usize,
    bias: bool,
) -> Case {
    let mut c = Case::new(seed);
    let xv = c.x(x);
    let wt = c.rand_f(w, -0.5, 0.5);
    let wv = c.constant(wt);
    let mut ins = vec![xv, wv];
    if bias {
        let bt = c.rand_f(&[w[0]], -1.0, 1.0);
        ins.push(c.constant(bt));
    }
    c.op(
        Op::Conv {
            strides,
            pads,
            dilations,
            group,
            activation: Activation::None,
            has_bias: bias,
        },
        ins,
    );
    c
}

#[test]
fn conv_general() {
    let cases: Vec<Case> = vec![
        conv_case(
            1400,
            &[1, 5, 9, 11],
            &[7, 5, 3, 3],
            [1, 1],
            [1, 1, 1, 1],
            [1, 1],
            1,
            true,
        ),
        conv_case(
            1401,
            &[2, 4, 13, 10],
            &[6, 2, 3, 2],
            [2, 1],
            [0, 2, 1, 0],
            [2, 1],
            2,
            true,
        ),
        conv_case(
            1402,
            &[1, 3, 16, 16],
            &[8, 3, 4, 4],
            [4, 4],
            [0, 0, 0, 0],
            [1, 1],
            1,
            true,
        ),
        conv_case(
            1403,
            &[1, 6, 7, 9],
            &[10, 6, 1, 1],
            [1, 1],
            [0, 0, 0, 0],
            [1, 1],
            1,
            false,
        ),
        conv_case(
            1404,
            &[2, 6, 5, 5],
            &[4, 3, 1, 1],
            [1, 1],
            [0, 0, 0, 0],
            [1, 1],
            2,
            true,
        ),
        conv_case(
            1405,
            &[1, 2, 6, 6],
            &[3, 2, 3, 3],
            [2, 2],
            [2, 2, 2, 2],
            [1, 1],
            1,
            false,
        ),
    ];
    for c in &cases {
        check(c, Tol::Max(1e-5));
    }
}

#[test]
fn conv_patchify() {
    // Stride = kernel: patches gathered into rows, weights packed transposed. Odd channel
    // counts, a ragged image edge (rows and columns left over), a batch, many output channels.
    let mut cases: Vec<Case> = vec![
        conv_case(
            1450,
            &[2, 5, 14, 11],
            &[37, 5, 3, 2],
            [3, 2],
            [0, 0, 0, 0],
            [1, 1],
            1,
            true,
        ),
        conv_case(
            1451,
            &[1, 3, 64, 48],
            &[70, 3, 8, 8],
            [8, 8],
            [0, 0, 0, 0],
            [1, 1],
            1,
            false,
        ),
    ];
    // Weights that are not a constant are read transposed where they lie.
    let mut c = Case::new(1452);
    let x = c.x(&[1, 2, 12, 12]);
    let w = c.x(&[19, 2, 4, 4]);
    c.op(
        Op::Conv {
            strides: [4, 4],
            pads: [0, 0, 0, 0],
            dilations: [1, 1],
            group: 1,
            activation: Activation::None,
            has_bias: false,
        },
        vec![x, w],
    );
    cases.push(c);
    for c in &cases {
        check(c, Tol::Max(1e-5));
    }
}

#[test]
fn conv_depthwise() {
    let cases: Vec<Case> = vec![
        conv_case(
            1500,
            &[1, 4, 20, 21],
            &[4, 1, 3, 3],
            [1, 1],
            [1, 1, 1, 1],
            [1, 1],
            4,
            true,
        ),
        conv_case(
            1501,
            &[2, 3, 19, 40],
            &[3, 1, 3, 3],
            [2, 2],
            [1, 1, 1, 1],
            [1, 1],
            3,
            true,
        ),
        conv_case(
            1502,
            &[1, 2, 11, 17],
            &[4, 1, 5, 5],
            [1, 3],
            [2, 1, 0, 2],
            [1, 1],
            2,
            false,
        ),
        conv_case(
            1503,
            &[1, 3, 18, 37],
            &[3, 1, 3, 3],
            [1, 1],
            [2, 2, 2, 2],
            [2, 2],
            3,
            true,
        ),
    ];
    for c in &cases {
        check(c, Tol::Max(1e-5));
    }
}

#[test]
fn big_conv_splits_into_tasks() {
    let c = conv_case(
        1600,
        &[1, 3, 128, 128],
        &[16, 3, 4, 4],
        [4, 4],
        [0, 0, 0, 0],
        [1, 1],
        1,
        true,
    );
    assert!(check8(&c, Tol::Max(1e-5)) > 1);
    let c = conv_case(
        1601,
        &[1, 64, 41, 39],
        &[64, 1, 3, 3],
        [1, 1],
        [1, 1, 1, 1],
        [1, 1],
        64,
        true,
    );
    assert!(check8(&c, Tol::Max(1e-5)) > 1);
    let c = conv_case(
        1602,
        &[1, 24, 20, 20],
        &[64, 24, 1, 1],
        [1, 1],
        [0, 0, 0, 0],
        [1, 1],
        1,
        true,
    );
    assert!(check8(&c, Tol::Max(1e-5)) > 1);
}

/// A conv case with `act` as its epilogue.
#[allow(clippy::too_many_arguments)]
fn conv_act_case(
    seed: u64,
    x: &[usize],
    w: &[usize],
    strides: [usize; 2],
    pads: [usize; 4],
    dilations: [usize; 2],
    group: usize,
    bias: bool,
    act: Activation,
) -> Case {
    let mut c = conv_case(seed, x, w, strides, pads, dilations, group, bias);
    let id = c.m.outputs[0].1;
    if let Op::Conv { activation, .. } = &mut c.m.nodes[id.0].op {
        *activation = act;
    }
    c
}

/// Every kernel form (depthwise, pointwise, im2col, patchify) on awkward shapes, with every
/// epilogue activation: on 16- and 8-lane FMA targets for every activation, and on all four
/// test targets for one activation per case (rotating).
#[test]
fn conv_epilogues_every_form_every_activation() {
    type Geo = (
        &'static [usize],
        &'static [usize],
        [usize; 2],
        [usize; 4],
        [usize; 2],
        usize,
    );
    let forms: [(&str, Geo); 14] = [
        // Depthwise 3×3, rows narrower than a vector (masked tail), 4-row blocks and a rest.
        (
            "dw 3x3 s1",
            (&[1, 5, 7, 7], &[5, 1, 3, 3], [1, 1], [1; 4], [1, 1], 5),
        ),
        // Depthwise, stride 2: 2-row blocks, an odd row left, columns a vector and a tail.
        (
            "dw 3x3 s2",
            (&[2, 3, 23, 37], &[3, 1, 3, 3], [2, 2], [1; 4], [1, 1], 3),
        ),
        // Depthwise 5×5, pad 2, channel multiplier 2, width 14 (one vector + tail on 8 lanes).
        (
            "dw 5x5 mult",
            (&[1, 3, 14, 14], &[6, 1, 5, 5], [1, 1], [2; 4], [1, 1], 3),
        ),
        // Depthwise, dilation 2 and asymmetric pads; stride 3 (one row per block).
        (
            "dw dil",
            (
                &[1, 2, 13, 19],
                &[2, 1, 3, 3],
                [1, 1],
                [2, 1, 2, 3],
                [2, 2],
                2,
            ),
        ),
        (
            "dw s3",
            (&[1, 2, 17, 40], &[2, 1, 3, 3], [3, 3], [1; 4], [1, 1], 2),
        ),
        // A kernel too big to unroll (56 taps) and a stride the vectors cannot take (5).
        (
            "dw big",
            (&[1, 2, 12, 20], &[2, 1, 7, 8], [1, 1], [3; 4], [1, 1], 2),
        ),
        (
            "dw s5",
            (&[1, 2, 11, 23], &[2, 1, 3, 3], [5, 5], [1; 4], [1, 1], 2),
        ),
        // Small planes whose rows fit one vector (16 lanes): shuffled rows, stride 2 with
        // dilation and uneven pads; and rows exactly one vector wide.
        (
            "dw rows s2 dil",
            (
                &[1, 3, 13, 15],
                &[3, 1, 3, 3],
                [2, 2],
                [2, 1, 1, 2],
                [2, 1],
                3,
            ),
        ),
        (
            "dw rows full",
            (&[1, 2, 9, 16], &[4, 1, 3, 3], [1, 1], [1; 4], [1, 1], 2),
        ),
        // Pointwise on a 7×7 plane (channel blocks, a scalar pixel column), and grouped.
        (
            "pw 7x7",
            (&[1, 37, 7, 7], &[45, 37, 1, 1], [1, 1], [0; 4], [1, 1], 1),
        ),
        (
            "pw grouped",
            (&[2, 12, 5, 3], &[9, 4, 1, 1], [1, 1], [0; 4], [1, 1], 3),
        ),
        // im2col: a 3-channel stem, stride 2 (vectorised strided gathers), odd sizes.
        (
            "stem s2",
            (&[1, 3, 33, 45], &[8, 3, 3, 3], [2, 2], [1; 4], [1, 1], 1),
        ),
        (
            "grouped 3x3",
            (
                &[1, 6, 9, 10],
                &[4, 3, 3, 3],
                [1, 2],
                [1, 0, 2, 1],
                [1, 1],
                2,
            ),
        ),
        (
            "patchify",
            (&[1, 5, 12, 10], &[19, 5, 4, 2], [4, 2], [0; 4], [1, 1], 1),
        ),
    ];
    for (fi, (name, (x, w, st, pads, dil, group))) in forms.iter().enumerate() {
        for (ai, act) in Activation::ALL.into_iter().enumerate() {
            let seed = 1700 + (fi * 10 + ai) as u64;
            let bias = (fi + ai) % 2 == 0;
            let c = conv_act_case(seed, x, w, *st, *pads, *dil, *group, bias, act);
            if ai == fi % Activation::ALL.len() {
                check(&c, Tol::Max(1e-5));
            } else {
                check_with(&c, Tol::Max(1e-5), &target(16, true));
                check_with(&c, Tol::Max(1e-5), &target(8, true));
            }
            let _ = name;
        }
    }
}

/// Pointwise convolutions split over output channels, not pixel rows: a 7×7 plane with many
/// channels still makes several tasks, each a whole-plane GEMM.
#[test]
fn pointwise_conv_splits_channels() {
    let c = conv_act_case(
        1800,
        &[1, 128, 7, 7],
        &[384, 128, 1, 1],
        [1, 1],
        [0; 4],
        [1, 1],
        1,
        true,
        Activation::HardSwish,
    );
    assert!(check8(&c, Tol::Max(1e-5)) > 1);
    // Two images, fewer than the tasks wanted: blocks of each image's product.
    let c = conv_act_case(
        1801,
        &[2, 64, 20, 21],
        &[48, 64, 1, 1],
        [1, 1],
        [0; 4],
        [1, 1],
        1,
        false,
        Activation::Relu,
    );
    assert!(check8(&c, Tol::Max(1e-5)) > 2);
}

// ---------------------------------------------------------------------------------------------
// Reductions and normalisation

#[test]
fn reductions() {
    let axes_list: [(&[usize], &[usize]); 5] = [
        (&[3, 5, 37], &[2]),
        (&[3, 5, 37], &[1]),
        (&[3, 5, 7, 4], &[1, 3]),
        (&[4, 9, 6], &[0]),
        (&[2, 3, 8], &[0, 1, 2]),
    ];
    for (k, op) in ReduceOp::ALL.into_iter().enumerate() {
        for (a, (shape, axes)) in axes_list.iter().enumerate() {
            for keepdims in [false, true] {
                let mut c = Case::new((1700 + k * 20 + a * 2 + keepdims as usize) as u64);
                let t = if op == ReduceOp::Prod {
                    c.rand_f(shape, 0.8, 1.2)
                } else {
                    c.rand_f(shape, -1.0, 1.0)
                };
                let x = c.input(t);
                c.op(
                    Op::Reduce {
                        op,
                        axes: axes.to_vec(),
                        keepdims,
                    },
                    vec![x],
                );
                check8(&c, Tol::Max(1e-5));
            }
        }
    }
    for (k, op) in ReduceOp::ALL.into_iter().enumerate() {
        let mut c = Case::new(1800 + k as u64);
        let t = c.rand_i(DType::I64, &[3, 4, 5], -9, 9);
        let x = c.input(t);
        c.op(
            Op::Reduce {
                op,
                axes: vec![1],
                keepdims: false,
            },
            vec![x],
        );
        check8(&c, Tol::Exact);
    }
    // Row mode across targets, long rows split over tasks.
    let mut c = Case::new(1810);
    let x = c.x(&[2000, 601]);
    c.op(
        Op::Reduce {
            op: ReduceOp::Mean,
            axes: vec![1],
            keepdims: true,
        },
        vec![x],
    );
    assert!(check(&c, Tol::Max(1e-5)) > 1);
}

#[test]
fn softmax_axes() {
    for (k, (shape, axis)) in [
        (vec![3, 4, 37], 2),
        (vec![3, 7, 5], 1),
        (vec![1, 3], 1),
        (vec![6, 2], 0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Case::new(1900 + k as u64);
        let t = c.rand_f(&shape, -8.0, 8.0);
        let x = c.input(t);
        c.op(Op::Softmax { axis }, vec![x]);
        check(&c, Tol::Max(1e-6));
    }
    let mut c = Case::new(1910);
    let x = c.x(&[12, 197, 197]);
    c.op(Op::Softmax { axis: 2 }, vec![x]);
    assert!(check8(&c, Tol::Max(1e-6)) > 1);
}

#[test]
fn layer_norms() {
    let mut c = Case::new(2000);
    let t = c.rand_f(&[2, 7, 45], -3.0, 5.0);
    let x = c.input(t);
    let s = c.x(&[45]);
    let b = c.x(&[45]);
    c.op(
        Op::LayerNorm {
            axis: 2,
            epsilon: 1e-5,
            has_bias: true,
        },
        vec![x, s, b],
    );
    check(&c, Tol::Max(1e-5));
    let mut c = Case::new(2001);
    let x = c.x(&[2, 3, 5]);
    let s = c.x(&[5]);
    c.op(
        Op::LayerNorm {
            axis: 1,
            epsilon: 1e-6,
            has_bias: false,
        },
        vec![x, s],
    );
    check(&c, Tol::Max(1e-5));
    let mut c = Case::new(2002);
    let x = c.x(&[4, 3, 6]);
    let s = c.x(&[3, 1]);
    let b = c.x(&[3, 6]);
    c.op(
        Op::LayerNorm {
            axis: 1,
            epsilon: 1e-6,
            has_bias: true,
        },
        vec![x, s, b],
    );
    check8(&c, Tol::Max(1e-5));
    let mut c = Case::new(2003);
    let t = c.rand_f(&[4, 197, 192], 50.0, 52.0);
    let x = c.input(t);
    let s = c.x(&[192]);
    let b = c.x(&[192]);
    c.op(
        Op::LayerNorm {
            axis: 2,
            epsilon: 1e-6,
            has_bias: true,
        },
        vec![x, s, b],
    );
    assert!(check8(&c, Tol::Max(1e-4)) > 1);
}

// ---------------------------------------------------------------------------------------------
// Attention

fn attn_shape(l: AttnLayout, b: usize, h: usize, s: usize, d: usize) -> Vec<usize> {
    match l {
        AttnLayout::Bsd => vec![b, s, h * d],
        AttnLayout::Bhsd => vec![b, h, s, d],
        AttnLayout::Bhds => vec![b, h, d, s],
        AttnLayout::Bshd => vec![b, s, h, d],
    }
}

#[allow(clippy::too_many_arguments)]
fn attn_case(
    seed: u64,
    layouts: [AttnLayout; 4],
    dims: [usize; 5],
    dv: usize,
    bias: Option<Vec<usize>>,
    mask: Option<(Vec<usize>, bool)>,
) -> Case {
    let [b, h, sq, sk, d] = dims;
    let mut c = Case::new(seed);
    let q = c.x(&attn_shape(layouts[0], b, h, sq, d));
    let k = c.x(&attn_shape(layouts[1], b, h, sk, d));
    let v = c.x(&attn_shape(layouts[2], b, h, sk, dv));
    let mut ins = vec![q, k, v];
    if let Some(s) = &bias {
        let t = c.rand_f(s, -2.0, 2.0);
        ins.push(c.input(t));
    }
    if let Some((s, fully_masked_row)) = &mask {
        let mut t = c.rand_i(DType::Bool, s, 0, 1);
        if *fully_masked_row {
            if let Data::Bool(v) = &mut t.data {
                let last = *s.last().expect("mask rank");
                let n = v.len();
                v[n - last..].fill(false);
            }
        }
        ins.push(c.input(t));
    }
    c.op(
        Op::Attention {
            heads: h,
            scale: 0.37,
            q_layout: layouts[0],
            k_layout: layouts[1],
            v_layout: layouts[2],
            out_layout: layouts[3],
            has_bias: bias.is_some(),
            has_mask: mask.is_some(),
        },
        ins,
    );
    c
}

#[test]
fn attention_layouts() {
    use AttnLayout::*;
    let all = AttnLayout::ALL;
    let mut seed = 2100;
    // Every layout in every position, with the others varied.
    for i in 0..4 {
        for (j, &l) in all.iter().enumerate() {
            let mut ls = [all[(j + 1) % 4], all[(j + 2) % 4], all[(j + 3) % 4], all[j]];
            ls[i] = l;
            seed += 1;
            let c = attn_case(seed, ls, [2, 2, 7, 11, 5], 3, None, None);
            check8(&c, Tol::Max(1e-5));
        }
    }
    let c = attn_case(2150, [Bsd, Bsd, Bsd, Bsd], [1, 3, 13, 13, 8], 8, None, None);
    check(&c, Tol::Max(1e-5));
}

fn linear_attn_case(seed: u64, layouts: [AttnLayout; 4], dims: [usize; 5], dv: usize) -> Case {
    let [b, h, sq, sk, d] = dims;
    let mut c = Case::new(seed);
    let q = c.x(&attn_shape(layouts[0], b, h, sq, d));
    let k = c.x(&attn_shape(layouts[1], b, h, sk, d));
    let v = c.x(&attn_shape(layouts[2], b, h, sk, dv));
    c.op(
        Op::LinearAttention {
            heads: h,
            eps: 1e-5,
            q_layout: layouts[0],
            k_layout: layouts[1],
            v_layout: layouts[2],
            out_layout: layouts[3],
        },
        vec![q, k, v],
    );
    c
}

/// Every layout in every position; odd sequence lengths and head dims (Dv + 1 not a multiple of
/// any vector width); Sq ≠ Sk; more items than tasks; and EfficientViT's own shape.
#[test]
fn linear_attention_layouts_and_shapes() {
    use AttnLayout::*;
    let all = AttnLayout::ALL;
    let mut seed = 2600;
    for i in 0..4 {
        for (j, &l) in all.iter().enumerate() {
            let mut ls = [all[(j + 1) % 4], all[(j + 2) % 4], all[(j + 3) % 4], all[j]];
            ls[i] = l;
            seed += 1;
            let c = linear_attn_case(seed, ls, [2, 2, 7, 11, 5], 3);
            check8(&c, Tol::Max(1e-5));
        }
    }
    for (dims, dv) in [
        ([1, 1, 1, 1, 1], 1),
        ([1, 3, 13, 5, 16], 16),
        ([2, 4, 9, 9, 7], 15),
        ([1, 8, 196, 196, 16], 16),
    ] {
        seed += 1;
        let c = linear_attn_case(seed, [Bhsd, Bhds, Bhsd, Bhsd], dims, dv);
        check(&c, Tol::Max(1e-5));
    }
}

#[test]
fn attention_bias_and_mask() {
    use AttnLayout::*;
    let c = attn_case(
        2200,
        [Bhsd, Bhds, Bsd, Bsd],
        [2, 2, 7, 11, 5],
        5,
        Some(vec![2, 1, 11]),
        Some((vec![2, 1, 7, 11], true)),
    );
    check(&c, Tol::Max(1e-5));
    let c = attn_case(
        2201,
        [Bshd, Bshd, Bshd, Bhds],
        [1, 3, 9, 17, 4],
        6,
        Some(vec![1, 3, 9, 17]),
        None,
    );
    check(&c, Tol::Max(1e-5));
    let c = attn_case(
        2202,
        [Bsd, Bsd, Bhds, Bshd],
        [2, 2, 5, 20, 3],
        3,
        None,
        Some((vec![20], false)),
    );
    check8(&c, Tol::Max(1e-5));
}

#[test]
fn attention_transposes_k_in_blocks() {
    use AttnLayout::*;
    let c = attn_case(
        2250,
        [Bsd, Bshd, Bhds, Bhsd],
        [1, 2, 9, 37, 16],
        20,
        None,
        None,
    );
    check(&c, Tol::Max(1e-5));
}

#[test]
fn attention_query_blocks_and_tails() {
    // Query counts around the block width of every target (whole blocks, a tail that is not a
    // whole vector), a single key, and the DeiT-Tiny shape.
    use AttnLayout::*;
    for (k, dims) in [
        [1, 2, 71, 45, 16],
        [1, 1, 33, 1, 8],
        [2, 1, 5, 3, 7],
        [1, 3, 197, 197, 64],
    ]
    .into_iter()
    .enumerate()
    {
        let c = attn_case(
            2280 + k as u64,
            [Bsd, Bsd, Bsd, Bsd],
            dims,
            dims[4],
            None,
            None,
        );
        check(&c, Tol::Max(1e-5));
    }
    let c = attn_case(
        2290,
        [Bhds, Bhsd, Bhds, Bshd],
        [1, 2, 40, 19, 8],
        9,
        None,
        None,
    );
    check(&c, Tol::Max(1e-5));
}

#[test]
fn attention_long_sequences_use_online_softmax() {
    // Keys in several chunks on every target (1024 a chunk on AVX-512, 2048 on AVX2, 2730 on
    // NEON): whole chunks, a tail, and the chunk loop.
    use AttnLayout::*;
    for (k, sk) in [3000usize, 4096, 5461].into_iter().enumerate() {
        let c = attn_case(
            2295 + k as u64,
            [Bsd, Bhsd, Bhds, Bsd],
            [1, 2, 37, sk, 8],
            5,
            None,
            None,
        );
        check(&c, Tol::Max(1e-5));
    }
}

#[test]
fn big_attention_splits_into_tasks() {
    use AttnLayout::*;
    let c = attn_case(
        2300,
        [Bhsd, Bhds, Bhsd, Bsd],
        [1, 3, 64, 70, 32],
        32,
        None,
        None,
    );
    assert!(check8(&c, Tol::Max(1e-5)) > 1);
    let c = attn_case(
        2301,
        [Bsd, Bsd, Bsd, Bsd],
        [8, 3, 49, 49, 32],
        32,
        Some(vec![3, 49, 49]),
        None,
    );
    assert!(check8(&c, Tol::Max(1e-5)) > 1);
}

// ---------------------------------------------------------------------------------------------
// Quantization

#[test]
fn quantize_ties_saturation_and_axes() {
    let xs = vec![
        0.5f32,
        1.5,
        2.5,
        -0.5,
        -1.5,
        -2.5,
        1000.0,
        -1000.0,
        0.74,
        f32::NAN,
        126.5,
        -127.5,
    ];
    for (k, (to, zp)) in [
        (DType::I8, 0i64),
        (DType::U8, 128),
        (DType::I8, -3),
        (DType::I32, 5),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Case::new(2400 + k as u64);
        let x = c.input(Tensor::f32(vec![12], xs.clone()));
        let s = c.constant(Tensor::scalar_f32(if to == DType::U8 { 0.5 } else { 1.0 }));
        let z = c.constant(Tensor::new(vec![], Data::from_i64(to, [zp].into_iter())));
        c.op(Op::Quantize { axis: None, to }, vec![x, s, z]);
        check8(&c, Tol::Exact);
    }
    let mut c = Case::new(2410);
    let x = c.x(&[3, 4, 19]);
    let st = c.rand_f(&[4], 0.002, 0.02);
    let s = c.constant(st);
    let zt = c.rand_i(DType::I8, &[4], -10, 10);
    let z = c.constant(zt);
    c.op(
        Op::Quantize {
            axis: Some(1),
            to: DType::I8,
        },
        vec![x, s, z],
    );
    check(&c, Tol::Exact);
}

#[test]
fn dequantize_types_and_axes() {
    for (k, d) in [DType::I8, DType::U8, DType::I32].into_iter().enumerate() {
        let mut c = Case::new(2500 + k as u64);
        let (lo, hi) = match d {
            DType::U8 => (0, 255),
            DType::I8 => (-128, 127),
            _ => (-100_000, 100_000),
        };
        let t = c.rand_i(d, &[2, 5, 23], lo, hi);
        let x = c.input(t);
        let st = c.rand_f(&[5], 0.001, 0.1);
        let s = c.constant(st);
        let zt = c.rand_i(d, &[5], lo.max(-20), hi.min(20));
        let z = c.constant(zt);
        c.op(Op::Dequantize { axis: Some(1) }, vec![x, s, z]);
        check8(&c, Tol::Exact);
    }
    let mut c = Case::new(2510);
    let t = c.rand_i(DType::I8, &[77], -128, 127);
    let x = c.input(t);
    let s = c.constant(Tensor::scalar_f32(0.037));
    let z = c.constant(Tensor::new(vec![], Data::I8(vec![3])));
    c.op(Op::Dequantize { axis: None }, vec![x, s, z]);
    check(&c, Tol::Exact);
}

#[test]
fn qlinear_variants() {
    for (k, (x_type, xz, per_col, wd)) in [
        (DType::I8, 3i32, false, DType::I8),
        (DType::I8, 3, true, DType::I8),
        (DType::U8, 128, true, DType::I8),
        (DType::U8, 120, false, DType::U8),
        (DType::I8, -2_000_000_000, false, DType::I8),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Case::new(2600 + k as u64);
        let xt = c.rand_f(&[2, 9, 37], -2.0, 2.0);
        let x = c.input(xt);
        let (lo, hi) = if wd == DType::U8 {
            (0, 255)
        } else {
            (-128, 127)
        };
        let wt = c.rand_i(wd, &[37, 29], lo, hi);
        let w = c.constant(wt);
        let shp: Vec<usize> = if per_col { vec![29] } else { vec![] };
        let ws = c.rand_f(&shp, 0.001, 0.01);
        let ws = c.constant(ws);
        let wz = c.rand_i(wd, &shp, lo.max(-5), hi.min(5));
        let wz = c.constant(wz);
        let bt = c.rand_f(&[29], -1.0, 1.0);
        let b = c.constant(bt);
        c.op(
            Op::QLinear {
                x_scale: 0.02,
                x_zero_point: xz,
                x_type,
                has_bias: true,
            },
            vec![x, w, ws, wz, b],
        );
        if k == 1 {
            check(&c, Tol::Exact);
        } else {
            check8(&c, Tol::Exact);
        }
    }
}

/// The int8 microkernels of `vit.qlinear` (weights packed, x quantized to s8 in scratch, exact
/// i32 sums, zero-point terms removed in the epilogue) against the interpreter, bit for bit, on
/// every scheme this machine can run: VNNI at 16, 8 and 4 lanes where the host has
/// AVX512-VNNI, and the plain widening scheme at 16, 8 and 4 lanes. Shapes: M = 1, K not a
/// multiple of 4 (or 1), N not a multiple of any tile (or below 4), per-tensor and per-channel
/// scales, i8 and u8 activations and weights with nonzero zero points, with and without bias,
/// saturating and NaN inputs, and splits by rows and by columns.
#[test]
fn qlinear_int8_kernels() {
    let (_, feats) = host();
    let host_has = |f: &str| feats.split(',').any(|x| x == format!("+{f}"));
    let mut targets = vec![];
    if host_has("avx512vnni") && host_has("avx512vl") {
        for lanes in [16, 8, 4] {
            targets.push(KernelTarget {
                int8: super::Int8Isa::Avx512Vnni,
                ..target(lanes, true)
            });
        }
    } else {
        eprintln!("host without AVX512-VNNI: only the plain int8 scheme is run");
    }
    for lanes in [16, 8, 4] {
        targets.push(target(lanes, true));
    }
    // (m, k, n, x type, x zero point, per channel, weight type, bias, NaN/saturating x)
    #[allow(clippy::type_complexity)]
    let cases: [(usize, usize, usize, DType, i32, bool, DType, bool, bool); 13] = [
        (1, 37, 29, DType::I8, -2, true, DType::I8, true, false),
        (5, 3, 7, DType::U8, 131, false, DType::I8, true, false),
        (13, 1, 3, DType::I8, 0, true, DType::I8, false, false),
        (7, 64, 33, DType::I8, 127, true, DType::U8, true, true),
        (12, 130, 77, DType::U8, 0, true, DType::U8, false, true),
        (2, 9, 1, DType::U8, 255, false, DType::U8, true, false),
        (25, 70, 50, DType::I8, -128, false, DType::I8, true, true),
        (3, 16, 100, DType::U8, 7, true, DType::I8, true, false),
        (11, 5, 4, DType::I8, 3, true, DType::I8, true, false),
        (197, 24, 20, DType::I8, -5, true, DType::I8, true, false),
        // Weights as a graph input (never packed: the generic kernel), in two tasks.
        (30, 300, 500, DType::U8, 9, true, DType::I8, true, false),
        // Several tasks: blocks of rows, then (few rows) blocks of columns.
        (100, 203, 198, DType::I8, 2, true, DType::I8, true, false),
        (20, 405, 613, DType::U8, 100, true, DType::U8, true, false),
    ];
    for (i, &(m, k, n, xt, xz, per_col, wd, has_bias, wild)) in cases.iter().enumerate() {
        let mut c = Case::new(3100 + i as u64);
        let mut xv = c.rand_f(&[m, k], -2.0, 2.0);
        if wild {
            if let Data::F32(v) = &mut xv.data {
                let l = v.len();
                v[0] = f32::NAN;
                v[l / 2] = 1e6;
                v[l - 1] = f32::NEG_INFINITY;
            }
        }
        let x = c.input(xv);
        let (lo, hi) = if wd == DType::U8 {
            (0, 255)
        } else {
            (-128, 127)
        };
        let wt = c.rand_i(wd, &[k, n], lo, hi);
        let w = if i == 10 { c.input(wt) } else { c.constant(wt) };
        let shp: Vec<usize> = if per_col { vec![n] } else { vec![] };
        let ws = c.rand_f(&shp, 0.001, 0.01);
        let ws = c.constant(ws);
        let (zlo, zhi) = if wd == DType::U8 { (120, 135) } else { (-6, 6) };
        let wz = c.rand_i(wd, &shp, zlo, zhi);
        let wz = c.constant(wz);
        let mut ins = vec![x, w, ws, wz];
        if has_bias {
            let bt = c.rand_f(&[n], -1.0, 1.0);
            ins.push(c.constant(bt));
        }
        c.op(
            Op::QLinear {
                x_scale: 0.013,
                x_zero_point: xz,
                x_type: xt,
                has_bias,
            },
            ins,
        );
        for t in &targets {
            let tasks = check_with(&c, Tol::Exact, t);
            if i >= 10 {
                assert!(tasks > 1, "case {i} on {}: {tasks} task", t.name);
            }
        }
    }
}

#[test]
fn malformed_nodes_are_errors_not_panics() {
    let mut c = Case::new(2700);
    let x = c.x(&[3, 4]);
    let y = c.op(Op::Unary(UnaryOp::Exp), vec![x]);
    let mut n = c.m.node(y).clone();
    n.ty = vitc_ir::TensorType::new(vec![4, 3], DType::F32);
    let tys = [c.m.ty(x)];
    assert_eq!(task_count(&n, &tys, &target(8, true)), 1);
    assert_eq!(scratch_bytes(&n, &tys, &target(8, true)), 0);
    let ctx = Context::create();
    let module = ctx.create_module("m");
    let builder = ctx.create_builder();
    let ptr = ctx.ptr_type(AddressSpace::default());
    let f = module.add_function("f", ctx.void_type().fn_type(&[ptr.into()], false), None);
    builder.position_at_end(ctx.append_basic_block(f, "entry"));
    let p = f.get_nth_param(0).expect("p").into_pointer_value();
    let tgt = target(8, true);
    let mut cx = Cx {
        ctx: &ctx,
        module: &module,
        builder: &builder,
        func: f,
        target: &tgt,
        packed: &[],
    };
    let e = emit_node(&mut cx, &n, &tys, &[p], p, p, ctx.i32_type().const_zero());
    assert!(matches!(e, Err(super::KernelError::Unsupported { .. })));
    // f16 arithmetic is refused with a reason.
    let mut m = Module::new("h");
    let a = m.add_input("a", vitc_ir::TensorType::new(vec![4], DType::F16));
    let y = m.add(Op::Unary(UnaryOp::Exp), vec![a], "e").expect("typed");
    let n = m.node(y).clone();
    let tys = [m.ty(a)];
    let e = emit_node(&mut cx, &n, &tys, &[p], p, p, ctx.i32_type().const_zero());
    match e {
        Err(super::KernelError::Unsupported { why, .. }) => assert!(why.contains("f16"), "{why}"),
        other => panic!("expected unsupported, got {other:?}"),
    }
}

/// Timings of the main kernels on this machine (single thread, all tasks in sequence):
/// `cargo test -p vitc-llvm --lib bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_kernels() {
    use AttnLayout::*;
    let mut cases: Vec<(&str, Case, f64)> = vec![];
    let mut c = Case::new(1);
    let x = c.x(&[197, 192]);
    let wt = c.rand_f(&[192, 768], -0.1, 0.1);
    let w = c.constant(wt);
    let bt = c.rand_f(&[768], -0.1, 0.1);
    let b = c.constant(bt);
    c.op(
        Op::Linear {
            activation: Activation::Gelu,
            has_bias: true,
            has_residual: false,
        },
        vec![x, w, b],
    );
    cases.push(("linear 197x192x768 gelu", c, 2.0 * 197.0 * 192.0 * 768.0));
    let mut c = Case::new(2);
    let x = c.x(&[197, 768]);
    let wt = c.rand_f(&[768, 192], -0.1, 0.1);
    let w = c.constant(wt);
    c.op(
        Op::Linear {
            activation: Activation::None,
            has_bias: false,
            has_residual: false,
        },
        vec![x, w],
    );
    cases.push(("linear 197x768x192", c, 2.0 * 197.0 * 192.0 * 768.0));
    for (m, k, n) in [
        (197, 192, 576),
        (197, 192, 192),
        (49, 1536, 384),
        (49, 384, 1536),
    ] {
        let mut c = Case::new(9);
        let x = c.x(&[m, k]);
        let wt = c.rand_f(&[k, n], -0.1, 0.1);
        let w = c.constant(wt);
        c.op(Op::MatMul, vec![x, w]);
        let name: &'static str = Box::leak(format!("matmul {m}x{k}x{n}").into_boxed_str());
        cases.push((name, c, 2.0 * (m * k * n) as f64));
    }
    let c = attn_case(
        3,
        [Bsd, Bsd, Bsd, Bsd],
        [1, 3, 197, 197, 64],
        64,
        None,
        None,
    );
    cases.push((
        "attention 3x197x197x64",
        c,
        4.0 * 3.0 * 197.0 * 197.0 * 64.0,
    ));
    let c = attn_case(
        3,
        [Bsd, Bsd, Bsd, Bsd],
        [4, 4, 256, 256, 16],
        16,
        None,
        None,
    );
    cases.push((
        "attention 16x256x256x16",
        c,
        4.0 * 16.0 * 256.0 * 256.0 * 16.0,
    ));
    let c = conv_case(
        4,
        &[1, 3, 224, 224],
        &[192, 3, 16, 16],
        [16, 16],
        [0; 4],
        [1, 1],
        1,
        true,
    );
    cases.push(("conv patch 16x16 -> 192", c, 2.0 * 192.0 * 196.0 * 768.0));
    let c = conv_case(
        5,
        &[1, 96, 56, 56],
        &[96, 1, 3, 3],
        [1, 1],
        [1; 4],
        [1, 1],
        96,
        true,
    );
    cases.push(("conv depthwise 96x56x56 3x3", c, 2.0 * 96.0 * 3136.0 * 9.0));
    let c = conv_case(
        6,
        &[1, 64, 32, 32],
        &[128, 64, 3, 3],
        [1, 1],
        [1; 4],
        [1, 1],
        1,
        true,
    );
    cases.push(("conv 64->128 3x3 32x32", c, 2.0 * 128.0 * 1024.0 * 576.0));
    let mut c = Case::new(7);
    let x = c.x(&[197, 192]);
    let s = c.x(&[192]);
    let b = c.x(&[192]);
    c.op(
        Op::LayerNorm {
            axis: 1,
            epsilon: 1e-6,
            has_bias: true,
        },
        vec![x, s, b],
    );
    cases.push(("layer norm 197x192", c, 197.0 * 192.0));
    let mut c = Case::new(8);
    let x = c.x(&[197, 768]);
    c.op(Op::Gelu { approximate: false }, vec![x]);
    cases.push(("gelu 197x768", c, 197.0 * 768.0));
    let mut c = Case::new(13);
    let x = c.x(&[1, 32, 128, 128]);
    c.op(Op::Unary(UnaryOp::Sigmoid), vec![x]);
    cases.push(("sigmoid 32x128x128", c, 32.0 * 128.0 * 128.0));
    let mut c = Case::new(10);
    let x = c.x(&[3136, 48]);
    c.op(
        Op::Reshape {
            shape: vec![64, 49, 48],
        },
        vec![x],
    );
    cases.push(("reshape 150K", c, 3136.0 * 48.0));
    let mut c = Case::new(11);
    let x = c.x(&[1, 48, 56, 56]);
    c.op(
        Op::Transpose {
            perm: vec![0, 2, 3, 1],
        },
        vec![x],
    );
    cases.push(("transpose 48x3136", c, 3136.0 * 48.0));
    let mut c = Case::new(12);
    let x = c.x(&[64, 3, 49, 49]);
    c.op(Op::Softmax { axis: 3 }, vec![x]);
    cases.push(("softmax 64x3x49x49", c, 64.0 * 3.0 * 49.0 * 49.0));
    let only = std::env::var("VITC_BENCH").unwrap_or_default();
    for (name, c, flops) in &cases {
        if !name.contains(only.as_str()) {
            continue;
        }
        for lanes in [8u32, 16] {
            let ((_, tasks), secs) = run_compiled_reps(c, &target(lanes, true), 50);
            eprintln!(
                "{name:32} x{lanes:2}: {:9.1} us, {:6.2} G(FL)OP/s, {tasks} tasks",
                secs * 1e6,
                flops / secs / 1e9
            );
        }
    }
}

/// Timings of the int8 qlinear schemes and the Q/DQ kernels on deit_tiny_qdq's shapes (single
/// thread, all tasks in sequence):
/// `cargo test -p vitc-llvm --lib bench_int8 -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_int8() {
    let mut cases: Vec<(String, Case, f64)> = vec![];
    for (m, k, n) in [
        (197, 192, 576),
        (197, 192, 192),
        (197, 192, 768),
        (197, 768, 192),
    ] {
        let mut c = Case::new(20);
        let x = c.x(&[m, k]);
        let wt = c.rand_i(DType::I8, &[k, n], -128, 127);
        let w = c.constant(wt);
        let ws = c.rand_f(&[n], 0.001, 0.01);
        let ws = c.constant(ws);
        let wz = c.constant(Tensor::new(vec![n], Data::I8(vec![0; n])));
        let bt = c.rand_f(&[n], -0.1, 0.1);
        let b = c.constant(bt);
        c.op(
            Op::QLinear {
                x_scale: 0.02,
                x_zero_point: -2,
                x_type: DType::I8,
                has_bias: true,
            },
            vec![x, w, ws, wz, b],
        );
        cases.push((format!("qlinear {m}x{k}x{n}"), c, 2.0 * (m * k * n) as f64));
    }
    let mut c = Case::new(21);
    let x = c.x(&[1, 3, 197, 197]);
    let s = c.constant(Tensor::scalar_f32(0.01));
    let z = c.constant(Tensor::new(vec![], Data::I8(vec![3])));
    c.op(
        Op::Quantize {
            axis: None,
            to: DType::I8,
        },
        vec![x, s, z],
    );
    cases.push(("quantize 3x197x197".into(), c, 3.0 * 197.0 * 197.0));
    let mut c = Case::new(22);
    let xt = c.rand_i(DType::I8, &[1, 3, 197, 197], -128, 127);
    let x = c.input(xt);
    let s = c.constant(Tensor::scalar_f32(0.01));
    let z = c.constant(Tensor::new(vec![], Data::I8(vec![3])));
    c.op(Op::Dequantize { axis: None }, vec![x, s, z]);
    cases.push(("dequantize 3x197x197".into(), c, 3.0 * 197.0 * 197.0));
    let only = std::env::var("VITC_BENCH").unwrap_or_default();
    let mut targets = vec![];
    for (lanes, isa) in [
        (16, super::Int8Isa::Avx512Vnni),
        (8, super::Int8Isa::Avx512Vnni),
        (16, super::Int8Isa::X86Madd),
        (8, super::Int8Isa::X86Madd),
    ] {
        targets.push(KernelTarget {
            name: format!("{isa:?}-{lanes}"),
            int8: isa,
            ..target(lanes, true)
        });
    }
    for (name, c, ops) in &cases {
        if !name.contains(only.as_str()) {
            continue;
        }
        for t in &targets {
            let best = (0..5)
                .map(|_| run_compiled_reps(c, t, 30))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("runs");
            let ((_, tasks), secs) = best;
            eprintln!(
                "{name:24} {:16}: {:9.1} us, {:7.2} G(EL)OP/s, {tasks} tasks",
                t.name,
                secs * 1e6,
                ops / secs / 1e9
            );
        }
    }
}

/// Every distinct node (op and operand types) of real models, run by the generated code on the
/// operands the interpreter computed for it: `VITC_MODEL_IR=a.vit,b.vit cargo test -p vitc-llvm
/// --lib model_nodes -- --ignored --nocapture` (write the .vit files with `vitc M.onnx --emit ir`).
#[test]
#[ignore]
fn model_nodes() {
    let Ok(paths) = std::env::var("VITC_MODEL_IR") else {
        eprintln!("VITC_MODEL_IR not set; nothing to do");
        return;
    };
    for path in paths.split(',') {
        let text = std::fs::read_to_string(path).expect("read .vit");
        let weights = std::fs::read(format!("{path}.weights")).unwrap_or_default();
        let consts = vitc_ir::weights::read_weights(&weights).expect("weights");
        let m = vitc_ir::parse_module(&text, &consts).expect("parse");
        let mut rng = Rng(12345);
        let mut vals: Vec<Option<Tensor>> = vec![None; m.nodes.len()];
        let mut seen = std::collections::HashMap::new();
        let timing = std::env::var("VITC_TIME").is_ok();
        let (mut checked, mut skipped) = (0, 0);
        for (i, n) in m.nodes.iter().enumerate() {
            let v = match &n.op {
                Op::Input { .. } => {
                    let vs = (0..n.ty.numel()).map(|_| rng.f(-1.0, 1.0)).collect();
                    Tensor::f32(n.ty.shape.clone(), vs)
                }
                Op::Constant { name } => (*m.constants[name]).clone(),
                op => {
                    let ins: Vec<&Tensor> = n
                        .inputs
                        .iter()
                        .map(|v| vals[v.0].as_ref().expect("operand computed"))
                        .collect();
                    let y = vitc_ir::interp::eval(op, &ins, &n.ty).expect("interpreter");
                    let key = format!(
                        "{op:?} {:?}",
                        ins.iter().map(|t| t.ty()).collect::<Vec<_>>()
                    );
                    if let Some(e) = seen.get_mut(&key) {
                        let (_, count, _): &mut (String, u32, f64) = e;
                        *count += 1;
                        skipped += 1;
                    } else {
                        let mut c = Case::new(i as u64);
                        let ids: Vec<ValueId> = ins.iter().map(|t| c.input((*t).clone())).collect();
                        c.op(op.clone(), ids);
                        let tol = if n.ty.dtype.is_float() {
                            Tol::Max(2e-5)
                        } else {
                            Tol::Exact
                        };
                        let lanes = if checked % 2 == 0 { 16 } else { 8 };
                        check_with(&c, tol, &target(lanes, true));
                        let secs = if timing {
                            run_compiled_reps(&c, &target(16, true), 20).1
                        } else {
                            0.0
                        };
                        let what = format!("{} {:?}", op.name(), n.ty.shape);
                        seen.insert(key, (what, 1, secs));
                        checked += 1;
                    }
                    y
                }
            };
            vals[i] = Some(v);
        }
        eprintln!("{path}: {checked} distinct nodes checked, {skipped} repeats skipped");
        if timing {
            let mut rows: Vec<_> = seen.into_values().collect();
            rows.sort_by(|a, b| (b.2 * b.1 as f64).total_cmp(&(a.2 * a.1 as f64)));
            let total: f64 = rows.iter().map(|r| r.2 * r.1 as f64).sum();
            eprintln!(
                "  single-thread kernel time {:.2} ms; the largest:",
                total * 1e3
            );
            for (what, count, secs) in rows.iter().take(25) {
                eprintln!("  {:8.1} us x{count:3}  {what}", secs * 1e6);
            }
        }
    }
}

/// The convolutions of real models, timed one by one on the host (16 lanes, FMA): the minimum
/// over many runs, which shared machines disturb least. `VITC_MODEL_IR=a.vit cargo test -p
/// vitc-llvm --lib conv_model_node_times -- --ignored --nocapture` (`vitc M.onnx --emit ir`).
#[test]
#[ignore]
fn conv_model_node_times() {
    let Ok(paths) = std::env::var("VITC_MODEL_IR") else {
        eprintln!("VITC_MODEL_IR not set; nothing to do");
        return;
    };
    for path in paths.split(',') {
        let text = std::fs::read_to_string(path).expect("read .vit");
        let weights = std::fs::read(format!("{path}.weights")).unwrap_or_default();
        let consts = vitc_ir::weights::read_weights(&weights).expect("weights");
        let m = vitc_ir::parse_module(&text, &consts).expect("parse");
        let mut rng = Rng(777);
        let mut total = 0.0;
        for n in &m.nodes {
            if !matches!(n.op, Op::Conv { .. }) {
                continue;
            }
            let mut c = Case::new(1);
            let ids: Vec<ValueId> = n
                .inputs
                .iter()
                .map(|&v| {
                    let ty = m.ty(v);
                    match m.constant(v) {
                        Some(t) => c.constant((**t).clone()),
                        None => {
                            let vs = (0..ty.numel()).map(|_| rng.f(-1.0, 1.0)).collect();
                            c.input(Tensor::f32(ty.shape.clone(), vs))
                        }
                    }
                })
                .collect();
            c.op(n.op.clone(), ids);
            let best = (0..6)
                .map(|_| run_compiled_reps(&c, &target(16, true), 8).1)
                .fold(f64::INFINITY, f64::min);
            total += best;
            let x = &m.ty(n.inputs[0]).shape;
            let w = &m.ty(n.inputs[1]).shape;
            let flops = n.op.flops(&[x, w], &n.ty.shape) as f64;
            eprintln!(
                "{:8.1} us {:6.1} GF/s  x {x:?} w {w:?} {}",
                best * 1e6,
                flops / best / 1e9,
                n.name
            );
        }
        eprintln!("{path}: convolutions {:.3} ms", total * 1e3);
    }
}

#[test]
fn scalar_and_two_lane_targets() {
    use AttnLayout::*;
    let cases = vec![
        {
            let mut c = Case::new(2800);
            let a = c.x(&[2, 7, 13]);
            let b = c.x(&[13, 9]);
            c.op(Op::MatMul, vec![a, b]);
            (c, Tol::Max(1e-5))
        },
        (
            attn_case(
                2801,
                [Bsd, Bshd, Bhsd, Bhds],
                [1, 2, 5, 9, 4],
                3,
                Some(vec![9]),
                None,
            ),
            Tol::Max(1e-5),
        ),
        (
            conv_case(
                2802,
                &[1, 2, 9, 9],
                &[2, 1, 3, 3],
                [2, 1],
                [1; 4],
                [1, 1],
                2,
                true,
            ),
            Tol::Max(1e-5),
        ),
        (
            conv_case(
                2803,
                &[1, 3, 8, 8],
                &[4, 3, 3, 3],
                [1, 1],
                [1; 4],
                [1, 1],
                1,
                true,
            ),
            Tol::Max(1e-5),
        ),
        {
            let mut c = Case::new(2804);
            let x = c.x(&[3, 11]);
            c.op(Op::Softmax { axis: 1 }, vec![x]);
            (c, Tol::Max(1e-6))
        },
        {
            let mut c = Case::new(2805);
            let x = c.x(&[3, 11]);
            c.op(Op::Gelu { approximate: true }, vec![x]);
            (c, Tol::Max(1e-6))
        },
    ];
    for (c, tol) in &cases {
        check_with(c, *tol, &target(1, false));
        check_with(c, *tol, &target(2, true));
    }
}

// ---------------------------------------------------------------------------------------------
// Half-precision weights (`--precision bf16|fp16`)

/// `vit.linear` with weights stored in bf16/fp16. fp16 (and bf16 where the tile has no
/// `vdpbf16ps` form): each stored weight is widened to f32 exactly and the products accumulate
/// in f32, so the kernel computes the f32 linear of the *rounded* weights. bf16 on
/// `vdpbf16ps` (16/8/4 lanes, AVX512-BF16 hosts only) rounds the activations to bf16 too; a
/// product of two bf16 values is exact in f32, so it computes the f32 linear of the rounded
/// weights and rounded activations. The oracle is the interpreter on the module with the same
/// values rounded to nearest even, within the f32 linear's own tolerance
/// (1e-5·max(1, max|ref|)): only the order and grouping of the f32 additions differ. The
/// unrounded module must be further away than that, or the test could not tell whether
/// anything was rounded at all.
#[test]
fn linear_half_precision_weights() {
    use super::Precision;
    let shapes: [(&[usize], usize, Activation, bool); 5] = [
        (&[2, 7, 20], 27, Activation::Gelu, true),
        (&[9, 33], 37, Activation::None, true),
        (&[1, 64], 45, Activation::None, false),
        (&[197, 192], 100, Activation::Relu, true),
        (&[5, 3], 1, Activation::None, true),
    ];
    let (_, feats) = host();
    let bf16_host = feats.split(',').any(|f| f == "+avx512bf16");
    if !bf16_host {
        eprintln!("host without AVX512-BF16: the vdpbf16ps kernel is not run");
    }
    for precision in [Precision::Bf16, Precision::Fp16] {
        if precision == Precision::Bf16 && !bf16_host {
            continue;
        }
        // Activations are rounded where the kernel is vdpbf16ps: every lane count below.
        let round_x = super::gemm::dp_bf16(precision, 16);
        for (s, &(xs, n, act, bias)) in shapes.iter().enumerate() {
            let mut c = Case::new(2600 + s as u64);
            let x = c.x(xs);
            let k = *xs.last().expect("rank ≥ 1");
            let wt = c.rand_f(&[k, n], -0.5, 0.5);
            let w = c.constant(wt);
            let mut ins = vec![x, w];
            if bias {
                let bt = c.rand_f(&[n], -1.0, 1.0);
                ins.push(c.constant(bt));
            }
            c.op(
                Op::Linear {
                    activation: act,
                    has_bias: bias,
                    has_residual: false,
                },
                ins,
            );
            let exact = vitc_ir::run(&c.m, &c.inputs).expect("interpreter")[0].clone();
            let mut r = Case {
                m: c.m.clone(),
                inputs: c.inputs.clone(),
                rng: Rng(1),
            };
            if round_x {
                for t in &mut r.inputs {
                    let v: Vec<f32> = t.as_f32().expect("f32 input").to_vec();
                    let v = v.iter().map(|&x| precision.round(x)).collect();
                    *t = Tensor::f32(t.shape.clone(), v);
                }
            }
            for t in r.m.constants.values_mut() {
                if t.shape == [k, n] {
                    let v: Vec<f32> = t.as_f32().expect("f32 weight").to_vec();
                    *t = std::sync::Arc::new(Tensor::f32(
                        vec![k, n],
                        v.iter().map(|&x| precision.round(x)).collect(),
                    ));
                }
            }
            let rounded = vitc_ir::run(&r.m, &r.inputs).expect("interpreter")[0].clone();
            let (ev, rv) = (exact.as_f32().unwrap(), rounded.as_f32().unwrap());
            let scale = rv.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let moved = ev
                .iter()
                .zip(rv)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                moved > 1e-5 * scale,
                "{precision:?} case {s}: rounding the weights changed nothing ({moved})"
            );
            for lanes in [16, 8, 4] {
                let tgt = KernelTarget {
                    name: format!("{}-{lanes}", precision.name()),
                    precision,
                    ..target(lanes, true)
                };
                // The packing must be the 16-bit one: half the weight bytes.
                let node = r.m.node(r.m.outputs[0].1).clone();
                let tys: Vec<&vitc_ir::TensorType> =
                    node.inputs.iter().map(|&v| r.m.ty(v)).collect();
                let p = packing(&node, &tys, 1, &tgt).expect("weights packed");
                let wt = c.m.constant(node.inputs[1]).expect("constant weight");
                let kk = if round_x { k.div_ceil(2) * 2 } else { k };
                assert_eq!(p.apply(wt).expect("packs").len(), kk * n * 2, "{p:?}");
                // The kernel reads the original weights, stored rounded by the packing.
                let (got, _) = run_compiled(&c, &tgt);
                let got: Vec<f64> = (0..got.len()).map(|i| got.get_f64(i)).collect();
                for (i, (&g, &w)) in got.iter().zip(rv).enumerate() {
                    assert!(
                        (g - w as f64).abs() <= 1e-5 * scale as f64,
                        "{precision:?} case {s} lanes {lanes}: element {i}: got {g}, want {w}"
                    );
                }
            }
        }
    }
}
