//! The reference interpreter: runs a vit IR module, or one op, on concrete tensors with ONNX
//! (onnxruntime) semantics. It is the numeric oracle every other layer is checked against: the
//! frontend folds shape arithmetic with [`eval`], rewrites are checked by running the IR before
//! and after them, and generated kernels are compared with it. It aims to be exact and plainly
//! right, not fast — only the matrix product is written with the cache in mind, so that tests
//! can run whole ViTs — and it is never how users run models; compiled code is.

// Most kernels here walk several arrays with one index computed by hand; iterator chains would
// hide the index arithmetic that has to match the ONNX definition.
#![allow(clippy::needless_range_loop)]

use std::borrow::Cow;
use std::f32::consts::{FRAC_1_SQRT_2, PI};
use std::ops::{AddAssign, Mul};
use std::sync::Arc;

use half::{bf16, f16};

use crate::error::IrError;
use crate::infer::infer_type;
use crate::module::{Module, Node};
use crate::op::{Activation, AttnLayout, BinaryOp, Op, ReduceOp, UnaryOp};
use crate::types::{checked_numel, strides, DType, Data, Tensor, TensorType};

type R<T> = Result<T, IrError>;

fn fail<T>(msg: impl Into<String>) -> R<T> {
    Err(IrError::Interp(msg.into()))
}

/// A live value: graph inputs and constants are borrowed or shared rather than copied, because
/// weights dominate a model's memory.
enum Val<'a> {
    Input(&'a Tensor),
    Constant(Arc<Tensor>),
    Computed(Tensor),
}

impl Val<'_> {
    fn tensor(&self) -> &Tensor {
        match self {
            Val::Input(t) => t,
            Val::Constant(t) => t,
            Val::Computed(t) => t,
        }
    }

    fn into_tensor(self) -> Tensor {
        match self {
            Val::Input(t) => t.clone(),
            Val::Constant(t) => Arc::unwrap_or_clone(t),
            Val::Computed(t) => t,
        }
    }
}

/// Run `m` on `inputs` (one per graph input, in order) and return its outputs in order.
///
/// Each input must have exactly the type of its `vit.input` node. Only the nodes some output
/// depends on are evaluated. Errors name the node (`%i (onnx name): vit.op: what`).
pub fn run(m: &Module, inputs: &[Tensor]) -> Result<Vec<Tensor>, IrError> {
    if inputs.len() != m.inputs.len() {
        return fail(format!(
            "module {} takes {} inputs, got {}",
            m.name,
            m.inputs.len(),
            inputs.len()
        ));
    }
    for (i, ((name, v), t)) in m.inputs.iter().zip(inputs).enumerate() {
        let want = match m.nodes.get(v.0) {
            Some(n) if n.op == (Op::Input { index: i }) => &n.ty,
            _ => return fail(format!("input {i} ({name}) has no matching vit.input node")),
        };
        check_tensor(t).map_err(|msg| IrError::Interp(format!("input {i} ({name}): {msg}")))?;
        if t.shape != want.shape || t.dtype() != want.dtype {
            return fail(format!("input {i} ({name}) must be {want}, got {}", t.ty()));
        }
    }
    for (name, v) in &m.outputs {
        if v.0 >= m.nodes.len() {
            return fail(format!("output {name} names undefined value {v}"));
        }
    }

    // Count only uses by nodes some output needs: dead nodes are skipped, and a value is freed
    // right after its last live use, so memory stays near the live set, not the whole graph.
    let mut uses = vec![0usize; m.nodes.len()];
    for (_, v) in &m.outputs {
        uses[v.0] += 1;
    }
    for (i, n) in m.nodes.iter().enumerate().rev() {
        if uses[i] == 0 {
            continue;
        }
        for v in &n.inputs {
            if v.0 >= i {
                return Err(at_node(
                    IrError::Interp(format!("operand {v} is not defined before use")),
                    i,
                    n,
                ));
            }
            uses[v.0] += 1;
        }
    }

    let mut vals: Vec<Option<Val>> = (0..m.nodes.len()).map(|_| None).collect();
    for (i, n) in m.nodes.iter().enumerate() {
        if uses[i] == 0 {
            continue;
        }
        let val = match &n.op {
            Op::Input { index } => {
                let listed = m.inputs.get(*index).is_some_and(|(_, v)| v.0 == i);
                match inputs.get(*index) {
                    Some(t) if listed => Val::Input(t),
                    _ => {
                        return Err(at_node(
                            IrError::Interp(format!("input {index} is not in the input list")),
                            i,
                            n,
                        ))
                    }
                }
            }
            Op::Constant { name } => {
                let c = m
                    .constants
                    .get(name)
                    .ok_or_else(|| IrError::MissingConstant(name.clone()))?;
                check_tensor(c)
                    .map_err(|msg| IrError::Interp(format!("constant @{name}: {msg}")))?;
                if c.ty() != n.ty {
                    let msg = format!("constant @{name} holds {}, its node says {}", c.ty(), n.ty);
                    return Err(at_node(IrError::Interp(msg), i, n));
                }
                Val::Constant(Arc::clone(c))
            }
            op => {
                let args = n
                    .inputs
                    .iter()
                    .map(|v| {
                        vals[v.0].as_ref().map(Val::tensor).ok_or_else(|| {
                            IrError::Interp(format!("operand {v} was freed before use"))
                        })
                    })
                    .collect::<R<Vec<&Tensor>>>()
                    .map_err(|e| at_node(e, i, n))?;
                Val::Computed(eval(op, &args, &n.ty).map_err(|e| at_node(e, i, n))?)
            }
        };
        vals[i] = Some(val);
        for v in &n.inputs {
            uses[v.0] -= 1;
            if uses[v.0] == 0 {
                vals[v.0] = None;
            }
        }
    }

    let mut outs = Vec::with_capacity(m.outputs.len());
    for (name, v) in &m.outputs {
        uses[v.0] -= 1;
        let t = if uses[v.0] == 0 {
            vals[v.0].take().map(Val::into_tensor)
        } else {
            vals[v.0].as_ref().map(|x| x.tensor().clone())
        };
        outs.push(t.ok_or_else(|| IrError::Interp(format!("output {name} ({v}) has no value")))?);
    }
    Ok(outs)
}

/// Prefix an interpreter error with the node it happened at.
fn at_node(e: IrError, i: usize, n: &Node) -> IrError {
    match e {
        IrError::Interp(msg) if n.name.is_empty() => IrError::Interp(format!("%{i}: {msg}")),
        IrError::Interp(msg) => IrError::Interp(format!("%{i} ({}): {msg}", n.name)),
        e => e,
    }
}

/// Evaluate one op on concrete operands; `out` is the node's (inferred) result type.
///
/// The operands are type-checked with [`infer_type`] and must give exactly `out`. Works on every
/// element type the op's type rule admits (integer and i1 operands included, for folding shape
/// arithmetic); `vit.input` and `vit.constant` have nothing to evaluate and are errors.
pub fn eval(op: &Op, inputs: &[&Tensor], out: &TensorType) -> Result<Tensor, IrError> {
    eval_checked(op, inputs, out).map_err(|e| match e {
        IrError::Interp(msg) => IrError::Interp(format!("{}: {msg}", op.name())),
        e => e,
    })
}

fn eval_checked(op: &Op, inputs: &[&Tensor], out: &TensorType) -> R<Tensor> {
    if matches!(op, Op::Input { .. } | Op::Constant { .. }) {
        return fail("inputs and constants have no operands to evaluate; run() supplies them");
    }
    for (i, t) in inputs.iter().enumerate() {
        check_tensor(t).map_err(|msg| IrError::Interp(format!("operand {i}: {msg}")))?;
    }
    // Re-inferring makes every shape relation the kernels below index by a checked fact, so
    // operands that disagree with `out` are an error instead of an out-of-bounds panic.
    let tys: Vec<TensorType> = inputs.iter().map(|t| t.ty()).collect();
    let refs: Vec<&TensorType> = tys.iter().collect();
    let ty = infer_type(op, &refs).map_err(IrError::Interp)?;
    if ty != *out {
        return fail(format!(
            "result type {out} was asked for, but the operands give {ty}"
        ));
    }
    let data = compute(op, inputs, out)?;
    if data.len() != out.numel() || data.dtype() != out.dtype {
        return fail(format!(
            "internal error: computed {} {} elements for {out}",
            data.len(),
            data.dtype()
        ));
    }
    Ok(Tensor {
        shape: out.shape.clone(),
        data,
    })
}

fn check_tensor(t: &Tensor) -> Result<(), String> {
    match checked_numel(&t.shape) {
        Some(n) if n == t.data.len() => Ok(()),
        _ => Err(format!(
            "{} elements do not fill shape {:?}",
            t.data.len(),
            t.shape
        )),
    }
}

fn compute(op: &Op, ins: &[&Tensor], out: &TensorType) -> R<Data> {
    match op {
        Op::Input { .. } | Op::Constant { .. } => fail("nothing to evaluate"),
        Op::Unary(u) => unary(*u, ins[0]),
        Op::Binary(b) => binary(*b, ins[0], ins[1], &out.shape),
        Op::Where => select(ins[0], ins[1], ins[2], &out.shape),
        Op::Clip { min, max } => Ok(clip(ins[0], *min, *max)),
        Op::Cast { to } => Ok(ins[0].cast(*to).data),
        Op::MatMul => Ok(matmul(ins[0], ins[1], out)),
        Op::Conv {
            strides,
            pads,
            dilations,
            group,
            activation,
            has_bias,
        } => {
            let p = ConvParams {
                strides: *strides,
                pads: *pads,
                dilations: *dilations,
                group: *group,
                activation: *activation,
            };
            Ok(conv(ins[0], ins[1], has_bias.then(|| ins[2]), &p, out))
        }
        Op::Reduce { op, axes, .. } => reduce(*op, ins[0], axes, out),
        Op::Softmax { axis } => Ok(softmax(ins[0], *axis)),
        Op::Reshape { .. } => Ok(ins[0].data.clone()),
        Op::Broadcast { shape } => Ok(gather_data(
            &ins[0].data,
            shape,
            &bcast_strides(&ins[0].shape, shape),
            0,
        )),
        Op::Transpose { perm } => {
            let st = strides(&ins[0].shape);
            let ost: Vec<isize> = perm.iter().map(|&p| st[p] as isize).collect();
            Ok(gather_data(&ins[0].data, &out.shape, &ost, 0))
        }
        Op::Slice { starts, steps, .. } => slice(ins[0], starts, steps, &out.shape),
        Op::Concat { axis } => concat(ins, *axis, out),
        Op::Gather { axis } => gather(ins[0], ins[1], *axis, out),
        Op::GatherElements { axis } => gather_elements(ins[0], ins[1], *axis),
        Op::Pad { pads, value } => pad(ins[0], pads, *value, out),
        Op::LayerNorm {
            axis,
            epsilon,
            has_bias,
        } => Ok(layer_norm(
            ins[0],
            ins[1],
            has_bias.then(|| ins[2]),
            *axis,
            *epsilon,
        )),
        Op::Gelu { approximate } => Ok(float_map(
            ins[0],
            if *approximate { gelu_tanh } else { gelu },
        )),
        Op::Linear {
            activation,
            has_bias,
            has_residual,
        } => {
            let bias = has_bias.then(|| ins[2]);
            let residual = has_residual.then(|| ins[2 + *has_bias as usize]);
            Ok(linear(ins[0], ins[1], bias, residual, *activation, out))
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
            let bias = has_bias.then(|| ins[3]);
            let mask = has_mask.then(|| ins[3 + *has_bias as usize]);
            let a = AttnParams {
                heads: *heads,
                scale: *scale,
                layouts: [*q_layout, *k_layout, *v_layout, *out_layout],
            };
            attention(ins[0], ins[1], ins[2], bias, mask, &a, out)
        }
        Op::LinearAttention {
            heads,
            eps,
            q_layout,
            k_layout,
            v_layout,
            out_layout,
        } => {
            let a = AttnParams {
                heads: *heads,
                scale: 1.0,
                layouts: [*q_layout, *k_layout, *v_layout, *out_layout],
            };
            Ok(linear_attention(ins[0], ins[1], ins[2], *eps, &a, out))
        }
        Op::Quantize { axis, to } => Ok(quantize(ins[0], ins[1], ins[2], *axis, *to)),
        Op::Dequantize { axis } => Ok(dequantize(ins[0], ins[1], ins[2], *axis, out.dtype)),
        Op::QLinear {
            x_scale,
            x_zero_point,
            x_type,
            has_bias,
        } => Ok(qlinear(
            ins,
            *x_scale,
            *x_zero_point as i64,
            *x_type,
            *has_bias,
            out,
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Element access helpers

/// Apply `$body` to the vector inside `$d`, rebuilding the same `Data` variant from the result.
macro_rules! map_data {
    ($d:expr, |$v:ident| $body:expr) => {
        match $d {
            Data::F32($v) => Data::F32($body),
            Data::F16($v) => Data::F16($body),
            Data::BF16($v) => Data::BF16($body),
            Data::I8($v) => Data::I8($body),
            Data::U8($v) => Data::U8($body),
            Data::I32($v) => Data::I32($body),
            Data::I64($v) => Data::I64($body),
            Data::Bool($v) => Data::Bool($body),
        }
    };
}

/// Run `$body` with `$x`, `$y` bound to the vectors of two `Data` of the same variant.
macro_rules! with_pair {
    ($a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a, $b) {
            (Data::F32($x), Data::F32($y)) => $body,
            (Data::F16($x), Data::F16($y)) => $body,
            (Data::BF16($x), Data::BF16($y)) => $body,
            (Data::I8($x), Data::I8($y)) => $body,
            (Data::U8($x), Data::U8($y)) => $body,
            (Data::I32($x), Data::I32($y)) => $body,
            (Data::I64($x), Data::I64($y)) => $body,
            (Data::Bool($x), Data::Bool($y)) => $body,
            (x, y) => {
                return fail(format!(
                    "element types {} and {} differ",
                    x.dtype(),
                    y.dtype()
                ))
            }
        }
    };
}

/// Build the result variant of two same-variant `Data` from `$body` over their vectors.
macro_rules! zip_data {
    ($a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a, $b) {
            (Data::F32($x), Data::F32($y)) => Data::F32($body),
            (Data::F16($x), Data::F16($y)) => Data::F16($body),
            (Data::BF16($x), Data::BF16($y)) => Data::BF16($body),
            (Data::I8($x), Data::I8($y)) => Data::I8($body),
            (Data::U8($x), Data::U8($y)) => Data::U8($body),
            (Data::I32($x), Data::I32($y)) => Data::I32($body),
            (Data::I64($x), Data::I64($y)) => Data::I64($body),
            (Data::Bool($x), Data::Bool($y)) => Data::Bool($body),
            (x, y) => {
                return fail(format!(
                    "element types {} and {} differ",
                    x.dtype(),
                    y.dtype()
                ))
            }
        }
    };
}

/// Float elements as f32; f16/bf16 widen exactly, so computing in f32 and rounding the result
/// once is what onnxruntime's f16 kernels do.
fn to_f32s(t: &Tensor) -> Cow<'_, [f32]> {
    match &t.data {
        Data::F32(v) => Cow::Borrowed(v),
        Data::F16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
        Data::BF16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
        _ => Cow::Owned(t.to_f32_vec()),
    }
}

/// Round f32 results to `dtype` (a float type for every caller).
fn from_f32s(dtype: DType, v: Vec<f32>) -> Data {
    match dtype {
        DType::F32 => Data::F32(v),
        DType::F16 => Data::F16(v.into_iter().map(f16::from_f32).collect()),
        DType::BF16 => Data::BF16(v.into_iter().map(bf16::from_f32).collect()),
        other => Data::from_f64(other, v.into_iter().map(f64::from)),
    }
}

fn float_map(t: &Tensor, f: impl Fn(f32) -> f32) -> Data {
    from_f32s(t.dtype(), to_f32s(t).iter().map(|&x| f(x)).collect())
}

fn bools(t: &Tensor) -> R<&[bool]> {
    match &t.data {
        Data::Bool(v) => Ok(v),
        d => fail(format!("expected i1 elements, got {}", d.dtype())),
    }
}

/// The value range of an integer type.
fn int_range(d: DType) -> (i64, i64) {
    match d {
        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
        DType::U8 => (0, u8::MAX as i64),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        DType::Bool => (0, 1),
        _ => (i64::MIN, i64::MAX),
    }
}

fn saturate(d: DType, v: i64) -> i64 {
    let (lo, hi) = int_range(d);
    v.max(lo).min(hi)
}

fn prod(s: &[usize]) -> usize {
    s.iter().product()
}

/// Strides that read an operand of shape `ish` (with strides `ist`) as if it had the numpy
/// broadcast shape `osh`: missing leading dims and stretched size-1 dims get stride 0.
fn align_strides(ish: &[usize], ist: &[usize], osh: &[usize]) -> Vec<isize> {
    debug_assert!(ish.len() <= osh.len(), "operand rank above broadcast rank");
    let off = osh.len().saturating_sub(ish.len());
    (0..osh.len())
        .map(|i| match i.checked_sub(off) {
            Some(j) if ish[j] != 1 || osh[i] == 1 => ist[j] as isize,
            _ => 0,
        })
        .collect()
}

fn bcast_strides(ish: &[usize], osh: &[usize]) -> Vec<isize> {
    align_strides(ish, &strides(ish), osh)
}

/// Call `f` with the `K` element offsets of every index of `shape`, in row-major order, where
/// offset `k` is `base[k] + Σ index[d]·strides[k][d]`.
fn for_each_offset<const K: usize>(
    shape: &[usize],
    strides: [&[isize]; K],
    base: [isize; K],
    mut f: impl FnMut([isize; K]),
) {
    if shape.contains(&0) {
        return;
    }
    let r = shape.len();
    let mut idx = vec![0usize; r];
    let mut off = base;
    loop {
        f(off);
        let mut d = r;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            for k in 0..K {
                off[k] += strides[k][d];
            }
            if idx[d] < shape[d] {
                break;
            }
            for k in 0..K {
                off[k] -= strides[k][d] * shape[d] as isize;
            }
            idx[d] = 0;
        }
    }
}

