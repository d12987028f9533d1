//! Interop targets end to end: the -O2 module of each shared model written as OpenVINO IR (run
//! by OpenVINO's runtime), as TensorRT build inputs (the ONNX checked by `onnx.checker` and
//! run by onnxruntime) and as MLIR (verified, then parsed by `mlir-opt-22`). The Python
//! checks run through the project venv (`.venv`, made by scripts/setup.sh); a missing venv is
//! a failure that says so, a missing model set a skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use vitc_ir::{Module, Tensor};
use vitc_tests::{
    argmax_rows, cosine, max_abs, max_abs_diff, models_dir, npy, repo_root, QDQ_MIN_COSINE,
};

fn python() -> PathBuf {
    let py = repo_root().join(".venv/bin/python");
    assert!(
        py.exists(),
        "the Python venv is missing at {}: run scripts/setup.sh",
        py.display()
    );
    py
}

/// Run a Python snippet with arguments; panic with its output if it fails.
fn run_python(code: &str, args: &[&Path]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python failed:\n{text}");
    text
}

fn work_dir(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("interop")
        .join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn fused(models: &Path, name: &str) -> Module {
    let m = vitc_onnx::import_file(&models.join(format!("{name}.onnx")), &Default::default())
        .expect("import");
    vitc_passes::optimize(&m, &Default::default())
        .expect("-O2")
        .0
}

/// The acceptance bar: fp32 models within 1e-4·max(1, max|ref|); the int8 model the same
/// argmax and cosine ≥ QDQ_MIN_COSINE. Prints the numbers.
fn judge(target: &str, name: &str, got: &Tensor, want: &Tensor) {
    let d = max_abs_diff(got, want);
    let cos = cosine(got, want);
    eprintln!(
        "{target} {name}: max|d| = {d:.3e}, max|ref| = {:.3}, cosine = {cos:.6}",
        max_abs(want)
    );
    if name.ends_with("qdq") {
        assert_eq!(
            argmax_rows(got),
            argmax_rows(want),
            "{target} {name}: argmax differs"
        );
        assert!(
            cos >= QDQ_MIN_COSINE,
            "{target} {name}: cosine {cos} < {QDQ_MIN_COSINE}"
        );
    } else {
        let tol = 1e-4 * max_abs(want).max(1.0);
        assert!(d <= tol, "{target} {name}: max|d| {d} > {tol}");
    }
}

const OV_RUN: &str = r#"
import sys, numpy as np, openvino as ov
xml, inp, out = sys.argv[1:4]
core = ov.Core()
model = core.read_model(xml)
cm = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "1"})
x = np.load(inp)
y = cm([x])[cm.output(0)]
np.save(out, np.asarray(y, dtype=np.float32))
ops = sorted({op.get_type_name() for op in model.get_ops()})
print("ops:", " ".join(ops))
rt = sorted({op.get_rt_info()["layerType"].astype(str) for op in cm.get_runtime_model().get_ordered_ops()})
print("compiled:", " ".join(rt))
"#;

/// The words after `prefix` on the line of `log` that starts with it.
fn listed<'a>(log: &'a str, prefix: &str) -> Vec<&'a str> {
    log.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_default()
        .split_whitespace()
        .collect()
}

fn openvino_case(name: &str) {
    let test = format!("openvino_{name}");
    let Some(models) = models_dir(&test) else {
        return;
    };
    let m = fused(&models, name);
    let dir = work_dir(&test);
    let files = vitc_openvino::write(&m, &dir).expect("write OpenVINO IR");
    assert!(files.iter().all(|f| f.exists()));
    let out = dir.join("out.npy");
    let input = models.join(format!("{name}.input.npy"));
    let log = run_python(OV_RUN, &[&files[0], &input, &out]);
    eprintln!("{}", log.trim());
    let ops = listed(&log, "ops:");
    assert!(ops.contains(&"MVN"), "no MVN in {log}");
    assert!(ops.contains(&"Softmax"), "no attention in {log}");
    // OpenVINO compiled every attention into its fused kernel (a Subgraph) and every
    // projection into a FullyConnected: no MatMul or Softmax runs on its own.
    let compiled = listed(&log, "compiled:");
    assert!(compiled.contains(&"FullyConnected"), "{log}");
    assert!(
        !compiled.contains(&"MatMul") && !compiled.contains(&"Softmax"),
        "unfused attention in {log}"
    );
    judge(
        "openvino",
        name,
        &npy(&out),
        &npy(&models.join(format!("{name}.output.npy"))),
    );
}

