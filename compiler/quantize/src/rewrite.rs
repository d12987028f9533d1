//! Replacing a float `vit.linear` by `vit.qlinear` with the calibrated input parameters and
//! per-output-channel symmetric int8 weights, plus the epilogue `vit.qlinear` does not have:
//! the activation as its own op (`vit.gelu`, `vit.relu` …) and the residual as a `vit.add`,
//! the same ops a QAT model's fused form has. Everything else is copied as it is; weight
//! constants nothing reads any more are dropped.

use std::collections::HashMap;

use vitc_ir::{Activation, Data, Module, Node, Op, Tensor, UnaryOp, ValueId};

use crate::error::QuantizeError;
use crate::range::QParams;

/// One layer to rewrite: the linear's value in the input module and its input's parameters.
pub(crate) struct Plan {
    pub node: ValueId,
    pub x: QParams,
}

/// The rewritten module, and per plan the `vit.qlinear` value in it.
pub(crate) struct Rewritten {
    pub module: Module,
    pub qlinear: Vec<ValueId>,
}

/// Int8 weights of a `[K, N]` matrix: per column j, scale max|W[:, j]|/127 (1 for a zero
/// column) and round-half-even of W/scale, in [−127, 127] so that the range is symmetric.
pub(crate) fn quantize_weight(w: &Tensor) -> Result<(Tensor, Tensor, Tensor), String> {
    let (k, n) = (w.shape[0], w.shape[1]);
    let v = w.to_f32_vec();
    if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
        return Err(format!("the weight holds a non-finite value ({bad})"));
    }
    let mut scale = vec![0f32; n];
    for (i, x) in v.iter().enumerate() {
        let j = i % n;
        scale[j] = scale[j].max(x.abs());
    }
    for s in &mut scale {
        *s = if *s > 0.0 { *s / 127.0 } else { 1.0 };
    }
    let q: Vec<i8> = v
        .iter()
        .enumerate()
        .map(|(i, &x)| (x / scale[i % n]).round_ties_even().clamp(-127.0, 127.0) as i8)
        .collect();
    Ok((
        Tensor::new(vec![k, n], Data::I8(q)),
        Tensor::f32(vec![n], scale),
        Tensor::new(vec![n], Data::I8(vec![0; n])),
    ))
}

/// The op that applies `a` on its own, or `None` for no activation.
fn activation_op(a: Activation) -> Option<Op> {
    Some(match a {
        Activation::None => return None,
        Activation::Gelu => Op::Gelu { approximate: false },
        Activation::GeluTanh => Op::Gelu { approximate: true },
        Activation::Relu => Op::Unary(UnaryOp::Relu),
        Activation::HardSwish => Op::Unary(UnaryOp::HardSwish),
        Activation::Silu => Op::Unary(UnaryOp::Silu),
        Activation::Sigmoid => Op::Unary(UnaryOp::Sigmoid),
    })
}

