//! vitc's TensorRT target. TensorRT has no CPU and builds its engine on the device, so this
//! target writes what the device needs to build one: `model.onnx` in the form TensorRT's
//! parser fuses best, `build.sh` running `trtexec`, and `manifest.json` (inputs, outputs,
//! precisions, the command).
//!
//! The form: opset 17, static shapes everywhere; `vit.layer_norm` as `LayerNormalization`;
//! `vit.attention` spelled as the MatMul–Softmax–MatMul chain with the scale multiplied into
//! Q before the first MatMul, the pattern TensorRT's MHA fusion matches; `vit.gelu` as the erf
//! formula TensorRT's GELU fusion matches; `vit.linear` as MatMul with its epilogue; int8 as
//! explicit QuantizeLinear/DequantizeLinear pairs in front of each quantized MatMul and int8
//! weights behind a DequantizeLinear. TensorRT quantizes symmetrically only, so (by default)
//! an asymmetric or uint8 activation quantization is rewritten as the int8 symmetric one that
//! covers the same range, and a weight with non-zero zero points is dequantized to f32; the
//! manifest counts both. Nothing here runs TensorRT.

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use protobuf::{EnumOrUnknown, Message, MessageField};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vitc_ir::{
    Activation, AttnLayout, BinaryOp, DType, Data, Module, Op, ReduceOp, Tensor, UnaryOp, ValueId,
};

/// The ONNX opset written.
pub const OPSET: i64 = 17;

/// Why a module could not be written for TensorRT.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("target tensorrt: unsupported op {op} at {node}: {why}")]
    Unsupported {
        op: String,
        node: String,
        why: String,
    },
    #[error("target tensorrt: the module does not verify: {0}")]
    Invalid(#[from] vitc_ir::IrError),
    #[error("target tensorrt: cannot serialise the ONNX model: {0}")]
    Encode(String),
    #[error("target tensorrt: cannot write {path}: {err}")]
    Io { path: String, err: std::io::Error },
}

/// Choices of the written form.
#[derive(Clone, Debug)]
pub struct Options {
    /// Rewrite asymmetric / uint8 activation quantization as symmetric int8 over the same
    /// range (TensorRT accepts zero zero points only). Off keeps the model's parameters.
    pub symmetric_int8: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            symmetric_int8: true,
        }
    }
}

/// The three build inputs, in memory.
pub struct BuildInputs {
    pub onnx: ModelProto,
    pub build_sh: String,
    pub manifest: serde_json::Value,
}

/// A value of the graph being written: its ONNX name, shape and element type.
#[derive(Clone, Debug)]
struct V {
    name: String,
    shape: Vec<usize>,
    dtype: DType,
}

fn onnx_type(t: DType) -> DataType {
    match t {
        DType::F32 => DataType::FLOAT,
        DType::F16 => DataType::FLOAT16,
        DType::BF16 => DataType::BFLOAT16,
        DType::I8 => DataType::INT8,
        DType::U8 => DataType::UINT8,
        DType::I32 => DataType::INT32,
        DType::I64 => DataType::INT64,
        DType::Bool => DataType::BOOL,
    }
}

fn attr_i(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(AttributeType::INT);
    a.i = v;
    a
}

fn attr_f(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(AttributeType::FLOAT);
    a.f = v;
    a
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(AttributeType::INTS);
    a.ints = v.to_vec();
    a
}