#[test]
fn openvino_digits_vit() {
    openvino_case("digits_vit");
}

#[test]
fn openvino_deit_tiny() {
    openvino_case("deit_tiny");
}

#[test]
fn openvino_deit_tiny_qdq() {
    openvino_case("deit_tiny_qdq");
}

/// The attention lowering's other forms — a scale that is not 1 (a Multiply on the scores), K
/// already transposed (`bhds`, no transpose_b), V split by heads — against the interpreter.
#[test]
fn openvino_attention_forms() {
    use vitc_ir::{Activation, AttnLayout, DType, Op, TensorType};
    let ramp = |shape: Vec<usize>, k: usize| {
        let n: usize = shape.iter().product();
        let v = (0..n).map(|i| ((i * k % 29) as f32 - 14.0) / 9.0).collect();
        Tensor::f32(shape, v)
    };
    let mut m = Module::new("attn_forms");
    let x = m.add_input("x", TensorType::new(vec![1, 5, 8], DType::F32));
    let lin = Op::Linear {
        activation: Activation::None,
        has_bias: false,
        has_residual: false,
    };
    let proj = |m: &mut Module, k: usize| {
        let w = m.add_constant("w", ramp(vec![8, 8], k));
        m.add(lin.clone(), vec![x, w], "proj").expect("linear")
    };
    let (q, k, v) = (proj(&mut m, 7), proj(&mut m, 11), proj(&mut m, 13));
    let split = |m: &mut Module, t, perm: Vec<usize>| {
        let r = m
            .add(
                Op::Reshape {
                    shape: vec![1, 5, 2, 4],
                },
                vec![t],
                "split",
            )
            .expect("reshape");
        m.add(Op::Transpose { perm }, vec![r], "heads")
            .expect("transpose")
    };
    let kt = split(&mut m, k, vec![0, 2, 3, 1]);
    let vh = split(&mut m, v, vec![0, 2, 1, 3]);
    let a = m
        .add(
            Op::Attention {
                heads: 2,
                scale: 0.3,
                q_layout: AttnLayout::Bsd,
                k_layout: AttnLayout::Bhds,
                v_layout: AttnLayout::Bhsd,
                out_layout: AttnLayout::Bsd,
                has_bias: false,
                has_mask: false,
            },
            vec![q, kt, vh],
            "attn",
        )
        .expect("attention");
    m.outputs.push(("y".into(), a));
    let dir = work_dir("openvino_attention_forms");
    let files = vitc_openvino::write(&m, &dir).expect("write OpenVINO IR");
    let input = ramp(vec![1, 5, 8], 5);
    let inp = dir.join("x.npy");
    std::fs::write(&inp, vitc_npy::write(&input)).expect("write input");
    let out = dir.join("out.npy");
    let log = run_python(OV_RUN, &[&files[0], &inp, &out]);
    let ops = listed(&log, "ops:");
    assert!(
        ops.contains(&"Multiply") && ops.contains(&"Softmax"),
        "{log}"
    );
    let want = vitc_ir::run(&m, &[input]).expect("interpreter");
    let got = npy(&out);
    let d = max_abs_diff(&got, &want[0]);
    assert!(d <= 1e-5 * max_abs(&want[0]).max(1.0), "max|d| {d}");
}

#[test]
fn openvino_refuses_an_invalid_module() {
    // Every vit op has an OpenVINO lowering; a module that does not verify is refused, naming
    // the target.
    let mut m = Module::new("bad");
    let x = m.add_input(
        "x",
        vitc_ir::TensorType::new(vec![2, 3], vitc_ir::DType::F32),
    );
    m.outputs.push(("y".into(), vitc_ir::ValueId(x.0 + 5)));
    let e = vitc_openvino::translate(&m).expect_err("refused");
    assert!(e.to_string().contains("openvino"), "{e}");
}

const ORT_RUN: &str = r#"
import sys, collections, numpy as np, onnx, onnxruntime as ort
path, inp, out = sys.argv[1:4]
onnx.checker.check_model(path, full_check=True)
m = onnx.load(path)
for v in list(m.graph.input) + list(m.graph.output):
    dims = v.type.tensor_type.shape.dim
    assert all(d.HasField("dim_value") for d in dims), f"{v.name} has a dynamic dim"
