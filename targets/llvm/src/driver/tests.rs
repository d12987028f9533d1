//! End-to-end tests of the driver: compile small modules, link them with lld, load the shared
//! library with `dlopen` and call the ABI functions. They live here, not in `tests/`, because
//! every test binary links all of LLVM.

use super::*;
use crate::abi;
use crate::link::write_output;
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use vitc_ir::{BinaryOp, Op, Tensor, UnaryOp};

extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlclose(handle: *mut c_void) -> c_int;
}
const RTLD_NOW: c_int = 2;

type TaskFn = extern "C" fn(*mut c_void, u32);
#[repr(C)]
struct Exec {
    parallel_for: Option<extern "C" fn(*mut c_void, u32, TaskFn, *mut c_void)>,
    pool: *mut c_void,
}
type RunFn = extern "C" fn(*const *const f32, *const *mut f32, *mut c_void, *const Exec) -> i32;

/// A directory under the system temp dir, removed when dropped.
struct Scratch(PathBuf);
impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("vitc-llvm-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loaded model library and its ABI functions.
struct Lib {
    handle: *mut c_void,
    prefix: String,
}
impl Lib {
    fn open(path: &Path, prefix: &str) -> Lib {
        let c = CString::new(path.to_str().unwrap()).unwrap();
        let handle = unsafe { dlopen(c.as_ptr(), RTLD_NOW) };
        assert!(!handle.is_null(), "dlopen {} failed", path.display());
        Lib {
            handle,
            prefix: prefix.into(),
        }
    }
    fn sym(&self, name: &str) -> *mut c_void {
        let c = CString::new(format!("{}_{name}", self.prefix)).unwrap();
        let p = unsafe { dlsym(self.handle, c.as_ptr()) };
        assert!(!p.is_null(), "{}_{name} missing", self.prefix);
        p
    }
    fn u32_fn(&self, name: &str) -> u32 {
        let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(self.sym(name)) };
        f()
    }
    fn rank(&self, kind: &str, i: u32) -> u32 {
        let f: extern "C" fn(u32) -> u32 =
            unsafe { std::mem::transmute(self.sym(&format!("{kind}_rank"))) };
        f(i)
    }
    fn shape(&self, kind: &str, i: u32) -> Option<Vec<i64>> {
        let f: extern "C" fn(u32) -> *const i64 =
            unsafe { std::mem::transmute(self.sym(&format!("{kind}_shape"))) };
        let p = f(i);
        if p.is_null() {
            return None;
        }
        let r = self.rank(kind, i) as usize;
        Some(unsafe { std::slice::from_raw_parts(p, r) }.to_vec())
    }
    fn workspace_size(&self) -> usize {
        let f: extern "C" fn() -> usize =
            unsafe { std::mem::transmute(self.sym("workspace_size")) };
        f()
    }
    fn run_fn(&self) -> RunFn {
        unsafe { std::mem::transmute(self.sym("run")) }
    }
}
impl Drop for Lib {
    fn drop(&mut self) {
        unsafe { dlclose(self.handle) };
    }
}

/// A 64-byte aligned buffer (what the ABI asks of the workspace).
struct Aligned {
    buf: Vec<u8>,
    off: usize,
}
impl Aligned {
    fn new(bytes: usize) -> Aligned {
        let buf = vec![0u8; bytes + 128];
        let off = buf.as_ptr().align_offset(64);
        Aligned { buf, off }
    }
    fn ptr(&mut self) -> *mut c_void {
        unsafe { self.buf.as_mut_ptr().add(self.off) as *mut c_void }
    }
}

fn nm(args: &[&str], file: &Path) -> String {
    let out = Command::new("llvm-nm-22")
        .args(args)
        .arg(file)
        .output()
        .expect("llvm-nm-22 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn abi_names(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "abi_version",
        "input_rank",
        "input_shape",
        "num_inputs",
        "num_outputs",
        "output_rank",
        "output_shape",
        "run",
        "workspace_size",
    ]
    .iter()
    .map(|n| format!("{prefix}_{n}"))
    .collect();
    v.sort();
    v
}

/// The library defines exactly the ABI functions and needs nothing from outside.
fn check_symbols(so: &Path, prefix: &str) {
    let undefined = nm(&["-D", "--undefined-only"], so);
    assert_eq!(undefined.trim(), "", "undefined symbols:\n{undefined}");
    let mut defined: Vec<String> = nm(&["-D", "--defined-only", "--format=just-symbols"], so)
        .lines()
        .map(String::from)
        .collect();
    defined.sort();
    assert_eq!(defined, abi_names(prefix));
}

/// `x [64, 300]` → outputs `(x, c, x)`: no compute nodes, so it runs without kernels. The
/// input is large enough that the copies become calls to the library's own `memcpy`.
fn identity_module() -> Module {
    let mut m = Module::new("identity");
    let x = m.add_input("x", TensorType::new([64, 300], DType::F32));
    let c = m.add_constant("c", Tensor::f32([5], vec![1.5, -2.0, 3.25, 0.0, 7.0]));
    let _dead = m.add(Op::Unary(UnaryOp::Neg), vec![x], "dead").unwrap();
    m.outputs = vec![("y".into(), x), ("c".into(), c), ("y2".into(), x)];
    m
}

