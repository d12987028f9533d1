//! `--batch N` end to end: a model imported with `ImportOptions::batch`, optimised at -O2 and
//! compiled, must give for every image of the batch what the batch-1 library gives for that
//! image alone (which codegen.rs checks against onnxruntime), within the frontend's tolerance
//! (float: max|Δ| ≤ 1e-4·max(1, max|ref|); quantized: same argmax and 1e-3). The first image is
//! also checked against onnxruntime's own output for it.
//!
//! The images of a batch are distinct (flipped, shifted, scaled … versions of the reference
//! input, or different test-set digits). Each row must also be within a tenth of the distance
//! from its image's batch-1 output to any other image's, so a library that mixed up or
//! repeated images cannot pass even on the random-weight dev models, whose outputs hardly
//! depend on the input.

use std::path::Path;
use vitc_ir::{Module, Tensor};
use vitc_onnx::{import_file, ImportOptions};
use vitc_runtime::{Library, Pool};
use vitc_tests::*;

/// Import `path` at `batch` and optimise at -O2, as `vitc model.onnx --batch N -o …` does.
fn import_batch(path: &Path, batch: usize) -> Module {
    let opts = ImportOptions {
        batch: Some(batch),
        ..Default::default()
    };
    let m = import_file(path, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    vitc_passes::optimize(&m, &vitc_passes::PassOptions::default())
        .unwrap_or_else(|e| panic!("{}: -O2: {e}", path.display()))
        .0
}

fn run_lib(lib: &Library, x: &[f32], threads: usize) -> Tensor {
    let pool = (threads > 1).then(|| Pool::new(threads).expect("pool"));
    let mut y = vec![0.0f32; lib.output_len(0)];
    lib.run(&[x], &mut [y.as_mut_slice()], pool.as_ref())
        .expect("library runs");
    Tensor::f32(lib.output_shape(0).to_vec(), y)
}

/// Compile `path` at batch 1 and at `images.len()` for `target`; check every row of the batched
/// library's output against the batch-1 library on that image, and row 0 against `want0`
/// (onnxruntime's output for `images[0]`). Each row's bound is the tolerance or a tenth of the
/// distance to the nearest other image's output, whichever is smaller. The batched library must
/// also give the same bits on one and two threads.
fn check_batch(path: &Path, images: &[Tensor], want0: &Tensor, case: &Case, target: &str) {
    let n = images.len();
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let out = tmpdir("batch", &format!("{name}-{target}"));
    let one = Library::open(build(&import_o2(path), target, &out, "b1.so")).expect("b1 opens");
    let many = Library::open(build(&import_batch(path, n), target, &out, "bn.so")).expect("opens");
    let mut shape = images[0].shape.clone();
    assert_eq!(
        many.input_shape(0)[0],
        n * shape[0],
        "{name}: batched input shape"
    );
    shape[0] *= n;
    let x: Vec<f32> = images.iter().flat_map(|t| t.to_f32_vec()).collect();
    let got = run_lib(&many, &x, 1);
    assert_eq!(
        got,
        run_lib(&many, &x, 2),
        "{name} {target}: 1 and 2 threads differ"
    );
    let singles: Vec<Tensor> = images
        .iter()
        .map(|img| run_lib(&one, &img.to_f32_vec(), 1))
        .collect();
    for (i, want) in singles.iter().enumerate() {
        // How far image i's output is from every other image's: a row must match its own image
        // far more closely than that, or the test could not tell a mixed-up batch from a good
        // one (the random-weight dev models answer almost the same for any input).
        let sep = (0..n)
            .filter(|&j| j != i)
            .map(|j| max_abs_diff(want, &singles[j]))
            .fold(f64::INFINITY, f64::min);
        assert!(
            sep > 0.0,
            "{name}: image {i}'s output equals another image's"
        );
        let row = batch_row(&got, i);
        let err = max_abs_diff(&row, want);
        let tol = case.tolerance(want).min(0.1 * sep);
        eprintln!(
            "{name} {target} image {i}: max|Δ| vs batch 1 = {err:.3e} (bound {tol:.3e}; \
             nearest other image {sep:.3e})"
        );
        assert!(
            err <= tol,
            "{name} {target} image {i}: max|Δ| = {err:e} > {tol:e}"
        );
        if case.quantized() {
            assert_eq!(
                argmax_rows(&row),
                argmax_rows(want),
                "{name} image {i}: argmax"
            );
        }
    }
    let row0 = batch_row(&got, 0);
    let err = max_abs_diff(&row0, want0);
    let cos = cosine(&row0, want0);
    eprintln!("{name} {target} image 0 vs onnxruntime: max|Δ| = {err:.3e}, cosine {cos:.6}");
    if case.judge == Judge::QdqCosine {
        assert!(cos >= QDQ_MIN_COSINE, "{name}: cosine {cos}");
    } else {
        let tol = case.tolerance(want0);
        assert!(
            err <= tol,
            "{name} {target} image 0 vs onnxruntime: {err:e} > {tol:e}"
        );
    }
    if case.quantized() {
        assert_eq!(
            argmax_rows(&row0),
            argmax_rows(want0),
            "{name}: argmax vs onnxruntime"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Eight versions of an NCHW image (batch 1): itself, flipped left-right and upside down,
/// rolled 37 columns, halved, negated, transposed (H↔W, square images) and with its channels
/// reversed and shifted.
fn eight_views(x: &Tensor) -> Vec<Tensor> {
    let s = x.shape.clone();
    assert_eq!(s.len(), 4, "an NCHW image");
    let (c, h, w) = (s[1], s[2], s[3]);
    let v = x.to_f32_vec();
    let at = |ci: usize, y: usize, xx: usize| v[(ci * h + y) * w + xx];
    let map = |f: &dyn Fn(usize, usize, usize) -> f32| -> Tensor {
        let mut out = Vec::with_capacity(v.len());
        for ci in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    out.push(f(ci, y, xx));
                }
            }
        }
        Tensor::f32(s.clone(), out)
    };
    vec![
        x.clone(),
        map(&|ci, y, xx| at(ci, y, w - 1 - xx)),
        map(&|ci, y, xx| at(ci, h - 1 - y, xx)),
        map(&|ci, y, xx| at(ci, y, (xx + 37) % w)),
        map(&|ci, y, xx| 0.5 * at(ci, y, xx)),
        map(&|ci, y, xx| -at(ci, y, xx)),
        map(&|ci, y, xx| at(ci, xx % h, y % w)),
        map(&|ci, y, xx| at(c - 1 - ci, y, xx) + 0.25),
    ]
}

/// The bar: deit_tiny at --batch 8 on both x86-64 targets.
#[test]
fn deit_tiny_batch8() {
    let Some(dir) = models_dir("deit_tiny_batch8") else {
        return;
    };
    let path = dir.join("deit_tiny.onnx");
    let x = npy(&dir.join("deit_tiny.input.npy"));
    let want = npy(&dir.join("deit_tiny.output.npy"));
    let images = eight_views(&x);
    for target in ["x86_64-avx512", "x86_64-avx2"] {
        check_batch(&path, &images, &want, case("deit_tiny"), target);
    }
}

/// The bundled digits ViT at --batch 4 (no shared set needed): the reference input and three
/// test-set digits.
#[test]
fn digits_vit_batch4() {
    let path = fixture("digits_vit.onnx");
    let x = npy(&fixture("digits_vit.input.npy"));
    let test = npy(&fixture("digits_test_x.npy"));
    let mut images = vec![x];
    images.extend([0, 1, 2].map(|i| batch_row(&test, i)));
    let want = npy(&fixture("digits_vit.output.npy"));
    for target in ["x86_64-avx512", "x86_64-avx2"] {
        check_batch(&path, &images, &want, case("digits_vit"), target);
    }
}

/// Every other model of the case list at --batch 3 on x86_64-avx512: the reference input, it
/// flipped left-right and it halved.
macro_rules! batch3_tests {
    ($($test:ident: $source:ident, $judge:ident, $targets:ident;)*) => {$(
        #[test]
        fn $test() {
            let case = case(stringify!($test));
            let Some(dir) = case.dir(stringify!($test)) else {
                return;
            };
            let name = case.name;
            let x = npy(&dir.join(format!("{name}.input.npy")));
            let want = npy(&dir.join(format!("{name}.output.npy")));
            let views = eight_views(&x);
            let images = [views[0].clone(), views[1].clone(), views[4].clone()];
            check_batch(&dir.join(format!("{name}.onnx")), &images, &want, case, "x86_64-avx512");
        }
    )*};
}

mod batch3 {
    use super::*;
    vitc_tests::model_cases!(batch3_tests);
}
