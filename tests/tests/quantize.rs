//! Post-training int8 quantization (`vitc_quantize::quantize`, `--quantize int8 --calibrate`):
//! digits_vit calibrated on its calibration set (never the test set) with each range method,
//! compiled, checked against the interpreter on the quantized module, and scored on all 360
//! test images — the default method must keep the bar; every linear not kept in float
//! becomes a qlinear; `keep-float` keeps exactly what it names; and the CLI refuses what it
//! cannot do with one line.

use std::path::PathBuf;
use std::sync::OnceLock;
use vitc_ir::{Module, Op, Tensor};
use vitc_prune::Calibration;
use vitc_quantize::{
    quantize, ActivationScheme, Method, QuantReport, QuantizeError, QuantizeOptions, Role,
};
use vitc_runtime::Library;
use vitc_tests::*;

/// The bar for digits_vit with --quantize int8 and the default method (float: 0.9556).
const PTQ_MIN_ACCURACY: f64 = 0.950;

fn digits() -> &'static Module {
    static M: OnceLock<Module> = OnceLock::new();
    M.get_or_init(|| import_o2(&fixture("digits_vit.onnx")))
}

/// All 200 calibration images (from the training data, never the test set).
fn calibration() -> &'static Calibration {
    static C: OnceLock<Calibration> = OnceLock::new();
    C.get_or_init(|| {
        Calibration::new(digits(), &npy(&fixture("digits_calib_x.npy"))).expect("calibration")
    })
}

/// The first `n` calibration images, for the tests that check structure, not accuracy.
fn calibration_subset(n: usize) -> Vec<Tensor> {
    calibration().runs()[..n].to_vec()
}

fn count(m: &Module, pred: impl Fn(&Op) -> bool) -> usize {
    m.nodes.iter().filter(|n| pred(&n.op)).count()
}

fn is_linear(op: &Op) -> bool {
    matches!(op, Op::Linear { .. })
}

fn is_qlinear(op: &Op) -> bool {
    matches!(op, Op::QLinear { .. })
}

fn run_lib(lib: &Library, x: &[f32]) -> Tensor {
    let mut y = vec![0.0f32; lib.output_len(0)];
    lib.run(&[x], &mut [y.as_mut_slice()], None)
        .expect("library runs");
    Tensor::f32(lib.output_shape(0).to_vec(), y)
}

/// Compile `m`, check the library against the interpreter on the first test images (the
/// quantized-model tolerance and the same argmax), and return its top-1 over all 360.
fn compiled_accuracy(m: &Module, name: &str) -> f64 {
    let dir = tmpdir("quantize", name);
    let so = build(m, "x86_64-avx2", &dir, &format!("{name}.so"));
    let lib = Library::open(&so).unwrap_or_else(|e| panic!("{}: {e}", so.display()));
    let xs = npy(&fixture("digits_test_x.npy"));
    let ys = npy(&fixture("digits_test_y.npy")).to_i64_vec();
    assert_eq!((xs.shape[0], ys.len()), (360, 360));
    for i in 0..8 {
        let x = batch_row(&xs, i);
        let want = vitc_ir::run(m, std::slice::from_ref(&x)).expect("interpreter runs");
        let got = run_lib(&lib, &x.to_f32_vec());
        let err = max_abs_diff(&got, &want[0]);
        let tol = QUANT_TOL * max_abs(&want[0]).max(1.0);
        assert!(err <= tol, "{name} image {i}: max|Δ| = {err:e} > {tol:e}");
        assert_eq!(argmax_rows(&got), argmax_rows(&want[0]), "{name} image {i}");
    }
    let correct = ys
        .iter()
        .enumerate()
        .filter(|&(i, &y)| {
            let out = run_lib(&lib, &batch_row(&xs, i).to_f32_vec());
            argmax_rows(&out)[0] as i64 == y
        })
        .count();
    let _ = std::fs::remove_dir_all(&dir);
    correct as f64 / ys.len() as f64
}

/// Quantize digits_vit on the whole calibration set; check that every linear became a qlinear
/// with its epilogue as separate ops and the report covers every layer.
fn ptq(method: Method, scheme: ActivationScheme) -> (Module, QuantReport) {
    let opts = QuantizeOptions {
        method,
        scheme,
        keep_float: vec![],
    };
    let (q, report) = quantize(digits(), calibration().runs(), &opts).expect("quantize");
    vitc_ir::verify(&q).expect("quantized module verifies");
    let linears = count(digits(), is_linear);
    assert_eq!(
        linears, 25,
        "digits_vit at -O2: 12 qkv, 4 proj, 8 MLP, 1 head"
    );
    assert_eq!(
        count(&q, is_linear),
        0,
        "{method}: a linear was left in float"
    );
    assert_eq!(count(&q, is_qlinear), linears, "{method}");
    // The activation and residual epilogues the qlinear lacks: 4 GELUs, 8 residual adds (the
    // float module has one add, the positional embedding).
    assert_eq!(count(&q, |op| matches!(op, Op::Gelu { .. })), 4);
    let adds = |m: &Module| count(m, |op| *op == Op::Binary(vitc_ir::BinaryOp::Add));
    assert_eq!(adds(&q), adds(digits()) + 8);
    assert_eq!(report.layers.len(), linears);
    assert!(report.kept.is_empty());
    assert_eq!(report.images, 200);
    let want_type = match scheme {
        ActivationScheme::Asymmetric => vitc_ir::DType::U8,
        ActivationScheme::Symmetric => vitc_ir::DType::I8,
    };
    for l in &report.layers {
        assert_eq!(l.x.dtype, want_type);
        assert!(l.x.scale > 0.0 && l.x.scale.is_finite(), "{}", l.id);
        assert!(
            l.cosine_alone > 0.99 && l.cosine_in_model > 0.99,
            "{}",
            l.id
        );
    }
    // Worst first.
    assert!(report
        .layers
        .windows(2)
        .all(|w| w[0].cosine_alone <= w[1].cosine_alone));
    (q, report)
}

