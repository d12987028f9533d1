//! Which `vit.linear` layers are quantized: every one with an f32 input and a constant weight,
//! less those the keep-float entries name. A layer is named by its role in the transformer
//! (read off the graph, since exporters name nodes differently), its value id in the fused
//! module, or part of its node or weight name. An entry that selects nothing is an error, so
//! a misspelt layer is never silently quantized.

use std::fmt;

use vitc_ir::{DType, Module, Op, ValueId};

use crate::error::QuantizeError;

/// What a linear layer does in a ViT, found from the ops around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Feeds an attention's q, k or v.
    Qkv,
    /// Reads an attention's result (the output projection).
    Proj,
    /// Has an activation epilogue (the MLP's first layer).
    Fc1,
    /// Reads an activation (the MLP's second layer).
    Fc2,
    /// Its result is a model output (the classifier).
    Head,
    Other,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Qkv => "qkv",
            Role::Proj => "proj",
            Role::Fc1 => "fc1",
            Role::Fc2 => "fc2",
            Role::Head => "head",
            Role::Other => "other",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `vit.linear` of the module.
#[derive(Clone, Debug)]
pub(crate) struct Layer {
    pub value: ValueId,
    pub role: Role,
    /// Why it cannot be quantized, if it cannot.
    pub unsupported: Option<&'static str>,
}

/// Ops that only move elements, looked through when reading roles.
fn is_view(op: &Op) -> bool {
    matches!(op, Op::Reshape { .. } | Op::Transpose { .. })
}

fn is_activation(op: &Op) -> bool {
    use vitc_ir::{Activation, UnaryOp};
    match op {
        Op::Gelu { .. } => true,
        Op::Unary(u) => matches!(
            u,
            UnaryOp::Relu | UnaryOp::HardSwish | UnaryOp::Silu | UnaryOp::Sigmoid
        ),
        Op::Linear { activation, .. } => *activation != Activation::None,
        _ => false,
    }
}

/// Every `vit.linear` in order, with its role.
pub(crate) fn layers(m: &Module) -> Vec<Layer> {
    let mut users: Vec<Vec<(usize, usize)>> = vec![Vec::new(); m.nodes.len()];
    for (i, n) in m.nodes.iter().enumerate() {
        for (pos, v) in n.inputs.iter().enumerate() {
            users[v.0].push((i, pos));
        }
    }
    let outputs: Vec<usize> = m.outputs.iter().map(|(_, v)| v.0).collect();
    // Users of `v`, looking through views; and whether a view chain from `v` is an output.
    let reach = |v: usize| {
        let (mut stack, mut found, mut is_output) = (vec![v], Vec::new(), false);
        while let Some(u) = stack.pop() {
            is_output |= outputs.contains(&u);
            for &(w, pos) in &users[u] {
                if is_view(&m.nodes[w].op) {
                    stack.push(w);
                } else {
                    found.push((w, pos));
                }
            }
        }
        (found, is_output)
    };
    let source = |mut v: usize| {
        while is_view(&m.nodes[v].op) {
            v = m.nodes[v].inputs[0].0;
        }
        v
    };
    m.nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let Op::Linear { activation, .. } = n.op else {
                return None;
            };
            let (users, is_output) = reach(i);
            let x = &m.nodes[source(n.inputs[0].0)].op;
            let role = if users.iter().any(|&(u, pos)| {
                pos < 3
                    && matches!(
                        m.nodes[u].op,
                        Op::Attention { .. } | Op::LinearAttention { .. }
                    )
            }) {
                Role::Qkv
            } else if matches!(x, Op::Attention { .. } | Op::LinearAttention { .. }) {
                Role::Proj
            } else if activation != vitc_ir::Activation::None {
                Role::Fc1
            } else if is_activation(x) {
                Role::Fc2
            } else if is_output {
                Role::Head
            } else {
                Role::Other
            };
            let unsupported = if m.ty(n.inputs[0]).dtype != DType::F32 {
                Some("its input is not f32")
            } else if m.constant(n.inputs[1]).is_none() {
                Some("its weight is not a constant")
            } else {
                None
            };
            Some(Layer {
                value: ValueId(i),
                role,
                unsupported,
            })
        })
        .collect()
}

/// The name `--emit ir` prints for `v`: graph inputs are `%argK`, every other node is
/// numbered in order from `%0`.
pub(crate) fn printed_id(m: &Module, v: ValueId) -> String {
    match m.node(v).op {
        Op::Input { index } => format!("%arg{index}"),
        _ => {
            let inputs_before = m.nodes[..v.0]
                .iter()
                .filter(|n| matches!(n.op, Op::Input { .. }))
                .count();
            format!("%{}", v.0 - inputs_before)
        }
    }
}

/// Whether keep-float `entry` names `layer`.
fn matches(m: &Module, layer: &Layer, entry: &str) -> bool {
    let roles: &[Role] = match entry {
        "linear" | "all" => return true,
        "attention" => &[Role::Qkv, Role::Proj],
        "mlp" => &[Role::Fc1, Role::Fc2],
        "qkv" => &[Role::Qkv],
        "proj" => &[Role::Proj],
        "fc1" => &[Role::Fc1],
        "fc2" => &[Role::Fc2],
        "head" => &[Role::Head],
        _ => &[],
    };
    if !roles.is_empty() {
        return roles.contains(&layer.role);
    }
    if entry.starts_with('%') {
        return entry == printed_id(m, layer.value);
    }
    let n = m.node(layer.value);
    let weight = match &m.node(n.inputs[1]).op {
        Op::Constant { name } => name.as_str(),
        _ => "",
    };
    n.name.contains(entry) || weight.contains(entry)
}

/// Layers to quantize, and layers kept in float with the reason.
pub(crate) type Split = (Vec<Layer>, Vec<(Layer, String)>);

/// Split `layers` into those to quantize and those kept in float, with the entry (or the
/// reason) that keeps each.
pub(crate) fn split(
    m: &Module,
    layers: Vec<Layer>,
    keep_float: &[String],
) -> Result<Split, QuantizeError> {
    let entries: Vec<&str> = keep_float
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .collect();
    for e in &entries {
        if !layers.iter().any(|l| matches(m, l, e)) {
            let example = layers
                .first()
                .map(|l| (printed_id(m, l.value), m.node(l.value).name.clone()));
            let (id, name) = example.unwrap_or_default();
            return Err(QuantizeError::KeepFloatUnmatched {
                entry: e.to_string(),
                example_id: id,
                example_name: name,
            });
        }
    }
    let (mut quantize, mut kept) = (Vec::new(), Vec::new());
    for l in layers {
        if let Some(e) = entries.iter().find(|e| matches(m, &l, e)) {
            kept.push((l, format!("keep-float {e}")));
        } else if let Some(why) = l.unsupported {
            kept.push((l, why.to_string()));
        } else {
            quantize.push(l);
        }
    }
    Ok((quantize, kept))
}
