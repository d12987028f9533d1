//! Unit tests of the frontend on tiny models built in memory: every error path a user's file
//! or options can take (each asserting the variant and that the message names the problem),
//! and the normalisations (slice clamping, reshape placeholders, folding) on small graphs.

use crate::{import_bytes, parse_input_shape, ImportOptions, OnnxError};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::type_proto;
use onnx_protobuf::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use protobuf::{EnumOrUnknown, Message, MessageField};
use std::path::{Path, PathBuf};
use vitc_ir::{Module, Op};

// ---- builders --------------------------------------------------------------------------------

enum D {
    V(i64),
    P(&'static str),
}

fn vi(name: &str, elem: DataType, dims: &[D]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = Dimension::new();
        dim.value = Some(match d {
            D::V(v) => dimension::Value::DimValue(*v),
            D::P(p) => dimension::Value::DimParam(p.to_string()),
        });
        shape.dim.push(dim);
    }
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = elem as i32;
    tt.shape = MessageField::some(shape);
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.to_string();
    v.type_ = MessageField::some(tp);
    v
}

/// A float value with no declared shape (nothing to check the import against).
fn any_vi(name: &str) -> ValueInfoProto {
    let mut v = vi(name, DataType::FLOAT, &[]);
    if let Some(type_proto::Value::TensorType(tt)) = v.type_.as_mut().and_then(|t| t.value.as_mut())
    {
        tt.shape = MessageField::none();
    }
    v
}

fn f32_vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    let d: Vec<D> = dims.iter().map(|&v| D::V(v)).collect();
    vi(name, DataType::FLOAT, &d)
}

fn attr_i(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(AttributeType::INT);
    a.i = v;
    a
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(AttributeType::INTS);
    a.ints = v.to_vec();
    a
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n.attribute = attrs;
    n
}

fn i64_init(name: &str, dims: &[i64], vals: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.dims = dims.to_vec();
    t.data_type = DataType::INT64 as i32;
    t.int64_data = vals.to_vec();
    t
}

fn f32_init(name: &str, dims: &[i64], vals: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.dims = dims.to_vec();
    t.data_type = DataType::FLOAT as i32;
    t.raw_data = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    t
}

fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
    opset: i64,
) -> ModelProto {
    let mut g = GraphProto::new();
    g.name = "g".into();
    g.node = nodes;
    g.input = inputs;
    g.output = outputs;
    g.initializer = inits;
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut o = OperatorSetIdProto::new();
    o.domain = String::new();
    o.version = opset;
    m.opset_import.push(o);
    m.graph = MessageField::some(g);
    m
}

fn import(m: &ModelProto) -> Result<Module, OnnxError> {
    import_with(m, None, &ImportOptions::default())
}

fn import_with(
    m: &ModelProto,
    dir: Option<&Path>,
    opts: &ImportOptions,
) -> Result<Module, OnnxError> {
    let bytes = m.write_to_bytes().expect("test model serialises");
    import_bytes(&bytes, dir, "test", opts)
}

/// A one-node model `y = Relu(x)` with x of the given declared dims.
fn relu_model(x: ValueInfoProto) -> ModelProto {
    model(
        vec![node("Relu", "relu", &["x"], &["y"], vec![])],
        vec![x],
        vec![any_vi("y")],
        vec![],
        17,
    )
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitc-onnx-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn external_model(location: &str, offset: Option<u64>, length: Option<u64>) -> ModelProto {
    let mut t = TensorProto::new();
    t.name = "w".into();
    t.dims = vec![4];
    t.data_type = DataType::FLOAT as i32;
    t.data_location = EnumOrUnknown::new(DataLocation::EXTERNAL);
    let kv = |k: &str, v: String| {
        let mut e = StringStringEntryProto::new();
        e.key = k.into();
        e.value = v;
        e
    };
    t.external_data.push(kv("location", location.into()));
    if let Some(o) = offset {
        t.external_data.push(kv("offset", o.to_string()));
    }
    if let Some(l) = length {
        t.external_data.push(kv("length", l.to_string()));
    }
    model(
        vec![node("Identity", "id", &["w"], &["y"], vec![])],
        vec![],
        vec![f32_vi("y", &[4])],
        vec![t],
        17,
    )
}

/// The op of the node producing the first output.
fn out_op(m: &Module) -> &Op {
    &m.node(m.outputs[0].1).op
}

// ---- parse_input_shape -----------------------------------------------------------------------

#[test]
fn input_shape_parses() {
    let (n, s) = parse_input_shape("pixel_values=1x3x224x224").unwrap();
    assert_eq!(n, "pixel_values");
    assert_eq!(s, vec![1, 3, 224, 224]);
    let (n, s) = parse_input_shape("a=b=2,3").unwrap();
    assert_eq!(n, "a=b");
    assert_eq!(s, vec![2, 3]);
}

#[test]
fn input_shape_errors() {
    for (arg, needle) in [
        ("x", "no '='"),
        ("=1x2", "name is empty"),
        ("x=", "no dimensions"),
        ("x=1xax2", "'a' is not a dimension"),
        ("x=0x2", "positive"),
        ("x=-1x2", "'-1' is not a dimension"),
    ] {
        let e = parse_input_shape(arg).unwrap_err();
        assert!(matches!(e, OnnxError::BadInputShape { .. }), "{arg}: {e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(needle) && msg.contains("NAME=1x3x224x224"),
            "{msg}"
        );
    }
    let e = parse_input_shape("x=4294967296x4294967296x4294967296").unwrap_err();
    assert!(matches!(e, OnnxError::ShapeOverflow { .. }), "{e:?}");
    assert!(e.to_string().contains("too large"));
}

// ---- reading the file ------------------------------------------------------------------------

#[test]
fn not_onnx_bytes() {
    // Field 1 with wire type 7 does not exist in protobuf.
    let e = import_bytes(b"\x0f\x00garbage", None, "junk", &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, OnnxError::NotOnnx { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("junk is not an ONNX model (or is truncated)"),
        "{e}"
    );
}

#[test]
fn truncated_bytes() {
    let vals: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let m = model(
        vec![node("Identity", "id", &["w"], &["y"], vec![])],
        vec![],
        vec![f32_vi("y", &[256])],
        vec![f32_init("w", &[256], &vals)],
        17,
    );
    let bytes = m.write_to_bytes().unwrap();
    let e = import_bytes(
        &bytes[..bytes.len() / 2],
        None,
        "cut",
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, OnnxError::NotOnnx { .. }), "{e:?}");
    assert!(e
        .to_string()
        .contains("is not an ONNX model (or is truncated)"));
}

#[test]
fn model_without_graph() {
    let mut m = ModelProto::new();
    let mut o = OperatorSetIdProto::new();
    o.version = 17;
    m.opset_import.push(o);
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::NoGraph { .. }), "{e:?}");
    assert!(e.to_string().contains("has no graph"));
}

