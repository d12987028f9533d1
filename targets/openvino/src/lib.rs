//! vitc's OpenVINO target: writes an OpenVINO IR v11 pair (`model.xml` topology, `model.bin`
//! weights) from a fused vit module, for OpenVINO's runtime to load and compile itself.
//!
//! Each vit op becomes the OpenVINO opset op that means the same thing: `vit.attention` is
//! `MatMul(Q, Kᵀ)` → `SoftMax` → `MatMul(·, V)` (`ScaledDotProductAttention` when it has a bias
//! or mask) with the layout changes around it, `vit.layer_norm` is `MVN` + `Multiply` + `Add`,
//! `vit.gelu` is `Gelu`, `vit.linear` is `MatMul` with its epilogue, and `vit.qlinear` is
//! `FakeQuantize` on the activation and int8 weights behind a `Convert`/`Subtract`/`Multiply`
//! decompression, the form OpenVINO's low-precision transformations turn into int8 matmuls. A
//! `vit.dequantize(vit.quantize(x))` pair with the same parameters becomes one `FakeQuantize`.
//! The module arrives narrowed by -O2's `vit-narrow-rows` (a classifier's last block runs on
//! its class token only). This crate only writes files: it
//! never runs OpenVINO and never changes the numbers the module defines beyond f32 rounding
//! (and, for fake quantization, OpenVINO's rounding of exact halves).

mod xml;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use vitc_ir::{
    Activation, AttnLayout, BinaryOp, DType, Data, Module, Op, ReduceOp, Tensor, UnaryOp, ValueId,
};
use xml::{Builder, Port};

/// Why a module could not be written as OpenVINO IR.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An op (or op form) with no OpenVINO lowering here.
    #[error("target openvino: unsupported op {op} at {node}: {why}")]
    Unsupported {
        op: String,
        node: String,
        why: String,
    },
    /// The module does not verify.
    #[error("target openvino: the module does not verify: {0}")]
    Invalid(#[from] vitc_ir::IrError),
    #[error("target openvino: cannot write {path}: {err}")]
    Io { path: String, err: std::io::Error },
}

/// The IR v11 pair as bytes: (`model.xml` text, `model.bin` weights).
#[derive(Debug)]
pub struct OpenVinoIr {
    pub xml: String,
    pub bin: Vec<u8>,
}

/// Translate a module into OpenVINO IR v11 (the `.bin` offsets are into [`OpenVinoIr::bin`];
/// OpenVINO finds the weights beside the `.xml` under the same stem).
pub fn translate(m: &Module) -> Result<OpenVinoIr, Error> {
    vitc_ir::verify(m)?;
    // OpenVINO has no linear attention op: lower the primitive ops it is made of.
    let expanded = vitc_ir::expand::expand_linear_attention(m)?;
    let m = &expanded;
    let mut b = Builder::new(&m.name);
    let mut ports: Vec<Option<Port>> = vec![None; m.nodes.len()];
    let fq = fused_fake_quant(m);
    let groups = sibling_linears(m);
    // A quantize whose every use became a FakeQuantize needs no lowering of its own.
    let mut users = vec![0usize; m.nodes.len()];
    let mut fused_users = vec![0usize; m.nodes.len()];
    for (i, n) in m.nodes.iter().enumerate() {
        for u in &n.inputs {
            users[u.0] += 1;
            if fq.get(&i).is_some_and(|&(_, q)| q == *u) {
                fused_users[u.0] += 1;
            }
        }
    }
    let outputs: HashSet<usize> = m.outputs.iter().map(|(_, v)| v.0).collect();
    for (i, n) in m.nodes.iter().enumerate() {
        if ports[i].is_some()
            || matches!(n.op, Op::Constant { .. })
            || (users[i] > 0 && users[i] == fused_users[i] && !outputs.contains(&i))
        {
            // Constants are written when first used, so weights a merged projection
            // replaced are not written at all.
            continue;
        }
        if let Some(g) = groups.get(&i) {
            let x = port_of(&mut b, m, &mut ports, n.inputs[0])?;
            for (v, p) in g.iter().zip(merged_linear(&mut b, m, x, g)?) {
                ports[v.0] = Some(p);
            }
            continue;
        }
        let p = if let Some(&(x, q)) = fq.get(&i) {
            let xp = port_of(&mut b, m, &mut ports, x)?;
            lower_fake_quant_pair(&mut b, m, q, xp)?
        } else {
            let ins: Vec<Port> = n
                .inputs
                .iter()
                .map(|&v| port_of(&mut b, m, &mut ports, v))
                .collect::<Result<_, _>>()?;
            lower(&mut b, m, ValueId(i), &ins)?
        };
        ports[i] = Some(p);
    }
    for (name, v) in &m.outputs {
        let p = port_of(&mut b, m, &mut ports, *v)?;
        b.result(name, p);
    }
    Ok(b.finish())
}