fn ints(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

struct G {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    count: usize,
    requantized: usize,
    dequantized_weights: usize,
    int8: bool,
}

impl G {
    fn fresh(&mut self, hint: &str) -> String {
        self.count += 1;
        format!("{hint}_{}", self.count)
    }

    fn node(
        &mut self,
        op: &str,
        inputs: &[&V],
        attrs: Vec<AttributeProto>,
        shape: Vec<usize>,
        dtype: DType,
    ) -> V {
        let out = self.fresh(&op.to_lowercase());
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = format!("{out}_node");
        n.input = inputs.iter().map(|v| v.name.clone()).collect();
        n.output = vec![out.clone()];
        n.attribute = attrs;
        self.nodes.push(n);
        V {
            name: out,
            shape,
            dtype,
        }
    }

    /// Same shape and type as `x`.
    fn like(&mut self, op: &str, inputs: &[&V], attrs: Vec<AttributeProto>) -> V {
        let (s, d) = (inputs[0].shape.clone(), inputs[0].dtype);
        self.node(op, inputs, attrs, s, d)
    }

    fn init(&mut self, t: &Tensor, hint: &str) -> V {
        let name = self.fresh(hint);
        let mut p = TensorProto::new();
        p.name = name.clone();
        p.dims = ints(&t.shape);
        p.data_type = onnx_type(t.dtype()) as i32;
        p.raw_data = t.data.to_le_bytes();
        self.inits.push(p);
        V {
            name,
            shape: t.shape.clone(),
            dtype: t.dtype(),
        }
    }

    fn i64s(&mut self, v: &[i64]) -> V {
        self.init(&Tensor::i64(vec![v.len()], v.to_vec()), "shape")
    }

    fn scalar(&mut self, x: f32) -> V {
        self.init(&Tensor::scalar_f32(x), "scalar")
    }

    fn reshape(&mut self, x: &V, shape: &[usize]) -> V {
        let s = self.i64s(&ints(shape));
        self.node("Reshape", &[x, &s], vec![], shape.to_vec(), x.dtype)
    }

    fn transpose(&mut self, x: &V, perm: &[usize]) -> V {
        let shape = perm.iter().map(|&i| x.shape[i]).collect();
        self.node(
            "Transpose",
            &[x],
            vec![attr_ints("perm", &ints(perm))],
            shape,
            x.dtype,
        )
    }

    fn bin(&mut self, op: &str, a: &V, b: &V) -> V {
        let shape = vitc_ir::infer::broadcast_shapes(&a.shape, &b.shape)
            .unwrap_or_else(|_| a.shape.clone());
        self.node(op, &[a, b], vec![], shape, a.dtype)
    }

    fn gelu(&mut self, x: &V, approximate: bool) -> V {
        let half = self.scalar(0.5);
        let one = self.scalar(1.0);
        let inner = if approximate {
            let c = self.scalar(0.044715);
            let k = self.scalar((2.0f64 / std::f64::consts::PI).sqrt() as f32);
            let x2 = self.bin("Mul", x, x);
            let x3 = self.bin("Mul", &x2, x);
            let cx3 = self.bin("Mul", &x3, &c);
            let s = self.bin("Add", x, &cx3);
            let ks = self.bin("Mul", &s, &k);
            self.like("Tanh", &[&ks], vec![])
        } else {
            let r2 = self.scalar(std::f32::consts::SQRT_2);
            let d = self.bin("Div", x, &r2);
            self.like("Erf", &[&d], vec![])
        };
        let p = self.bin("Add", &inner, &one);
        let xp = self.bin("Mul", x, &p);
        self.bin("Mul", &xp, &half)
    }

    fn activation(&mut self, x: V, a: Activation) -> V {
        match a {
            Activation::None => x,
            Activation::Gelu => self.gelu(&x, false),
            Activation::GeluTanh => self.gelu(&x, true),
            Activation::Relu => self.like("Relu", &[&x], vec![]),
            Activation::HardSwish => self.like("HardSwish", &[&x], vec![]),
            Activation::Silu => {
                let s = self.like("Sigmoid", &[&x], vec![]);
                self.bin("Mul", &x, &s)
            }
            Activation::Sigmoid => self.like("Sigmoid", &[&x], vec![]),
        }
    }

    /// Q then DQ with per-tensor (scale, zero point) of type `t`.
    fn qdq(&mut self, x: &V, scale: f32, zp: i64, t: DType) -> V {
        self.int8 = true;
        let s = self.scalar(scale);
        let z = self.init(
            &Tensor::new(Vec::<usize>::new(), Data::from_i64(t, std::iter::once(zp))),
            "zero_point",
        );
        let q = self.node("QuantizeLinear", &[x, &s, &z], vec![], x.shape.clone(), t);
        self.node(
            "DequantizeLinear",
            &[&q, &s, &z],
            vec![],
            x.shape.clone(),
            DType::F32,
        )
    }
}

/// The symmetric int8 parameters covering the range of (scale, zero point, type).
fn symmetric(scale: f64, zp: f64, t: DType) -> Option<(f32, i64, DType)> {
    let (qmin, qmax) = match t {
        DType::I8 => (-128.0, 127.0),
        DType::U8 => (0.0, 255.0),
        _ => return None,
    };
    if t == DType::I8 && zp == 0.0 {
        return Some((scale as f32, 0, DType::I8));
    }
    let m = ((qmin - zp) * scale).abs().max(((qmax - zp) * scale).abs());
    Some(((m / 127.0) as f32, 0, DType::I8))
}

fn scalar_of(m: &Module, v: ValueId) -> Option<f64> {
    let t = m.constant(v)?;
    (t.numel() == 1).then(|| t.data.get_f64(0))
}

fn is_zero(m: &Module, v: ValueId) -> bool {
    m.constant(v)
        .is_some_and(|t| t.to_f64_vec().iter().all(|&x| x == 0.0))
}

fn unsupported(m: &Module, v: ValueId, why: impl Into<String>) -> Error {
    let n = m.node(v);
    Error::Unsupported {
        op: n.op.name(),
        node: n.name.clone(),
        why: why.into(),
    }
}

fn vi(v: &V, name: &str) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for &d in &v.shape {
        let mut dim = Dimension::new();
        dim.value = Some(dimension::Value::DimValue(d as i64));
        shape.dim.push(dim);
    }
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = onnx_type(v.dtype) as i32;
    tt.shape = MessageField::some(shape);
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(tt));
    let mut p = ValueInfoProto::new();
    p.name = name.into();
    p.type_ = MessageField::some(tp);
    p
}