fn gather_by<T: Copy>(v: &[T], shape: &[usize], st: &[isize], base: isize) -> Vec<T> {
    let mut out = Vec::with_capacity(prod(shape));
    for_each_offset(shape, [st], [base], |[o]| out.push(v[o as usize]));
    out
}

/// The elements of `d` read at a strided view: `shape` with strides `st` from `base`.
fn gather_data(d: &Data, shape: &[usize], st: &[isize], base: isize) -> Data {
    map_data!(d, |v| gather_by(v, shape, st, base))
}

/// Elementwise `f` over two operands broadcast to `osh`.
fn bcast2<A: Copy, B: Copy, O>(
    a: &[A],
    ash: &[usize],
    b: &[B],
    bsh: &[usize],
    osh: &[usize],
    f: impl Fn(A, B) -> O,
) -> Vec<O> {
    if ash == osh && bsh == osh {
        return a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect();
    }
    let mut out = Vec::with_capacity(prod(osh));
    let (sa, sb) = (bcast_strides(ash, osh), bcast_strides(bsh, osh));
    let Some((&inner, outer)) = osh.split_last() else {
        return out;
    };
    let r = outer.len();
    let (ia, ib) = (sa[r] as usize, sb[r] as usize);
    for_each_offset(outer, [&sa[..r], &sb[..r]], [0, 0], |[oa, ob]| {
        let (oa, ob) = (oa as usize, ob as usize);
        for j in 0..inner {
            out.push(f(a[oa + j * ia], b[ob + j * ib]));
        }
    });
    out
}

// ---------------------------------------------------------------------------------------------
// Elementwise ops

fn sigmoid(x: f32) -> f32 {
    // Both branches only ever exponentiate a non-positive number, so neither overflows.
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn hard_sigmoid(x: f32) -> f32 {
    // onnxruntime evaluates alpha·x + beta with alpha = 1/6 rounded to f32, not x / 6.
    (x * (1.0f32 / 6.0) + 0.5).clamp(0.0, 1.0)
}

fn hard_swish(x: f32) -> f32 {
    x * hard_sigmoid(x)
}

fn relu(x: f32) -> f32 {
    // Written so that NaN propagates: the oracle should not hide a NaN behind a zero.
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * FRAC_1_SQRT_2))
}

