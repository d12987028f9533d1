//! Models that already select tokens, as DynamicViT exports them (TopK on per-token scores, then
//! GatherElements or Gather of the kept tokens), and TopK and GatherElements on their own:
//! imported, run by the interpreter, compiled for x86-64 (both targets, one and two threads)
//! and compared with onnxruntime's outputs, which `tests/models/gen/token_select.py` recorded
//! beside each model in `tests/models/token_select/`.
//!
//! TopK's indices and values and GatherElements' results are copies of input elements, so they
//! must match bit for bit, ties, NaN, infinities and signed zeros included; values computed
//! after the selection are held to FLOAT_TOL·max(1, max|ref|). The compiled ABI passes float32
//! tensors only, so the compiled runs cast integer outputs (indices, int32 values) to f32 at the
//! end of the module — exact for these sizes — and compare them with the reference cast alike.
//!
//! The interop targets get the same -O2 modules: OpenVINO IR run by OpenVINO, the TensorRT
//! build ONNX run by onnxruntime (both through the project venv), and MLIR, whose `vit` form
//! verifies and whose tosa form refuses gather_elements by name.

use std::path::{Path, PathBuf};
use std::process::Command;
use vitc_ir::{DType, Module, Op, Tensor, TensorType};
use vitc_runtime::{Library, Pool};
use vitc_tests::*;

const TARGETS: [&str; 2] = ["x86_64-avx2", "x86_64-avx512"];

fn file(name: &str, what: &str) -> PathBuf {
    fixture(&format!("token_select/{name}.{what}"))
}

/// onnxruntime's value of graph output `output` of model `name`.
fn reference(name: &str, output: &str) -> Tensor {
    npy(&file(name, &format!("{output}.npy")))
}

/// Bit-for-bit equality (so -0.0 ≠ 0.0 and NaN = NaN), with the values in the message.
fn assert_same(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: element type");
    assert!(
        got.data.to_le_bytes() == want.data.to_le_bytes(),
        "{what}: got {:?}, want {:?}",
        got.to_f64_vec(),
        want.to_f64_vec()
    );
}

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    let err = max_abs_diff(got, want);
    let tol = FLOAT_TOL * max_abs(want).max(1.0);
    assert!(err <= tol, "{what}: max|Δ| = {err:e} > {tol:e}");
}

/// Run `m` through the interpreter on the model's recorded input.
fn interpret(m: &Module, name: &str) -> Vec<Tensor> {
    let x = npy(&file(name, "input.npy"));
    vitc_ir::run(m, &[x]).unwrap_or_else(|e| panic!("{name}: interpreter: {e}"))
}

/// `m` with every non-f32 output cast to f32, for the float32-only ABI.
fn f32_outputs(m: &Module) -> Module {
    let mut m = m.clone();
    for k in 0..m.outputs.len() {
        let v = m.outputs[k].1;
        if m.ty(v).dtype != DType::F32 {
            let c = m
                .add(Op::Cast { to: DType::F32 }, vec![v], "as_f32")
                .expect("cast to f32");
            m.outputs[k].1 = c;
        }
    }
    m
}

/// Compile `m` (outputs cast to f32) for each target and run it on the recorded input with one
/// and two threads; both runs must agree. Returns each target's outputs.
fn compiled(m: &Module, name: &str) -> Vec<(&'static str, Vec<Tensor>)> {
    let m = f32_outputs(m);
    let x = npy(&file(name, "input.npy")).to_f32_vec();
    let dir = tmpdir("token_select", name);
    let pool = Pool::new(2).expect("pool");
    let mut all = vec![];
    for target in TARGETS {
        let so = build(&m, target, &dir, &format!("{name}-{target}.so"));
        let lib = Library::open(&so).unwrap_or_else(|e| panic!("{}: {e}", so.display()));
        let run = |pool: Option<&Pool>| -> Vec<Tensor> {
            let mut ys: Vec<Vec<f32>> = (0..lib.num_outputs())
                .map(|i| vec![0.0; lib.output_len(i)])
                .collect();
            let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
            lib.run(&[&x], &mut outs, pool).expect("library runs");
            ys.into_iter()
                .enumerate()
                .map(|(i, y)| Tensor::f32(lib.output_shape(i).to_vec(), y))
                .collect()
        };
        let one = run(None);
        let two = run(Some(&pool));
        for (a, b) in one.iter().zip(&two) {
            assert_same(a, b, &format!("{name} {target}: 1 vs 2 threads"));
        }
        all.push((target, one));
    }
    let _ = std::fs::remove_dir_all(&dir);
    all
}

