//! Structured pruning (`vitc_prune::{prune_heads, prune_mlp}`, `--prune-heads R`,
//! `--prune-mlp R`, `--calibrate`): a ratio that removes nothing leaves the module, and so the
//! library, exactly as it was; the pruned modules have the shapes the removal implies; the
//! compiled pruned library agrees with the interpreter on the pruned module; digits_vit keeps
//! the accuracy bar with a quarter of its heads gone, calibrated on its calibration set
//! and scored on all 360 test images; deit_tiny at 0.34 loses one of three heads per block; and
//! bad ratios, unfused modules and ill-shaped calibration images are errors, not panics.

use std::sync::OnceLock;
use vitc_ir::{print_module, Module, Op, Tensor};
use vitc_prune::{prune_heads, prune_mlp, Calibration, Method, PruneError, PruneReport};
use vitc_runtime::Library;
use vitc_tests::*;

/// The bar for digits_vit with 1 of 4 heads removed per block (unpruned: 0.9556).
const HEADS_QUARTER_MIN_ACCURACY: f64 = 0.91;

fn digits() -> &'static Module {
    static M: OnceLock<Module> = OnceLock::new();
    M.get_or_init(|| import_o2_wide(&fixture("digits_vit.onnx")))
}

/// The whole calibration set (200 training images), never the test set.
fn calibration() -> &'static Calibration {
    static C: OnceLock<Calibration> = OnceLock::new();
    C.get_or_init(|| {
        Calibration::new(digits(), &npy(&fixture("digits_calib_x.npy"))).expect("calibration")
    })
}

/// digits_vit without 1 of its 4 heads per block, calibrated; shared by the tests that need it
/// because the calibrated search is the slow part.
fn heads_quarter() -> &'static (Module, PruneReport) {
    static P: OnceLock<(Module, PruneReport)> = OnceLock::new();
    P.get_or_init(|| prune_heads(digits(), 0.25, Some(calibration())).expect("prune heads"))
}

fn mlp_quarter() -> &'static (Module, PruneReport) {
    static P: OnceLock<(Module, PruneReport)> = OnceLock::new();
    P.get_or_init(|| prune_mlp(digits(), 0.25, Some(calibration())).expect("prune MLP"))
}

/// Run a library on one input, single-threaded.
fn run_lib(lib: &Library, x: &[f32]) -> Tensor {
    let mut y = vec![0.0f32; lib.output_len(0)];
    lib.run(&[x], &mut [y.as_mut_slice()], None)
        .expect("library runs");
    Tensor::f32(lib.output_shape(0).to_vec(), y)
}

/// Top-1 of a compiled library over the 360 digits test images.
fn accuracy(lib: &Library) -> f64 {
    let xs = npy(&fixture("digits_test_x.npy"));
    let ys = npy(&fixture("digits_test_y.npy")).to_i64_vec();
    assert_eq!(xs.shape[0], 360);
    assert_eq!(ys.len(), 360);
    let correct = ys
        .iter()
        .enumerate()
        .filter(|&(i, &y)| {
            let out = run_lib(lib, &batch_row(&xs, i).to_f32_vec());
            argmax_rows(&out)[0] as i64 == y
        })
        .count();
    correct as f64 / ys.len() as f64
}

