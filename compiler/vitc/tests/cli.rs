//! The CLI as a user meets it: bad input of every kind gets exit code 1 and one clear line on
//! stderr naming the problem — never a panic or a backtrace — and the happy paths work.
//! The broken models are built here in memory, so each case states exactly what is wrong.

use onnx_protobuf::{
    attribute_proto::AttributeType,
    tensor_proto::{DataLocation, DataType},
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::path::{Path, PathBuf};
use std::process::Command;

fn vitc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vitc"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitc-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A dimension: `Ok(n)` static, `Err(name)` symbolic.
fn dim(d: Result<i64, &str>) -> Dimension {
    let mut x = Dimension::new();
    x.value = Some(match d {
        Ok(n) => dimension::Value::DimValue(n),
        Err(s) => dimension::Value::DimParam(s.to_string()),
    });
    x
}

fn value_info(name: &str, dims: &[Result<i64, &str>]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    shape.dim = dims.iter().map(|&d| dim(d)).collect();
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = DataType::FLOAT as i32;
    tt.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(ty).into();
    v
}

/// A one-node model `y = op(x [, w])`.
fn model(op: &str, x_dims: &[Result<i64, &str>], w: Option<TensorProto>) -> ModelProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = format!("the_{}_node", op.to_lowercase());
    n.input = vec!["x".into()];
    n.output = vec!["y".into()];
    let mut g = GraphProto::new();
    g.name = "g".into();
    g.input = vec![value_info("x", x_dims)];
    if let Some(w) = w {
        n.input.push(w.name.clone());
        g.initializer.push(w);
    }
    g.output = vec![value_info("y", x_dims)];
    g.node = vec![n];
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut op = OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import = vec![op];
    m.graph = Some(g).into();
    m
}

fn external_weight(location: &str) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = "w".into();
    t.dims = vec![4];
    t.data_type = DataType::FLOAT as i32;
    t.data_location = DataLocation::EXTERNAL.into();
    let mut e = StringStringEntryProto::new();
    e.key = "location".into();
    e.value = location.into();
    t.external_data = vec![e];
    t
}

fn write_model(dir: &Path, m: &ModelProto) -> PathBuf {
    let p = dir.join("model.onnx");
    std::fs::write(&p, m.write_to_bytes().unwrap()).unwrap();
    p
}

