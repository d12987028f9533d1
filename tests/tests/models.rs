//! Every shared model through the frontend and the reference interpreter, checked against
//! onnxruntime's recorded output; the text form round-trips on each; the digits models' test-set
//! accuracy; and a snapshot of the imported digits_vit IR.
//!
//! Tolerances (stated once, here): float models max|Δ| ≤ 1e-4·max(1, max|ref|); quantized
//! models the same argmax and max|Δ| ≤ 1e-3·max(1, max|ref|).

use std::path::Path;
use vitc_ir::{print_module, Module};
use vitc_tests::*;

const FLOAT_TOL: f64 = 1e-4;
const QUANT_TOL: f64 = 1e-3;

/// print → parse → print is identical.
fn assert_round_trip(m: &Module) {
    let text = print_module(m);
    let back = vitc_ir::parse_module(&text, &m.constants)
        .unwrap_or_else(|e| panic!("{}: printed IR does not parse: {e}", m.name));
    assert_eq!(print_module(&back), text, "{}: round trip differs", m.name);
}

/// Import `name` from `dir`, run the interpreter on its input and compare with onnxruntime.
fn check_model(dir: &Path, name: &str, quantized: bool) {
    let m = import(&dir.join(format!("{name}.onnx")));
    assert_round_trip(&m);
    let x = npy(&dir.join(format!("{name}.input.npy")));
    let want = npy(&dir.join(format!("{name}.output.npy")));
    let got = vitc_ir::run(&m, &[x]).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(got.len(), 1, "{name}: one output expected");
    let err = max_abs_diff(&got[0], &want);
    let scale = max_abs(&want).max(1.0);
    let tol = if quantized { QUANT_TOL } else { FLOAT_TOL } * scale;
    eprintln!("{name}: max|Δ| = {err:.3e} (tolerance {tol:.3e})");
    assert!(err <= tol, "{name}: max|Δ| = {err:e} > {tol:e}");
    if quantized {
        assert_eq!(
            argmax_rows(&got[0]),
            argmax_rows(&want),
            "{name}: argmax differs"
        );
    }
}

macro_rules! shared_model_tests {
    ($($test:ident => $name:literal, $quant:expr;)*) => {$(
        #[test]
        fn $test() {
            if let Some(dir) = models_dir(stringify!($test)) {
                check_model(&dir, $name, $quant);
            }
        }
    )*};
}

shared_model_tests! {
    deit_tiny => "deit_tiny", false;
    deit_tiny_dynamo => "deit_tiny_dynamo", false;
    mobilevit_xxs => "mobilevit_xxs", false;
    swin_micro => "swin_micro", false;
    levit_128s_dev => "levit_128s_dev", false;
    efficientvit_b0_dev => "efficientvit_b0_dev", false;
}

/// deit_tiny_qdq's reference is onnxruntime 1.32 with all optimisations, which replaces the Q/DQ
/// pairs by its own integer kernels (QGemm, QLinearMatMul, QLinearConv, a table-driven
/// QLinearSoftmax). Computing the graph as the ONNX spec defines it flips a few values at int8
/// rounding boundaries and the flips compound over 12 blocks: onnxruntime's own unfused run
/// (ORT_DISABLE_ALL) is 4.1e-2 away from that reference, the interpreter 4.8e-2. So this test
/// asserts the argmax and the quantization issue's cosine bar ([`QDQ_MIN_COSINE`]), and the
/// frontend issue's 1e-3 line is kept below as an ignored test that states the gap.
#[test]
fn deit_tiny_qdq() {
    let Some(dir) = models_dir("deit_tiny_qdq") else {
        return;
    };
    let m = import(&dir.join("deit_tiny_qdq.onnx"));
    assert_round_trip(&m);
    let x = npy(&dir.join("deit_tiny_qdq.input.npy"));
    let want = npy(&dir.join("deit_tiny_qdq.output.npy"));
    let got = vitc_ir::run(&m, &[x]).expect("interpreter runs");
    let cos = cosine(&got[0], &want);
    eprintln!(
        "deit_tiny_qdq: max|Δ| = {:.3e}, cosine = {cos:.6}",
        max_abs_diff(&got[0], &want)
    );
    assert_eq!(argmax_rows(&got[0]), argmax_rows(&want), "argmax differs");
    assert!(cos >= QDQ_MIN_COSINE, "cosine {cos} < {QDQ_MIN_COSINE}");
}

#[test]
#[ignore = "does not hold: the reference uses onnxruntime's fused int8 kernels (see deit_tiny_qdq)"]
fn deit_tiny_qdq_within_1e_3() {
    if let Some(dir) = models_dir("deit_tiny_qdq_within_1e_3") {
        check_model(&dir, "deit_tiny_qdq", true);
    }
}

// The digits models are bundled, so these run in every clone.
#[test]
fn digits_vit() {
    check_model(&fixture(""), "digits_vit", false);
}

#[test]
fn digits_vit_qat() {
    check_model(&fixture(""), "digits_vit_qat", true);
}

/// Top-1 accuracy of the interpreter over the 360 held-back digits.
fn digits_accuracy(model: &str) -> f64 {
    let m = import(&fixture(model));
    let xs = npy(&fixture("digits_test_x.npy"));
    let ys = npy(&fixture("digits_test_y.npy")).to_i64_vec();
    assert_eq!(xs.shape[0], ys.len());
    let mut correct = 0;
    for (i, &y) in ys.iter().enumerate() {
        let out = vitc_ir::run(&m, &[batch_row(&xs, i)]).expect("interpreter runs");
        correct += (argmax_rows(&out[0])[0] as i64 == y) as usize;
    }
    let acc = correct as f64 / ys.len() as f64;
    eprintln!("{model}: top-1 {correct}/{} = {acc:.4}", ys.len());
    acc
}

#[test]
fn digits_vit_accuracy() {
    assert!(digits_accuracy("digits_vit.onnx") >= 0.955);
}

#[test]
fn digits_vit_qat_accuracy() {
    assert!(digits_accuracy("digits_vit_qat.onnx") >= 0.955);
}

#[test]
fn digits_vit_ir_snapshot() {
    let m = import(&fixture("digits_vit.onnx"));
    insta::assert_snapshot!("digits_vit_imported", print_module(&m));
}
