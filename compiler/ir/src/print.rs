//! The MLIR-style printer: one module in, its text form out.
//!
//! The text is canonical — graph inputs become `%argK` in the signature, every other node is
//! numbered `%0, %1, …` in order, attributes are sorted, floats print in their shortest
//! round-trip form — so printing, parsing ([`crate::parse`]) and printing again gives the same
//! bytes, and snapshot tests compare text. The printer never fails and never panics, even on a
//! module that does not verify (it is used to show such modules); it does no I/O.

use crate::module::{Module, ValueId};
use crate::op::{Activation, Op};
use crate::types::{Data, Tensor};
use std::fmt::Write;

/// Constants with at most this many elements print inline as `dense<…>`; larger ones print as
/// `@name` handles whose data comes from the model or the weights side file.
pub const INLINE_LIMIT: usize = 16;

/// Print a module in the text form.
pub fn print_module(m: &Module) -> String {
    let names = value_names(m);
    let name_of = |v: ValueId| -> String {
        names
            .get(v.0)
            .cloned()
            .unwrap_or_else(|| format!("%<undefined {}>", v.0))
    };
    let ty_of = |v: ValueId| -> String {
        m.nodes
            .get(v.0)
            .map(|n| n.ty.to_string())
            .unwrap_or_else(|| "<undefined>".into())
    };

    let mut out = String::new();
    if m.name.is_empty() {
        out.push_str("module {\n");
    } else {
        let _ = writeln!(out, "module @{} {{", symbol(&m.name));
    }

    let args: Vec<String> = m
        .inputs
        .iter()
        .map(|(name, v)| {
            format!(
                "{}: {} {{vit.name = {}}}",
                name_of(*v),
                ty_of(*v),
                quote(name)
            )
        })
        .collect();
    let results: Vec<String> = m
        .outputs
        .iter()
        .map(|(name, v)| format!("{} {{vit.name = {}}}", ty_of(*v), quote(name)))
        .collect();
    let _ = writeln!(
        out,
        "  func.func @main({}) -> ({}) {{",
        args.join(", "),
        results.join(", ")
    );

    for (i, n) in m.nodes.iter().enumerate() {
        if matches!(n.op, Op::Input { .. }) {
            continue;
        }
        let _ = write!(out, "    {} = {}", names[i], n.op.name());
        if let Op::Constant { name } = &n.op {
            match m.constants.get(name) {
                Some(t) if t.numel() <= INLINE_LIMIT => {
                    let _ = write!(out, " {}", dense(t));
                }
                _ => {
                    let _ = write!(out, " @{}", symbol(name));
                }
            }
            let _ = write!(out, " : {}", n.ty);
        } else {
            let operands: Vec<String> = n.inputs.iter().map(|&v| name_of(v)).collect();
            if !operands.is_empty() {
                let _ = write!(out, " {}", operands.join(", "));
            }
            let attrs = attributes(&n.op);
            if !attrs.is_empty() {
                let attrs: Vec<String> = attrs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                let _ = write!(out, " {{{}}}", attrs.join(", "));
            }
            let tys: Vec<String> = n.inputs.iter().map(|&v| ty_of(v)).collect();
            let _ = write!(out, " : ({}) -> {}", tys.join(", "), n.ty);
        }
        if !n.name.is_empty() {
            let _ = write!(out, " loc({})", quote(&n.name));
        }
        out.push('\n');
    }

    out.push_str("    return");
    if !m.outputs.is_empty() {
        let vals: Vec<String> = m.outputs.iter().map(|(_, v)| name_of(*v)).collect();
        let tys: Vec<String> = m.outputs.iter().map(|(_, v)| ty_of(*v)).collect();
        let _ = write!(out, " {} : {}", vals.join(", "), tys.join(", "));
    }
    out.push_str("\n  }\n}\n");
    out
}

/// The printed name of every value: `%argK` for inputs, `%0, %1, …` for the rest, so the
/// numbering does not depend on where the input nodes happen to sit.
fn value_names(m: &Module) -> Vec<String> {
    let mut next = 0usize;
    m.nodes
        .iter()
        .map(|n| match n.op {
            Op::Input { index } => format!("%arg{index}"),
            _ => {
                next += 1;
                format!("%{}", next - 1)
            }
        })
        .collect()
}