#[test]
fn old_opset_refused() {
    let mut m = relu_model(f32_vi("x", &[2]));
    m.opset_import[0].version = 6;
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::Opset { .. }), "{e:?}");
    assert!(e.to_string().contains("opset 6"));
}

#[test]
fn unsupported_op() {
    let m = model(
        vec![node("FooBar", "n0", &["x"], &["y"], vec![])],
        vec![f32_vi("x", &[2])],
        vec![f32_vi("y", &[2])],
        vec![],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::UnsupportedOp { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "unsupported op FooBar (domain ai.onnx, opset 17) at node 'n0'"
    );
}

#[test]
fn unsupported_domain() {
    let mut n = node("Gelu", "g0", &["x"], &["y"], vec![]);
    n.domain = "com.microsoft".into();
    let mut m = model(
        vec![n],
        vec![f32_vi("x", &[2])],
        vec![f32_vi("y", &[2])],
        vec![],
        17,
    );
    let mut o = OperatorSetIdProto::new();
    o.domain = "com.microsoft".into();
    o.version = 1;
    m.opset_import.push(o);
    let e = import(&m).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unsupported op Gelu (domain com.microsoft, opset 1) at node 'g0'"
    );
}

#[test]
fn initializer_length_mismatch() {
    let m = model(
        vec![node("Identity", "id", &["w"], &["y"], vec![])],
        vec![],
        vec![f32_vi("y", &[4])],
        vec![f32_init("w", &[4], &[1.0, 2.0, 3.0])],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::Tensor { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("'w'") && msg.contains("16 bytes") && msg.contains("12"),
        "{msg}"
    );
}

#[test]
fn initializer_typed_field_mismatch() {
    let m = model(
        vec![node("Identity", "id", &["s"], &["y"], vec![])],
        vec![],
        vec![vi("y", DataType::INT64, &[D::V(3)])],
        vec![i64_init("s", &[3], &[1, 2])],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::Tensor { .. }), "{e:?}");
    assert!(e.to_string().contains("int64_data holds 2"), "{e}");
}

#[test]
fn initializer_dims_overflow() {
    let mut t = f32_init("big", &[1 << 40, 1 << 40], &[]);
    t.raw_data.clear();
    let m = model(
        vec![node("Identity", "id", &["big"], &["y"], vec![])],
        vec![],
        vec![f32_vi("y", &[1])],
        vec![t],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::ShapeOverflow { .. }), "{e:?}");
    assert!(e.to_string().contains("'big'") && e.to_string().contains("too large"));
}

// ---- external data ---------------------------------------------------------------------------