fn to_bhsd(g: &mut G, x: &V, layout: AttnLayout, heads: usize, kt: bool) -> V {
    // `kt`: the result is wanted as [B, H, D, S] (Kᵀ for the first MatMul).
    match (layout, kt) {
        (AttnLayout::Bhsd, false) | (AttnLayout::Bhds, true) => x.clone(),
        (AttnLayout::Bhsd, true) | (AttnLayout::Bhds, false) => g.transpose(x, &[0, 1, 3, 2]),
        (AttnLayout::Bshd, false) => g.transpose(x, &[0, 2, 1, 3]),
        (AttnLayout::Bshd, true) => g.transpose(x, &[0, 2, 3, 1]),
        (AttnLayout::Bsd, _) => {
            let (b, s, hd) = (x.shape[0], x.shape[1], x.shape[2]);
            let r = g.reshape(x, &[b, s, heads, hd / heads.max(1)]);
            g.transpose(&r, if kt { &[0, 2, 3, 1] } else { &[0, 2, 1, 3] })
        }
    }
}

fn from_bhsd(g: &mut G, x: &V, layout: AttnLayout) -> V {
    match layout {
        AttnLayout::Bhsd => x.clone(),
        AttnLayout::Bhds => g.transpose(x, &[0, 1, 3, 2]),
        AttnLayout::Bshd => g.transpose(x, &[0, 2, 1, 3]),
        AttnLayout::Bsd => {
            let t = g.transpose(x, &[0, 2, 1, 3]);
            let s = t.shape.clone();
            g.reshape(&t, &[s[0], s[1], s[2] * s[3]])
        }
    }
}