fn has_op(m: &Module, pred: impl Fn(&Op) -> bool) -> bool {
    m.nodes.iter().any(|n| pred(&n.op))
}

/// A DynamicViT-style selection, interpreted at -O0 and compiled at -O2.
fn check_token_select(name: &str, selects_with: fn(&Op) -> bool) {
    let path = file(name, "onnx");
    let want = reference(name, "output");
    let m = import(&path);
    assert!(
        has_op(&m, selects_with),
        "{name}: the selection op is there"
    );
    assert_close(
        &interpret(&m, name)[0],
        &want,
        &format!("{name}: interpreter"),
    );
    let o2 = import_o2(&path);
    assert_close(
        &interpret(&o2, name)[0],
        &want,
        &format!("{name}: -O2 interpreter"),
    );
    for (target, got) in compiled(&o2, name) {
        assert_close(&got[0], &want, &format!("{name} {target}"));
    }
}

#[test]
fn dynamic_vit_selection_with_gather_elements() {
    check_token_select("token_select_gather_elements", |op| {
        matches!(op, Op::GatherElements { .. })
    });
}

#[test]
fn dynamic_vit_selection_with_gather() {
    // The gather of the kept tokens takes its indices from TopK: computed, not constant.
    check_token_select("token_select_gather", |op| matches!(op, Op::Gather { .. }));
}

/// TopK models whose two outputs must equal onnxruntime's exactly.
const TOPK_EXACT: &[&str] = &[
    "topk_ties",
    "topk_smallest_axis0",
    "topk_middle_axis",
    "topk_k1",
    "topk_k1_smallest",
    "topk_kn",
    "topk_kn_smallest",
    "topk_nan",
    "topk_nan_smallest",
    "topk_int32",
    "topk_opset10",
];

#[test]
fn topk_matches_onnxruntime_exactly() {
    for &name in TOPK_EXACT {
        let (values, indices) = (reference(name, "values"), reference(name, "indices"));
        let m = import(&file(name, "onnx"));
        let got = interpret(&m, name);
        assert_same(&got[0], &values, &format!("{name}: values"));
        assert_same(&got[1], &indices, &format!("{name}: indices"));
        let o2 = import_o2(&file(name, "onnx"));
        for (target, got) in compiled(&o2, name) {
            let what = format!("{name} {target}");
            assert_same(
                &got[0],
                &values.cast(DType::F32),
                &format!("{what}: values"),
            );
            assert_same(
                &got[1],
                &indices.cast(DType::F32),
                &format!("{what}: indices"),
            );
        }
    }
}

