//! Shared helpers for vitc's test suite: where the fixtures and the shared model set are,
//! loading `.npy` references, the one comparison rule every numeric test states its
//! tolerance through, and (`cases`) the list of models the backend suites compile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use vitc_ir::{Module, Tensor};

pub mod cases;
pub use cases::{case, Case, Judge, CASES, FLOAT_TOL, QUANT_TOL};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A file from the bundled fixtures (`tests/models`).
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/models").join(name)
}

/// The shared model set: `$VITC_MODELS`, else `../shared/models` beside the repository.
/// `None` (and a line saying the test was skipped) when it is not there.
pub fn models_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("VITC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/models"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "{test}: skipped: shared model set not found at {} (set VITC_MODELS)",
            dir.display()
        );
        None
    }
}

/// The bar for int8 models whose reference comes from onnxruntime's fused integer kernels
/// (deit_tiny_qdq): same argmax and at least this cosine with the reference — the quantization
/// issue's own acceptance bar for that model. Spec-following computations differ from those
/// kernels by rounding flips at int8 boundaries (onnxruntime's own unfused run is 4.1e-2 off).
pub const QDQ_MIN_COSINE: f64 = 0.995;

/// Read an `.npy` file.
pub fn npy(path: &Path) -> Tensor {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    vitc_npy::read(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Largest absolute elementwise difference; panics if shapes differ.
pub fn max_abs_diff(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape, want.shape, "shapes differ");
    got.to_f64_vec()
        .iter()
        .zip(want.to_f64_vec())
        .map(|(a, b)| (a - b).abs())
        .fold(
            0.0,
            |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        )
}

/// Largest absolute value (the scale tolerances are relative to).
pub fn max_abs(t: &Tensor) -> f64 {
    t.to_f64_vec().iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Index of the largest element of each row (last axis).
pub fn argmax_rows(t: &Tensor) -> Vec<usize> {
    let n = *t.shape.last().expect("rank >= 1");
    t.to_f64_vec()
        .chunks(n)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |a, (i, &x)| if x > a.1 { (i, x) } else { a },
                )
                .0
        })
        .collect()
}

/// Cosine similarity of two tensors' elements.
pub fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Row `i` of a batch tensor, as a batch of one.
pub fn batch_row(t: &Tensor, i: usize) -> Tensor {
    let per: usize = t.shape[1..].iter().product();
    let mut shape = t.shape.clone();
    shape[0] = 1;
    let v = t.to_f32_vec();
    Tensor::f32(shape, v[i * per..(i + 1) * per].to_vec())
}

/// A fresh, empty temporary folder for one test (`suite` and `name` keep runs apart).
pub fn tmpdir(suite: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitc-{suite}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Import a model as the frontend writes it (-O0).
pub fn import(path: &Path) -> Module {
    vitc_onnx::import_file(path, &vitc_onnx::ImportOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Import a model and optimise it at -O2, as `vitc model.onnx -o model.so` does.
pub fn import_o2(path: &Path) -> Module {
    let m = import(path);
    vitc_passes::optimize(&m, &vitc_passes::PassOptions::default())
        .unwrap_or_else(|e| panic!("{}: -O2: {e}", path.display()))
        .0
}

/// [`import_o2`] without -O2's last pass, the row narrowing: the module the CLI hands the
/// pruners, which rewrite whole blocks (the CLI narrows rows after them).
pub fn import_o2_wide(path: &Path) -> Module {
    let m = import(path);
    let opts = vitc_passes::PassOptions {
        narrow_rows: false,
        ..Default::default()
    };
    vitc_passes::optimize(&m, &opts)
        .unwrap_or_else(|e| panic!("{}: -O2: {e}", path.display()))
        .0
}

/// Compile `m` for `target` into `dir/file` (the kind from the extension: .so, .a, .o) and
/// return the path.
pub fn build(m: &Module, target: &str, dir: &Path, file: &str) -> PathBuf {
    build_precision(m, target, vitc_llvm::Precision::F32, dir, file)
}

/// [`build`] with `--precision precision` (how the linears' weights are stored).
pub fn build_precision(
    m: &Module,
    target: &str,
    precision: vitc_llvm::Precision,
    dir: &Path,
    file: &str,
) -> PathBuf {
    let opts = vitc_llvm::CompileOptions {
        target: target.into(),
        precision,
        ..Default::default()
    };
    let c = vitc_llvm::compile(m, &opts).unwrap_or_else(|e| panic!("{} for {target}: {e}", m.name));
    let out = dir.join(file);
    vitc_llvm::write_output(&c, &out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    out
}

/// The `vitc` CLI of this workspace, built once per test process (a no-op when fresh) with the
/// profile the tests were built with: the CLI is another package, so cargo does not build it
/// for the tests crate.
pub fn vitc_cli() -> Command {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    let exe = EXE.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/<test>-HASH
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        let target_dir = profile_dir.parent().expect("target dir");
        let profile = profile_dir
            .file_name()
            .expect("profile dir name")
            .to_string_lossy()
            .into_owned();
        let profile = if profile == "debug" {
            "dev".into()
        } else {
            profile
        };
        let st = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "vitc", "--profile", &profile])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(repo_root())
            .status()
            .expect("cargo runs");
        assert!(st.success(), "building vitc failed");
        profile_dir.join("vitc")
    });
    Command::new(exe)
}