/// The port of a value: lowered already, or a constant written now.
fn port_of(
    b: &mut Builder,
    m: &Module,
    ports: &mut [Option<Port>],
    v: ValueId,
) -> Result<Port, Error> {
    if let Some(p) = &ports[v.0] {
        return Ok(p.clone());
    }
    match m.constant(v) {
        Some(t) => {
            let p = b.constant(t);
            ports[v.0] = Some(p.clone());
            Ok(p)
        }
        None => Err(missing(m, v.0)),
    }
}

/// `vit.linear`s that read the same activation with constant weights (and biases), no
/// residual and the same activation function — Q, K and V after the passes split the QKV
/// projection — keyed by the first of them: OpenVINO runs them as one wider MatMul and a
/// split, as it does the original model's fused QKV projection.
fn sibling_linears(m: &Module) -> HashMap<usize, Vec<ValueId>> {
    let mut by_key: HashMap<(usize, String, bool, usize), Vec<ValueId>> = HashMap::new();
    for (i, n) in m.nodes.iter().enumerate() {
        let Op::Linear {
            activation,
            has_bias,
            has_residual: false,
        } = n.op
        else {
            continue;
        };
        let consts =
            m.constant(n.inputs[1]).is_some() && (!has_bias || m.constant(n.inputs[2]).is_some());
        if !consts || m.ty(n.inputs[1]).dtype != DType::F32 {
            continue;
        }
        let k = m.ty(n.inputs[1]).shape[0];
        by_key
            .entry((n.inputs[0].0, activation.name().to_string(), has_bias, k))
            .or_default()
            .push(ValueId(i));
    }
    by_key
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|g| (g[0].0, g))
        .collect()
}

/// One MatMul over the concatenated weights of a sibling group, bias and activation, then a
/// VariadicSplit back into the members' results.
fn merged_linear(b: &mut Builder, m: &Module, x: Port, g: &[ValueId]) -> Result<Vec<Port>, Error> {
    let first = m.node(g[0]);
    let Op::Linear {
        activation,
        has_bias,
        ..
    } = first.op
    else {
        return Err(unsupported(m, g[0], "not a linear"));
    };
    let widths: Vec<usize> = g
        .iter()
        .map(|&v| m.ty(m.node(v).inputs[1]).shape[1])
        .collect();
    let k = m.ty(first.inputs[1]).shape[0];
    let total: usize = widths.iter().sum();
    let mut w = vec![0f32; k * total];
    let mut bias = Vec::with_capacity(total);
    let mut col = 0;
    for (&v, &n) in g.iter().zip(&widths) {
        let node = m.node(v);
        let wt = m
            .constant(node.inputs[1])
            .ok_or_else(|| unsupported(m, v, "weight is not a constant"))?
            .to_f32_vec();
        for r in 0..k {
            w[r * total + col..r * total + col + n].copy_from_slice(&wt[r * n..(r + 1) * n]);
        }
        if has_bias {
            let bt = m
                .constant(node.inputs[2])
                .ok_or_else(|| unsupported(m, v, "bias is not a constant"))?
                .to_f32_vec();
            if bt.len() != n {
                return Err(unsupported(m, v, "bias does not match the output width"));
            }
            bias.extend(bt);
        }
        col += n;
    }
    let mut shape = first.ty.shape.clone();
    let last = shape.len() - 1;
    shape[last] = total;
    let ty = vitc_ir::TensorType::new(shape, DType::F32);
    let wp = b.constant(&Tensor::f32(vec![k, total], w));
    let mut y = b.layer(
        "MatMul",
        "opset1",
        attrs(&[
            ("transpose_a", "false".into()),
            ("transpose_b", "false".into()),
        ]),
        vec![x, wp],
        ty.clone(),
    );
    if has_bias {
        let bp = b.constant(&Tensor::f32(vec![total], bias));
        y = binary(b, "Add", y, bp, ty);
    }
    y = activation_of(b, y, activation);
    let axis = b.const_i64(&[last as i64]);
    let lens = b.const_i64(&widths.iter().map(|&w| w as i64).collect::<Vec<_>>());
    let tys = g.iter().map(|&v| m.ty(v).clone()).collect();
    Ok(b.layer_multi("VariadicSplit", "opset1", vec![], vec![y, axis, lens], tys))
}