fn opts(target: &str, prefix: &str) -> CompileOptions {
    CompileOptions {
        target: target.into(),
        prefix: prefix.into(),
        opt_level: 3,
        profile: false,
        precision: crate::Precision::F32,
    }
}

fn host_runs(target: &str) -> bool {
    match target {
        "x86_64-avx2" => {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        "x86_64-avx512" => {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
        }
        _ => false,
    }
}

#[test]
fn identity_model_runs_and_rejects_bad_arguments() {
    let m = identity_module();
    for target in ["x86_64-avx2", "x86_64-avx512"] {
        let prefix = format!("id_{}", target.replace('-', "_"));
        let c = compile(&m, &opts(target, &prefix)).unwrap();
        assert_eq!(c.workspace_bytes(), 0);
        assert_eq!(c.weights_bytes(), 20);
        let dir = Scratch::new(&prefix);
        let so = dir.0.join("model.so");
        let files = write_output(&c, &so).unwrap();
        assert_eq!(files, vec![so.clone(), dir.0.join("model.h")]);
        check_symbols(&so, &prefix);
        let header = std::fs::read_to_string(dir.0.join("model.h")).unwrap();
        let up = prefix.to_uppercase();
        assert!(header.contains(&format!("#define {up}_INPUT0_SHAPE {{64, 300}}")));
        assert!(header.contains(&format!("#define {up}_OUTPUT1_SHAPE {{5}}")));
        if !host_runs(target) {
            continue;
        }

        let lib = Lib::open(&so, &prefix);
        assert_eq!(lib.u32_fn("abi_version"), 1);
        assert_eq!(lib.u32_fn("num_inputs"), 1);
        assert_eq!(lib.u32_fn("num_outputs"), 3);
        assert_eq!(lib.shape("input", 0), Some(vec![64, 300]));
        assert_eq!(lib.shape("input", 1), None);
        assert_eq!(lib.rank("input", 1), 0);
        assert_eq!(lib.shape("output", 0), Some(vec![64, 300]));
        assert_eq!(lib.shape("output", 1), Some(vec![5]));
        assert_eq!(lib.shape("output", 2), Some(vec![64, 300]));
        assert_eq!(lib.shape("output", 3), None);
        assert_eq!(lib.shape("output", u32::MAX), None);
        assert_eq!(lib.workspace_size(), 0);

        let run = lib.run_fn();
        let x: Vec<f32> = (0..64 * 300).map(|i| i as f32 * 0.5 - 7.0).collect();
        let mut y = vec![f32::NAN; 64 * 300];
        let mut cst = vec![f32::NAN; 5];
        let mut y2 = vec![f32::NAN; 64 * 300];
        let ins = [x.as_ptr()];
        let outs = [y.as_mut_ptr(), cst.as_mut_ptr(), y2.as_mut_ptr()];
        let null_in = [std::ptr::null::<f32>()];
        let outs_null = [y.as_mut_ptr(), std::ptr::null_mut(), y2.as_mut_ptr()];
        let none: *const *const f32 = std::ptr::null();
        let none_out: *const *mut f32 = std::ptr::null();
        let ws = std::ptr::null_mut();
        let exec = std::ptr::null();
        assert_eq!(run(none, outs.as_ptr(), ws, exec), abi::ERR_NULL_INPUTS);
        assert_eq!(run(ins.as_ptr(), none_out, ws, exec), abi::ERR_NULL_OUTPUTS);
        assert_eq!(
            run(null_in.as_ptr(), outs.as_ptr(), ws, exec),
            abi::ERR_NULL_INPUT
        );
        assert_eq!(
            run(ins.as_ptr(), outs_null.as_ptr(), ws, exec),
            abi::ERR_NULL_OUTPUT
        );
        assert!(
            y.iter().chain(&cst).chain(&y2).all(|v| v.is_nan()),
            "a rejected run wrote"
        );

        // With no workspace needed, NULL and misaligned workspaces are both fine.
        let mut misaligned = Aligned::new(8);
        let odd = unsafe { (misaligned.ptr() as *mut u8).add(4) as *mut c_void };
        assert_eq!(run(ins.as_ptr(), outs.as_ptr(), odd, exec), abi::OK);
        assert_eq!(run(ins.as_ptr(), outs.as_ptr(), ws, exec), abi::OK);
        assert_eq!(y, x);
        assert_eq!(y2, x);
        assert_eq!(cst, vec![1.5, -2.0, 3.25, 0.0, 7.0]);
    }
}

#[test]
fn archives_objects_and_cross_targets_link() {
    let m = identity_module();
    let dir = Scratch::new("kinds");
    let c = compile(&m, &opts("x86_64-avx2", "vitc")).unwrap();
    let o = write_output(&c, &dir.0.join("m.o")).unwrap();
    assert_eq!(std::fs::read(&o[0]).unwrap(), c.object().unwrap());
    // Only the ABI functions are global; memcpy & co. are local to the object.
    let globals = nm(&["--extern-only", "--format=just-symbols"], &o[0]);
    let mut globals: Vec<String> = globals.lines().map(String::from).collect();
    globals.sort();
    assert_eq!(globals, abi_names("vitc"));
    let a = write_output(&c, &dir.0.join("libm.a")).unwrap();
    assert!(nm(&["--defined-only"], &a[0]).contains("vitc_run"));
    assert!(a[1].ends_with("libm.h"));
    let bad = write_output(&c, &dir.0.join("m.dylib")).unwrap_err();
    assert!(bad.to_string().contains(".so"), "{bad}");

    let arm = compile(&m, &opts("aarch64-neon", "arm")).unwrap();
    let so = dir.0.join("arm.so");
    write_output(&arm, &so).unwrap();
    check_symbols(&so, "arm");
    let asm = String::from_utf8(arm.assembly().unwrap()).unwrap();
    assert!(asm.contains("arm_run:"), "{asm}");
    let ir = c.llvm_ir();
    assert!(ir.contains(" i32 @vitc_run(ptr"), "{ir}");
    assert!(ir.contains("align 64"), "{ir}");
}

#[test]
fn bad_options_and_models_are_errors() {
    let m = identity_module();
    let e = compile(&m, &opts("pdp11", "vitc")).unwrap_err();
    assert!(matches!(e, CodegenError::UnknownTarget { .. }), "{e}");
    for bad in ["", "9lives", "a-b", "x y"] {
        let e = compile(&m, &opts("x86_64-avx2", bad)).unwrap_err();
        assert!(matches!(e, CodegenError::InvalidOption(_)), "{bad}: {e}");
    }
    let mut o = opts("x86_64-avx2", "vitc");
    o.opt_level = 4;
    assert!(matches!(
        compile(&m, &o),
        Err(CodegenError::InvalidOption(_))
    ));

    let mut m = Module::new("ints");
    let x = m.add_input("ids", TensorType::new([4], DType::I64));
    m.outputs.push(("ids".into(), x));
    let e = compile(&m, &opts("x86_64-avx2", "vitc")).unwrap_err();
    assert!(matches!(e, CodegenError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("ids"), "{e}");

    let mut m = Module::new("broken");
    let x = m.add_input("x", TensorType::new([4], DType::F32));
    m.outputs.push(("y".into(), ValueId(x.0 + 7)));
    assert!(matches!(
        compile(&m, &opts("x86_64-avx2", "vitc")),
        Err(CodegenError::InvalidModule(_))
    ));
}

#[test]
fn every_opt_level_compiles() {
    let m = identity_module();
    for opt_level in 0..=3 {
        let o = CompileOptions {
            opt_level,
            ..opts("x86_64-avx2", "vitc")
        };
        let c = compile(&m, &o).unwrap();
        assert!(!c.object().unwrap().is_empty());
    }
}

/// `softmax(x·w + b)` and `relu` of it, as a second output: real kernels, a workspace, tasks.
fn mlp_module(rows: usize, k: usize, n: usize) -> Module {
    let mut m = Module::new("mlp");
    let x = m.add_input("x", TensorType::new([rows, k], DType::F32));
    let w = m.add_constant(
        "w",
        Tensor::f32(
            [k, n],
            (0..k * n)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.05)
                .collect(),
        ),
    );
    let b = m.add_constant(
        "b",
        Tensor::f32([n], (0..n).map(|i| (i as f32 - 11.0) * 0.1).collect()),
    );
    let xw = m.add(Op::MatMul, vec![x, w], "matmul").unwrap();
    let z = m
        .add(Op::Binary(BinaryOp::Add), vec![xw, b], "add")
        .unwrap();
    let s = m.add(Op::Softmax { axis: 1 }, vec![z], "softmax").unwrap();
    let r = m.add(Op::Unary(UnaryOp::Relu), vec![z], "relu").unwrap();
    m.outputs = vec![("probs".into(), s), ("relu".into(), r)];
    m
}

/// `x [rows, 48]` through `layers` identical linear layers (each its own weights, bias and
/// GELU, one shared bias constant), then a differently shaped one: like a ViT's blocks.
fn layers_module(rows: usize, layers: usize) -> Module {
    let mut m = Module::new("layers");
    let mut v = m.add_input("x", TensorType::new([rows, 48], DType::F32));
    let b = m.add_constant(
        "b",
        Tensor::f32([48], (0..48).map(|i| (i as f32 - 20.0) * 0.01).collect()),
    );
    let lin = Op::Linear {
        activation: vitc_ir::Activation::Gelu,
        has_bias: true,
        has_residual: false,
    };
    for l in 0..layers {
        let w = m.add_constant(
            &format!("w{l}"),
            Tensor::f32(
                [48, 48],
                (0..48 * 48)
                    .map(|i| (((i + l * 5) * 7 % 13) as f32 - 6.0) * 0.02)
                    .collect(),
            ),
        );
        v = m.add(lin.clone(), vec![v, w, b], format!("l{l}")).unwrap();
    }
    let w = m.add_constant(
        "head",
        Tensor::f32(
            [48, 5],
            (0..240).map(|i| (i % 9) as f32 * 0.1 - 0.4).collect(),
        ),
    );
    let y = m.add(Op::MatMul, vec![v, w], "head").unwrap();
    m.outputs = vec![("y".into(), y)];
    m
}

#[test]
fn identical_layers_share_one_kernel_and_weights_are_packed() {
    let m = layers_module(40, 6);
    let x: Vec<f32> = (0..40 * 48)
        .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05)
        .collect();
    let want = vitc_ir::run(&m, &[Tensor::f32([40, 48], x.clone())]).unwrap();
    for target in ["x86_64-avx2", "x86_64-avx512"] {
        let prefix = format!("layers_{}", target.replace('-', "_"));
        let c = compile(&m, &opts(target, &prefix)).unwrap();
        let ir = c.llvm_ir();
        // The five linears that read the workspace share one body, called by their five task
        // functions; the first (reading the caller's input, so with other alignment facts) and
        // the head have a body each, inlined into their only caller.
        let bodies: Vec<&str> = ir
            .lines()
            .filter(|l| l.starts_with("define") && l.contains("_kernel"))
            .collect();
        assert_eq!(bodies.len(), 1, "{target}: kernel bodies {bodies:?}");
        let name = bodies[0]
            .split('@')
            .nth(1)
            .and_then(|r| r.split('(').next());
        let calls = ir
            .lines()
            .filter(|l| l.contains(" call ") && name.is_some_and(|n| l.contains(n)))
            .count();
        assert_eq!(calls, 5, "{target}: calls of {name:?}");
        // Every weight is stored once, packed (the shared bias as it is).
        assert_eq!(c.weights_bytes(), (6 * 48 * 48 + 48 + 48 * 5) * 4);
        if !host_runs(target) {
            continue;
        }
        let dir = Scratch::new(&prefix);
        let so = dir.0.join("layers.so");
        write_output(&c, &so).unwrap();
        let lib = Lib::open(&so, &prefix);
        let mut ws = Aligned::new(c.workspace_bytes());
        let mut y = vec![f32::NAN; 40 * 5];
        let (ins, outs) = ([x.as_ptr()], [y.as_mut_ptr()]);
        let rc = (lib.run_fn())(ins.as_ptr(), outs.as_ptr(), ws.ptr(), std::ptr::null());
        assert_eq!(rc, abi::OK);
        for (g, w) in y.iter().zip(want[0].as_f32().unwrap()) {
            assert!(
                (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                "{target}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn profiling_build_records_a_timestamp_per_node() {
    let m = layers_module(200, 3);
    let x = vec![0.25f32; 200 * 48];
    for target in ["x86_64-avx2", "x86_64-avx512"] {
        let prefix = format!("prof_{}", target.replace('-', "_"));
        let plain = compile(&m, &opts(target, &prefix)).unwrap();
        assert!(plain.profile().is_none());
        assert!(!plain.llvm_ir().contains("readcyclecounter"));
        let o = CompileOptions {
            profile: true,
            ..opts(target, &prefix)
        };
        let c = compile(&m, &o).unwrap();
        let p = c
            .profile()
            .expect("a profiling build says where its timestamps are")
            .clone();
        assert_eq!(p.steps.len(), 4);
        assert_eq!(p.tasks.len(), 4);
        assert!(p.offset >= plain.workspace_bytes());
        assert!(c.workspace_bytes() >= p.offset + 8 * (p.steps.len() + 1));
        if !host_runs(target) {
            continue;
        }
        let dir = Scratch::new(&prefix);
        let so = dir.0.join("prof.so");
        write_output(&c, &so).unwrap();
        check_symbols(&so, &prefix);
        let lib = Lib::open(&so, &prefix);
        let mut ws = Aligned::new(c.workspace_bytes());
        let mut y = vec![0f32; 200 * 5];
        let (ins, outs) = ([x.as_ptr()], [y.as_mut_ptr()]);
        let rc = (lib.run_fn())(ins.as_ptr(), outs.as_ptr(), ws.ptr(), std::ptr::null());
        assert_eq!(rc, abi::OK);
        let t: Vec<u64> = (0..=p.steps.len())
            .map(|i| unsafe {
                (ws.ptr() as *const u8)
                    .add(p.offset + 8 * i)
                    .cast::<u64>()
                    .read_unaligned()
            })
            .collect();
        assert!(t[0] > 0, "{t:?}");
        assert!(t.windows(2).all(|w| w[0] <= w[1]), "{t:?}");
        assert!(t[p.steps.len()] > t[0], "{t:?}");
    }
}

/// A `parallel_for` that runs the tasks on several threads (in reverse order on this one).
extern "C" fn threaded_for(pool: *mut c_void, count: u32, task: TaskFn, ctx: *mut c_void) {
    let calls = unsafe { &*(pool as *const std::sync::atomic::AtomicU32) };
    calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ctx = ctx as usize;
    std::thread::scope(|s| {
        for t in (0..count).rev() {
            s.spawn(move || task(ctx as *mut c_void, t));
        }
    });
}

#[test]
fn mlp_matches_the_interpreter() {
    // Odd sizes, and a ViT-block-like size that the kernels split into tasks.
    for (rows, k, n) in [(37, 19, 23), (197, 64, 192)] {
        mlp_case(rows, k, n);
    }
}

fn mlp_case(rows: usize, k: usize, n: usize) {
    let m = mlp_module(rows, k, n);
    let x: Vec<f32> = (0..rows * k)
        .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.125)
        .collect();
    let want = vitc_ir::run(&m, &[Tensor::f32([rows, k], x.clone())]).unwrap();
    for target in ["x86_64-avx2", "x86_64-avx512"] {
        let prefix = format!("mlp{rows}_{}", target.replace('-', "_"));
        let c = compile(&m, &opts(target, &prefix)).unwrap();
        assert!(c.workspace_bytes() > 0);
        let dir = Scratch::new(&prefix);
        let so = dir.0.join("mlp.so");
        write_output(&c, &so).unwrap();
        check_symbols(&so, &prefix);
        if !host_runs(target) {
            continue;
        }
        let lib = Lib::open(&so, &prefix);
        assert_eq!(lib.workspace_size(), c.workspace_bytes());
        let run = lib.run_fn();
        let mut ws = Aligned::new(c.workspace_bytes());
        let mut probs = vec![f32::NAN; rows * n];
        let mut relu = vec![f32::NAN; rows * n];
        let ins = [x.as_ptr()];
        let outs = [probs.as_mut_ptr(), relu.as_mut_ptr()];

        // Workspace checks: nothing is written when they fail.
        let odd = unsafe { (ws.ptr() as *mut u8).add(16) as *mut c_void };
        let null = std::ptr::null_mut();
        let no_exec = std::ptr::null();
        assert_eq!(
            run(ins.as_ptr(), outs.as_ptr(), null, no_exec),
            abi::ERR_NULL_WORKSPACE
        );
        assert_eq!(
            run(ins.as_ptr(), outs.as_ptr(), odd, no_exec),
            abi::ERR_MISALIGNED_WORKSPACE
        );
        assert!(
            probs.iter().chain(&relu).all(|v| v.is_nan()),
            "a rejected run wrote"
        );

        let check = |probs: &[f32], relu: &[f32]| {
            for (got, want) in [(probs, &want[0]), (relu, &want[1])] {
                let want = want.as_f32().unwrap();
                for (i, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                        "{target} [{i}]: {g} vs {w}"
                    );
                }
            }
        };
        assert_eq!(run(ins.as_ptr(), outs.as_ptr(), ws.ptr(), no_exec), abi::OK);
        check(&probs, &relu);

        // Through a thread pool: same numbers.
        probs.fill(f32::NAN);
        relu.fill(f32::NAN);
        let calls = std::sync::atomic::AtomicU32::new(0);
        let exec = Exec {
            parallel_for: Some(threaded_for),
            pool: &calls as *const _ as *mut c_void,
        };
        assert_eq!(run(ins.as_ptr(), outs.as_ptr(), ws.ptr(), &exec), abi::OK);
        check(&probs, &relu);
        let calls = calls.into_inner();
        eprintln!("{target} {rows}x{k}x{n}: parallel_for called {calls} times");
        if rows > 100 {
            assert!(calls > 0, "nothing was split into tasks");
        }
        // An executor without parallel_for runs on the calling thread.
        let serial = Exec {
            parallel_for: None,
            pool: std::ptr::null_mut(),
        };
        assert_eq!(run(ins.as_ptr(), outs.as_ptr(), ws.ptr(), &serial), abi::OK);
        check(&probs, &relu);
    }
}

/// A stand-in kernel set for the driver's own tests, until and beside the real kernels: `add`
/// of same-shaped f32 tensors and `relu`, split into 3 tasks, each of which also writes and
/// reads back its scratch (so a wrong or shared scratch pointer shows up in the numbers).
mod stand_in {
    use super::*;
    use inkwell::values::FloatValue;

    pub const KERNELS: KernelSet = KernelSet {
        task_count,
        scratch_bytes,
        packing,
        emit_node,
    };

    fn task_count(n: &Node, _: &[&TensorType], _: &KernelTarget) -> u32 {
        n.ty.numel().min(3) as u32
    }

    fn scratch_bytes(_: &Node, _: &[&TensorType], _: &KernelTarget) -> usize {
        20
    }

    fn packing(_: &Node, _: &[&TensorType], _: usize, _: &KernelTarget) -> Option<Packing> {
        None
    }

    fn emit_node<'ctx>(
        cx: &mut Cx<'_, 'ctx>,
        n: &Node,
        _: &[&TensorType],
        ins: &[PointerValue<'ctx>],
        out: PointerValue<'ctx>,
        scratch: PointerValue<'ctx>,
        task: IntValue<'ctx>,
    ) -> Result<(), KernelError> {
        let unsupported = || KernelError::Unsupported {
            op: n.op.name(),
            target: cx.target.name.clone(),
            why: "the stand-in kernels do add and relu only".into(),
        };
        let is_add = match n.op {
            Op::Binary(BinaryOp::Add) => true,
            Op::Unary(UnaryOp::Relu) => false,
            _ => return Err(unsupported()),
        };
        let (b, ctx) = (cx.builder, cx.ctx);
        let (i64t, f32t) = (ctx.i64_type(), ctx.f32_type());
        let numel = n.ty.numel() as u64;
        let tasks = numel.min(3);
        let chunk = numel.div_ceil(tasks);
        let t = b.build_int_z_extend(task, i64t, "t")?;
        let start = b.build_int_mul(t, i64t.const_int(chunk, false), "start")?;
        let end = b.build_int_add(start, i64t.const_int(chunk, false), "end")?;
        let lim = i64t.const_int(numel, false);
        let over = b.build_int_compare(IntPredicate::UGT, end, lim, "over")?;
        let end = b.build_select(over, lim, end, "end")?.into_int_value();
        let tf = b.build_unsigned_int_to_float(task, f32t, "tf")?;
        b.build_store(scratch, tf)?;

        let pre = b.get_insert_block().unwrap();
        let lp = ctx.append_basic_block(cx.func, "loop");
        let exit = ctx.append_basic_block(cx.func, "exit");
        let empty = b.build_int_compare(IntPredicate::UGE, start, end, "empty")?;
        b.build_conditional_branch(empty, exit, lp)?;
        b.position_at_end(lp);
        let phi = b.build_phi(i64t, "i")?;
        let i = phi.as_basic_value().into_int_value();
        let load = |p: PointerValue<'ctx>| -> Result<FloatValue<'ctx>, KernelError> {
            let at = unsafe { b.build_in_bounds_gep(f32t, p, &[i], "at")? };
            Ok(b.build_load(f32t, at, "x")?.into_float_value())
        };
        let x = load(ins[0])?;
        let y = if is_add {
            b.build_float_add(x, load(ins[1])?, "sum")?
        } else {
            let pos =
                b.build_float_compare(inkwell::FloatPredicate::OGT, x, f32t.const_zero(), "pos")?;
            b.build_select(pos, x, f32t.const_zero(), "relu")?
                .into_float_value()
        };
        // + (scratch[0] - task): zero unless the scratch was clobbered.
        let back = b.build_load(f32t, scratch, "back")?.into_float_value();
        let diff = b.build_float_sub(back, tf, "diff")?;
        let y = b.build_float_add(y, diff, "y")?;
        let at = unsafe { b.build_in_bounds_gep(f32t, out, &[i], "at")? };
        b.build_store(at, y)?;
        let i1 = b.build_int_add(i, i64t.const_int(1, false), "i1")?;
        phi.add_incoming(&[(&start, pre), (&i1, lp)]);
        let more = b.build_int_compare(IntPredicate::ULT, i1, end, "more")?;
        b.build_conditional_branch(more, lp, exit)?;
        b.position_at_end(exit);
        Ok(())
    }
}

/// `a = x + c; r = relu(a); s = r + x`, outputs `(s, r, s)`: a workspace value, an output that
/// is also an operand, a repeated output, three tasks per node with scratch.
fn tasks_module() -> Module {
    let mut m = Module::new("tasks");
    let x = m.add_input("x", TensorType::new([5, 7], DType::F32));
    let c = m.add_constant(
        "c",
        Tensor::f32([5, 7], (0..35).map(|i| (i as f32 - 17.0) * 0.25).collect()),
    );
    let a = m.add(Op::Binary(BinaryOp::Add), vec![x, c], "a").unwrap();
    let r = m.add(Op::Unary(UnaryOp::Relu), vec![a], "r").unwrap();
    let s = m.add(Op::Binary(BinaryOp::Add), vec![r, x], "s").unwrap();
    m.outputs = vec![("s".into(), s), ("r".into(), r), ("s2".into(), s)];
    m
}

#[test]
fn tasks_scratch_and_parallel_for() {
    let m = tasks_module();
    let x: Vec<f32> = (0..35)
        .map(|i| ((i * 13 % 11) as f32 - 5.0) * 0.5)
        .collect();
    let want = vitc_ir::run(&m, &[Tensor::f32([5, 7], x.clone())]).unwrap();
    let want: Vec<&[f32]> = want.iter().map(|t| t.as_f32().unwrap()).collect();
    for target in ["x86_64-avx2", "x86_64-avx512", "native"] {
        let prefix = format!("tasks_{}", target.replace('-', "_"));
        let c = compile_with(&m, &opts(target, &prefix), &stand_in::KERNELS).unwrap();
        // `a` (35 floats → 192 bytes) and three 64-byte scratch slots per node; the scratch of
        // different nodes shares bytes, and `a`'s bytes are reused by `s`'s scratch.
        assert_eq!(c.workspace_bytes(), 192 + 192);
        let dir = Scratch::new(&prefix);
        let so = dir.0.join("tasks.so");
        write_output(&c, &so).unwrap();
        check_symbols(&so, &prefix);
        if !host_runs(target) && target != "native" {
            continue;
        }
        let lib = Lib::open(&so, &prefix);
        assert_eq!(lib.workspace_size(), c.workspace_bytes());
        let run = lib.run_fn();
        let mut ws = Aligned::new(c.workspace_bytes());
        let mut outs_buf = [vec![f32::NAN; 35], vec![f32::NAN; 35], vec![f32::NAN; 35]];
        let ins = [x.as_ptr()];
        let outs: Vec<*mut f32> = outs_buf.iter_mut().map(|o| o.as_mut_ptr()).collect();
        let odd = unsafe { (ws.ptr() as *mut u8).add(32) as *mut c_void };
        let no_exec = std::ptr::null();
        let null_ws = std::ptr::null_mut();
        assert_eq!(
            run(ins.as_ptr(), outs.as_ptr(), null_ws, no_exec),
            abi::ERR_NULL_WORKSPACE
        );
        assert_eq!(
            run(ins.as_ptr(), outs.as_ptr(), odd, no_exec),
            abi::ERR_MISALIGNED_WORKSPACE
        );
        let untouched = |o: &[Vec<f32>; 3]| o.iter().flatten().all(|v| v.is_nan());
        assert!(untouched(&outs_buf), "a rejected run wrote");

        let calls = std::sync::atomic::AtomicU32::new(0);
        let threaded = Exec {
            parallel_for: Some(threaded_for),
            pool: &calls as *const _ as *mut c_void,
        };
        let serial = Exec {
            parallel_for: None,
            pool: std::ptr::null_mut(),
        };
        for exec in [no_exec, &threaded as *const Exec, &serial as *const Exec] {
            for o in outs_buf.iter_mut() {
                o.fill(f32::NAN);
            }
            assert_eq!(run(ins.as_ptr(), outs.as_ptr(), ws.ptr(), exec), abi::OK);
            let got = [&outs_buf[0][..], &outs_buf[1][..], &outs_buf[2][..]];
            assert_eq!(got, [want[0], want[1], want[2]], "{target}");
        }
        // Three nodes, each with three tasks, each through the pool exactly once.
        assert_eq!(calls.into_inner(), 3);
    }
}

#[test]
fn a_model_without_inputs() {
    let mut m = Module::new("const");
    let c = m.add_constant("c", Tensor::f32([4], vec![-1.0, 2.0, -3.0, 4.0]));
    let r = m.add(Op::Unary(UnaryOp::Relu), vec![c], "r").unwrap();
    m.outputs = vec![("r".into(), r)];
    let c = compile_with(&m, &opts("native", "noin"), &stand_in::KERNELS).unwrap();
    let dir = Scratch::new("noin");
    let so = dir.0.join("noin.so");
    write_output(&c, &so).unwrap();
    let lib = Lib::open(&so, "noin");
    assert_eq!(lib.u32_fn("num_inputs"), 0);
    assert_eq!(lib.shape("input", 0), None);
    let mut y = vec![f32::NAN; 4];
    let outs = [y.as_mut_ptr()];
    let run = lib.run_fn();
    let none: *const *const f32 = std::ptr::null();
    let mut ws = Aligned::new(c.workspace_bytes());
    assert_eq!(
        run(none, outs.as_ptr(), ws.ptr(), std::ptr::null()),
        abi::OK
    );
    assert_eq!(y, vec![0.0, 2.0, 0.0, 4.0]);
}

/// Two model headers and a C program using both: the headers are valid C and C++, can be
/// included together, and a program linked against the library runs.
#[test]
fn headers_compile_and_a_c_program_links() {
    let dir = Scratch::new("cprog");
    let m = identity_module();
    let a = compile(&m, &opts("native", "alpha")).unwrap();
    let b = compile(&m, &opts("native", "beta")).unwrap();
    write_output(&a, &dir.0.join("libalpha.so")).unwrap();
    write_output(&b, &dir.0.join("beta.o")).unwrap();
    let main = dir.0.join("main.c");
    std::fs::write(
        &main,
        r#"#include "libalpha.h"
#include "beta.h"
#include "libalpha.h"
#include <stdio.h>
#include <string.h>
static const int64_t shape[] = ALPHA_INPUT0_SHAPE;
_Static_assert(ALPHA_NUM_OUTPUTS == 3 && BETA_OUTPUT1_NUMEL == 5, "facts");
static float x[ALPHA_INPUT0_NUMEL], y[ALPHA_OUTPUT0_NUMEL], c[ALPHA_OUTPUT1_NUMEL],
    y2[ALPHA_OUTPUT2_NUMEL];
static void serial(void *pool, uint32_t n, vitc_task_fn f, void *ctx) {
  (void)pool;
  for (uint32_t i = 0; i < n; i++) f(ctx, i);
}
int main(void) {
  const float *in[] = {x};
  float *out[] = {y, c, y2};
  vitc_exec exec = {serial, NULL};
  for (int i = 0; i < ALPHA_INPUT0_NUMEL; i++) x[i] = (float)i;
  if (alpha_abi_version() != ALPHA_ABI_VERSION || beta_abi_version() != 1) return 1;
  if (alpha_input_shape(0)[1] != shape[1] || alpha_workspace_size() != ALPHA_WORKSPACE_SIZE)
    return 2;
  if (alpha_run(in, out, NULL, &exec) != ALPHA_OK) return 3;
  if (beta_run(NULL, out, NULL, NULL) != BETA_ERR_NULL_INPUTS) return 4;
  if (memcmp(x, y2, sizeof x) != 0 || c[3] != 0.0f || c[4] != 7.0f) return 5;
  puts("ok");
  return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.0.join("main");
    let clang = |args: &[&str]| {
        let out = Command::new("clang-22")
            .current_dir(&dir.0)
            .args(args)
            .output()
            .expect("clang-22 runs (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "clang-22 {args:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    clang(&[
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-pedantic",
        "-Werror",
        "main.c",
        "beta.o",
        "libalpha.so",
        "-Wl,-rpath,$ORIGIN",
        "-o",
        "main",
    ]);
    clang(&[
        "-x",
        "c++",
        "-std=c++17",
        "-Wall",
        "-Werror",
        "-fsyntax-only",
        "libalpha.h",
    ]);
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success(), "C program exited with {}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// A kernel that calls a libm function is caught before anything is written: the library
/// must call nothing outside itself. One that defines an exported helper gets it made local.
#[test]
fn kernels_cannot_import_or_export() {
    fn calls_libm<'ctx>(
        cx: &mut Cx<'_, 'ctx>,
        _: &Node,
        _: &[&TensorType],
        _: &[PointerValue<'ctx>],
        _: PointerValue<'ctx>,
        _: PointerValue<'ctx>,
        _: IntValue<'ctx>,
    ) -> Result<(), KernelError> {
        let f32t = cx.ctx.f32_type();
        let sinf = cx
            .module
            .add_function("sinf", f32t.fn_type(&[f32t.into()], false), None);
        cx.builder
            .build_call(sinf, &[f32t.const_float(1.0).into()], "")?;
        Ok(())
    }
    fn exports_helper<'ctx>(
        cx: &mut Cx<'_, 'ctx>,
        _: &Node,
        _: &[&TensorType],
        _: &[PointerValue<'ctx>],
        _: PointerValue<'ctx>,
        _: PointerValue<'ctx>,
        _: IntValue<'ctx>,
    ) -> Result<(), KernelError> {
        let void = cx.ctx.void_type();
        let helper =
            cx.module
                .add_function("helper", void.fn_type(&[], false), Some(Linkage::External));
        let here = cx.builder.get_insert_block().unwrap();
        cx.builder
            .position_at_end(cx.ctx.append_basic_block(helper, "entry"));
        cx.builder.build_return(None)?;
        cx.builder.position_at_end(here);
        cx.builder.build_call(helper, &[], "")?;
        Ok(())
    }
    let m = tasks_module();
    let ks = KernelSet {
        emit_node: calls_libm,
        ..stand_in::KERNELS
    };
    let e = compile_with(&m, &opts("x86_64-avx2", "vitc"), &ks).unwrap_err();
    assert!(
        matches!(&e, CodegenError::Llvm(msg) if msg.contains("sinf")),
        "{e}"
    );
    let ks = KernelSet {
        emit_node: exports_helper,
        ..stand_in::KERNELS
    };
    let c = compile_with(&m, &opts("x86_64-avx2", "vitc"), &ks).unwrap();
    let dir = Scratch::new("helper");
    let o = dir.0.join("h.o");
    write_output(&c, &o).unwrap();
    let globals = nm(&["--extern-only", "--format=just-symbols"], &o);
    assert!(!globals.contains("helper"), "{globals}");
}

/// The aarch64 target for real: the tasks model linked into a freestanding static aarch64
/// program (no libc at all), run under qemu-aarch64, its outputs compared with the interpreter.
/// Skipped where qemu-aarch64 is not installed.
#[test]
fn aarch64_runs_under_qemu() {
    if Command::new("qemu-aarch64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: qemu-aarch64 is not installed");
        return;
    }
    let m = tasks_module();
    let x: Vec<f32> = (0..35)
        .map(|i| ((i * 13 % 11) as f32 - 5.0) * 0.5)
        .collect();
    let want = vitc_ir::run(&m, &[Tensor::f32([5, 7], x.clone())]).unwrap();
    let c = compile_with(&m, &opts("aarch64-neon", "vitc"), &stand_in::KERNELS).unwrap();
    let dir = Scratch::new("qemu");
    write_output(&c, &dir.0.join("model.o")).unwrap();
    let xs: Vec<String> = x.iter().map(|v| format!("{v:?}f")).collect();
    std::fs::write(
        dir.0.join("main.c"),
        format!(
            r#"#include "model.h"
static const float x[35] = {{{}}};
static float out[3][35];
static _Alignas(64) unsigned char ws[VITC_WORKSPACE_SIZE];
static void serial(void *pool, uint32_t n, vitc_task_fn f, void *ctx) {{
  (void)pool;
  for (uint32_t i = n; i-- > 0;) f(ctx, i);
}}
static long sys(long nr, long a, long b, long c) {{
  register long x8 __asm__("x8") = nr, x0 __asm__("x0") = a, x1 __asm__("x1") = b,
      x2 __asm__("x2") = c;
  __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
  return x0;
}}
void _start(void) {{
  const float *in[] = {{x}};
  float *outs[] = {{out[0], out[1], out[2]}};
  vitc_exec exec = {{serial, 0}};
  int bad = vitc_run(in, outs, ws + 8, 0) != VITC_ERR_MISALIGNED_WORKSPACE;
  bad |= vitc_run(in, outs, ws, &exec) != VITC_OK;
  sys(64, 1, (long)out, sizeof out);
  sys(93, bad, 0, 0);
  for (;;) {{}}
}}
"#,
            xs.join(", ")
        ),
    )
    .unwrap();
    let out = Command::new("clang-22")
        .current_dir(&dir.0)
        .args([
            "--target=aarch64-linux-gnu",
            "-O1",
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-fuse-ld=lld",
            "-Wall",
            "-Werror",
            "main.c",
            "model.o",
            "-o",
            "main",
        ])
        .output()
        .expect("clang-22 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new("qemu-aarch64")
        .arg(dir.0.join("main"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "aarch64 program exited with {}",
        run.status
    );
    let got: Vec<f32> = run
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let want: Vec<f32> = [&want[0], &want[1], &want[2]]
        .iter()
        .flat_map(|t| t.as_f32().unwrap().to_vec())
        .collect();
    assert_eq!(got, want);
}