/// Translate a module into the TensorRT build inputs.
pub fn translate(m: &Module, opts: &Options) -> Result<BuildInputs, Error> {
    vitc_ir::verify(m)?;
    // ONNX has no linear attention op: write the primitive ops it is made of.
    let expanded = vitc_ir::expand::expand_linear_attention(m)?;
    let m = &expanded;
    let mut g = G {
        nodes: vec![],
        inits: vec![],
        count: 0,
        requantized: 0,
        dequantized_weights: 0,
        int8: false,
    };
    let mut vals: Vec<Option<V>> = vec![None; m.nodes.len()];
    // Per quantize node: the (scale, zero point, type) actually written.
    let mut qparams: HashMap<usize, (f32, i64, DType)> = HashMap::new();
    let mut graph_inputs = vec![];
    for (i, n) in m.nodes.iter().enumerate() {
        let v = ValueId(i);
        let ins: Vec<V> = n
            .inputs
            .iter()
            .map(|u| {
                vals[u.0]
                    .clone()
                    .ok_or_else(|| unsupported(m, v, "operand not lowered"))
            })
            .collect::<Result<_, _>>()?;
        let shape = n.ty.shape.clone();
        let dt = n.ty.dtype;
        let out = match &n.op {
            Op::Input { .. } => {
                let x = V {
                    name: n.name.clone(),
                    shape,
                    dtype: dt,
                };
                graph_inputs.push(vi(&x, &n.name));
                x
            }
            Op::Constant { .. } => match m.constant(v) {
                Some(t) => g.init(t, "w"),
                None => return Err(unsupported(m, v, "constant missing from the table")),
            },
            Op::Unary(u) => {
                let op = match u {
                    UnaryOp::Neg => "Neg",
                    UnaryOp::Abs => "Abs",
                    UnaryOp::Sqrt => "Sqrt",
                    UnaryOp::Reciprocal => "Reciprocal",
                    UnaryOp::Exp => "Exp",
                    UnaryOp::Log => "Log",
                    UnaryOp::Erf => "Erf",
                    UnaryOp::Tanh => "Tanh",
                    UnaryOp::Sigmoid => "Sigmoid",
                    UnaryOp::Relu => "Relu",
                    UnaryOp::HardSwish => "HardSwish",
                    UnaryOp::Floor => "Floor",
                    UnaryOp::Ceil => "Ceil",
                    UnaryOp::Round => "Round",
                    UnaryOp::Not => "Not",
                    UnaryOp::Rsqrt => {
                        let s = g.like("Sqrt", &[&ins[0]], vec![]);
                        vals[i] = Some(g.like("Reciprocal", &[&s], vec![]));
                        continue;
                    }
                    UnaryOp::HardSigmoid => {
                        let a = vec![attr_f("alpha", 1.0 / 6.0), attr_f("beta", 0.5)];
                        vals[i] = Some(g.like("HardSigmoid", &[&ins[0]], a));
                        continue;
                    }
                    UnaryOp::Silu => {
                        vals[i] = Some(g.activation(ins[0].clone(), Activation::Silu));
                        continue;
                    }
                };
                g.like(op, &[&ins[0]], vec![])
            }
            Op::Binary(b) => {
                let (op, attrs) = match b {
                    BinaryOp::Add => ("Add", vec![]),
                    BinaryOp::Sub => ("Sub", vec![]),
                    BinaryOp::Mul => ("Mul", vec![]),
                    BinaryOp::Div => ("Div", vec![]),
                    BinaryOp::Pow => ("Pow", vec![]),
                    BinaryOp::Mod => ("Mod", vec![attr_i("fmod", 0)]),
                    BinaryOp::Max => ("Max", vec![]),
                    BinaryOp::Min => ("Min", vec![]),
                    BinaryOp::Equal => ("Equal", vec![]),
                    BinaryOp::Less => ("Less", vec![]),
                    BinaryOp::Greater => ("Greater", vec![]),
                    BinaryOp::And => ("And", vec![]),
                    BinaryOp::Or => ("Or", vec![]),
                };
                g.node(op, &[&ins[0], &ins[1]], attrs, shape, dt)
            }
            Op::Where => g.node("Where", &[&ins[0], &ins[1], &ins[2]], vec![], shape, dt),
            Op::Clip { min, max } => {
                let empty = V {
                    name: String::new(),
                    shape: vec![],
                    dtype: DType::F32,
                };
                let lo = min.map(|x| g.scalar(x)).unwrap_or_else(|| empty.clone());
                let hi = max.map(|x| g.scalar(x)).unwrap_or(empty);
                g.like("Clip", &[&ins[0], &lo, &hi], vec![])
            }
            Op::Cast { to } => g.node(
                "Cast",
                &[&ins[0]],
                vec![attr_i("to", onnx_type(*to) as i64)],
                shape,
                dt,
            ),
            Op::MatMul => g.node("MatMul", &[&ins[0], &ins[1]], vec![], shape, dt),
            Op::Conv {
                strides,
                pads,
                dilations,
                group,
                activation,
                has_bias,
            } => {
                let a = vec![
                    attr_ints("strides", &ints(strides)),
                    attr_ints("pads", &ints(pads)),
                    attr_ints("dilations", &ints(dilations)),
                    attr_i("group", *group as i64),
                ];
                let refs: Vec<&V> = ins.iter().take(2 + *has_bias as usize).collect();
                let y = g.node("Conv", &refs, a, shape, dt);
                // The fused epilogue as a layer of its own after the convolution.
                g.activation(y, *activation)
            }
            Op::Reduce { op, axes, keepdims } => {
                let name = match op {
                    ReduceOp::Sum => "ReduceSum",
                    ReduceOp::Mean => "ReduceMean",
                    ReduceOp::Max => "ReduceMax",
                    ReduceOp::Min => "ReduceMin",
                    ReduceOp::Prod => "ReduceProd",
                };
                let kd = attr_i("keepdims", *keepdims as i64);
                if *op == ReduceOp::Sum {
                    let ax = g.i64s(&ints(axes));
                    g.node(name, &[&ins[0], &ax], vec![kd], shape, dt)
                } else {
                    g.node(
                        name,
                        &[&ins[0]],
                        vec![attr_ints("axes", &ints(axes)), kd],
                        shape,
                        dt,
                    )
                }
            }
            Op::Softmax { axis } => {
                g.like("Softmax", &[&ins[0]], vec![attr_i("axis", *axis as i64)])
            }
            Op::Reshape { shape } => g.reshape(&ins[0], shape),
            Op::Broadcast { shape } => {
                let s = g.i64s(&ints(shape));
                g.node("Expand", &[&ins[0], &s], vec![], shape.clone(), dt)
            }
            Op::Transpose { perm } => g.transpose(&ins[0], perm),
            Op::Slice {
                starts,
                ends,
                steps,
            } => {
                let ends: Vec<i64> = ends
                    .iter()
                    .zip(steps)
                    .map(|(&e, &s)| if s < 0 && e < 0 { i64::MIN } else { e })
                    .collect();
                let axes: Vec<i64> = (0..starts.len() as i64).collect();
                let (a, b, c, d) = (g.i64s(starts), g.i64s(&ends), g.i64s(&axes), g.i64s(steps));
                g.node("Slice", &[&ins[0], &a, &b, &c, &d], vec![], shape, dt)
            }
            Op::Concat { axis } => {
                let refs: Vec<&V> = ins.iter().collect();
                g.node(
                    "Concat",
                    &refs,
                    vec![attr_i("axis", *axis as i64)],
                    shape,
                    dt,
                )
            }
            Op::Gather { axis } => g.node(
                "Gather",
                &[&ins[0], &ins[1]],
                vec![attr_i("axis", *axis as i64)],
                shape,
                dt,
            ),
            Op::GatherElements { axis } => g.node(
                "GatherElements",
                &[&ins[0], &ins[1]],
                vec![attr_i("axis", *axis as i64)],
                shape,
                dt,
            ),
            Op::Pad { pads, value } => {
                let p = g.i64s(&ints(pads));
                let c = g.init(
                    &Tensor::new(
                        Vec::<usize>::new(),
                        Data::from_f64(dt, std::iter::once(*value as f64)),
                    ),
                    "pad_value",
                );
                g.node("Pad", &[&ins[0], &p, &c], vec![], shape, dt)
            }
            Op::LayerNorm {
                axis,
                epsilon,
                has_bias,
            } => {
                let norm: Vec<usize> = shape[*axis..].to_vec();
                let numel: usize = norm.iter().product();
                let a = vec![attr_i("axis", *axis as i64), attr_f("epsilon", *epsilon)];
                // LayerNormalization wants scale and bias of the normalised shape; anything
                // else (a broadcast scalar) is applied after a unit-scale normalisation.
                let fit = |g: &mut G, p: &V| -> Option<V> {
                    (p.shape.iter().product::<usize>() == numel).then(|| {
                        if p.shape == norm {
                            p.clone()
                        } else {
                            g.reshape(p, &norm)
                        }
                    })
                };
                let sc = fit(&mut g, &ins[1]);
                let bi = if *has_bias {
                    fit(&mut g, &ins[2])
                } else {
                    None
                };
                let ones = Tensor::f32(norm.clone(), vec![1.0; numel]);
                let s = match &sc {
                    Some(s) => s.clone(),
                    None => g.init(&ones, "ln_scale"),
                };
                let mut refs = vec![&ins[0], &s];
                if let Some(b) = &bi {
                    refs.push(b);
                }
                let mut y = g.node("LayerNormalization", &refs, a, shape, dt);
                if sc.is_none() {
                    y = g.bin("Mul", &y, &ins[1]);
                }
                if *has_bias && bi.is_none() {
                    y = g.bin("Add", &y, &ins[2]);
                }
                y
            }
            Op::Gelu { approximate } => g.gelu(&ins[0], *approximate),
            Op::Linear {
                activation,
                has_bias,
                has_residual,
            } => {
                let mut y = g.node("MatMul", &[&ins[0], &ins[1]], vec![], shape, dt);
                let mut k = 2;
                if *has_bias {
                    y = g.bin("Add", &y, &ins[k]);
                    k += 1;
                }
                y = g.activation(y, *activation);
                if *has_residual {
                    y = g.bin("Add", &y, &ins[k]);
                }
                y
            }
            Op::LinearAttention { .. } => {
                return Err(unsupported(m, v, "expanded into primitive ops above"))
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
                let mut q = to_bhsd(&mut g, &ins[0], *q_layout, *heads, false);
                let kt = to_bhsd(&mut g, &ins[1], *k_layout, *heads, true);
                let vv = to_bhsd(&mut g, &ins[2], *v_layout, *heads, false);
                if *scale != 1.0 {
                    let s = g.scalar(*scale);
                    q = g.bin("Mul", &q, &s);
                }
                let sh = vec![q.shape[0], q.shape[1], q.shape[2], kt.shape[3]];
                let mut s = g.node("MatMul", &[&q, &kt], vec![], sh, DType::F32);
                let mut k = 3;
                if *has_bias {
                    s = g.bin("Add", &s, &ins[k]);
                    k += 1;
                }
                if *has_mask {
                    let ninf = g.scalar(f32::NEG_INFINITY);
                    let sh = s.shape.clone();
                    s = g.node("Where", &[&ins[k], &s, &ninf], vec![], sh, DType::F32);
                }
                let p = g.like("Softmax", &[&s], vec![attr_i("axis", -1)]);
                let osh = vec![p.shape[0], p.shape[1], p.shape[2], vv.shape[3]];
                let o = g.node("MatMul", &[&p, &vv], vec![], osh, DType::F32);
                from_bhsd(&mut g, &o, *out_layout)
            }
            Op::Quantize { axis, to } => {
                let (s, z) = (scalar_of(m, n.inputs[1]), scalar_of(m, n.inputs[2]));
                let keep = !opts.symmetric_int8 || (*to == DType::I8 && is_zero(m, n.inputs[2]));
                let (sv, zv, t) = match (s, z, keep) {
                    (_, _, true) => (ins[1].clone(), ins[2].clone(), *to),
                    (Some(s), Some(z), false) if axis.is_none() => {
                        let (s2, z2, t2) = symmetric(s, z, *to).ok_or_else(|| {
                            unsupported(m, v, format!("quantized type {}", to.name()))
                        })?;
                        g.requantized += 1;
                        qparams.insert(i, (s2, z2, t2));
                        let sv = g.scalar(s2);
                        let zv = g.init(
                            &Tensor::new(
                                Vec::<usize>::new(),
                                Data::from_i64(t2, std::iter::once(z2)),
                            ),
                            "zero_point",
                        );
                        (sv, zv, t2)
                    }
                    _ => {
                        return Err(unsupported(
                            m,
                            v,
                            "an asymmetric quantization needs constant per-tensor parameters",
                        ))
                    }
                };
                g.int8 = true;
                let a = axis
                    .map(|a| vec![attr_i("axis", a as i64)])
                    .unwrap_or_default();
                g.node("QuantizeLinear", &[&ins[0], &sv, &zv], a, shape, t)
            }
            Op::Dequantize { axis } => {
                let src = n.inputs[0];
                g.int8 = true;
                if let Some(&(s2, z2, t2)) = qparams.get(&src.0) {
                    // The matching side of a rewritten quantization.
                    let sv = g.scalar(s2);
                    let zv = g.init(
                        &Tensor::new(Vec::<usize>::new(), Data::from_i64(t2, std::iter::once(z2))),
                        "zero_point",
                    );
                    g.node("DequantizeLinear", &[&ins[0], &sv, &zv], vec![], shape, dt)
                } else if opts.symmetric_int8
                    && !is_zero(m, n.inputs[2])
                    && m.constant(src).is_some()
                {
                    // A weight with zero points TensorRT cannot take: store it dequantized.
                    let mut c = Module::new("fold");
                    let ids: Vec<ValueId> = n
                        .inputs
                        .iter()
                        .map(|&u| {
                            let t = m.constant(u).map(|t| (**t).clone());
                            t.map(|t| c.add_constant("c", t))
                        })
                        .collect::<Option<_>>()
                        .ok_or_else(|| {
                            unsupported(m, v, "dequantization parameters must be constants")
                        })?;
                    let y = c.add(n.op.clone(), ids, "dq")?;
                    c.outputs.push(("y".into(), y));
                    let out = vitc_ir::run(&c, &[])?;
                    g.dequantized_weights += 1;
                    match out.into_iter().next() {
                        Some(t) => g.init(&t, "w_dequantized"),
                        None => return Err(unsupported(m, v, "folding gave no value")),
                    }
                } else {
                    let a = axis
                        .map(|a| vec![attr_i("axis", a as i64)])
                        .unwrap_or_default();
                    g.node(
                        "DequantizeLinear",
                        &[&ins[0], &ins[1], &ins[2]],
                        a,
                        shape,
                        dt,
                    )
                }
            }
            Op::QLinear {
                x_scale,
                x_zero_point,
                x_type,
                has_bias,
            } => {
                let (s, z, t) = if opts.symmetric_int8 {
                    let p = symmetric(*x_scale as f64, *x_zero_point as f64, *x_type).ok_or_else(
                        || unsupported(m, v, format!("activation type {}", x_type.name())),
                    )?;
                    if p.0 != *x_scale || *x_zero_point != 0 || *x_type != DType::I8 {
                        g.requantized += 1;
                    }
                    p
                } else {
                    (*x_scale, *x_zero_point as i64, *x_type)
                };
                let x = g.qdq(&ins[0], s, z, t);
                let w = if opts.symmetric_int8 && !is_zero(m, n.inputs[3]) {
                    let (Some(w), Some(ws), Some(wz)) = (
                        m.constant(n.inputs[1]),
                        m.constant(n.inputs[2]),
                        m.constant(n.inputs[3]),
                    ) else {
                        return Err(unsupported(
                            m,
                            v,
                            "weights with zero points must be constants",
                        ));
                    };
                    let (kk, nn) = (w.shape[0], w.shape[1]);
                    let (wv, sv, zv) = (w.to_f64_vec(), ws.to_f64_vec(), wz.to_f64_vec());
                    let per = |p: &[f64], j: usize| if p.len() == 1 { p[0] } else { p[j] };
                    let f: Vec<f32> = (0..kk * nn)
                        .map(|e| ((wv[e] - per(&zv, e % nn)) * per(&sv, e % nn)) as f32)
                        .collect();
                    g.dequantized_weights += 1;
                    g.init(&Tensor::f32(vec![kk, nn], f), "w_dequantized")
                } else {
                    let per_channel = ins[2].shape.iter().product::<usize>() > 1;
                    let (sv, zv) = if per_channel || ins[2].shape.is_empty() {
                        (ins[2].clone(), ins[3].clone())
                    } else {
                        (g.reshape(&ins[2], &[]), g.reshape(&ins[3], &[]))
                    };
                    let a = if per_channel {
                        vec![attr_i("axis", 1)]
                    } else {
                        vec![]
                    };
                    let sh = ins[1].shape.clone();
                    g.node("DequantizeLinear", &[&ins[1], &sv, &zv], a, sh, DType::F32)
                };
                let mut y = g.node("MatMul", &[&x, &w], vec![], shape, dt);
                if *has_bias {
                    y = g.bin("Add", &y, &ins[4]);
                }
                y
            }
        };
        vals[i] = Some(out);
    }

    let mut graph_outputs = vec![];
    let mut out_json = vec![];
    for (name, v) in &m.outputs {
        let x = vals[v.0]
            .clone()
            .ok_or_else(|| unsupported(m, *v, "output not lowered"))?;
        let mut n = NodeProto::new();
        n.op_type = "Identity".into();
        n.name = format!("{name}_identity");
        n.input = vec![x.name.clone()];
        n.output = vec![name.clone()];
        g.nodes.push(n);
        graph_outputs.push(vi(&x, name));
        out_json.push(serde_json::json!({"name": name, "shape": x.shape, "dtype": x.dtype.name()}));
    }
    let in_json: Vec<_> = m
        .inputs
        .iter()
        .map(|(name, v)| {
            let t = m.ty(*v);
            serde_json::json!({"name": name, "shape": t.shape, "dtype": t.dtype.name()})
        })
        .collect();

    let mut graph = GraphProto::new();
    graph.name = if m.name.is_empty() {
        "vitc".into()
    } else {
        m.name.clone()
    };
    graph.node = std::mem::take(&mut g.nodes);
    graph.initializer = std::mem::take(&mut g.inits);
    graph.input = graph_inputs;
    graph.output = graph_outputs;
    let mut model = ModelProto::new();
    model.ir_version = 8;
    model.producer_name = "vitc".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    let mut op = OperatorSetIdProto::new();
    op.domain = String::new();
    op.version = OPSET;
    model.opset_import = vec![op];
    model.graph = MessageField::some(graph);

    let cmd = trtexec_command(g.int8);
    let build_sh = format!(
        "#!/bin/sh\n\
         # Build the TensorRT engine for {name} on the device that will run it (TensorRT builds\n\
         # plans for the GPU it runs on; there is no CPU path). Written by vitc --target tensorrt.\n\
         set -e\n\
         cd \"$(dirname \"$0\")\"\n\
         {cmd} \"$@\"\n",
        name = m.name
    );
    let manifest = serde_json::json!({
        "model": m.name,
        "onnx": "model.onnx",
        "plan": "model.plan",
        "opset": OPSET,
        "inputs": in_json,
        "outputs": out_json,
        "precisions": if g.int8 { vec!["fp32", "int8"] } else { vec!["fp32"] },
        "strongly_typed": g.int8,
        "build_command": cmd,
        "int8_requantized_symmetric": g.requantized,
        "int8_weights_dequantized": g.dequantized_weights,
    });
    Ok(BuildInputs {
        onnx: model,
        build_sh,
        manifest,
    })
}