/// `sorted = 0` leaves the order to the implementation (onnxruntime's is neither ascending nor
/// descending): the same multiset of values must come out, each index naming its value, no
/// index twice. vitc keeps rank order, so its result is also the sorted one.
#[test]
fn topk_unsorted_selects_the_same_elements() {
    let name = "topk_unsorted";
    let x = npy(&file(name, "input.npy"));
    let values = reference(name, "values");
    let m = import(&file(name, "onnx"));
    let got = interpret(&m, name);
    let o2 = import_o2(&file(name, "onnx"));
    let mut runs = vec![("interpreter", got[0].clone(), got[1].clone())];
    for (target, got) in compiled(&o2, name) {
        runs.push((target, got[0].clone(), got[1].cast(DType::I64)));
    }
    let n = x.shape[1];
    let k = values.shape[1];
    let xs = x.to_f64_vec();
    let sorted_row = |t: &Tensor, r: usize| -> Vec<f64> {
        let mut v = t.to_f64_vec()[r * k..(r + 1) * k].to_vec();
        v.sort_by(|a, b| b.total_cmp(a));
        v
    };
    for (what, v, i) in runs {
        assert_eq!(v.shape, values.shape, "{what}: shape");
        let (vv, ii) = (v.to_f64_vec(), i.to_i64_vec());
        for r in 0..x.shape[0] {
            assert_eq!(sorted_row(&v, r), sorted_row(&values, r), "{what}: row {r}");
            let row = &ii[r * k..(r + 1) * k];
            for (s, &j) in row.iter().enumerate() {
                assert_eq!(
                    xs[r * n + j as usize],
                    vv[r * k + s],
                    "{what}: row {r} slot {s}"
                );
                assert!(!row[..s].contains(&j), "{what}: row {r} repeats index {j}");
            }
            // Rank order: descending values (the ONNX sorted order).
            assert_eq!(
                vv[r * k..(r + 1) * k],
                sorted_row(&v, r)[..],
                "{what}: row {r} order"
            );
        }
    }
    // Sanity for the test itself: onnxruntime's order here is not sorted, so the case is one
    // where an order-sensitive comparison would fail.
    assert!(
        (0..x.shape[0])
            .any(|r| values.to_f64_vec()[r * k..(r + 1) * k] != sorted_row(&values, r)[..]),
        "onnxruntime returned sorted rows; the fixture no longer exercises sorted = 0"
    );
}

#[test]
fn gather_elements_with_negative_and_short_indices() {
    // Constant indices in -5..5 along axis 1 (length 7 against the data's 5), shorter than the
    // data in dims 0 and 2: the import slices the data to them.
    let name = "gather_elements_neg";
    let want = reference(name, "output");
    let m = import(&file(name, "onnx"));
    assert!(has_op(&m, |op| matches!(
        op,
        Op::GatherElements { axis: 1 }
    )));
    assert_same(
        &interpret(&m, name)[0],
        &want,
        &format!("{name}: interpreter"),
    );
    for (target, got) in compiled(&import_o2(&file(name, "onnx")), name) {
        assert_same(&got[0], &want, &format!("{name} {target}"));
    }
}

// ---- interop targets ---------------------------------------------------------------------------

/// Runs an OpenVINO IR (`openvino`) or an ONNX file (`onnx`, with onnx.checker first) on one
/// input and saves every output, in order, as OUT/outK.npy with the type the runtime gave.
const INTEROP_RUN: &str = r#"
import sys, numpy as np
kind, model, inp, out = sys.argv[1:5]
x = np.load(inp)
if kind == "openvino":
    import openvino as ov
    core = ov.Core()
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "1"}
    cm = core.compile_model(core.read_model(model), "CPU", cfg)
    res = cm([x])
    ys = [res[o] for o in cm.outputs]
else:
    import onnx, onnxruntime as ort
    onnx.checker.check_model(model, full_check=True)
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    ys = s.run(None, {s.get_inputs()[0].name: x})
for i, y in enumerate(ys):
    np.save(f"{out}/out{i}.npy", np.asarray(y))
print("outputs:", len(ys))
"#;

