//! MLIR text pieces shared by both forms (types, dense constants, the function around the
//! body) and the `vit` form itself: each vit op as a generic `"vit.op"(…)` operation with its
//! attributes, in the operand order of docs/ir.md. It writes text only; MLIR checks it.

use std::fmt::Write;
use vitc_ir::{DType, Module, Op, Tensor, TensorType};

/// `tensor<2x3xf32>`, `tensor<f32>` for rank 0.
pub fn ty(t: &TensorType) -> String {
    ty_of(&t.shape, t.dtype)
}

pub fn ty_of(shape: &[usize], d: DType) -> String {
    let mut s = String::from("tensor<");
    for x in shape {
        let _ = write!(s, "{x}x");
    }
    s.push_str(d.name());
    s.push('>');
    s
}

/// A dense elements attribute of a tensor, in MLIR's hex form (raw little-endian bytes).
pub fn dense(t: &Tensor) -> String {
    let bytes = match &t.data {
        // MLIR's hex form packs i1 elements into bits, first element in the lowest bit.
        vitc_ir::Data::Bool(v) => v
            .chunks(8)
            .map(|c| c.iter().rev().fold(0u8, |acc, &b| (acc << 1) | b as u8))
            .collect(),
        d => d.to_le_bytes(),
    };
    let mut s = String::with_capacity(bytes.len() * 2 + 32);
    s.push_str("dense<\"0x");
    for b in &bytes {
        let _ = write!(s, "{b:02X}");
    }
    let _ = write!(s, "\"> : {}", ty_of(&t.shape, t.dtype()));
    s
}

/// An f32 attribute value MLIR parses back to the same bits.
pub fn f32_attr(x: f32) -> String {
    if x.is_finite() {
        format!("{} : f32", float_lit(x))
    } else {
        format!("0x{:08X} : f32", x.to_bits())
    }
}

/// A finite f32 as an MLIR float literal (`1.0e-6`: MLIR wants the point).
pub fn float_lit(x: f32) -> String {
    let s = format!("{x:e}");
    match s.split_once('e') {
        Some((m, e)) if !m.contains('.') => format!("{m}.0e{e}"),
        _ => s,
    }
}