ops = collections.Counter(n.op_type for n in m.graph.node)
so = ort.SessionOptions()
so.intra_op_num_threads = 2
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
x = np.load(inp)
y = s.run(None, {s.get_inputs()[0].name: x})[0]
np.save(out, np.asarray(y, dtype=np.float32))
print("ops:", " ".join(f"{k}={v}" for k, v in sorted(ops.items())))
"#;

fn tensorrt_case(name: &str) {
    let test = format!("tensorrt_{name}");
    let Some(models) = models_dir(&test) else {
        return;
    };
    let m = fused(&models, name);
    let dir = work_dir(&test);
    let files = vitc_tensorrt::write(&m, &dir, &Default::default()).expect("write TensorRT inputs");
    let build = std::fs::read_to_string(&files[1]).expect("build.sh");
    assert!(build.contains("--saveEngine=model.plan"), "{build}");
    assert_eq!(
        build.contains("--stronglyTyped"),
        name.ends_with("qdq"),
        "{build}"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[2]).expect("manifest")).expect("json");
    assert_eq!(
        manifest["inputs"][0]["shape"].as_array().map(|a| a.len()),
        Some(4)
    );
    let out = dir.join("out.npy");
    let input = models.join(format!("{name}.input.npy"));
    let log = run_python(ORT_RUN, &[&files[0], &input, &out]);
    eprintln!("{}", log.trim());
    assert!(log.contains("LayerNormalization="), "{log}");
    assert!(log.contains("Softmax="), "{log}");
    if name.ends_with("qdq") {
        assert!(log.contains("QuantizeLinear="), "{log}");
    }
    judge(
        "tensorrt/onnxruntime",
        name,
        &npy(&out),
        &npy(&models.join(format!("{name}.output.npy"))),
    );
}

#[test]
fn tensorrt_deit_tiny() {
    tensorrt_case("deit_tiny");
}

#[test]
fn tensorrt_deit_tiny_qdq() {
    tensorrt_case("deit_tiny_qdq");
}

#[test]
fn tensorrt_digits_vit() {
    tensorrt_case("digits_vit");
}