#[test]
fn external_data_reads() {
    let dir = temp_dir("ext-ok");
    let vals = [1.0f32, 2.0, 3.0, 4.0];
    let mut bytes = vec![0u8; 8];
    bytes.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(dir.join("w.bin"), &bytes).unwrap();
    let m = import_with(
        &external_model("w.bin", Some(8), Some(16)),
        Some(&dir),
        &ImportOptions::default(),
    )
    .unwrap();
    let t = m.constant(m.outputs[0].1).expect("output is the constant");
    assert_eq!(t.as_f32().unwrap(), &vals);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn external_data_missing_file() {
    let dir = temp_dir("ext-missing");
    let e = import_with(
        &external_model("nothere.bin", None, None),
        Some(&dir),
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, OnnxError::ExternalMissing { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("tensor 'w'") && msg.contains("nothere.bin"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn external_data_beyond_file() {
    let dir = temp_dir("ext-range");
    std::fs::write(dir.join("w.bin"), [0u8; 16]).unwrap();
    let e = import_with(
        &external_model("w.bin", Some(8), Some(16)),
        Some(&dir),
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, OnnxError::ExternalRange { .. }), "{e:?}");
    assert!(
        e.to_string().contains("bytes 8..24 lie beyond the end"),
        "{e}"
    );
    let e = import_with(
        &external_model("w.bin", Some(u64::MAX), Some(16)),
        Some(&dir),
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, OnnxError::ExternalRange { .. }), "{e:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn external_data_outside_folder_refused() {
    let dir = temp_dir("ext-outside");
    for loc in ["../w.bin", "sub/../../w.bin", "/etc/passwd", ""] {
        let e = import_with(
            &external_model(loc, None, None),
            Some(&dir),
            &ImportOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(e, OnnxError::ExternalOutside { .. }),
            "{loc}: {e:?}"
        );
        assert!(e.to_string().contains("outside the model's folder"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn external_data_symlink_outside_refused() {
    let base = temp_dir("ext-link");
    let model_dir = base.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(base.join("secret.bin"), [0u8; 16]).unwrap();
    std::os::unix::fs::symlink(base.join("secret.bin"), model_dir.join("w.bin")).unwrap();
    let e = import_with(
        &external_model("w.bin", None, None),
        Some(&model_dir),
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, OnnxError::ExternalOutside { .. }), "{e:?}");
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn external_data_without_folder() {
    let e = import(&external_model("w.bin", None, None)).unwrap_err();
    assert!(matches!(e, OnnxError::External { .. }), "{e:?}");
    assert!(e.to_string().contains("without its folder"), "{e}");
}

// ---- graph inputs ----------------------------------------------------------------------------

#[test]
fn dynamic_dim_needs_input_shape() {
    let m = relu_model(vi(
        "x",
        DataType::FLOAT,
        &[D::P("batch"), D::V(3), D::V(8), D::V(8)],
    ));
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::DynamicInput { dim: 0, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("graph input 'x'")
            && msg.contains("'batch'")
            && msg.contains("--input-shape x=1x3x8x8"),
        "{msg}"
    );
    let opts = ImportOptions {
        input_shapes: vec![("x".into(), vec![2, 3, 8, 8])],
        ..Default::default()
    };
    let m = import_with(&m, None, &opts).unwrap();
    assert_eq!(m.ty(m.inputs[0].1).shape, vec![2, 3, 8, 8]);
}

#[test]
fn contradicting_input_shape() {
    let m = relu_model(f32_vi("x", &[1, 3, 8, 8]));
    let opts = ImportOptions {
        input_shapes: vec![("x".into(), vec![1, 3, 9, 8])],
        ..Default::default()
    };
    let e = import_with(&m, None, &opts).unwrap_err();
    assert!(matches!(e, OnnxError::InputShapeMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("dim 2 is 8 in the model"), "{e}");
    let opts = ImportOptions {
        input_shapes: vec![("x".into(), vec![1, 3, 8])],
        ..Default::default()
    };
    let e = import_with(&m, None, &opts).unwrap_err();
    assert!(matches!(e, OnnxError::InputShapeMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("rank 4"), "{e}");
}

#[test]
fn input_shape_for_unknown_input() {
    let m = relu_model(f32_vi("x", &[2]));
    let opts = ImportOptions {
        input_shapes: vec![("image".into(), vec![2])],
        ..Default::default()
    };
    let e = import_with(&m, None, &opts).unwrap_err();
    assert!(matches!(e, OnnxError::UnknownInput { .. }), "{e:?}");
    assert!(
        e.to_string().contains("'image'") && e.to_string().contains("inputs: x"),
        "{e}"
    );
}

#[test]
fn input_dims_overflow() {
    let m = relu_model(f32_vi("x", &[1 << 40, 1 << 40]));
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::ShapeOverflow { .. }), "{e:?}");
    assert!(e.to_string().contains("graph input 'x'"), "{e}");
}

// ---- nodes -----------------------------------------------------------------------------------

#[test]
fn reshape_target_overflow() {
    let m = model(
        vec![node("Reshape", "r", &["x", "s"], &["y"], vec![])],
        vec![f32_vi("x", &[4])],
        vec![f32_vi("y", &[4])],
        vec![i64_init("s", &[3], &[1 << 40, 1 << 40, 1])],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::ShapeOverflow { .. }), "{e:?}");
    assert!(e.to_string().contains("node 'r' (Reshape)"), "{e}");
}

#[test]
fn expand_and_constant_of_shape_overflow() {
    let m = model(
        vec![node("Expand", "e", &["x", "s"], &["y"], vec![])],
        vec![f32_vi("x", &[1])],
        vec![f32_vi("y", &[1])],
        vec![i64_init("s", &[2], &[1 << 40, 1 << 40])],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::ShapeOverflow { .. }), "{e:?}");
    let m = model(
        vec![node("ConstantOfShape", "c", &["s"], &["y"], vec![])],
        vec![],
        vec![f32_vi("y", &[1])],
        vec![i64_init("s", &[2], &[1 << 40, 1 << 40])],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::ShapeOverflow { .. }), "{e:?}");
}

#[test]
fn reshape_placeholders_resolve() {
    let m = model(
        vec![node("Reshape", "r", &["x", "s"], &["y"], vec![])],
        vec![f32_vi("x", &[2, 3, 4])],
        vec![f32_vi("y", &[2, 12])],
        vec![i64_init("s", &[2], &[0, -1])],
        17,
    );
    let m = import(&m).unwrap();
    assert_eq!(out_op(&m), &Op::Reshape { shape: vec![2, 12] });
}

#[test]
fn non_constant_shape_input_is_a_node_error() {
    let m = model(
        vec![node("Reshape", "r", &["x", "s"], &["y"], vec![])],
        vec![f32_vi("x", &[4]), vi("s", DataType::INT64, &[D::V(1)])],
        vec![f32_vi("y", &[4])],
        vec![],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::Node { .. }), "{e:?}");
    assert!(
        e.to_string().contains("must be known at import time"),
        "{e}"
    );
}

#[test]
fn missing_attribute_and_input() {
    let m = model(
        vec![node("Concat", "cat", &["x", "x"], &["y"], vec![])],
        vec![f32_vi("x", &[2])],
        vec![f32_vi("y", &[4])],
        vec![],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::Node { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "node 'cat' (Concat): attribute 'axis' is missing"
    );
    let m = model(
        vec![node("Add", "add", &["x", "nowhere"], &["y"], vec![])],
        vec![f32_vi("x", &[2])],
        vec![f32_vi("y", &[2])],
        vec![],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::Node { .. }), "{e:?}");
    assert!(e.to_string().contains("'nowhere' is not produced"), "{e}");
}

#[test]
fn wrong_attribute_type() {
    let m = model(
        vec![node(
            "Concat",
            "cat",
            &["x", "x"],
            &["y"],
            vec![attr_ints("axis", &[0])],
        )],
        vec![f32_vi("x", &[2])],
        vec![f32_vi("y", &[4])],
        vec![],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::Node { .. }), "{e:?}");
    assert!(
        e.to_string().contains("attribute 'axis' must be INT"),
        "{e}"
    );
}

#[test]
fn ir_shape_error_names_node() {
    let m = model(
        vec![node("Add", "add0", &["x", "z"], &["y"], vec![])],
        vec![f32_vi("x", &[2, 3]), f32_vi("z", &[4])],
        vec![f32_vi("y", &[2, 3])],
        vec![],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::Ir { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("node 'add0' (Add):") && msg.contains("broadcast"),
        "{msg}"
    );
}

#[test]
fn used_extra_output_refused() {
    let m = model(
        vec![node(
            "LayerNormalization",
            "ln",
            &["x", "g"],
            &["y", "mean"],
            vec![],
        )],
        vec![f32_vi("x", &[2, 4])],
        vec![f32_vi("y", &[2, 4]), f32_vi("mean", &[2, 1])],
        vec![f32_init("g", &[4], &[1.0; 4])],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, OnnxError::Node { .. }), "{e:?}");
    assert!(e.to_string().contains("output 1 ('mean') is used"), "{e}");
}

#[test]
fn declared_output_shape_checked() {
    let m = relu_model(f32_vi("x", &[1, 4]));
    let mut m2 = m.clone();
    m2.graph.as_mut().unwrap().output[0] = f32_vi("y", &[1, 5]);
    let e = import(&m2).unwrap_err();
    assert!(matches!(e, OnnxError::OutputShape { .. }), "{e:?}");
    assert!(e.to_string().contains("declares shape [1, 5]"), "{e}");
    // A symbolic dim matches anything.
    m2.graph.as_mut().unwrap().output[0] = vi("y", DataType::FLOAT, &[D::P("n"), D::V(4)]);
    import(&m2).unwrap();
}

#[test]
fn unsupported_pad_mode() {
    let mut a = AttributeProto::new();
    a.name = "mode".into();
    a.type_ = EnumOrUnknown::new(AttributeType::STRING);
    a.s = b"reflect".to_vec();
    let m = model(
        vec![node("Pad", "p", &["x", "pads"], &["y"], vec![a])],
        vec![f32_vi("x", &[4])],
        vec![f32_vi("y", &[6])],
        vec![i64_init("pads", &[2], &[1, 1])],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(
        e.to_string()
            .contains("Pad mode 'reflect' is not supported"),
        "{e}"
    );
}

// ---- normalisations --------------------------------------------------------------------------

fn slice_of(dims: &[i64], starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> Op {
    let k = starts.len() as i64;
    let m = model(
        vec![node(
            "Slice",
            "s",
            &["x", "st", "en", "ax", "sp"],
            &["y"],
            vec![],
        )],
        vec![f32_vi("x", dims)],
        vec![any_vi("y")],
        vec![
            i64_init("st", &[k], starts),
            i64_init("en", &[k], ends),
            i64_init("ax", &[k], axes),
            i64_init("sp", &[k], steps),
        ],
        17,
    );
    out_op(&import(&m).unwrap()).clone()
}

#[test]
fn slice_normalises() {
    // INT_MAX end, negative start, negative axis.
    assert_eq!(
        slice_of(&[4, 10], &[-3], &[i64::MAX], &[-1], &[1]),
        Op::Slice {
            starts: vec![0, 7],
            ends: vec![4, 10],
            steps: vec![1, 1]
        }
    );
    // Reverse the whole axis: INT_MIN end clamps to -1.
    assert_eq!(
        slice_of(&[5], &[-1], &[i64::MIN], &[0], &[-1]),
        Op::Slice {
            starts: vec![4],
            ends: vec![-1],
            steps: vec![-1]
        }
    );
    // Empty range stays empty; a huge step is clamped.
    assert_eq!(
        slice_of(&[5], &[3], &[1], &[0], &[i64::MAX]),
        Op::Slice {
            starts: vec![3],
            ends: vec![3],
            steps: vec![5]
        }
    );
}

#[test]
fn split_and_unsqueeze() {
    let m = model(
        vec![
            node("Split", "sp", &["x"], &["a", "b"], vec![attr_i("axis", 1)]),
            node("Unsqueeze", "u", &["b", "ax"], &["y"], vec![]),
        ],
        vec![f32_vi("x", &[2, 6])],
        vec![f32_vi("a", &[2, 3]), f32_vi("y", &[2, 1, 3])],
        vec![i64_init("ax", &[1], &[-2])],
        17,
    );
    let m = import(&m).unwrap();
    assert_eq!(
        out_op(&m),
        &Op::Slice {
            starts: vec![0, 0],
            ends: vec![2, 3],
            steps: vec![1, 1]
        }
    );
    assert_eq!(m.ty(m.outputs[1].1).shape, vec![2, 1, 3]);
}

/// Shape arithmetic folds away: only the reshape of the input remains. Needs the interpreter.
#[test]
fn shape_arithmetic_folds() {
    let m = model(
        vec![
            node("Shape", "shape", &["x"], &["s"], vec![]),
            node(
                "Gather",
                "g",
                &["s", "i0"],
                &["d0"],
                vec![attr_i("axis", 0)],
            ),
            node("Unsqueeze", "u", &["d0", "ax"], &["d0u"], vec![]),
            node(
                "Concat",
                "cat",
                &["d0u", "m1"],
                &["target"],
                vec![attr_i("axis", 0)],
            ),
            node("Reshape", "r", &["x", "target"], &["y"], vec![]),
        ],
        vec![f32_vi("x", &[2, 3, 4])],
        vec![f32_vi("y", &[2, 12])],
        vec![
            i64_init("i0", &[], &[0]),
            i64_init("ax", &[1], &[0]),
            i64_init("m1", &[1], &[-1]),
        ],
        17,
    );
    let m = import(&m).unwrap();
    assert_eq!(m.nodes.len(), 2, "{:?}", m.nodes);
    assert_eq!(out_op(&m), &Op::Reshape { shape: vec![2, 12] });
}

fn run1(m: &Module, x: vitc_ir::Tensor) -> Vec<f32> {
    let out = vitc_ir::interp::run(m, &[x]).expect("interpreter runs");
    out[0].to_f32_vec()
}

#[test]
fn batch_norm_folds_to_scale_and_shift() {
    let m = model(
        vec![node(
            "BatchNormalization",
            "bn",
            &["x", "s", "b", "m", "v"],
            &["y"],
            vec![],
        )],
        vec![f32_vi("x", &[1, 2, 1, 2])],
        vec![f32_vi("y", &[1, 2, 1, 2])],
        vec![
            f32_init("s", &[2], &[2.0, 1.0]),
            f32_init("b", &[2], &[1.0, -1.0]),
            f32_init("m", &[2], &[1.0, 0.0]),
            f32_init("v", &[2], &[4.0 - 1e-5, 1.0 - 1e-5]),
        ],
        15,
    );
    let m = import(&m).unwrap();
    let y = run1(
        &m,
        vitc_ir::Tensor::f32(vec![1, 2, 1, 2], vec![1.0, 3.0, 2.0, -2.0]),
    );
    // channel 0: (x - 1) / 2 * 2 + 1; channel 1: x - 1
    let want = [1.0, 3.0, 1.0, -3.0];
    for (g, w) in y.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{y:?}");
    }
}

#[test]
fn matmul_vector_operands_keep_numpy_shapes() {
    let m = model(
        vec![node("MatMul", "mm", &["x", "w"], &["y"], vec![])],
        vec![f32_vi("x", &[3])],
        vec![f32_vi("y", &[2, 4])],
        vec![f32_init("w", &[2, 3, 4], &[1.0; 24])],
        17,
    );
    let m = import(&m).unwrap();
    let y = run1(&m, vitc_ir::Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]));
    assert_eq!(y, vec![6.0; 8]);
}

#[test]
fn softmax_before_13_coerces_to_2d() {
    let m = model(
        vec![node(
            "Softmax",
            "sm",
            &["x"],
            &["y"],
            vec![attr_i("axis", 1)],
        )],
        vec![f32_vi("x", &[2, 2, 2])],
        vec![f32_vi("y", &[2, 2, 2])],
        vec![],
        11,
    );
    let m = import(&m).unwrap();
    let y = run1(&m, vitc_ir::Tensor::f32(vec![2, 2, 2], vec![0.0; 8]));
    // Each batch row normalises over its 4 trailing elements together.
    assert_eq!(y, vec![0.25; 8]);
}

#[test]
fn gather_nd_on_constants_folds() {
    let data: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let m = model(
        vec![
            node("GatherND", "g", &["d", "i"], &["t"], vec![]),
            node("Add", "add", &["x", "t"], &["y"], vec![]),
        ],
        vec![f32_vi("x", &[2])],
        vec![f32_vi("y", &[2])],
        vec![
            f32_init("d", &[2, 3], &data),
            i64_init("i", &[2, 2], &[1, 2, 0, -1]),
        ],
        17,
    );
    let m = import(&m).unwrap();
    assert!(!m.nodes.iter().any(|n| matches!(n.op, Op::Gather { .. })));
    let y = run1(&m, vitc_ir::Tensor::f32(vec![2], vec![0.0, 0.0]));
    assert_eq!(y, vec![5.0, 2.0]);
}

// ---- --batch ---------------------------------------------------------------------------------

fn batch_opts(n: usize) -> ImportOptions {
    ImportOptions {
        batch: Some(n),
        ..Default::default()
    }
}

/// Image `i` of a test batch: distinct, deterministic values.
fn image(shape: &[usize], i: usize) -> Vec<f32> {
    let len: usize = shape.iter().product();
    (0..len)
        .map(|j| ((j * 37 + i * 101) % 23) as f32 / 11.0 - 1.0 + 0.3 * i as f32)
        .collect()
}

/// Import `m` at batch 1 and at batch `n`; run the interpreter on `n` distinct images, once
/// as a batch and once each, and assert that image `i`'s slice of the batched output is the
/// batch-1 output for it. `rows` is how many output rows (dim 0) one image owns. Returns the
/// batched module.
fn check_batched(m: &ModelProto, n: usize, rows: usize) -> Module {
    let one = import(m).unwrap();
    let many = import_with(m, None, &batch_opts(n)).unwrap();
    let x1 = one.ty(one.inputs[0].1).shape.clone();
    let mut xn = x1.clone();
    xn[0] = n;
    assert_eq!(many.ty(many.inputs[0].1).shape, xn);
    let y1 = one.ty(one.outputs[0].1).shape.clone();
    let mut yn = y1.clone();
    yn[0] *= n;
    assert_eq!(many.ty(many.outputs[0].1).shape, yn);
    assert_eq!(y1[0], rows);
    let all: Vec<f32> = (0..n).flat_map(|i| image(&x1, i)).collect();
    let got = run1(&many, vitc_ir::Tensor::f32(xn, all));
    let per = got.len() / n;
    let mut firsts = Vec::new();
    for i in 0..n {
        let want = run1(&one, vitc_ir::Tensor::f32(x1.clone(), image(&x1, i)));
        let err = got[i * per..(i + 1) * per]
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err <= 1e-5, "image {i}: max|Δ| = {err}");
        firsts.push(want);
    }
    // The images give different answers, so a batch that repeated image 0 would fail above.
    assert_ne!(firsts[0], firsts[1]);
    many
}

/// MobileViT's unfold: the batch folded into larger dims ([B·C·nh, ph, nw, pw], then
/// [B·P, N, C]) by reshape targets the exporter wrote as constants, with a softmax, a matmul
/// and a reduction around it.
#[test]
fn batch_through_folded_reshapes() {
    let m = model(
        vec![
            node("Reshape", "unfold", &["x", "s1"], &["a"], vec![]),
            node(
                "Transpose",
                "t1",
                &["a"],
                &["b"],
                vec![attr_ints("perm", &[0, 2, 1, 3])],
            ),
            node("Reshape", "patches", &["b", "s2"], &["c"], vec![]),
            node(
                "Transpose",
                "t2",
                &["c"],
                &["d"],
                vec![attr_ints("perm", &[0, 3, 2, 1])],
            ),
            node("Reshape", "tokens", &["d", "s3"], &["e"], vec![]),
            node("Softmax", "sm", &["e"], &["f"], vec![attr_i("axis", -1)]),
            node("MatMul", "mm", &["f", "w"], &["g"], vec![]),
            node(
                "ReduceMean",
                "mean",
                &["g"],
                &["y"],
                vec![attr_ints("axes", &[1]), attr_i("keepdims", 0)],
            ),
        ],
        vec![f32_vi("x", &[1, 2, 4, 4])],
        vec![any_vi("y")],
        vec![
            i64_init("s1", &[4], &[4, 2, 2, 2]),
            i64_init("s2", &[4], &[1, 2, 4, 4]),
            i64_init("s3", &[3], &[4, 4, -1]),
            f32_init("w", &[2, 3], &[0.5, -1.0, 2.0, 1.5, 0.25, -0.75]),
        ],
        17,
    );
    let many = check_batched(&m, 3, 4);
    let reshapes: Vec<Vec<usize>> = many
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Reshape { shape } => Some(shape.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        reshapes,
        vec![vec![12, 2, 2, 2], vec![3, 2, 4, 4], vec![12, 4, 2]]
    );
}

/// ViT's front: a class token concatenated to the patches (the weight is repeated per image),
/// a position embedding added, one token picked by Gather, a weight that meets a folded
/// batch dim in an Add (repeated per image), and the classifier.
#[test]
fn batch_through_cls_token_and_folded_add() {
    let m = model(
        vec![
            node(
                "Concat",
                "cat",
                &["cls", "x"],
                &["a"],
                vec![attr_i("axis", 1)],
            ),
            node("Add", "pos", &["a", "pe"], &["b"], vec![]),
            node("Reshape", "flat", &["b", "s1"], &["c"], vec![]),
            node("Add", "bias2d", &["c", "b2"], &["d"], vec![]),
            node("Reshape", "back", &["d", "s2"], &["e"], vec![]),
            node(
                "Gather",
                "pick",
                &["e", "i0"],
                &["f"],
                vec![attr_i("axis", 1)],
            ),
            node("MatMul", "head", &["f", "w"], &["y"], vec![]),
        ],
        vec![f32_vi("x", &[1, 3, 2])],
        vec![any_vi("y")],
        vec![
            f32_init("cls", &[1, 1, 2], &[0.5, -0.5]),
            f32_init("pe", &[1, 4, 2], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]),
            i64_init("s1", &[2], &[4, 2]),
            f32_init("b2", &[4, 2], &[1.0, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -4.0]),
            i64_init("s2", &[3], &[1, 4, 2]),
            i64_init("i0", &[], &[2]),
            f32_init("w", &[2, 3], &[1.0, 0.0, -1.0, 0.5, 2.0, 0.25]),
        ],
        17,
    );
    let many = check_batched(&m, 4, 1);
    assert_eq!(many.ty(many.outputs[0].1).shape, vec![4, 3]);
}