fn gelu_tanh(x: f32) -> f32 {
    let c = (2.0f32 / PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

fn activation(a: Activation) -> fn(f32) -> f32 {
    match a {
        Activation::None => |x| x,
        Activation::Gelu => gelu,
        Activation::GeluTanh => gelu_tanh,
        Activation::Relu => relu,
        Activation::HardSwish => hard_swish,
        Activation::Silu => silu,
        Activation::Sigmoid => sigmoid,
    }
}

fn unary(u: UnaryOp, t: &Tensor) -> R<Data> {
    let d = t.dtype();
    if d == DType::Bool {
        return match (u, &t.data) {
            (UnaryOp::Not, Data::Bool(v)) => Ok(Data::Bool(v.iter().map(|b| !b).collect())),
            _ => fail(format!("{} is not defined on i1", u.name())),
        };
    }
    if d.is_int() {
        // Narrow types wrap like C: |i8::MIN| stays i8::MIN.
        let f: fn(i64) -> i64 = match u {
            UnaryOp::Neg => i64::wrapping_neg,
            UnaryOp::Abs => i64::wrapping_abs,
            UnaryOp::Relu => |x| x.max(0),
            _ => return fail(format!("{} is not defined on {d}", u.name())),
        };
        return Ok(Data::from_i64(d, t.to_i64_vec().into_iter().map(f)));
    }
    let f: fn(f32) -> f32 = match u {
        UnaryOp::Neg => |x| -x,
        UnaryOp::Abs => f32::abs,
        UnaryOp::Sqrt => f32::sqrt,
        UnaryOp::Rsqrt => |x| 1.0 / x.sqrt(),
        UnaryOp::Reciprocal => |x| 1.0 / x,
        UnaryOp::Exp => f32::exp,
        UnaryOp::Log => f32::ln,
        UnaryOp::Erf => libm::erff,
        UnaryOp::Tanh => f32::tanh,
        UnaryOp::Sigmoid => sigmoid,
        UnaryOp::Relu => relu,
        UnaryOp::HardSwish => hard_swish,
        UnaryOp::HardSigmoid => hard_sigmoid,
        UnaryOp::Silu => silu,
        UnaryOp::Floor => f32::floor,
        UnaryOp::Ceil => f32::ceil,
        UnaryOp::Round => f32::round_ties_even,
        UnaryOp::Not => return fail(format!("not is not defined on {d}")),
    };
    Ok(float_map(t, f))
}

fn pow_f32(x: f32, y: f32) -> f32 {
    // onnxruntime special-cases these exponents; powf would differ in the last bit.
    if y == 2.0 {
        x * x
    } else if y == 3.0 {
        x * x * x
    } else if y == 0.5 {
        x.sqrt()
    } else {
        x.powf(y)
    }
}

fn max_f32(x: f32, y: f32) -> f32 {
    if x.is_nan() || y.is_nan() {
        f32::NAN
    } else {
        x.max(y)
    }
}

fn min_f32(x: f32, y: f32) -> f32 {
    if x.is_nan() || y.is_nan() {
        f32::NAN
    } else {
        x.min(y)
    }
}

/// ONNX Mod with fmod = 0: the remainder takes the sign of the divisor.
fn mod_i64(x: i64, y: i64) -> i64 {
    let r = x.wrapping_rem(y);
    if r != 0 && ((r < 0) != (y < 0)) {
        r + y
    } else {
        r
    }
}

fn binary(op: BinaryOp, a: &Tensor, b: &Tensor, osh: &[usize]) -> R<Data> {
    use BinaryOp::*;
    let d = a.dtype();
    if d.is_float() {
        let (x, y) = (to_f32s(a), to_f32s(b));
        let arith =
            |f: fn(f32, f32) -> f32| Ok(from_f32s(d, bcast2(&x, &a.shape, &y, &b.shape, osh, f)));
        let cmp =
            |f: fn(f32, f32) -> bool| Ok(Data::Bool(bcast2(&x, &a.shape, &y, &b.shape, osh, f)));
        return match op {
            Add => arith(|x, y| x + y),
            Sub => arith(|x, y| x - y),
            Mul => arith(|x, y| x * y),
            Div => arith(|x, y| x / y),
            Pow => arith(pow_f32),
            Max => arith(max_f32),
            Min => arith(min_f32),
            Equal => cmp(|x, y| x == y),
            Less => cmp(|x, y| x < y),
            Greater => cmp(|x, y| x > y),
            Mod | And | Or => fail(format!("{} is not defined on {d}", op.name())),
        };
    }
    if d.is_int() {
        let (x, y) = (a.to_i64_vec(), b.to_i64_vec());
        if matches!(op, Div | Mod) && prod(osh) > 0 && y.contains(&0) {
            return fail("integer division by zero");
        }
        // Computing in i64 and narrowing wraps exactly like arithmetic in the narrow type.
        let arith = |f: fn(i64, i64) -> i64| {
            Ok(Data::from_i64(
                d,
                bcast2(&x, &a.shape, &y, &b.shape, osh, f).into_iter(),
            ))
        };
        let cmp =
            |f: fn(i64, i64) -> bool| Ok(Data::Bool(bcast2(&x, &a.shape, &y, &b.shape, osh, f)));
        return match op {
            Add => arith(i64::wrapping_add),
            Sub => arith(i64::wrapping_sub),
            Mul => arith(i64::wrapping_mul),
            // Rust's integer division truncates toward zero, as ONNX Div does.
            Div => arith(i64::wrapping_div),
            Mod => arith(mod_i64),
            // onnxruntime computes integer Pow as std::pow in double, then casts.
            Pow => arith(|x, y| (x as f64).powf(y as f64) as i64),
            Max => arith(i64::max),
            Min => arith(i64::min),
            Equal => cmp(|x, y| x == y),
            Less => cmp(|x, y| x < y),
            Greater => cmp(|x, y| x > y),
            And | Or => fail(format!("{} is not defined on {d}", op.name())),
        };
    }
    let (x, y) = (bools(a)?, bools(b)?);
    let f: fn(bool, bool) -> bool = match op {
        Equal => |x, y| x == y,
        And | Min => |x, y| x && y,
        Or | Max => |x, y| x || y,
        Less => |x, y| !x && y,
        Greater => |x, y| x && !y,
        Add | Sub | Mul | Div | Pow | Mod => {
            return fail(format!("{} is not defined on i1", op.name()))
        }
    };
    Ok(Data::Bool(bcast2(x, &a.shape, y, &b.shape, osh, f)))
}

/// ONNX Where.
fn select(c: &Tensor, a: &Tensor, b: &Tensor, osh: &[usize]) -> R<Data> {
    let cond = bools(c)?;
    let (sc, sa, sb) = (
        bcast_strides(&c.shape, osh),
        bcast_strides(&a.shape, osh),
        bcast_strides(&b.shape, osh),
    );
    let mut picks = Vec::with_capacity(prod(osh));
    for_each_offset(osh, [&sc, &sa, &sb], [0, 0, 0], |[oc, oa, ob]| {
        picks.push((cond[oc as usize], oa as usize, ob as usize));
    });
    Ok(zip_data!(&a.data, &b.data, |x, y| picks
        .iter()
        .map(|&(c, i, j)| if c { x[i] } else { y[j] })
        .collect()))
}

fn clip(t: &Tensor, min: Option<f32>, max: Option<f32>) -> Data {
    let d = t.dtype();
    if d.is_float() {
        // Same comparisons as onnxruntime's min(max(x, lo), hi), so NaN passes through.
        return float_map(t, |x| {
            let mut y = x;
            if let Some(lo) = min {
                if y < lo {
                    y = lo;
                }
            }
            if let Some(hi) = max {
                if hi < y {
                    y = hi;
                }
            }
            y
        });
    }
    // Integer x satisfies x >= lo exactly when x >= ceil(lo), so the bounds become integers.
    let lo = min.map(|v| (v as f64).ceil() as i64);
    let hi = max.map(|v| (v as f64).floor() as i64);
    let v = t.to_i64_vec().into_iter().map(|x| {
        let mut y = x;
        if let Some(lo) = lo {
            y = y.max(lo);
        }
        if let Some(hi) = hi {
            y = y.min(hi);
        }
        saturate(d, y)
    });
    Data::from_i64(d, v)
}

// ---------------------------------------------------------------------------------------------
// Matrix products

/// `c[m×n] = a[m×k] · b[k×n]`, all row-major and contiguous. The i-k-j order streams rows of
/// `b` and `c` so the inner loop auto-vectorises; four rows of `c` share each row of `b` to
/// halve the traffic. Every `c` element still sums its k products in order, in the element
/// type (f32 for floats), like a plain dot product.
fn gemm<T>(a: &[T], b: &[T], c: &mut [T], m: usize, k: usize, n: usize)
where
    T: Copy + Default + Mul<Output = T> + AddAssign,
{
    let (a, b, c) = (&a[..m * k], &b[..k * n], &mut c[..m * n]);
    c.fill(T::default());
    if n == 0 {
        return;
    }
    let mut rows = c.chunks_exact_mut(4 * n);
    let mut i = 0;
    for block in &mut rows {
        let (c0, rest) = block.split_at_mut(n);
        let (c1, rest) = rest.split_at_mut(n);
        let (c2, c3) = rest.split_at_mut(n);
        let (a0, a1, a2, a3) = (
            &a[i * k..][..k],
            &a[(i + 1) * k..][..k],
            &a[(i + 2) * k..][..k],
            &a[(i + 3) * k..][..k],
        );
        for p in 0..k {
            let bp = &b[p * n..][..n];
            let (x0, x1, x2, x3) = (a0[p], a1[p], a2[p], a3[p]);
            for j in 0..n {
                let bv = bp[j];
                c0[j] += x0 * bv;
                c1[j] += x1 * bv;
                c2[j] += x2 * bv;
                c3[j] += x3 * bv;
            }
        }
        i += 4;
    }
    for ci in rows.into_remainder().chunks_exact_mut(n) {
        let ai = &a[i * k..][..k];
        for p in 0..k {
            let x = ai[p];
            for (cv, &bv) in ci.iter_mut().zip(&b[p * n..][..n]) {
                *cv += x * bv;
            }
        }
        i += 1;
    }
}

fn matmul(a: &Tensor, b: &Tensor, out: &TensorType) -> Data {
    let (ra, rb, ro) = (a.shape.len(), b.shape.len(), out.shape.len());
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
    let (x, y) = (to_f32s(a), to_f32s(b));
    let batch = &out.shape[..ro - 2];
    let sa = align_strides(&a.shape[..ra - 2], &strides(&a.shape)[..ra - 2], batch);
    let sb = align_strides(&b.shape[..rb - 2], &strides(&b.shape)[..rb - 2], batch);
    let mut c = vec![0f32; out.numel()];
    let mut oc = 0;
    for_each_offset(batch, [&sa, &sb], [0, 0], |[oa, ob]| {
        let (oa, ob) = (oa as usize, ob as usize);
        gemm(&x[oa..], &y[ob..], &mut c[oc..], m, k, n);
        oc += m * n;
    });
    from_f32s(out.dtype, c)
}

fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    act: Activation,
    out: &TensorType,
) -> Data {
    let (k, n) = (w.shape[0], w.shape[1]);
    let m = prod(&x.shape[..x.shape.len() - 1]);
    let (xf, wf) = (to_f32s(x), to_f32s(w));
    let mut y = vec![0f32; m * n];
    gemm(&xf, &wf, &mut y, m, k, n);
    epilogue(&mut y, n, bias, act);
    if let Some(r) = residual {
        y = bcast2(&y, &out.shape, &to_f32s(r), &r.shape, &out.shape, |a, b| {
            a + b
        });
    }
    from_f32s(out.dtype, y)
}

/// Add a per-column bias to the rows of `y` (width `n`), then apply `act`.
fn epilogue(y: &mut [f32], n: usize, bias: Option<&Tensor>, act: Activation) {
    if let Some(b) = bias {
        let bf = to_f32s(b);
        for row in y.chunks_exact_mut(n.max(1)) {
            for (v, &bv) in row.iter_mut().zip(bf.iter()) {
                *v += bv;
            }
        }
    }
    if act != Activation::None {
        let f = activation(act);
        for v in y.iter_mut() {
            *v = f(*v);
        }
    }
}

struct ConvParams {
    strides: [usize; 2],
    pads: [usize; 4],
    dilations: [usize; 2],
    group: usize,
    activation: Activation,
}

/// 2-D convolution, NCHW, as one im2col matrix and one matrix product per image and group.
fn conv(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: &ConvParams, out: &TensorType) -> Data {
    let (nb, c, ih, iw) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (m, cg, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    let (oh, ow) = (out.shape[2], out.shape[3]);
    let ([sh, sw], [dh, dw], [pt, pl]) = (p.strides, p.dilations, [p.pads[0], p.pads[1]]);
    let (mg, kk, np) = (m / p.group, cg * kh * kw, oh * ow);
    let (xf, wf) = (to_f32s(x), to_f32s(w));
    let mut o = vec![0f32; out.numel()];
    let mut col = vec![0f32; kk * np];
    for b in 0..nb {
        for g in 0..p.group {
            for ci in 0..cg {
                let plane = &xf[(b * c + g * cg + ci) * ih * iw..][..ih * iw];
                for ki in 0..kh {
                    for kj in 0..kw {
                        let row = &mut col[((ci * kh + ki) * kw + kj) * np..][..np];
                        for oy in 0..oh {
                            let dst = &mut row[oy * ow..][..ow];
                            let iy = (oy * sh + ki * dh).wrapping_sub(pt);
                            if iy >= ih {
                                // Also catches rows above the image: the subtraction wrapped.
                                dst.fill(0.0);
                                continue;
                            }
                            let src = &plane[iy * iw..][..iw];
                            for ox in 0..ow {
                                let ix = (ox * sw + kj * dw).wrapping_sub(pl);
                                dst[ox] = if ix < iw { src[ix] } else { 0.0 };
                            }
                        }
                    }
                }
            }
            let wg = &wf[g * mg * kk..][..mg * kk];
            let og = &mut o[(b * m + g * mg) * np..][..mg * np];
            gemm(wg, &col, og, mg, kk, np);
        }
    }
    if let Some(bias) = bias {
        let bf = to_f32s(bias);
        for (i, plane) in o.chunks_exact_mut(np.max(1)).enumerate() {
            let bv = bf[i % m];
            for v in plane {
                *v += bv;
            }
        }
    }
    if p.activation != Activation::None {
        let f = activation(p.activation);
        for v in o.iter_mut() {
            *v = f(*v);
        }
    }
    from_f32s(out.dtype, o)
}

// ---------------------------------------------------------------------------------------------
// Reductions and normalisation

fn reduce(op: ReduceOp, t: &Tensor, axes: &[usize], out: &TensorType) -> R<Data> {
    let r = t.shape.len();
    let mut kept = t.shape.clone();
    for &a in axes {
        kept[a] = 1;
    }
    let ks = strides(&kept);
    // Keeping or dropping the reduced dims does not change the row-major layout of the result.
    let ost: Vec<isize> = (0..r)
        .map(|d| if axes.contains(&d) { 0 } else { ks[d] as isize })
        .collect();
    let count: usize = axes.iter().map(|&a| t.shape[a]).product();
    let d = t.dtype();
    if d.is_float() {
        let x = to_f32s(t);
        let init = match op {
            ReduceOp::Sum | ReduceOp::Mean => 0.0,
            ReduceOp::Prod => 1.0,
            ReduceOp::Max => f64::NEG_INFINITY,
            ReduceOp::Min => f64::INFINITY,
        };
        // f64 accumulators: the oracle should carry less rounding than what it checks.
        let mut acc = vec![init; out.numel()];
        let mut k = 0;
        for_each_offset(&t.shape, [&ost], [0], |[o]| {
            let (a, v) = (&mut acc[o as usize], x[k] as f64);
            k += 1;
            *a = match op {
                ReduceOp::Sum | ReduceOp::Mean => *a + v,
                ReduceOp::Prod => *a * v,
                ReduceOp::Max if v > *a || v.is_nan() => v,
                ReduceOp::Min if v < *a || v.is_nan() => v,
                ReduceOp::Max | ReduceOp::Min => *a,
            };
        });
        if op == ReduceOp::Mean {
            for a in acc.iter_mut() {
                *a /= count as f64;
            }
        }
        return Ok(from_f32s(d, acc.into_iter().map(|v| v as f32).collect()));
    }
    if !d.is_int() {
        return fail(format!("{} is not defined on {d}", op.name()));
    }
    if op == ReduceOp::Mean && count == 0 && out.numel() > 0 {
        return fail("integer mean over an empty axis");
    }
    let x = t.to_i64_vec();
    let init = match op {
        ReduceOp::Sum | ReduceOp::Mean => 0,
        ReduceOp::Prod => 1,
        ReduceOp::Max => i64::MIN,
        ReduceOp::Min => i64::MAX,
    };
    let mut acc = vec![init; out.numel()];
    let mut k = 0;
    for_each_offset(&t.shape, [&ost], [0], |[o]| {
        let (a, v) = (&mut acc[o as usize], x[k]);
        k += 1;
        *a = match op {
            ReduceOp::Sum | ReduceOp::Mean => a.wrapping_add(v),
            ReduceOp::Prod => a.wrapping_mul(v),
            ReduceOp::Max => (*a).max(v),
            ReduceOp::Min => (*a).min(v),
        };
    });
    let v = acc.into_iter().map(|a| match op {
        ReduceOp::Mean => a / count as i64,
        // An empty max/min yields the type's extreme, as onnxruntime does.
        ReduceOp::Max | ReduceOp::Min => saturate(d, a),
        _ => a,
    });
    Ok(Data::from_i64(d, v))
}

/// Softmax along `axis`, shifted by the maximum so exp never overflows.
fn softmax(t: &Tensor, axis: usize) -> Data {
    let x = to_f32s(t);
    let n = t.shape[axis];
    let inner = prod(&t.shape[axis + 1..]);
    let outer = prod(&t.shape[..axis]);
    let mut y = vec![0f32; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let base = o * n * inner + i;
            let mx = (0..n)
                .map(|j| x[base + j * inner])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f64;
            for j in 0..n {
                let e = (x[base + j * inner] - mx).exp();
                y[base + j * inner] = e;
                sum += e as f64;
            }
            for j in 0..n {
                let v = &mut y[base + j * inner];
                *v = (*v as f64 / sum) as f32;
            }
        }
    }
    from_f32s(t.dtype(), y)
}

/// `t` (as f32) broadcast to `shape`.
fn broadcast_f32(t: &Tensor, shape: &[usize]) -> Vec<f32> {
    gather_by(&to_f32s(t), shape, &bcast_strides(&t.shape, shape), 0)
}

fn layer_norm(x: &Tensor, scale: &Tensor, bias: Option<&Tensor>, axis: usize, eps: f32) -> Data {
    let norm = &x.shape[axis..];
    let n = prod(norm);
    let xf = to_f32s(x);
    let sc = broadcast_f32(scale, norm);
    let bi = bias.map(|b| broadcast_f32(b, norm));
    let mut y = vec![0f32; xf.len()];
    // Mean and variance in f64, and the variance as mean((x - mean)²): the E[x²] - E[x]² form
    // cancels badly when the mean is large.
    for (row, yr) in xf.chunks_exact(n.max(1)).zip(y.chunks_exact_mut(n.max(1))) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for j in 0..row.len() {
            let mut v = (row[j] as f64 - mean) * inv * sc[j] as f64;
            if let Some(bi) = &bi {
                v += bi[j] as f64;
            }
            yr[j] = v as f32;
        }
    }
    from_f32s(x.dtype(), y)
}

// ---------------------------------------------------------------------------------------------
// Data movement

fn slice(t: &Tensor, starts: &[i64], steps: &[i64], osh: &[usize]) -> R<Data> {
    if osh.contains(&0) {
        return Ok(Data::zeros(t.dtype(), 0));
    }
    let st = strides(&t.shape);
    let mut base = 0isize;
    let mut ost = Vec::with_capacity(osh.len());
    for i in 0..osh.len() {
        let (s, step, d) = (starts[i], steps[i], t.shape[i] as i64);
        // The type rule does not pin every negative-step range inside the dim; check both ends
        // (checked, since hostile starts and steps could overflow).
        let last = (osh[i] as i64 - 1)
            .checked_mul(step)
            .and_then(|x| x.checked_add(s));
        match last {
            Some(last) if (0..d).contains(&s) && (0..d).contains(&last) => {}
            _ => {
                return fail(format!(
                    "slice of dim {i} from {s} by {step} for {} leaves 0..{d}",
                    osh[i]
                ))
            }
        }
        base += s as isize * st[i] as isize;
        // With one element the step is never taken and may be huge; otherwise it is below d.
        ost.push(if osh[i] == 1 {
            0
        } else {
            step as isize * st[i] as isize
        });
    }
    Ok(gather_data(&t.data, osh, &ost, base))
}

/// Append `src[start..start + len]` to `dst` (same variant).
fn extend_from(dst: &mut Data, src: &Data, start: usize, len: usize) -> R<()> {
    with_pair!(dst, src, |d, s| d.extend_from_slice(&s[start..start + len]));
    Ok(())
}

/// Copy `src[so..so + len]` over `dst[dof..dof + len]` (same variant).
fn copy_into(dst: &mut Data, dof: usize, src: &Data, so: usize, len: usize) -> R<()> {
    with_pair!(dst, src, |d, s| d[dof..dof + len]
        .copy_from_slice(&s[so..so + len]));
    Ok(())
}

fn concat(ins: &[&Tensor], axis: usize, out: &TensorType) -> R<Data> {
    let outer = prod(&out.shape[..axis]);
    let inner = prod(&out.shape[axis + 1..]);
    let mut d = Data::zeros(out.dtype, 0);
    for o in 0..outer {
        for t in ins {
            let len = t.shape[axis] * inner;
            extend_from(&mut d, &t.data, o * len, len)?;
        }
    }
    Ok(d)
}

