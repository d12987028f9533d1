//! `--prune-heads`, `--prune-mlp` and `--calibrate` as a user meets them: ratio 0 writes the
//! same IR as no flag; a pruning run says what it removed and what that saved; and a bad ratio,
//! a missing or ill-shaped calibration file, or an unfused module is one clear error line,
//! never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vitc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vitc"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/models")
        .join(name)
}

fn digits() -> String {
    fixture("digits_vit.onnx").display().to_string()
}

fn run(args: &[&str]) -> Output {
    vitc().args(args).output().expect("vitc runs")
}

/// A failed run whose stderr names every needle and shows no panic.
fn expect_failure(args: &[&str], needles: &[&str]) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
    for n in needles {
        assert!(
            stderr.to_lowercase().contains(&n.to_lowercase()),
            "{args:?}: `{n}` missing from: {stderr}"
        );
    }
}

#[test]
fn ratio_out_of_range_is_refused() {
    let m = digits();
    for flag in ["--prune-heads", "--prune-mlp"] {
        for r in ["1", "1.5", "-0.25", "nan", "half"] {
            expect_failure(&[&m, flag, r, "--emit", "ir"], &[flag, r]);
        }
    }
}

#[test]
fn calibration_file_problems_are_errors() {
    let m = digits();
    let missing = fixture("no_such_calibration.npy").display().to_string();
    expect_failure(
        &[
            &m,
            "--prune-heads",
            "0.25",
            "--calibrate",
            &missing,
            "--emit",
            "ir",
        ],
        &["error:", "no_such_calibration.npy"],
    );
    // The labels are int64 [360]: not images of the model's input shape.
    let labels = fixture("digits_test_y.npy").display().to_string();
    expect_failure(
        &[
            &m,
            "--prune-heads",
            "0.25",
            "--calibrate",
            &labels,
            "--emit",
            "ir",
        ],
        &["error:", "digits_test_y.npy", "calibration images"],
    );
}

#[test]
fn unfused_module_is_an_error() {
    expect_failure(
        &[&digits(), "-O0", "--prune-heads", "0.25", "--emit", "ir"],
        &["error:", "head pruning", "-O2"],
    );
}

#[test]
fn ratio_zero_writes_the_same_ir() {
    let m = digits();
    let plain = run(&[&m, "--emit", "ir"]);
    let calib = fixture("digits_calib_x.npy").display().to_string();
    let zero = run(&[
        &m,
        "--emit",
        "ir",
        "--prune-heads",
        "0",
        "--prune-mlp",
        "0",
        "--calibrate",
        &calib,
    ]);
    assert!(plain.status.success() && zero.status.success());
    assert!(!plain.stdout.is_empty());
    assert!(plain.stdout == zero.stdout, "ratio 0 changed the IR");
    let stderr = String::from_utf8_lossy(&zero.stderr);
    assert!(stderr.contains("model unchanged"), "{stderr}");
}

#[test]
fn pruning_reports_what_it_removed() {
    let out = run(&[&digits(), "--prune-heads", "0.5", "--emit", "ir"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pruned 8 of 16 heads") && stderr.contains("weight magnitude"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("4 -> 2, removed [").count(), 4, "{stderr}");
    assert!(stderr.contains("parameters 139979 -> "), "{stderr}");
    let ir = String::from_utf8_lossy(&out.stdout);
    assert_eq!(ir.matches("heads = 2").count(), 4);
    assert_eq!(ir.matches("heads = 4").count(), 0);
}

#[test]
fn calibrated_pruning_then_token_pruning_is_refused_up_front() {
    let calib = fixture("digits_calib_x.npy").display().to_string();
    expect_failure(
        &[
            &digits(),
            "--prune-heads",
            "0.25",
            "--calibrate",
            &calib,
            "--keep-tokens",
            "0.7",
            "--prune-from-layer",
            "2",
            "--emit",
            "ir",
        ],
        &["error:", "--keep-tokens", "--calibrate"],
    );
}