/// A dynamic batch dim needs no --input-shape with --batch.
#[test]
fn batch_fills_a_dynamic_batch_dim() {
    let m = relu_model(vi("x", DataType::FLOAT, &[D::P("batch"), D::V(3)]));
    let m = import_with(&m, None, &batch_opts(5)).unwrap();
    assert_eq!(m.ty(m.inputs[0].1).shape, vec![5, 3]);
    assert_eq!(m.ty(m.outputs[0].1).shape, vec![5, 3]);
}

#[test]
fn batch_refusals_name_the_problem() {
    let relu = relu_model(f32_vi("x", &[1, 3]));
    let e = import_with(&relu, None, &batch_opts(0)).unwrap_err();
    assert!(matches!(e, OnnxError::BadBatch { batch: 0, .. }), "{e:?}");
    assert!(e.to_string().contains("at least 1"), "{e}");

    let two = relu_model(f32_vi("x", &[2, 3]));
    let e = import_with(&two, None, &batch_opts(4)).unwrap_err();
    assert!(matches!(e, OnnxError::Batch { .. }), "{e:?}");
    assert!(
        e.to_string().contains("graph input 'x'") && e.to_string().contains("must be 1"),
        "{e}"
    );

    // Ops that would mix the images of a batch.
    let cases = [
        node(
            "ReduceMean",
            "mean_all",
            &["x"],
            &["y"],
            vec![attr_ints("axes", &[0, 1])],
        ),
        node("Softmax", "sm0", &["x"], &["y"], vec![attr_i("axis", 0)]),
        node("MatMul", "contract", &["xt", "x"], &["y"], vec![]),
    ];
    for n in cases {
        let name = n.name.clone();
        let mut nodes = vec![node(
            "Transpose",
            "t",
            &["x"],
            &["xt"],
            vec![attr_ints("perm", &[1, 0])],
        )];
        nodes.push(n);
        let m = model(
            nodes,
            vec![f32_vi("x", &[1, 3])],
            vec![any_vi("y")],
            vec![],
            17,
        );
        import(&m).unwrap();
        let e = import_with(&m, None, &batch_opts(2)).unwrap_err();
        assert!(matches!(e, OnnxError::Batch { .. }), "{name}: {e:?}");
        assert!(e.to_string().contains(&format!("'{name}'")), "{e}");
    }

    // A reshape that hides where the batch went: [1, 6] → [6, 1] → [2, 3].
    let m = model(
        vec![
            node(
                "Transpose",
                "t",
                &["x"],
                &["a"],
                vec![attr_ints("perm", &[1, 0])],
            ),
            node("Reshape", "hide", &["a", "s"], &["y"], vec![]),
        ],
        vec![f32_vi("x", &[1, 6])],
        vec![any_vi("y")],
        vec![i64_init("s", &[2], &[2, 3])],
        17,
    );
    let e = import_with(&m, None, &batch_opts(2)).unwrap_err();
    assert!(
        matches!(e, OnnxError::Batch { ref node, .. } if node == "hide"),
        "{e:?}"
    );
}