/// Compile `m`, check the library against the interpreter on the first test images (the
/// codegen suite's float tolerance), and return it.
fn build_checked(m: &Module, name: &str) -> Library {
    let dir = tmpdir("prune", name);
    let so = build(m, "x86_64-avx2", &dir, &format!("{name}.so"));
    let lib = Library::open(&so).unwrap_or_else(|e| panic!("{}: {e}", so.display()));
    let xs = npy(&fixture("digits_test_x.npy"));
    for i in 0..8 {
        let x = batch_row(&xs, i);
        let want = vitc_ir::run(m, std::slice::from_ref(&x)).expect("interpreter runs");
        let got = run_lib(&lib, &x.to_f32_vec());
        let err = max_abs_diff(&got, &want[0]);
        let tol = FLOAT_TOL * max_abs(&want[0]).max(1.0);
        assert!(err <= tol, "{name} image {i}: max|Δ| = {err:e} > {tol:e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    lib
}

/// Per attention block: (heads, Q/K/V weight shapes, projection weight shape).
fn attention_shapes(m: &Module) -> Vec<(usize, Vec<Vec<usize>>, Vec<usize>)> {
    let users = |v: usize| {
        (0..m.nodes.len()).filter(move |&u| m.nodes[u].inputs[..].iter().any(|x| x.0 == v))
    };
    (0..m.nodes.len())
        .filter_map(|i| match m.nodes[i].op {
            Op::Attention { heads, .. } => Some((i, heads)),
            _ => None,
        })
        .map(|(i, heads)| {
            let qkv = m.nodes[i]
                .inputs
                .iter()
                .map(|v| m.ty(m.node(*v).inputs[1]).shape.clone())
                .collect();
            let proj = users(i).next().expect("the attention is read");
            let w = m.ty(m.nodes[proj].inputs[1]).shape.clone();
            (heads, qkv, w)
        })
        .collect()
}

#[test]
fn ratio_zero_changes_nothing() {
    let m = digits();
    let text = print_module(m);
    for (what, ratio) in [("heads", 0.0), ("heads", 0.2), ("mlp", 0.0), ("mlp", 0.005)] {
        // 0.2 of 4 heads and 0.005 of 128 units floor to nothing removed, like 0.
        let (p, report) = if what == "heads" {
            prune_heads(m, ratio, Some(calibration())).unwrap()
        } else {
            prune_mlp(m, ratio, Some(calibration())).unwrap()
        };
        assert_eq!(report.removed(), 0, "{what} {ratio}");
        assert_eq!(print_module(&p), text, "{what} {ratio}: IR changed");
        assert_eq!(
            p.constants, m.constants,
            "{what} {ratio}: constants changed"
        );
    }
    // And so the compiled library: the same bytes (same file name, so the same soname) and
    // bit-identical outputs.
    let (p, _) = prune_heads(m, 0.0, None).unwrap();
    let (a, b) = (tmpdir("prune", "zero-a"), tmpdir("prune", "zero-b"));
    let so_a = build(m, "x86_64-avx2", &a, "digits.so");
    let so_b = build(&p, "x86_64-avx2", &b, "digits.so");
    assert!(
        std::fs::read(&so_a).unwrap() == std::fs::read(&so_b).unwrap(),
        "libraries differ"
    );
    let x = npy(&fixture("digits_vit.input.npy")).to_f32_vec();
    let (la, lb) = (Library::open(&so_a).unwrap(), Library::open(&so_b).unwrap());
    assert_eq!(run_lib(&la, &x), run_lib(&lb, &x), "outputs differ");
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn heads_quarter_shapes() {
    let (p, report) = heads_quarter();
    assert_eq!(
        report.method,
        Method::Calibrated {
            images: calibration().images()
        }
    );
    assert_eq!(calibration().images(), 200);
    assert_eq!(report.blocks.len(), 4);
    for b in &report.blocks {
        assert_eq!((b.before, b.removed.len()), (4, 1), "{}", b.node);
        assert!(b.removed[0] < 4);
    }
    // digits_vit: D = 64, 4 heads of 16; one gone leaves 48 channels.
    let before = attention_shapes(digits());
    assert!(before
        .iter()
        .all(|(h, qkv, w)| *h == 4 && qkv.iter().all(|s| s == &[64, 64]) && w == &[64, 64]));
    for (h, qkv, w) in attention_shapes(p) {
        assert_eq!(h, 3);
        assert!(qkv.iter().all(|s| s == &[64, 48]), "{qkv:?}");
        assert_eq!(w, [48, 64]);
    }
    assert!(p.flops() < digits().flops());
    vitc_ir::verify(p).expect("pruned module verifies");
}

#[test]
fn heads_quarter_compiled_matches_interpreter_and_keeps_accuracy() {
    let (p, report) = heads_quarter();
    let lib = build_checked(p, "heads-quarter");
    let acc = accuracy(&lib);
    eprint!("{report}");
    eprintln!("digits_vit, heads 0.25 calibrated: top-1 {acc:.4} over 360 test images");
    assert!(
        acc >= HEADS_QUARTER_MIN_ACCURACY,
        "top-1 {acc} < {HEADS_QUARTER_MIN_ACCURACY}"
    );
}

#[test]
fn mlp_quarter_shapes_and_compiled() {
    let (p, report) = mlp_quarter();
    assert_eq!(report.blocks.len(), 4);
    assert!(report
        .blocks
        .iter()
        .all(|b| b.before == 128 && b.removed.len() == 32));
    let hidden: Vec<(Vec<usize>, Vec<usize>)> = p
        .nodes
        .iter()
        .filter(|n| {
            matches!(
                n.op,
                Op::Linear {
                    activation: vitc_ir::Activation::Gelu,
                    ..
                }
            )
        })
        .map(|n| (p.ty(n.inputs[1]).shape.clone(), n.ty.shape.clone()))
        .collect();
    assert_eq!(hidden.len(), 4);
    // (-O2 may have narrowed the last block to the rows the head reads; the units are what
    // pruning changes.)
    for (w, out) in hidden {
        assert_eq!(w, [64, 96]);
        assert_eq!(out.last(), Some(&96));
    }
    let lib = build_checked(p, "mlp-quarter");
    eprintln!(
        "digits_vit, MLP 0.25 calibrated: top-1 {:.4}",
        accuracy(&lib)
    );
}

#[test]
fn without_calibration_weight_magnitude_still_prunes() {
    let (p, report) = prune_heads(digits(), 0.5, None).unwrap();
    assert_eq!(report.method, Method::WeightMagnitude);
    assert!(report.blocks.iter().all(|b| b.removed.len() == 2));
    assert!(attention_shapes(&p)
        .iter()
        .all(|(h, _, w)| *h == 2 && w == &[32, 64]));
    let (q, _) = prune_mlp(&p, 0.25, None).unwrap();
    build_checked(&q, "magnitude");
}

#[test]
fn deit_tiny_034_removes_one_of_three_heads() {
    let Some(dir) = models_dir("deit_tiny_034_removes_one_of_three_heads") else {
        return;
    };
    let m = import_o2_wide(&dir.join("deit_tiny.onnx"));
    let (p, report) = prune_heads(&m, 0.34, None).unwrap();
    assert_eq!(report.blocks.len(), 12);
    assert!(report
        .blocks
        .iter()
        .all(|b| b.before == 3 && b.removed.len() == 1));
    for (h, qkv, w) in attention_shapes(&p) {
        assert_eq!(h, 2);
        assert!(qkv.iter().all(|s| s == &[192, 128]), "{qkv:?}");
        assert_eq!(w, [128, 192]);
    }
}

#[test]
fn errors() {
    let m = digits();
    for r in [1.0, 1.5, -0.1, f64::NAN] {
        assert!(matches!(
            prune_heads(m, r, None),
            Err(PruneError::Ratio { .. })
        ));
        assert!(matches!(
            prune_mlp(m, r, None),
            Err(PruneError::Ratio { .. })
        ));
    }
    // The unfused module has no vit.attention and no fused MLP.
    let raw = import(&fixture("digits_vit.onnx"));
    let e = prune_heads(&raw, 0.25, None).unwrap_err();
    assert!(matches!(e, PruneError::NoBlocks { .. }), "{e}");
    assert!(e.to_string().contains("-O2"), "{e}");
    assert!(matches!(
        prune_mlp(&raw, 0.25, None),
        Err(PruneError::NoBlocks { .. })
    ));
    // Calibration images must be a float batch of the input's image shape.
    for bad in [
        Tensor::f32(vec![4, 3, 32, 32], vec![0.0; 4 * 3 * 32 * 32]),
        Tensor::f32(vec![1, 32, 32], vec![0.0; 32 * 32]),
        Tensor::f32(vec![0, 1, 32, 32], vec![]),
        Tensor::i64(vec![2, 1, 32, 32], vec![0; 2 * 32 * 32]),
    ] {
        let e = Calibration::new(m, &bad).unwrap_err();
        assert!(matches!(e, PruneError::Calibration(_)), "{e}");
    }
}