fn ints(v: &[usize]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn i64s(v: &[i64]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The attributes of a vit op, as an MLIR attribute dictionary body.
fn vit_attrs(m: &Module, n: &vitc_ir::Node) -> Vec<String> {
    let mut a = vec![];
    let arr = |v: &[usize]| format!("array<i64: {}>", ints(v));
    match &n.op {
        Op::Constant { name } => {
            if let Some(t) = m.constants.get(name) {
                a.push(format!("value = {}", dense(t)));
            }
            a.push(format!("name = {:?}", name));
        }
        Op::Clip { min, max } => {
            if let Some(x) = min {
                a.push(format!("min = {}", f32_attr(*x)));
            }
            if let Some(x) = max {
                a.push(format!("max = {}", f32_attr(*x)));
            }
        }
        Op::Conv {
            strides,
            pads,
            dilations,
            group,
            activation,
            ..
        } => {
            a.push(format!("strides = {}", arr(strides)));
            a.push(format!("pads = {}", arr(pads)));
            a.push(format!("dilations = {}", arr(dilations)));
            a.push(format!("group = {group} : i64"));
            if *activation != vitc_ir::Activation::None {
                a.push(format!("activation = {:?}", activation.name()));
            }
        }
        Op::Reduce { axes, keepdims, .. } => {
            a.push(format!("axes = {}", arr(axes)));
            a.push(format!("keepdims = {keepdims}"));
        }
        Op::Softmax { axis }
        | Op::Concat { axis }
        | Op::Gather { axis }
        | Op::GatherElements { axis } => a.push(format!("axis = {axis} : i64")),
        Op::Transpose { perm } => a.push(format!("perm = {}", arr(perm))),
        Op::Slice {
            starts,
            ends,
            steps,
        } => {
            a.push(format!("starts = array<i64: {}>", i64s(starts)));
            a.push(format!("ends = array<i64: {}>", i64s(ends)));
            a.push(format!("steps = array<i64: {}>", i64s(steps)));
        }
        Op::Pad { pads, value } => {
            a.push(format!("pads = {}", arr(pads)));
            a.push(format!("value = {}", f32_attr(*value)));
        }
        Op::LayerNorm { axis, epsilon, .. } => {
            a.push(format!("axis = {axis} : i64"));
            a.push(format!("epsilon = {}", f32_attr(*epsilon)));
        }
        Op::Gelu { approximate } => a.push(format!("approximate = {approximate}")),
        Op::Linear { activation, .. } => a.push(format!("activation = {:?}", activation.name())),
        Op::Attention {
            heads,
            scale,
            q_layout,
            k_layout,
            v_layout,
            out_layout,
            ..
        } => {
            a.push(format!("heads = {heads} : i64"));
            a.push(format!("scale = {}", f32_attr(*scale)));
            for (k, l) in [
                ("q_layout", q_layout),
                ("k_layout", k_layout),
                ("v_layout", v_layout),
                ("out_layout", out_layout),
            ] {
                a.push(format!("{k} = {:?}", l.name()));
            }
        }
        Op::LinearAttention {
            heads,
            eps,
            q_layout,
            k_layout,
            v_layout,
            out_layout,
        } => {
            a.push(format!("heads = {heads} : i64"));
            a.push(format!("eps = {}", f32_attr(*eps)));
            for (k, l) in [
                ("q_layout", q_layout),
                ("k_layout", k_layout),
                ("v_layout", v_layout),
                ("out_layout", out_layout),
            ] {
                a.push(format!("{k} = {:?}", l.name()));
            }
        }
        Op::Quantize { axis, .. } | Op::Dequantize { axis } => {
            if let Some(x) = axis {
                a.push(format!("axis = {x} : i64"));
            }
        }
        Op::QLinear {
            x_scale,
            x_zero_point,
            x_type,
            ..
        } => {
            a.push(format!("x_scale = {}", f32_attr(*x_scale)));
            a.push(format!("x_zero_point = {x_zero_point} : i64"));
            a.push(format!("x_type = {:?}", x_type.name()));
        }
        _ => {}
    }
    // Ops with optional operands say how many of each they have.
    let present = |b: bool| if b { 1 } else { 0 };
    let seg: Option<Vec<usize>> = match &n.op {
        Op::Conv { has_bias, .. } | Op::LayerNorm { has_bias, .. } => {
            Some(vec![1, 1, present(*has_bias)])
        }
        Op::Linear {
            has_bias,
            has_residual,
            ..
        } => Some(vec![1, 1, present(*has_bias), present(*has_residual)]),
        Op::Attention {
            has_bias, has_mask, ..
        } => Some(vec![1, 1, 1, present(*has_bias), present(*has_mask)]),
        Op::QLinear { has_bias, .. } => Some(vec![1, 1, 1, 1, present(*has_bias)]),
        Op::Concat { .. } => Some((0..16).map(|i| present(i < n.inputs.len())).collect()),
        _ => None,
    };
    if let Some(s) = seg {
        a.push(format!(
            "operandSegmentSizes = array<i32: {}>",
            s.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    a
}

/// `func.func @main(…) -> (…) {` … `}` around a body whose values are named by `name`.
pub fn func(m: &Module, body: &str, result_names: &[String], arg_attrs: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "module @{} {{", sym(&m.name));
    let args: Vec<String> = m
        .inputs
        .iter()
        .enumerate()
        .map(|(i, (name, v))| {
            if arg_attrs {
                format!("%arg{i}: {} {{vit.name = {name:?}}}", ty(m.ty(*v)))
            } else {
                format!("%arg{i}: {}", ty(m.ty(*v)))
            }
        })
        .collect();
    let res: Vec<String> = m.outputs.iter().map(|(_, v)| ty(m.ty(*v))).collect();
    let _ = writeln!(
        s,
        "  func.func @main({}) -> ({}) {{",
        args.join(", "),
        res.join(", ")
    );
    s.push_str(body);
    let _ = writeln!(
        s,
        "    return {} : {}",
        result_names.join(", "),
        res.join(", ")
    );
    s.push_str("  }\n}\n");
    s
}

/// A symbol name MLIR accepts bare, else quoted.
fn sym(name: &str) -> String {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        name.to_string()
    } else {
        format!("{:?}", if name.is_empty() { "vitc" } else { name })
    }
}

/// The `vit` form: every node a generic `vit.*` operation.
pub fn vit_module(m: &Module) -> String {
    let mut body = String::new();
    let name = |i: usize| match &m.nodes[i].op {
        Op::Input { index } => format!("%arg{index}"),
        _ => format!("%v{i}"),
    };
    for (i, n) in m.nodes.iter().enumerate() {
        if matches!(n.op, Op::Input { .. }) {
            continue;
        }
        let operands: Vec<String> = n.inputs.iter().map(|v| name(v.0)).collect();
        let tys: Vec<String> = n.inputs.iter().map(|v| ty(m.ty(*v))).collect();
        let attrs = vit_attrs(m, n);
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", attrs.join(", "))
        };
        let _ = writeln!(
            body,
            "    %v{i} = \"{}\"({}){attrs} : ({}) -> {} loc({:?})",
            n.op.name(),
            operands.join(", "),
            tys.join(", "),
            ty(&n.ty),
            n.name
        );
    }
    let results: Vec<String> = m.outputs.iter().map(|(_, v)| name(v.0)).collect();
    func(m, &body, &results, true)
}