/// --batch 1 is the model as it is.
#[test]
fn batch_one_changes_nothing() {
    let m = relu_model(f32_vi("x", &[1, 3]));
    assert_eq!(
        import_with(&m, None, &batch_opts(1)).unwrap(),
        import(&m).unwrap()
    );
}

// ---- token selection: TopK, GatherElements ----------------------------------------------------

/// An output of element type `elem` with no declared shape.
fn any_typed(name: &str, elem: DataType) -> ValueInfoProto {
    let mut v = any_vi(name);
    if let Some(type_proto::Value::TensorType(tt)) = v.type_.as_mut().and_then(|t| t.value.as_mut())
    {
        tt.elem_type = elem as i32;
    }
    v
}

/// `values, indices = TopK(x)` with x [2, 5], K as an input (opset ≥ 10) or attribute.
fn topk_model(opset: i64, k: i64, attrs: Vec<AttributeProto>) -> ModelProto {
    let (inputs, mut attrs, inits) = if opset >= 10 {
        (vec!["x", "k"], attrs, vec![i64_init("k", &[1], &[k])])
    } else {
        (vec!["x"], attrs, vec![])
    };
    if opset < 10 {
        attrs.push(attr_i("k", k));
    }
    model(
        vec![node("TopK", "top", &inputs, &["v", "i"], attrs)],
        vec![f32_vi("x", &[2, 5])],
        vec![any_vi("v"), any_typed("i", DataType::INT64)],
        inits,
        opset,
    )
}