pub(crate) fn rewrite(m: &Module, plans: &[Plan]) -> Result<Rewritten, QuantizeError> {
    let by_node: HashMap<usize, usize> = plans
        .iter()
        .enumerate()
        .map(|(i, p)| (p.node.0, i))
        .collect();
    let mut out = Module::new(m.name.clone());
    out.constants = m.constants.clone();
    let mut map: Vec<ValueId> = Vec::with_capacity(m.nodes.len());
    let mut qlinear = vec![ValueId(0); plans.len()];
    // Weights read by several linears (rare) are quantized once.
    let mut weights: HashMap<usize, (ValueId, ValueId, ValueId)> = HashMap::new();
    for (i, n) in m.nodes.iter().enumerate() {
        let inputs: Vec<ValueId> = n.inputs.iter().map(|v| map[v.0]).collect();
        let Some(&pi) = by_node.get(&i) else {
            map.push(out.push(Node {
                op: n.op.clone(),
                inputs,
                ty: n.ty.clone(),
                name: n.name.clone(),
            }));
            continue;
        };
        let Op::Linear {
            activation,
            has_bias,
            has_residual,
        } = n.op
        else {
            return Err(layer_err(n, "is not a vit.linear"));
        };
        let w_old = n.inputs[1];
        let (w8, ws, wz) = match weights.get(&w_old.0) {
            Some(&t) => t,
            None => {
                let w = m
                    .constant(w_old)
                    .ok_or_else(|| layer_err(n, "its weight is not a constant"))?;
                let (q, s, z) = quantize_weight(w).map_err(|msg| layer_err(n, &msg))?;
                let base = match &m.node(w_old).op {
                    Op::Constant { name } => name.clone(),
                    _ => format!("w{i}"),
                };
                let t = (
                    out.add_constant(&format!("{base}.i8"), q),
                    out.add_constant(&format!("{base}.scale"), s),
                    out.add_constant(&format!("{base}.zero_point"), z),
                );
                weights.insert(w_old.0, t);
                t
            }
        };
        let p = &plans[pi];
        let mut operands = vec![inputs[0], w8, ws, wz];
        if has_bias {
            operands.push(inputs[2]);
        }
        let q = out.add(
            Op::QLinear {
                x_scale: p.x.scale,
                x_zero_point: p.x.zero_point,
                x_type: p.x.dtype,
                has_bias,
            },
            operands,
            n.name.clone(),
        )?;
        qlinear[pi] = q;
        let mut v = q;
        if let Some(op) = activation_op(activation) {
            v = out.add(op, vec![v], n.name.clone())?;
        }
        if has_residual {
            let r = inputs[2 + has_bias as usize];
            v = out.add(
                Op::Binary(vitc_ir::BinaryOp::Add),
                vec![v, r],
                n.name.clone(),
            )?;
        }
        if *out.ty(v) != n.ty {
            return Err(layer_err(
                n,
                &format!("the quantized form gives {}, not {}", out.ty(v), n.ty),
            ));
        }
        map.push(v);
    }
    out.inputs = m
        .inputs
        .iter()
        .map(|(s, v)| (s.clone(), map[v.0]))
        .collect();
    out.outputs = m
        .outputs
        .iter()
        .map(|(s, v)| (s.clone(), map[v.0]))
        .collect();
    // The qlinear values ride along as outputs through dead-code removal, which renumbers.
    let keep = out.outputs.len();
    out.outputs
        .extend(qlinear.iter().map(|v| (String::new(), *v)));
    out.dce();
    let qlinear = out
        .outputs
        .split_off(keep)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    vitc_ir::verify(&out)?;
    Ok(Rewritten {
        module: out,
        qlinear,
    })
}

fn layer_err(n: &Node, msg: &str) -> QuantizeError {
    QuantizeError::Layer {
        node: format!("{} ({})", n.op.name(), n.name),
        msg: msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_trip_within_half_a_step() {
        let w = Tensor::f32(vec![3, 2], vec![0.5, -0.001, -1.27, 0.0, 0.3, 0.002]);
        let (q, s, z) = quantize_weight(&w).unwrap();
        let (q, s) = (q.to_i64_vec(), s.to_f32_vec());
        assert_eq!(z.to_i64_vec(), vec![0, 0]);
        assert_eq!(s, vec![1.27 / 127.0, 0.002 / 127.0]);
        // Column maxima hit ±127 exactly.
        assert_eq!((q[2], q[5]), (-127, 127));
        for (i, x) in w.to_f32_vec().iter().enumerate() {
            let d = q[i] as f32 * s[i % 2];
            assert!((d - x).abs() <= s[i % 2] / 2.0 + 1e-9, "{i}: {d} vs {x}");
        }
        let zero = Tensor::f32(vec![2, 1], vec![0.0, 0.0]);
        let (q, s, _) = quantize_weight(&zero).unwrap();
        assert_eq!((q.to_i64_vec(), s.to_f32_vec()), (vec![0, 0], vec![1.0]));
        let nan = Tensor::f32(vec![1, 1], vec![f32::NAN]);
        assert!(quantize_weight(&nan).is_err());
    }
}
