//! Development check: import each model given on the command line (or every model in
//! ../shared/models), run the reference interpreter on NAME.input.npy and print max|Δ| against
//! NAME.output.npy with the tolerance. A scratch tool, not part of the test suite.

use std::path::{Path, PathBuf};
use std::time::Instant;
use vitc_onnx::{import_file, ImportOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from("/work/shared/models");
    let names: Vec<String> = if args.is_empty() {
        [
            "digits_vit",
            "digits_vit_qat",
            "deit_tiny",
            "deit_tiny_dynamo",
            "deit_tiny_qdq",
            "mobilevit_xxs",
            "swin_micro",
            "levit_128s_dev",
            "efficientvit_b0_dev",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    } else {
        args
    };
    let import_only = std::env::var("IMPORT_ONLY").is_ok();
    for name in names {
        // A path to an .onnx checks that model against the .npy files beside it.
        if let Some(stem) = name.strip_suffix(".onnx") {
            let p = PathBuf::from(stem);
            let d = p.parent().map(Path::to_path_buf).unwrap_or_default();
            let n = p
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            check(&d, &n, import_only);
        } else {
            check(&dir, &name, import_only);
        }
    }
}

fn check(dir: &Path, name: &str, import_only: bool) {
    let t0 = Instant::now();
    let m = match import_file(&dir.join(format!("{name}.onnx")), &ImportOptions::default()) {
        Ok(m) => m,
        Err(e) => {
            println!("{name}: IMPORT FAILED: {e}");
            return;
        }
    };
    let mut ops = std::collections::BTreeMap::<String, usize>::new();
    for n in &m.nodes {
        *ops.entry(n.op.name()).or_default() += 1;
    }
    println!(
        "{name}: imported in {:.2}s, {} nodes, {} constants ({} elements): {:?}",
        t0.elapsed().as_secs_f64(),
        m.nodes.len(),
        m.constants.len(),
        m.constant_elements(),
        ops
    );
    if import_only {
        return;
    }
    let read = |suffix: &str| {
        let b = std::fs::read(dir.join(format!("{name}.{suffix}.npy"))).expect("npy file");
        vitc_npy::read(&b).expect("npy")
    };
    let x = read("input");
    let want = read("output");
    let t1 = Instant::now();
    let out = match vitc_ir::interp::run(&m, &[x]) {
        Ok(o) => o,
        Err(e) => {
            println!("{name}: RUN FAILED: {e}");
            return;
        }
    };
    if let Ok(d) = std::env::var("DUMP") {
        let _ = std::fs::write(format!("{d}/{name}.vitc.npy"), vitc_npy::write(&out[0]));
    }
    let got = out[0].to_f32_vec();
    let want = want.to_f32_vec();
    if got.len() != want.len() {
        println!(
            "{name}: output length {} vs reference {}",
            got.len(),
            want.len()
        );
        return;
    }
    let max_ref = want.iter().fold(0f32, |a, &b| a.max(b.abs()));
    let max_d = got
        .iter()
        .zip(&want)
        .fold(0f32, |a, (&g, &w)| a.max((g - w).abs()));
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
                if x > bv {
                    (i, x)
                } else {
                    (bi, bv)
                }
            })
            .0
    };
    let quant = name.contains("qdq") || name.contains("qat");
    let tol = if quant { 1e-3 } else { 1e-4 } * max_ref.max(1.0);
    println!(
        "{name}: run {:.2}s, max|Δ| = {max_d:.3e} (max|ref| {max_ref:.3}, tol {tol:.1e}), argmax {} vs {} -> {}",
        t1.elapsed().as_secs_f64(),
        argmax(&got),
        argmax(&want),
        if max_d <= tol && argmax(&got) == argmax(&want) { "OK" } else { "MISMATCH" }
    );
}