/// Run a TopK model on rows with ties; (values, indices).
fn run_topk(m: &ModelProto) -> (Vec<f32>, Vec<i64>) {
    let m = import(m).unwrap();
    let x = vitc_ir::Tensor::f32(
        vec![2, 5],
        vec![1.0, 4.0, 4.0, 0.0, 2.0, 3.0, 3.0, f32::NAN, 3.0, 3.0],
    );
    let out = vitc_ir::interp::run(&m, &[x]).expect("interpreter runs");
    (out[0].to_f32_vec(), out[1].to_i64_vec())
}

#[test]
fn topk_follows_the_opset_and_breaks_ties_by_index() {
    // Opset 9: K is an attribute; 10: an input; neither has largest/sorted (largest, sorted).
    // Ties go to the lower index; NaN ranks above every number.
    for opset in [9, 10, 13] {
        let (v, i) = run_topk(&topk_model(opset, 2, vec![]));
        assert_eq!(i, vec![1, 2, 2, 0], "opset {opset}");
        assert_eq!(v[..2], [4.0, 4.0], "opset {opset}");
        assert!(v[2].is_nan() && v[3] == 3.0, "opset {opset}: {v:?}");
    }
    // Smallest first (NaN last), and sorted = 0 (any order; vitc keeps rank order).
    let attrs = vec![
        attr_i("largest", 0),
        attr_i("sorted", 0),
        attr_i("axis", -1),
    ];
    let (v, i) = run_topk(&topk_model(11, 3, attrs));
    assert_eq!(i, vec![3, 0, 4, 0, 1, 3]);
    assert_eq!(v, vec![0.0, 1.0, 2.0, 3.0, 3.0, 3.0]);
    // K = N with NaN: a permutation.
    let (_, i) = run_topk(&topk_model(13, 5, vec![attr_i("largest", 0)]));
    assert_eq!(i, vec![3, 0, 4, 1, 2, 0, 1, 3, 4, 2]);
    // K = 0: empty outputs.
    let m = import(&topk_model(13, 0, vec![])).unwrap();
    assert_eq!(m.ty(m.outputs[0].1).shape, vec![2, 0]);
    assert_eq!(m.ty(m.outputs[1].1).dtype, vitc_ir::DType::I64);
}