/// Write `model.xml` and `model.bin`: `out` is a directory (files named `model.*`) or a path
/// ending in `.xml` (the `.bin` goes beside it). Returns the paths written.
pub fn write(m: &Module, out: &Path) -> Result<Vec<PathBuf>, Error> {
    let ir = translate(m)?;
    let xml_path = if out.extension().is_some_and(|e| e == "xml") {
        out.to_path_buf()
    } else {
        std::fs::create_dir_all(out).map_err(|err| Error::Io {
            path: out.display().to_string(),
            err,
        })?;
        out.join("model.xml")
    };
    let bin_path = xml_path.with_extension("bin");
    for (p, bytes) in [
        (&xml_path, ir.xml.as_bytes()),
        (&bin_path, ir.bin.as_slice()),
    ] {
        std::fs::write(p, bytes).map_err(|err| Error::Io {
            path: p.display().to_string(),
            err,
        })?;
    }
    Ok(vec![xml_path, bin_path])
}

fn missing(m: &Module, i: usize) -> Error {
    let n = &m.nodes[i.min(m.nodes.len().saturating_sub(1))];
    Error::Unsupported {
        op: n.op.name(),
        node: n.name.clone(),
        why: "operand not lowered".into(),
    }
}

fn unsupported(m: &Module, v: ValueId, why: impl Into<String>) -> Error {
    let n = m.node(v);
    Error::Unsupported {
        op: n.op.name(),
        node: n.name.clone(),
        why: why.into(),
    }
}

/// Dequantize nodes whose operand is a quantize with the same (per-tensor, constant) scale and
/// zero point, mapped to (the quantize's float operand, the quantize): these pairs are
/// exactly a FakeQuantize.
fn fused_fake_quant(m: &Module) -> HashMap<usize, (ValueId, ValueId)> {
    let mut out = HashMap::new();
    for (i, n) in m.nodes.iter().enumerate() {
        let Op::Dequantize { axis: None } = n.op else {
            continue;
        };
        let q = n.inputs[0];
        let qn = m.node(q);
        let Op::Quantize { axis: None, .. } = qn.op else {
            continue;
        };
        let same = |a: ValueId, b: ValueId| {
            a == b || matches!((m.constant(a), m.constant(b)), (Some(x), Some(y)) if x == y)
        };
        if same(n.inputs[1], qn.inputs[1])
            && same(n.inputs[2], qn.inputs[2])
            && scalar_of(m, qn.inputs[1]).is_some()
            && scalar_of(m, qn.inputs[2]).is_some()
        {
            out.insert(i, (qn.inputs[0], q));
        }
    }
    out
}

fn scalar_of(m: &Module, v: ValueId) -> Option<f64> {
    let t = m.constant(v)?;
    (t.numel() == 1).then(|| t.data.get_f64(0))
}

fn qrange(t: DType) -> Option<(f64, f64)> {
    match t {
        DType::I8 => Some((-128.0, 127.0)),
        DType::U8 => Some((0.0, 255.0)),
        _ => None,
    }
}

/// FakeQuantize(x) with the range of (scale, zero point, type): levels 256, low/high the
/// dequantized ends of the integer range.
fn fake_quant(b: &mut Builder, x: Port, scale: f64, zp: f64, t: DType) -> Option<Port> {
    let (qmin, qmax) = qrange(t)?;
    let lo = ((qmin - zp) * scale) as f32;
    let hi = ((qmax - zp) * scale) as f32;
    let l = b.scalar_f32(lo);
    let h = b.scalar_f32(hi);
    let ty = x.ty.clone();
    Some(b.layer(
        "FakeQuantize",
        "opset1",
        vec![
            ("levels".into(), "256".into()),
            ("auto_broadcast".into(), "numpy".into()),
        ],
        vec![x, l.clone(), h.clone(), l, h],
        ty,
    ))
}

fn lower_fake_quant_pair(b: &mut Builder, m: &Module, q: ValueId, x: Port) -> Result<Port, Error> {
    let qn = m.node(q);
    let Op::Quantize { to, .. } = qn.op else {
        return Err(unsupported(m, q, "not a quantize"));
    };
    let (Some(s), Some(z)) = (scalar_of(m, qn.inputs[1]), scalar_of(m, qn.inputs[2])) else {
        return Err(unsupported(
            m,
            q,
            "quantization parameters must be constants",
        ));
    };
    fake_quant(b, x, s, z, to)
        .ok_or_else(|| unsupported(m, q, format!("quantized type {}", to.name())))
}