#[test]
fn ptq_each_method_compiled_accuracy() {
    let default = QuantizeOptions::default();
    assert_eq!(
        (default.method, default.scheme),
        (Method::Percentile(99.99), ActivationScheme::Asymmetric)
    );
    let cases = [
        (
            "percentile-u8",
            default.method,
            ActivationScheme::Asymmetric,
        ),
        ("minmax-u8", Method::MinMax, ActivationScheme::Asymmetric),
        ("mse-u8", Method::Mse, ActivationScheme::Asymmetric),
        ("percentile-i8", default.method, ActivationScheme::Symmetric),
    ];
    let mut results = Vec::new();
    for (name, method, scheme) in cases {
        let (q, report) = ptq(method, scheme);
        let acc = compiled_accuracy(&q, name);
        let out = &report.outputs[0];
        eprintln!(
            "digits_vit PTQ {name}: top-1 {acc:.4} over 360 test images; calibration output \
             cosine {:.6}, top-1 agreement {:?}",
            out.cosine, out.top1_agree
        );
        results.push((name, acc));
    }
    let (name, acc) = results[0];
    assert!(
        acc >= PTQ_MIN_ACCURACY,
        "default ({name}): top-1 {acc} < {PTQ_MIN_ACCURACY}"
    );
}

#[test]
fn roles_and_keep_float() {
    let runs = calibration_subset(8);
    let keep = |entries: &[&str]| {
        let opts = QuantizeOptions {
            keep_float: entries.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        quantize(digits(), &runs, &opts)
    };
    // Roles read off the graph: 4 blocks × (q, k, v, proj, fc1, fc2) and the head.
    let (_, all) = keep(&[]).unwrap();
    let role_count = |r: Role| all.layers.iter().filter(|l| l.role == r).count();
    assert_eq!(
        [Role::Qkv, Role::Proj, Role::Fc1, Role::Fc2, Role::Head].map(role_count),
        [12, 4, 4, 4, 1]
    );
    // A role, a name and a printed value id (%14 is block 0's first projection, as --emit ir
    // numbers it: the graph input is %arg0, not counted).
    let first = digits()
        .nodes
        .iter()
        .position(|n| is_linear(&n.op))
        .unwrap();
    let inputs_before = digits().nodes[..first]
        .iter()
        .filter(|n| matches!(n.op, Op::Input { .. }))
        .count();
    let id = format!("%{}", first - inputs_before);
    assert_eq!(id, "%14");
    let (q, report) = keep(&["head", "/blocks.3/", &id]).unwrap();
    assert_eq!(report.kept.len(), 1 + 6 + 1);
    assert_eq!(count(&q, is_linear), 8);
    assert_eq!(count(&q, is_qlinear), 17);
    let kept_names: Vec<&str> = q
        .nodes
        .iter()
        .filter(|n| is_linear(&n.op))
        .map(|n| n.name.as_str())
        .collect();
    assert!(kept_names.contains(&"/head/Gemm"), "{kept_names:?}");
    assert_eq!(
        kept_names
            .iter()
            .filter(|n| n.starts_with("/blocks.3/"))
            .count(),
        6
    );
    assert_eq!(
        kept_names
            .iter()
            .filter(|n| n.starts_with("/blocks.0/"))
            .count(),
        1
    );
    // The kept head is the float layer, weights and all.
    let head = |m: &Module| {
        let n = m
            .nodes
            .iter()
            .find(|n| is_linear(&n.op) && n.name == "/head/Gemm")
            .unwrap();
        (n.op.clone(), m.constant(n.inputs[1]).unwrap().clone())
    };
    assert_eq!(head(&q), head(digits()));
    assert!(report
        .kept
        .iter()
        .any(|k| k.id == "%14" && k.reason == "keep-float %14"));
    let text = report.to_string();
    assert!(text.contains("kept in float: 8"), "{text}");
    assert!(text.contains("17 of 25 vit.linear"), "{text}");

    // Role groups.
    let (q, _) = keep(&["mlp"]).unwrap();
    assert_eq!((count(&q, is_linear), count(&q, is_qlinear)), (8, 17));
    let (q, _) = keep(&["attention"]).unwrap();
    assert_eq!((count(&q, is_linear), count(&q, is_qlinear)), (16, 9));

    // An entry that names nothing, and keeping everything, are errors.
    let e = keep(&["blocks.9"]).unwrap_err();
    assert!(matches!(e, QuantizeError::KeepFloatUnmatched { .. }), "{e}");
    assert!(
        e.to_string().contains("'blocks.9' matches no vit.linear"),
        "{e}"
    );
    assert!(matches!(
        keep(&["linear"]).unwrap_err(),
        QuantizeError::AllKept(25)
    ));
}

#[test]
fn library_errors() {
    let runs = calibration_subset(2);
    let opts = |method| QuantizeOptions {
        method,
        ..Default::default()
    };
    for p in [50.0, 0.0, 100.5, f64::NAN] {
        assert!(matches!(
            quantize(digits(), &runs, &opts(Method::Percentile(p))),
            Err(QuantizeError::Percentile(_))
        ));
    }
    assert!(matches!(
        quantize(digits(), &[], &QuantizeOptions::default()),
        Err(QuantizeError::Calibration(_))
    ));
    let wrong = Tensor::f32(vec![1, 1, 16, 16], vec![0.0; 256]);
    assert!(matches!(
        quantize(digits(), &[wrong], &QuantizeOptions::default()),
        Err(QuantizeError::Calibration(_))
    ));
    // The unfused module has matmuls, no vit.linear.
    let raw = import(&fixture("digits_vit.onnx"));
    assert!(matches!(
        quantize(&raw, &runs, &QuantizeOptions::default()),
        Err(QuantizeError::NoLinear)
    ));
}

fn vitc_out(args: &[&str]) -> (bool, String, String) {
    let o = vitc_cli().args(args).output().expect("vitc runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn cli() {
    let model = fixture("digits_vit.onnx");
    let model = model.to_str().unwrap();
    let calib = fixture("digits_calib_x.npy");
    let calib = calib.to_str().unwrap();
    let dir = tmpdir("quantize", "cli");
    let out: PathBuf = dir.join("m.so");
    let out = out.to_str().unwrap();
    // Calibration images of the wrong image shape.
    let bad: PathBuf = dir.join("bad.npy");
    std::fs::write(
        &bad,
        vitc_npy::write(&Tensor::f32(vec![4, 3, 32, 32], vec![0.5; 4 * 3 * 32 * 32])),
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    let expect_error = |extra: &[&str], needle: &str| {
        let mut args = vec![model, "-o", out, "--target", "x86_64-avx2"];
        args.extend_from_slice(extra);
        let (ok, _, err) = vitc_out(&args);
        assert!(!ok, "{extra:?} succeeded");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: one line: {err}");
    };
    expect_error(&["--quantize", "int8"], "needs --calibrate IMAGES.npy");
    expect_error(
        &["--quantize", "int8", "--calibrate", bad],
        "does not fit input",
    );
    expect_error(
        &[
            "--quantize",
            "int8",
            "--calibrate",
            calib,
            "--keep-float",
            "fc9",
        ],
        "'fc9' matches no vit.linear",
    );
    expect_error(
        &["--quantize", "int8", "--calibrate", calib, "-O", "0"],
        "no vit.linear to quantize",
    );
    expect_error(
        &[
            "--quantize",
            "int8",
            "--calibrate",
            calib,
            "--percentile",
            "30",
        ],
        "percentile must be more than 50",
    );
    expect_error(
        &[
            "--quantize",
            "int8",
            "--calibrate",
            calib,
            "--calibration-method",
            "mse",
            "--percentile",
            "99.9",
        ],
        "--percentile applies to --calibration-method percentile",
    );
    // clap's own errors span several lines.
    let (ok, _, err) = vitc_out(&[
        model,
        "-o",
        out,
        "--quantize",
        "int8",
        "--calibrate",
        calib,
        "--calibration-method",
        "entropy",
    ]);
    assert!(!ok && err.contains("invalid value 'entropy'"), "{err}");
    assert!(err.contains("minmax") && err.contains("mse"), "{err}");
    let (ok, _, err) = vitc_out(&[model, "-o", out, "--quantize", "int4"]);
    assert!(!ok && err.contains("invalid value 'int4'"), "{err}");
    let (ok, _, err) = vitc_out(&[model, "-o", out, "--keep-float", "head"]);
    assert!(!ok && err.contains("--quantize"), "{err}");

    // The quantized IR and the report.
    let (ok, ir, err) = vitc_out(&[
        model,
        "--emit",
        "ir",
        "--quantize",
        "int8",
        "--calibrate",
        calib,
        "--keep-float",
        "head",
    ]);
    assert!(ok, "{err}");
    assert_eq!(ir.matches("vit.qlinear").count(), 24, "{ir}");
    assert_eq!(ir.matches("= vit.linear").count(), 1, "{ir}");
    assert!(ir.contains("x_type = \"ui8\""), "{ir}");
    for needle in [
        "24 of 25 vit.linear to vit.qlinear",
        "range by percentile 99.99 over 200 calibration images",
        "kept in float: 1",
        "keep-float head",
        "worst first",
        "output logits: cosine",
        "top-1 agrees on",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(!err.contains("note:"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