fn gather(data: &Tensor, idx: &Tensor, axis: usize, out: &TensorType) -> R<Data> {
    let d = data.shape[axis];
    let outer = prod(&data.shape[..axis]);
    let inner = prod(&data.shape[axis + 1..]);
    let ids = idx
        .to_i64_vec()
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + d as i64 } else { i };
            if (0..d as i64).contains(&j) {
                Ok(j as usize)
            } else {
                fail(format!(
                    "index {i} is out of range for axis {axis} of size {d}"
                ))
            }
        })
        .collect::<R<Vec<usize>>>()?;
    let mut o = Data::zeros(out.dtype, 0);
    for oo in 0..outer {
        for &i in &ids {
            extend_from(&mut o, &data.data, (oo * d + i) * inner, inner)?;
        }
    }
    Ok(o)
}

/// ONNX GatherElements: each result element takes its position along `axis` from `idx` and
/// every other coordinate from its own (the type rule made the two shapes agree off the axis).
fn gather_elements(data: &Tensor, idx: &Tensor, axis: usize) -> R<Data> {
    let d = data.shape[axis];
    let dst = strides(&data.shape);
    // Data offsets of the index positions with the axis coordinate left at 0.
    let ist: Vec<isize> = (0..idx.shape.len())
        .map(|k| if k == axis { 0 } else { dst[k] as isize })
        .collect();
    let ids = idx.to_i64_vec();
    let mut offs = Vec::with_capacity(ids.len());
    let mut bad = None;
    for_each_offset(&idx.shape, [&ist], [0], |[base]| {
        let i = ids[offs.len()];
        let j = if i < 0 { i + d as i64 } else { i };
        if (0..d as i64).contains(&j) {
            offs.push(base as usize + j as usize * dst[axis]);
        } else {
            // Keep the walk aligned with `ids`; the error below discards the result.
            bad.get_or_insert(i);
            offs.push(base as usize);
        }
    });
    if let Some(i) = bad {
        return fail(format!(
            "index {i} is out of range for axis {axis} of size {d}"
        ));
    }
    Ok(map_data!(&data.data, |v| offs
        .iter()
        .map(|&o| v[o])
        .collect()))
}

fn pad(t: &Tensor, pads: &[usize], value: f32, out: &TensorType) -> R<Data> {
    let r = t.shape.len();
    let Some((&row, outer)) = t.shape.split_last() else {
        return Ok(t.data.clone());
    };
    let mut o = Data::from_f64(t.dtype(), std::iter::repeat_n(value as f64, out.numel()));
    let (ist, ost) = (strides(&t.shape), strides(&out.shape));
    let base: usize = (0..r).map(|i| pads[i] * ost[i]).sum();
    let ist: Vec<isize> = ist[..r - 1].iter().map(|&s| s as isize).collect();
    let ost: Vec<isize> = ost[..r - 1].iter().map(|&s| s as isize).collect();
    let mut res = Ok(());
    for_each_offset(outer, [&ist, &ost], [0, base as isize], |[si, di]| {
        if res.is_ok() {
            res = copy_into(&mut o, di as usize, &t.data, si as usize, row);
        }
    });
    res.map(|()| o)
}

// ---------------------------------------------------------------------------------------------
// Attention

struct AttnParams {
    heads: usize,
    scale: f32,
    /// q, k, v, out
    layouts: [AttnLayout; 4],
}

/// Element offset of (batch b, head h, position s, channel d) in a tensor of `shape` laid out
/// as `layout` with `heads` heads.
fn attn_offset(layout: AttnLayout, shape: &[usize], heads: usize, bhsd: [usize; 4]) -> usize {
    let [b, h, s, d] = bhsd;
    match layout {
        AttnLayout::Bsd => {
            let (seq, width) = (shape[1], shape[2]);
            (b * seq + s) * width + h * (width / heads) + d
        }
        AttnLayout::Bhsd => ((b * heads + h) * shape[2] + s) * shape[3] + d,
        AttnLayout::Bhds => ((b * heads + h) * shape[2] + d) * shape[3] + s,
        AttnLayout::Bshd => ((b * shape[1] + s) * heads + h) * shape[3] + d,
    }
}

/// (batch, sequence, head dim) of an attention operand.
fn attn_dims(layout: AttnLayout, shape: &[usize], heads: usize) -> (usize, usize, usize) {
    match layout {
        AttnLayout::Bsd => (shape[0], shape[1], shape[2] / heads),
        AttnLayout::Bhsd => (shape[0], shape[2], shape[3]),
        AttnLayout::Bhds => (shape[0], shape[3], shape[2]),
        AttnLayout::Bshd => (shape[0], shape[1], shape[3]),
    }
}

fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
    p: &AttnParams,
    out: &TensorType,
) -> R<Data> {
    let [ql, kl, vl, ol] = p.layouts;
    let h_n = p.heads;
    let (nb, sq, dq) = attn_dims(ql, &q.shape, h_n);
    let (_, sk, _) = attn_dims(kl, &k.shape, h_n);
    let (_, _, dv) = attn_dims(vl, &v.shape, h_n);
    let (qf, kf, vf) = (to_f32s(q), to_f32s(k), to_f32s(v));
    let scores_shape = [nb, h_n, sq, sk];
    let bias = bias.map(|b| (to_f32s(b), bcast_strides(&b.shape, &scores_shape)));
    let mask = match mask {
        Some(m) => Some((bools(m)?, bcast_strides(&m.shape, &scores_shape))),
        None => None,
    };
    let at = |st: &[isize], b: usize, h: usize, i: usize, j: usize| {
        (b as isize * st[0] + h as isize * st[1] + i as isize * st[2] + j as isize * st[3]) as usize
    };
    let mut o = vec![0f32; out.numel()];
    let (mut qm, mut kt, mut vm) = (
        vec![0f32; sq * dq],
        vec![0f32; dq * sk],
        vec![0f32; sk * dv],
    );
    let (mut sc, mut ctx) = (vec![0f32; sq * sk], vec![0f32; sq * dv]);
    for b in 0..nb {
        for h in 0..h_n {
            for s in 0..sq {
                for d in 0..dq {
                    qm[s * dq + d] = qf[attn_offset(ql, &q.shape, h_n, [b, h, s, d])];
                }
            }
            for s in 0..sk {
                for d in 0..dq {
                    kt[d * sk + s] = kf[attn_offset(kl, &k.shape, h_n, [b, h, s, d])];
                }
                for d in 0..dv {
                    vm[s * dv + d] = vf[attn_offset(vl, &v.shape, h_n, [b, h, s, d])];
                }
            }
            gemm(&qm, &kt, &mut sc, sq, dq, sk);
            for i in 0..sq {
                let row = &mut sc[i * sk..][..sk];
                let mut keep = 0;
                let mut mx = f32::NEG_INFINITY;
                for j in 0..sk {
                    let mut x = row[j] * p.scale;
                    if let Some((bf, st)) = &bias {
                        x += bf[at(st, b, h, i, j)];
                    }
                    if let Some((mb, st)) = &mask {
                        if !mb[at(st, b, h, i, j)] {
                            // Masked out: exp(-inf - max) is exactly 0 below.
                            x = f32::NEG_INFINITY;
                        } else {
                            keep += 1;
                        }
                    } else {
                        keep += 1;
                    }
                    mx = mx.max(x);
                    row[j] = x;
                }
                if keep == 0 {
                    // A fully masked row attends to nothing rather than averaging NaNs.
                    row.fill(0.0);
                    continue;
                }
                let mut sum = 0f64;
                for x in row.iter_mut() {
                    *x = (*x - mx).exp();
                    sum += *x as f64;
                }
                for x in row.iter_mut() {
                    *x = (*x as f64 / sum) as f32;
                }
            }
            gemm(&sc, &vm, &mut ctx, sq, sk, dv);
            for s in 0..sq {
                for d in 0..dv {
                    o[attn_offset(ol, &out.shape, h_n, [b, h, s, d])] = ctx[s * dv + d];
                }
            }
        }
    }
    Ok(from_f32s(out.dtype, o))
}

/// ReLU linear attention, computed the way EfficientViT's export spells it: V padded with a
/// column of ones, KV = relu(K)ᵀ·[V, 1] (its last column the key sums), then relu(Q)·KV, and
/// each row's first Dv columns divided by its last plus eps.
fn linear_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    eps: f32,
    p: &AttnParams,
    out: &TensorType,
) -> Data {
    let [ql, kl, vl, ol] = p.layouts;
    let h_n = p.heads;
    let (nb, sq, dq) = attn_dims(ql, &q.shape, h_n);
    let (_, sk, _) = attn_dims(kl, &k.shape, h_n);
    let (_, _, dv) = attn_dims(vl, &v.shape, h_n);
    let (qf, kf, vf) = (to_f32s(q), to_f32s(k), to_f32s(v));
    let w = dv + 1;
    let mut o = vec![0f32; out.numel()];
    let (mut qm, mut kt, mut v1) = (vec![0f32; sq * dq], vec![0f32; dq * sk], vec![1f32; sk * w]);
    let (mut kv, mut ctx) = (vec![0f32; dq * w], vec![0f32; sq * w]);
    for b in 0..nb {
        for h in 0..h_n {
            for s in 0..sq {
                for d in 0..dq {
                    qm[s * dq + d] = qf[attn_offset(ql, &q.shape, h_n, [b, h, s, d])].max(0.0);
                }
            }
            for s in 0..sk {
                for d in 0..dq {
                    kt[d * sk + s] = kf[attn_offset(kl, &k.shape, h_n, [b, h, s, d])].max(0.0);
                }
                for d in 0..dv {
                    v1[s * w + d] = vf[attn_offset(vl, &v.shape, h_n, [b, h, s, d])];
                }
            }
            gemm(&kt, &v1, &mut kv, dq, sk, w);
            gemm(&qm, &kv, &mut ctx, sq, dq, w);
            for s in 0..sq {
                let den = ctx[s * w + dv] + eps;
                for d in 0..dv {
                    o[attn_offset(ol, &out.shape, h_n, [b, h, s, d])] = ctx[s * w + d] / den;
                }
            }
        }
    }
    from_f32s(out.dtype, o)
}

// ---------------------------------------------------------------------------------------------
// Quantization

/// (size, inner stride) of the quantization axis, so element `i` uses channel
/// `(i / inner) % size`; per-tensor is one channel.
fn channel_layout(shape: &[usize], axis: Option<usize>) -> (usize, usize) {
    match axis {
        Some(a) => (shape[a], prod(&shape[a + 1..])),
        None => (1, 1),
    }
}

/// saturate(round_half_even(x / scale) + zero_point), as onnxruntime's QuantizeLinear: the
/// division and the rounding happen in f32; the sum and the clamp are exact in f64.
fn quantize_one(x: f32, scale: f32, zp: i64, range: (i64, i64)) -> i64 {
    let v = (x / scale).round_ties_even() as f64 + zp as f64;
    v.clamp(range.0 as f64, range.1 as f64) as i64
}

fn quantize(x: &Tensor, s: &Tensor, z: &Tensor, axis: Option<usize>, to: DType) -> Data {
    let (xf, sf, zv) = (to_f32s(x), to_f32s(s), z.to_i64_vec());
    let (size, inner) = channel_layout(&x.shape, axis);
    let range = int_range(to);
    let q = xf.iter().enumerate().map(|(i, &v)| {
        let c = (i / inner) % size;
        quantize_one(v, sf[c], zv[c], range)
    });
    Data::from_i64(to, q)
}

fn dequantize(x: &Tensor, s: &Tensor, z: &Tensor, axis: Option<usize>, to: DType) -> Data {
    let (xv, sf, zv) = (x.to_i64_vec(), to_f32s(s), z.to_i64_vec());
    let (size, inner) = channel_layout(&x.shape, axis);
    let y = xv
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / inner) % size;
            // In f64 so that i64 operands cannot overflow; exact for every narrower type.
            (v as f64 - zv[c] as f64) as f32 * sf[c]
        })
        .collect();
    from_f32s(to, y)
}