/// Run vitc with `args`; assert exit code 1 and a single `error:` line containing every needle.
fn expect_error(args: &[&str], needles: &[&str]) {
    let out = vitc().args(args).output().expect("vitc runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "args {args:?}: stderr {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(
            lines[0].to_lowercase().contains(&n.to_lowercase()),
            "{args:?}: `{n}` missing from: {stderr}"
        );
    }
}

#[test]
fn not_onnx() {
    let d = tmpdir("not-onnx");
    let p = d.join("notes.onnx");
    std::fs::write(&p, "these are my notes, not a model\n").unwrap();
    expect_error(
        &["inspect", p.to_str().unwrap()],
        &["notes.onnx", "not an onnx model"],
    );
}

#[test]
fn truncated() {
    let d = tmpdir("truncated");
    let bytes = std::fs::read(repo().join("tests/models/digits_vit.onnx")).unwrap();
    let p = d.join("cut.onnx");
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    expect_error(
        &["inspect", p.to_str().unwrap()],
        &["cut.onnx", "truncated"],
    );
}

#[test]
fn missing_file() {
    expect_error(
        &["inspect", "/nonexistent/model.onnx"],
        &["/nonexistent/model.onnx"],
    );
}

#[test]
fn unsupported_op() {
    let d = tmpdir("unsupported");
    let p = write_model(&d, &model("FancyOp", &[Ok(1), Ok(4)], None));
    expect_error(
        &["inspect", p.to_str().unwrap()],
        &["FancyOp", "the_fancyop_node", "17"],
    );
}

#[test]
fn missing_external_data() {
    let d = tmpdir("missing-ext");
    let p = write_model(
        &d,
        &model("Add", &[Ok(4)], Some(external_weight("weights.bin"))),
    );
    expect_error(&["inspect", p.to_str().unwrap()], &["weights.bin"]);
}

#[test]
fn external_data_leaving_the_folder_is_refused() {
    let d = tmpdir("escape");
    // The file exists, so only the path check can stop it.
    std::fs::write(d.join("../vitc-secret.bin"), [0u8; 16]).unwrap();
    for loc in ["../vitc-secret.bin", "/etc/passwd"] {
        let p = write_model(&d, &model("Add", &[Ok(4)], Some(external_weight(loc))));
        expect_error(&["inspect", p.to_str().unwrap()], &[loc, "outside"]);
    }
}

#[test]
fn dynamic_dimension_needs_input_shape() {
    let d = tmpdir("dynamic");
    let p = write_model(&d, &model("Relu", &[Err("batch"), Ok(4)], None));
    let p = p.to_str().unwrap();
    expect_error(&["inspect", p], &["x", "batch", "--input-shape"]);
    let ok = vitc()
        .args(["inspect", p, "--input-shape", "x=2x4"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("tensor<2x4xf32>"));
}

#[test]
fn input_shape_contradicting_the_model() {
    let d = tmpdir("contradict");
    let p = write_model(&d, &model("Relu", &[Err("batch"), Ok(4)], None));
    let p = p.to_str().unwrap();
    expect_error(&["inspect", p, "--input-shape", "x=2x5"], &["x", "4", "5"]);
    expect_error(&["inspect", p, "--input-shape", "x=2x4x1"], &["x", "rank"]);
    expect_error(&["inspect", p, "--input-shape", "nosuch=2x4"], &["nosuch"]);
    expect_error(&["inspect", p, "--input-shape", "x=2xbanana"], &["banana"]);
}

#[test]
fn absurd_dimensions() {
    let d = tmpdir("absurd");
    let huge = 1i64 << 40;
    let p = write_model(&d, &model("Relu", &[Ok(huge), Ok(huge), Ok(huge)], None));
    expect_error(&["inspect", p.to_str().unwrap()], &["overflow"]);
}

#[test]
fn bad_vit_text() {
    let d = tmpdir("badvit");
    let p = d.join("bad.vit");
    std::fs::write(
        &p,
        "module @m {\n  func.func @main() -> () {\n    %0 = vit.bogus\n",
    )
    .unwrap();
    expect_error(&["inspect", p.to_str().unwrap()], &["bad.vit", "line 3"]);
}

#[test]
fn run_ref_checks_its_inputs() {
    let model = repo().join("tests/models/digits_vit.onnx");
    let wrong = repo().join("tests/models/digits_test_y.npy");
    expect_error(
        &[
            "run-ref",
            model.to_str().unwrap(),
            "--input",
            wrong.to_str().unwrap(),
        ],
        &["pixel_values", "tensor<1x1x32x32xf32>"],
    );
}

#[test]
fn happy_path_inspect_emit_run() {
    let model = repo().join("tests/models/digits_vit.onnx");
    let m = model.to_str().unwrap();
    let out = vitc().args(["inspect", m]).output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("pixel_values tensor<1x1x32x32xf32>"), "{s}");
    assert!(s.contains("attention  4 block(s)"), "{s}");

    let d = tmpdir("happy");
    let vit = d.join("digits.vit");
    let out = vitc()
        .args([m, "--emit", "ir", "-o", vit.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.join("digits.vit.weights").exists());

    // The written IR with its side file runs and gives onnxruntime's answer.
    let y = d.join("y.npy");
    for src in [m, vit.to_str().unwrap()] {
        let out = vitc()
            .args(["run-ref", src, "--input"])
            .arg(repo().join("tests/models/digits_vit.input.npy"))
            .args(["--output", y.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = std::fs::read(&y).unwrap();
        assert!(got.len() > 40);
    }
}

#[test]
fn inspect_deit_tiny() {
    let dir = std::env::var_os("VITC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/models"));
    let model = dir.join("deit_tiny.onnx");
    if !model.exists() {
        eprintln!(
            "inspect_deit_tiny: skipped: {} not found (set VITC_MODELS)",
            model.display()
        );
        return;
    }
    let out = vitc().arg("inspect").arg(&model).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    // DeiT-Tiny: 5.7 M parameters, ~2.5 GFLOP, 12 attention blocks.
    assert!(s.contains("parameters 5.69 M (22.76 MB)"), "{s}");
    assert!(s.contains("flops      2.54 GFLOP"), "{s}");
    assert!(s.contains("attention  12 block(s)"), "{s}");
}

#[test]
fn batch_values_and_refusals() {
    let digits = repo().join("tests/models/digits_vit.onnx");
    let m = digits.to_str().unwrap();
    for bad in ["0", "two", "-3", "1.5", ""] {
        expect_error(
            &["inspect", m, "--batch", bad],
            &["--batch", "whole number of at least 1"],
        );
    }
    let d = tmpdir("batch");
    // vit IR already has static shapes.
    let vit = d.join("m.vit");
    std::fs::write(&vit, "module @m {}\n").unwrap();
    expect_error(
        &["inspect", vit.to_str().unwrap(), "--batch", "2"],
        &["--batch applies to ONNX models"],
    );
    // A batch the exporter fixed at 2 is not one --batch rewrites.
    let p = write_model(&d, &model("Relu", &[Ok(2), Ok(4)], None));
    expect_error(
        &["inspect", p.to_str().unwrap(), "--batch", "3"],
        &["--batch 3", "graph input 'x'", "must be 1"],
    );
    // A softmax over the batch dim would mix the images: refused, naming the node.
    let mut mixing = model("Softmax", &[Ok(1), Ok(4)], None);
    let mut axis = AttributeProto::new();
    axis.name = "axis".into();
    axis.type_ = AttributeType::INT.into();
    axis.i = 0;
    mixing.graph.as_mut().unwrap().node[0].attribute.push(axis);
    let p = write_model(&d, &mixing);
    let p = p.to_str().unwrap();
    let ok = vitc().args(["inspect", p]).output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    expect_error(
        &["inspect", p, "--batch", "2"],
        &["--batch 2", "'the_softmax_node'", "over the batch"],
    );
}

/// The data rows of `inspect --cost`'s table: (block, nodes, MFLOP, params, weight B,
/// workspace B).
fn cost_rows(stdout: &str) -> Vec<(String, u64, f64, u64, u64, u64)> {
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("cost per run"))
        .collect();
    assert!(table.len() > 2, "no cost table in: {stdout}");
    let header: Vec<&str> = table[1].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "block",
            "nodes",
            "MFLOP",
            "params",
            "weight",
            "B",
            "workspace",
            "B"
        ],
        "{stdout}"
    );
    table[2..]
        .iter()
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(c.len(), 6, "row `{l}`");
            (
                c[0].to_string(),
                c[1].parse().unwrap(),
                c[2].parse().unwrap(),
                c[3].parse().unwrap(),
                c[4].parse().unwrap(),
                c[5].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn inspect_cost_table() {
    let digits = repo().join("tests/models/digits_vit.onnx");
    let m = digits.to_str().unwrap();
    let run = |extra: &[&str]| {
        let out = vitc()
            .args(["inspect", m, "--cost", "--target", "x86_64-avx512"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let one = run(&[]);
    assert!(
        one.contains("cost per run (pixel_values tensor<1x1x32x32xf32>) on x86_64-avx512"),
        "{one}"
    );
    let rows = cost_rows(&one);
    let (total, blocks) = rows.split_last().unwrap();
    assert_eq!(total.0, "total");
    // The digits ViT has four transformer blocks, in order, with the same weights each and
    // the same cost — but the last, which -O2's row narrowing runs mostly on the class token.
    let tb: Vec<_> = blocks
        .iter()
        .filter(|r| r.0.starts_with("blocks."))
        .collect();
    let names: Vec<&str> = tb.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        names,
        ["blocks.0", "blocks.1", "blocks.2", "blocks.3"],
        "{one}"
    );
    assert!(
        tb[..3]
            .iter()
            .all(|r| (r.2, r.3, r.4, r.5) == (tb[0].2, tb[0].3, tb[0].4, tb[0].5)),
        "{one}"
    );
    assert!(tb.iter().all(|r| (r.3, r.4) == (tb[0].3, tb[0].4)), "{one}");
    assert!(tb[3].2 < tb[0].2, "the last block is narrowed: {one}");
    // Rows add up to the total (FLOPs to the table's rounding); the total workspace covers
    // every block's.
    assert_eq!(blocks.iter().map(|r| r.1).sum::<u64>(), total.1);
    let mflop: f64 = blocks.iter().map(|r| r.2).sum();
    assert!(
        (mflop - total.2).abs() < 0.001 * blocks.len() as f64,
        "{one}"
    );
    assert_eq!(blocks.iter().map(|r| r.3).sum::<u64>(), total.3);
    assert_eq!(blocks.iter().map(|r| r.4).sum::<u64>(), total.4);
    assert!(
        blocks.iter().all(|r| r.5 <= total.5) && total.5 > 0,
        "{one}"
    );
    // The summary's -O2 FLOPs and the table's total agree.
    assert!(
        one.contains(&format!("-O2        {:.2} MFLOP", total.2)),
        "{one}"
    );

    // At --batch 4 a transformer block does four times the work on the same weights.
    let four = run(&["--batch", "4"]);
    assert!(four.contains("tensor<4x1x32x32xf32>"), "{four}");
    let rows4 = cost_rows(&four);
    let b0 = rows4.iter().find(|r| r.0 == "blocks.0").unwrap();
    assert!((b0.2 - 4.0 * tb[0].2).abs() < 0.002, "{four}");
    assert_eq!((b0.3, b0.4), (tb[0].3, tb[0].4), "{four}");
    assert!(b0.5 > 3 * tb[0].5, "{four}");
}

#[test]
fn bench_reports_images_per_second() {
    let digits = repo().join("tests/models/digits_vit.onnx");
    let d = tmpdir("bench-batch");
    let so = d.join("digits4.so");
    let out = vitc()
        .arg(&digits)
        .args(["--batch", "4", "--target", "x86_64-avx2", "-o"])
        .arg(&so)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = vitc()
        .arg("bench")
        .arg(&so)
        .args(["--iters", "5", "--warmup", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    // "… median M ms, R runs/s; batch 4: I images/s (median run), J (fastest run)"
    let num = |after: &str| -> f64 {
        let rest = &s[s
            .find(after)
            .unwrap_or_else(|| panic!("`{after}` missing: {s}"))
            + after.len()..];
        rest.split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches(',')
            .parse()
            .unwrap()
    };
    let median_ms = num("median ");
    let images = num("batch 4: ");
    assert!(s.contains("images/s (median run)"), "{s}");
    // images/s is the batch times runs per second at the median.
    let expect = 4.0 * 1e3 / median_ms;
    assert!(
        (images - expect).abs() <= 0.01 * expect + 0.1,
        "{images} vs {expect}: {s}"
    );
}

/// `--precision` on a target that cannot run it names the targets that can; with a text IR
/// output it is refused as not supported yet.
#[test]
fn precision_needs_a_capable_target() {
    let model = repo().join("tests/models/digits_vit.onnx");
    let m = model.to_str().unwrap();
    let d = tmpdir("precision");
    let so = d.join("d.so");
    let so = so.to_str().unwrap();
    expect_error(
        &[
            m,
            "-o",
            so,
            "--target",
            "x86_64-avx512",
            "--precision",
            "bf16",
        ],
        &["--precision bf16", "x86_64-avx512-bf16"],
    );
    expect_error(
        &[
            m,
            "-o",
            so,
            "--target",
            "aarch64-neon",
            "--precision",
            "fp16",
        ],
        &["--precision fp16", "aarch64-neon-fp16"],
    );
    expect_error(
        &[m, "--emit", "ir", "--precision", "fp16"],
        &["--precision", "not yet"],
    );
    let out = vitc()
        .args([
            m,
            "-o",
            so,
            "--target",
            "aarch64-neon-fp16",
            "--precision",
            "fp16",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