fn attrs(kv: &[(&str, String)]) -> Vec<(String, String)> {
    kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn join<T: ToString>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn binary(b: &mut Builder, kind: &str, x: Port, y: Port, ty: vitc_ir::TensorType) -> Port {
    b.layer(
        kind,
        "opset1",
        attrs(&[("auto_broadcast", "numpy".into())]),
        vec![x, y],
        ty,
    )
}

fn matmul(b: &mut Builder, x: Port, y: Port, ta: bool, tb: bool, ty: vitc_ir::TensorType) -> Port {
    b.layer(
        "MatMul",
        "opset1",
        attrs(&[
            ("transpose_a", ta.to_string()),
            ("transpose_b", tb.to_string()),
        ]),
        vec![x, y],
        ty,
    )
}

fn reshape(b: &mut Builder, x: Port, shape: &[usize]) -> Port {
    let s = b.const_i64(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
    let ty = vitc_ir::TensorType::new(shape.to_vec(), x.ty.dtype);
    b.layer(
        "Reshape",
        "opset1",
        attrs(&[("special_zero", "false".into())]),
        vec![x, s],
        ty,
    )
}

fn transpose(b: &mut Builder, x: Port, perm: &[usize]) -> Port {
    let p = b.const_i64(&perm.iter().map(|&d| d as i64).collect::<Vec<_>>());
    let shape: Vec<usize> = perm.iter().map(|&i| x.ty.shape[i]).collect();
    let ty = vitc_ir::TensorType::new(shape, x.ty.dtype);
    b.layer("Transpose", "opset1", vec![], vec![x, p], ty)
}

fn activation_of(b: &mut Builder, x: Port, a: Activation) -> Port {
    let ty = x.ty.clone();
    match a {
        Activation::None => x,
        Activation::Gelu => b.layer(
            "Gelu",
            "opset7",
            attrs(&[("approximation_mode", "ERF".into())]),
            vec![x],
            ty,
        ),
        Activation::GeluTanh => b.layer(
            "Gelu",
            "opset7",
            attrs(&[("approximation_mode", "TANH".into())]),
            vec![x],
            ty,
        ),
        Activation::Relu => b.layer("Relu", "opset1", vec![], vec![x], ty),
        Activation::HardSwish => b.layer("HSwish", "opset4", vec![], vec![x], ty),
        Activation::Silu => b.layer("Swish", "opset4", vec![], vec![x], ty),
        Activation::Sigmoid => b.layer("Sigmoid", "opset1", vec![], vec![x], ty),
    }
}

/// An attention operand in `[B, H, S, D]` (or `[B, H, D, S]` when `want_ds`).
fn to_bhsd(b: &mut Builder, x: Port, layout: AttnLayout, heads: usize) -> Port {
    match layout {
        AttnLayout::Bhsd => x,
        AttnLayout::Bhds => transpose(b, x, &[0, 1, 3, 2]),
        AttnLayout::Bshd => transpose(b, x, &[0, 2, 1, 3]),
        AttnLayout::Bsd => {
            let (bb, s, hd) = (x.ty.shape[0], x.ty.shape[1], x.ty.shape[2]);
            let r = reshape(b, x, &[bb, s, heads, hd / heads.max(1)]);
            transpose(b, r, &[0, 2, 1, 3])
        }
    }
}

fn from_bhsd(b: &mut Builder, x: Port, layout: AttnLayout) -> Port {
    match layout {
        AttnLayout::Bhsd => x,
        AttnLayout::Bhds => transpose(b, x, &[0, 1, 3, 2]),
        AttnLayout::Bshd => transpose(b, x, &[0, 2, 1, 3]),
        AttnLayout::Bsd => {
            let t = transpose(b, x, &[0, 2, 1, 3]);
            let s = t.ty.shape.clone();
            reshape(b, t, &[s[0], s[1], s[2] * s[3]])
        }
    }
}

fn const_f32_like(b: &mut Builder, m: &Module, v: ValueId) -> Option<Port> {
    let t = m.constant(v)?;
    Some(b.constant(&t.cast(DType::F32)))
}

/// Lower one node given its operands' ports.
fn lower(b: &mut Builder, m: &Module, v: ValueId, ins: &[Port]) -> Result<Port, Error> {
    let n = m.node(v);
    let ty = n.ty.clone();
    let un = |b: &mut Builder, kind: &str, ver: &str, a: Vec<(String, String)>| {
        b.layer(kind, ver, a, vec![ins[0].clone()], ty.clone())
    };
    Ok(match &n.op {
        Op::Input { .. } => b.parameter(&n.name, &ty),
        Op::Constant { .. } => match m.constant(v) {
            Some(t) => b.constant(t),
            None => return Err(unsupported(m, v, "constant missing from the table")),
        },
        Op::Unary(u) => {
            let (kind, ver) = match u {
                UnaryOp::Neg => ("Negative", "opset1"),
                UnaryOp::Abs => ("Abs", "opset1"),
                UnaryOp::Sqrt => ("Sqrt", "opset1"),
                UnaryOp::Exp => ("Exp", "opset1"),
                UnaryOp::Log => ("Log", "opset1"),
                UnaryOp::Erf => ("Erf", "opset1"),
                UnaryOp::Tanh => ("Tanh", "opset1"),
                UnaryOp::Sigmoid => ("Sigmoid", "opset1"),
                UnaryOp::Relu => ("Relu", "opset1"),
                UnaryOp::HardSwish => ("HSwish", "opset4"),
                UnaryOp::Silu => ("Swish", "opset4"),
                UnaryOp::Floor => ("Floor", "opset1"),
                UnaryOp::Ceil => ("Ceiling", "opset1"),
                UnaryOp::Not => ("LogicalNot", "opset1"),
                UnaryOp::Round => {
                    return Ok(un(
                        b,
                        "Round",
                        "opset5",
                        attrs(&[("mode", "half_to_even".into())]),
                    ))
                }
                UnaryOp::Rsqrt | UnaryOp::Reciprocal => {
                    let x = if *u == UnaryOp::Rsqrt {
                        un(b, "Sqrt", "opset1", vec![])
                    } else {
                        ins[0].clone()
                    };
                    let one = b.scalar_f32(1.0);
                    return Ok(binary(b, "Divide", one, x, ty));
                }
                UnaryOp::HardSigmoid => {
                    let a = b.scalar_f32(1.0 / 6.0);
                    let c = b.scalar_f32(0.5);
                    return Ok(b.layer(
                        "HardSigmoid",
                        "opset1",
                        vec![],
                        vec![ins[0].clone(), a, c],
                        ty,
                    ));
                }
            };
            un(b, kind, ver, vec![])
        }
        Op::Binary(op) => {
            let kind = match op {
                BinaryOp::Add => "Add",
                BinaryOp::Sub => "Subtract",
                BinaryOp::Mul => "Multiply",
                BinaryOp::Div => "Divide",
                BinaryOp::Pow => "Power",
                BinaryOp::Max => "Maximum",
                BinaryOp::Min => "Minimum",
                BinaryOp::Equal => "Equal",
                BinaryOp::Less => "Less",
                BinaryOp::Greater => "Greater",
                BinaryOp::And => "LogicalAnd",
                BinaryOp::Or => "LogicalOr",
                BinaryOp::Mod => "FloorMod",
            };
            binary(b, kind, ins[0].clone(), ins[1].clone(), ty)
        }
        Op::Where => b.layer(
            "Select",
            "opset1",
            attrs(&[("auto_broadcast", "numpy".into())]),
            ins.to_vec(),
            ty,
        ),
        Op::Clip { min, max } => {
            let lo = min.unwrap_or(f32::MIN);
            let hi = max.unwrap_or(f32::MAX);
            un(
                b,
                "Clamp",
                "opset1",
                attrs(&[("min", fmt_f32(lo)), ("max", fmt_f32(hi))]),
            )
        }
        Op::Cast { to } => un(
            b,
            "Convert",
            "opset1",
            attrs(&[("destination_type", xml::elem(*to).into())]),
        ),
        Op::MatMul => b.layer(
            "MatMul",
            "opset1",
            attrs(&[
                ("transpose_a", "false".into()),
                ("transpose_b", "false".into()),
            ]),
            ins[..2].to_vec(),
            ty,
        ),
        Op::Conv {
            strides,
            pads,
            dilations,
            group,
            activation,
            has_bias,
        } => {
            let a = attrs(&[
                ("strides", join(strides)),
                ("dilations", join(dilations)),
                ("pads_begin", join(&[pads[0], pads[1]])),
                ("pads_end", join(&[pads[2], pads[3]])),
                ("auto_pad", "explicit".into()),
            ]);
            let conv_ty = ty.clone();
            let y = if *group == 1 {
                b.layer("Convolution", "opset1", a, ins[..2].to_vec(), conv_ty)
            } else {
                let w = &ins[1].ty.shape;
                let gw = [*group, w[0] / group, w[1], w[2], w[3]];
                let wr = reshape(b, ins[1].clone(), &gw);
                b.layer(
                    "GroupConvolution",
                    "opset1",
                    a,
                    vec![ins[0].clone(), wr],
                    conv_ty,
                )
            };
            let y = if *has_bias {
                let c = ins[2].ty.shape[0];
                let br = reshape(b, ins[2].clone(), &[1, c, 1, 1]);
                binary(b, "Add", y, br, ty)
            } else {
                y
            };
            activation_of(b, y, *activation)
        }
        Op::Reduce { op, axes, keepdims } => {
            let kind = match op {
                ReduceOp::Sum => "ReduceSum",
                ReduceOp::Mean => "ReduceMean",
                ReduceOp::Max => "ReduceMax",
                ReduceOp::Min => "ReduceMin",
                ReduceOp::Prod => "ReduceProd",
            };
            let ax = b.const_i64(&axes.iter().map(|&a| a as i64).collect::<Vec<_>>());
            b.layer(
                kind,
                "opset1",
                attrs(&[("keep_dims", keepdims.to_string())]),
                vec![ins[0].clone(), ax],
                ty,
            )
        }
        Op::Softmax { axis } => un(b, "SoftMax", "opset8", attrs(&[("axis", axis.to_string())])),
        Op::Reshape { shape } => reshape(b, ins[0].clone(), shape),
        Op::Broadcast { shape } => {
            let s = b.const_i64(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
            b.layer(
                "Broadcast",
                "opset3",
                attrs(&[("mode", "numpy".into())]),
                vec![ins[0].clone(), s],
                ty,
            )
        }
        Op::Transpose { perm } => transpose(b, ins[0].clone(), perm),
        Op::Slice {
            starts,
            ends,
            steps,
        } => {
            // A negative step's end of -1 means "through index 0"; OpenVINO reads -1 as the
            // last index, so say "past the beginning" with the smallest i64 instead.
            let ends: Vec<i64> = ends
                .iter()
                .zip(steps)
                .map(|(&e, &s)| if s < 0 && e < 0 { i64::MIN } else { e })
                .collect();
            let axes: Vec<i64> = (0..starts.len() as i64).collect();
            let st = b.const_i64(starts);
            let en = b.const_i64(&ends);
            let sp = b.const_i64(steps);
            let ax = b.const_i64(&axes);
            b.layer(
                "Slice",
                "opset8",
                vec![],
                vec![ins[0].clone(), st, en, sp, ax],
                ty,
            )
        }
        Op::Concat { axis } => b.layer(
            "Concat",
            "opset1",
            attrs(&[("axis", axis.to_string())]),
            ins.to_vec(),
            ty,
        ),
        Op::Gather { axis } => {
            let ax = b.const_i64(&[*axis as i64]);
            b.layer(
                "Gather",
                "opset8",
                attrs(&[("batch_dims", "0".into())]),
                vec![ins[0].clone(), ins[1].clone(), ax],
                ty,
            )
        }
        Op::GatherElements { axis } => b.layer(
            "GatherElements",
            "opset6",
            attrs(&[("axis", axis.to_string())]),
            vec![ins[0].clone(), ins[1].clone()],
            ty,
        ),
        Op::Pad { pads, value } => {
            let r = pads.len() / 2;
            let pb = b.const_i64(&pads[..r].iter().map(|&p| p as i64).collect::<Vec<_>>());
            let pe = b.const_i64(&pads[r..].iter().map(|&p| p as i64).collect::<Vec<_>>());
            let pv = b.constant(&Tensor::new(
                Vec::<usize>::new(),
                Data::from_f64(ins[0].ty.dtype, std::iter::once(*value as f64)),
            ));
            b.layer(
                "Pad",
                "opset12",
                attrs(&[("pad_mode", "constant".into())]),
                vec![ins[0].clone(), pb, pe, pv],
                ty,
            )
        }
        Op::LayerNorm {
            axis,
            epsilon,
            has_bias,
        } => {
            let rank = ty.shape.len();
            let ax = b.const_i64(&(*axis..rank).map(|a| a as i64).collect::<Vec<_>>());
            let mvn = b.layer(
                "MVN",
                "opset6",
                attrs(&[
                    ("eps", fmt_f32(*epsilon)),
                    ("normalize_variance", "true".into()),
                    ("eps_mode", "inside_sqrt".into()),
                ]),
                vec![ins[0].clone(), ax],
                ty.clone(),
            );
            let y = binary(b, "Multiply", mvn, ins[1].clone(), ty.clone());
            if *has_bias {
                binary(b, "Add", y, ins[2].clone(), ty)
            } else {
                y
            }
        }
        Op::Gelu { approximate } => activation_of(
            b,
            ins[0].clone(),
            if *approximate {
                Activation::GeluTanh
            } else {
                Activation::Gelu
            },
        ),
        Op::Linear {
            activation: act,
            has_bias,
            has_residual,
        } => {
            let mm_ty = ty.clone();
            let mut y = b.layer(
                "MatMul",
                "opset1",
                attrs(&[
                    ("transpose_a", "false".into()),
                    ("transpose_b", "false".into()),
                ]),
                ins[..2].to_vec(),
                mm_ty,
            );
            let mut k = 2;
            if *has_bias {
                y = binary(b, "Add", y, ins[k].clone(), ty.clone());
                k += 1;
            }
            y = activation_of(b, y, *act);
            if *has_residual {
                y = binary(b, "Add", y, ins[k].clone(), ty);
            }
            y
        }
        Op::Attention {
            heads,
            scale,
            q_layout,
            k_layout,
            v_layout,
            out_layout,
            has_bias,
            has_mask,
        } => {
            let q = to_bhsd(b, ins[0].clone(), *q_layout, *heads);
            let vv = to_bhsd(b, ins[2].clone(), *v_layout, *heads);
            if !has_bias && !has_mask {
                // MatMul(Q, Kᵀ) → SoftMax → MatMul(·, V): the CPU plugin fuses this into the
                // same attention kernel as SDPA, but reads K as [B, H, S, D] with the
                // transpose inside that kernel, where SDPA has it copy Kᵀ out first.
                let (kk, tb) = match k_layout {
                    AttnLayout::Bhds => (ins[1].clone(), false),
                    l => (to_bhsd(b, ins[1].clone(), *l, *heads), true),
                };
                let (bb, h, sq) = (q.ty.shape[0], q.ty.shape[1], q.ty.shape[2]);
                let sk = vv.ty.shape[2];
                let s_ty = vitc_ir::TensorType::new(vec![bb, h, sq, sk], DType::F32);
                let mut s = matmul(b, q, kk, false, tb, s_ty.clone());
                if *scale != 1.0 {
                    let sc = b.scalar_f32(*scale);
                    s = binary(b, "Multiply", s, sc, s_ty.clone());
                }
                let p = b.layer(
                    "SoftMax",
                    "opset8",
                    attrs(&[("axis", "3".into())]),
                    vec![s],
                    s_ty,
                );
                let o_ty = vitc_ir::TensorType::new(vec![bb, h, sq, vv.ty.shape[3]], DType::F32);
                let o = matmul(b, p, vv, false, false, o_ty);
                return Ok(from_bhsd(b, o, *out_layout));
            }
            let kk = to_bhsd(b, ins[1].clone(), *k_layout, *heads);
            let mut k = 3;
            let bias = has_bias.then(|| {
                k += 1;
                ins[k - 1].clone()
            });
            let mask = has_mask.then(|| ins[k].clone());
            let am = match (bias, mask) {
                (None, None) => b.scalar_f32(0.0),
                (Some(bias), None) => bias,
                (None, Some(mask)) => mask,
                (Some(bias), Some(mask)) => {
                    let ninf = b.scalar_f32(f32::NEG_INFINITY);
                    let shape = vitc_ir::infer::broadcast_shapes(&bias.ty.shape, &mask.ty.shape)
                        .map_err(|e| unsupported(m, v, e))?;
                    let t = vitc_ir::TensorType::new(shape, DType::F32);
                    b.layer(
                        "Select",
                        "opset1",
                        attrs(&[("auto_broadcast", "numpy".into())]),
                        vec![mask, bias, ninf],
                        t,
                    )
                }
            };
            let sc = b.scalar_f32(*scale);
            let (bb, h, sq) = (q.ty.shape[0], q.ty.shape[1], q.ty.shape[2]);
            let dv = vv.ty.shape[3];
            let o_ty = vitc_ir::TensorType::new(vec![bb, h, sq, dv], DType::F32);
            let o = b.layer(
                "ScaledDotProductAttention",
                "opset13",
                attrs(&[("causal", "false".into())]),
                vec![q, kk, vv, am, sc],
                o_ty,
            );
            from_bhsd(b, o, *out_layout)
        }
        Op::LinearAttention { .. } => {
            // translate() expands it into primitive ops before lowering anything.
            return Err(unsupported(m, v, "linear attention must be expanded first"));
        }
        Op::Quantize { axis, to } => {
            // x / s + z, rounded half to even, clamped, converted.
            let (qmin, qmax) = qrange(*to)
                .ok_or_else(|| unsupported(m, v, format!("quantized type {}", to.name())))?;
            let x = &ins[0];
            let (s, z) = (
                per_axis(b, m, n.inputs[1], &ins[1], *axis, x.ty.shape.len()),
                per_axis(b, m, n.inputs[2], &ins[2], *axis, x.ty.shape.len()),
            );
            let fty = x.ty.clone();
            let d = binary(b, "Divide", x.clone(), s, fty.clone());
            let r = b.layer(
                "Round",
                "opset5",
                attrs(&[("mode", "half_to_even".into())]),
                vec![d],
                fty.clone(),
            );
            let a = binary(b, "Add", r, z, fty.clone());
            let c = b.layer(
                "Clamp",
                "opset1",
                attrs(&[("min", fmt_f32(qmin as f32)), ("max", fmt_f32(qmax as f32))]),
                vec![a],
                fty,
            );
            b.layer(
                "Convert",
                "opset1",
                attrs(&[("destination_type", xml::elem(*to).into())]),
                vec![c],
                ty,
            )
        }
        Op::Dequantize { axis } => {
            let x = &ins[0];
            let rank = x.ty.shape.len();
            let fty = vitc_ir::TensorType::new(x.ty.shape.clone(), DType::F32);
            let c = b.layer(
                "Convert",
                "opset1",
                attrs(&[("destination_type", "f32".into())]),
                vec![x.clone()],
                fty.clone(),
            );
            let z = per_axis(b, m, n.inputs[2], &ins[2], *axis, rank);
            let s = per_axis(b, m, n.inputs[1], &ins[1], *axis, rank);
            let d = if is_zero(m, n.inputs[2]) {
                c
            } else {
                binary(b, "Subtract", c, z, fty.clone())
            };
            binary(b, "Multiply", d, s, ty)
        }
        Op::QLinear {
            x_scale,
            x_zero_point,
            x_type,
            has_bias,
        } => {
            let x = fake_quant(
                b,
                ins[0].clone(),
                *x_scale as f64,
                *x_zero_point as f64,
                *x_type,
            )
            .ok_or_else(|| unsupported(m, v, format!("activation type {}", x_type.name())))?;
            // Weights: int8 constant -> Convert -> (Subtract zero point) -> Multiply scale,
            // the decompression OpenVINO's low-precision transformations fold into int8 GEMM.
            let w = &ins[1];
            let wty = vitc_ir::TensorType::new(w.ty.shape.clone(), DType::F32);
            let wc = b.layer(
                "Convert",
                "opset1",
                attrs(&[("destination_type", "f32".into())]),
                vec![w.clone()],
                wty.clone(),
            );
            let wz = if is_zero(m, n.inputs[3]) {
                wc
            } else {
                let z = const_f32_like(b, m, n.inputs[3]).unwrap_or_else(|| ins[3].clone());
                binary(b, "Subtract", wc, z, wty.clone())
            };
            let ws = binary(b, "Multiply", wz, ins[2].clone(), wty);
            let mut y = b.layer(
                "MatMul",
                "opset1",
                attrs(&[
                    ("transpose_a", "false".into()),
                    ("transpose_b", "false".into()),
                ]),
                vec![x, ws],
                ty.clone(),
            );
            if *has_bias {
                y = binary(b, "Add", y, ins[4].clone(), ty);
            }
            y
        }
    })
}

fn is_zero(m: &Module, v: ValueId) -> bool {
    m.constant(v)
        .is_some_and(|t| t.to_f64_vec().iter().all(|&x| x == 0.0))
}

/// A per-channel quantization parameter reshaped to broadcast along `axis` of a rank-`rank`
/// tensor (per-tensor ones pass through); zero points become f32.
fn per_axis(
    b: &mut Builder,
    m: &Module,
    v: ValueId,
    p: &Port,
    axis: Option<usize>,
    rank: usize,
) -> Port {
    let p = if p.ty.dtype != DType::F32 {
        match const_f32_like(b, m, v) {
            Some(c) => c,
            None => {
                let t = vitc_ir::TensorType::new(p.ty.shape.clone(), DType::F32);
                b.layer(
                    "Convert",
                    "opset1",
                    attrs(&[("destination_type", "f32".into())]),
                    vec![p.clone()],
                    t,
                )
            }
        }
    } else {
        p.clone()
    };
    match axis {
        Some(a) if p.ty.shape.len() == 1 && a + 1 < rank => {
            let mut s = vec![1; rank];
            s[a] = p.ty.shape[0];
            reshape(b, p, &s)
        }
        _ => p,
    }
}

pub(crate) fn fmt_f32(x: f32) -> String {
    if x.is_finite() {
        format!("{x:?}")
    } else if x > 0.0 {
        "inf".into()
    } else if x < 0.0 {
        "-inf".into()
    } else {
        "nan".into()
    }
}