fn run_interop(kind: &str, model: &Path, name: &str, dir: &Path, count: usize) -> Vec<Tensor> {
    let py = repo_root().join(".venv/bin/python");
    assert!(
        py.exists(),
        "the Python venv is missing at {}: run scripts/setup.sh",
        py.display()
    );
    let o = Command::new(py)
        .arg("-c")
        .arg(INTEROP_RUN)
        .arg(kind)
        .arg(model)
        .arg(file(name, "input.npy"))
        .arg(dir)
        .output()
        .expect("python runs");
    assert!(
        o.status.success(),
        "{kind} {name}:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (0..count)
        .map(|i| npy(&dir.join(format!("out{i}.npy"))))
        .collect()
}

/// What an interop runtime returned against the reference: exact for the selections (after
/// converting to the reference's element type, which a runtime may narrow, e.g. i64 indices
/// to i32), within FLOAT_TOL for the token-select models' computed output.
fn judge_interop(got: &[Tensor], name: &str, outputs: &[&str], what: &str) {
    assert_eq!(got.len(), outputs.len(), "{what}: output count");
    for (g, &o) in got.iter().zip(outputs) {
        let want = reference(name, o);
        let what = format!("{what}: {o}");
        if name.starts_with("token_select") {
            assert_close(g, &want, &what);
        } else {
            assert_same(&g.cast(want.dtype()), &want, &what);
        }
    }
}

/// (model, its outputs) for the interop checks: both selections, ties, NaN, the middle axis.
const INTEROP: &[(&str, &[&str])] = &[
    ("token_select_gather_elements", &["output"]),
    ("token_select_gather", &["output"]),
    ("topk_ties", &["values", "indices"]),
    ("topk_nan_smallest", &["values", "indices"]),
    ("topk_middle_axis", &["values", "indices"]),
    ("gather_elements_neg", &["output"]),
];

#[test]
fn openvino_runs_token_selection() {
    // gather_elements_neg's data is sliced to the indices before the gather; OpenVINO 2026.4's
    // CPU plugin drops a Slice that feeds GatherElements and then fails its own shape check
    // ("`data` and `indices` must have equal or intersecting dimensions"), on an IR whose
    // shapes are right (the same graph built with OpenVINO's Python API fails alike, and
    // compiles with a StridedSlice or any op between the two). Token selection never slices.
    for &(name, outputs) in INTEROP.iter().filter(|(n, _)| *n != "gather_elements_neg") {
        let m = import_o2(&file(name, "onnx"));
        let dir = tmpdir("token_select_openvino", name);
        let files = vitc_openvino::write(&m, &dir).expect("write OpenVINO IR");
        if name != "token_select_gather" {
            let xml = std::fs::read_to_string(&files[0]).expect("xml");
            assert!(
                xml.contains("type=\"GatherElements\""),
                "{name}: no GatherElements"
            );
        }
        let got = run_interop("openvino", &files[0], name, &dir, outputs.len());
        judge_interop(&got, name, outputs, &format!("openvino {name}"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn tensorrt_onnx_runs_token_selection() {
    for &(name, outputs) in INTEROP {
        let m = import_o2(&file(name, "onnx"));
        let dir = tmpdir("token_select_tensorrt", name);
        let files =
            vitc_tensorrt::write(&m, &dir, &Default::default()).expect("write TensorRT inputs");
        let got = run_interop("onnx", &files[0], name, &dir, outputs.len());
        judge_interop(&got, name, outputs, &format!("tensorrt/onnxruntime {name}"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn mlir_vit_form_keeps_gather_elements_and_tosa_refuses_it() {
    for &(name, _) in INTEROP {
        let m = import_o2(&file(name, "onnx"));
        let text = vitc_mlir::emit(&m, vitc_mlir::Dialect::Vit)
            .unwrap_or_else(|e| panic!("{name}: vit form: {e}"));
        if name != "token_select_gather" {
            assert!(text.contains("\"vit.gather_elements\""), "{name}: {text}");
        }
    }
    // TOSA has no per-element gather: the op alone is refused, by name.
    let mut m = Module::new("ge");
    let x = m.add_input("x", TensorType::new(vec![4, 3], DType::F32));
    let i = m.add_constant("i", Tensor::i64(vec![2, 3], vec![0, 3, -1, 2, 2, 1]));
    let y = m
        .add(Op::GatherElements { axis: 0 }, vec![x, i], "pick")
        .expect("gather_elements");
    m.outputs.push(("y".into(), y));
    let e = vitc_mlir::emit(&m, vitc_mlir::Dialect::Tosa).expect_err("refused");
    assert!(e.to_string().contains("vit.gather_elements"), "{e}");
    vitc_mlir::emit(&m, vitc_mlir::Dialect::Vit).expect("the vit form verifies");
}
