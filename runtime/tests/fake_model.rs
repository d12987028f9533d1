//! Tests `Library` end to end against `tests/c/fake_model.c`, a hand-written C stand-in for a
//! model (y = 2x + 1 over [1, N]) built here with the system C compiler. The stand-in only
//! exercises the loader's checks and calls; it says nothing about compiled models. If no C
//! compiler is installed the tests say so on stderr and pass, since the runtime itself needs
//! none.

use std::path::{Path, PathBuf};
use std::process::Command;

use vitc_runtime::{Library, Pool, RuntimeError, Workspace};

/// Builds the stand-in with extra `-D` flags into a per-variant .so; `None` without a compiler.
fn build(name: &str, defines: &[&str]) -> Option<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/c/fake_model.c");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fake_model_{name}.so"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-std=c11", "-o"])
        .arg(&out)
        .args(defines)
        .arg(&source)
        .status();
    match status {
        Ok(status) => {
            assert!(
                status.success(),
                "{cc} failed to build {}",
                source.display()
            );
            Some(out)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: no C compiler `{cc}` to build the stand-in model");
            None
        }
        Err(err) => panic!("cannot run {cc}: {err}"),
    }
}

#[test]
fn loads_and_runs_with_and_without_a_pool() {
    let Some(path) = build("n1000", &["-DFAKE_N=1000"]) else {
        return;
    };
    let lib = Library::open(&path).unwrap();
    assert_eq!((lib.num_inputs(), lib.num_outputs()), (1, 1));
    assert_eq!(lib.input_shape(0), &[1, 1000]);
    assert_eq!(lib.output_shape(0), &[1, 1000]);
    assert_eq!(lib.input_len(0), 1000);
    assert_eq!(lib.workspace_size(), 4000);

    let x: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 7.0).collect();
    let want: Vec<f32> = x.iter().map(|v| 2.0 * v + 1.0).collect();
    let mut y = vec![0.0f32; 1000];
    lib.run(&[&x], &mut [&mut y], None).unwrap();
    assert_eq!(y, want);

    let pool = Pool::new(4).unwrap();
    let mut ws = lib.workspace().unwrap();
    for _ in 0..200 {
        y.fill(f32::NAN);
        lib.run_with(&mut ws, &[&x], &mut [&mut y], Some(&pool))
            .unwrap();
        assert_eq!(y, want);
    }
}

#[test]
fn concurrent_runs_with_separate_workspaces() {
    let Some(path) = build("n257", &["-DFAKE_N=257"]) else {
        return;
    };
    let lib = Library::open(&path).unwrap();
    let x: Vec<f32> = (0..257).map(|i| i as f32).collect();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let pool = Pool::new(2).unwrap();
                let mut ws = lib.workspace().unwrap();
                let mut y = vec![0.0f32; 257];
                for _ in 0..100 {
                    lib.run_with(&mut ws, &[&x], &mut [&mut y], Some(&pool))
                        .unwrap();
                    assert!(y.iter().zip(&x).all(|(y, x)| *y == 2.0 * x + 1.0));
                }
            });
        }
    });
}

#[test]
fn wrong_slices_are_errors_not_calls() {
    let Some(path) = build("n4", &[]) else { return };
    let lib = Library::open(&path).unwrap();
    let x = [1.0f32; 4];
    let mut y = [0.0f32; 4];
    let mut short = [0.0f32; 3];
    let err = lib.run(&[], &mut [&mut y], None).unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::TensorCount {
                tensor: "input",
                expected: 1,
                found: 0
            }
        ),
        "{err}"
    );
    let err = lib.run(&[&x[..3]], &mut [&mut y], None).unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::TensorLength {
                tensor: "input",
                index: 0,
                expected: 4,
                found: 3
            }
        ),
        "{err}"
    );
    let err = lib.run(&[&x], &mut [&mut short], None).unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::TensorLength {
                tensor: "output",
                ..
            }
        ),
        "{err}"
    );
    let err = lib.run(&[&x], &mut [], None).unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::TensorCount {
                tensor: "output",
                ..
            }
        ),
        "{err}"
    );
    // The stand-in needs 16 bytes; a workspace always holds at least 64, so ask for a bigger
    // model's worth to see the size check.
    let big = build("n100", &["-DFAKE_N=100"]).unwrap();
    let big = Library::open(big).unwrap();
    let mut small_ws = Workspace::new(16).unwrap();
    let (bx, mut by) = (vec![0.0f32; 100], vec![0.0f32; 100]);
    let err = big
        .run_with(&mut small_ws, &[&bx], &mut [&mut by], None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::WorkspaceTooSmall {
                needed: 400,
                found: 64
            }
        ),
        "{err}"
    );
    assert_eq!(y, [0.0; 4], "nothing ran");
}

#[test]
fn prefix_abi_version_and_run_codes() {
    let Some(toy) = build("toy", &["-DFAKE_PREFIX=toy"]) else {
        return;
    };
    let err = Library::open(&toy).unwrap_err();
    assert!(
        matches!(&err, RuntimeError::MissingSymbol { symbol, .. } if symbol == "vitc_abi_version"),
        "{err}"
    );
    let lib = Library::open_with_prefix(&toy, "toy").unwrap();
    assert_eq!(lib.prefix(), "toy");

    let v2 = build("abi2", &["-DFAKE_ABI_VERSION=2"]).unwrap();
    let err = Library::open(&v2).unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::AbiVersion {
                found: 2,
                expected: 1
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("version 2"), "{err}");

    let err = Library::open_with_prefix(&toy, "bad\0prefix").unwrap_err();
    assert!(matches!(err, RuntimeError::BadName(_)), "{err}");
}

#[test]
fn relative_file_names_are_files_not_library_searches() {
    let Some(path) = build("relative", &[]) else {
        return;
    };
    // A bare name must not be looked up on the library path; here it does not exist in the
    // current directory, so opening fails with dlerror's text.
    let name = path.file_name().unwrap();
    let err = Library::open(name).unwrap_err();
    assert!(matches!(err, RuntimeError::Open { .. }), "{err}");
    assert!(err.to_string().contains("fake_model_relative.so"), "{err}");
}