fn qlinear(
    ins: &[&Tensor],
    x_scale: f32,
    x_zp: i64,
    x_type: DType,
    has_bias: bool,
    out: &TensorType,
) -> Data {
    let (x, w, ws, wz) = (ins[0], ins[1], ins[2], ins[3]);
    let (k, n) = (w.shape[0], w.shape[1]);
    let m = prod(&x.shape[..x.shape.len() - 1]);
    let range = int_range(x_type);
    let xq: Vec<i64> = to_f32s(x)
        .iter()
        .map(|&v| quantize_one(v, x_scale, x_zp, range) - x_zp)
        .collect();
    let (wsf, wzv) = (to_f32s(ws), wz.to_i64_vec());
    let per_column = ws.shape.len() == 1;
    let column = |j: usize| if per_column { j } else { 0 };
    let wq: Vec<i64> = w
        .to_i64_vec()
        .into_iter()
        .enumerate()
        .map(|(i, q)| q - wzv[column(i % n.max(1))])
        .collect();
    // The integer products are summed exactly, so the result is the documented real-valued
    // product rounded once, whatever the summation order — the quantity onnxruntime's int8
    // kernels accumulate too. i32 suffices unless the zero points are extreme; f64 then stays
    // exact far beyond any real model.
    let amax = xq.iter().map(|v| v.abs()).max().unwrap_or(0);
    let bmax = wq.iter().map(|v| v.abs()).max().unwrap_or(0);
    let acc: Vec<f64> = if amax.saturating_mul(bmax).saturating_mul(k as i64) <= i32::MAX as i64 {
        let a: Vec<i32> = xq.iter().map(|&v| v as i32).collect();
        let b: Vec<i32> = wq.iter().map(|&v| v as i32).collect();
        let mut c = vec![0i32; m * n];
        gemm(&a, &b, &mut c, m, k, n);
        c.into_iter().map(f64::from).collect()
    } else {
        let a: Vec<f64> = xq.iter().map(|&v| v as f64).collect();
        let b: Vec<f64> = wq.iter().map(|&v| v as f64).collect();
        let mut c = vec![0f64; m * n];
        gemm(&a, &b, &mut c, m, k, n);
        c
    };
    let bias = has_bias.then(|| to_f32s(ins[4]));
    let y = acc
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let j = i % n.max(1);
            let mut v = s * x_scale as f64 * wsf[column(j)] as f64;
            if let Some(b) = &bias {
                v += b[j] as f64;
            }
            v as f32
        })
        .collect();
    from_f32s(out.dtype, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evaluate `op` with the result type inference gives (the frontend's calling pattern).
    fn ev(op: Op, ins: &[&Tensor]) -> Tensor {
        let out = try_ty(&op, ins).expect("test case is well typed");
        eval(&op, ins, &out).unwrap_or_else(|e| panic!("eval failed: {e}"))
    }

    fn ev_err(op: Op, ins: &[&Tensor]) -> String {
        let out = try_ty(&op, ins).expect("test case is well typed");
        match eval(&op, ins, &out) {
            Ok(t) => panic!("expected an error, got {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn try_ty(op: &Op, ins: &[&Tensor]) -> Result<TensorType, String> {
        let tys: Vec<TensorType> = ins.iter().map(|t| t.ty()).collect();
        let refs: Vec<&TensorType> = tys.iter().collect();
        infer_type(op, &refs)
    }

    fn f(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::f32(shape.to_vec(), v.to_vec())
    }

    fn i(shape: &[usize], v: &[i64]) -> Tensor {
        Tensor::i64(shape.to_vec(), v.to_vec())
    }

    fn b(shape: &[usize], v: &[bool]) -> Tensor {
        Tensor::new(shape.to_vec(), Data::Bool(v.to_vec()))
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        t.as_f32().expect("f32 result").to_vec()
    }

    #[track_caller]
    fn close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
        for (n, (&g, &w)) in got.iter().zip(want).enumerate() {
            let ok = (g as f64 - w).abs() <= tol * w.abs().max(1.0) || (g.is_nan() && w.is_nan());
            assert!(
                ok,
                "element {n}: got {g}, want {w}\n got {got:?}\nwant {want:?}"
            );
        }
    }

    /// Deterministic values in [-1, 1).
    fn rnd(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    fn erf64(x: f64) -> f64 {
        // erf(x) = 2/√π · e^{-x²} · Σ 2ⁿ x^{2n+1} / (1·3·…·(2n+1)): all terms positive, so no
        // cancellation; an independent check of libm.
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= 2.0 * x * x / (2 * n + 1) as f64;
            sum += term;
        }
        2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
    }

    #[test]
    fn unary_float_ops() {
        let x = f(&[6], &[-2.0, -0.5, 0.0, 0.5, 1.0, 3.0]);
        let xs = [-2.0f64, -0.5, 0.0, 0.5, 1.0, 3.0];
        let run = |u| vals(&ev(Op::Unary(u), &[&x]));
        let map = |g: fn(f64) -> f64| xs.iter().map(|&v| g(v)).collect::<Vec<f64>>();
        close(&run(UnaryOp::Neg), &map(|v| -v), 0.0);
        close(&run(UnaryOp::Abs), &map(f64::abs), 0.0);
        close(&run(UnaryOp::Exp), &map(f64::exp), 1e-6);
        close(&run(UnaryOp::Tanh), &map(f64::tanh), 1e-6);
        close(&run(UnaryOp::Erf), &map(erf64), 1e-7);
        close(
            &run(UnaryOp::Sigmoid),
            &map(|v| 1.0 / (1.0 + (-v).exp())),
            1e-7,
        );
        close(&run(UnaryOp::Silu), &map(|v| v / (1.0 + (-v).exp())), 1e-6);
        close(&run(UnaryOp::Relu), &[0.0, 0.0, 0.0, 0.5, 1.0, 3.0], 0.0);
        close(
            &run(UnaryOp::HardSigmoid),
            &map(|v| (v / 6.0 + 0.5).clamp(0.0, 1.0)),
            1e-7,
        );
        close(
            &run(UnaryOp::HardSwish),
            &map(|v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0),
            1e-7,
        );
        close(&run(UnaryOp::Floor), &[-2.0, -1.0, 0.0, 0.0, 1.0, 3.0], 0.0);
        close(&run(UnaryOp::Ceil), &[-2.0, -0.0, 0.0, 1.0, 1.0, 3.0], 0.0);
        let p = f(&[1, 4], &[4.0, 0.25, 1.0, 2.0]);
        close(
            &vals(&ev(Op::Unary(UnaryOp::Sqrt), &[&p])),
            &[2.0, 0.5, 1.0, 2f64.sqrt()],
            1e-7,
        );
        close(
            &vals(&ev(Op::Unary(UnaryOp::Rsqrt), &[&p])),
            &[0.5, 2.0, 1.0, 0.5f64.sqrt()],
            1e-7,
        );
        close(
            &vals(&ev(Op::Unary(UnaryOp::Reciprocal), &[&p])),
            &[0.25, 4.0, 1.0, 0.5],
            0.0,
        );
        close(
            &vals(&ev(Op::Unary(UnaryOp::Log), &[&p])),
            &[4f64.ln(), 0.25f64.ln(), 0.0, 2f64.ln()],
            1e-7,
        );
    }

    #[test]
    fn round_is_half_to_even() {
        let x = f(&[8], &[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, 2.5001]);
        let y = vals(&ev(Op::Unary(UnaryOp::Round), &[&x]));
        assert_eq!(y, vec![0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 2.0, 3.0]);
    }

    #[test]
    fn sigmoid_is_stable_at_extremes() {
        let x = f(&[4], &[-200.0, -90.0, 90.0, 200.0]);
        let y = vals(&ev(Op::Unary(UnaryOp::Sigmoid), &[&x]));
        assert!(y.iter().all(|v| v.is_finite()), "{y:?}");
        assert_eq!(y[0], 0.0);
        assert!(y[1] > 0.0 && y[1] < 1e-38);
        assert_eq!(&y[2..], &[1.0, 1.0]);
    }

    #[test]
    fn erf_matches_series_over_a_range() {
        let xs: Vec<f32> = (-40..=40).map(|k| k as f32 * 0.1).collect();
        let y = vals(&ev(Op::Unary(UnaryOp::Erf), &[&f(&[xs.len()], &xs)]));
        let want: Vec<f64> = xs.iter().map(|&x| erf64(x as f64)).collect();
        close(&y, &want, 1.2e-7);
    }

    #[test]
    fn unary_int_and_bool() {
        let x = Tensor::new(vec![4], Data::I8(vec![-128, -3, 0, 5]));
        assert_eq!(
            ev(Op::Unary(UnaryOp::Neg), &[&x]).data,
            Data::I8(vec![-128, 3, 0, -5])
        );
        assert_eq!(
            ev(Op::Unary(UnaryOp::Abs), &[&x]).data,
            Data::I8(vec![-128, 3, 0, 5])
        );
        assert_eq!(
            ev(Op::Unary(UnaryOp::Relu), &[&x]).data,
            Data::I8(vec![0, 0, 0, 5])
        );
        let p = b(&[2], &[true, false]);
        assert_eq!(
            ev(Op::Unary(UnaryOp::Not), &[&p]).data,
            Data::Bool(vec![false, true])
        );
    }

    #[test]
    fn f16_results_are_rounded_once() {
        let x = Tensor::new(
            vec![2],
            Data::F16(vec![f16::from_f32(1.0), f16::from_f32(2049.0)]),
        );
        let y = Tensor::new(
            vec![2],
            Data::F16(vec![f16::from_f32(1.0 / 3.0), f16::from_f32(1.0)]),
        );
        let z = ev(Op::Binary(BinaryOp::Add), &[&x, &y]);
        let want = [
            f16::from_f32(1.0 + f16::from_f32(1.0 / 3.0).to_f32()),
            // 2048 + 1 is a tie in f16 (spacing 2) and rounds to even.
            f16::from_f32(2048.0 + 1.0),
        ];
        assert_eq!(z.data, Data::F16(want.to_vec()));
        assert_eq!(f16::from_f32(2049.0).to_f32(), 2048.0);
    }

    #[test]
    fn binary_broadcasts_like_numpy() {
        let a = f(&[2, 1, 3], &rnd(6, 1));
        let bb = f(&[4, 1], &rnd(4, 2));
        let av = a.as_f32().unwrap();
        let bv = bb.as_f32().unwrap();
        for (op, g) in [
            (BinaryOp::Add, (|x, y| x + y) as fn(f64, f64) -> f64),
            (BinaryOp::Sub, |x, y| x - y),
            (BinaryOp::Mul, |x, y| x * y),
            (BinaryOp::Div, |x, y| x / y),
            (BinaryOp::Max, f64::max),
            (BinaryOp::Min, f64::min),
        ] {
            let z = ev(Op::Binary(op), &[&a, &bb]);
            assert_eq!(z.shape, vec![2, 4, 3]);
            let mut want = vec![];
            for p in 0..2 {
                for q in 0..4 {
                    for r in 0..3 {
                        want.push(g(av[p * 3 + r] as f64, bv[q] as f64));
                    }
                }
            }
            close(&vals(&z), &want, 1e-6);
        }
        // Scalar against a tensor, both ways round.
        let s = f(&[], &[10.0]);
        let v = f(&[1, 3], &[1.0, 2.0, 3.0]);
        close(
            &vals(&ev(Op::Binary(BinaryOp::Sub), &[&s, &v])),
            &[9.0, 8.0, 7.0],
            0.0,
        );
        close(
            &vals(&ev(Op::Binary(BinaryOp::Sub), &[&v, &s])),
            &[-9.0, -8.0, -7.0],
            0.0,
        );
        // Size-1 dims on both sides.
        let c = f(&[3, 1], &[1.0, 2.0, 3.0]);
        let r = f(&[1, 2], &[10.0, 20.0]);
        let z = ev(Op::Binary(BinaryOp::Mul), &[&c, &r]);
        assert_eq!(z.shape, vec![3, 2]);
        close(&vals(&z), &[10.0, 20.0, 20.0, 40.0, 30.0, 60.0], 0.0);
    }

    #[test]
    fn integer_div_truncates_and_mod_follows_divisor() {
        let a = i(&[6], &[7, -7, 7, -7, 6, 0]);
        let d = i(&[6], &[2, 2, -2, -2, -3, 5]);
        assert_eq!(
            ev(Op::Binary(BinaryOp::Div), &[&a, &d]).data,
            Data::I64(vec![3, -3, -3, 3, -2, 0])
        );
        assert_eq!(
            ev(Op::Binary(BinaryOp::Mod), &[&a, &d]).data,
            Data::I64(vec![1, 1, -1, -1, 0, 0])
        );
        let z = i(&[1], &[0]);
        assert!(ev_err(Op::Binary(BinaryOp::Div), &[&a, &z]).contains("division by zero"));
        assert!(ev_err(Op::Binary(BinaryOp::Mod), &[&a, &z]).contains("division by zero"));
        // i32 shape arithmetic and wrapping in narrow types.
        let x = Tensor::new(vec![2], Data::I32(vec![197, 3]));
        let y = Tensor::new(vec![], Data::I32(vec![64]));
        assert_eq!(
            ev(Op::Binary(BinaryOp::Mul), &[&x, &y]).data,
            Data::I32(vec![12608, 192])
        );
        let p = Tensor::new(vec![1], Data::I8(vec![127]));
        let q = Tensor::new(vec![1], Data::I8(vec![1]));
        assert_eq!(
            ev(Op::Binary(BinaryOp::Add), &[&p, &q]).data,
            Data::I8(vec![-128])
        );
        let u = Tensor::new(vec![2], Data::U8(vec![200, 7]));
        let w = Tensor::new(vec![2], Data::U8(vec![3, 7]));
        assert_eq!(
            ev(Op::Binary(BinaryOp::Mod), &[&u, &w]).data,
            Data::U8(vec![2, 0])
        );
        assert_eq!(
            ev(Op::Binary(BinaryOp::Max), &[&a, &d]).data,
            Data::I64(vec![7, 2, 7, -2, 6, 5])
        );
    }

    #[test]
    fn pow_special_exponents_and_general() {
        let x = f(&[4], &[-3.0, 0.25, 1.7, 9.0]);
        let two = f(&[], &[2.0]);
        close(
            &vals(&ev(Op::Binary(BinaryOp::Pow), &[&x, &two])),
            &[9.0, 0.0625, 1.7f32 as f64 * 1.7f32 as f64, 81.0],
            1e-7,
        );
        let half = f(&[], &[0.5]);
        let y = vals(&ev(Op::Binary(BinaryOp::Pow), &[&x, &half]));
        assert!(y[0].is_nan());
        close(&y[1..], &[0.5, (1.7f32 as f64).sqrt(), 3.0], 1e-7);
        let e = f(&[4], &[3.0, -1.0, 1.5, 0.0]);
        close(
            &vals(&ev(Op::Binary(BinaryOp::Pow), &[&x, &e])),
            &[-27.0, 4.0, (1.7f32 as f64).powf(1.5), 1.0],
            1e-6,
        );
        let ib = i(&[3], &[2, 3, -2]);
        let ie = i(&[3], &[10, 0, 3]);
        assert_eq!(
            ev(Op::Binary(BinaryOp::Pow), &[&ib, &ie]).data,
            Data::I64(vec![1024, 1, -8])
        );
    }

    #[test]
    fn comparisons_and_logic() {
        let a = f(&[2, 2], &[1.0, 2.0, 3.0, f32::NAN]);
        let s = f(&[], &[2.0]);
        assert_eq!(
            ev(Op::Binary(BinaryOp::Equal), &[&a, &s]).data,
            Data::Bool(vec![false, true, false, false])
        );
        assert_eq!(
            ev(Op::Binary(BinaryOp::Less), &[&a, &s]).data,
            Data::Bool(vec![true, false, false, false])
        );
        assert_eq!(
            ev(Op::Binary(BinaryOp::Greater), &[&a, &s]).data,
            Data::Bool(vec![false, false, true, false])
        );
        let p = b(&[2, 1], &[true, false]);
        let q = b(&[2], &[true, false]);
        assert_eq!(
            ev(Op::Binary(BinaryOp::And), &[&p, &q]).data,
            Data::Bool(vec![true, false, false, false])
        );
        assert_eq!(
            ev(Op::Binary(BinaryOp::Or), &[&p, &q]).data,
            Data::Bool(vec![true, true, true, false])
        );
        assert_eq!(
            ev(Op::Binary(BinaryOp::Equal), &[&p, &q]).data,
            Data::Bool(vec![true, false, false, true])
        );
        let n = i(&[3], &[-1, 0, 5]);
        let z = i(&[], &[0]);
        assert_eq!(
            ev(Op::Binary(BinaryOp::Less), &[&n, &z]).data,
            Data::Bool(vec![true, false, false])
        );
        // NaN propagates through max/min.
        assert!(vals(&ev(Op::Binary(BinaryOp::Max), &[&a, &s]))[3].is_nan());
    }

    #[test]
    fn where_broadcasts_three_ways() {
        let c = b(&[2, 1], &[true, false]);
        let x = i(&[1, 3], &[1, 2, 3]);
        let y = i(&[], &[-1]);
        let z = ev(Op::Where, &[&c, &x, &y]);
        assert_eq!(z.shape, vec![2, 3]);
        assert_eq!(z.data, Data::I64(vec![1, 2, 3, -1, -1, -1]));
        let xf = f(&[3], &[1.0, 2.0, 3.0]);
        let yf = f(&[2, 3], &[4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        let c2 = b(&[3], &[false, true, false]);
        close(
            &vals(&ev(Op::Where, &[&c2, &xf, &yf])),
            &[4.0, 2.0, 6.0, 7.0, 2.0, 9.0],
            0.0,
        );
    }

    #[test]
    fn clip_float_and_int() {
        let x = f(&[5], &[-2.0, -0.5, 0.5, 7.0, f32::NAN]);
        let y = vals(&ev(
            Op::Clip {
                min: Some(-1.0),
                max: Some(6.0),
            },
            &[&x],
        ));
        close(&y[..4], &[-1.0, -0.5, 0.5, 6.0], 0.0);
        assert!(y[4].is_nan());
        close(
            &vals(&ev(
                Op::Clip {
                    min: None,
                    max: Some(0.0),
                },
                &[&x],
            ))[..4],
            &[-2.0, -0.5, 0.0, 0.0],
            0.0,
        );
        close(
            &vals(&ev(
                Op::Clip {
                    min: None,
                    max: None,
                },
                &[&x],
            ))[..4],
            &[-2.0, -0.5, 0.5, 7.0],
            0.0,
        );
        let n = i(&[4], &[-5, 0, 1, 9]);
        assert_eq!(
            ev(
                Op::Clip {
                    min: Some(-0.5),
                    max: Some(1.5)
                },
                &[&n]
            )
            .data,
            Data::I64(vec![0, 0, 1, 1])
        );
        let u = Tensor::new(vec![2], Data::U8(vec![0, 255]));
        assert_eq!(
            ev(
                Op::Clip {
                    min: Some(-10.0),
                    max: Some(300.0)
                },
                &[&u]
            )
            .data,
            Data::U8(vec![0, 255])
        );
    }

    #[test]
    fn cast_follows_onnx() {
        let x = f(&[4], &[-1.7, 2.9, 0.0, 3.0]);
        assert_eq!(
            ev(Op::Cast { to: DType::I64 }, &[&x]).data,
            Data::I64(vec![-1, 2, 0, 3])
        );
        assert_eq!(
            ev(Op::Cast { to: DType::Bool }, &[&x]).data,
            Data::Bool(vec![true, true, false, true])
        );
        let n = i(&[2], &[3, -4]);
        close(
            &vals(&ev(Op::Cast { to: DType::F32 }, &[&n])),
            &[3.0, -4.0],
            0.0,
        );
        assert_eq!(
            ev(Op::Cast { to: DType::I32 }, &[&n]).data,
            Data::I32(vec![3, -4])
        );
    }

    fn naive_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += a[i * k + p] as f64 * b[p * n + j] as f64;
                }
            }
        }
        c
    }

    #[test]
    fn matmul_shapes_and_batch_broadcast() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 4, 2),
            (5, 7, 9),
            (9, 1, 4),
            (1, 13, 1),
            (6, 33, 17),
        ] {
            let a = rnd(m * k, (m * 100 + k) as u64);
            let bb = rnd(k * n, (k * 100 + n) as u64);
            let z = ev(Op::MatMul, &[&f(&[m, k], &a), &f(&[k, n], &bb)]);
            close(&vals(&z), &naive_matmul(&a, &bb, m, k, n), 1e-5);
        }
        // a [2,1,3,4] · b [5,4,2] -> [2,5,3,2]: a's batch 1 and b's missing dim both stretch.
        let (m, k, n) = (3, 4, 2);
        let a = rnd(2 * m * k, 7);
        let bv = rnd(5 * k * n, 8);
        let z = ev(Op::MatMul, &[&f(&[2, 1, m, k], &a), &f(&[5, k, n], &bv)]);
        assert_eq!(z.shape, vec![2, 5, m, n]);
        let mut want = vec![];
        for p in 0..2 {
            for q in 0..5 {
                want.extend(naive_matmul(
                    &a[p * m * k..][..m * k],
                    &bv[q * k * n..][..k * n],
                    m,
                    k,
                    n,
                ));
            }
        }
        close(&vals(&z), &want, 1e-5);
        // Zero-size contraction gives zeros.
        let z = ev(Op::MatMul, &[&f(&[2, 0], &[]), &f(&[0, 3], &[])]);
        close(&vals(&z), &[0.0; 6], 0.0);
    }

    #[test]
    fn matmul_f16() {
        let a: Vec<f16> = rnd(6, 3).into_iter().map(f16::from_f32).collect();
        let bv: Vec<f16> = rnd(6, 4).into_iter().map(f16::from_f32).collect();
        let af: Vec<f32> = a.iter().map(|x| x.to_f32()).collect();
        let bf: Vec<f32> = bv.iter().map(|x| x.to_f32()).collect();
        let z = ev(
            Op::MatMul,
            &[
                &Tensor::new(vec![2, 3], Data::F16(a)),
                &Tensor::new(vec![3, 2], Data::F16(bv)),
            ],
        );
        let want: Vec<f16> = naive_matmul(&af, &bf, 2, 3, 2)
            .into_iter()
            .map(f16::from_f64)
            .collect();
        assert_eq!(z.data, Data::F16(want));
    }

    /// Direct convolution, straight from the definition.
    #[allow(clippy::too_many_arguments)]
    fn naive_conv(
        x: &[f32],
        xs: [usize; 4],
        w: &[f32],
        ws: [usize; 4],
        bias: Option<&[f32]>,
        st: [usize; 2],
        pads: [usize; 4],
        dil: [usize; 2],
        group: usize,
    ) -> (Vec<usize>, Vec<f64>) {
        let [n, c, h, wd] = xs;
        let [m, cg, kh, kw] = ws;
        let oh = (h + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) / st[0] + 1;
        let ow = (wd + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) / st[1] + 1;
        let mg = m / group;
        let mut out = vec![];
        for bi in 0..n {
            for oc in 0..m {
                let g = oc / mg;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = bias.map_or(0.0, |b| b[oc] as f64);
                        for ci in 0..cg {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * st[0] + ky * dil[0]) as i64 - pads[0] as i64;
                                    let ix = (ox * st[1] + kx * dil[1]) as i64 - pads[1] as i64;
                                    if iy < 0 || ix < 0 || iy >= h as i64 || ix >= wd as i64 {
                                        continue;
                                    }
                                    let xv = x[((bi * c + g * cg + ci) * h + iy as usize) * wd
                                        + ix as usize];
                                    let wv = w[((oc * cg + ci) * kh + ky) * kw + kx];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out.push(s);
                    }
                }
            }
        }
        (vec![n, m, oh, ow], out)
    }

    #[test]
    fn conv_matches_direct_convolution() {
        struct Case {
            xs: [usize; 4],
            ws: [usize; 4],
            st: [usize; 2],
            pads: [usize; 4],
            dil: [usize; 2],
            group: usize,
            bias: bool,
        }
        let cases = [
            // Patch embedding: kernel = stride.
            Case {
                xs: [1, 3, 8, 8],
                ws: [4, 3, 4, 4],
                st: [4, 4],
                pads: [0; 4],
                dil: [1, 1],
                group: 1,
                bias: true,
            },
            // Padded, strided, asymmetric pads and strides.
            Case {
                xs: [2, 2, 7, 6],
                ws: [3, 2, 3, 2],
                st: [2, 1],
                pads: [1, 0, 2, 1],
                dil: [1, 1],
                group: 1,
                bias: true,
            },
            // Grouped with dilation.
            Case {
                xs: [1, 4, 9, 9],
                ws: [6, 2, 3, 3],
                st: [1, 2],
                pads: [2, 2, 2, 2],
                dil: [2, 1],
                group: 2,
                bias: false,
            },
            // Depthwise, group = C, with a channel multiplier of 2.
            Case {
                xs: [2, 3, 5, 5],
                ws: [6, 1, 3, 3],
                st: [1, 1],
                pads: [1, 1, 1, 1],
                dil: [1, 1],
                group: 3,
                bias: true,
            },
            // 1x1 and a size-1 image.
            Case {
                xs: [1, 5, 1, 1],
                ws: [2, 5, 1, 1],
                st: [1, 1],
                pads: [0; 4],
                dil: [1, 1],
                group: 1,
                bias: false,
            },
            // Kernel bigger than the image, saved by padding.
            Case {
                xs: [1, 1, 2, 2],
                ws: [1, 1, 3, 3],
                st: [3, 3],
                pads: [1, 1, 1, 1],
                dil: [1, 1],
                group: 1,
                bias: true,
            },
        ];
        for (ci, c) in cases.iter().enumerate() {
            let x = rnd(c.xs.iter().product(), 10 + ci as u64);
            let w = rnd(c.ws.iter().product(), 20 + ci as u64);
            let bias = rnd(c.ws[0], 30 + ci as u64);
            let (shape, want) = naive_conv(
                &x,
                c.xs,
                &w,
                c.ws,
                c.bias.then_some(&bias[..]),
                c.st,
                c.pads,
                c.dil,
                c.group,
            );
            let (xt, wt, bt) = (f(&c.xs, &x), f(&c.ws, &w), f(&[c.ws[0]], &bias));
            let mut ins = vec![&xt, &wt];
            if c.bias {
                ins.push(&bt);
            }
            // Each case with one epilogue activation (all of them over the cases), applied to
            // the biased sum.
            let act = Activation::ALL[ci % Activation::ALL.len()];
            let want: Vec<f64> = want.iter().map(|&v| act64(act, v)).collect();
            let op = Op::Conv {
                strides: c.st,
                pads: c.pads,
                dilations: c.dil,
                group: c.group,
                activation: act,
                has_bias: c.bias,
            };
            let z = ev(op, &ins);
            assert_eq!(z.shape, shape, "case {ci}");
            close(&vals(&z), &want, 1e-5);
        }
    }

    #[test]
    fn conv_applies_every_activation_after_the_bias() {
        let (xs, ws) = ([1, 2, 4, 3], [3, 2, 2, 2]);
        let x: Vec<f32> = rnd(24, 60).iter().map(|v| v * 4.0).collect();
        let w = rnd(24, 61);
        let bias = rnd(3, 62);
        let (_, plain) = naive_conv(
            &x,
            xs,
            &w,
            ws,
            Some(&bias[..]),
            [1, 1],
            [1, 0, 0, 1],
            [1, 1],
            1,
        );
        let (xt, wt, bt) = (f(&xs, &x), f(&ws, &w), f(&[3], &bias));
        for act in Activation::ALL {
            let op = Op::Conv {
                strides: [1, 1],
                pads: [1, 0, 0, 1],
                dilations: [1, 1],
                group: 1,
                activation: act,
                has_bias: true,
            };
            let z = ev(op, &[&xt, &wt, &bt]);
            let want: Vec<f64> = plain.iter().map(|&v| act64(act, v)).collect();
            close(&vals(&z), &want, 1e-5);
        }
    }

    #[test]
    fn reductions() {
        // x[i][j][k] = 100i + 10j + k over [2,3,2]
        let xs: Vec<f32> = (0..2)
            .flat_map(|a| {
                (0..3).flat_map(move |b| (0..2).map(move |c| (100 * a + 10 * b + c) as f32))
            })
            .collect();
        let x = f(&[2, 3, 2], &xs);
        let r = |op, axes: &[usize], keepdims| {
            ev(
                Op::Reduce {
                    op,
                    axes: axes.to_vec(),
                    keepdims,
                },
                &[&x],
            )
        };
        let z = r(ReduceOp::Sum, &[1], true);
        assert_eq!(z.shape, vec![2, 1, 2]);
        close(&vals(&z), &[30.0, 33.0, 330.0, 333.0], 0.0);
        let z = r(ReduceOp::Mean, &[0, 2], false);
        assert_eq!(z.shape, vec![3]);
        close(&vals(&z), &[50.5, 60.5, 70.5], 0.0);
        close(
            &vals(&r(ReduceOp::Max, &[2, 0], false)),
            &[101.0, 111.0, 121.0],
            0.0,
        );
        close(
            &vals(&r(ReduceOp::Min, &[1], false)),
            &[0.0, 1.0, 100.0, 101.0],
            0.0,
        );
        close(
            &vals(&r(ReduceOp::Prod, &[2], false)),
            &[0.0, 110.0, 420.0, 10100.0, 12210.0, 14520.0],
            0.0,
        );
        let z = r(ReduceOp::Sum, &[0, 1, 2], false);
        assert_eq!(z.shape, Vec::<usize>::new());
        close(&vals(&z), &[xs.iter().map(|&v| v as f64).sum()], 0.0);
        let z = r(ReduceOp::Sum, &[], true);
        close(
            &vals(&z),
            &xs.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            0.0,
        );
        let n = i(&[2, 3], &[1, -2, 3, 4, 5, 7]);
        let ri = |op| {
            ev(
                Op::Reduce {
                    op,
                    axes: vec![1],
                    keepdims: false,
                },
                &[&n],
            )
            .data
        };
        assert_eq!(ri(ReduceOp::Sum), Data::I64(vec![2, 16]));
        assert_eq!(ri(ReduceOp::Prod), Data::I64(vec![-6, 140]));
        assert_eq!(ri(ReduceOp::Max), Data::I64(vec![3, 7]));
        assert_eq!(ri(ReduceOp::Min), Data::I64(vec![-2, 4]));
        assert_eq!(ri(ReduceOp::Mean), Data::I64(vec![0, 5]));
    }

    #[test]
    fn softmax_over_a_middle_axis() {
        let xs = rnd(2 * 3 * 4, 5);
        let x = f(&[2, 3, 4], &xs);
        let z = vals(&ev(Op::Softmax { axis: 1 }, &[&x]));
        let mut want = vec![0.0; xs.len()];
        for a in 0..2 {
            for c in 0..4 {
                let at = |j: usize| (a * 3 + j) * 4 + c;
                let s: f64 = (0..3).map(|j| (xs[at(j)] as f64).exp()).sum();
                for j in 0..3 {
                    want[at(j)] = (xs[at(j)] as f64).exp() / s;
                }
            }
        }
        close(&z, &want, 1e-6);
        // Large logits do not overflow.
        let big = f(&[1, 3], &[1000.0, 1000.0, 999.0]);
        let e = (-1.0f64).exp();
        close(
            &vals(&ev(Op::Softmax { axis: 1 }, &[&big])),
            &[1.0 / (2.0 + e), 1.0 / (2.0 + e), e / (2.0 + e)],
            1e-6,
        );
    }

    #[test]
    fn layer_norm_hand_computed_and_broadcast_scale() {
        // [1,2,3,4]: mean 2.5, var 1.25.
        let x = f(&[1, 4], &[1.0, 2.0, 3.0, 4.0]);
        let s = f(&[4], &[1.0, 2.0, 1.0, 1.0]);
        let bias = f(&[4], &[0.0, 0.0, 0.0, 10.0]);
        let op = Op::LayerNorm {
            axis: 1,
            epsilon: 1e-5,
            has_bias: true,
        };
        let d = (1.25f64 + 1e-5).sqrt();
        close(
            &vals(&ev(op, &[&x, &s, &bias])),
            &[-1.5 / d, -1.0 / d, 0.5 / d, 1.5 / d + 10.0],
            1e-6,
        );
        // Normalise over the last two dims with a scale of shape [3] broadcast over [2,3].
        let xs = rnd(2 * 2 * 3, 9);
        let x = f(&[2, 2, 3], &xs);
        let sc = f(&[3], &[0.5, 1.0, 2.0]);
        let z = vals(&ev(
            Op::LayerNorm {
                axis: 1,
                epsilon: 0.0,
                has_bias: false,
            },
            &[&x, &sc],
        ));
        let mut want = vec![];
        for row in xs.chunks(6) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / 6.0;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 6.0;
            for (j, &v) in row.iter().enumerate() {
                want.push((v as f64 - mean) / var.sqrt() * [0.5, 1.0, 2.0][j % 3]);
            }
        }
        close(&z, &want, 1e-5);
    }

    #[test]
    fn gelu_exact_and_tanh() {
        let x = f(&[3], &[-1.0, 0.0, 1.0]);
        close(
            &vals(&ev(Op::Gelu { approximate: false }, &[&x])),
            &[-0.15865525393145707, 0.0, 0.8413447460685429],
            1e-6,
        );
        close(
            &vals(&ev(Op::Gelu { approximate: true }, &[&x])),
            &[-0.15880800939172324, 0.0, 0.8411919906082768],
            1e-6,
        );
    }

    fn act64(a: Activation, x: f64) -> f64 {
        match a {
            Activation::None => x,
            Activation::Gelu => 0.5 * x * (1.0 + erf64(x / 2f64.sqrt())),
            Activation::GeluTanh => {
                0.5 * x
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
            }
            Activation::Relu => x.max(0.0),
            Activation::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }
    }

    #[test]
    fn linear_with_every_epilogue() {
        let (m, k, n) = (3, 5, 4);
        let x: Vec<f32> = rnd(2 * m * k, 40).iter().map(|v| v * 3.0).collect();
        let w = rnd(k * n, 41);
        let bias = rnd(n, 42);
        let res = rnd(m * n, 43);
        for act in Activation::ALL {
            for (has_bias, has_residual) in
                [(false, false), (true, false), (false, true), (true, true)]
            {
                let (xt, wt, bt, rt) = (
                    f(&[2, m, k], &x),
                    f(&[k, n], &w),
                    f(&[n], &bias),
                    f(&[m, n], &res),
                );
                let mut ins = vec![&xt, &wt];
                if has_bias {
                    ins.push(&bt);
                }
                if has_residual {
                    ins.push(&rt);
                }
                let z = ev(
                    Op::Linear {
                        activation: act,
                        has_bias,
                        has_residual,
                    },
                    &ins,
                );
                assert_eq!(z.shape, vec![2, m, n]);
                let mut want = vec![];
                for bi in 0..2 {
                    let mm = naive_matmul(&x[bi * m * k..][..m * k], &w, m, k, n);
                    for r in 0..m {
                        for c in 0..n {
                            let mut v = mm[r * n + c];
                            if has_bias {
                                v += bias[c] as f64;
                            }
                            v = act64(act, v);
                            if has_residual {
                                v += res[r * n + c] as f64;
                            }
                            want.push(v);
                        }
                    }
                }
                close(&vals(&z), &want, 1e-5);
            }
        }
    }

    /// Lay out a canonical [B,H,S,D] array in `layout`, by explicit index loops.
    fn to_layout(c: &[f32], [bn, hn, sn, dn]: [usize; 4], layout: AttnLayout) -> Tensor {
        let at = |b: usize, h: usize, s: usize, d: usize| c[((b * hn + h) * sn + s) * dn + d];
        let mut v = vec![];
        let shape = match layout {
            AttnLayout::Bhsd => return f(&[bn, hn, sn, dn], c),
            AttnLayout::Bsd | AttnLayout::Bshd => {
                for b in 0..bn {
                    for s in 0..sn {
                        for h in 0..hn {
                            for d in 0..dn {
                                v.push(at(b, h, s, d));
                            }
                        }
                    }
                }
                if layout == AttnLayout::Bsd {
                    vec![bn, sn, hn * dn]
                } else {
                    vec![bn, sn, hn, dn]
                }
            }
            AttnLayout::Bhds => {
                for b in 0..bn {
                    for h in 0..hn {
                        for d in 0..dn {
                            for s in 0..sn {
                                v.push(at(b, h, s, d));
                            }
                        }
                    }
                }
                vec![bn, hn, dn, sn]
            }
        };
        f(&shape, &v)
    }

    /// softmax(scale·QKᵀ + bias, mask)·V on canonical [B,H,S,D] arrays, in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive_attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        [bn, hn, sq, sk, d]: [usize; 5],
        scale: f32,
        bias: Option<&dyn Fn(usize, usize, usize, usize) -> f64>,
        mask: Option<&dyn Fn(usize, usize, usize, usize) -> bool>,
    ) -> Vec<f64> {
        let mut out = vec![0.0; bn * hn * sq * d];
        for b in 0..bn {
            for h in 0..hn {
                for i in 0..sq {
                    let mut logits = vec![];
                    for j in 0..sk {
                        let mut s = 0.0;
                        for e in 0..d {
                            s += q[((b * hn + h) * sq + i) * d + e] as f64
                                * k[((b * hn + h) * sk + j) * d + e] as f64;
                        }
                        s *= scale as f64;
                        if let Some(bf) = bias {
                            s += bf(b, h, i, j);
                        }
                        let keep = mask.is_none_or(|m| m(b, h, i, j));
                        logits.push(keep.then_some(s));
                    }
                    let mx = logits
                        .iter()
                        .flatten()
                        .cloned()
                        .fold(f64::NEG_INFINITY, f64::max);
                    let ex: Vec<f64> = logits
                        .iter()
                        .map(|l| l.map_or(0.0, |s| (s - mx).exp()))
                        .collect();
                    let tot: f64 = ex.iter().sum();
                    for e in 0..d {
                        let mut acc = 0.0;
                        for j in 0..sk {
                            if tot > 0.0 {
                                acc += ex[j] / tot * v[((b * hn + h) * sk + j) * d + e] as f64;
                            }
                        }
                        out[((b * hn + h) * sq + i) * d + e] = acc;
                    }
                }
            }
        }
        out
    }

    /// A result in `layout` back to canonical [B,H,S,D], by explicit index loops.
    fn from_layout(t: &[f32], [bn, hn, sn, dn]: [usize; 4], layout: AttnLayout) -> Vec<f32> {
        let mut c = vec![0.0; t.len()];
        for b in 0..bn {
            for h in 0..hn {
                for s in 0..sn {
                    for d in 0..dn {
                        let src = match layout {
                            AttnLayout::Bhsd => ((b * hn + h) * sn + s) * dn + d,
                            AttnLayout::Bhds => ((b * hn + h) * dn + d) * sn + s,
                            AttnLayout::Bsd | AttnLayout::Bshd => ((b * sn + s) * hn + h) * dn + d,
                        };
                        c[((b * hn + h) * sn + s) * dn + d] = t[src];
                    }
                }
            }
        }
        c
    }

    #[test]
    fn attention_every_layout_matches_naive() {
        let (bn, hn, sq, sk, d) = (2, 3, 4, 5, 2);
        let q = rnd(bn * hn * sq * d, 50);
        let k = rnd(bn * hn * sk * d, 51);
        let v = rnd(bn * hn * sk * d, 52);
        let want = naive_attention(&q, &k, &v, [bn, hn, sq, sk, d], 0.7, None, None);
        for ql in AttnLayout::ALL {
            for kl in AttnLayout::ALL {
                for vl in AttnLayout::ALL {
                    for ol in AttnLayout::ALL {
                        let qt = to_layout(&q, [bn, hn, sq, d], ql);
                        let kt = to_layout(&k, [bn, hn, sk, d], kl);
                        let vt = to_layout(&v, [bn, hn, sk, d], vl);
                        let op = Op::Attention {
                            heads: hn,
                            scale: 0.7,
                            q_layout: ql,
                            k_layout: kl,
                            v_layout: vl,
                            out_layout: ol,
                            has_bias: false,
                            has_mask: false,
                        };
                        let z = ev(op, &[&qt, &kt, &vt]);
                        let got = from_layout(&vals(&z), [bn, hn, sq, d], ol);
                        close(&got, &want, 1e-5);
                    }
                }
            }
        }
    }

    #[test]
    fn attention_bias_mask_and_fully_masked_rows() {
        let (bn, hn, sq, sk, d) = (2, 2, 3, 4, 3);
        let q = rnd(bn * hn * sq * d, 60);
        let k = rnd(bn * hn * sk * d, 61);
        let v = rnd(bn * hn * sk * d, 62);
        // Bias [H,1,Sk] broadcasts over batch and query; mask [B,1,Sq,Sk] over heads, with row
        // (b=1, i=2) fully masked.
        let bias = rnd(hn * sk, 63);
        let mask: Vec<bool> = (0..bn * sq * sk)
            .map(|x| x % 3 != 1 && x < bn * sq * sk - sk)
            .collect();
        let bias_f = |_b: usize, h: usize, _i: usize, j: usize| bias[h * sk + j] as f64;
        let mask_f = |b: usize, _h: usize, i: usize, j: usize| mask[(b * sq + i) * sk + j];
        let want = naive_attention(
            &q,
            &k,
            &v,
            [bn, hn, sq, sk, d],
            0.5,
            Some(&bias_f),
            Some(&mask_f),
        );
        let op = Op::Attention {
            heads: hn,
            scale: 0.5,
            q_layout: AttnLayout::Bhsd,
            k_layout: AttnLayout::Bhds,
            v_layout: AttnLayout::Bsd,
            out_layout: AttnLayout::Bsd,
            has_bias: true,
            has_mask: true,
        };
        let ins = [
            to_layout(&q, [bn, hn, sq, d], AttnLayout::Bhsd),
            to_layout(&k, [bn, hn, sk, d], AttnLayout::Bhds),
            to_layout(&v, [bn, hn, sk, d], AttnLayout::Bsd),
            f(&[hn, 1, sk], &bias),
            b(&[bn, 1, sq, sk], &mask),
        ];
        let z = ev(op, &ins.iter().collect::<Vec<_>>());
        let got = from_layout(&vals(&z), [bn, hn, sq, d], AttnLayout::Bsd);
        close(&got, &want, 1e-5);
        let last_row = &got[((bn * hn - 1) * sq + sq - 1) * d..][..d];
        assert_eq!(last_row, &[0.0; 3], "fully masked row must be zeros");
    }

    #[test]
    fn shape_ops() {
        let xs: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let x = f(&[2, 3, 4], &xs);
        let z = ev(Op::Reshape { shape: vec![4, 6] }, &[&x]);
        assert_eq!((z.shape.clone(), vals(&z)), (vec![4, 6], xs.clone()));
        // Transpose by a general permutation: out[c][a][b] = x[a][b][c].
        let z = ev(
            Op::Transpose {
                perm: vec![2, 0, 1],
            },
            &[&x],
        );
        assert_eq!(z.shape, vec![4, 2, 3]);
        let mut want = vec![];
        for c in 0..4 {
            for a in 0..2 {
                for bb in 0..3 {
                    want.push(xs[(a * 3 + bb) * 4 + c] as f64);
                }
            }
        }
        close(&vals(&z), &want, 0.0);
        let c = f(&[3, 1], &[1.0, 2.0, 3.0]);
        let z = ev(
            Op::Broadcast {
                shape: vec![2, 3, 2],
            },
            &[&c],
        );
        close(
            &vals(&z),
            &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0],
            0.0,
        );
        let s = i(&[], &[7]);
        assert_eq!(
            ev(Op::Broadcast { shape: vec![3] }, &[&s]).data,
            Data::I64(vec![7, 7, 7])
        );
    }

    #[test]
    fn slices_with_positive_and_negative_steps() {
        let x = i(&[6], &[0, 1, 2, 3, 4, 5]);
        let sl = |s: i64, e: i64, st: i64| {
            ev(
                Op::Slice {
                    starts: vec![s],
                    ends: vec![e],
                    steps: vec![st],
                },
                &[&x],
            )
            .data
        };
        assert_eq!(sl(1, 5, 2), Data::I64(vec![1, 3]));
        assert_eq!(sl(4, -1, -2), Data::I64(vec![4, 2, 0]));
        assert_eq!(sl(5, -1, -1), Data::I64(vec![5, 4, 3, 2, 1, 0]));
        assert_eq!(sl(5, 2, -1), Data::I64(vec![5, 4, 3]));
        assert_eq!(sl(3, 3, 1), Data::I64(vec![]));
        // 2-D, reversed rows and every second column.
        let m = i(&[3, 4], &(0..12).collect::<Vec<_>>());
        let z = ev(
            Op::Slice {
                starts: vec![2, 0],
                ends: vec![-1, 4],
                steps: vec![-1, 2],
            },
            &[&m],
        );
        assert_eq!(z.shape, vec![3, 2]);
        assert_eq!(z.data, Data::I64(vec![8, 10, 4, 6, 0, 2]));
    }

    #[test]
    fn slice_reading_outside_the_dim_is_an_error() {
        let x = i(&[3], &[0, 1, 2]);
        let op = Op::Slice {
            starts: vec![2],
            ends: vec![-3],
            steps: vec![-1],
        };
        if try_ty(&op, &[&x]).is_ok() {
            assert!(ev_err(op, &[&x]).contains("leaves"));
        }
    }

    #[test]
    fn concat_and_gather() {
        let a = f(&[2, 1], &[1.0, 2.0]);
        let bb = f(&[2, 2], &[3.0, 4.0, 5.0, 6.0]);
        let c = f(&[2, 0], &[]);
        let z = ev(Op::Concat { axis: 1 }, &[&a, &c, &bb, &a]);
        assert_eq!(z.shape, vec![2, 4]);
        close(&vals(&z), &[1.0, 3.0, 4.0, 1.0, 2.0, 5.0, 6.0, 2.0], 0.0);
        let s = ev(
            Op::Concat { axis: 0 },
            &[&i(&[1], &[1]), &i(&[2], &[197, 192])],
        );
        assert_eq!(s.data, Data::I64(vec![1, 197, 192]));

        let d = f(&[3, 2], &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0]);
        let z = ev(Op::Gather { axis: 0 }, &[&d, &i(&[2, 2], &[2, -3, -1, 1])]);
        assert_eq!(z.shape, vec![2, 2, 2]);
        close(
            &vals(&z),
            &[20.0, 21.0, 0.0, 1.0, 20.0, 21.0, 10.0, 11.0],
            0.0,
        );
        let z = ev(Op::Gather { axis: 1 }, &[&d, &i(&[], &[-1])]);
        assert_eq!(z.shape, vec![3]);
        close(&vals(&z), &[1.0, 11.0, 21.0], 0.0);
        let idx32 = Tensor::new(vec![1], Data::I32(vec![1]));
        close(
            &vals(&ev(Op::Gather { axis: 1 }, &[&d, &idx32])),
            &[1.0, 11.0, 21.0],
            0.0,
        );
        assert!(ev_err(Op::Gather { axis: 0 }, &[&d, &i(&[1], &[3])]).contains("out of range"));
        assert!(ev_err(Op::Gather { axis: 0 }, &[&d, &i(&[1], &[-4])]).contains("out of range"));
    }

    #[test]
    fn gather_elements_along_each_axis() {
        // The ONNX spec's examples.
        let d = f(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let z = ev(
            Op::GatherElements { axis: 1 },
            &[&d, &i(&[2, 2], &[0, 0, 1, 0])],
        );
        assert_eq!(z.shape, vec![2, 2]);
        close(&vals(&z), &[1.0, 1.0, 4.0, 3.0], 0.0);
        let d = f(&[3, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        let z = ev(
            Op::GatherElements { axis: 0 },
            &[&d, &i(&[2, 3], &[1, 2, 0, 2, 0, 0])],
        );
        close(&vals(&z), &[4.0, 8.0, 3.0, 7.0, 2.0, 3.0], 0.0);
        // Negative indices, a longer index axis than the data's, rank 3, the middle axis.
        let d = f(&[2, 3, 2], &(0..12).map(|v| v as f32).collect::<Vec<_>>());
        let z = ev(
            Op::GatherElements { axis: 1 },
            &[
                &d,
                &i(
                    &[2, 4, 2],
                    &[-1, 0, 1, -3, 2, 2, 0, 1, 0, 0, -2, 1, 2, -1, 1, 0],
                ),
            ],
        );
        assert_eq!(z.shape, vec![2, 4, 2]);
        close(
            &vals(&z),
            &[
                4.0, 1.0, 2.0, 1.0, 4.0, 5.0, 0.0, 3.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 8.0, 7.0,
            ],
            0.0,
        );
        // i32 indices, integer data.
        let n = i(&[3], &[7, 8, 9]);
        let idx32 = Tensor::new(vec![2], Data::I32(vec![2, -3]));
        assert_eq!(
            ev(Op::GatherElements { axis: 0 }, &[&n, &idx32]).data,
            Data::I64(vec![9, 7])
        );
        let e = ev_err(Op::GatherElements { axis: 0 }, &[&n, &i(&[1], &[3])]);
        assert!(e.contains("index 3 is out of range"), "{e}");
        let e = ev_err(Op::GatherElements { axis: 0 }, &[&n, &i(&[1], &[-4])]);
        assert!(e.contains("index -4 is out of range"), "{e}");
        // The indices must match the data off the axis.
        let d = f(&[2, 3], &[0.0; 6]);
        let e = try_ty(&Op::GatherElements { axis: 0 }, &[&d, &i(&[1, 2], &[0, 0])]);
        assert!(e.is_err_and(|e| e.contains("except along axis 0")));
    }

    #[test]
    fn pad_with_a_constant() {
        let x = f(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let z = ev(
            Op::Pad {
                pads: vec![1, 0, 0, 2],
                value: -1.0,
            },
            &[&x],
        );
        assert_eq!(z.shape, vec![3, 4]);
        close(
            &vals(&z),
            &[
                -1.0, -1.0, -1.0, -1.0, 1.0, 2.0, -1.0, -1.0, 3.0, 4.0, -1.0, -1.0,
            ],
            0.0,
        );
        let n = i(&[2], &[5, 6]);
        assert_eq!(
            ev(
                Op::Pad {
                    pads: vec![2, 1],
                    value: 0.0
                },
                &[&n]
            )
            .data,
            Data::I64(vec![0, 0, 5, 6, 0])
        );
    }

    #[test]
    fn quantize_rounds_ties_to_even_and_saturates() {
        let x = f(
            &[9],
            &[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 1000.0, -1000.0, 0.74],
        );
        let s = f(&[], &[1.0]);
        let z8 = Tensor::new(vec![], Data::I8(vec![0]));
        let q = ev(
            Op::Quantize {
                axis: None,
                to: DType::I8,
            },
            &[&x, &s, &z8],
        );
        assert_eq!(q.data, Data::I8(vec![0, 2, 2, 0, -2, -2, 127, -128, 1]));
        // ui8 with zero point 128 and scale 0.5: x/0.5 + 128.
        let s = f(&[], &[0.5]);
        let zu = Tensor::new(vec![], Data::U8(vec![128]));
        let q = ev(
            Op::Quantize {
                axis: None,
                to: DType::U8,
            },
            &[&x, &s, &zu],
        );
        assert_eq!(
            q.data,
            Data::U8(vec![129, 131, 133, 127, 125, 123, 255, 0, 129])
        );
        // Per-axis along dim 1 of [2,2].
        let x = f(&[2, 2], &[1.0, 1.0, -3.0, 3.0]);
        let s = f(&[2], &[0.5, 2.0]);
        let z = Tensor::new(vec![2], Data::I8(vec![1, -1]));
        let q = ev(
            Op::Quantize {
                axis: Some(1),
                to: DType::I8,
            },
            &[&x, &s, &z],
        );
        assert_eq!(q.data, Data::I8(vec![3, -1, -5, 1]));
    }

    #[test]
    fn dequantize_per_tensor_and_per_axis() {
        let x = Tensor::new(vec![2, 2], Data::I8(vec![-128, 0, 5, 127]));
        let s = f(&[], &[0.5]);
        let z = Tensor::new(vec![], Data::I8(vec![1]));
        close(
            &vals(&ev(Op::Dequantize { axis: None }, &[&x, &s, &z])),
            &[-64.5, -0.5, 2.0, 63.0],
            0.0,
        );
        let s = f(&[2], &[0.5, 2.0]);
        let z = Tensor::new(vec![2], Data::I8(vec![0, 10]));
        close(
            &vals(&ev(Op::Dequantize { axis: Some(0) }, &[&x, &s, &z])),
            &[-64.0, 0.0, -10.0, 234.0],
            0.0,
        );
        let u = Tensor::new(vec![2], Data::U8(vec![0, 255]));
        let s = f(&[], &[0.1]);
        let zu = Tensor::new(vec![], Data::U8(vec![128]));
        close(
            &vals(&ev(Op::Dequantize { axis: None }, &[&u, &s, &zu])),
            &[-12.8, 12.7],
            1e-6,
        );
    }

    #[test]
    fn qlinear_matches_dequantized_product() {
        let (m, k, n) = (3, 4, 2);
        let x: Vec<f32> = rnd(m * k, 70).iter().map(|v| v * 2.0).collect();
        let w: Vec<i8> = (0..k * n).map(|t| ((t * 37) % 100) as i8 - 50).collect();
        let bias = rnd(n, 71);
        let xs = 0.02f32;
        // The last two cases take the u8 range and, with an extreme zero point, the f64 path.
        for (xz, x_type, per_column) in [
            (3i32, DType::I8, false),
            (3, DType::I8, true),
            (128, DType::U8, true),
            (-2_000_000_000, DType::I8, false),
        ] {
            let (ws, wz): (Vec<f32>, Vec<i8>) = if per_column {
                (vec![0.01, 0.03], vec![2, -1])
            } else {
                (vec![0.01], vec![2])
            };
            let shp: &[usize] = if per_column { &[2] } else { &[] };
            let wst = f(shp, &ws);
            let wzt = Tensor::new(shp.to_vec(), Data::I8(wz.clone()));
            let op = Op::QLinear {
                x_scale: xs,
                x_zero_point: xz,
                x_type,
                has_bias: true,
            };
            let (xt, wt, bt) = (
                f(&[m, k], &x),
                Tensor::new(vec![k, n], Data::I8(w.clone())),
                f(&[n], &bias),
            );
            let z = ev(op, &[&xt, &wt, &wst, &wzt, &bt]);
            let mut want = vec![];
            for r in 0..m {
                for c in 0..n {
                    let mut acc = bias[c] as f64;
                    for p in 0..k {
                        let (lo, hi) = if x_type == DType::U8 {
                            (0, 255)
                        } else {
                            (-128, 127)
                        };
                        let q = ((x[r * k + p] / xs).round_ties_even() as i64 + xz as i64)
                            .clamp(lo, hi);
                        let xd = (q - xz as i64) as f64 * xs as f64;
                        let ch = if per_column { c } else { 0 };
                        let wd = (w[p * n + c] as i64 - wz[ch] as i64) as f64 * ws[ch] as f64;
                        acc += xd * wd;
                    }
                    want.push(acc);
                }
            }
            close(&vals(&z), &want, 1e-5);
        }
    }

    #[test]
    fn eval_rejects_what_it_cannot_run() {
        let x = f(&[2], &[1.0, 2.0]);
        let e = eval(&Op::Input { index: 0 }, &[], &x.ty()).unwrap_err();
        assert!(matches!(e, IrError::Interp(_)));
        // A result type the operands do not give.
        let e = eval(
            &Op::Unary(UnaryOp::Neg),
            &[&x],
            &TensorType::new(vec![3], DType::F32),
        )
        .unwrap_err();
        assert!(e.to_string().contains("vit.neg"), "{e}");
        // An operand whose data does not fill its shape.
        let bad = Tensor {
            shape: vec![3],
            data: Data::F32(vec![1.0]),
        };
        assert!(eval(
            &Op::Unary(UnaryOp::Neg),
            &[&bad],
            &TensorType::new(vec![3], DType::F32)
        )
        .is_err());
        // Wrong operand count.
        assert!(eval(&Op::MatMul, &[&x], &x.ty()).is_err());
    }

    fn small_module() -> Module {
        let mut m = Module::new("t");
        let x = m.add_input("x", TensorType::new(vec![2, 3], DType::F32));
        let w = m.add_constant("w", f(&[3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]));
        let y = m.add(Op::MatMul, vec![x, w], "mm").unwrap();
        let bias = m.add_constant("b", f(&[2], &[10.0, 20.0]));
        let z = m
            .add(Op::Binary(BinaryOp::Add), vec![y, bias], "add")
            .unwrap();
        let _dead = m.add(Op::Unary(UnaryOp::Exp), vec![z], "dead").unwrap();
        let sq = m.add(Op::Binary(BinaryOp::Mul), vec![z, z], "sq").unwrap();
        m.outputs = vec![
            ("z".into(), z),
            ("sq".into(), sq),
            ("z_again".into(), z),
            ("x".into(), x),
        ];
        m
    }

    #[test]
    fn run_a_module() {
        let m = small_module();
        let x = f(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let outs = run(&m, std::slice::from_ref(&x)).unwrap();
        let z = [14.0, 25.0, 20.0, 31.0];
        close(&vals(&outs[0]), &z, 0.0);
        close(&vals(&outs[1]), &z.map(|v| v * v), 0.0);
        close(&vals(&outs[2]), &z, 0.0);
        assert_eq!(outs[3], x);
    }

    #[test]
    fn run_checks_its_inputs() {
        let m = small_module();
        let e = run(&m, &[]).unwrap_err().to_string();
        assert!(e.contains("takes 1 inputs"), "{e}");
        let e = run(&m, &[f(&[3, 2], &[0.0; 6])]).unwrap_err().to_string();
        assert!(
            e.contains("input 0 (x)") && e.contains("tensor<2x3xf32>"),
            "{e}"
        );
        let e = run(&m, &[i(&[2, 3], &[0; 6])]).unwrap_err().to_string();
        assert!(e.contains("input 0 (x)"), "{e}");
    }

    #[test]
    fn run_names_the_failing_node() {
        let mut m = Module::new("t");
        let d = m.add_constant("d", f(&[3], &[1.0, 2.0, 3.0]));
        let idx = m.add_input("idx", TensorType::new(vec![1], DType::I64));
        let g = m.add(Op::Gather { axis: 0 }, vec![d, idx], "pick").unwrap();
        m.outputs = vec![("g".into(), g)];
        close(&vals(&run(&m, &[i(&[1], &[-1])]).unwrap()[0]), &[3.0], 0.0);
        let e = run(&m, &[i(&[1], &[3])]).unwrap_err().to_string();
        assert!(
            e.contains("pick") && e.contains("vit.gather") && e.contains("out of range"),
            "{e}"
        );
    }
}
