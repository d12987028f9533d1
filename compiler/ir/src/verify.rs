//! The verifier: checks a module's structure and every node's type against [`infer_type`].
//! Run after import, after parsing, and after every pass in debug builds.

use crate::error::IrError;
use crate::infer::infer_type;
use crate::module::Module;
use crate::op::Op;
use crate::types::TensorType;

/// Check that every operand is defined before use, every node's recorded type is what its op
/// infers, inputs and constants are consistent with their tables, and outputs exist.
pub fn verify(m: &Module) -> Result<(), IrError> {
    let err = |i: usize, msg: String| IrError::Verify {
        node: node_label(m, i),
        op: m.nodes[i].op.name(),
        msg,
    };
    let mut input_seen = vec![false; m.inputs.len()];
    for (i, n) in m.nodes.iter().enumerate() {
        if let Some(v) = n.inputs.iter().find(|v| v.0 >= i) {
            return Err(err(i, format!("operand {v} is not defined before use")));
        }
        match &n.op {
            Op::Input { index } => {
                if *index >= m.inputs.len() || m.inputs[*index].1 .0 != i || input_seen[*index] {
                    return Err(err(
                        i,
                        format!("input {index} does not match the input list"),
                    ));
                }
                input_seen[*index] = true;
                if !n.inputs.is_empty() {
                    return Err(err(i, "inputs take no operands".into()));
                }
            }
            Op::Constant { name } => {
                let t = m
                    .constants
                    .get(name)
                    .ok_or_else(|| IrError::MissingConstant(name.clone()))?;
                if t.ty() != n.ty {
                    return Err(err(
                        i,
                        format!("constant data is {}, node says {}", t.ty(), n.ty),
                    ));
                }
                if !n.inputs.is_empty() {
                    return Err(err(i, "constants take no operands".into()));
                }
            }
            op => {
                let tys: Vec<&TensorType> = n.inputs.iter().map(|v| &m.nodes[v.0].ty).collect();
                let ty = infer_type(op, &tys).map_err(|msg| err(i, msg))?;
                if ty != n.ty {
                    return Err(err(
                        i,
                        format!("result type is {}, but the op gives {ty}", n.ty),
                    ));
                }
            }
        }
    }
    if input_seen.iter().any(|s| !s) {
        return Err(IrError::Verify {
            node: m.name.clone(),
            op: "module".into(),
            msg: "an input in the input list has no vit.input node".into(),
        });
    }
    if m.outputs.is_empty() {
        return Err(IrError::Verify {
            node: m.name.clone(),
            op: "module".into(),
            msg: "module has no outputs".into(),
        });
    }
    for (name, v) in &m.outputs {
        if v.0 >= m.nodes.len() {
            return Err(IrError::Verify {
                node: name.clone(),
                op: "module".into(),
                msg: format!("output {v} is not defined"),
            });
        }
    }
    Ok(())
}

fn node_label(m: &Module, i: usize) -> String {
    let n = &m.nodes[i];
    if n.name.is_empty() {
        format!("%{i}")
    } else {
        format!("%{i} ({})", n.name)
    }
}