fn mlir_opt() -> Option<PathBuf> {
    ["mlir-opt-22", "/usr/lib/llvm-22/bin/mlir-opt"]
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Export, verify in-process (inside `write`), then have `mlir-opt-22` parse the file
/// (with the IRDL dialect file for the vit form).
fn mlir_case(name: &str, dialect: vitc_mlir::Dialect) {
    let test = format!("mlir_{name}_{dialect:?}");
    let Some(models) = models_dir(&test) else {
        return;
    };
    let m = fused(&models, name);
    let dir = work_dir(&test);
    let out = dir.join("model.mlir");
    let files = vitc_mlir::write(&m, &out, dialect).expect("export and verify MLIR");
    let text = std::fs::read_to_string(&out).expect("mlir text");
    match dialect {
        vitc_mlir::Dialect::Tosa => {
            assert!(text.contains("tosa.matmul") && text.contains("tosa.erf"));
            assert!(!text.contains("\"vit."), "a vit op left in the tosa form");
        }
        vitc_mlir::Dialect::Vit => {
            assert!(text.contains("\"vit.attention\"") && text.contains("\"vit.layer_norm\""));
            assert_eq!(files.len(), 2);
        }
    }
    let Some(opt) = mlir_opt() else {
        panic!("mlir-opt-22 not found (LLVM/MLIR 22 is a build requirement of vitc-mlir)");
    };
    let mut cmd = Command::new(opt);
    if dialect == vitc_mlir::Dialect::Vit {
        cmd.arg(format!("--irdl-file={}", files[1].display()));
    }
    let o = cmd
        .arg(&out)
        .arg("-o")
        .arg("/dev/null")
        .output()
        .expect("mlir-opt runs");
    assert!(
        o.status.success(),
        "mlir-opt-22 rejected {}:\n{}",
        out.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "mlir {dialect:?} {name}: {} bytes, parsed by mlir-opt-22",
        text.len()
    );
}

#[test]
fn mlir_tosa_digits_vit() {
    mlir_case("digits_vit", vitc_mlir::Dialect::Tosa);
}

#[test]
fn mlir_tosa_deit_tiny() {
    mlir_case("deit_tiny", vitc_mlir::Dialect::Tosa);
}

#[test]
fn mlir_vit_digits_vit() {
    mlir_case("digits_vit", vitc_mlir::Dialect::Vit);
}

#[test]
fn mlir_vit_deit_tiny() {
    mlir_case("deit_tiny", vitc_mlir::Dialect::Vit);
}

#[test]
fn mlir_tosa_refuses_quantized_ops_by_name() {
    let Some(models) = models_dir("mlir_tosa_refuses_quantized_ops_by_name") else {
        return;
    };
    let m = fused(&models, "deit_tiny_qdq");
    let e = vitc_mlir::emit(&m, vitc_mlir::Dialect::Tosa).expect_err("refused");
    let msg = e.to_string();
    assert!(msg.contains("tosa") && msg.contains("vit."), "{msg}");
    // The vit form keeps them.
    vitc_mlir::emit(&m, vitc_mlir::Dialect::Vit).expect("vit form of the int8 model verifies");
}

/// The tosa form computes the model: digits_vit's export, given its input as a constant and a
/// print call, lowered by mlir-opt-22 (tosa → linalg → loops → LLVM) and run by mlir-runner-22.
#[test]
fn mlir_tosa_digits_vit_runs() {
    let name = "digits_vit";
    let Some(models) = models_dir("mlir_tosa_digits_vit_runs") else {
        return;
    };
    let m = fused(&models, name);
    let x = npy(&models.join(format!("{name}.input.npy")));
    let want = npy(&models.join(format!("{name}.output.npy")));
    let src = vitc_mlir::emit(&m, vitc_mlir::Dialect::Tosa).expect("tosa form");
    let body = src
        .trim_end()
        .strip_suffix('}')
        .expect("module ends with }");
    let shape = |s: &[usize]| {
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x")
    };
    let (xs, ys) = (shape(&x.shape), shape(&want.shape));
    let hex: String = x
        .data
        .to_le_bytes()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let harness = format!(
        "  func.func private @printMemrefF32(tensor<*xf32>)\n  func.func @entry() {{\n    \
         %x = arith.constant dense<\"0x{hex}\"> : tensor<{xs}xf32>\n    \
         %y = call @main(%x) : (tensor<{xs}xf32>) -> tensor<{ys}xf32>\n    \
         %u = tensor.cast %y : tensor<{ys}xf32> to tensor<*xf32>\n    \
         call @printMemrefF32(%u) : (tensor<*xf32>) -> ()\n    return\n  }}\n}}\n"
    );
    let dir = work_dir("mlir_tosa_digits_vit_runs");
    let (run, lowered, llvm) = (
        dir.join("run.mlir"),
        dir.join("linalg.mlir"),
        dir.join("llvm.mlir"),
    );
    std::fs::write(&run, format!("{body}{harness}")).expect("write");
    let opt = mlir_opt().expect("mlir-opt-22");
    let step = |args: &[&str], from: &Path, to: &Path| {
        let o = Command::new(&opt)
            .args(args)
            .arg(from)
            .arg("-o")
            .arg(to)
            .output()
            .expect("mlir-opt");
        assert!(
            o.status.success(),
            "mlir-opt {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    step(
        &["--pass-pipeline=builtin.module(func.func(tosa-to-linalg-named,tosa-to-linalg,tosa-to-arith,tosa-to-tensor))"],
        &run,
        &lowered,
    );
    step(
        &[
            "--one-shot-bufferize=bufferize-function-boundaries",
            "--convert-linalg-to-loops",
            "--buffer-deallocation-pipeline",
            "--expand-strided-metadata",
            "--lower-affine",
            "--convert-scf-to-cf",
            "--convert-math-to-llvm",
            "--convert-math-to-libm",
            "--convert-to-llvm",
            "--reconcile-unrealized-casts",
        ],
        &lowered,
        &llvm,
    );
    let libs = "/usr/lib/llvm-22/lib/libmlir_runner_utils.so,/usr/lib/llvm-22/lib/libmlir_c_runner_utils.so";
    let o = Command::new("mlir-runner-22")
        .args(["-e", "entry", "-entry-point-result=void"])
        .arg(format!("-shared-libs={libs}"))
        .arg(&llvm)
        .output()
        .expect("mlir-runner-22 runs");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "mlir-runner-22: {text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let data = text.split("data =").nth(1).expect("printed memref");
    let got: Vec<f32> = data
        .split(|c: char| c == ',' || c == '[' || c == ']' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("a float"))
        .collect();
    // printMemrefF32 prints six significant digits: well inside the fp32 bar here.
    judge(
        "mlir-tosa(mlir-runner)",
        name,
        &Tensor::f32(want.shape.clone(), got),
        &want,
    );
}