/// The `trtexec` command line `build.sh` runs (from the output directory).
pub fn trtexec_command(int8: bool) -> String {
    let mut c = String::from("trtexec --onnx=model.onnx --saveEngine=model.plan");
    if int8 {
        // Q/DQ models: TensorRT takes the precisions the graph states, no calibration.
        c.push_str(" --stronglyTyped");
    }
    c
}

/// Write `model.onnx`, `build.sh` and `manifest.json` into directory `dir`; returns the paths.
pub fn write(m: &Module, dir: &Path, opts: &Options) -> Result<Vec<PathBuf>, Error> {
    let b = translate(m, opts)?;
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |err| Error::Io { path, err }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let onnx = b
        .onnx
        .write_to_bytes()
        .map_err(|e| Error::Encode(e.to_string()))?;
    let paths = [
        dir.join("model.onnx"),
        dir.join("build.sh"),
        dir.join("manifest.json"),
    ];
    let manifest =
        serde_json::to_string_pretty(&b.manifest).map_err(|e| Error::Encode(e.to_string()))?;
    std::fs::write(&paths[0], onnx).map_err(io(&paths[0]))?;
    std::fs::write(&paths[1], b.build_sh).map_err(io(&paths[1]))?;
    std::fs::write(&paths[2], manifest + "\n").map_err(io(&paths[2]))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&paths[1], std::fs::Permissions::from_mode(0o755));
    }
    Ok(paths.to_vec())
}
