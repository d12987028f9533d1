//! Data-driven tests of the IR text form, after Cranelift's filetests: every
//! `tests/cases/ir/*.vit` must parse, verify and print to its snapshot, and its printed form
//! must parse and print back unchanged; every `tests/cases/ir-errors/*.vit` must fail to parse
//! with the message in its snapshot. Adding a case is adding a file (then accepting its
//! snapshot with `INSTA_UPDATE=always` and reading it).

use std::path::{Path, PathBuf};
use vitc_ir::{parse_module, print_module, verify, Constants};

/// The `.vit` files of one case folder, sorted, with their file stems.
fn cases(dir: &str) -> Vec<(String, PathBuf)> {
    let pattern = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("cases")
        .join(dir)
        .join("*.vit");
    let mut out: Vec<(String, PathBuf)> = glob::glob(&pattern.to_string_lossy())
        .expect("valid glob pattern")
        .map(|p| {
            let p = p.expect("readable case path");
            let stem = p
                .file_stem()
                .expect("case file has a name")
                .to_string_lossy()
                .into_owned();
            (stem, p)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no cases found in tests/cases/{dir}");
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Snapshot `text` as `snapshots/{prefix}__{stem}.snap`, recording the case file it came from.
fn snapshot(prefix: &str, stem: &str, path: &Path, text: &str) {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.set_input_file(path);
    settings.set_omit_expression(true);
    settings.bind(|| insta::assert_snapshot!(format!("{prefix}__{stem}"), text));
}

#[test]
fn ir_cases_print_and_round_trip() {
    let empty = Constants::new();
    for (stem, path) in cases("ir") {
        let m = parse_module(&read(&path), &empty)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        verify(&m).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let printed = print_module(&m);
        let again = parse_module(&printed, &empty).unwrap_or_else(|e| {
            panic!(
                "{}: printed form does not parse: {e}\n{printed}",
                path.display()
            )
        });
        assert_eq!(
            print_module(&again),
            printed,
            "{}: print(parse(print(m))) differs from print(m)",
            path.display()
        );
        snapshot("ir", &stem, &path, &printed);
    }
}

#[test]
fn ir_error_cases_fail_with_their_message() {
    let empty = Constants::new();
    for (stem, path) in cases("ir-errors") {
        match parse_module(&read(&path), &empty) {
            Ok(m) => panic!(
                "{}: parsed, but it is an error case:\n{}",
                path.display(),
                print_module(&m)
            ),
            Err(e) => snapshot("ir-errors", &stem, &path, &e.to_string()),
        }
    }
}