/// The attributes of an op as `(name, printed value)`, sorted by name. Fields the result type
/// states (reshape/broadcast shape, cast/quantize target type) are left out, as are false
/// `has_*` flags and absent optional values; the parser restores them.
fn attributes(op: &Op) -> Vec<(&'static str, String)> {
    let mut a: Vec<(&'static str, String)> = Vec::new();
    let flag = |a: &mut Vec<(&'static str, String)>, k: &'static str, b: bool| {
        if b {
            a.push((k, "true".into()));
        }
    };
    match op {
        Op::Input { .. }
        | Op::Constant { .. }
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Where
        | Op::MatMul
        | Op::Cast { .. }
        | Op::Reshape { .. }
        | Op::Broadcast { .. } => {}
        Op::Clip { min, max } => {
            if let Some(x) = max {
                a.push(("max", float(*x)));
            }
            if let Some(x) = min {
                a.push(("min", float(*x)));
            }
        }
        Op::Conv {
            strides,
            pads,
            dilations,
            group,
            activation,
            has_bias,
        } => {
            // Only a real epilogue is printed, so convolutions read as they always did.
            if *activation != Activation::None {
                a.push(("activation", quote(activation.name())));
            }
            a.push(("dilations", list(dilations)));
            a.push(("group", group.to_string()));
            flag(&mut a, "has_bias", *has_bias);
            a.push(("pads", list(pads)));
            a.push(("strides", list(strides)));
        }
        Op::Reduce { axes, keepdims, .. } => {
            a.push(("axes", list(axes)));
            a.push(("keepdims", keepdims.to_string()));
        }
        Op::Softmax { axis }
        | Op::Concat { axis }
        | Op::Gather { axis }
        | Op::GatherElements { axis } => {
            a.push(("axis", axis.to_string()));
        }
        Op::Transpose { perm } => a.push(("perm", list(perm))),
        Op::Slice {
            starts,
            ends,
            steps,
        } => {
            a.push(("ends", list(ends)));
            a.push(("starts", list(starts)));
            a.push(("steps", list(steps)));
        }
        Op::Pad { pads, value } => {
            a.push(("pads", list(pads)));
            a.push(("value", float(*value)));
        }
        Op::LayerNorm {
            axis,
            epsilon,
            has_bias,
        } => {
            a.push(("axis", axis.to_string()));
            a.push(("epsilon", float(*epsilon)));
            flag(&mut a, "has_bias", *has_bias);
        }
        Op::Gelu { approximate } => a.push(("approximate", approximate.to_string())),
        Op::Linear {
            activation,
            has_bias,
            has_residual,
        } => {
            a.push(("activation", quote(activation.name())));
            flag(&mut a, "has_bias", *has_bias);
            flag(&mut a, "has_residual", *has_residual);
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
            flag(&mut a, "has_bias", *has_bias);
            flag(&mut a, "has_mask", *has_mask);
            a.push(("heads", heads.to_string()));
            a.push(("k_layout", quote(k_layout.name())));
            a.push(("out_layout", quote(out_layout.name())));
            a.push(("q_layout", quote(q_layout.name())));
            a.push(("scale", float(*scale)));
            a.push(("v_layout", quote(v_layout.name())));
        }
        Op::LinearAttention {
            heads,
            eps,
            q_layout,
            k_layout,
            v_layout,
            out_layout,
        } => {
            a.push(("eps", float(*eps)));
            a.push(("heads", heads.to_string()));
            a.push(("k_layout", quote(k_layout.name())));
            a.push(("out_layout", quote(out_layout.name())));
            a.push(("q_layout", quote(q_layout.name())));
            a.push(("v_layout", quote(v_layout.name())));
        }
        Op::Quantize { axis, .. } | Op::Dequantize { axis } => {
            if let Some(x) = axis {
                a.push(("axis", x.to_string()));
            }
        }
        Op::QLinear {
            x_scale,
            x_zero_point,
            x_type,
            has_bias,
        } => {
            flag(&mut a, "has_bias", *has_bias);
            a.push(("x_scale", float(*x_scale)));
            a.push(("x_type", quote(x_type.name())));
            a.push(("x_zero_point", x_zero_point.to_string()));
        }
    }
    // The arms above are written in order; sorting keeps a new field from breaking that.
    a.sort_by_key(|(k, _)| *k);
    a
}

fn list<T: ToString>(xs: &[T]) -> String {
    let items: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// An f32 that parses back to the same bits: Rust's shortest round-trip form for finite
/// values, MLIR's hex bit pattern for infinities and NaNs (which keeps NaN payloads).
pub(crate) fn float(x: f32) -> String {
    if x.is_finite() {
        format!("{x:?}")
    } else {
        format!("0x{:08X}", x.to_bits())
    }
}

/// The `dense<…>` literal of a small constant, flattened row-major.
fn dense(t: &Tensor) -> String {
    let items: Vec<String> = match &t.data {
        Data::F32(v) => v.iter().map(|&x| float(x)).collect(),
        // Half-precision values print as the f32 they widen to exactly; the parser rounds them
        // back without loss. Non-finite ones keep their own 16-bit pattern.
        Data::F16(v) => v
            .iter()
            .map(|x| {
                if x.is_finite() {
                    format!("{:?}", x.to_f32())
                } else {
                    format!("0x{:04X}", x.to_bits())
                }
            })
            .collect(),
        Data::BF16(v) => v
            .iter()
            .map(|x| {
                if x.is_finite() {
                    format!("{:?}", x.to_f32())
                } else {
                    format!("0x{:04X}", x.to_bits())
                }
            })
            .collect(),
        Data::I8(v) => v.iter().map(|x| x.to_string()).collect(),
        Data::U8(v) => v.iter().map(|x| x.to_string()).collect(),
        Data::I32(v) => v.iter().map(|x| x.to_string()).collect(),
        Data::I64(v) => v.iter().map(|x| x.to_string()).collect(),
        Data::Bool(v) => v.iter().map(|x| x.to_string()).collect(),
    };
    if t.shape.is_empty() && items.len() == 1 {
        format!("dense<{}>", items[0])
    } else {
        format!("dense<[{}]>", items.join(", "))
    }
}

/// Whether `s` can be written without quotes after `@`: `[a-zA-Z_][a-zA-Z0-9_$.]*`.
pub(crate) fn is_bare_id(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.'))
}

/// A symbol name after `@`: bare when it can be, else quoted.
fn symbol(s: &str) -> String {
    if is_bare_id(s) {
        s.to_string()
    } else {
        quote(s)
    }
}

/// A quoted string with `"` and `\` escaped and every byte outside printable ASCII written as
/// `\XX` (as MLIR does), so the text stays ASCII and any name survives the round trip.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:02X}");
            }
        }
    }
    out.push('"');
    out
}