#[test]
fn topk_refusals_name_the_problem() {
    let cases: Vec<(ModelProto, &str)> = vec![
        (topk_model(13, 6, vec![]), "K = 6 is outside 0..=5"),
        (topk_model(13, -1, vec![]), "K = -1 is outside"),
        (
            topk_model(13, 2, vec![attr_i("axis", 2)]),
            "axis 2 is out of range",
        ),
        (
            topk_model(13, 2, vec![attr_i("largest", 2)]),
            "'largest' must be 0 or 1",
        ),
        (
            model(
                vec![node("TopK", "top", &["x"], &["v", "i"], vec![])],
                vec![f32_vi("x", &[2, 5])],
                vec![any_vi("v"), any_typed("i", DataType::INT64)],
                vec![],
                9,
            ),
            "attribute 'k' is missing",
        ),
        (
            model(
                vec![node("TopK", "top", &["x", "k"], &["v", "i"], vec![])],
                vec![f32_vi("x", &[2, 5])],
                vec![any_vi("v"), any_typed("i", DataType::INT64)],
                vec![i64_init("k", &[2], &[1, 2])],
                13,
            ),
            "K must hold one value",
        ),
        (
            model(
                vec![node("TopK", "top", &["x", "k"], &["v", "i"], vec![])],
                vec![f32_vi("x", &[2, 5]), vi("k", DataType::INT64, &[D::V(1)])],
                vec![any_vi("v"), any_typed("i", DataType::INT64)],
                vec![],
                13,
            ),
            "must be known at import time",
        ),
        (
            model(
                vec![
                    node("Cast", "c", &["x"], &["b"], vec![attr_i("to", 9)]),
                    node("TopK", "top", &["b", "k"], &["v", "i"], vec![]),
                ],
                vec![f32_vi("x", &[2, 5])],
                vec![
                    any_typed("v", DataType::BOOL),
                    any_typed("i", DataType::INT64),
                ],
                vec![i64_init("k", &[1], &[1])],
                13,
            ),
            "TopK needs a numeric input",
        ),
    ];
    for (m, want) in cases {
        let e = import(&m).unwrap_err();
        assert!(matches!(e, OnnxError::Node { .. }), "{want}: {e:?}");
        assert!(e.to_string().contains("'top' (TopK)"), "{e}");
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
}

/// `y = GatherElements(x [3, 4], i)` with constant indices.
fn gather_elements_model(dims: &[i64], idx: &[i64], axis: i64) -> ModelProto {
    model(
        vec![node(
            "GatherElements",
            "ge",
            &["x", "i"],
            &["y"],
            vec![attr_i("axis", axis)],
        )],
        vec![f32_vi("x", &[3, 4])],
        vec![any_vi("y")],
        vec![i64_init("i", dims, idx)],
        13,
    )
}

#[test]
fn gather_elements_imports_and_checks_its_indices() {
    // Indices shorter than the data off the axis read the leading part of those dims: the data
    // is sliced to them, then gathered. Negative indices count from the end.
    let m = import(&gather_elements_model(&[2, 3], &[2, -1, 0, -3, 1, 1], 0)).unwrap();
    assert_eq!(out_op(&m), &Op::GatherElements { axis: 0 });
    assert!(m.nodes.iter().any(|n| matches!(n.op, Op::Slice { .. })));
    let x = vitc_ir::Tensor::f32(vec![3, 4], (0..12).map(|v| v as f32).collect());
    assert_eq!(run1(&m, x), vec![8.0, 9.0, 2.0, 0.0, 5.0, 6.0]);
    // Same shape off the axis: no slice.
    let m = import(&gather_elements_model(&[3, 1], &[3, -4, 0], 1)).unwrap();
    assert!(!m.nodes.iter().any(|n| matches!(n.op, Op::Slice { .. })));

    let cases: Vec<(ModelProto, &str)> = vec![
        (
            gather_elements_model(&[2, 3], &[2, 3, 0, 0, 0, 0], 0),
            "index 3 is out of range for dim 0",
        ),
        (
            gather_elements_model(&[2, 3], &[0, 0, -4, 0, 0, 0], 0),
            "index -4 is out of range",
        ),
        (
            gather_elements_model(&[3, 5], &[0; 15], 0),
            "dim 1 of the indices",
        ),
        (gather_elements_model(&[12], &[0; 12], 0), "the same rank"),
        (
            gather_elements_model(&[3, 4], &[0; 12], 2),
            "axis 2 is out of range",
        ),
    ];
    for (m, want) in cases {
        let e = import(&m).unwrap_err();
        assert!(matches!(e, OnnxError::Node { .. }), "{want}: {e:?}");
        assert!(e.to_string().contains("'ge' (GatherElements)"), "{e}");
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
}

/// DynamicViT's selection under --batch: TopK over each image's token scores, the indices
/// expanded over the channels, GatherElements of the kept tokens; every image keeps its own.
#[test]
fn batch_through_token_selection() {
    let m = model(
        vec![
            node(
                "ReduceSum",
                "score",
                &["x", "ax2"],
                &["s"],
                vec![attr_i("keepdims", 0)],
            ),
            node(
                "TopK",
                "top",
                &["s", "k"],
                &["v", "i"],
                vec![attr_i("axis", 1)],
            ),
            node("Unsqueeze", "u", &["i", "ax2"], &["i3"], vec![]),
            node("Expand", "e", &["i3", "shape"], &["ie"], vec![]),
            node(
                "GatherElements",
                "ge",
                &["x", "ie"],
                &["y"],
                vec![attr_i("axis", 1)],
            ),
        ],
        vec![f32_vi("x", &[1, 6, 4])],
        vec![f32_vi("y", &[1, 3, 4])],
        vec![
            i64_init("ax2", &[1], &[2]),
            i64_init("k", &[1], &[3]),
            i64_init("shape", &[3], &[1, 3, 4]),
        ],
        13,
    );
    let many = check_batched(&m, 3, 1);
    assert!(many
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::GatherElements { axis: 1 })));
}
